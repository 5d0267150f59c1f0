"""The networks (torch), their training and evaluation, and the in-process ONNX runner.

Training-time code: the services never import it; they call Triton. The served tensors are stated in
``cxrmesh.contracts.tensors``.
"""
