"""`detect findings` (list) and `detect findings show FINDING_ID`."""

from __future__ import annotations

from typing import Annotated

import typer

from detector.cli.options import (
    FormatOpt,
    LakeOpt,
    OutputFormat,
    emit_json,
    fail,
    stdout,
    usage_error,
)
from detector.lake.findings_schema import SEVERITIES
from detector.storage import StorageError
from detector.timeparse import TimeArgumentError, parse_instant

findings_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
)


@findings_app.callback()
def list_cmd(
    ctx: typer.Context,
    lake: LakeOpt = "./lake",
    since: Annotated[
        str,
        typer.Option("--since", help="Findings whose window starts after this (24h, ISO-8601)."),
    ] = "24h",
    until: Annotated[
        str | None, typer.Option("--until", help="...and before this (exclusive); default now.")
    ] = None,
    principal: Annotated[
        str | None,
        typer.Option("--principal", help="Only principals containing this text."),
    ] = None,
    min_severity: Annotated[
        str | None,
        typer.Option(
            "--min-severity", help=f"Only this severity and above ({', '.join(SEVERITIES)})."
        ),
    ] = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """List findings in the lake (most severe first), or show one with its events.

    Use `detect findings show FINDING_ID` for one finding's reasons and events.

    Exit codes: 0 done, 2 bad arguments or unknown finding, 3 storage failure.

    Example:

    \b
        detect findings --lake ./lake --since 7d --min-severity medium
        detect findings show 3f9c0a1b2c3d4e5f6a7b --lake ./lake
    """
    if ctx.invoked_subcommand is not None:
        return
    from detector.cli.commands.score import findings_json, render_findings
    from detector.lake.events import Lake
    from detector.lake.findings import list_findings

    if min_severity is not None and min_severity not in SEVERITIES:
        usage_error(f"--min-severity must be one of {', '.join(SEVERITIES)}, not {min_severity!r}")
    try:
        start = parse_instant(since)
        end = parse_instant(until) if until else None
    except TimeArgumentError as exc:
        usage_error(str(exc))
    try:
        df = list_findings(
            Lake(lake), since=start, until=end, principal=principal, min_severity=min_severity
        )
    except StorageError as exc:
        fail(str(exc))
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
    from detector.lake.findings import FindingNotFound, get_finding

    try:
        if len(finding_id) < 20:  # a prefix: ids are 20 hex characters
            finding_id = _full_id(lake, finding_id)
        row, events = get_finding(Lake(lake), finding_id)
    except FindingNotFound as exc:
        fail(str(exc), 2)
    except StorageError as exc:
        fail(str(exc))
    row.update(_status_of(lake, row))
    if output == OutputFormat.json:
        emit_json({**row, "events": events.drop("finding_id").to_dicts()})
        return
    out = stdout
    out.print(f"{row['title']}", markup=False, style="bold")
    out.print(
        f"finding {row['finding_id']}  severity {row['severity']}  score {row['score']:.3f}"
        f"  threshold {row['threshold']:.3f}  detector {row['detector']}"
        f"{'  (cold start)' if row['cold_start'] else ''}",
        markup=False,
    )
    out.print(
        f"principal {row['principal']} ({row['principal_kind']}) in cluster {row['cluster']}, "
        f"{row['window_start']:%Y-%m-%d %H:%M}-{row['window_end']:%H:%M} UTC",
        markup=False,
    )
    out.print(
        f"status {row['status']}"
        + (f" (suppressed by {row['suppression']})" if row["suppression"] else "")
        + (f"; incident {row['incident_id']}" if row["incident_id"] else ""),
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


def _full_id(lake: str, prefix: str) -> str:
    """The finding id that ``prefix`` starts (unique, 4+ characters), or a usage error."""
    from detector.errors import DetectError
    from detector.incidents.status import resolve_prefix
    from detector.lake.events import Lake
    from detector.lake.findings import list_findings

    ids = list_findings(Lake(lake), min_severity="info")["finding_id"].to_list()
    try:
        return resolve_prefix(prefix, ids, "finding")
    except DetectError as exc:
        fail(str(exc), exc.exit_code)


def _status_of(lake: str, row: dict) -> dict:
    """Workflow status of one finding (new when it never reached an incident)."""
    import polars as pl

    from detector.lake.events import Lake
    from detector.lake.incidents import read_status

    st = read_status(Lake(lake), since=row["window_start"]).filter(
        pl.col("finding_id") == row["finding_id"]
    )
    if st.is_empty():
        return {"status": "new", "suppression": None, "incident_id": None}
    return st.select("status", "suppression", "incident_id").row(0, named=True)


def _set_status(finding_id: str, lake: str, status: str, reason: str | None) -> None:
    from detector.errors import DetectError
    from detector.incidents.workflow import set_finding_status
    from detector.lake.events import Lake

    try:
        done = set_finding_status(Lake(lake), finding_id, status, reason)
    except DetectError as exc:
        fail(str(exc), exc.exit_code)
    except StorageError as exc:
        fail(str(exc))
    stdout.print(f"finding {done['finding_id']}: {status}", markup=False)


_IdArg = Annotated[str, typer.Argument(help="Finding id or a unique prefix of it (4+ chars).")]
_ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (kept in the lake).")]


@findings_app.command("ack")
def ack(finding_id: _IdArg, lake: LakeOpt = "./lake", reason: _ReasonOpt = None) -> None:
    """Acknowledge a finding (OCSF status In Progress).

    Example:

    \b
        detect findings ack 3f9c0a --lake ./lake --reason "checking with the team"
    """
    _set_status(finding_id, lake, "acknowledged", reason)


@findings_app.command("resolve")
def resolve(finding_id: _IdArg, lake: LakeOpt = "./lake", reason: _ReasonOpt = None) -> None:
    """Resolve a finding; its incident resolves once all its findings are resolved.

    Example:

    \b
        detect findings resolve 3f9c0a --lake ./lake --reason "expected: migration job"
    """
    _set_status(finding_id, lake, "resolved", reason)


def register(app: typer.Typer) -> None:
    app.add_typer(findings_app, name="findings")
