"""The ``cxrmesh`` command line: one entry point, a subcommand per job, grouped by what it touches.

``models`` makes data and models, ``stack`` runs the local mesh, ``query`` asks it about studies; importing
them registers their commands on ``app``.
"""

from cxrmesh.cli import models, query, stack  # noqa: F401  (registers the commands)
from cxrmesh.cli.app import app

__all__ = ["app"]
