"""`detect simulate` (being written; registers nothing yet)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to the app."""
