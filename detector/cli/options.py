"""Options, parameter types and output helpers shared by every command (declared once).

As in csvkit's ``_init_common_parser``, an option that two commands share is one
``Annotated`` alias here, so its name, help, environment variable and checks cannot drift
apart. Time and duration values go through one parser each (:class:`Instant`,
:class:`Duration`) with the bounds of :mod:`detector.timeparse`; a bad value is a usage
error raised while the command line is parsed, before any work starts.

Errors are not handled here: commands raise :class:`detector.errors.DetectError` subclasses
and the entry point (:mod:`detector.cli.app`) turns them into one ``error:`` line and the
exit code (README "Exit codes").
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from detector.cli.terminal import SafeConsole
from detector.config import REGION_NAME
from detector.controls import UNSAFE, holds_control_characters
from detector.errors import EXIT_FINDINGS, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, DetectError
from detector.errors import UsageError as _UsageError
from detector.lake.findings_schema import SEVERITIES

# The format names, not the readers: sources.files imports pyarrow.compute and fsspec,
# which `detect score` and most commands never use.
from detector.sources.formats import AUTO as _AUTO
from detector.sources.formats import INPUT_FORMATS as _INPUT_FORMATS
from detector.storage import s3_uri_problem
from detector.timeparse import (
    EARLIEST,
    MAX_DURATION,
    TimeArgumentError,
    check_instant,
    check_not_future,
    check_range,
    iso_utc,
    parse_duration,
    parse_instant,
)

__all__ = ["EXIT_FINDINGS", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE"]

# The same values as detector.model.estimator's; repeated so that `detect --help` does not
# import scikit-learn (seconds). tests/test_model.py keeps them in step.
DEFAULT_ALERT_RATE = 0.001
DEFAULT_MODEL_DIR = "models"

stderr = SafeConsole(stderr=True, highlight=False, soft_wrap=True)
stdout = SafeConsole(highlight=False, soft_wrap=True)


# ------------------------------------------------------------------ choices
class OutputFormat(StrEnum):
    table = "table"
    json = "json"


InputFormat = StrEnum("InputFormat", {f.replace("-", "_"): f for f in (_AUTO, *_INPUT_FORMATS)})  # type: ignore[misc]
InputFormat.__doc__ = "Formats of audit input: detected per file (auto) or forced."

Severity = StrEnum("Severity", {s: s for s in SEVERITIES})  # type: ignore[misc]
Severity.__doc__ = "Finding severities, lowest first (detector.lake.findings_schema)."


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


# ------------------------------------------------------------------ time parameter types
#: When the running command started (set by the app for each invocation); None: now.
INVOCATION_NOW: ContextVar[datetime | None] = ContextVar("invocation_now", default=None)


class Instant:
    """Parser of time options: a duration before now (``1h``) or an ISO-8601 instant.

    Accepts what a TOML file gives too (a native TOML datetime). Returns an aware UTC
    datetime within the bounds of :mod:`detector.timeparse`; anything else raises
    :class:`TimeArgumentError` (a ``ValueError``), which typer reports as a bad value of
    the option.
    """

    metavar = "TIME"

    def __call__(self, value: Any) -> datetime:
        if isinstance(value, datetime):
            aware = value if value.tzinfo else value.replace(tzinfo=UTC)
            return check_instant(aware.astimezone(UTC), value.isoformat())
        # One "now" for every option of a command: `--since 1h --until 1h` is empty, as
        # the same two instants written out are, not a few microseconds long.
        return parse_instant(str(value), now=INVOCATION_NOW.get())


def time_range(
    since: datetime, until: datetime | None, *, future_end: str | None = None
) -> tuple[datetime, datetime]:
    """``[since, until)``, ``until`` by default the instant the command started (the one
    ``--since 1h`` counts back from), refused when empty: ``--since 0h`` scored a whole
    window (now, read twice, was a few microseconds later the second time) and listed
    "no findings" where swapped flags are an error (found by review).

    ``future_end``: why an ``--until`` after now is refused by a command that records the
    end (train's model card) or replaces findings up to it (score). Listing commands take
    one as "up to any time"."""
    now = INVOCATION_NOW.get() or datetime.now(UTC)
    if until is not None:
        if future_end is not None:
            check_not_future("--until", until, now=now, why=future_end)
        return check_range(since, until)
    if since >= now:
        raise TimeArgumentError(
            f"empty time range: --since ({since:%Y-%m-%dT%H:%M:%SZ}) is not before now"
        )
    return since, now


class Duration:
    """Parser of duration options (``90s``, ``10m``, ``1h``, ``7d``, ``2w``) with bounds.

    Every duration option is between ``minimum`` and ``maximum`` (default: 0 and
    :data:`detector.timeparse.MAX_DURATION`); ``positive`` refuses 0.
    """

    metavar = "DURATION"

    def __init__(
        self,
        *,
        minimum: timedelta = timedelta(0),
        maximum: timedelta = MAX_DURATION,
        positive: bool = False,
        whole_seconds: bool = False,
    ) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.positive, self.whole_seconds = positive, whole_seconds

    def __call__(self, value: Any) -> timedelta:
        text = str(value)
        duration = value if isinstance(value, timedelta) else parse_duration(text)
        seconds = duration.total_seconds()
        if self.positive and seconds <= 0:
            raise TimeArgumentError(f"{text!r}: must be more than 0")
        if self.whole_seconds and seconds != int(seconds):
            raise TimeArgumentError(f"{text!r}: must be whole seconds")
        if not self.minimum <= duration <= self.maximum:
            raise TimeArgumentError(
                f"{text!r}: must be between {_human(self.minimum)} and {_human(self.maximum)}"
            )
        return duration


def _human(td: timedelta) -> str:
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def instant_option(*names: str, help: str, **kw: Any) -> Any:
    """A ``typer.Option`` whose value is an :class:`Instant`."""
    return typer.Option(*names, parser=Instant(), metavar=Instant.metavar, help=help, **kw)


def duration_option(*names: str, help: str, parser: Duration | None = None, **kw: Any) -> Any:
    """A ``typer.Option`` whose value is a :class:`Duration` (default bounds)."""
    return typer.Option(
        *names, parser=parser or Duration(), metavar=Duration.metavar, help=help, **kw
    )


# ------------------------------------------------------------------ shared options
def output_file(value: Any) -> Path:
    """A file a command writes, refused when blank: ``-o ""`` named the working folder."""
    text = str(value)
    if not text.strip():
        raise ValueError("is empty: give a file, or - for standard output")
    if Path(text).is_dir():  # was "Is a directory", exit 3, after the work (found by review)
        raise ValueError(f"{text!r} is a folder: give a file")
    return Path(text)


def _not_a_file(text: str) -> str:
    if Path(text).is_file():
        raise ValueError(f"{text!r} is a file, not a folder")
    return text


def input_file(value: Any) -> str:
    """A file a command reads, refused when blank (it named the working folder: "Is a
    directory: '.'")."""
    text = str(value)
    if not text.strip():
        raise ValueError("is empty: give a file")
    return text


def log_group_name(value: Any) -> str:
    """A CloudWatch log group name, refused when blank or holding control characters
    (blank was "cannot tell the cluster from log group ''")."""
    text = str(value)
    if not text.strip():
        raise ValueError("is empty: give a log group, e.g. /aws/eks/prod/cluster")
    if holds_control_characters(text):
        raise ValueError(f"{text!r} holds control characters")
    return text


def output_folder(value: Any) -> Path:
    """A folder a command writes into, refused when blank (it named the working folder)."""
    text = str(value)
    if not text.strip():
        raise ValueError("is empty: give a folder")
    return Path(_not_a_file(text))


def lake_root(value: Any) -> str:
    """A lake root as written, refused when it cannot name one: blank (it would resolve to
    the filesystem root), holding control characters, or an S3 URI without a bucket name."""
    text = str(value)
    if not text.strip():
        raise ValueError("is empty: give a folder or s3://bucket/prefix")
    if holds_control_characters(text):
        raise ValueError(f"{text!r} holds control characters")
    problem = s3_uri_problem(text)
    if problem:
        raise ValueError(problem)
    if "://" in text:
        # `s3://b/../x`, `s3://b//y`, `s3://b/a/./b` were written as those literal keys: one
        # prefix spelled two ways is two lakes, and a sync to disk resolves `..` (review)
        parts = text.split("://", 1)[1].rstrip("/").split("/")[1:]
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(
                f"{text!r}: a prefix with an empty, '.' or '..' part: write it plainly"
            )
    return text


def model_folder(value: Any) -> str:
    """A model store as written: as a lake root, and not a local file (training ran to
    its end, then failed to save with "Not a directory", exit 3)."""
    text = lake_root(value)
    return text if "://" in text else _not_a_file(text)


LakeOpt = Annotated[
    str,
    typer.Option(
        "--lake",
        envvar="DETECT_LAKE",
        parser=lake_root,
        help="Lake root: a local folder or s3://bucket/prefix.",
        show_default=True,
    ),
]
SinceOpt = Annotated[
    datetime,
    instant_option(
        "--since", help="Start of the range: a duration before now (1h, 30m, 7d) or ISO-8601."
    ),
]
UntilOpt = Annotated[
    datetime | None,
    instant_option(
        "--until", help="End of the range (exclusive), same forms as --since; default now."
    ),
]


def cluster_name(value: Any) -> str:
    """One cluster name (a command that writes events into one cluster's partitions), one
    a lake path part could be (checked here, so a bad name in detect.toml or
    DETECT_CLUSTER is refused by `detect config show` as by the command). Blank is
    refused: `--cluster ""` was taken as no name, and the error then asked for the
    --cluster just given (an empty DETECT_CLUSTER is no setting at all: click never
    passes it)."""
    from detector.lake.table import UnsafeName, safe_part

    text = str(value)
    if not text.strip():
        raise ValueError("is empty: give a cluster name")
    try:
        safe_part(text, "cluster name")
    except UnsafeName as exc:
        raise ValueError(str(exc)) from None
    return text


def cluster_names(value: Any) -> str:
    """A cluster name, or several separated by commas, each a :func:`cluster_name`."""
    text = str(value)
    if not text.replace(",", "").strip():
        raise ValueError("is empty: give a cluster name")
    for name in filter(None, (part.strip() for part in text.split(","))):
        cluster_name(name)
    return text


ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        envvar="DETECT_CLUSTER",
        parser=cluster_names,
        help="Cluster name (default: all / from the source).",
    ),
]
FormatOpt = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        help="Output: a table for people or JSON for machines.",
        case_sensitive=False,  # as every other choice: --fail-on HIGH, --from CloudWatch
    ),
]
InputFormatOpt = Annotated[
    InputFormat,
    typer.Option(
        "--input-format",
        "--from",
        help="Input format (default: detected per file).",
        case_sensitive=False,
    ),
]
ModelDirOpt = Annotated[
    str,
    typer.Option(
        "--model-dir",
        envvar="DETECT_MODEL_DIR",
        parser=model_folder,
        help="Model store: a local folder or s3://bucket/prefix.",
    ),
]
#: Simulated traffic: a year at most, and a rate far past any one cluster's (the 50-cluster
#: organisation of docs/operations.md logs ~23 events a second per cluster). Beyond them
#: the generator cannot count its events, and a typo is a usage error, not a crash.
MAX_SIM_DAYS = 366.0
MAX_SIM_RATE = 100_000.0
#: Events one simulation run may generate (days x rate): both in range, 0.05 day at 100,000
#: a second asked for 432M events, and ran a minute and 1.5 GB before writing one (found
#: by review). Fifty times the benchmarks' million; a longer range is several runs (--end).
MAX_SIM_EVENTS = 50_000_000


def check_sim_size(days: float, rate: float, end: datetime | None = None) -> None:
    """Refuse a simulation of more than :data:`MAX_SIM_EVENTS` events, or one starting
    before 1970 (its events went to quarantine as out of range), before any work."""
    if end is not None and end - timedelta(days=days) < EARLIEST:
        raise _UsageError(
            f"--days {days:g} before --end {end:%Y-%m-%dT%H:%M:%SZ} starts before "
            f"{EARLIEST:%Y-%m-%d}: audit time starts there (give a later --end)"
        )
    events = days * 86_400 * rate
    if events > MAX_SIM_EVENTS:
        raise _UsageError(
            f"--days {days:g} at --rate {rate:g} is about {events:,.0f} events: at most "
            f"{MAX_SIM_EVENTS:,} a run (lower --rate, or split the range with --end)"
        )


#: Seeds numpy and scikit-learn accept (a random_state is 0 to 2**32 - 1): anything else
#: would fail mid-run as an unexpected error instead of a usage error up front.
MAX_SEED = 2**32 - 1
SeedOpt = Annotated[
    int,
    typer.Option("--seed", min=0, max=MAX_SEED, help="Random seed: same data + seed, same result."),
]
WindowOpt = Annotated[
    timedelta,
    duration_option(
        "--window",
        help="Window per principal (1m to 1d), e.g. 10m, 1h.",
        parser=Duration(
            minimum=timedelta(minutes=1), maximum=timedelta(days=1), whole_seconds=True
        ),
    ),
]


def _alert_rate(value: Any) -> float:
    """An alert budget: a share strictly between 0 and 0.5."""
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not 0 < rate < 0.5:
        raise ValueError(f"{value!r}: must be between 0 and 0.5 (e.g. 0.001)")
    return rate


AlertRateOpt = Annotated[
    float,
    typer.Option(
        "--alert-rate",
        parser=_alert_rate,
        metavar="SHARE",
        help="Alert budget: share of baseline windows above the threshold (0.001 = 1 in 1000).",
    ),
]
RulesFileOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--rules",
        help="Extra rules file (YAML): adds rules or overrides built-in ones; repeatable.",
    ),
]
DisableOpt = Annotated[
    list[str] | None,
    typer.Option("--disable", help="Rule id to switch off; repeatable."),
]
EnableOpt = Annotated[
    list[str] | None,
    typer.Option("--enable", help="Rule id that ships disabled to switch on; repeatable."),
]
NoRulesOpt = Annotated[
    bool, typer.Option("--no-rules", help="Leave the rules out: the model alone.")
]
FailOnOpt = Annotated[
    Severity | None,
    typer.Option(
        "--fail-on",
        help="Exit 1 if any finding is at or above this severity.",
        case_sensitive=False,
    ),
]
MinSeverityOpt = Annotated[
    Severity | None,
    typer.Option("--min-severity", help="Only this severity and above.", case_sensitive=False),
]
#: Durations that must be more than zero (a chunk, a pass interval, a lease...).
POSITIVE = Duration(positive=True)
CloudWatchRateOpt = Annotated[
    float,
    typer.Option(
        "--rate", min=0.0, help="Client-side limit on CloudWatch API requests per second."
    ),
]
LeaseOpt = Annotated[
    timedelta,
    duration_option(
        "--lease",
        parser=POSITIVE,
        help="How long a log group stays claimed by a process that stops renewing its lease "
        "(then another exporter or replica takes over).",
    ),
]
BackoffOpt = Annotated[
    timedelta,
    duration_option("--backoff", hidden=True, help="Base of the exponential backoff."),
]
SuppressionsOpt = Annotated[
    str | None,
    typer.Option(
        "--suppressions",
        envvar="DETECT_SUPPRESSIONS",
        help="Suppressions YAML applied before delivery (default ./suppressions.yaml if any).",
    ),
]
DeliverOpt = Annotated[
    bool,
    typer.Option(
        "--deliver/--no-deliver",
        help="Send new and changed incidents to the \\[\\[sinks]] in detect.toml.",
    ),
]


def region_name(value: Any) -> str:
    """An AWS region as botocore accepts one: a typo is one line now, not an error deep in
    the first AWS call."""
    text = str(value)
    if not REGION_NAME.fullmatch(text):
        raise ValueError(f"{text!r} is not an AWS region name (us-east-1)")
    return text


RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region",
        envvar="DETECT_REGION",
        parser=region_name,
        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile).",
        show_default=False,
    ),
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
        "'audit-detector\\[ray]'). Same findings either way.",
    ),
]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to join (head:6379); default: RAY_ADDRESS or a local Ray.",
    ),
]


def executor_for(name: ExecutorName, address: str | None) -> Any:
    """The executor of ``--executor``/``--address``; an unusable one is a usage error (exit 2).

    Ray is imported only here, and only for ``--executor ray``.
    """
    from detector.detect.executor import make_executor

    if name == ExecutorName.local:
        address = None  # RAY_ADDRESS in the environment is not a request for Ray
    return make_executor(name.value, address)


# ------------------------------------------------------------------ errors (compatibility)
def fail(message: str, code: int = EXIT_RUNTIME) -> NoReturn:
    """Raise an error with this exit code; the entry point prints it as one line.

    Prefer raising the :mod:`detector.errors` class that says what went wrong.
    """
    error = _UsageError(message) if code == EXIT_USAGE else DetectError(message)
    error.exit_code = code
    raise error


def usage_error(message: str) -> NoReturn:
    """Raise a :class:`detector.errors.UsageError` (exit 2)."""
    raise _UsageError(message)


def lake_to_read(uri: str, cluster: str | None = None) -> Any:
    """The lake a reading command reads (it must exist: ``Lake.require_existing``), and a
    warning for each ``--cluster`` it holds no events of: a typo in a cron job's
    ``--cluster`` read as "no alerts" for ever. A warning, not an error: a cluster added
    today may have nothing in the lake yet."""
    import logging

    from detector.lake.events import Lake

    lake = Lake(uri).require_existing()
    names = [n for n in (part.strip() for part in (cluster or "").split(",")) if n]
    held = set(lake.clusters()) if names else set()
    for name in names:
        if name not in held:
            known = f" (it holds {', '.join(sorted(held)[:10])})" if held else ""
            logging.getLogger("detector.cli").warning(
                "the lake at %s holds no events of cluster %r%s", lake.uri, name, known
            )
    return lake


# ------------------------------------------------------------------ output
def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
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


def progress_line(text: str) -> None:
    """Redraw one progress line in place on stderr (a person's terminal): the line's own
    control characters shown (a path may hold them), cut to the terminal's width, then a
    carriage return that is ours, sent as one."""
    import shutil

    width = shutil.get_terminal_size((100, 20)).columns - 1
    sys.stderr.write("\r" + text.translate(UNSAFE)[:width].ljust(width))
    sys.stderr.flush()


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


def configured_sinks(ctx: typer.Context, output: OutputFormat | None = None) -> list[Any]:
    """The [[sinks]] of the loaded configuration (checked when the file was read).

    ``output``: the command's ``--format``. Under ``json`` an OCSF sink writing to stdout
    (``path = "-"``) is a usage error: its lines before the summary made stdout no longer
    one JSON document, exit 0 (found by review).
    """
    state = ctx.find_root().meta.get("detect.settings")
    sinks = list(state.config.extra.get("sinks", [])) if state else []
    if output == OutputFormat.json:
        for sink in sinks:
            if sink.enabled and sink.type == "ocsf" and sink.options.get("path") == "-":
                usage_error(
                    f'sink {sink.name!r} writes OCSF to stdout (path "-"), where '
                    "--format json writes its summary: give the sink a path, or use "
                    "--format table"
                )
    return sinks


@contextmanager
def stop_on_signals(stop: threading.Event, received: list[int]) -> Iterator[None]:
    """SIGTERM/SIGINT ask a long-running command (export, watch) for a clean stop: flush,
    checkpoint, exit 0; a second signal aborts at once, exit 128 + its number.

    At once: raising ``KeyboardInterrupt`` in the main thread still waited for threads
    stuck on a sink that hangs, past any grace period. The process ends as SIGKILL would
    end it, which every writer survives (checkpoints come after what they cover)."""
    import os

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(f"aborted by a second signal ({signal.Signals(signum).name})\n")
                sys.stderr.flush()
            os._exit(128 + signum)
        received.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
