"""The ``detect`` command line: typer app, shared options, rendering, one module per command.

Importing this package is cheap on purpose: :func:`main` imports the app (typer, polars,
pyarrow: about a second) inside its own ``try``, so a Ctrl-C during start-up ends with
exit 130 and one line, not a traceback from the middle of an import.
"""

from __future__ import annotations

import sys
from typing import Any

EXIT_INTERRUPTED = 130


def main() -> None:
    """Console entry point (``detect``)."""
    try:
        from detector.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    run()


def __getattr__(name: str) -> Any:
    """``from detector.cli import app`` still works, importing the app on first use."""
    if name == "app":
        from detector.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
