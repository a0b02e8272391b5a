"""Exceptions that carry their exit code, raised where the problem is found.

The entry point (:func:`detector.cli.app.main`) handles them once: one ``error:`` line on
stderr (or a JSON record with ``--log-format json``) and ``exit_code``. Library code never
picks an exit code by matching message text; it raises the class that says what kind of
problem it is. Exit codes (README "Exit codes"): 0 ok, 1 findings at or above ``--fail-on``,
2 usage or configuration error, 3 runtime failure, 128+N stopped by signal N.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
#: 128 + SIGINT: a run stopped by Ctrl-C.
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: the reader of standard output went away (``detect findings | head``).
EXIT_BROKEN_PIPE = 141


class DetectError(Exception):
    """Base of every error a user can act on; the message is one line that says what to do."""

    exit_code: int = EXIT_RUNTIME


class UsageError(DetectError):
    """A bad flag, argument or setting: the user can fix it by changing the command or config."""

    exit_code = EXIT_USAGE


class RuntimeFailure(DetectError):
    """The command was right but the world was not: a source unreachable, unreadable input."""

    exit_code = EXIT_RUNTIME


def is_polars_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a panic of polars' Rust code (``PanicException``, a BaseException
    not an Exception), which some damaged Parquet pages raise instead of an error; checked
    by name, so that telling it apart needs no polars import."""
    return type(exc).__name__ == "PanicException"
