"""The Parquet lake: idempotent, atomic, time-partitioned writes and pruned range scans.

Layout (see docs/schema.md)::

    LAKE/events/cluster=C/date=YYYY-MM-DD/hour=HH/part-*.parquet
    LAKE/quarantine/date=YYYY-MM-DD/part-*.parquet
    LAKE/_state/...

Idempotency is what lets every stage be re-run after a crash or by a scheduler's retry:
an event is unique on (``audit_id``, ``stage``), and a write only adds rows whose key is
not already in the partition (the key can only be in the partition of its own event time).
Each part file is written in one atomic step, so a killed writer leaves whole files or
nothing, and the next run adds exactly what is missing.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from detector.events.schema import (
    EVENT_COLUMNS,
    EVENT_KEY,
    QUARANTINE_COLUMNS,
    events_polars_schema,
)
from detector.storage import Location, polars_storage_options

EVENTS_DIR = "events"
QUARANTINE_DIR = "quarantine"
STATE_DIR = "_state"

#: A partition of the events table: (cluster, "YYYY-MM-DD", "HH").
Partition = tuple[str, str, str]


def _part_name() -> str:
    # Time first so a listing is in write order; uuid so concurrent writers never collide.
    return f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}.parquet"


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=True, row_group_size=128_000)
    return buf.getvalue()


def partition_expr() -> list[pl.Expr]:
    """Partition columns derived from ``event_time`` (UTC)."""
    return [
        pl.col("event_time").dt.strftime("%Y-%m-%d").alias("date"),
        pl.col("event_time").dt.strftime("%H").alias("hour"),
    ]


@dataclass
class WriteStats:
    """What a write did: rows added, rows already present, files written."""

    written: int = 0
    duplicates: int = 0
    files: int = 0
    partitions: set[Partition] = field(default_factory=set)

    def add(self, other: WriteStats) -> None:
        self.written += other.written
        self.duplicates += other.duplicates
        self.files += other.files
        self.partitions |= other.partitions


class Lake:
    """A lake root (local folder or ``s3://bucket/prefix``)."""

    def __init__(self, uri: str) -> None:
        self.loc = Location.of(uri)
        # Keys already in each partition, loaded once per process: an ingest of many
        # batches into the same hour reads that hour's keys once, not once per batch.
        self._keys: dict[Partition, pl.DataFrame] = {}
        self._quarantine_keys: pl.DataFrame | None = None

    @property
    def uri(self) -> str:
        return self.loc.uri

    # ---------------------------------------------------------------- events: write
    def partition_path(self, part: Partition) -> str:
        cluster, date, hour = part
        return self.loc.path(EVENTS_DIR, f"cluster={cluster}", f"date={date}", f"hour={hour}")

    def partition_files(self, part: Partition) -> list[str]:
        return self.loc.glob(self.partition_path(part) + "/*.parquet")

    def _existing_keys(self, part: Partition) -> pl.DataFrame:
        if part not in self._keys:
            files = self.partition_files(part)
            if files:
                frames = [self._read_columns(f, list(EVENT_KEY)) for f in files]
                keys = pl.concat(frames).unique()
            else:
                keys = pl.DataFrame(schema={k: pl.String for k in EVENT_KEY})
            self._keys[part] = keys
        return self._keys[part]

    def forget_keys_before(self, moment: datetime) -> int:
        """Drop cached dedup keys of hours ending before ``moment``; returns how many hours.

        A long-running writer (``export --follow``) would otherwise keep every hour's keys.
        Safe: if an event for a forgotten hour arrives after all, its keys are read again.
        """
        cut = moment.astimezone(UTC).strftime("%Y-%m-%d %H")
        old = [p for p in self._keys if f"{p[1]} {p[2]}" < cut]
        for part in old:
            del self._keys[part]
        return len(old)

    def _read_columns(self, path: str, columns: list[str]) -> pl.DataFrame:
        with self.loc.fs.open(path, "rb") as fh:
            return pl.read_parquet(fh, columns=columns)

    def write_events(self, df: pl.DataFrame) -> WriteStats:
        """Add canonical event rows (with ``cluster``) that the lake does not hold yet.

        Rows are split by partition; within a batch and against the files already in the
        partition, only the first row of each (audit_id, stage) is kept.
        """
        stats = WriteStats()
        if df.is_empty():
            return stats
        df = df.with_columns(partition_expr())
        for (cluster, date, hour), group in df.group_by(
            ["cluster", "date", "hour"], maintain_order=True
        ):
            part: Partition = (str(cluster), str(date), str(hour))
            before = group.height
            group = group.unique(subset=list(EVENT_KEY), keep="first", maintain_order=True)
            existing = self._existing_keys(part)
            if existing.height:
                group = group.join(existing, on=list(EVENT_KEY), how="anti")
            stats.duplicates += before - group.height
            if group.is_empty():
                continue
            rows = group.select(list(EVENT_COLUMNS))
            if not rows["event_time"].is_sorted():  # usually already in order: skip the gather
                rows = rows.sort("event_time")
            path = self.partition_path(part) + "/" + _part_name()
            self.loc.put_atomic(path, _parquet_bytes(rows))
            self._keys[part] = pl.concat([existing, rows.select(list(EVENT_KEY))])
            stats.written += rows.height
            stats.files += 1
            stats.partitions.add(part)
        return stats

    # ---------------------------------------------------------------- events: read
    def clusters(self) -> list[str]:
        dirs = self.loc.glob(self.loc.path(EVENTS_DIR, "cluster=*"))
        return [d.rsplit("cluster=", 1)[1] for d in dirs]

    def partitions(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        cluster: str | None = None,
    ) -> list[Partition]:
        """Partitions that can hold events in ``[start, end)``, found by listing, in time order."""
        clusters = [cluster] if cluster else self.clusters()
        lo = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0) if start else None
        found: list[Partition] = []
        for c in clusters:
            date_dirs = self.loc.glob(self.loc.path(EVENTS_DIR, f"cluster={c}", "date=*"))
            for ddir in date_dirs:
                date = ddir.rsplit("date=", 1)[1]
                day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=UTC)
                if (start and day + timedelta(days=1) <= lo) or (end and day >= end):
                    continue
                for hdir in self.loc.glob(ddir + "/hour=*"):
                    hour = hdir.rsplit("hour=", 1)[1]
                    at = day + timedelta(hours=int(hour))
                    if (lo and at < lo) or (end and at >= end):
                        continue
                    found.append((c, date, hour))
        return sorted(found, key=lambda p: (p[1], p[2], p[0]))

    def scan_partitions(self, parts: Iterable[Partition]) -> pl.LazyFrame:
        """Lazy scan of whole partitions, with ``cluster`` restored as a column."""
        by_cluster: dict[str, list[str]] = {}
        for part in parts:
            files = self.partition_files(part)
            by_cluster.setdefault(part[0], []).extend(self.loc.uri_of(f) for f in files)
        schema = events_polars_schema()
        frames = [
            pl.scan_parquet(
                files,
                schema=schema,
                missing_columns="insert",
                extra_columns="ignore",
                storage_options=polars_storage_options(self.uri),
            ).with_columns(pl.lit(cluster, pl.String).alias("cluster"))
            for cluster, files in by_cluster.items()
            if files
        ]
        columns = ["cluster", *EVENT_COLUMNS]
        if not frames:
            return pl.LazyFrame(schema=events_polars_schema(with_cluster=True))
        return pl.concat(frames, how="vertical").select(columns)

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
    def write_quarantine(self, df: pl.DataFrame) -> int:
        """Store lines that could not become events, once each, by quarantine date.

        Unique on (source, source_position): re-running an ingest or a resumed export
        over the same input must not count its bad lines again.
        """
        if df.is_empty():
            return 0
        key = ["source", "source_position"]
        df = df.select(list(QUARANTINE_COLUMNS)).unique(
            subset=key, keep="first", maintain_order=True
        )
        if self._quarantine_keys is None:
            self._quarantine_keys = self.scan_quarantine().select(key).unique().collect()
        df = df.join(self._quarantine_keys, on=key, how="anti", nulls_equal=True)
        if df.is_empty():
            return 0
        for (date,), group in df.group_by(
            pl.col("quarantined_at").dt.strftime("%Y-%m-%d"), maintain_order=True
        ):
            path = self.loc.path(QUARANTINE_DIR, f"date={date}", _part_name())
            self.loc.put_atomic(path, _parquet_bytes(group))
        self._quarantine_keys = pl.concat([self._quarantine_keys, df.select(key)])
        return df.height

    def scan_quarantine(self) -> pl.LazyFrame:
        files = self.loc.glob(self.loc.path(QUARANTINE_DIR, "date=*", "*.parquet"))
        if not files:
            return pl.LazyFrame(schema=QUARANTINE_COLUMNS)
        return pl.scan_parquet(
            [self.loc.uri_of(f) for f in files],
            schema=pl.Schema(QUARANTINE_COLUMNS),
            missing_columns="insert",
            extra_columns="ignore",
            storage_options=polars_storage_options(self.uri),
        )

    # ---------------------------------------------------------------- state
    def state_path(self, *parts: str) -> str:
        return self.loc.path(STATE_DIR, *parts)
