"""Serving side: decoding, the local tritonserver, bulk runs and their per-run results; never imports export/."""
