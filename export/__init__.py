"""Export: PyTorch -> ONNX -> TensorRT, and the Triton model repository writer (``cxrmesh.export``)."""
