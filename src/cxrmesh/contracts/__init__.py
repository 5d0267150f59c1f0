"""Facts every layer shares, stated once: preprocessing, served tensors, labels, topics, ports, corpus format,
errors and proto <-> domain conversion. The bottom layer: it imports nothing else of cxrmesh but the generated
``cxrmesh.v1`` (docs/architecture.md).
"""
