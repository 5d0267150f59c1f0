"""Model definitions (torch, training only) and their serving contracts (``spec``, no torch)."""
