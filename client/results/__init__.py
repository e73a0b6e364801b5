"""Results: metrics, M-mode features and figures."""
