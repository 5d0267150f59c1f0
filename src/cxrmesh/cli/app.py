"""The ``cxrmesh`` Typer application and what every command shares (one way to fail with a reason)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="cxrmesh",
    help="Chest-radiograph retrieval and four-region lung quantification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    """Print ``error: message`` and exit 2 (a usage error the person at the terminal can fix)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)
