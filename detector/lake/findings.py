"""Findings in the lake: write a scored range, list, show one finding with its events.

Layout (the contract in :mod:`detector.lake.findings_schema`, documented in docs/schema.md)::

    LAKE/findings/date=YYYY-MM-DD/<kind>-<start>-<end>.parquet
    LAKE/findings_events/date=YYYY-MM-DD/<kind>-<start>-<end>.parquet

``kind`` is ``model`` or ``rules`` and ``<start>-<end>`` the scored range (whole windows),
so re-scoring the same range rewrites the same file names atomically. Rows are filed under
the UTC date of their ``window_start``.

Replacing a range that *partly* overlaps earlier runs (hourly cron over ``--since 1h``
with aligned windows, or a person re-scoring a day) is done in two steps: first write the
new files, then remove the overlapped windows from the older files of the same kind
(rewrite them atomically, or delete them when nothing is left). A crash between the steps
leaves a finding in two files, never none; readers drop such duplicates by ``finding_id``
(which is derived from detector, principal and window, so the two rows have the same id),
keeping the newest. ``model`` and ``rules`` files are replaced independently, so
``detect score --rules-only`` does not erase the model's findings for the range.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from detector.errors import UsageError
from detector.lake.events import Lake
from detector.lake.findings_schema import (
    FINDINGS_COLUMNS,
    FINDINGS_EVENTS_COLUMNS,
    SEVERITIES,
    empty_findings,
)
from detector.lake.lock import writer_lock
from detector.lake.table import Table

FINDINGS_DIR = "findings"
FINDINGS_EVENTS_DIR = "findings_events"
KINDS = ("model", "rules")
_STAMP = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(
    r"^(?P<kind>[a-z]+)-(?P<start>\d{8}T\d{6}Z)-(?P<end>\d{8}T\d{6}Z)"
    r"(?:-(?P<cluster>[0-9a-f]{12}))?\.parquet\Z"
)


class FindingNotFound(UsageError, LookupError):
    pass


def range_file(kind: str, start: datetime, end: datetime, cluster: str | None = None) -> str:
    """File name of a scored range: ``model-20261127T100000Z-20261127T110000Z.parquet``;
    for one cluster's run, a digest of the cluster name before ``.parquet`` (a name may
    hold any character), so runs of two clusters over one range keep a file each."""
    name = f"{kind}-{start.astimezone(UTC):{_STAMP}}-{end.astimezone(UTC):{_STAMP}}"
    if cluster is not None:
        name += "-" + hashlib.sha256(cluster.encode()).hexdigest()[:12]
    return name + ".parquet"


def parse_range_file(name: str) -> tuple[str, datetime, datetime] | None:
    m = _NAME.match(name)
    if not m:
        return None
    parse = lambda s: datetime.strptime(s, _STAMP).replace(tzinfo=UTC)  # noqa: E731
    return m["kind"], parse(m["start"]), parse(m["end"])


def _dates(start: datetime, end: datetime) -> list[str]:
    day = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    out = []
    while day <= last:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


def findings_table(lake: Lake) -> Table:
    return Table(
        lake.loc, FINDINGS_DIR, ("date",), pl.Schema(FINDINGS_COLUMNS),
        required=("finding_id", "window_start", "window_end", "severity", "severity_rank",
                  "detector", "principal"),
    )  # fmt: skip


def findings_events_table(lake: Lake) -> Table:
    return Table(
        lake.loc, FINDINGS_EVENTS_DIR, ("date",), pl.Schema(FINDINGS_EVENTS_COLUMNS),
        required=("finding_id", "audit_id"),
    )  # fmt: skip


@dataclass
class WriteSummary:
    findings: int = 0
    events: int = 0
    files: int = 0
    trimmed_files: int = 0
    removed_findings: int = 0


def write_range(
    lake: Lake,
    kind: str,
    start: datetime,
    end: datetime,
    findings: pl.DataFrame,
    events: pl.DataFrame,
    *,
    cluster: str | None = None,
) -> WriteSummary:
    """Make ``findings`` (and their ``events``) the findings of ``kind`` for ``[start, end)``.

    Findings must have ``window_start`` in ``[start, end)``; anything a previous run of the
    same kind wrote for windows in this range is replaced. ``cluster``: the run scored that
    cluster alone, so only that cluster's findings are replaced (one scheduled job per
    cluster on a shared lake must not erase the others'). Under the lake's writer lock, so
    two runs trimming the same older file take turns.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    with writer_lock(lake):  # the trim below is a read-modify-write of shared files
        name = range_file(kind, start, end, cluster)
        summary = WriteSummary()
        table, ev_table = findings_table(lake), findings_events_table(lake)
        findings = findings.select(list(FINDINGS_COLUMNS))
        events = events.select(list(FINDINGS_EVENTS_COLUMNS))
        dated = findings.with_columns(pl.col("window_start").dt.strftime("%Y-%m-%d").alias("_date"))
        written: set[str] = set()
        for (date,), group in dated.group_by("_date", maintain_order=True):
            group = group.drop("_date").sort(
                ["severity_rank", "score", "finding_id"], descending=[True, True, False]
            )
            ev = events.filter(pl.col("finding_id").is_in(group["finding_id"].implode()))
            # Events first: a finding is never visible without its events.
            ev_table.write((str(date),), ev, name)
            table.write((str(date),), group, name)
            written.add(str(date))
            summary.findings += group.height
            summary.events += ev.height
            summary.files += 1
        # Then take the overlapped windows out of older files of the same kind.
        in_range = (pl.col("window_start") >= start) & (pl.col("window_start") < end)
        if cluster is not None:
            in_range &= pl.col("cluster") == cluster
        for date in _dates(start, end):
            for path in table.usable(table.entries((date,))):  # a damaged file stays, skipped
                fname = path.rsplit("/", 1)[1]
                if not fname.startswith(f"{kind}-"):
                    continue
                parsed = parse_range_file(fname)
                if parsed is None or (fname == name and date in written):
                    continue
                _, f_start, f_end = parsed
                if f_end <= start or f_start >= end:
                    continue
                old = table.read(path)
                keep = old.filter(~in_range)
                if keep.height == old.height:
                    continue
                summary.trimmed_files += 1
                summary.removed_findings += old.height - keep.height
                ev_path = f"{ev_table.dir((date,))}/{fname}"
                if keep.is_empty():
                    table.delete([path])
                    ev_table.delete([ev_path])
                    continue
                table.write((date,), keep, fname)
                if lake.loc.exists(ev_path):
                    old_ev = ev_table.read(ev_path)
                    ids = keep["finding_id"].implode()
                    ev_table.write((date,), old_ev.filter(pl.col("finding_id").is_in(ids)), fname)
    return summary


#: The detectors of each findings kind a scoring run writes (``detector`` prefixes).
KIND_PREFIX = {"rules": "rule:", "model": "model:"}


@dataclass(frozen=True)
class Rescored:
    """A scoring run wrote the findings of ``kind`` (``rules`` or ``model``) for the windows
    starting in ``[start, end)`` anew, replacing what was there before.

    An incident's finding of that kind in that span that the run did not find again is
    withdrawn: late events changed the window (a long-running request's start arrived
    after its end), or the rules did.
    """

    kind: str
    start: datetime
    end: datetime
    #: the run scored this cluster alone (None: every cluster)
    cluster: str | None = None

    def covers(self, cluster: str, entry: dict[str, Any]) -> bool:
        """True for a timeline entry, of an incident in ``cluster``, this run replaces."""
        return (
            (self.cluster is None or self.cluster == cluster)
            and str(entry["detector"]).startswith(KIND_PREFIX[self.kind])
            and self.start <= entry["time"] < self.end
        )


# --------------------------------------------------------------------------- reading
def scan_dates(table: Table, since: datetime | None, until: datetime | None) -> pl.LazyFrame:
    """Scan the usable files of the date partitions that can hold ``[since, until]``."""
    files: list[str] = []
    for date in table.values(()):
        if since and date < since.astimezone(UTC).date().isoformat():
            continue
        if until and date > until.astimezone(UTC).date().isoformat():
            continue
        files.extend(table.usable(table.entries((date,))))
    return table.scan(files)


def severity_at_least(min_severity: str) -> pl.Expr:
    if min_severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {min_severity!r}")
    return pl.col("severity_rank") >= SEVERITIES.index(min_severity)


def list_findings(
    lake: Lake,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    principal: str | None = None,
    min_severity: str | None = None,
    detector: str | None = None,
) -> pl.DataFrame:
    """Findings with ``window_start`` in ``[since, until)``, most severe first.

    ``principal`` matches principals containing the text; ``detector`` a prefix
    (``model``, ``rule:``...).
    """
    lf = scan_dates(findings_table(lake), since, until)
    if since:
        lf = lf.filter(pl.col("window_start") >= since)
    if until:
        lf = lf.filter(pl.col("window_start") < until)
    if principal:
        lf = lf.filter(pl.col("principal").str.contains(principal, literal=True))
    if min_severity:
        lf = lf.filter(severity_at_least(min_severity))
    if detector:
        lf = lf.filter(pl.col("detector").str.starts_with(detector))
    df = lf.collect()
    if df.is_empty():
        return empty_findings()
    return sort_findings(df.sort("created_at", descending=True).unique("finding_id", keep="first"))


def sort_findings(df: pl.DataFrame) -> pl.DataFrame:
    """Most severe first, then highest score, then time."""
    return df.sort(
        ["severity_rank", "score", "window_start", "finding_id"],
        descending=[True, True, False, False],
    )


def stored_events(
    lake: Lake, finding_ids: list[str] | pl.Series, since: datetime, until: datetime
) -> pl.LazyFrame:
    """The events stored behind ``finding_ids`` (``findings_events/``), one row per finding
    and event, from the date partitions that can hold ``[since, until]``."""
    ids = pl.Series(finding_ids, dtype=pl.String).implode()
    return (
        scan_dates(findings_events_table(lake), since, until)
        .filter(pl.col("finding_id").is_in(ids))
        .unique(
            ["finding_id", "audit_id", "stage", "event_time"], keep="first", maintain_order=True
        )
    )


def get_finding(lake: Lake, finding_id: str) -> tuple[dict, pl.DataFrame]:
    """One finding (as a dict) and its events, in time order."""
    df = (
        scan_dates(findings_table(lake), None, None)
        .filter(pl.col("finding_id") == finding_id)
        .collect()
    )
    if df.is_empty():
        raise FindingNotFound(f"no finding {finding_id} in {lake.uri}")
    row = df.sort("created_at", descending=True).row(0, named=True)
    day = row["window_start"].astimezone(UTC)
    events = stored_events(lake, [finding_id], day, day).sort("event_time").collect()
    return row, events
