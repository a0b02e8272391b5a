"""`detect incidents`: list, show, acknowledge, resolve, reopen; `deliver` sends what is due."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from detector.cli.options import (
    FormatOpt,
    LakeOpt,
    MinSeverityOpt,
    OutputFormat,
    SinceOpt,
    configured_sinks,
    emit_json,
    stdout,
    time_range,
)
from detector.cli.render import digests_text, render_incidents
from detector.errors import RuntimeFailure, UsageError
from detector.incidents.status import STATUSES
from detector.lake.findings_schema import SEVERITIES

incidents_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)

#: The open end of "active since": incidents last seen at or after --since, up to any time.
END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)

Status = StrEnum("Status", {s: s for s in STATUSES})  # type: ignore[misc]
Status.__doc__ = "Incident statuses (detector.incidents.status)."

IdArg = Annotated[str, typer.Argument(help="Incident id, or a unique prefix of it (4+ chars).")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Why (kept with the status in the lake).")
]


@incidents_app.callback()
def list_cmd(
    ctx: typer.Context,
    lake: LakeOpt = "./lake",
    since: SinceOpt = "7d",  # type: ignore[assignment]
    status: Annotated[
        Status | None,
        typer.Option("--status", help="Only this status.", case_sensitive=False),
    ] = None,
    min_severity: MinSeverityOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """List incidents: findings of one principal (or source IP) grouped, most severe first.

    Those active since --since: with a finding at or after it, however long before it the
    incident began.

    `detect score` groups the findings it writes into incidents and sends them to the
    sinks in detect.toml ([[sinks]]). Exit codes: 0 done, 2 bad arguments or unknown id,
    3 storage failure.

    Example:

    \b
        detect incidents --lake ./lake --since 7d --status new
        detect incidents show 3f9c0a --lake ./lake
        detect incidents ack 3f9c0a --reason "on it (OPS-12)" --lake ./lake
    """
    if ctx.invoked_subcommand is not None:
        return
    import polars as pl

    from detector.lake.events import Lake
    from detector.lake.incidents import incidents_overlapping

    # Active since then, wherever it began: an incident first seen before --since that
    # is still growing is the one an analyst most needs in the list. A --since not before
    # now is the empty range it is for every other command (it said "no incidents"; review).
    time_range(since, None)
    df = incidents_overlapping(Lake(lake).require_existing(), since, END_OF_TIME).sort(
        ["severity_rank", "last_seen"], descending=[True, True]
    )
    if status:
        df = df.filter(pl.col("status") == status.value)
    if min_severity:
        df = df.filter(pl.col("severity_rank") >= SEVERITIES.index(min_severity.value))
    if output == OutputFormat.json:
        emit_json(df.drop("timeline").to_dicts())
        return
    render_incidents(df)


@incidents_app.command("show")
def show(
    incident_id: IdArg, lake: LakeOpt = "./lake", output: FormatOpt = OutputFormat.table
) -> None:
    """Show one incident: severity and why, status, and the timeline of its findings.

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect incidents show 3f9c0a --lake ./lake
    """
    from detector.incidents.workflow import find_incident
    from detector.lake.events import Lake

    inc = find_incident(Lake(lake).require_existing(), incident_id)
    if output == OutputFormat.json:
        emit_json(inc.to_row())
        return
    out = stdout
    out.line(inc.title, style="bold")
    out.line(
        f"incident {inc.incident_id} v{inc.version}  severity {inc.severity}  status "
        f"{inc.status}{f' by {inc.suppression}' if inc.suppression else ''}",
    )
    who = f"source IP {inc.key}" if inc.key_kind == "source_ip" else f"principal {inc.principal}"
    out.line(
        f"{who} in cluster {inc.cluster}, {inc.first_seen:%Y-%m-%d %H:%M} to "
        f"{inc.last_seen:%Y-%m-%d %H:%M} UTC",
    )
    if inc.status_reason:
        out.line(f"status reason: {inc.status_reason}")
    out.line(f"why this severity: {inc.severity_reason}")
    if inc.tactics:
        out.line(f"tactics: {' -> '.join(inc.tactics)}")
    out.line("timeline:")
    for t in inc.timeline:
        tag = f"  [suppressed by {t['suppression']}]" if t.get("suppression") else ""
        out.line(
            f"  {t['time']:%m-%d %H:%M}  {t['severity']:<8} {t['finding_id']}  "
            f"{t['detector']}: {t['title']}{tag}",
        )
    out.line(f"findings: detect findings show <id> --lake {lake}")


def _set(
    incident_id: str, lake: str, status: str, reason: str | None, output: OutputFormat
) -> None:
    from detector.incidents.workflow import set_incident_status
    from detector.lake.events import Lake

    inc = set_incident_status(Lake(lake).require_existing(), incident_id, status, reason)
    if output == OutputFormat.json:
        emit_json({"incident_id": inc.incident_id, "status": inc.status})
    else:
        stdout.line(f"incident {inc.incident_id}: {inc.status}")


@incidents_app.command("ack")
def ack(
    incident_id: IdArg,
    lake: LakeOpt = "./lake",
    reason: ReasonOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Acknowledge an incident (OCSF In Progress): someone is on it; updates still arrive.

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect incidents ack 3f9c0a --reason "looking (OPS-12)" --lake ./lake
    """
    _set(incident_id, lake, "acknowledged", reason, output)


@incidents_app.command("resolve")
def resolve(
    incident_id: IdArg,
    lake: LakeOpt = "./lake",
    reason: ReasonOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Resolve an incident: closed; new activity of the principal opens a new incident.

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect incidents resolve 3f9c0a --reason "token rotated" --lake ./lake
    """
    _set(incident_id, lake, "resolved", reason, output)


@incidents_app.command("reopen")
def reopen(
    incident_id: IdArg,
    lake: LakeOpt = "./lake",
    reason: ReasonOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Set an incident back to new.

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect incidents reopen 3f9c0a --lake ./lake
    """
    _set(incident_id, lake, "new", reason, output)


@incidents_app.command("deliver")
def deliver_cmd(
    ctx: typer.Context, lake: LakeOpt = "./lake", output: FormatOpt = OutputFormat.table
) -> None:
    """Send what is due to the sinks in detect.toml: incidents updated in the last day that a
    sink has not received at their current version (after an outage, say). Nothing already
    delivered is sent again.

    Exit codes: 0 sent (or nothing was due, or held for a sink's next digest), 2 no sinks
    configured or a bad option, 3 an alert could not be delivered after its retries, or
    waits to be tried again after its receiver refused it (it is kept in LAKE/dead_letters
    and sent by a later run), so a cron job that retries sees the outage.

    Example:

    \b
        detect --config prod.toml incidents deliver --lake s3://audit-lake/prod
    """
    from detector.delivery.run import pending, send
    from detector.lake.events import Lake

    sinks = configured_sinks(ctx, output)
    if not sinks:
        raise UsageError("no [[sinks]] in the configuration (see docs/alerts.md)")
    the_lake = Lake(lake).require_existing()
    report = send(the_lake, pending(the_lake, datetime.now(UTC)), sinks)
    s = report.summary()
    if output == OutputFormat.json:
        emit_json(s)
    else:
        stdout.line(
            f"sent {s['sent']} ({s['new']} new, {s['updates']} updates{digests_text(s)}), "
            f"{s['throttled']} throttled, {s['failed']} failed, {s['waiting']} waiting "
            "for a sink that is down"
            + (
                f", {s['refused']} refused by their receiver, tried again later"
                if s["refused"]
                else ""
            ),
        )
    if report.busy:
        raise RuntimeFailure(
            f"another run was delivering alerts from {the_lake.uri} for longer than this one "
            "could wait: nothing was sent; the next run sends what is owed"
        )
    if s["failed"] or s["waiting"] or s["refused"]:
        owed = s["failed"] + s["waiting"] + s["refused"]
        raise RuntimeFailure(
            f"{owed} alert(s) could not be delivered ({s['failed']} failed, in "
            f"{the_lake.uri}/dead_letters; {s['waiting']} not tried once their sink failed; "
            f"{s['refused']} refused by their receiver, waiting to be tried again); a later "
            "run sends them"
        )


def register(app: typer.Typer) -> None:
    import detector.delivery.config  # noqa: F401  registers [[sinks]] with the config reader

    app.add_typer(incidents_app, name="incidents")
