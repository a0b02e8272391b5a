"""Reading the lake for the detectors: a scored range once, a training range by chunks.

Two shapes of read, because scoring and training need different things:

- :func:`read_range`: a scored range, read **once** into the columns every detector of the
  run needs (features, rules, the flagged-event lookup). The model's windows, the rules and
  the events behind findings all work from that frame; nothing reads the range again.
- :func:`iter_windows`: a training range, streamed a few hours at a time and reduced to
  window rows as it goes, so training memory is bounded by windows, not events.

Partitions are grouped so that no window straddles two chunks (:func:`chunk_partitions`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta

import polars as pl

from detector.events.schema import CANONICAL_COLUMNS
from detector.features import DEFAULT_WINDOW, empty_windows, seen_values, window_counts
from detector.lake.events import Lake, Partition, partition_start
from detector.lake.table import aligned_chunks

Progress = Callable[[int, int], None] | None


def chunk_span(window: timedelta, *, min_hours: int = 6) -> int:
    """Seconds in a chunk: a multiple of lcm(window, 1h), at least ``min_hours`` when possible."""
    w = int(window.total_seconds())
    span = w * 3600 // math.gcd(w, 3600)
    return span * max(1, -(-min_hours * 3600 // span))


def chunk_partitions(
    parts: list[Partition], window: timedelta, *, min_hours: int = 6
) -> list[list[Partition]]:
    """Group hour partitions so no window straddles two groups.

    A group spans a multiple of lcm(window, 1h) (epoch-aligned like the windows), and at
    least ``min_hours`` when possible, so per-query overhead is amortised while memory stays
    bounded by one group of hours.
    """
    span = chunk_span(window, min_hours=min_hours)
    groups: dict[int, list[Partition]] = {}
    for part in parts:
        groups.setdefault(int(partition_start(part).timestamp()) // span, []).append(part)
    return [groups[k] for k in sorted(groups)]


def _in_range(lf: pl.LazyFrame, start: datetime, end: datetime) -> pl.LazyFrame:
    return lf.filter((pl.col("event_time") >= start) & (pl.col("event_time") < end))


def ordered_columns(columns: Iterable[str]) -> list[str]:
    """``columns`` that are canonical, in canonical order (unknown names are dropped)."""
    wanted = set(columns)
    return [c for c in CANONICAL_COLUMNS if c in wanted]


def read_range(
    lake: Lake,
    parts: list[Partition],
    start: datetime,
    end: datetime,
    *,
    columns: Iterable[str],
) -> pl.DataFrame:
    """Events of ``parts`` in ``[start, end)``, only ``columns``: the one read of a run,
    its columns cut alike (:func:`~detector.lake.table.aligned_chunks`), as the detectors
    run many eager operations on it."""
    cols = ordered_columns(columns)
    return aligned_chunks(_in_range(lake.scan_partitions(parts), start, end).select(cols).collect())


def iter_windows(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
    progress: Progress = None,
) -> Iterator[pl.DataFrame]:
    """Yield the window rows of each chunk of hours in ``[start, end)``."""
    chunks = chunk_partitions(lake.partitions(start, end, cluster=cluster), window)
    for i, parts in enumerate(chunks):
        yield window_counts(
            _in_range(lake.scan_partitions(parts), start, end), window=window
        ).collect()
        if progress:
            progress(i + 1, len(chunks))


def frame_windows(
    frame: pl.DataFrame, start: datetime, end: datetime, *, window: timedelta = DEFAULT_WINDOW
) -> pl.DataFrame:
    """Window rows of a frame already read, aggregated a chunk of hours at a time.

    The same chunks as a training read (:func:`chunk_partitions`), so a range gives the
    same windows either way, and the aggregation's temporary columns (one string per event)
    exist for one chunk at a time, not the whole range.
    """
    span = timedelta(seconds=chunk_span(window))
    lo = datetime.fromtimestamp(
        int(start.timestamp()) // int(span.total_seconds()) * int(span.total_seconds()), UTC
    )
    frames = []
    while lo < end:
        part = _in_range(frame.lazy(), max(lo, start), min(lo + span, end))
        frames.append(window_counts(part, window=window).collect())
        lo += span
    return pl.concat(frames, how="vertical") if frames else empty_windows()


def lake_windows(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
    progress: Progress = None,
) -> pl.DataFrame:
    """Window rows for ``[start, end)``, read a few hours at a time (memory ~ windows)."""
    frames = list(iter_windows(lake, start, end, window=window, cluster=cluster, progress=progress))
    return pl.concat(frames, how="vertical") if frames else empty_windows()


def recent_values(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    principals: list[str],
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
) -> pl.DataFrame:
    """Values ``principals`` used in ``[start, end)``, the hours just before a scored range.

    Scoring passes them to :func:`~detector.features.finish_features` so that a value first
    used an hour before the range (and after the baseline) is not new again in it. A
    different range from the scored one, read only for principals that used something
    their baseline does not hold.
    """
    frames = []
    if end > start and principals:
        wanted = pl.Series(principals, dtype=pl.String).implode()
        for parts in chunk_partitions(lake.partitions(start, end, cluster=cluster), window):
            lf = _in_range(lake.scan_partitions(parts), start, end).filter(
                pl.col("principal").is_in(wanted)
            )
            frames.append(window_counts(lf, window=window).collect())
    return seen_values(pl.concat(frames) if frames else empty_windows())
