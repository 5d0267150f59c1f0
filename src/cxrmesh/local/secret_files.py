"""Secrets the local launchers make once and keep: one file each, owner-only (0600).

Why one helper: the mesh's pseudonym key, the local PostgreSQL password, the local S3 credentials
and the monitoring password follow the same rule (made on first use, reused after, so a restarted
process signs in with the same secret; never written group- or world-readable, not even briefly).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def keep_secret(path: Path, make: Callable[[], str]) -> bool:
    """Write ``make()`` to ``path`` (mode 0600 from creation) unless the file exists; True when it
    was made now. Two launchers racing: the first one's file stays, the other uses it."""
    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(make())
    return True
