"""`detect findings` (list) and `detect findings show FINDING_ID`."""

from __future__ import annotations

from typing import Annotated

import typer

from detector.cli.options import (
    FormatOpt,
    LakeOpt,
    MinSeverityOpt,
    OutputFormat,
    SinceOpt,
    UntilOpt,
    emit_json,
    stdout,
)
from detector.cli.render import findings_json, format_score, render_findings

findings_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)


@findings_app.callback()
def list_cmd(
    ctx: typer.Context,
    lake: LakeOpt = "./lake",
    since: SinceOpt = "24h",  # type: ignore[assignment]
    until: UntilOpt = None,
    principal: Annotated[
        str | None,
        typer.Option("--principal", help="Only principals containing this text."),
    ] = None,
    min_severity: MinSeverityOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """List findings in the lake (most severe first, every severity unless
    --min-severity), or show one with its events. A finding is listed when its window
    starts in [--since, --until).

    Use `detect findings show FINDING_ID` for one finding's reasons and events.

    Exit codes: 0 done, 2 bad arguments or unknown finding, 3 storage failure.

    Example:

    \b
        detect findings --lake ./lake --since 7d --min-severity medium
        detect findings show 3f9c0a1b2c3d4e5f6a7b --lake ./lake
    """
    if ctx.invoked_subcommand is not None:
        return
    from detector.lake.events import Lake
    from detector.lake.findings import list_findings

    df = list_findings(
        Lake(lake),
        since=since,
        until=until,
        principal=principal,
        min_severity=min_severity.value if min_severity else None,
    )
    if output == OutputFormat.json:
        emit_json(findings_json(df))
    else:
        render_findings(df)


@findings_app.command("show")
def show(
    finding_id: Annotated[str, typer.Argument(help="The finding's id (first column of the list).")],
    lake: LakeOpt = "./lake",
    output: FormatOpt = OutputFormat.table,
    limit: Annotated[int, typer.Option("--limit", help="Events to print (table only).")] = 50,
) -> None:
    """Show one finding: why it was raised and the events behind it.

    Example:

    \b
        detect findings show 3f9c0a1b2c3d4e5f6a7b --lake ./lake
    """
    from detector.lake.events import Lake
    from detector.lake.findings import get_finding

    row, events = get_finding(Lake(lake), finding_id)
    if output == OutputFormat.json:
        emit_json({**row, "events": events.drop("finding_id").to_dicts()})
        return
    out = stdout
    out.print(f"{row['title']}", markup=False, style="bold")
    out.print(
        f"finding {row['finding_id']}  severity {row['severity']}  "
        f"score {format_score(row['score'])}"
        f"  threshold {format_score(row['threshold'])}  detector {row['detector']}"
        f"{'  (cold start)' if row['cold_start'] else ''}",
        markup=False,
    )
    out.print(
        f"principal {row['principal']} ({row['principal_kind']}) in cluster {row['cluster']}, "
        f"{row['window_start']:%Y-%m-%d %H:%M}-{row['window_end']:%H:%M} UTC",
        markup=False,
    )
    if row.get("tactic"):
        out.print(f"MITRE ATT&CK: {row['tactic']} {row.get('technique') or ''}", markup=False)
    out.print("why:", markup=False)
    for reason in row["reasons"] or []:
        out.print(f"  - {reason}", markup=False)
    out.print(f"events ({row['event_count']:,}; showing up to {limit}):", markup=False)
    cols = [
        "event_time",
        "verb",
        "resource",
        "subresource",
        "namespace",
        "name",
        "response_code",
        "source_ip",
        "user_agent",
    ]
    for ev in events.head(limit).select(cols).iter_rows(named=True):
        target = "/".join(x for x in (ev["resource"], ev["subresource"]) if x) or "-"
        where = "/".join(x for x in (ev["namespace"], ev["name"]) if x) or "-"
        out.print(
            f"  {ev['event_time']:%H:%M:%S} {ev['verb'] or '-':<8} {target:<22} {where:<40} "
            f"{ev['response_code'] or '-'} {ev['source_ip'] or '-'} {ev['user_agent'] or '-'}",
            markup=False,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(findings_app, name="findings")
