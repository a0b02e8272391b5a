"""`detect report`: one self-contained HTML page of a time range, for people to look at."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from detector.cli.options import (
    ClusterOpt,
    LakeOpt,
    SinceOpt,
    UntilOpt,
    duration_option,
    lake_to_read,
    output_file,
    progress_status,
    stderr,
    stdout,
    time_range,
)

#: Sections a page can hold: each carries a timeline and raw events (~10 KB); more
#: than this is a page no browser opens, and a bigger number overflowed (exit 3).
MAX_SECTIONS = 10_000


def report(
    lake: LakeOpt = "./lake",
    since: SinceOpt = "24h",  # type: ignore[assignment]
    until: UntilOpt = None,
    out: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            parser=output_file,
            help="The HTML file to write ('-': stdout); missing folders are made.",
        ),
    ] = Path("report.html"),
    cluster: ClusterOpt = None,
    baseline: Annotated[
        timedelta,
        duration_option(
            "--baseline",
            help="How far before --since the usual denied/401 rates are measured (7d, 48h).",
        ),
    ] = "7d",  # type: ignore[assignment]
    max_findings: Annotated[
        int,
        typer.Option(
            "--max-findings",
            min=0,
            max=MAX_SECTIONS,
            help="Findings given a section with their timeline and raw events (most severe).",
        ),
    ] = 50,
) -> None:
    """Write one self-contained HTML report of a time range: open it with no network.

    Events per hour by cluster, the denied (403) and unauthenticated (401) rates drawn
    against their usual level, findings (and incidents, when the lake has them) over time
    by severity, the top principals, and for each alert and incident its timeline and raw
    events, linked both ways. Charts are inline SVG; nothing is fetched when it opens.

    Exit codes: 0 written, 2 bad arguments, 3 storage failure or the page could not be
    written.

    Example:

    \b
        detect report --lake ./lake --since 24h -o report.html
        detect report --lake s3://audit-lake/prod --since 7d --baseline 14d -o week.html
        detect report --since 24h -o - | aws s3 cp - s3://reports/today.html
    """
    from detector.report.data import collect
    from detector.report.html import write_report

    start, end = time_range(since, until)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    with progress_status("reading the lake"):
        data = collect(
            lake_to_read(lake, cluster),
            start,
            end,
            cluster=cluster,
            baseline=baseline,
            max_findings=max_findings,
            region=region,
        )
    with progress_status("drawing the report"):
        written = write_report(data, out)
    # Where the page went to a stream (-o -, /dev/stdout, a pipe), the summary goes to
    # stderr: appended to the page, it would end up in whatever reads it.
    if written.is_file():
        console, where = stdout, str(written.resolve())
    else:
        console, where = stderr, "standard output" if str(written) == "-" else str(written)
    s = data.summary()
    console.print(
        f"report of {start:%Y-%m-%d %H:%M}Z to {end:%Y-%m-%d %H:%M}Z: {s['events']:,} events, "
        f"{s['alerts']} alert(s), {s['findings']} finding(s) -> {where}",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("report")(report)
