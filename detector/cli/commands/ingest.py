"""`detect ingest`: audit files, folders and S3 objects into the lake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer

from detector.cli.options import (
    EXIT_RUNTIME,
    INVOCATION_NOW,
    FormatOpt,
    InputFormat,
    InputFormatOpt,
    LakeOpt,
    OutputFormat,
    cluster_name,
    duration_option,
    emit_json,
    instant_option,
    progress_enabled,
    progress_line,
    stderr,
    stdout,
)
from detector.events.normalize import TimeBounds
from detector.pipeline.ingest import CLUSTER_ORIGINS, IngestSummary, ingest_paths
from detector.timeparse import check_not_future

#: Ingest's own --cluster: same flag and variable as elsewhere, but never a silent default.
IngestClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        envvar="DETECT_CLUSTER",
        parser=cluster_name,
        help="Cluster the events are from. Without it: the EKS log group of Firehose records, "
        "an aws/eks/NAME/ or cluster=NAME/ part of the path, else the lake's only cluster; "
        "else exit 2.",
        show_default=False,
    ),
]


def ingest(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Files, folders or s3:// prefixes (plain, .gz, .bz2 or .xz).", show_default=False
        ),
    ],
    lake: LakeOpt = "./lake",
    cluster: IngestClusterOpt = None,
    input_format: InputFormatOpt = InputFormat.auto,
    reprocess: Annotated[
        bool,
        typer.Option(help="Read S3 objects again even if an earlier run ingested them."),
    ] = False,
    earliest: Annotated[
        datetime,
        instant_option(help="Quarantine events stamped before this instant (ISO-8601 or 30d)."),
    ] = "2014-01-01",  # type: ignore[assignment]
    max_future: Annotated[
        timedelta,
        duration_option(help="Quarantine events stamped more than this ahead of the clock."),
    ] = "1d",  # type: ignore[assignment]
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Read audit events from files or S3 objects and add them to the lake.

    Formats are detected per file: kube-apiserver audit logs (one Event JSON per line),
    `aws logs filter-log-events` output, CloudWatch export-task objects and Firehose
    subscription objects. Events already in the lake are skipped (unique on audit ID, stage
    and stage time), lines that cannot be read go to LAKE/quarantine/ with a reason, and S3 objects
    are remembered so the next run reads only new ones.

    The cluster is --cluster, else what the input says (the log group of Firehose records,
    an aws/eks/NAME/ or cluster=NAME/ part of the path), else the lake's only cluster. With
    none of these the run stops before writing that input's events: naming the same events
    differently in two runs would store them twice.

    Exit codes: 0 done (even with quarantined lines), 2 bad arguments, a path that names
    nothing (before anything is read) or no way to tell the cluster, 3 an input could not
    be read.

    Example:

    \b
        detect ingest /var/log/kubernetes/audit.log --lake ./lake --cluster prod
        detect ingest s3://my-bucket/eks-audit-export/ --lake s3://audit-lake/prod --cluster prod
    """
    # Every event would be quarantined as too early, with exit 0 (found by review).
    now = INVOCATION_NOW.get() or datetime.now(UTC)
    check_not_future("--earliest", earliest, now=now, why="every event would be quarantined")
    bounds = TimeBounds(earliest=earliest, max_future=max_future)
    interactive = progress_enabled() and output == OutputFormat.table

    def progress(summary: IngestSummary, uri: str) -> None:
        progress_line(f"{summary.lines:,} lines, {summary.quarantined:,} quarantined  {uri[-60:]}")

    summary = ingest_paths(
        paths,
        lake,
        cluster=cluster,
        fmt=input_format.value,
        reprocess=reprocess,
        progress=progress if interactive else None,
        time_bounds=bounds,
    )
    if interactive:
        stderr.print()
    for warning in summary.warnings:
        stderr.print(f"warning: {warning}", markup=False)
    if output == OutputFormat.json:
        emit_json(summary.to_dict())
    else:
        render_summary(summary, lake)
    if summary.failed_inputs:
        for reason in summary.failed_inputs:
            stderr.print(f"error: {reason}", markup=False)
        raise typer.Exit(EXIT_RUNTIME)


def render_summary(summary: IngestSummary, lake: str) -> None:
    """The human summary of an ingest."""
    d = summary.to_dict()
    stdout.print(
        f"ingested {d['lines']:,} lines from {d['inputs']} input(s) into {lake} "
        f"in {d['seconds']:.1f}s: {d['events_written']:,} new events, "
        f"{d['duplicates']:,} already in the lake, {d['quarantined']:,} quarantined"
        + (
            f", {d['skipped_inputs']} object(s) skipped (ingested before)"
            if d["skipped_inputs"]
            else ""
        ),
        markup=False,
    )
    for name, origin in summary.clusters.items():
        stdout.print(f"  cluster {name}: {CLUSTER_ORIGINS.get(origin, origin)}", markup=False)
    for reason, count in d["quarantine_reasons"].items():
        stdout.print(f"  quarantined: {count:,} x {reason}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
