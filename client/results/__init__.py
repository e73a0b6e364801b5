"""Per-run results: metrics, M-mode beat features, figures."""
