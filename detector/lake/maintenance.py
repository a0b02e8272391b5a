"""Keeping a lake healthy: find files readers skip (``detect lake check``) and merge the many
small files that follow and watch modes leave (``detect compact``).

Both work table by table through :class:`detector.lake.table.Table`, so they see exactly
what readers see: live files after ``_replaced-*`` markers, nothing from ``_tmp/``.

Compaction is safe to run at any time:

- **atomic for readers**: a partition's small files are replaced by one file through
  :meth:`Table.replace` (marker, then output), so a scan sees the old files or the new
  one, never both or neither; the old files are deleted only on a later run once they
  are older than the grace period, so scans that listed them before still find them;
- **safe with a writer appending**: it holds the lake's writer lock per partition, and
  merges only the files it listed; files added afterwards stay as they are;
- **idempotent**: a partition already down to one live file is left alone, and merging
  keeps the first row of each key, so running it twice changes nothing more.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from detector.events.schema import COPY_KEY
from detector.lake.events import Lake
from detector.lake.findings import findings_events_table, findings_table
from detector.lake.incidents import incidents_table, status_table
from detector.lake.lock import writer_lock
from detector.lake.table import TMP_DIR, Table, list_dir, remove, schema_problem

log = logging.getLogger(__name__)

#: Old files replaced by compaction are kept this long for scans that listed them.
DEFAULT_GRACE = 15 * 60.0
_KEYS = {"events": list(COPY_KEY), "quarantine": ["source", "source_position"]}


def lake_tables(lake: Lake) -> list[Table]:
    return [
        lake.events,
        lake.quarantine,
        findings_table(lake),
        findings_events_table(lake),
        incidents_table(lake),
        status_table(lake),
    ]


# --------------------------------------------------------------------------- check
@dataclass
class Problem:
    table: str
    path: str
    problem: str

    def to_dict(self) -> dict[str, str]:
        return {"table": self.table, "path": self.path, "problem": self.problem}


@dataclass
class CheckReport:
    lake: str
    files: int = 0
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lake": self.lake,
            "files_checked": self.files,
            "problems": [p.to_dict() for p in self.problems],
        }


def check_lake(lake: Lake, *, deep: bool = True) -> CheckReport:
    """Every file readers would skip or fail on, and every stray entry in a table folder.

    ``deep`` reads each file whole (finds corrupt pages behind a valid footer); otherwise
    only footers and column types are checked, which is what readers check.
    """
    report = CheckReport(lake.uri)
    for table in lake_tables(lake):
        _stray_folders(table, (), report)
        for part in table.partitions():
            directory = table.dir(part)
            live = {e.path for e in table.entries(part)}
            report.files += len(live)
            for path, problem in table.check(part, deep=deep):
                report.problems.append(Problem(table.name, lake.loc.uri_of(path), problem))
            for name, size in list_dir(lake.loc, directory):
                path = f"{directory}/{name}"
                if size < 0 or path in live or name.startswith("_replaced-"):
                    continue
                if (
                    name.endswith(".parquet")
                    and schema_problem(lake.loc, path, size, table.schema, table.required) is None
                    and not name.startswith(".")
                ):
                    continue  # replaced by compaction, awaiting deletion
                report.problems.append(
                    Problem(table.name, lake.loc.uri_of(path), "not a lake data file (ignored)")
                )
    return report


def _stray_folders(table: Table, prefix: tuple[str, ...], report: CheckReport) -> None:
    """Entries above the partition level that readers ignore (e.g. ``cluster=prod[1]``
    written by an older version, or a stray file)."""
    if len(prefix) == len(table.keys):
        return
    key = table.keys[len(prefix)]
    directory = table.dir(prefix)
    valid = set(table.values(prefix))
    for name, _size in list_dir(table.loc, directory):
        value = name[len(key) + 1 :] if name.startswith(key + "=") else None
        if value is None or value not in valid:
            report.problems.append(
                Problem(
                    table.name,
                    table.loc.uri_of(f"{directory}/{name}"),
                    "not a partition of this table (ignored)",
                )
            )
    for value in sorted(valid):
        _stray_folders(table, (*prefix, value), report)


# --------------------------------------------------------------------------- compact
@dataclass
class CompactSummary:
    partitions: int = 0  # partitions merged
    files_before: int = 0  # live files in the merged partitions before
    files_after: int = 0  # ... and after
    rows: int = 0
    purged: int = 0  # replaced files deleted (older than the grace period)
    tmp_removed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions,
            "files_before": self.files_before,
            "files_after": self.files_after,
            "rows": self.rows,
            "purged": self.purged,
            "tmp_removed": self.tmp_removed,
            "seconds": round(self.seconds, 3),
        }


def _merge(table: Table, files: list[str]) -> pl.DataFrame:
    df = pl.concat([table.read(f) for f in files], how="vertical")
    if table.name in _KEYS:
        df = df.unique(subset=_KEYS[table.name], keep="first", maintain_order=True)
    if "event_time" in df.columns:
        df = df.sort("event_time", maintain_order=True)
    return df


def compact(
    lake: Lake,
    *,
    min_files: int = 2,
    grace: float = DEFAULT_GRACE,
    tables: tuple[str, ...] = ("events", "quarantine"),
) -> CompactSummary:
    """Merge each partition holding ``min_files`` or more live files into one file."""
    started = time.monotonic()
    summary = CompactSummary()
    for table in (t for t in lake_tables(lake) if t.name in tables):
        parts = table.partitions()
        if parts:
            table.check_deletes()  # before merging anything: see Table.check_deletes
        for part in parts:
            # Under the lock, as the merge: a purge running beside another compaction took
            # its marker, written but with no output yet, for a dead writer's and deleted
            # it; the output then came, and the merged files with it were all live (their
            # rows twice to the tool's reader; found by review).
            with writer_lock(lake) as lease:
                summary.purged += table.purge_replaced(part, grace)
                files = table.usable(table.entries(part))  # bad files stay, for `lake check`
                if len(files) < max(2, min_files):
                    continue
                df = _merge(table, files)
                table.replace(part, files, df)
                lease.renew_if_due()
            summary.partitions += 1
            summary.files_before += len(files)
            summary.files_after += 1
            summary.rows += df.height
    summary.tmp_removed = _clean_tmp(lake, grace)
    summary.seconds = time.monotonic() - started
    return summary


def _clean_tmp(lake: Lake, grace: float) -> int:
    """Remove temporary files of killed writers (local lakes only; S3 writes have none)."""
    if lake.loc.is_s3:
        return 0
    import os

    directory = lake.loc.path(TMP_DIR)
    old = []
    for name, size in list_dir(lake.loc, directory):
        path = f"{directory}/{name}"
        if size >= 0 and time.time() - os.path.getmtime(path) >= grace:
            old.append(path)
    remove(lake.loc, old)
    return len(old)
