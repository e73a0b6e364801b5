"""Inference backends behind one interface (base.py): embedded ONNX Runtime and OpenVINO (embedded.py:
the default choice), a Triton client, and PyTorch in the process."""
