"""`detect export`: CloudWatch Logs (EKS audit streams) into the lake, batch or follow."""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime, timedelta
from typing import Annotated

import typer

from detector.cli.options import (
    EXIT_OK,
    POSITIVE,
    BackoffOpt,
    CloudWatchRateOpt,
    ClusterOpt,
    FormatOpt,
    LakeOpt,
    LeaseOpt,
    OutputFormat,
    RegionOpt,
    UntilOpt,
    duration_option,
    emit_json,
    instant_option,
    log_group_name,
    progress_enabled,
    progress_line,
    stderr,
    stdout,
    stop_on_signals,
)
from detector.errors import UsageError
from detector.pipeline.export import (
    Exporter,
    ExportError,
    ExportOptions,
    ExportSummary,
)
from detector.sources.cloudwatch import DEFAULT_STREAM_PREFIX, MAX_PAGE_LIMIT
from detector.sources.files import cluster_from_log_group
from detector.timeparse import check_range


def export(
    ctx: typer.Context,
    log_group: Annotated[
        str,
        typer.Option(
            "--log-group",
            envvar="DETECT_LOG_GROUP",
            parser=log_group_name,
            help="CloudWatch log group, e.g. /aws/eks/prod/cluster.",
            show_default=False,
        ),
    ],
    lake: LakeOpt = "./lake",
    cluster: ClusterOpt = None,
    since: Annotated[
        datetime | None,
        instant_option(
            "--since",
            help="Start: a duration before now (1h, 7d) or ISO-8601. Default: resume from "
            "the checkpoint in LAKE/_state/.",
        ),
    ] = None,
    until: UntilOpt = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", help="Keep exporting new events until SIGTERM/SIGINT."),
    ] = False,
    interval: Annotated[
        timedelta,
        duration_option("--interval", parser=POSITIVE, help="Follow mode: time between passes."),
    ] = "30s",  # type: ignore[assignment]
    latency: Annotated[
        timedelta,
        duration_option(
            "--latency",
            help="Read only windows closed this long ago (CloudWatch ingestion delay).",
        ),
    ] = "2m",  # type: ignore[assignment]
    overlap: Annotated[
        timedelta | None,
        duration_option(
            "--overlap",
            help="Re-read this much behind the checkpoint to catch late events "
            "(default: the --latency value).",
            show_default=False,
        ),
    ] = None,
    stream_prefix: Annotated[
        str,
        typer.Option(
            "--stream-prefix", help="Audit log streams start with this ('': every stream)."
        ),
    ] = DEFAULT_STREAM_PREFIX,
    rate: CloudWatchRateOpt = 5.0,
    max_attempts: Annotated[
        int,
        typer.Option(
            "--max-attempts",
            min=1,
            max=100,  # 10**22 retried an unreachable endpoint for ever (found by review)
            help="Tries per API call on throttling, 5xx, timeouts or resets before giving up.",
        ),
    ] = 8,
    flush_events: Annotated[
        int, typer.Option("--flush-events", min=1, help="Write to the lake every N events...")
    ] = 50_000,
    flush_interval: Annotated[
        timedelta,
        duration_option(
            "--flush-interval", parser=POSITIVE, help="...or every T, whichever comes first."
        ),
    ] = "60s",  # type: ignore[assignment]
    chunk: Annotated[
        timedelta,
        duration_option(
            "--chunk",
            parser=POSITIVE,
            help="Read the range in chunks this long; the checkpoint moves per chunk.",
        ),
    ] = "15m",  # type: ignore[assignment]
    lease: LeaseOpt = "3m",  # type: ignore[assignment]
    wait_for_lease: Annotated[
        timedelta,
        duration_option(
            "--wait-for-lease",
            help="If another exporter holds the log group, wait this long for it (standby).",
        ),
    ] = "0s",  # type: ignore[assignment]
    page_limit: Annotated[
        int,
        typer.Option(
            "--page-limit",
            min=1,
            max=MAX_PAGE_LIMIT,
            hidden=True,
            help="FilterLogEvents limit per page.",
        ),
    ] = MAX_PAGE_LIMIT,
    backoff: BackoffOpt = "0.5s",  # type: ignore[assignment]
    region: RegionOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Export EKS audit events from CloudWatch Logs into the lake.

    Reads the kube-apiserver-audit-* streams of the log group over closed windows (ending
    --latency before now), re-reading --overlap behind the checkpoint so late events are
    caught, and writes each event to the lake once (unique on audit ID, stage and stage time). The
    checkpoint in LAKE/_state/cloudwatch/ moves only after events are durably written, so
    a run killed at any moment resumes without loss or duplicates. One exporter per log
    group: a second one stops with a message. Bad events go to LAKE/quarantine/ with their
    CloudWatch eventId.

    Without --since, resumes from the checkpoint (the first run needs --since). With
    --follow, runs until SIGTERM/SIGINT, then flushes, checkpoints and exits 0. An --until
    less than --latency ago is waited for (the run ends once that window has closed and
    is read, never cut short); --since or --until in the future is refused.

    Exit codes: 0 done; 2 bad arguments, no checkpoint and no --since, missing
    credentials, unknown log group or access denied; 3 CloudWatch or the lake failing
    after retries, or another exporter holding the log group; 128+N a batch run stopped
    by signal N (progress saved).

    Example:

    \b
        detect export --log-group /aws/eks/prod/cluster --lake ./lake --since 1h
        detect export --log-group /aws/eks/prod/cluster --lake s3://audit-lake/prod --follow
    """
    if region:
        from detector.config import apply_region

        apply_region(ctx, region)
    cluster = cluster or cluster_from_log_group(log_group)
    if not cluster:
        raise UsageError(
            f"cannot tell the cluster from log group {log_group!r} (not /aws/eks/NAME/cluster): "
            "pass --cluster"
        )
    if follow and until:
        raise UsageError("--until cannot be combined with --follow")
    if since and until:
        check_range(since, until)
    options = ExportOptions(
        log_group=log_group,
        cluster=cluster,
        stream_prefix=stream_prefix,
        latency=latency,
        overlap=overlap,
        chunk=chunk,
        interval=interval,
        flush_events=flush_events,
        flush_seconds=flush_interval.total_seconds(),
        page_limit=page_limit,
        rate=rate,
        max_attempts=max_attempts,
        backoff_base=backoff.total_seconds(),
        lease_seconds=lease.total_seconds(),
        wait_for_lease=wait_for_lease.total_seconds(),
    )

    interactive = progress_enabled() and output == OutputFormat.table
    last_draw = [0.0]

    def progress(summary: ExportSummary, window: str) -> None:
        now = time.monotonic()
        if now - last_draw[0] < 0.2:
            return
        last_draw[0] = now
        rate_now = summary.events_read / summary.seconds if summary.seconds else 0
        line = (
            f"{summary.events_read:,} events, {summary.pages:,} pages, {rate_now:,.0f}/s, "
            f"{summary.api.retries} retries  window {window}"
        )
        progress_line(line)

    from detector.lake.events import Lake

    Lake(lake).require_root()  # a file as --lake: exit 3 and a state path, then (review)
    stop = threading.Event()
    received: list[int] = []
    exporter = Exporter(lake, options, stop=stop, progress=progress if interactive else None)
    with stop_on_signals(stop, received):
        try:
            summary = exporter.run(since=since, until=until, follow=follow)
        except ExportError as exc:  # reported by the entry point; the summary so far first
            if interactive:
                stderr.print()
            if output == OutputFormat.json:
                emit_json({**exporter.summary.to_dict(), "error": str(exc)})
            raise
    if interactive:
        stderr.print()
    if received:
        summary.stopped_by = signal.Signals(received[0]).name
    if output == OutputFormat.json:
        emit_json(summary.to_dict())
    else:
        render_summary(summary)
    if received and not follow:
        raise typer.Exit(128 + received[0])
    raise typer.Exit(EXIT_OK)


def render_summary(summary: ExportSummary) -> None:
    """The human summary of an export."""
    d = summary.to_dict()
    cp = d["checkpoint"]
    # Every event read is new, already in the lake or quarantined: the three add up.
    read = d["events_read"] + d["overlap_skipped"]
    reread = f" ({d['overlap_skipped']:,} re-read in the overlap)" if d["overlap_skipped"] else ""
    stdout.print(
        f"exported {read:,} events from {d['log_group']} "
        f"({len(d['streams'])} audit streams) into {d['lake']} in {d['seconds']:.1f}s: "
        f"{d['events_written']:,} new, {d['duplicates']:,} already in the lake{reread}, "
        f"{d['quarantined']:,} quarantined",
        markup=False,
    )
    window = d["window"]
    if window["start"] and window["end"]:
        stdout.print(
            f"  window: {window['start']:%Y-%m-%dT%H:%M:%S}Z .. {window['end']:%Y-%m-%dT%H:%M:%S}Z",
            markup=False,
        )
    stdout.print(
        f"  API: {d['api_calls']} calls ({d['pages']} pages), {d['retries']} retries "
        f"({d['throttled']} throttled)",
        markup=False,
    )
    moved = "advanced" if cp["advanced"] else "unchanged"
    stdout.print(f"  checkpoint {moved}: {cp['after'] or 'none'} ({cp['uri']})", markup=False)
    if cp["note"]:
        stdout.print(f"  note: {cp['note']}", markup=False)
    for reason, count in d["quarantine_reasons"].items():
        stdout.print(f"  quarantined: {count:,} x {reason}", markup=False)
    if d["ignored_other_streams"]:
        stdout.print(
            f"  ignored {d['ignored_other_streams']:,} events of non-audit streams", markup=False
        )
    for warning in d["warnings"]:
        stderr.print(f"warning: {warning}", markup=False)
    if summary.stopped_by:
        stdout.print(f"  stopped by {summary.stopped_by}; progress saved", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``detect export`` to the app."""
    app.command("export")(export)
