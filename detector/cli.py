"""The ``detect`` command: a thin typer shell over the library.

Each command lives in ``detector/commands/<name>.py`` and registers itself on the app; it
parses arguments, calls one library function and renders the result. Errors that a user can
fix become one line on stderr and an exit code (see README "Exit codes"), never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from detector import __version__

app = typer.Typer(
    name="detect",
    help=(
        "Find threats and misuse in Kubernetes API-server audit logs.\n\n"
        "Audit events go from CloudWatch Logs, S3 objects or files into a Parquet lake; "
        "`score` turns a time range of the lake into findings with a plain reason each."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: Command modules, in the order they appear in ``detect --help``.
COMMAND_MODULES = (
    "demo",
    "simulate",
    "ingest",
    "export",
    "train",
    "score",
    "findings",
    "evaluate",
    "rules",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"detect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Find threats and misuse in Kubernetes API-server audit logs."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"detector.commands.{_name}").register(app)


def main() -> None:
    """Console entry point: expected errors are one line; a bug says how to see its traceback."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # the last line of defence: no traceback for users
        if os.environ.get("DETECT_DEBUG"):
            raise
        sys.stderr.write(
            f"error: unexpected {type(exc).__name__}: {exc} (set DETECT_DEBUG=1 for a traceback)\n"
        )
        sys.exit(3)
