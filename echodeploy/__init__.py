"""echodeploy: serve echocardiography deep-learning models on ONNX Runtime or Triton."""

__version__ = "0.1.0"
