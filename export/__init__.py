"""Everything that needs torch: networks, checkpoints, ONNX export, the model repository."""
