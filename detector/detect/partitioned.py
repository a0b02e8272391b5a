"""The event-reading steps of train and score, one task per partition, on any executor.

Two kinds of task, both module-level functions taking plain values (a lake URI, hour
partitions, times) so a Ray worker can run them, and both returning Arrow tables:

- :func:`unit_windows`, per (cluster, day) unit: the unit's window rows, read a local chunk of
  hours at a time, exactly as :func:`~detector.detect.scan.iter_windows` (training) and
  :func:`~detector.detect.scan.frame_windows` (scoring) compute them, since a unit is made of
  whole local chunks. The driver concatenates them: fitting the forest, the baseline and the
  model's features (novelty is "first window in the range") need every window, and windows
  are few.
- :func:`cluster_findings`, per cluster and span of up to a week (:func:`rule_spans`): the
  rules over that stretch of the cluster's range (read a day at a time; the engine keeps
  only its prefiltered candidates) with the 7 days before it as history, then the events
  behind that cluster's model and rule findings there. Rules run over spans rather than
  days because a request's stages may fall on both sides of midnight and a rule counts it
  once; at a span's edge it is known as carried over, as between consecutive runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pyarrow as pa

from detector.detect.executor import Executor, partition_span, partition_units
from detector.detect.scan import _in_range, chunk_partitions, ordered_columns
from detector.features import INPUT_COLUMNS, empty_windows, window_counts
from detector.lake.events import Lake, Partition, partition_start


def _frame(table: pa.Table) -> pl.DataFrame:
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out


# --------------------------------------------------------------------------- windows
def unit_windows(
    lake_uri: str,
    parts: list[Partition],
    start: datetime,
    end: datetime,
    window: timedelta,
) -> tuple[pa.Table, int]:
    """Window rows of one unit and the number of events read (a task)."""
    lake = Lake(lake_uri)
    frames, events = [], 0
    for chunk in chunk_partitions(parts, window):
        rows = _in_range(lake.scan_partitions(chunk), start, end)
        rows = rows.select(ordered_columns(INPUT_COLUMNS)).collect()
        events += rows.height
        frames.append(window_counts(rows.lazy(), window=window).collect())
    out = pl.concat(frames, how="vertical") if frames else empty_windows()
    return out.to_arrow(), events


def windows(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta,
    cluster: str | None,
    executor: Executor,
) -> tuple[pl.DataFrame, int, list[str]]:
    """Window rows of ``[start, end)`` from every (cluster, day) unit: (rows, events, clusters)."""
    units = partition_units(lake.partitions(start, end, cluster=cluster), window)
    done = executor.map(unit_windows, [(lake.uri, p, start, end, window) for _, _, p in units])
    frames = [_frame(t) for t, _ in done]
    clusters = sorted({c for (c, _, _), (_, n) in zip(units, done, strict=True) if n})
    rows = pl.concat(frames, how="vertical") if frames else empty_windows()
    return rows, sum(n for _, n in done), clusters


# --------------------------------------------------------------------------- findings
def cluster_findings(
    lake_uri: str,
    parts: list[Partition],
    start: datetime,
    end: datetime,
    columns: list[str],
    ruleset: Any | None,
    window: timedelta,
    history_cluster: str | None,
    now: datetime,
    model_found: pa.Table | None,
) -> tuple[pa.Table | None, pa.Table | None, pa.Table | None, pa.Table]:
    """Rules and flagged events of one cluster (a task).

    Returns (rule findings, rule links, model links, events behind both); the first two
    are ``None`` without rules, the third without model findings.
    """
    from detector.detect.score import flagged_events, model_links, rule_findings

    lake = Lake(lake_uri)
    frame = _in_range(lake.scan_partitions(parts), start, end).select(ordered_columns(columns))
    links: list[pl.DataFrame] = []
    rfound = rlinks = mlinks = None
    if model_found is not None:
        mlinks = model_links(frame, _frame(model_found))  # type: ignore[arg-type]
        links.append(mlinks)
    if ruleset is not None:
        rfound, rlinks = rule_findings(
            frame,  # type: ignore[arg-type]
            lake,
            ruleset,
            start,
            end,
            window=window,
            cluster=history_cluster,
            now=now,
        )
        links.append(rlinks)
    events = flagged_events(lake, parts, frame, links)  # type: ignore[arg-type]
    arrow = [None if f is None else f.to_arrow() for f in (rfound, rlinks, mlinks)]
    return arrow[0], arrow[1], arrow[2], events.to_arrow()


#: A rules task covers one cluster over at most this many partition slices (a week with
#: 10-minute windows). Within it a request logged on both sides of midnight counts once; at
#: its edge the later stage is known as carried over, as between consecutive runs, and
#: the threshold rules compare with the 7 days before the span. So a 90-day hunt finds
#: what weekly runs would, with a week of candidates in a task's memory, not 90 days'.
RULES_SPAN_SLICES = 7


def rule_spans(
    start: datetime, end: datetime, window: timedelta
) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` cut at epoch multiples of :data:`RULES_SPAN_SLICES` partition
    slices (whole windows, whole hours)."""
    step = partition_span(window) * RULES_SPAN_SLICES
    spans = []
    lo, edge = start, (int(start.timestamp()) // step + 1) * step
    while lo < end:
        hi = min(end, datetime.fromtimestamp(edge, UTC))
        spans.append((lo, hi))
        lo, edge = hi, edge + step
    return spans


def findings_by_cluster(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    clusters: Iterable[str],
    cluster: str | None,
    columns: set[str],
    ruleset: Any | None,
    window: timedelta,
    now: datetime,
    model_found: pl.DataFrame | None,
    executor: Executor,
) -> tuple[pl.DataFrame | None, pl.DataFrame | None, pl.DataFrame | None, pl.DataFrame]:
    """:func:`cluster_findings` over every cluster and rules span (:func:`rule_spans`),
    concatenated (same tuple, as frames)."""
    parts = lake.partitions(start, end, cluster=cluster)
    cols = ordered_columns(columns)
    calls = []
    for lo, hi in rule_spans(start, end, window):
        first, last = lo.replace(minute=0, second=0, microsecond=0), hi
        in_span = [p for p in parts if first <= partition_start(p) < last]
        for name in clusters:
            mine = [p for p in in_span if p[0] == name]
            if not mine:  # no event of this cluster in the span: nothing to find or link
                continue
            found = None
            if model_found is not None:
                found = model_found.filter(
                    (pl.col("cluster") == name)
                    & (pl.col("window_start") >= lo)
                    & (pl.col("window_start") < hi)
                ).to_arrow()
            calls.append((lake.uri, mine, lo, hi, cols, ruleset, window, cluster, now, found))
    done = executor.map(cluster_findings, calls)

    def gather(i: int) -> pl.DataFrame | None:
        tables = [d[i] for d in done if d[i] is not None]
        return pl.concat([_frame(t) for t in tables], how="vertical") if tables else None

    events = gather(3)
    assert events is not None or not done
    return gather(0), gather(1), gather(2), events if events is not None else pl.DataFrame()
