"""Sources -> normalize -> lake, with counts a user can check and bounded memory.

:class:`Ingestor` is the one write path into the lake: ``detect ingest`` uses it for files
and S3 objects, ``detect export`` for CloudWatch pages. It buffers normalized events and
flushes them every ``flush_rows`` events (or when asked), so a 5 GB input never needs
5 GB of RAM, and it never loses good rows because a neighbour was bad.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import polars as pl
import pyarrow as pa

from detector.events.normalize import normalize_lines, quarantine_frame
from detector.events.schema import CANONICAL_COLUMNS, QUARANTINE_COLUMNS
from detector.lake.events import Lake, WriteStats
from detector.sources.files import (
    InputError,
    InputNotFound,
    LineBatch,
    expand_inputs,
    is_s3,
    object_identity,
    read_batches,
)

DEFAULT_CLUSTER = "default"
FLUSH_ROWS = 100_000
MANIFEST_DIR = "ingested-objects"


@dataclass
class IngestSummary:
    """What an ingest did; printed as the command's summary and as ``--format json``."""

    inputs: int = 0
    skipped_inputs: int = 0  # S3 objects already ingested by an earlier run
    failed_inputs: list[str] = field(default_factory=list)
    lines: int = 0
    bytes: int = 0
    events_written: int = 0
    duplicates: int = 0
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
            "lines": self.lines,
            "bytes": self.bytes,
            "events_written": self.events_written,
            "duplicates": self.duplicates,
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


class Ingestor:
    """Normalize batches of raw messages and write them to a lake, exactly once each."""

    def __init__(
        self,
        lake: Lake,
        *,
        cluster: str | None = None,
        flush_rows: int = FLUSH_ROWS,
        collect: bool = False,
    ) -> None:
        self.lake = lake
        self.cluster = cluster
        self.flush_rows = flush_rows
        self.summary = IngestSummary()
        self._events: list[pl.DataFrame] = []
        self._quarantine: list[pl.DataFrame] = []
        self._buffered = 0
        # collect=True keeps everything in memory instead of writing (read_events, tests).
        self._collect = collect
        self.collected_events: list[pl.DataFrame] = []
        self.collected_quarantine: list[pl.DataFrame] = []

    @property
    def buffered(self) -> int:
        return self._buffered

    def add(self, batch: LineBatch) -> None:
        """Normalize one batch and buffer it; flushes when the buffer is full."""
        cluster = self.cluster or batch.cluster or DEFAULT_CLUSTER
        self.summary.lines += len(batch.lines) + len(batch.rejected)
        self.summary.bytes += batch.nbytes
        if batch.rejected:
            self._add_quarantine(quarantine_frame(list(batch.rejected)))
        if len(batch.lines):
            result = normalize_lines(
                batch.lines,
                positions=batch.positions,
                source=batch.source,
                cluster=cluster,
                terminated=batch.terminated,
            )
            self._add_quarantine(result.quarantine)
            if result.events.height:
                self._events.append(result.events)
                self._buffered += result.events.height
                lo, hi = result.events.select(
                    pl.col("event_time").min().alias("lo"), pl.col("event_time").max().alias("hi")
                ).row(0)
                s = self.summary
                s.first_event = lo if s.first_event is None else min(s.first_event, lo)
                s.last_event = hi if s.last_event is None else max(s.last_event, hi)
        if self._buffered >= self.flush_rows:
            self.flush()

    def add_messages(
        self,
        messages: list[str],
        *,
        positions: list[str],
        source: str | list[str],
        cluster: str | None = None,
    ) -> None:
        """Buffer raw audit messages (CloudWatch ``message`` strings)."""
        self.add(
            LineBatch(
                lines=pa.array(messages, pa.large_string()).cast(pa.large_binary()),
                positions=pa.array(positions, pa.string()),
                source=source if isinstance(source, str) else pa.array(source, pa.string()),
                cluster=cluster,
                nbytes=sum(len(m) for m in messages),
            )
        )

    def quarantine_raw(self, records: list[tuple[str, str, str, bytes | str]]) -> None:
        """Set aside inputs rejected before normalizing (source, position, reason, raw)."""
        self.summary.lines += len(records)
        self._add_quarantine(quarantine_frame(records))

    def _add_quarantine(self, df: pl.DataFrame) -> None:
        if df.height:
            self._quarantine.append(df)
            self.summary.quarantined += df.height
            self.summary.quarantine_reasons.update(
                _reason_family(r) for r in df["reason"].to_list()
            )

    def flush(self) -> WriteStats:
        """Write everything buffered. After it returns, those events are durable in the lake."""
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
        self._events, self._quarantine, self._buffered = [], [], 0
        if self._collect:
            self.collected_events.append(events)
            self.collected_quarantine.append(quarantine)
            return WriteStats(written=events.height)
        stats = self.lake.write_events(events)
        self.lake.write_quarantine(quarantine)
        self.summary.events_written += stats.written
        self.summary.duplicates += stats.duplicates
        self.summary.files_written += stats.files
        return stats


# --------------------------------------------------------------------------- S3 manifest
class ObjectManifest:
    """Which S3 objects (uri + ETag) earlier runs ingested, so nightly runs read only new ones.

    Kept in ``LAKE/_state/ingested-objects/`` as small JSON files, one per run, each
    written after that run's events were flushed: a run killed midway records nothing for
    the objects it did not finish, and re-reading them is harmless (the lake deduplicates).
    """

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._dir = lake.state_path(MANIFEST_DIR)
        self._done: set[tuple[str, str]] | None = None

    def done(self) -> set[tuple[str, str]]:
        if self._done is None:
            seen: set[tuple[str, str]] = set()
            for path in self.lake.loc.glob(self._dir + "/*.json"):
                with self.lake.loc.fs.open(path, "rb") as fh:
                    for item in orjson.loads(fh.read()).get("objects", []):
                        seen.add((item["uri"], item["etag"]))
            self._done = seen
        return self._done

    def record(self, objects: list[tuple[str, str]]) -> None:
        if not objects:
            return
        body = orjson.dumps(
            {
                "recorded_at": datetime.now(UTC).isoformat(),
                "objects": [{"uri": u, "etag": e} for u, e in objects],
            }
        )
        name = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        digest = hashlib.sha1(body).hexdigest()[:12]
        self.lake.loc.put_atomic(f"{self._dir}/{name}-{digest}.json", body)
        self.done().update(objects)


# --------------------------------------------------------------------------- entry points
ProgressFn = Callable[[IngestSummary, str], None]

T = TypeVar("T")


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """Produce the next item in a thread while the caller works on this one.

    Reading and splitting the next block (file I/O, gunzip, numpy) overlaps with parsing
    and writing this one (polars, which releases the GIL): about 15% off an ingest on two
    cores. One item ahead at most, so memory stays bounded; an error in the producer is
    raised in the caller; a caller that stops early stops the producer.
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


def ingest_paths(
    paths: Iterable[str],
    lake: Lake | str,
    *,
    cluster: str | None = None,
    fmt: str = "auto",
    reprocess: bool = False,
    flush_rows: int = FLUSH_ROWS,
    progress: ProgressFn | None = None,
) -> IngestSummary:
    """Ingest files, folders and S3 prefixes into the lake.

    An input that cannot be read is recorded in ``failed_inputs`` and the others go on;
    the caller decides the exit code.
    """
    lake = Lake(lake) if isinstance(lake, str) else lake
    started = time.monotonic()
    ingestor = Ingestor(lake, cluster=cluster, flush_rows=flush_rows)
    manifest = ObjectManifest(lake)
    summary = ingestor.summary
    uris: list[str] = []
    for path in paths:
        try:
            uris.extend(expand_inputs([path]))
        except InputNotFound:
            raise  # a path naming nothing is a typo: stop before anything is read
        except InputError as exc:
            summary.failed_inputs.append(str(exc))
    pending_objects: list[tuple[str, str]] = []
    for uri in uris:
        identity = None
        if is_s3(uri):
            identity = object_identity(uri)
            if not reprocess and identity in manifest.done():
                summary.skipped_inputs += 1
                continue
        summary.inputs += 1
        try:
            for batch in prefetched(read_batches(uri, fmt)):
                ingestor.add(batch)
                if progress:
                    progress(summary, uri)
        except InputError as exc:
            summary.failed_inputs.append(str(exc))
            continue
        if identity:
            pending_objects.append(identity)
        if ingestor.buffered == 0 and pending_objects:  # a flush just happened
            manifest.record(pending_objects)
            pending_objects = []
    ingestor.flush()
    manifest.record(pending_objects)
    summary.seconds = time.monotonic() - started
    return summary


def read_events(
    paths: list[str], *, cluster: str | None = None, fmt: str = "auto"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Normalize small inputs in memory: (events, quarantine). For tests and `rules test`."""
    ingestor = Ingestor(Lake("."), cluster=cluster, collect=True)
    for uri in expand_inputs(paths):
        for batch in read_batches(uri, fmt):
            ingestor.add(batch)
    ingestor.flush()
    events = pl.concat(ingestor.collected_events, how="vertical")
    quarantine = pl.concat(ingestor.collected_quarantine, how="vertical")
    return events, quarantine
