"""``python -m cxrmesh.cli``: the same as the ``cxrmesh`` command."""

from cxrmesh.cli import app

app()
