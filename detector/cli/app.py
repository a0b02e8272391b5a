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
    "watch",
    "train",
    "score",
    "findings",
    "incidents",
    "suppressions",
    "evaluate",
    "rules",
    "athena",
    "config",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"detect {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        envvar="DETECT_CONFIG",
        help="Settings file (TOML); default ./detect.toml if present. See `detect config show`.",
        show_default=False,
    ),
    log_format: str | None = typer.Option(
        None,
        "--log-format",
        envvar="DETECT_LOG_FORMAT",
        help="stderr as text (default) or json: one JSON object per line, for log shippers.",
        show_default=False,
    ),
    log_level: str | None = typer.Option(
        None,
        "--log-level",
        envvar="DETECT_LOG_LEVEL",
        help="debug, info, warning (default) or error.",
        show_default=False,
    ),
    region: str | None = typer.Option(
        None,
        "--region",
        envvar="DETECT_REGION",
        help="AWS region (default: the AWS chain: AWS_REGION, profile, instance metadata).",
        show_default=False,
    ),
) -> None:
    """Find threats and misuse in Kubernetes API-server audit logs."""
    # Settings: detect.toml < DETECT_* env < flags, through click's default_map.
    from detector import config as settings
    from detector import logging_setup
    from detector.cli.options import usage_error

    command = ctx.invoked_subcommand
    logging_setup.configure(log_format or "text", log_level or "warning", command=command)
    ctx.call_on_close(logging_setup.reset)
    try:
        root = settings.setup_root(
            ctx, config=config, log_format=log_format, log_level=log_level, region=region
        )
    except settings.ConfigError as exc:
        peek = settings.peek_root(config)
        if peek.get("log_format") and log_format is None:
            logging_setup.configure(peek["log_format"], "warning", command=command)
        usage_error(str(exc))
    fmt, level = root.values.get("log_format"), root.values.get("log_level")
    if (fmt, level) != (log_format, log_level):  # the file said how to log
        logging_setup.configure(fmt or "text", level or "warning", command=command)


for _name in COMMAND_MODULES:
    importlib.import_module(f"detector.cli.commands.{_name}").register(app)


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
