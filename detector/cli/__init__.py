"""The ``detect`` command line: typer app, shared options, rendering, one module per command."""

from detector.cli.app import app, main

__all__ = ["app", "main"]
