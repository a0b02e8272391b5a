"""What the HTML report shows, computed from the lake with bounded memory.

Events are read one hour partition at a time and reduced to counts at once (per cluster
and hour, per principal), so the report of a month costs the memory of one hour plus a
few thousand count rows. Findings and their events come from ``findings/`` and
``findings_events/``; incidents from ``incidents/`` when that table exists, through its
own reader (:mod:`detector.lake.incidents`).

The "usual level" of the denied (403) and unauthenticated (401) rates is the median of the
hourly rates over a baseline before the report's range (default the 7 days before it); an
hour is marked when its rate is above ``usual + 3 x 1.4826 x MAD`` (a robust three-sigma
line) and at least 0.1 percentage point above usual, so after a quiet baseline (median and
MAD of 0) a stray denial in a busy hour (one in two thousand) is not marked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from detector.lake.events import Lake
from detector.lake.findings import findings_events_table, list_findings, stored_events
from detector.lake.findings_schema import SEVERITIES
from detector.lake.incidents import incidents_overlapping, incidents_table
from detector.lake.table import skipped_files
from detector.report.timeline import collapse_runs

#: Alarm line: usual + K x robust sigma, and at least MIN_STEP above usual.
ALARM_K = 3.0
MIN_STEP = 0.001

_HOURLY = {
    "cluster": pl.String(),
    "hour": pl.Datetime("us", "UTC"),
    "events": pl.UInt32(),
    "denied": pl.UInt32(),
    "unauthenticated": pl.UInt32(),
}
_PRINCIPALS = {
    "principal": pl.String(),
    "principal_kind": pl.String(),
    "events": pl.UInt32(),
    "denied": pl.UInt32(),
}


def _hour_counts(lf: pl.LazyFrame) -> pl.LazyFrame:
    code = pl.col("response_code")
    forbidden = (code == 403) | (pl.col("decision") == "forbid")
    return lf.group_by("cluster", pl.col("event_time").dt.truncate("1h").alias("hour")).agg(
        pl.len().cast(pl.UInt32).alias("events"),
        forbidden.fill_null(False).sum().cast(pl.UInt32).alias("denied"),
        (code == 401).fill_null(False).sum().cast(pl.UInt32).alias("unauthenticated"),
    )


def hourly_counts(
    lake: Lake, start: datetime, end: datetime, *, cluster: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per (cluster, hour) counts and per-principal counts, one hour partition at a time."""
    hours: list[pl.DataFrame] = []
    principals: list[pl.DataFrame] = []
    for _part, lf in lake.iter_hours(start, end, cluster=cluster):
        lf = lf.select(
            "cluster", "event_time", "response_code", "decision", "principal", "principal_kind"
        )
        denied = pl.col("response_code").is_in([401, 403]) | (pl.col("decision") == "forbid")
        per_principal = lf.group_by("principal", "principal_kind").agg(
            pl.len().cast(pl.UInt32).alias("events"),
            denied.fill_null(False).sum().cast(pl.UInt32).alias("denied"),
        )
        # one read of the hour for both aggregates (polars shares the common scan)
        per_hour, per_principal = pl.collect_all([_hour_counts(lf), per_principal])
        hours.append(per_hour)
        principals.append(per_principal)
    hourly = (
        pl.concat(hours)
        .group_by("cluster", "hour")
        .agg(pl.col("events", "denied", "unauthenticated").sum())
        .sort("hour", "cluster")
        if hours
        else pl.DataFrame(schema=_HOURLY)
    )
    by_principal = (
        pl.concat(principals)
        .group_by("principal", "principal_kind")
        .agg(pl.col("events", "denied").sum())
        .sort(["events", "principal"], descending=[True, False])
        if principals
        else pl.DataFrame(schema=_PRINCIPALS)
    )
    return hourly.cast(_HOURLY), by_principal.cast(_PRINCIPALS)


@dataclass
class Level:
    """A rate's usual level and the alarm line drawn above it."""

    name: str  # "denied (403)" or "unauthenticated (401)"
    usual: float
    alarm: float
    baseline_hours: int  # hours the usual level was measured on (0: measured on the range)


def usual_level(rates: pl.Series, name: str, *, baseline_hours: int) -> Level:
    """Median and robust alarm line of hourly rates (see the module doc)."""
    clean = rates.drop_nulls()
    if clean.is_empty():
        return Level(name, 0.0, MIN_STEP, baseline_hours)
    median = float(clean.median())  # type: ignore[arg-type]
    mad = float((clean - median).abs().median())  # type: ignore[arg-type]
    return Level(name, median, median + max(ALARM_K * 1.4826 * mad, MIN_STEP), baseline_hours)


def rates_by_hour(hourly: pl.DataFrame) -> pl.DataFrame:
    """All clusters together: events, denied and 401 rates per hour."""
    return (
        hourly.group_by("hour")
        .agg(pl.col("events", "denied", "unauthenticated").sum())
        .sort("hour")
        .with_columns(
            (pl.col("denied") / pl.col("events")).alias("denied_rate"),
            (pl.col("unauthenticated") / pl.col("events")).alias("unauthenticated_rate"),
        )
    )


def findings_events(lake: Lake, finding_ids: list[str], start: datetime, end: datetime):  # type: ignore[no-untyped-def]
    """The stored events of these findings (``findings_events/``), by date partition: the
    usable files of the days from ``start`` to the day after ``end``, as every lake read."""
    if not finding_ids:
        return pl.DataFrame(schema=findings_events_table(lake).schema)
    return (
        stored_events(lake, finding_ids, start, end + timedelta(days=1))
        .sort("finding_id", "event_time")
        .collect()
    )


def read_incidents(
    lake: Lake, start: datetime, end: datetime, *, cluster: str | None = None
) -> pl.DataFrame | None:
    """Incidents active in the range (of ``cluster``, or all) as the page shows them
    (``time`` and ``end`` for first and last seen), or ``None`` when the lake has no
    incidents table: findings were never grouped there (a lake only ingested into, or
    scored with ``--dry-run``).

    The incidents table's own reader: a file it cannot use is skipped with a warning.
    """
    if not incidents_table(lake).values(()):
        return None
    found = incidents_overlapping(lake, start, end)
    if cluster:
        found = found.filter(pl.col("cluster") == cluster)
    # Most severe first, as `detect incidents` lists them (by time, an info incident led).
    rank = pl.col("severity").replace_strict(
        {s: i for i, s in enumerate(SEVERITIES)}, default=-1, return_dtype=pl.Int8
    )
    return found.sort([rank, "first_seen"], descending=[True, False]).select(
        "incident_id",
        pl.col("first_seen").alias("time"),
        pl.col("last_seen").alias("end"),
        "severity",
        "title",
        "principal",
        "key",
        "key_kind",
        "status",
        "finding_ids",
    )


@dataclass
class ReportData:
    """Everything the page shows; built by :func:`collect`."""

    start: datetime
    end: datetime
    lake_uri: str
    hourly: pl.DataFrame
    rates: pl.DataFrame
    levels: list[Level]
    principals: pl.DataFrame
    findings: pl.DataFrame
    detailed: pl.DataFrame  # the findings given a section (alerts, most severe first)
    events: pl.DataFrame  # findings_events of the detailed findings
    incidents: pl.DataFrame | None
    region: str | None = None
    notes: list[str] = field(default_factory=list)

    def runs_of(self, finding_id: str) -> pl.DataFrame:
        """A finding's events collapsed into a timeline."""
        return collapse_runs(self.events.filter(pl.col("finding_id") == finding_id))

    def summary(self) -> dict[str, Any]:
        return {
            "events": int(self.hourly["events"].sum()) if self.hourly.height else 0,
            "clusters": sorted(self.hourly["cluster"].unique().to_list()),
            "findings": self.findings.height,
            "alerts": self.findings.filter(pl.col("severity") != "info").height,
            "incidents": None if self.incidents is None else self.incidents.height,
        }


def collect(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    cluster: str | None = None,
    baseline: timedelta = timedelta(days=7),
    max_findings: int = 50,
    region: str | None = None,
) -> ReportData:
    """Read what the report needs for ``[start, end)`` (see the module doc). Damaged
    lake files the reads skip are named in a note on the page, not only on stderr."""
    with skipped_files() as skipped:
        data = _collect(lake, start, end, cluster, baseline, max_findings, region)
    if skipped:
        data.notes.append(
            f"{len(skipped)} damaged lake file(s) skipped: what they hold is not counted "
            f"here (`detect lake check --lake {lake.uri}` lists them)"
        )
    return data


def _collect(
    lake: Lake,
    start: datetime,
    end: datetime,
    cluster: str | None,
    baseline: timedelta,
    max_findings: int,
    region: str | None,
) -> ReportData:
    notes: list[str] = []
    hourly, principals = hourly_counts(lake, start, end, cluster=cluster)
    rates = rates_by_hour(hourly)
    base_hourly, _ = hourly_counts(lake, start - baseline, start, cluster=cluster)
    base = rates_by_hour(base_hourly)
    if base.height:
        ref, hours = base, base.height
    else:
        ref, hours = rates, 0
        notes.append(
            "no events in the baseline before the range: the usual level is the range's own median"
        )
    levels = [
        usual_level(ref["denied_rate"], "denied (403)", baseline_hours=hours),
        usual_level(ref["unauthenticated_rate"], "unauthenticated (401)", baseline_hours=hours),
    ]
    findings = list_findings(lake, since=start, until=end)
    if cluster:
        findings = findings.filter(pl.col("cluster") == cluster)
    incidents = read_incidents(lake, start, end, cluster=cluster)
    # A section for every alert and for the records of an incident (so its links resolve),
    # the most severe first when there are more than max_findings: records come last.
    members: list[str] = []
    if incidents is not None:
        for ids in incidents["finding_ids"].drop_nulls().to_list():
            members.extend(ids)
    candidates = findings.filter(
        (pl.col("severity") != "info")
        | pl.col("finding_id").is_in(pl.Series(members, dtype=pl.String).implode())
    )
    if candidates.height > max_findings:
        notes.append(
            f"{candidates.height} findings qualify for a section; the {max_findings} most "
            "severe are shown (raise --max-findings for more)"
        )
    detailed = candidates.sort(
        ["severity_rank", "score", "window_start", "finding_id"],
        descending=[True, True, False, False],
        nulls_last=True,
    ).head(max_findings)
    events = findings_events(lake, detailed["finding_id"].to_list(), start, end)
    return ReportData(
        start=start,
        end=end,
        lake_uri=lake.uri,
        hourly=hourly,
        rates=rates,
        levels=levels,
        principals=principals,
        findings=findings,
        detailed=detailed,
        events=events,
        incidents=incidents,
        region=region,
        notes=notes,
    )
