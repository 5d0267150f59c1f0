"""The cxrmesh services (``cxrmesh.services``); each runs as ``python -m cxrmesh.services.<name>``."""
