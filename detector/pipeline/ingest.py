"""Readers -> normalize -> lake, with counts a user can check and bounded memory.

Three small parts, used by ``detect ingest`` (files, S3 objects) and by the CloudWatch
exporter (:mod:`detector.pipeline.export`), each deciding *when* to write on its own terms:

- :class:`EventBuffer` normalizes :class:`~detector.sources.files.LineBatch` objects and
  holds the events and quarantine rows until they are taken. It knows nothing of a lake,
  so tests and ``rules test`` use it to normalize in memory.
- :func:`write_to_lake` writes what a buffer held, once each, and counts it.
- :class:`Ingestor` is the two together with a row limit: ``detect ingest`` flushes every
  ``flush_rows`` events, so a 5 GB input never needs 5 GB of RAM, and it never loses good
  rows because a neighbour was bad.

The cluster of an event is never a silent default (a lake once held the same events as
``prod`` from an export and as ``default`` from an ingest): it is ``--cluster``, else what
the source says (the EKS log group of Firehose records, an ``aws/eks/<name>/`` or
``cluster=<name>/`` part of the path), else the lake's only cluster, else the ingest stops
with a usage error before any event of that input is written (:class:`ClusterUnknown`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import polars as pl

from detector.errors import UsageError
from detector.events.normalize import Normalized, TimeBounds, normalize_lines, quarantine_frame
from detector.events.redact import redact_text
from detector.events.schema import CANONICAL_COLUMNS, QUARANTINE_COLUMNS
from detector.lake.events import Lake, WriteStats
from detector.lake.manifest import ObjectManifest
from detector.lake.table import safe_part
from detector.sources.files import (
    BATCH_BYTES,
    MAX_BATCH_LINES,
    InputError,
    InputNotFound,
    LineBatch,
    cluster_from_path,
    expand_inputs,
    is_s3,
    merge_batches,
    messages_batch,
    object_identity,
    read_batches,
)

log = logging.getLogger(__name__)

#: Events buffered before a write: ~40-65 MB of canonical rows, a file of several thousand
#: rows per hour touched. Halving it from 100k took ~110 MB off an ingest's peak RSS.
FLUSH_ROWS = 50_000
#: Raw text of quarantined rows held before a flush (each row's is at most 64 KB).
QUARANTINE_FLUSH_BYTES = 64 * 2**20
#: Consecutive batches of one cluster are normalized together up to this many bytes of
#: input (a batch of its own size goes alone): a batch costs ~50 ms of small queries
#: whatever its size, more than the work on a Firehose object of 50 events, and an S3
#: prefix holds thousands of them (72 such objects: 6.4 s to ingest, one batch 0.3 s).
MERGE_BYTES = BATCH_BYTES
#: Cluster name of events normalized in memory only (``read_events``): nothing is stored.
IN_MEMORY_CLUSTER = "default"

#: How a cluster name was chosen, as the summary says it.
CLUSTER_ORIGINS = {
    "flag": "--cluster",
    "log group": "from the EKS log group",
    "path": "from the input path",
    "lake": "the only cluster in the lake",
    "memory": "a label for events read in memory only",
}


class ClusterUnknown(UsageError):
    """No ``--cluster``, and neither the input nor the lake says which cluster it is from.

    A usage error (exit 2) raised before any event of that input is buffered: guessing a
    name would store the same events twice under two names.
    """


@dataclass(frozen=True)
class ClusterGuess:
    """A cluster name for events whose batch carries none, and where it came from."""

    name: str
    origin: str  # a key of CLUSTER_ORIGINS


@dataclass
class IngestSummary:
    """What an ingest did; printed as the command's summary and as ``--format json``."""

    inputs: int = 0
    skipped_inputs: int = 0  # S3 objects already ingested by an earlier run
    failed_inputs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. a FIFO skipped in a folder
    lines: int = 0
    bytes: int = 0
    events_written: int = 0
    duplicates: int = 0
    #: cluster name -> how it was chosen (a key of CLUSTER_ORIGINS)
    clusters: dict[str, str] = field(default_factory=dict)
    other_cluster: int = 0  # of duplicates: already stored under another cluster name
    quarantined: int = 0
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    files_written: int = 0
    seconds: float = 0.0
    first_event: datetime | None = None
    last_event: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "skipped_inputs": self.skipped_inputs,
            "failed_inputs": self.failed_inputs,
            "warnings": self.warnings,
            "lines": self.lines,
            "bytes": self.bytes,
            "events_written": self.events_written,
            "duplicates": self.duplicates,
            "clusters": dict(self.clusters),
            "other_cluster": self.other_cluster,
            "quarantined": self.quarantined,
            "quarantine_reasons": dict(self.quarantine_reasons.most_common()),
            "files_written": self.files_written,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.lines / self.seconds) if self.seconds else None,
            "first_event": self.first_event,
            "last_event": self.last_event,
        }


def _reason_family(reason: str) -> str:
    """Group quarantine reasons for the summary ("invalid JSON: ... at 12" -> "invalid JSON")."""
    return reason.split(":", 1)[0]


def _source_name(batch: LineBatch) -> str:
    """The input a batch came from (CloudWatch sources are ``URI#logStream``), as messages
    show it: redacted as the lake's ``source`` column is (a presigned URL's signature)."""
    where = batch.source if isinstance(batch.source, str) else batch.source[0].as_py()
    return redact_text(str(where).split("#", 1)[0])


@dataclass
class Prepared:
    """One batch normalized by :meth:`EventBuffer.prepare`, not yet held or counted."""

    cluster: str
    origin: str  # a key of CLUSTER_ORIGINS, or "" for a batch without lines
    source: str
    lines: int
    nbytes: int
    rejected: pl.DataFrame | None  # lines the reader set aside, as quarantine rows
    result: Normalized | None


class EventBuffer:
    """Normalize batches of raw messages and hold the rows until :meth:`take`.

    Counts go to ``summary`` as batches arrive (lines, bytes, quarantined, event time
    range); what is written is counted by :func:`write_to_lake`.
    """

    def __init__(
        self,
        *,
        cluster: str | None = None,
        summary: IngestSummary | None = None,
        time_bounds: TimeBounds | None = None,
    ) -> None:
        self.time_bounds = time_bounds
        self.cluster = cluster
        self.summary = summary if summary is not None else IngestSummary()
        self._events: list[pl.DataFrame] = []
        self._quarantine: list[pl.DataFrame] = []
        self._rows = 0
        self._bytes = 0
        self._quarantine_rows = 0
        self._quarantine_bytes = 0

    @property
    def buffered(self) -> int:
        """Event rows held."""
        return self._rows

    @property
    def buffered_bytes(self) -> int:
        """Raw input bytes behind the rows held."""
        return self._bytes

    @property
    def quarantine_held(self) -> tuple[int, int]:
        """(rows, bytes of raw text) of quarantine held: input that is all garbage holds
        no event, and held until the end it filled memory (3M lines of ``{}``, 9 MB, took
        5.5 GB; found by review)."""
        return self._quarantine_rows, self._quarantine_bytes

    @property
    def empty(self) -> bool:
        return not self._events and not self._quarantine

    def add(self, batch: LineBatch, fallback: ClusterGuess | None = None) -> None:
        """Normalize one batch and hold its events and quarantine rows.

        The cluster is the buffer's own, else the batch's (its log group), else
        ``fallback``; with none of them a batch holding lines raises
        :class:`ClusterUnknown` before anything of it is held.
        """
        self.hold(self.prepare(batch, fallback))

    def prepare(self, batch: LineBatch, fallback: ClusterGuess | None = None) -> Prepared:
        """The normalizing half of :meth:`add`: touches nothing of the buffer's, so it can
        run in another thread while the buffer writes what it holds (see
        :func:`ingest_paths`); :meth:`hold` then takes the result, in input order."""
        cluster, origin = "", ""
        if len(batch.lines):  # quarantine rows carry no cluster: only events need one
            cluster, origin = self._cluster_of(batch, fallback)
        rejected = quarantine_frame(list(batch.rejected)) if batch.rejected else None
        result = None
        if len(batch.lines):
            result = normalize_lines(
                batch.lines,
                positions=batch.positions,
                source=batch.source,
                cluster=cluster,
                terminated=batch.terminated,
                bounds=self.time_bounds,
            )
        return Prepared(
            cluster=cluster,
            origin=origin,
            source=_source_name(batch) if len(batch.lines) else "",
            lines=len(batch.lines) + len(batch.rejected),
            nbytes=batch.nbytes,
            rejected=rejected,
            result=result,
        )

    def hold(self, prepared: Prepared) -> None:
        """Count a prepared batch and keep its rows until :meth:`take`."""
        cluster = prepared.cluster
        if cluster and cluster not in self.summary.clusters:
            self.summary.clusters[cluster] = prepared.origin
            if prepared.origin == "lake":
                log.info(
                    "%s names no cluster and --cluster was not given: its events go to "
                    "cluster %s, the only cluster in the lake",
                    prepared.source,
                    cluster,
                )
        self.summary.lines += prepared.lines
        self.summary.bytes += prepared.nbytes
        self._bytes += prepared.nbytes
        if prepared.rejected is not None:
            self._add_quarantine(prepared.rejected)
        result = prepared.result
        if result is None:
            return
        self._add_quarantine(result.quarantine)
        if result.events.height:
            self._events.append(result.events)
            self._rows += result.events.height
            lo, hi = result.events.select(
                pl.col("event_time").min().alias("lo"), pl.col("event_time").max().alias("hi")
            ).row(0)
            s = self.summary
            s.first_event = lo if s.first_event is None else min(s.first_event, lo)
            s.last_event = hi if s.last_event is None else max(s.last_event, hi)

    def _cluster_of(self, batch: LineBatch, fallback: ClusterGuess | None) -> tuple[str, str]:
        """(name, origin): the buffer's own, else the batch's log group, else ``fallback``."""
        if self.cluster:
            return self.cluster, "flag"
        if batch.cluster:
            return batch.cluster, "log group"
        if fallback is not None:
            return fallback.name, fallback.origin
        raise ClusterUnknown(
            f"cannot tell which cluster {_source_name(batch)} is from: pass --cluster NAME"
        )

    def add_messages(
        self,
        messages: list[str],
        *,
        positions: list[str],
        source: str | list[str],
        cluster: str | None = None,
    ) -> None:
        """Normalize and hold raw audit messages (CloudWatch ``message`` strings)."""
        self.add(messages_batch(source, messages, positions, cluster=cluster))

    def quarantine_raw(self, records: list[tuple[str, str, str, bytes | str]]) -> None:
        """Set aside inputs rejected before normalizing (source, position, reason, raw)."""
        self.summary.lines += len(records)
        self._add_quarantine(quarantine_frame(records))

    def _add_quarantine(self, df: pl.DataFrame) -> None:
        if df.height:
            self._quarantine.append(df)
            self._quarantine_rows += df.height
            self._quarantine_bytes += int(df["raw"].str.len_bytes().sum() or 0)
            self.summary.quarantined += df.height
            self.summary.quarantine_reasons.update(
                _reason_family(r) for r in df["reason"].to_list()
            )

    def take(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(events, quarantine) held so far, and an empty buffer."""
        events = (
            pl.concat(self._events, how="vertical")
            if self._events
            else pl.DataFrame(schema=CANONICAL_COLUMNS)
        )
        quarantine = (
            pl.concat(self._quarantine, how="vertical")
            if self._quarantine
            else pl.DataFrame(schema=QUARANTINE_COLUMNS)
        )
        self._events, self._quarantine, self._rows, self._bytes = [], [], 0, 0
        self._quarantine_rows = self._quarantine_bytes = 0
        return events, quarantine


def write_to_lake(
    lake: Lake, events: pl.DataFrame, quarantine: pl.DataFrame, summary: IngestSummary
) -> WriteStats:
    """Write taken rows; when it returns they are durable in the lake, each once.

    Events go first: a crash between the two writes loses no event, and re-reading the
    input adds only the quarantine rows that are missing (both tables deduplicate).
    """
    stats = lake.write_events(events)
    lake.write_quarantine(quarantine)
    summary.events_written += stats.written
    summary.duplicates += stats.duplicates
    summary.other_cluster += stats.other_cluster
    summary.files_written += stats.files
    return stats


class Ingestor:
    """An :class:`EventBuffer` written to a lake every ``flush_rows`` events."""

    def __init__(
        self,
        lake: Lake,
        *,
        cluster: str | None = None,
        flush_rows: int = FLUSH_ROWS,
        time_bounds: TimeBounds | None = None,
    ):
        self.lake = lake
        self.flush_rows = flush_rows
        self.buffer = EventBuffer(cluster=cluster, time_bounds=time_bounds)
        self.summary = self.buffer.summary

    @property
    def buffered(self) -> int:
        return self.buffer.buffered

    def add(self, batch: LineBatch, fallback: ClusterGuess | None = None) -> None:
        """Normalize one batch and buffer it; flushes when the buffer is full."""
        self.hold(self.buffer.prepare(batch, fallback))

    def hold(self, prepared: Prepared) -> None:
        """Buffer a batch normalized by :meth:`EventBuffer.prepare`; flushes when full."""
        self.buffer.hold(prepared)
        rows, raw = self.buffer.quarantine_held
        if self.buffer.buffered + rows >= self.flush_rows or raw >= QUARANTINE_FLUSH_BYTES:
            self.flush()

    def flush(self) -> WriteStats:
        """Write everything buffered. After it returns, those events are durable in the lake."""
        events, quarantine = self.buffer.take()
        return write_to_lake(self.lake, events, quarantine, self.summary)


# --------------------------------------------------------------------------- entry points
ProgressFn = Callable[[IngestSummary, str], None]

T = TypeVar("T")


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Produce the next item in a thread while the caller works on this one.

    Reading and splitting the next block (file I/O, gunzip, numpy) overlaps with parsing
    and writing this one (polars, which releases the GIL): about 15% off an ingest on two
    cores. One item ahead at most, so memory stays bounded; an error in the producer is
    raised in the caller; a caller that stops early stops the producer, and the producer
    has finished when the generator is closed (so a test can count without waiting).
    """
    slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slot.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slot.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slot.put(("error", exc))

    thread = threading.Thread(target=produce, name="ingest-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slot.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        with_room = True
        while with_room:  # unblock a producer waiting on a full slot, then wait for it
            try:
                slot.get_nowait()
            except queue.Empty:
                with_room = False
        thread.join(timeout=30)


U = TypeVar("U")

#: Batches normalized at once: parsing is partly single-threaded (polars string kernels on
#: one column, Python glue), so one batch per core keeps the cores busy; each costs about
#: 100 MB (a block, see BATCH_BYTES, and its parsed columns), hence at most four.
NORMALIZE_WORKERS = min(4, max(2, os.cpu_count() or 2))


def ordered_map(fn: Callable[[T], U], items: Iterator[T], *, workers: int) -> Iterator[U]:
    """``map(fn, items)`` on ``workers`` threads, results in input order.

    One item more than ``workers`` is submitted, so the workers keep going while the
    caller works on a result (a write); at most ``workers + 1`` items are in hand at once,
    so memory stays bounded. An error in ``fn`` is raised in the caller at that item's
    turn, after the results before it; a caller that stops early leaves nothing running
    once the generator is closed.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest-normalize")
    pending: deque[Future[U]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _outside_lake(
    uris: list[str], paths: Iterable[str], lake: Lake, warn: Callable[[str], None]
) -> list[str]:
    """``uris`` without the lake's own files: an input inside the lake is a mistake (exit 2;
    its Parquet files went to quarantine as thousands of lines that are not JSON), and a
    folder holding the lake (``detect ingest . --lake ./lake``) is read without it."""
    if lake.loc.is_s3:
        return uris
    root = os.path.realpath(lake.loc.root) + os.sep  # through links to the lake too
    for path in paths:
        if not is_s3(path) and (os.path.realpath(path) + os.sep).startswith(root):
            raise UsageError(f"{path} is inside the lake {lake.uri}: ingest reads audit logs")
    kept = [u for u in uris if is_s3(u) or not os.path.realpath(u).startswith(root)]
    if len(kept) < len(uris):
        warn(f"skipped {len(uris) - len(kept)} file(s) of the lake {lake.uri} itself")
    return _outside_other_lakes(kept, warn)


_LAKE_MARK = "/_state/locks/writer.json"


def _outside_other_lakes(uris: list[str], warn: Callable[[str], None]) -> list[str]:
    """``uris`` without the files of other lakes found among them (a folder holding a
    lake's writer lock, ``_state/locks/writer.json``): an old lake copied next to the logs
    went to quarantine as its Parquet pages and state files, thousands of "invalid UTF-8"
    lines with exit 0 (found by review). One warning per lake; nothing but lakes is a
    usage error."""
    # A lake is known by its writer lock, which every write takes: folders merely named
    # `_state` and `events` are a log collector's as well (found by review).
    roots = {u[: -len(_LAKE_MARK)] for u in uris if u.endswith(_LAKE_MARK)}
    if not roots:
        return uris
    kept = [u for u in uris if not any(u.startswith(r + "/") for r in roots)]
    if not kept:
        raise UsageError(f"{', '.join(sorted(roots))}: a lake, not audit logs: nothing to ingest")
    for root in sorted(roots):
        count = sum(u.startswith(root + "/") for u in uris)
        warn(f"{root}: skipped {count} file(s) of another lake: ingest reads audit logs, not lakes")
    return kept


@dataclass
class _Step:
    """What the ingest loop takes, in input order: a batch to normalize (the lines of one
    or more small inputs, see :data:`MERGE_BYTES`) and the inputs that ended with it."""

    batch: LineBatch | None
    fallback: ClusterGuess | None
    uri: str  # the last input with lines here, for progress
    ended: list[tuple[str, str]] = field(default_factory=list)  # S3 objects read whole
    failed: list[str] = field(default_factory=list)  # inputs that could not be read


def _steps(
    uris: list[str],
    fmt: str,
    *,
    cluster: str | None,
    lake_guess: ClusterGuess | None,
    manifest: ObjectManifest,
    reprocess: bool,
    summary: IngestSummary,
) -> Iterator[_Step]:
    """The batches of every input in turn, consecutive ones of one cluster merged up to
    :data:`MERGE_BYTES`. An input that cannot be read is recorded and the next one read;
    the lines it gave before failing are kept, as a damaged file's are. An input ends in
    the step that holds its last lines or a later one, so the manifest records it only
    once they are held."""
    merging: list[LineBatch] = []
    size, count, key, step = 0, 0, None, _Step(None, None, "")

    def emit() -> _Step:
        nonlocal merging, size, count, step
        done = step
        done.batch = merge_batches(merging) if merging else None
        merging, size, count, step = [], 0, 0, _Step(None, None, "")
        return done

    for uri in uris:
        identity = None
        if is_s3(uri):
            identity = object_identity(uri)
            if not reprocess and identity in manifest:
                summary.skipped_inputs += 1
                continue
        summary.inputs += 1
        fallback = lake_guess
        if not cluster and (named := cluster_from_path(uri)):
            fallback = ClusterGuess(safe_part(named, "cluster name"), "path")
        try:
            for batch in read_batches(uri, fmt, again_later=True):
                # the lines' bytes and the heads kept of lines set aside (a file of
                # over-long lines gives batches of those alone, with no line bytes)
                weight = batch.nbytes + sum(len(r[3]) for r in batch.rejected)
                lines = len(batch.lines)
                if merging and (
                    (fallback, batch.cluster) != key
                    or size + weight > MERGE_BYTES
                    or count + lines > MAX_BATCH_LINES  # tiny lines: bounded as rows
                ):
                    yield emit()
                merging.append(batch)
                size += weight
                count += lines
                key = (fallback, batch.cluster)
                step.fallback, step.uri = fallback, uri
                if size >= MERGE_BYTES // 2 or count >= MAX_BATCH_LINES:  # on its way at once
                    yield emit()
        except InputError as exc:
            step.failed.append(str(exc))
            continue
        if identity:
            step.ended.append(identity)
    if merging or step.ended or step.failed:
        yield emit()


def ingest_paths(
    paths: Iterable[str],
    lake: Lake | str,
    *,
    cluster: str | None = None,
    fmt: str = "auto",
    reprocess: bool = False,
    flush_rows: int = FLUSH_ROWS,
    progress: ProgressFn | None = None,
    time_bounds: TimeBounds | None = None,
) -> IngestSummary:
    """Ingest files, folders and S3 prefixes into the lake.

    An input that cannot be read is recorded in ``failed_inputs`` and the others go on;
    the caller decides the exit code. Damage inside an input (bad lines, a cut gzip) is
    quarantined with a reason and never stops the run.

    Without ``cluster``, events are stored under the cluster their source names (log
    group, path), else under the lake's only cluster; an input with neither raises
    :class:`ClusterUnknown` (exit 2) before any of its events is written.
    """
    paths = list(paths)  # read twice (expanded, then checked against the lake)
    lake = Lake(lake) if isinstance(lake, str) else lake
    if cluster:
        safe_part(cluster, "cluster name")
    lake.require_root()
    lake_clusters = [] if cluster else sorted(lake.clusters())
    lake_guess = ClusterGuess(lake_clusters[0], "lake") if len(lake_clusters) == 1 else None
    started = time.monotonic()
    ingestor = Ingestor(lake, cluster=cluster, flush_rows=flush_rows, time_bounds=time_bounds)
    manifest = ObjectManifest(lake)
    summary = ingestor.summary
    uris: list[str] = []
    for path in paths:
        try:
            uris.extend(
                expand_inputs(
                    [path],
                    on_skip=summary.warnings.append,
                    on_unreadable=summary.failed_inputs.append,
                )
            )
        except InputNotFound:
            raise  # a path naming nothing is a typo: stop before anything is read
        except InputError as exc:
            summary.failed_inputs.append(str(exc))
    uris = _outside_lake(uris, paths, lake, summary.warnings.append)
    steps = _steps(
        uris, fmt, cluster=cluster, lake_guess=lake_guess, manifest=manifest,
        reprocess=reprocess, summary=summary,
    )  # fmt: skip

    def prepare(step: _Step) -> tuple[_Step, Prepared | None]:
        if step.batch is None:
            return step, None
        return step, ingestor.buffer.prepare(step.batch, fallback=step.fallback)

    pending_objects: list[tuple[str, str]] = []
    try:
        # Stages on their own threads: read and split the next block, normalize the ones
        # before it, write what is buffered (pyarrow and polars release the GIL, so the
        # stages overlap on the cores).
        for step, prepared in ordered_map(prepare, prefetched(steps), workers=NORMALIZE_WORKERS):
            if prepared is not None:
                ingestor.hold(prepared)
            summary.failed_inputs.extend(step.failed)
            pending_objects.extend(step.ended)
            if progress and step.uri:
                progress(summary, step.uri)
            # Record objects only once all their rows (quarantine too) are durable: a kill
            # between the two would otherwise lose bad lines the manifest says were read.
            if ingestor.buffer.empty and pending_objects:  # a flush just happened
                manifest.record(pending_objects)
                pending_objects = []
    except ClusterUnknown as exc:
        if len(lake_clusters) > 1:
            held = ", ".join(lake_clusters[:5]) + (", ..." if len(lake_clusters) > 5 else "")
            raise ClusterUnknown(f"{exc} (the lake holds clusters {held})") from None
        raise
    ingestor.flush()
    manifest.record(pending_objects)
    summary.seconds = time.monotonic() - started
    return summary


def read_events(
    paths: list[str], *, cluster: str | None = None, fmt: str = "auto"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalize small inputs in memory: (events, quarantine). For tests and `rules test`.

    Nothing is stored, so events whose cluster is not known are labelled ``default``.
    """
    buffer = EventBuffer(cluster=cluster)
    for uri in expand_inputs(paths):
        named = cluster_from_path(uri)
        fallback = ClusterGuess(named or IN_MEMORY_CLUSTER, "path" if named else "memory")
        for batch in read_batches(uri, fmt):
            buffer.add(batch, fallback)
    return buffer.take()
