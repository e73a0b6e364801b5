"""Bulk runs: inputs, the journal, the runner and the two pipelines on it."""
