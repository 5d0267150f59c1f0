"""The single-machine stack: broker, Milvus and tritonserver launchers, ``cxrmesh up/down/status``, the demo.

Development tooling; no service imports it (docs/architecture.md).
"""
