"""Incidents and workflow statuses in the lake: two small tables, each one file per date.

Layout::

    LAKE/incidents/date=YYYY-MM-DD/incidents.parquet       one row per incident (date of first_seen)
    LAKE/finding_status/date=YYYY-MM-DD/status.parquet     finding -> incident, status, suppression

Why one file per date, rewritten whole: incidents are few (tens a day) and change often
(a new finding, an acknowledgement), so an upsert that reads a day's file and replaces it
atomically is simpler and safer than append-and-compact. Each day's read-modify-write
holds the lake's writer lock, so writers of the same date (one scheduled run per cluster,
a person's ``detect incidents ack``) take turns instead of the later dropping the other's
rows. Both are :class:`~detector.lake.table.Table` s, read as every lake table is
(:func:`~detector.lake.findings.scan_dates`): a file readers cannot use is skipped with a
warning (``detect lake check`` lists it), and an upsert replaces it rather than failing.

A reader asking the same question again and again (``detect watch``'s check of what is
pending delivery, every minute) keeps an :class:`IncidentsReader`: it lists the table in
one request and reads only the files that changed since its last call
(:func:`signed_files`), so its steady state costs one listing, not a read of every date.

Columns are documented in docs/alerts.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl

from detector.events.redact import redact_text_columns
from detector.lake.events import Lake
from detector.lake.findings import findings_events_table, scan_dates, stored_events
from detector.lake.lock import writer_lock
from detector.lake.table import DATA_FILE, MARKER_FILE, MAX_PART, PART_NAME, FileEntry, Table
from detector.storage import Location

log = logging.getLogger(__name__)

INCIDENTS_DIR = "incidents"
STATUS_DIR = "finding_status"
_TS = pl.Datetime("us", "UTC")
_L = pl.List(pl.String())

TIMELINE_ENTRY = pl.Struct(
    {
        "time": _TS,
        "finding_id": pl.String(),
        "detector": pl.String(),
        "severity": pl.String(),
        "severity_rank": pl.Int8(),
        "title": pl.String(),
        "tactic": pl.String(),
        "technique": pl.String(),
        "suppression": pl.String(),
    }
)

INCIDENT_COLUMNS: dict[str, pl.DataType] = {
    "incident_id": pl.String(),
    "version": pl.Int64(),
    "cluster": pl.String(),
    "key_kind": pl.String(),
    "key": pl.String(),
    "principal": pl.String(),
    "principal_kind": pl.String(),
    "first_seen": _TS,
    "last_seen": _TS,
    "severity": pl.String(),
    "severity_rank": pl.Int8(),
    "base_severity": pl.String(),
    "severity_reason": pl.String(),
    "title": pl.String(),
    "tactics": _L,
    "techniques": _L,
    "detectors": _L,
    "finding_ids": _L,
    "source_ips": _L,
    "namespaces": _L,
    "status": pl.String(),
    "suppression": pl.String(),
    "status_reason": pl.String(),
    "created_at": _TS,
    "updated_at": _TS,
    "timeline": pl.List(TIMELINE_ENTRY),
}

STATUS_COLUMNS: dict[str, pl.DataType] = {
    "finding_id": pl.String(),
    "window_start": _TS,
    "incident_id": pl.String(),
    "status": pl.String(),
    "suppression": pl.String(),
    "status_reason": pl.String(),
    "updated_at": _TS,
}


def _frame(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=schema)
    return pl.DataFrame([{k: r.get(k) for k in schema} for r in rows], schema=schema)


def incidents_table(lake: Lake) -> Table:
    return Table(
        lake.loc, INCIDENTS_DIR, ("date",), pl.Schema(INCIDENT_COLUMNS),
        required=("incident_id", "first_seen", "last_seen", "severity", "finding_ids"),
    )  # fmt: skip


def status_table(lake: Lake) -> Table:
    return Table(
        lake.loc, STATUS_DIR, ("date",), pl.Schema(STATUS_COLUMNS),
        required=("finding_id", "status"),
    )  # fmt: skip


def _upsert(
    lake: Lake,
    table: Table,
    fname: str,
    df: pl.DataFrame,
    key: str,
    date_col: str,
    moved_from: Mapping[str, date] | None = None,
) -> int:
    """Replace rows with the same ``key`` in each date's file, add the others.

    ``moved_from``: keys filed under another date before (``key`` -> that date), removed
    from there in the same locked step, so that a row whose date changed is kept once.

    Under the lake's writer lock: two processes updating the same day (one scheduled
    ``detect score`` or ``detect watch`` per cluster on a shared lake, a person's ``ack``)
    would otherwise each read the file, add their rows and replace it, and the later
    write would drop the other's rows.

    A day's file that cannot be read (damaged, or of another schema) is moved aside with a
    warning (:func:`_day_rows`) and the day written afresh; the next scoring run groups its
    findings again.
    """
    if df.is_empty():
        return 0
    # The reason a person typed (``detect incidents ack --reason``) may quote a token it
    # rotated: redacted like every other string before it reaches the lake.
    df, _ = redact_text_columns(df, ["status_reason"])
    dated = df.with_columns(pl.col(date_col).dt.strftime("%Y-%m-%d").alias("_date"))
    new_day = dict(zip(dated[key], dated["_date"], strict=True))
    leaving: dict[str, list[str]] = {}
    for k, was in (moved_from or {}).items():
        if k in new_day and was.isoformat() != new_day[k]:
            leaving.setdefault(was.isoformat(), []).append(k)
    with writer_lock(lake):
        for (day,), group in dated.group_by("_date", maintain_order=True):
            group = group.drop("_date")
            old = _day_rows(table, day, fname)
            if old is not None:
                group = pl.concat([old.filter(~pl.col(key).is_in(group[key].implode())), group])
            table.write((day,), group.select(list(table.schema)).sort(key), fname)
        for day, keys in leaving.items():
            old = _day_rows(table, day, fname)
            if old is not None and old[key].is_in(keys).any():
                table.write((day,), old.filter(~pl.col(key).is_in(keys)), fname)
    return df.height


def _day_rows(table: Table, day: str, fname: str) -> pl.DataFrame | None:
    """The rows of a date's file; None when there is none or it cannot be read. One that
    cannot be read is moved aside (``<name>.damaged-<time>``, which no reader takes and
    `detect lake check` lists) before the caller writes the day again: it was overwritten
    while the warning said it was skipped, and what it held was gone (found by review)."""
    path = f"{table.dir((day,))}/{fname}"
    current = [e for e in table.entries((day,)) if e.path == path]
    if not current:
        return None
    if table.usable(current):
        return table.scan([path]).collect()
    aside = f"{path}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
    table.loc.fs.mv(path, aside)
    log.warning(
        "%s cannot be read: kept aside as %s; the file written now holds none of its rows "
        "(the next scoring run groups its findings again)",
        table.loc.uri_of(path), table.loc.uri_of(aside),
    )  # fmt: skip
    return None


# ---------------------------------------------------------------------------- incidents
def write_incidents(
    lake: Lake, rows: Iterable[dict[str, Any]], *, moved_from: Mapping[str, date] | None = None
) -> int:
    """Upsert incidents (dicts with the INCIDENT_COLUMNS) by ``incident_id``.

    ``moved_from``: incident id -> the first_seen date it was filed under, for incidents
    whose first_seen may have moved to another day (a late finding before it, a withdrawal
    of its first ones); an incident that did move is taken out of the old day's file.
    """
    df = _frame(list(rows), INCIDENT_COLUMNS)
    return _upsert(
        lake,
        incidents_table(lake),
        "incidents.parquet",
        df,
        "incident_id",
        "first_seen",
        moved_from,
    )


def _scan_incidents(lake: Lake, since: datetime | None, until: datetime | None) -> pl.LazyFrame:
    """The incidents filed under the dates of ``[since, until]``, one row per incident.

    An incident whose first day moved is written under its new date and then taken out of
    the old one (:func:`write_incidents`); a run killed between the two, or a lake written
    before that was done, holds it under both. The row of the highest version (then the
    latest update) is the incident; the other is what it was.
    """
    return _latest(scan_dates(incidents_table(lake), since, until))


def _latest(rows: pl.LazyFrame) -> pl.LazyFrame:
    """One row per incident: its highest version, then its latest update."""
    return rows.sort(["version", "updated_at"], descending=True, nulls_last=True).unique(
        "incident_id", keep="first", maintain_order=True
    )


#: What a listing says about a file that changes whenever the file is written again: on
#: S3 its ETag (a digest of the content, or unique per upload) and time; locally its inode
#: (an atomic write renames a new file into place), modification and change times.
_SIGNATURE_KEYS = ("size", "ETag", "LastModified", "mtime", "created", "ino")


def signed_files(loc: Location, directory: str) -> dict[str, tuple]:
    """Every file under ``directory`` (any depth) -> its signature; {} when there is none.

    One recursive listing: on S3 one LIST request per 1,000 files (no delimiter, so the
    date folders cost nothing more), locally a walk. A file written again has another
    signature, so a reader that keeps what it read per signature re-reads exactly the
    files that changed, whoever wrote them.
    """
    try:
        found = loc.fs.find(directory, detail=True)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    return {
        path: tuple(info.get(k) for k in _SIGNATURE_KEYS)
        for path, info in found.items()
        if info.get("type") == "file" and "/.tmp-" not in path
    }


class FileRows:
    """The rows of each file of a listing, kept by the file's signature (:func:`signed_files`).

    What :class:`IncidentsReader` and the dead-letter reader share: :meth:`update` drops
    files gone from the listing, reads those new or written again (``read`` returns None
    for a file not read this time, tried again on the next call), and says whether
    anything changed, so a caller rebuilds its answer only then.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple, pl.DataFrame]] = {}

    def update(
        self,
        live: Mapping[str, tuple],
        read: Callable[[str, tuple], pl.DataFrame | None],
    ) -> bool:
        changed = False
        for path in [p for p in self._files if p not in live]:
            del self._files[path]
            changed = True
        for path, signature in sorted(live.items()):
            held = self._files.get(path)
            if held is not None and held[0] == signature:
                continue
            rows = read(path, signature)
            if rows is None:
                self._files.pop(path, None)
            else:
                self._files[path] = (signature, rows)
            changed = True
        return changed

    def frames(self) -> list[pl.DataFrame]:
        """Each kept file's rows, in path order."""
        return [self._files[p][1] for p in sorted(self._files)]


class IncidentsReader:
    """:func:`read_incidents` for a caller that asks again and again (``detect watch``).

    Each call lists the table once (:func:`signed_files`) and reads only the files that are
    new or changed since the last call, keeping the rows of the others: the answer is what
    a full read would give (a file rewritten by any process, this one, a ``detect score``
    beside it or a person's ``ack``, has a new signature), at the cost of one listing when
    nothing changed. Partitions holding compaction markers are listed as
    :meth:`Table.entries` lists them. A file that cannot be read is skipped with a warning
    and tried again on the next call; one readers skip (``detect lake check``) is skipped
    until it changes. Nothing is kept across processes: a new reader reads everything once.
    """

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.table = incidents_table(lake)
        self._rows = FileRows()
        self._latest: pl.DataFrame | None = None
        #: files read over the reader's life (a count for tests and benchmarks)
        self.files_read = 0

    def read(self, *, since: datetime) -> pl.DataFrame:
        """Incidents filed under ``since``'s date or later, one row each, in no set order."""
        first = since.astimezone(UTC).date().isoformat()
        changed = self._rows.update(self._live(first), self._read)
        if changed or self._latest is None:
            frames = self._rows.frames()
            every = pl.concat(frames) if frames else pl.DataFrame(schema=INCIDENT_COLUMNS)
            self._latest = _latest(every.lazy()).collect()
        return self._latest

    def _live(self, first: str) -> dict[str, tuple]:
        """Live data files of the dates from ``first`` on -> signature."""
        root = self.table.root
        by_date: dict[str, dict[str, tuple]] = {}
        marked: set[str] = set()
        for path, signature in signed_files(self.lake.loc, root).items():
            parts = path[len(root) :].strip("/").split("/")
            if len(parts) != 2 or not parts[0].startswith("date="):
                continue
            day, name = parts[0][len("date=") :], parts[1]
            if day < first or len(day) > MAX_PART or not PART_NAME.match(day):
                continue
            if MARKER_FILE.match(name):
                marked.add(day)
            elif DATA_FILE.match(name):
                by_date.setdefault(day, {})[path] = signature
        live: dict[str, tuple] = {}
        for day, files in by_date.items():
            if day in marked:  # compaction: the markers say which files are live
                keep = set(self.table.files((day,)))
                files = {p: s for p, s in files.items() if p in keep}
            live.update(files)
        return live

    def _read(self, path: str, signature: tuple) -> pl.DataFrame | None:
        size = signature[0] if isinstance(signature[0], int) else -1
        try:
            if not self.table.usable([FileEntry(path, size)]):
                return pl.DataFrame(schema=INCIDENT_COLUMNS)  # skipped until it changes
            rows = self.table.scan([path]).collect()
        except (OSError, pl.exceptions.PolarsError) as exc:
            log.warning("incidents file %s not read: %s", self.lake.loc.uri_of(path), exc)
            return None
        self.files_read += 1
        return rows


def read_incidents(lake: Lake, *, since: datetime | None = None) -> pl.DataFrame:
    """Incidents whose first finding is on or after ``since``'s date (all when None)."""
    df = _scan_incidents(lake, since, None).collect()
    return df.sort(["severity_rank", "last_seen"], descending=[True, True])


#: How long an incident stays open at most: a finding joins an incident first seen no more
#: than this and the grouping horizon before it (:func:`recent_incidents`); steady activity
#: past that opens a new one.
MAX_INCIDENT_SPAN = timedelta(days=7)


def recent_incidents(lake: Lake, before: datetime, horizon: timedelta) -> pl.DataFrame:
    """Incidents that a finding at ``before`` could still join: last seen within the horizon.

    Reads first_seen dates back to ``before - horizon - MAX_INCIDENT_SPAN``: an incident kept
    open for longer than a week by steady activity is split (a new one opens), which is what
    an analyst wants from a week-long trickle anyway.
    """
    df = read_incidents(lake, since=before - horizon - MAX_INCIDENT_SPAN)
    return df.filter(pl.col("last_seen") >= before - horizon)


def incidents_overlapping(lake: Lake, start: datetime, end: datetime) -> pl.DataFrame:
    """Incidents active in ``[start, end)``: first seen before its end, last seen after its
    start (``last_seen`` is the end of its last finding's window, exclusive: an incident
    whose findings all ended at ``start`` was listed, and drawn with none of them in
    range; found by review), in order of first seen.

    Only the dates that can hold one are read: back to ``MAX_INCIDENT_SPAN`` and a day (more
    than the grouping horizon) before ``start``.
    """
    since = start - MAX_INCIDENT_SPAN - timedelta(days=1)
    df = _scan_incidents(lake, since, end).filter(
        (pl.col("last_seen") > start) & (pl.col("first_seen") < end)
    )
    return df.sort("first_seen", "incident_id").collect()


# ---------------------------------------------------------------------------- finding status
def write_status(lake: Lake, rows: Iterable[dict[str, Any]]) -> int:
    """Upsert finding statuses by ``finding_id`` (filed under the finding's window date)."""
    df = _frame(list(rows), STATUS_COLUMNS)
    return _upsert(lake, status_table(lake), "status.parquet", df, "finding_id", "window_start")


def read_status(lake: Lake, *, since: datetime | None = None) -> pl.DataFrame:
    return scan_dates(status_table(lake), since, None).collect()


def findings_events(lake: Lake, findings: pl.DataFrame) -> pl.DataFrame:
    """The events behind ``findings`` (from LAKE/findings_events/ on their dates)."""
    if findings.is_empty():
        return pl.DataFrame(schema=findings_events_table(lake).schema)
    times = findings["window_start"]
    return stored_events(lake, findings["finding_id"], times.min(), times.max()).collect()  # type: ignore[arg-type]
