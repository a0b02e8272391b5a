"""Options, output and error handling shared by every command (defined once, as in csvkit).

Exit codes (README "Exit codes"): 0 ok, 1 findings at or above ``--fail-on``, 2 usage or
configuration error, 3 runtime failure (source unreachable, unreadable input...).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


LakeOpt = Annotated[
    str,
    typer.Option(
        "--lake",
        envvar="DETECT_LAKE",
        help="Lake root: a local folder or s3://bucket/prefix.",
        show_default=True,
    ),
]
SinceOpt = Annotated[
    str,
    typer.Option(
        "--since", help="Start of the range: a duration before now (1h, 30m, 7d) or ISO-8601."
    ),
]
UntilOpt = Annotated[
    str | None,
    typer.Option(
        "--until", help="End of the range (exclusive), same forms as --since; default now."
    ),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster", envvar="DETECT_CLUSTER", help="Cluster name (default: all / from the source)."
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option("--format", help="Output: a table for people or JSON for machines."),
]


class ExecutorName(StrEnum):
    local = "local"
    ray = "ray"


ExecutorOpt = Annotated[
    ExecutorName,
    typer.Option(
        "--executor",
        envvar="DETECT_EXECUTOR",
        help="Where per-(cluster, day) work runs: here, or on Ray (pip install "
        "'audit-detector[ray]'). Same findings either way.",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to join (ray://head:10001); default: RAY_ADDRESS or a local Ray.",
    ),
]


def executor_for(name: ExecutorName, address: str | None) -> Any:
    """The executor of ``--executor``/``--address``, or a one-line usage error (exit 2)."""
    from detector.detect.executor import ExecutorError, make_executor

    if name == ExecutorName.local:
        address = None  # RAY_ADDRESS in the environment is not a request for Ray
    try:
        return make_executor(name.value, address)
    except ExecutorError as exc:
        usage_error(str(exc))


def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    """One line on stderr and an exit code: what went wrong and, where we know, what to do."""
    stderr.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    fail(message, EXIT_USAGE)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, set | tuple):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def emit_json(obj: Any) -> None:
    """Machine output on stdout, one JSON document."""
    sys.stdout.write(json.dumps(obj, default=_default, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def progress_enabled() -> bool:
    """Progress bars only for a person at a terminal; cron and Airflow logs stay clean."""
    return sys.stderr.isatty()


@contextmanager
def progress_status(message: str) -> Iterator[Any]:
    """A rich status spinner on stderr when interactive; a no-op otherwise."""
    if progress_enabled():
        with stderr.status(message) as status:
            yield status
    else:
        yield None


@contextmanager
def chunk_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A spinner (TTY only) and the callback that moves it as chunks of hours are featurized."""
    with progress_status(f"{label}: reading events...") as status:

        def update(done: int, total: int) -> None:
            if status is not None:
                status.update(f"{label}: featurized {done}/{total} chunks of hours")

        yield update
