"""Results: metrics, M-mode features and figures, study models (a GLM over the views)."""
