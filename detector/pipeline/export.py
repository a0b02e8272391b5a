"""CloudWatch Logs -> lake: EKS audit streams, closed windows, exact resume.

How an export runs (``detect export``; docs/operations.md has the operator's view):

1. **Streams.** The reader (:class:`detector.sources.cloudwatch.LogsReader`) lists the
   ``kube-apiserver-audit-*`` streams before every pass and reads pages of their events;
   it only reads. Everything below is this module's.
2. **Windows.** Only closed windows are read: ``[start, now - latency)``, cut into chunks
   of ``chunk`` length. ``startTime``/``endTime`` are inclusive milliseconds, so the
   chunk ``[lo, hi)`` is asked as ``startTime=lo, endTime=hi-1`` and the next one starts
   at ``hi``: events sharing a millisecond at a boundary are in exactly one chunk.
3. **Watermark.** The checkpoint (``LAKE/_state/cloudwatch/<region>/<group>.json``) holds
   ``watermark_ms``: every event stamped before it is durably in the lake. It moves only
   after a flush, to the end of the last chunk read completely, so a SIGKILL at any
   instant leaves it at or behind what is in the lake, never ahead.
4. **Lateness.** Each pass (and each resume) re-reads ``overlap`` (default: the latency)
   behind the watermark, so an event ingested up to ``latency + overlap`` after its
   timestamp is still caught. Re-read events are dropped by ``eventId`` within a process
   and by the lake's (``audit_id``, ``stage``, ``event_time``) key across processes.
5. **Ownership.** The checkpoint carries a lease (:mod:`detector.lake.state`): a second
   exporter on the same group stops before writing anything.
6. **Faults.** Calls are paced by a client-side rate limit and retried with exponential
   backoff and jitter on throttling, 5xx, timeouts and resets
   (:mod:`detector.ratelimit`); persistent failure raises :class:`ExportError` with the
   checkpoint intact.
7. **One loop for export and watch.** :class:`Exporter` takes an ``after_write`` hook,
   called after each flush once the batch is durable in the lake and *before* the
   checkpoint moves. What the hook returns is stored in the checkpoint (``payload``) by
   the same conditional write that moves the watermark, so a consumer such as
   ``detect watch`` keeps its delivery state exactly in step with the export: after a
   SIGKILL the batches after the checkpoint are read, written (deduplicated) and handed
   to the hook again, with the payload as it was at the checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from detector.errors import EXIT_USAGE, RuntimeFailure, UsageError
from detector.lake.events import KEYS_KEPT, Lake, WriteStats
from detector.lake.state import (
    CheckpointBusy,
    CheckpointConflict,
    Lease,
    Owner,
    StateError,
    StateObject,
)
from detector.pipeline.ingest import EventBuffer, IngestSummary, write_to_lake
from detector.ratelimit import (
    RateLimiter,
    Retrier,
    RetriesExhausted,
    RetryAborted,
    RetryStats,
    client_config,
    describe_error,
    error_code,
    setup_problem,
)
from detector.sources.cloudwatch import (
    DEFAULT_STREAM_PREFIX,
    MAX_PAGE_LIMIT,
    LogsReader,
    Page,
    PaginationStuck,
    page_batch,
)
from detector.sources.files import LineBatch, merge_batches
from detector.storage import StorageError
from detector.timeparse import TimeArgumentError, check_not_future, humanize

log = logging.getLogger(__name__)

STATE_DIR = "cloudwatch"
CHECKPOINT_KIND = "cloudwatch-export"
#: Exported ranges kept beyond the watermark (oldest dropped first: only less advancing).
MAX_ISLANDS = 100

_CONFIG_ERRORS = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
}


class ExportError(RuntimeFailure):
    """The export cannot go on (source unreachable, lake unwritable...): exit 3."""


class ExportConfigError(ExportError, UsageError):
    """Fixable by the user (credentials, log group name, permissions, arguments): exit 2."""

    exit_code = EXIT_USAGE


class NoCheckpoint(ExportConfigError):
    """No ``--since`` and nothing to resume from."""


class WatchedGroup(ExportConfigError):
    """A plain export of a log group whose checkpoint a ``detect watch`` consumer keeps."""


class OtherStreams(ExportConfigError):
    """A run reading other streams than the ones its checkpoint covers."""


#: Pages read are normalized together once they hold this many bytes (or at a flush):
#: CloudWatch pages hold at most 1 MB, so the fixed cost of a normalizing falls to an
#: eighth or less; more would only hold more raw pages in memory.
PAGES_BYTES = 8 * 1024 * 1024


@dataclass
class ExportOptions:
    """Everything that shapes an export besides the time range."""

    log_group: str
    cluster: str
    stream_prefix: str = DEFAULT_STREAM_PREFIX
    latency: timedelta = timedelta(minutes=2)
    overlap: timedelta | None = None  # None: same as latency
    chunk: timedelta = timedelta(minutes=15)
    interval: timedelta = timedelta(seconds=30)
    flush_events: int = 50_000
    flush_seconds: float = 60.0
    flush_bytes: int = 128 * 1024 * 1024
    page_limit: int = MAX_PAGE_LIMIT
    rate: float = 5.0
    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    lease_seconds: float = 180.0
    wait_for_lease: float = 0.0

    @property
    def overlap_ms(self) -> int:
        return _ms(self.latency if self.overlap is None else self.overlap)


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def to_ms(instant: datetime, *, ceil: bool = False) -> int:
    value = instant.timestamp() * 1000
    return math.ceil(value) if ceil else math.floor(value)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def checkpoint_parts(region: str, log_group: str) -> tuple[str, ...]:
    """``_state`` path parts of a group's checkpoint: readable, unique, path-safe."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", ".", log_group.strip("/")).strip(".") or "group"
    digest = hashlib.sha1(log_group.encode()).hexdigest()[:8]
    # A group name may be 512 characters, a lake name part 240: the digest keeps it unique.
    return (STATE_DIR, region, f"{slug[:200]}-{digest}.json")


# --------------------------------------------------------------------------- summary
@dataclass
class ExportSummary:
    """What an export did; the command's summary and its ``--format json`` output."""

    log_group: str
    cluster: str
    region: str = ""
    lake: str = ""
    streams: list[str] = field(default_factory=list)
    mode: str = "batch"
    start: datetime | None = None
    end: datetime | None = None
    passes: int = 0
    pages: int = 0
    events_read: int = 0
    ignored_other_streams: int = 0
    overlap_skipped: int = 0
    #: CloudWatch ingestionTime - timestamp: how late events reach CloudWatch. Events later
    #: than --latency are caught only by the overlap; tune --latency/--overlap with these.
    max_ingestion_delay_ms: int = 0
    later_than_latency: int = 0
    flushes: int = 0
    checkpoint_uri: str = ""
    watermark_before: int | None = None
    watermark_after: int | None = None
    checkpoint_note: str = ""
    warnings: list[str] = field(default_factory=list)
    stopped_by: str | None = None
    complete: bool = False
    seconds: float = 0.0
    ingest: IngestSummary = field(default_factory=IngestSummary)
    api: RetryStats = field(default_factory=RetryStats)

    def to_dict(self) -> dict[str, Any]:
        ing = self.ingest.to_dict()
        return {
            "log_group": self.log_group,
            "cluster": self.cluster,
            "region": self.region,
            "lake": self.lake,
            "mode": self.mode,
            "streams": self.streams,
            "window": {"start": self.start, "end": self.end},
            "passes": self.passes,
            "pages": self.pages,
            "events_read": self.events_read,
            "events_written": ing["events_written"],
            "duplicates": ing["duplicates"] + self.overlap_skipped,
            "overlap_skipped": self.overlap_skipped,
            "ignored_other_streams": self.ignored_other_streams,
            "max_ingestion_delay_seconds": round(self.max_ingestion_delay_ms / 1000, 3),
            "later_than_latency": self.later_than_latency,
            "quarantined": ing["quarantined"],
            "quarantine_reasons": ing["quarantine_reasons"],
            "files_written": ing["files_written"],
            "flushes": self.flushes,
            **self.api.to_dict(),
            "api_calls_per_10k_events": (
                round(self.api.calls * 10_000 / self.events_read, 2) if self.events_read else None
            ),
            "checkpoint": {
                "uri": self.checkpoint_uri,
                "before": iso_ms(self.watermark_before),
                "after": iso_ms(self.watermark_after),
                "advanced": (self.watermark_after or 0) > (self.watermark_before or 0),
                "note": self.checkpoint_note or None,
            },
            "warnings": self.warnings,
            "first_event": ing["first_event"],
            "last_event": ing["last_event"],
            "stopped_by": self.stopped_by,
            "complete": self.complete,
            "seconds": round(self.seconds, 3),
            "events_per_second": (round(self.events_read / self.seconds) if self.seconds else None),
        }


_FOLLOW_HINT = " (use --follow to keep exporting as events arrive)"


def _check_not_future(since: datetime | None, until: datetime | None, *, now: float) -> None:
    """``--since`` or ``--until`` later than now is a mistake, said at once: a start in
    the future was stored in the checkpoint, and every run resuming from it exported
    nothing; a batch run to a future end would wait for it (found by review)."""
    moment = datetime.fromtimestamp(now, UTC)
    why = "nothing there can be exported yet"
    try:
        check_not_future("--since", since, now=moment, why=why)
        check_not_future("--until", until, now=moment, why=f"{why}{_FOLLOW_HINT}")
    except TimeArgumentError as exc:
        raise ExportConfigError(str(exc)) from None


# --------------------------------------------------------------------------- exporting
ProgressFn = Callable[["ExportSummary", str], None]


@dataclass
class DurableBatch:
    """What one flush made durable, handed to the ``after_write`` hook.

    ``events`` are all the events normalized since the previous flush, including those
    the lake already held (``stats.duplicates``): after a restart, a consumer sees again
    the batches it may not have finished, and decides with ``payload`` what it already did.
    """

    events: pl.DataFrame
    quarantine: pl.DataFrame
    stats: WriteStats
    #: where the checkpoint will move once the hook returns (None: it does not move yet)
    watermark_ms: int | None
    #: the payload stored with the checkpoint now (what the hook returned last time)
    payload: dict[str, Any] | None


#: Called after a batch is durable and before the checkpoint advances. Returns the payload
#: to store with the checkpoint (same conditional write), or None to keep it unchanged.
AfterWriteFn = Callable[[DurableBatch], "dict[str, Any] | None"]


def _translate(exc: BaseException, *, log_group: str, region: str, starting: bool) -> ExportError:
    """Library and AWS errors -> one-line :class:`ExportError` (config errors: exit 2)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ParamValidationError,
    )

    if isinstance(exc, ExportError):
        return exc
    problem = setup_problem(exc)
    if problem:
        return ExportConfigError(problem)
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            cls = ExportConfigError if starting else ExportError
            return cls(
                f"log group {log_group} not found in {region} "
                "(check --log-group, AWS_REGION and that EKS audit logging is enabled)"
            )
        if code in _CONFIG_ERRORS:
            return ExportConfigError(
                f"AWS refused the request: {describe_error(exc)} "
                "(see the IAM policy in pipelines/iam/detector-policy.json)"
            )
        return ExportError(f"CloudWatch Logs: {describe_error(exc)}")
    if isinstance(exc, RetriesExhausted):
        return ExportError(f"CloudWatch Logs unreachable: {exc}")
    if isinstance(exc, PaginationStuck):
        return ExportError(f"CloudWatch Logs: {exc}")
    if isinstance(exc, CheckpointBusy | CheckpointConflict):
        return ExportError(str(exc))
    if isinstance(exc, StateError | StorageError):
        return ExportError(f"lake: {exc}")
    if isinstance(exc, ParamValidationError):  # a value AWS can never take: our input
        detail = " ".join(str(exc).split()).removeprefix("Parameter validation failed: ")
        return ExportConfigError(f"AWS refuses a value given: {detail}")
    if isinstance(exc, BotoCoreError):
        return ExportError(f"AWS: {describe_error(exc)}")
    if isinstance(exc, OSError):
        return ExportError(f"lake: {exc}")
    return ExportError(f"{type(exc).__name__}: {exc}")


class Exporter:
    """One log group into one lake: batch (:meth:`run`) or follow (``follow=True``).

    Lifecycle: :meth:`start` (checkpoint, streams, lease), :meth:`run_pass` one or more
    times, :meth:`finish` (flush, checkpoint, release). :meth:`run` does all three and
    turns every failure into :class:`ExportError`.
    """

    def __init__(
        self,
        lake: Lake | str,
        options: ExportOptions,
        *,
        client: Any = None,
        stop: threading.Event | None = None,
        progress: ProgressFn | None = None,
        owner: Owner | None = None,
        clock: Callable[[], float] = time.time,
        after_write: AfterWriteFn | None = None,
    ) -> None:
        self.lake = Lake(lake) if isinstance(lake, str) else lake
        self.after_write = after_write
        #: the consumer's state stored with the checkpoint (see :class:`DurableBatch`)
        self.payload: dict[str, Any] | None = None
        self.opts = options
        self.stop = stop or threading.Event()
        self.progress = progress
        self.clock = clock
        self._client = client
        self.region = ""
        self.limiter = RateLimiter(options.rate)
        self.retrier = Retrier(
            max_attempts=options.max_attempts,
            base=options.backoff_base,
            cap=options.backoff_cap,
            limiter=self.limiter,
            sleep=self._sleep,
            should_stop=self.stop.is_set,
            on_retry=_log_retry,
        )
        self.buffer = EventBuffer(cluster=options.cluster)
        #: Pages read and not normalized yet: normalized together (see :meth:`_normalize`).
        self._pages: list[LineBatch] = []
        self._pages_bytes = 0
        self.summary = ExportSummary(
            log_group=options.log_group,
            cluster=options.cluster,
            lake=self.lake.uri,
            ingest=self.buffer.summary,
            api=self.retrier.stats,
        )
        self._owner = owner
        self.lease: Lease | None = None
        self.reader: LogsReader | None = None
        self.streams: list[str] = []
        self.follow = False
        self.until_ms: int | None = None
        self.watermark: int | None = None  # durable: everything before it is in the lake
        self.fetched_hi: int | None = None  # read up to here (maybe not flushed yet)
        self.completed_hi: int | None = None
        self._said_waiting = False
        self.next_lo = 0
        self.run_lo = 0
        self.contiguous = True
        self._seen: dict[str, int] = {}
        self._pending_events = 0
        self._pending_bytes = 0
        self._last_flush = time.monotonic()
        self._started = time.monotonic()
        self._window = ""

    # ------------------------------------------------------------------ setup
    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("logs", config=client_config())
        return self._client

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def checkpoint(self) -> StateObject:
        region = self.client.meta.region_name or "us-east-1"
        return StateObject(self.lake, *checkpoint_parts(region, self.opts.log_group))

    def start(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        follow: bool = False,
    ) -> None:
        """Read the checkpoint, list the streams, take the lease, fix the start."""
        import boto3
        from botocore.exceptions import NoCredentialsError

        self.follow = follow
        self.summary.mode = "follow" if follow else "batch"
        if follow and until is not None:
            raise ExportConfigError("--until cannot be combined with --follow")
        _check_not_future(since, until, now=self.clock())
        if self._client is None and boto3.Session().get_credentials() is None:
            raise _translate(
                NoCredentialsError(), log_group=self.opts.log_group, region="", starting=True
            )
        self.region = self.client.meta.region_name or ""
        self.summary.region = self.region
        state = self.checkpoint()
        self.summary.checkpoint_uri = state.uri
        try:
            existing = state.read().data
            _check_checkpoint(existing, state.uri)
        except StateError as exc:
            raise _translate(
                exc, log_group=self.opts.log_group, region=self.region, starting=True
            ) from None
        if since is None and _watermark_of(existing) is None and _start_of(existing) is None:
            raise NoCheckpoint(
                f"no checkpoint for log group {self.opts.log_group} in {self.lake.uri} "
                "(first run?): pass --since (e.g. --since 1h) to say where to start"
            )
        checked = (existing or {}).get("stream_prefix")
        if _watermark_of(existing) is not None and checked not in (None, self.opts.stream_prefix):
            raise OtherStreams(
                f"the checkpoint of log group {self.opts.log_group} in {self.lake.uri} covers "
                f"the streams starting with {checked!r}: reading {self.opts.stream_prefix!r} "
                f"instead would move it past events of those it never read; pass "
                f"--stream-prefix {checked}, or export other streams into another lake"
            )
        if self.after_write is None and (existing or {}).get("payload"):
            raise WatchedGroup(
                f"log group {self.opts.log_group} is followed by `detect watch` in "
                f"{self.lake.uri} (its checkpoint holds watch's state): an export would move "
                "the point watch resumes from, and the events in between would reach the lake "
                "but never its detection or alerts; let watch catch up, or to export this "
                f"group instead for good, move {state.uri} aside and pass --since"
            )
        self.reader = LogsReader(
            self.client,
            self.opts.log_group,
            stream_prefix=self.opts.stream_prefix,
            retrier=self.retrier,
            page_limit=self.opts.page_limit,
            stop=self.stop,
        )
        try:
            self.streams = self.reader.streams()
        except RetryAborted:
            raise  # a stop asked for while retrying: run() ends it as a stop
        except Exception as exc:
            raise _translate(
                exc, log_group=self.opts.log_group, region=self.region, starting=True
            ) from None
        self.summary.streams = list(self.streams)
        if not self.streams:
            self.summary.warnings.append(
                f"no log streams starting with {self.opts.stream_prefix!r} in "
                f"{self.opts.log_group}: is the audit log type enabled in the EKS cluster's "
                "logging configuration?"
            )
        self.lease = Lease(state, owner=self._owner, seconds=self.opts.lease_seconds)
        try:
            previous = self.lease.acquire(wait=self.opts.wait_for_lease, fields=self._meta())
        except (StateError, StorageError) as exc:
            raise _translate(
                exc, log_group=self.opts.log_group, region=self.region, starting=True
            ) from None
        self.watermark = _watermark_of(previous)
        payload = (previous or {}).get("payload")
        self.payload = payload if isinstance(payload, dict) else None
        self.summary.watermark_before = self.summary.watermark_after = self.watermark
        overlap = self.opts.overlap_ms
        resume = self.watermark - overlap if self.watermark is not None else None
        if since is None and resume is None and _start_of(previous) is not None:
            # An earlier run claimed the group and was stopped before its first window
            # closed: resume where it was asked to start, not with an error.
            resume = _start_of(previous)
        if since is None:
            if resume is None:  # the checkpoint vanished between our read and our claim
                raise NoCheckpoint(
                    f"no checkpoint for log group {self.opts.log_group} in {self.lake.uri}: "
                    "pass --since"
                )
            lo = resume
        elif follow and resume is not None:
            lo = min(to_ms(since), resume)  # follow never leaves a gap behind the checkpoint
        else:
            lo = to_ms(since)
        self.next_lo = lo
        self.until_ms = to_ms(until, ceil=True) if until is not None else None
        self.run_lo = lo
        if self.watermark is None and _start_of(previous) is None:
            # First claim of this group: record where it starts, so a run stopped before
            # its first window closes can be resumed without --since (nothing is lost).
            self.lease.update(start_ms=lo, start=iso_ms(lo))
        self.contiguous = self.watermark is None or lo <= self.watermark
        if not self.contiguous:
            self.summary.checkpoint_note = (
                f"range starts after the checkpoint ({iso_ms(self.watermark)}): it is recorded "
                "as exported, and the checkpoint moves past it once the gap before it is "
                "exported (run with --since at or before the checkpoint)"
            )
        self.summary.start = from_ms(lo)

    def _meta(self) -> dict[str, Any]:
        return {
            "kind": CHECKPOINT_KIND,
            "version": 1,
            "log_group": self.opts.log_group,
            "region": self.region,
            "cluster": self.opts.cluster,
            "stream_prefix": self.opts.stream_prefix,
            "lake": self.lake.uri,
        }

    # ------------------------------------------------------------------ one pass
    def pass_end(self) -> int:
        """The end (exclusive, ms) of the window a pass started now would read."""
        hi = math.floor((self.clock() - self.opts.latency.total_seconds()) * 1000)
        if self.until_ms is not None:
            hi = min(hi, self.until_ms)
        return hi

    def run_pass(self) -> bool:
        """Read ``[next_lo, now - latency)`` in chunks; returns True when there is more to do."""
        assert self.reader is not None
        lo, hi = self.next_lo, self.pass_end()
        read_before = self.summary.events_read
        self.summary.passes += 1
        if self.summary.passes > 1:
            try:
                self.streams = self.reader.streams()  # API servers come and go
            except RetryAborted:
                return False
            self.summary.streams = sorted(set(self.summary.streams) | set(self.streams))
        finished = True
        if hi > lo:
            self.summary.end = from_ms(hi)
            self._evict_seen(lo)
            chunk_ms = max(1, _ms(self.opts.chunk))
            t = lo
            while t < hi and not self.stop.is_set():
                end = min(hi, t + chunk_ms)
                self._window = f"{from_ms(t):%Y-%m-%d %H:%M:%S}..{from_ms(end):%H:%M:%S}Z"
                complete = self._read_chunk(t, end)
                if not complete:
                    finished = False
                    break
                self.completed_hi = end
                self.fetched_hi = end
                self._trim_lake_cache(end)
                t = end
                self._maybe_flush()
            if self.fetched_hi is not None:
                self.next_lo = max(lo, self.fetched_hi - self.opts.overlap_ms)
        self._maybe_flush()
        if self.lease is not None:
            self.lease.renew_if_due()
        log.info(
            "pass %d: %s .. %s, %d events read (%d written in all), checkpoint %s",
            self.summary.passes,
            iso_ms(lo),
            iso_ms(max(lo, hi)),
            self.summary.events_read - read_before,
            self.buffer.summary.events_written,
            iso_ms(self.watermark),
        )
        if self.stop.is_set():
            return False
        return self.follow or (finished and self._waits_for_until(hi))

    def _waits_for_until(self, hi: int) -> bool:
        """Whether a batch run's ``--until`` is still within ``--latency`` of now: then it
        waits for the window to close and reads the rest. It was cut short at now minus
        the latency and said complete (an hourly job run early scored a partial hour;
        found by review)."""
        if self.until_ms is None or hi >= self.until_ms:
            return False
        if not self._said_waiting:
            self._said_waiting = True
            closes = self.until_ms / 1000 + self.opts.latency.total_seconds() - self.clock()
            log.warning(
                "--until %s is within --latency %s of now: waiting %.0fs for CloudWatch to "
                "deliver up to it, then reading the rest (a stop keeps what was read)",
                iso_ms(self.until_ms),
                humanize(self.opts.latency),
                max(0.0, closes),
            )
        return True

    def _read_chunk(self, lo: int, hi: int) -> bool:
        """Read ``[lo, hi)``; True when it is complete (the checkpoint may move past it).

        With no stream to read it is not: a run with a mistyped ``--stream-prefix`` (or
        before the API server's first stream) moved the checkpoint past events it never
        read, and the next run resumed after them. Holding it loses nothing."""
        assert self.reader is not None
        if not self.streams:
            return False
        remember_from = hi - self.opts.overlap_ms
        try:
            for page in self.reader.pages(self.streams, lo, hi - 1):
                self._take(page, remember_from)
                self._maybe_flush()
                if self.lease is not None:
                    self.lease.renew_if_due()
                if self.stop.is_set():
                    return False
        except RetryAborted:
            return False  # stopping during an outage: the chunk stays unfinished
        except PaginationStuck as exc:
            if not self.follow:
                raise  # a batch run says so (exit 3); the window stays unread
            # A following run reads the window again on its next pass (it ended the
            # export with exit 3; found by review).
            log.warning("%s; reading it again on the next pass", exc)
            return False
        return not self.stop.is_set()

    def _take(self, page: Page, remember_from: int) -> None:
        s = self.summary
        s.pages += 1
        s.ignored_other_streams += page.ignored
        fresh: list[dict[str, Any]] = []
        latency_ms = _ms(self.opts.latency)
        for ev in page.events:
            eid = str(ev.get("eventId"))
            ts = _int_or(ev.get("timestamp"), 0)
            delay = _int_or(ev.get("ingestionTime"), ts) - ts
            if delay > s.max_ingestion_delay_ms:
                s.max_ingestion_delay_ms = delay
            if eid in self._seen:
                s.overlap_skipped += 1
                continue
            if delay > latency_ms:
                s.later_than_latency += 1
            if ts >= remember_from:
                self._seen[eid] = ts
            fresh.append(ev)
        if fresh:
            batch = page_batch(
                fresh, region=self.region, log_group=self.opts.log_group, cluster=self.opts.cluster
            )
            self._pages.append(batch)
            self._pages_bytes += batch.nbytes
            if self._pages_bytes >= PAGES_BYTES:
                self._normalize()
            s.events_read += len(fresh)
            self._pending_events += len(fresh)
            self._pending_bytes += batch.nbytes
        if self.progress is not None:
            self.summary.seconds = time.monotonic() - self._started
            self.progress(self.summary, self._window)

    def _evict_seen(self, lo: int) -> None:
        if self._seen:
            self._seen = {k: v for k, v in self._seen.items() if v >= lo}

    def _trim_lake_cache(self, hi: int) -> None:
        """Forget the lake's dedup keys of hours we will not write to again.

        The lake loads a partition's keys once per process; a long follow run would keep
        them all. Hours ending well before the re-read horizon are dropped (if an event
        lands there after all, the lake just reads its keys again).
        """
        horizon = from_ms(hi - self.opts.overlap_ms) - KEYS_KEPT
        self.lake.forget_keys_before(horizon)

    # ------------------------------------------------------------------ flushing
    def _maybe_flush(self) -> None:
        o = self.opts
        behind = self.completed_hi is not None and (
            self.watermark is None or self.completed_hi > self.watermark
        )
        due = (
            self._pending_events >= o.flush_events
            or self._pending_bytes >= o.flush_bytes
            or (self._pending_events and time.monotonic() - self._last_flush >= o.flush_seconds)
        )
        if due:
            self.flush()
        elif behind and not self._pending_events:
            self._advance()  # nothing waits to be written: the checkpoint can move now

    def _normalize(self) -> None:
        """Normalize the pages read since the last call, as one batch: a page of
        CloudWatch's is at most a megabyte, and each normalizing costs ~50 ms whatever
        its size (see ``ingest.MERGE_BYTES``)."""
        if self._pages:
            self.buffer.add(merge_batches(self._pages))
            self._pages, self._pages_bytes = [], 0

    def flush(self) -> None:
        """Make everything read so far durable, hand it to the hook, move the checkpoint."""
        self._normalize()
        events, quarantine = self.buffer.take()
        stats = write_to_lake(self.lake, events, quarantine, self.summary.ingest)
        self.summary.flushes += 1
        self._pending_events = self._pending_bytes = 0
        self._last_flush = time.monotonic()
        payload = None
        if self.after_write is not None:
            batch = DurableBatch(
                events=events,
                quarantine=quarantine,
                stats=stats,
                watermark_ms=self._next_watermark()[0],
                payload=self.payload,
            )
            payload = self.after_write(batch)  # raising here leaves the checkpoint behind
        self._advance(payload)

    def _next_watermark(self) -> tuple[int | None, list[tuple[int, int]], list[tuple[int, int]]]:
        """(watermark, islands, islands stored now) once what is completed is durable.

        The watermark covers one contiguous span from the first ``--since``. A run that
        starts after it (a gap) records its range in ``islands``; when a later run closes
        the gap, the watermark jumps over every island it now touches.
        """
        data = (self.lease.data if self.lease is not None else None) or {}
        old_islands = [(int(x[0]), int(x[1])) for x in data.get("islands") or []]
        hi = self.completed_hi
        if hi is None:
            return self.watermark, old_islands, old_islands
        islands = list(old_islands)
        watermark = self.watermark
        if self.contiguous:
            watermark = hi if watermark is None else max(watermark, hi)
        elif hi > self.run_lo:
            islands.append((self.run_lo, hi))
        islands = _merge(islands)
        while islands and watermark is not None and islands[0][0] <= watermark:
            watermark = max(watermark, islands.pop(0)[1])
        return watermark, islands[-MAX_ISLANDS:], old_islands

    def _advance(self, payload: dict[str, Any] | None = None) -> None:
        """Move the checkpoint to what is durable now (call only when nothing is pending),
        storing ``payload`` (the hook's state) in the same conditional write."""
        if self.lease is None or not self.lease.held:
            return
        watermark, islands, old_islands = self._next_watermark()
        new_payload = payload is not None and payload != self.payload
        if watermark == self.watermark and islands == old_islands and not new_payload:
            self.lease.renew_if_due()
            return
        fields: dict[str, Any] = {
            "watermark_ms": watermark,
            "watermark": iso_ms(watermark),
            "islands": [list(x) for x in islands],
        }
        if new_payload:
            fields["payload"] = payload
        self.lease.update(**fields)
        if new_payload:
            self.payload = payload
        if watermark is not None and watermark >= self.run_lo:
            self.contiguous = True  # the gap was closed (by islands or this run)
        self.watermark = watermark
        self.summary.watermark_after = watermark

    def finish(self) -> ExportSummary:
        """Flush, checkpoint and release the lease."""
        try:
            if self.lease is not None and self.lease.held:
                self.flush()
        finally:
            if self.lease is not None and self.lease.held:
                self.lease.release()
        self.summary.seconds = time.monotonic() - self._started
        return self.summary

    # ------------------------------------------------------------------ all of it
    def run(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        follow: bool = False,
    ) -> ExportSummary:
        """Export, then return the summary; any failure is an :class:`ExportError`."""
        self._started = time.monotonic()
        starting = True
        try:
            self.start(since=since, until=until, follow=follow)
            starting = False
            while self.run_pass():
                self._wait_for_next_pass()
            self.summary.complete = not self.stop.is_set()
            return self.finish()
        except RetryAborted:
            # Asked to stop while CloudWatch was being retried (unreachable at start-up, for
            # one): a stop like any other, nothing read past the checkpoint.
            self.summary.complete = False
            return self.finish()
        except BaseException as exc:
            self._save_what_is_safe()
            if isinstance(exc, Exception):
                raise _translate(
                    exc, log_group=self.opts.log_group, region=self.region, starting=starting
                ) from None
            raise

    def _wait_for_next_pass(self) -> None:
        wait = self.opts.interval.total_seconds()
        if not self.follow and self.until_ms is not None:  # no longer than until it closes
            closes = self.until_ms / 1000 + self.opts.latency.total_seconds() - self.clock()
            wait = min(wait, max(0.0, closes) + 0.05)
        deadline = time.monotonic() + wait
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop.wait(min(left, 1.0))
            if self._pending_events and time.monotonic() - self._last_flush >= (
                self.opts.flush_seconds
            ):
                self.flush()
            if self.lease is not None:
                self.lease.renew_if_due()

    def _save_what_is_safe(self) -> None:
        """After a failure: keep the progress made (flush, checkpoint), if we still own it."""
        try:
            if self.lease is not None and self.lease.held:
                self.flush()
        except Exception:  # the lake itself may be what failed; the checkpoint stays behind
            pass
        try:
            if self.lease is not None and self.lease.held:
                self.lease.release()
        except Exception:
            pass
        self.summary.seconds = time.monotonic() - self._started


def _log_retry(operation: str, exc: BaseException, delay: float) -> None:
    log.info("%s: %s; retrying in %.2fs", operation, describe_error(exc), delay)


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-touching ``[lo, hi)`` ranges."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _int_or(value: Any, default: int) -> int:
    """CloudWatch numbers as int; anything else (missing, damaged) as ``default``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_checkpoint(data: dict[str, Any] | None, uri: str) -> None:
    """A checkpoint whose fields have the types this code writes, else a :class:`StateError`
    naming it (a hand edit or a damaged write gave a bare ``ValueError`` with no path)."""
    if not data:
        return
    problems = []
    for key in ("watermark_ms", "start_ms", "lease_until_ms"):
        if data.get(key) is not None and not _number(data[key]):
            problems.append(f"{key} is not a number")
    if data.get("owner") is not None and not isinstance(data["owner"], dict):
        problems.append("owner is not an object")
    if data.get("payload") is not None and not isinstance(data["payload"], dict):
        problems.append("payload is not an object")
    islands = data.get("islands")
    if islands is not None and not (
        isinstance(islands, list)
        and all(isinstance(x, list) and len(x) == 2 and all(map(_number, x)) for x in islands)
    ):
        problems.append("islands is not a list of [start, end] numbers")
    if problems:
        raise StateError(f"{uri}: {'; '.join(problems)}; move it aside to start over")


def _watermark_of(data: dict[str, Any] | None) -> int | None:
    if not data:
        return None
    value = data.get("watermark_ms")
    return int(value) if isinstance(value, int | float) else None


def _start_of(data: dict[str, Any] | None) -> int | None:
    """Where the first run on a group was asked to start (``start_ms``), if recorded."""
    value = (data or {}).get("start_ms")
    return value if isinstance(value, int) and not isinstance(value, bool) else None
