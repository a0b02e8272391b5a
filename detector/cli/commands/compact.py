"""`detect compact`: merge the small files of follow and watch modes, per partition."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from detector.cli.options import (
    FormatOpt,
    LakeOpt,
    OutputFormat,
    duration_option,
    emit_json,
    stdout,
)
from detector.lake.events import Lake
from detector.lake.maintenance import DEFAULT_GRACE, compact


def compact_command(
    lake: LakeOpt = "./lake",
    min_files: Annotated[
        int,
        typer.Option("--min-files", min=2, help="Merge partitions holding at least this many."),
    ] = 2,
    grace: Annotated[
        timedelta,
        duration_option(
            "--grace",
            help="Keep replaced files this long for scans already running, then delete them.",
        ),
    ] = f"{int(DEFAULT_GRACE // 60)}m",  # type: ignore[assignment]
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Merge each partition's small files into one (events and quarantine).

    `detect export --follow` and watch mode flush every few seconds, one file per flush and
    hour. Compaction is atomic (readers see the old files or the merged one), idempotent
    and safe while readers scan and while a writer appends; files it replaced are deleted
    by a later run once older than --grace. Run it hourly next to a follow exporter.

    Exit codes: 0 done, 2 bad arguments or missing bucket, 3 the lake could not be written.

    Example:

    \b
        detect compact --lake ./lake
        detect compact --lake s3://audit-lake/prod --grace 1h --format json
    """
    summary = compact(
        Lake(lake).require_existing(), min_files=min_files, grace=grace.total_seconds()
    )
    if output == OutputFormat.json:
        emit_json(summary.to_dict())
        return
    stdout.print(
        f"compacted {summary.partitions} partition(s) in {lake}: {summary.files_before:,} files "
        f"-> {summary.files_after:,} ({summary.rows:,} rows); {summary.purged:,} replaced "
        f"file(s) deleted, {summary.tmp_removed} temporary file(s) removed",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("compact")(compact_command)
