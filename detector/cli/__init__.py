"""The ``detect`` command line: typer app, shared options, rendering, one module per command.

Importing this package is cheap on purpose: :func:`main` imports the app (typer, polars,
pyarrow: about a second) inside its own ``try``, so a Ctrl-C during start-up ends with
exit 130 and one line, not a traceback from the middle of an import.
``from detector.cli import app`` still gives the typer app, imported on first use.
"""

from __future__ import annotations

import sys
import types
from typing import Any

EXIT_INTERRUPTED = 130

#: Set by :func:`main`: the app then imports only the command it runs (see
#: ``detector.cli.app.DetectGroup``). Library users and tests get every command.
lazy_commands = False


def main() -> None:
    """Console entry point (``detect``)."""
    global lazy_commands
    lazy_commands = True
    try:
        from detector.cli.app import main as run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    run()


class _Package(types.ModuleType):
    """``detector.cli.app`` is the typer app, even once the submodule of that name is loaded.

    (Importing a submodule sets it as an attribute of its package; the setter keeps the
    attribute pointing at the app object instead.)
    """

    @property
    def app(self) -> Any:
        from detector.cli.app import app

        return app

    @app.setter
    def app(self, value: Any) -> None:  # the import system storing the submodule
        pass


sys.modules[__name__].__class__ = _Package

__all__ = ["app", "main"]
