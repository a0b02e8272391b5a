"""The Parquet lake: idempotent, atomic, time-partitioned writes and pruned range scans.

Layout (see docs/schema.md)::

    LAKE/events/cluster=C/date=YYYY-MM-DD/hour=HH/part-*.parquet
    LAKE/quarantine/date=YYYY-MM-DD/part-*.parquet
    LAKE/_state/...

Idempotency is what lets every stage be re-run after a crash or by a scheduler's retry: an
event is unique on (``audit_id``, ``stage``, ``event_time``) across the whole lake, whatever
cluster name a run was given, and a write only adds rows whose key is not already stored
(the key can only be in the hour of its own event time, under any cluster). Rows already
stored under another cluster are skipped with a warning and counted apart
(``other_cluster``). Writes hold the lake's writer lock (:mod:`detector.lake.lock`), so two
writers never both decide a key is new. Files are listed, written and scanned through
:mod:`detector.lake.table`, which states the file-level guarantees (atomic, no globs, safe
names, bad files skipped).
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from detector.events.auditid import bounded_ids
from detector.events.schema import (
    COPY_KEY,
    EVENT_COLUMNS,
    QUARANTINE_COLUMNS,
    events_polars_schema,
)
from detector.lake.lock import writer_lock
from detector.lake.table import Table, new_name, parquet_bytes, safe_part
from detector.storage import Location, MissingLake, require_bucket

log = logging.getLogger(__name__)

EVENTS_DIR = "events"
QUARANTINE_DIR = "quarantine"
STATE_DIR = "_state"

#: A partition of the events table: (cluster, "YYYY-MM-DD", "HH").
Partition = tuple[str, str, str]


def partition_start(part: Partition) -> datetime:
    """The UTC hour a partition holds events from."""
    return datetime.strptime(f"{part[1]} {part[2]}", "%Y-%m-%d %H").replace(tzinfo=UTC)


_part_name = new_name  # kept for callers of the old private names
_parquet_bytes = parquet_bytes


def _by_partition(df: pl.DataFrame) -> Iterator[tuple[Partition, pl.DataFrame]]:
    """``df``'s rows per partition, in order of first appearance.

    Events usually arrive in time order, so each hour is one run of rows: those are
    sliced (no copy, and no date strings formatted per row). Rows out of order fall back
    to a group-by.
    """
    hour = (pl.col("event_time").dt.epoch("s") // 3600).alias("_hour")
    keys = df.select("cluster", hour)
    change = (keys["_hour"] != keys["_hour"].shift(1)) | (
        keys["cluster"] != keys["cluster"].shift(1)
    )
    starts = [0, *change.fill_null(False).arg_true().to_list()]
    if len(starts) == keys.n_unique():
        bounds = [*starts, df.height]
        for lo, hi in itertools.pairwise(bounds):
            group = df.slice(lo, hi - lo)
            yield _partition_of(group), group
        return
    for _, group in df.with_columns(hour).group_by(["cluster", "_hour"], maintain_order=True):
        yield _partition_of(group), group.drop("_hour")


def _first_of_each_key(group: pl.DataFrame) -> pl.DataFrame:
    """The first row of each (audit_id, stage, event_time) of ``group``, in input order.

    A batch rarely repeats a key, and asking whether it does costs a fifth of the ordered
    ``unique`` (0.05 against 0.27 CPU-seconds per 1M events): the usual batch skips it.
    """
    key = pl.struct(list(COPY_KEY))
    if not group.select(key.is_duplicated().any()).item():
        return group
    return group.unique(subset=list(COPY_KEY), keep="first", maintain_order=True)


def _partition_of(group: pl.DataFrame) -> Partition:
    at = group["event_time"][0]
    return (str(group["cluster"][0]), at.strftime("%Y-%m-%d"), at.strftime("%H"))


#: Dedup keys held in memory at most, in rows (~70 bytes each: ID, stage, time): a long or
#: large ingest keeps a flat footprint; keys pushed out are read again from their file.
KEY_CACHE_ROWS = 500_000


#: How far behind its clock a long-running writer (``export --follow``, ``detect watch``)
#: keeps the dedup keys of the hours it wrote: earlier hours get events only from a very
#: late line, and then their keys are read again from the lake. Held for every hour up to
#: the cache's bound, they were most of a watch process's memory growth day after day.
KEYS_KEPT = timedelta(hours=1)


#: What makes a quarantined line the same line again: where it was read.
QUARANTINE_KEY = ["source", "source_position"]


def _position_ranges(keys: pl.DataFrame) -> pl.DataFrame:
    """Each source's lowest and highest position (as text; a missing one as "")."""
    return keys.group_by("source").agg(
        lo=pl.col("source_position").fill_null("").min(),
        hi=pl.col("source_position").fill_null("").max(),
    )


class KeyCache:
    """Dedup keys of lake files already read, least recently used first out.

    Without a bound, an ingest of 4M events held 4M keys (about 250 MB) to the end: memory
    grew with the input. The bound keeps the hours written last; a long-running writer
    (``export --follow``, ``detect watch``) also drops the hours behind its clock
    (:meth:`forget_before`), or it would fill to the bound and stay there. A file whose
    keys were dropped is read again when its hour is written to again, so dropping costs
    time, never correctness.
    """

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = KEY_CACHE_ROWS if max_rows is None else max_rows
        self._keys: OrderedDict[str, pl.DataFrame] = OrderedDict()
        self._hour: dict[str, str] = {}
        self._rows = 0

    def get(self, path: str, hour: str, read: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        """The keys of ``path``, read with ``read`` unless held."""
        keys = self._keys.get(path)
        if keys is None:
            return self.put(path, hour, read())
        self._keys.move_to_end(path)
        return keys

    def put(self, path: str, hour: str, keys: pl.DataFrame) -> pl.DataFrame:
        """Hold the keys of a file just written or read; drops the oldest over the bound."""
        self.drop(path)
        self._keys[path] = keys
        self._hour[path] = hour
        self._rows += keys.height
        while self._rows > self.max_rows and len(self._keys) > 1:
            self.drop(next(iter(self._keys)))
        return keys

    def drop(self, path: str) -> None:
        keys = self._keys.pop(path, None)
        if keys is not None:
            self._rows -= keys.height
            del self._hour[path]

    def forget_before(self, cut: str) -> int:
        """Drop the keys of hours before ``cut`` ("YYYY-MM-DD HH"); returns how many hours."""
        old = [p for p, h in self._hour.items() if h < cut]
        hours = {self._hour[p] for p in old}
        for path in old:
            self.drop(path)
        return len(hours)

    @property
    def rows(self) -> int:
        return self._rows


@dataclass
class WriteStats:
    """What a write did: rows added, rows already present, files written.

    ``other_cluster`` counts rows skipped because the same (audit_id, stage, event_time) is
    already stored under another cluster name (they are also counted in ``duplicates``).
    """

    written: int = 0
    duplicates: int = 0
    files: int = 0
    partitions: set[Partition] = field(default_factory=set)
    other_cluster: int = 0

    def add(self, other: WriteStats) -> None:
        self.written += other.written
        self.duplicates += other.duplicates
        self.other_cluster += other.other_cluster
        self.files += other.files
        self.partitions |= other.partitions


def _stored_keys(keys: pl.DataFrame) -> pl.DataFrame:
    """A file's copy keys as events are keyed now: an id stored whole before ids were
    bounded (:func:`~detector.events.auditid.bounded_ids`) is read bounded, so the same
    event ingested again after the upgrade is a copy, not a second row (found by review)."""
    return keys.with_columns(bounded_ids(keys["audit_id"]))


class Lake:
    """A lake root (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, uri: str) -> None:
        self.loc = Location.of(uri)
        self.events = Table(
            self.loc,
            EVENTS_DIR,
            ("cluster", "date", "hour"),
            events_polars_schema(),
            required=("audit_id", "stage", "event_time", "principal", "verb"),
        )
        self.quarantine = Table(
            self.loc, QUARANTINE_DIR, ("date",), pl.Schema(QUARANTINE_COLUMNS),
            required=("source", "reason"),
        )  # fmt: skip
        # Dedup keys of each file already read, so an ingest of many batches into one hour
        # reads that hour's files once; files other writers add later are read when seen.
        self.keys = KeyCache()
        #: Per quarantine file, each source's lowest and highest position: a batch reads
        #: the keys of the files whose ranges meet its own, not every file ever written.
        self._quarantine_ranges: dict[str, pl.DataFrame] = {}
        self._root_checked = False

    @property
    def uri(self) -> str:
        return self.loc.uri

    def require_root(self) -> None:
        """Fail at once (exit 2) when the lake's S3 bucket does not exist, or when a local
        lake's path is a file (a write failed deep in the lock with "Not a directory")."""
        if not self._root_checked:
            require_bucket(self.uri)
            fs, root = self.loc.fs, self.loc.root
            if not self.loc.is_s3 and fs.exists(root) and not fs.isdir(root):
                raise MissingLake(f"no lake at {self.uri}: it is a file, not a folder")
            if not self.loc.is_s3:
                # A file on the way there (`--lake in.log/sub`): "Not a directory" from
                # the lock, exit 3 and an internal path (found by review).
                for parent in Path(root).parents:
                    if fs.exists(str(parent)):
                        if not fs.isdir(str(parent)):
                            raise MissingLake(
                                f"no lake at {self.uri}: {parent} is a file, not a folder"
                            )
                        break
            self._root_checked = True

    def require_existing(self) -> Lake:
        """This lake, if it is there: else fail at once (exit 2). Commands that only read
        the lake call it, so a mistyped ``--lake`` is an error rather than an empty range
        reported as "no alerts". On S3 the bucket must exist (an empty prefix is a lake
        nothing was written to yet); a local folder must exist."""
        self.require_root()
        if not self.loc.is_s3 and not self.loc.fs.isdir(self.loc.root):
            raise MissingLake(
                f"no lake at {self.uri}: nothing was ingested or exported there "
                "(check --lake or DETECT_LAKE)"
            )
        return self

    # ---------------------------------------------------------------- events: write
    def partition_path(self, part: Partition) -> str:
        return self.events.dir(part)

    def partition_files(self, part: Partition) -> list[str]:
        """Live files of a partition that scan with the events schema (bad ones skipped)."""
        return self.events.usable(self.events.entries(part))

    def _keys_of(self, paths: list[str], hour: str) -> list[pl.DataFrame]:
        return [
            self.keys.get(
                path, hour, lambda p=path: _stored_keys(self.events.read(p, list(COPY_KEY)))
            )
            for path in paths
        ]

    def _existing_keys(
        self, part: Partition, clusters: list[str]
    ) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
        """Keys stored in this hour: (this cluster, other clusters, names of those clusters)."""
        cluster, date, hour = part
        empty = pl.DataFrame(schema={k: EVENT_COLUMNS[k] for k in COPY_KEY})
        own: list[pl.DataFrame] = []
        others: list[pl.DataFrame] = []
        names: list[str] = []
        for c in clusters:
            files = self.partition_files((c, date, hour))
            if not files:
                continue
            keys = self._keys_of(files, f"{date} {hour}")
            if c == cluster:
                own.extend(keys)
            else:
                others.extend(keys)
                names.append(c)
        return (
            pl.concat(own) if own else empty,
            pl.concat(others) if others else empty,
            names,
        )

    def forget_keys_before(self, moment: datetime) -> int:
        """Drop cached dedup keys of hours ending before ``moment``; returns how many hours.

        A long-running writer (``export --follow``) would otherwise keep every hour's keys.
        Safe: if an event for a forgotten hour arrives after all, its keys are read again.
        """
        return self.keys.forget_before(moment.astimezone(UTC).strftime("%Y-%m-%d %H"))

    def write_events(self, df: pl.DataFrame) -> WriteStats:
        """Add canonical event rows (with ``cluster``) that the lake does not hold yet.

        Rows are split by partition; within a batch and against the files already in the
        lake for that hour (any cluster), only the first row of each (audit_id, stage,
        event_time) is kept: copies carry the same stage time (see ``COPY_KEY``). Cluster
        names are validated before anything is written.
        """
        stats = WriteStats()
        if df.is_empty():
            return stats
        for name in df["cluster"].unique().to_list():
            safe_part(name, "cluster name")
        with writer_lock(self) as lease:
            clusters = self.clusters()  # listed under the lock: no writer adds one meanwhile
            for part, group in _by_partition(df):
                cluster, date, hour = part
                before = group.height
                group = _first_of_each_key(group)
                own, others, names = self._existing_keys(part, clusters)
                if own.height:
                    group = group.join(own, on=list(COPY_KEY), how="anti")
                if others.height:
                    n = group.height
                    group = group.join(others, on=list(COPY_KEY), how="anti")
                    if n - group.height:
                        stats.other_cluster += n - group.height
                        log.warning(
                            "%d events for cluster %s at %s %s:00 are already in the lake "
                            "under cluster %s; skipped (the lake is unique on audit ID, "
                            "stage and stage time)",
                            n - group.height,
                            cluster,
                            date,
                            hour,
                            ", ".join(names),
                        )
                stats.duplicates += before - group.height
                if group.is_empty():
                    continue
                rows = group.select(list(EVENT_COLUMNS))
                if not rows["event_time"].is_sorted():  # usually already in order
                    rows = rows.sort("event_time")
                path = self.events.write(part, rows)
                self.keys.put(path, f"{date} {hour}", rows.select(list(COPY_KEY)))
                stats.written += rows.height
                stats.files += 1
                stats.partitions.add(part)
                lease.renew_if_due()
        return stats

    # ---------------------------------------------------------------- events: read
    def clusters(self) -> list[str]:
        return self.events.values(())

    def partitions(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        cluster: str | None = None,
    ) -> list[Partition]:
        """Partitions that can hold events in ``[start, end)``, found by listing, in time order."""
        self.require_root()  # a missing bucket is an error, not an empty lake
        clusters = [safe_part(cluster, "cluster name")] if cluster else self.clusters()
        lo = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0) if start else None
        found: list[Partition] = []
        for c in clusters:
            for date in self.events.values((c,)):
                try:
                    day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
                except ValueError:
                    continue  # not a partition this code wrote
                if (start and day + timedelta(days=1) <= lo) or (end and day >= end):
                    continue
                for hour in self.events.values((c, date)):
                    if not (hour.isdigit() and len(hour) == 2 and int(hour) < 24):
                        continue
                    at = day + timedelta(hours=int(hour))
                    if (lo and at < lo) or (end and at >= end):
                        continue
                    found.append((c, date, hour))
        return sorted(found, key=lambda p: (p[1], p[2], p[0]))

    def scan_partitions(self, parts: Iterable[Partition]) -> pl.LazyFrame:
        """Lazy scan of whole partitions, with ``cluster`` restored as a column."""
        by_cluster: dict[str, list[str]] = {}
        for part in parts:
            by_cluster.setdefault(part[0], []).extend(self.partition_files(part))
        frames = [self.scan_files(cluster, files) for cluster, files in by_cluster.items()]
        if not frames:
            return self.scan_files("", [])
        return pl.concat(frames, how="vertical")

    def scan_files(self, cluster: str, files: list[str]) -> pl.LazyFrame:
        """Lazy scan of event files already listed (:meth:`partition_files`) of one cluster,
        with ``cluster`` restored as a column: for a caller that keyed something on the
        listing, so what it reads is what it listed, with no second listing."""
        if not files:
            return pl.LazyFrame(schema=events_polars_schema(with_cluster=True))
        return (
            self.events.scan(files)
            .with_columns(pl.lit(cluster, pl.String).alias("cluster"))
            .select(["cluster", *EVENT_COLUMNS])
        )

    def scan_events(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        cluster: str | None = None,
    ) -> pl.LazyFrame:
        """Canonical events with ``start <= event_time < end``, reading only those hours."""
        lf = self.scan_partitions(self.partitions(start, end, cluster=cluster))
        if start is not None:
            lf = lf.filter(pl.col("event_time") >= start)
        if end is not None:
            lf = lf.filter(pl.col("event_time") < end)
        return lf

    def iter_hours(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        cluster: str | None = None,
    ) -> Iterator[tuple[Partition, pl.LazyFrame]]:
        """One lazy frame per partition, for memory that does not grow with the range."""
        for part in self.partitions(start, end, cluster=cluster):
            lf = self.scan_partitions([part])
            if start is not None:
                lf = lf.filter(pl.col("event_time") >= start)
            if end is not None:
                lf = lf.filter(pl.col("event_time") < end)
            yield part, lf

    # ---------------------------------------------------------------- quarantine
    def _quarantine_keys(self, batch: pl.DataFrame) -> pl.DataFrame:
        """The stored quarantine keys that ``batch``'s keys may repeat.

        Every file of every date was read at each write, so a follow export quarantining
        a busy stream's other lines slowed and grew with the lake's history (6M stored
        rows: 2.4 GB, 17 s for an export of 4,000 lines; found by review). Each file is
        known by its sources' position ranges (read once, kept: a few rows a file), and
        only the files whose ranges meet the batch's are read, for those sources alone.
        """
        want = _position_ranges(batch)
        frames = []
        seen = set()
        for (date,) in self.quarantine.partitions():
            for path in self.quarantine.usable(self.quarantine.entries((date,))):
                seen.add(path)
                keys = None
                ranges = self._quarantine_ranges.get(path)
                if ranges is None:
                    keys = self.quarantine.read(path, QUARANTINE_KEY)
                    ranges = self._quarantine_ranges[path] = _position_ranges(keys)
                meet = ranges.join(want, on="source", nulls_equal=True).filter(
                    (pl.col("lo") <= pl.col("hi_right")) & (pl.col("lo_right") <= pl.col("hi"))
                )
                if meet.is_empty():
                    continue
                if keys is None:
                    keys = self.quarantine.read(path, QUARANTINE_KEY)
                frames.append(keys.join(meet.select("source"), on="source", nulls_equal=True))
        for gone in set(self._quarantine_ranges) - seen:  # replaced by a compaction
            del self._quarantine_ranges[gone]
        if not frames:
            return pl.DataFrame(schema={k: pl.String for k in QUARANTINE_KEY})
        return pl.concat(frames)

    def write_quarantine(self, df: pl.DataFrame) -> int:
        """Store lines that could not become events, once each, by quarantine date.

        Unique on (source, source_position): re-running an ingest or a resumed export
        over the same input must not count its bad lines again.
        """
        if df.is_empty():
            return 0
        df = df.select(list(QUARANTINE_COLUMNS)).unique(
            subset=QUARANTINE_KEY, keep="first", maintain_order=True
        )
        with writer_lock(self):
            stored = self._quarantine_keys(df)
            df = df.join(stored, on=QUARANTINE_KEY, how="anti", nulls_equal=True)
            if df.is_empty():
                return 0
            for (date,), group in df.group_by(
                pl.col("quarantined_at").dt.strftime("%Y-%m-%d"), maintain_order=True
            ):
                path = self.quarantine.write((str(date),), group)
                self._quarantine_ranges[path] = _position_ranges(group)
        return df.height

    def scan_quarantine(self) -> pl.LazyFrame:
        files: list[str] = []
        for part in self.quarantine.partitions():
            files.extend(self.quarantine.usable(self.quarantine.entries(part)))
        return self.quarantine.scan(files)

    # ---------------------------------------------------------------- state
    def state_path(self, *parts: str) -> str:
        return self.loc.path(STATE_DIR, *(safe_part(p, "state name", limit=240) for p in parts))
