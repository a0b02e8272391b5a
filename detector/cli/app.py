"""The ``detect`` command: a thin typer shell over the library.

Each command lives in ``detector/cli/commands/<name>.py`` and registers itself on the app;
it parses arguments, calls the library and renders the result. Errors are handled once,
here: a :class:`detector.errors.DetectError` raised anywhere below, or a usage error found
while parsing the command line, becomes one ``error:`` line on stderr (a JSON record with
``--log-format json``) and its exit code (README "Exit codes"), never a traceback or a box.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from datetime import UTC, datetime
from typing import Any

import typer
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from detector import __version__
from detector.cli.helptext import reflow_registered
from detector.cli.options import INVOCATION_NOW, LogFormat, LogLevel, RegionOpt, stderr
from detector.controls import ONE_LINE
from detector.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME,
    EXIT_USAGE,
    DetectError,
    is_polars_panic,
)


def report(message: str) -> None:
    """The one line every error becomes (turned into a JSON record under --log-format json).

    Control characters a message carries from what a user typed (a path holding a line
    break) are shown escaped: an error stays one line, and no input rewrites the terminal.
    """
    stderr.print(f"error: {message.translate(ONE_LINE)}", markup=False)


def click_message(exc: click_exceptions.ClickException) -> str:
    """A usage error found by the parser, as one line (no usage block, no box)."""
    message = exc.format_message().replace("Value error, ", "")
    message = " ".join(message.split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click_exceptions.UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


def environment_error(exc: Exception) -> int | None:
    """Report errors of the machine rather than of our code; None for anything else.

    A file that cannot be written (``--output /proc/x``), a path that is a file where a
    folder is due, AWS credentials and region missing from the whole AWS chain, or an AWS
    endpoint that cannot be reached, are told as one line by their class (never by their
    text): OS errors and an unreachable endpoint exit 3, a missing AWS credential or
    region is configuration (exit 2).
    """
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        report(f"{exc.strerror}{where}")
        return EXIT_RUNTIME
    if (damage := _damaged_file(exc)) is not None:
        report(damage)
        return EXIT_RUNTIME
    if "botocore.exceptions" not in sys.modules:  # no AWS call was made
        return None
    from detector import ratelimit

    problem = ratelimit.setup_problem(exc)
    if problem:
        report(problem)
        return EXIT_USAGE
    endpoint = ratelimit.unreachable_endpoint(exc)
    if endpoint:
        report(
            f"cannot reach {endpoint} ({type(exc).__name__}): check the network, the region "
            "and AWS_ENDPOINT_URL"
        )
        return EXIT_RUNTIME
    return None


#: What polars says of a Parquet file whose footer reads but whose pages do not (bytes
#: overwritten in place): readers check footers only, so the scan itself meets it.
_DAMAGE = ("data corruption", "out of specification", "decompress", "zstd error", "thrift")


def _damaged_file(exc: Exception) -> str | None:
    """One line for a lake file that could not be decoded part-way through a scan, saying
    how to find it; it read "unexpected ComputeError: zstd error ..." (found by review)."""
    import polars as pl

    text = str(exc).translate(ONE_LINE)
    if not isinstance(exc, pl.exceptions.ComputeError):
        return None
    if not any(word in text.lower() for word in _DAMAGE):
        return None
    return (
        f"a lake file could not be decoded ({text[:160]}): it is damaged; "
        "`detect lake check --lake LAKE` names it, then move it aside"
    )


def _asked_for_json(args: list[str]) -> bool:
    """``--log-format json`` before the command name, or DETECT_LOG_FORMAT=json."""
    values = iter(args)
    for arg in values:
        if arg == "--log-format":
            return next(values, "").lower() == "json"
        if arg.startswith("--log-format="):
            return arg.split("=", 1)[1].lower() == "json"
        if arg in ("--config", "--log-level", "--region"):
            next(values, None)
        elif not arg.startswith("-"):
            break  # the command name: its own options are not ours
    return os.environ.get("DETECT_LOG_FORMAT", "").lower() == "json"


class DetectGroup(TyperGroup):
    """The root group: runs the command and handles what it raises, once.

    Run from the console entry point (:func:`detector.cli.main`), it imports only the
    command it runs: each command module imports what its work needs (CloudWatch and boto,
    the ingest readers, the report's charts...) and `detect score` should not pay for
    the others. Listing commands (``--help``, a mistyped name), ``detect config`` (which
    shows every command's settings) and a config file (checked against every command)
    load them all.
    """

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands:
            one = cmd_name in COMMAND_MODULES and cmd_name != "config"
            load_commands(self, (cmd_name,) if one else COMMAND_MODULES)
            if cmd_name not in self.commands:
                load_commands(self, COMMAND_MODULES)  # a command named unlike its module
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: Any) -> list[str]:
        load_commands(self, COMMAND_MODULES)
        # Commands before groups, as typer orders them when it builds the group itself.
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: isinstance(self.commands[n], TyperGroup))

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from detector import logging_setup

        if _asked_for_json(sys.argv[1:] if args is None else list(args)):
            # So that an error found before the root callback runs is a JSON record too.
            logging_setup.configure("json", "warning")
        started = INVOCATION_NOW.set(datetime.now(UTC))
        try:
            result = super().main(
                args, prog_name or "detect", complete_var, standalone_mode=False, **extra
            )
            code = result if isinstance(result, int) else 0
        except SystemExit as exc:
            # click and rich end a run whose reader closed the pipe (`| head`) with exit 1,
            # the code of "--fail-on found something": say what the shell says of SIGPIPE.
            cause = exc.__context__
            if exc.code == 1 and (
                isinstance(cause, BrokenPipeError) or getattr(cause, "errno", 0) == errno.EPIPE
            ):
                exc.code = EXIT_BROKEN_PIPE
            raise
        except DetectError as exc:
            report(str(exc))
            code = exc.exit_code
        except click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except click_exceptions.ClickException as exc:
            report(click_message(exc))
            code = exc.exit_code
        except typer.Abort:
            report("aborted")
            code = EXIT_INTERRUPTED
        except Exception as exc:
            code = environment_error(exc)
            if code is None:  # a bug: main() says how to see its traceback
                raise
        except BaseException as exc:
            if not is_polars_panic(exc) or os.environ.get("DETECT_DEBUG"):
                raise
            # polars panics (a BaseException) on some damaged pages, where others raise
            text = str(exc).translate(ONE_LINE)
            report(
                f"a lake file could not be decoded (polars panicked: {text[:160]}): a damaged "
                "file does this; `detect lake check --lake LAKE` names it, then move it aside"
            )
            code = EXIT_RUNTIME
        finally:
            INVOCATION_NOW.reset(started)
            logging_setup.reset()
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="detect",
    cls=DetectGroup,
    help=(
        "Find threats and misuse in Kubernetes API-server audit logs.\n\n"
        "Audit events go from CloudWatch Logs, S3 objects or files into a Parquet lake; "
        "`score` turns a time range of the lake into findings with a plain reason each.\n\n"
        "Example:\n"
        "\b\n"
        "    detect demo\n"
        "    detect findings --lake ./lake --since 1d\n"
        "    detect score --lake ./lake --model-dir .demo/models --since 1h\n"
        "    detect score --help"
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
    "timeline",
    "report",
    "evaluate",
    "rules",
    "athena",
    "lake",
    "compact",
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
    log_format: LogFormat | None = typer.Option(
        None,
        "--log-format",
        envvar="DETECT_LOG_FORMAT",
        help="stderr as text (default) or json: one JSON object per line, for log shippers.",
        show_default=False,
        case_sensitive=False,
    ),
    log_level: LogLevel | None = typer.Option(
        None,
        "--log-level",
        envvar="DETECT_LOG_LEVEL",
        help="Least severe log records shown (default: warning).",
        show_default=False,
        case_sensitive=False,
    ),
    region: RegionOpt = None,
) -> None:
    """Find threats and misuse in Kubernetes API-server audit logs."""
    # Settings: detect.toml < DETECT_* env < flags, through click's default_map. The whole
    # file is checked here, for every command; a bad key is a ConfigError (exit 2).
    from detector import config as settings
    from detector import logging_setup

    command = ctx.invoked_subcommand
    if isinstance(ctx.command, DetectGroup):
        try:
            configured = settings.config_path(config) is not None
        except settings.ConfigError:
            configured = False  # setup_root below reports it
        if configured:  # the file is checked against every command's options
            load_commands(ctx.command, COMMAND_MODULES)
    fmt = log_format.value if log_format else None
    level = log_level.value if log_level else None
    logging_setup.configure(fmt or "text", level or "warning", command=command)
    try:
        root = settings.setup_root(
            ctx, config=config, log_format=fmt, log_level=level, region=region
        )
    except settings.ConfigError:
        peek = settings.peek_root(config)
        if peek.get("log_format") and fmt is None:  # the error itself as the file asks
            logging_setup.configure(peek["log_format"], "warning", command=command)
        raise
    fmt_now, level_now = root.values.get("log_format"), root.values.get("log_level")
    if (fmt_now, level_now) != (fmt, level):  # the file said how to log
        logging_setup.configure(fmt_now or "text", level_now or "warning", command=command)


#: Command modules registered on ``app`` so far.
_loaded: set[str] = set()


def load_commands(group: TyperGroup | None, names: tuple[str, ...]) -> None:
    """Import and register the command modules ``names`` (once each).

    ``group``: the click group typer built from ``app`` for this run, when it exists
    already: the new commands are added to it too.
    """
    for name in names:
        if name in _loaded:
            continue
        _loaded.add(name)
        n_commands, n_groups = len(app.registered_commands), len(app.registered_groups)
        importlib.import_module(f"detector.cli.commands.{name}").register(app)
        reflow_registered(app.registered_commands[n_commands:], app.registered_groups[n_groups:])
        if group is None:
            continue
        for info in app.registered_commands[n_commands:]:
            cmd = typer.main.get_command_from_info(
                info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                rich_markup_mode=app.rich_markup_mode,
            )
            group.add_command(cmd, cmd.name)
        for group_info in app.registered_groups[n_groups:]:
            sub = typer.main.get_group_from_info(
                group_info,
                pretty_exceptions_short=app.pretty_exceptions_short,
                suggest_commands=app.suggest_commands,
                rich_markup_mode=app.rich_markup_mode,
            )
            group.add_command(sub, sub.name)


def _lazy() -> bool:
    """True when the console entry point asked for commands to be imported on demand."""
    from detector import cli

    return bool(getattr(cli, "lazy_commands", False))


if not _lazy():  # the library's and the tests' ``app``: every command, registered now
    load_commands(None, COMMAND_MODULES)


def main() -> None:
    """Console entry point; a bug (not a DetectError) says how to see its traceback."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # the last line of defence: no traceback for users
        if os.environ.get("DETECT_DEBUG"):
            raise
        text = f"{exc}".translate(ONE_LINE)  # polars' errors run over several lines
        sys.stderr.write(
            f"error: unexpected {type(exc).__name__}: {text} (set DETECT_DEBUG=1 for a traceback)\n"
        )
        sys.exit(EXIT_RUNTIME)


__all__ = ["EXIT_USAGE", "app", "main"]
