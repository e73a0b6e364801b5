"""Inference backends: embedded ONNX Runtime, Triton client, local server lifecycle, batching."""
