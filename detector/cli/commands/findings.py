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
    time_range,
)
from detector.cli.render import findings_json, format_score, render_findings
from detector.controls import TEXT_CHARS, clip
from detector.errors import UsageError
from detector.lake.findings_schema import MAX_EVENTS_PER_FINDING

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
        typer.Option(
            "--principal",
            help="Only principals containing this text (an STS assumed-role ARN is accepted).",
        ),
    ] = None,
    min_severity: MinSeverityOpt = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Only findings with this workflow status: new, acknowledged, suppressed "
            "or resolved.",
        ),
    ] = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """List findings in the lake (most severe first, every severity unless
    --min-severity) with their workflow status, or show one with its events. A finding is
    listed when its window starts in [--since, --until).

    Use `detect findings show FINDING_ID` for one finding's reasons and events.

    Exit codes: 0 done, 2 bad arguments or unknown finding, 3 storage failure.

    Example:

    \b
        detect findings --lake ./lake --since 7d --min-severity medium
        detect findings --lake ./lake --since 7d --status new
        detect findings show 3f9c0a1b2c3d4e5f6a7b --lake ./lake
    """
    if ctx.invoked_subcommand is not None:
        return
    from detector.incidents.status import STATUSES
    from detector.incidents.workflow import findings_with_status
    from detector.lake.events import Lake
    from detector.lake.findings import list_findings

    if status is not None and status not in STATUSES:
        raise UsageError(f"--status must be one of {', '.join(STATUSES)}, not {status!r}")
    time_range(since, until)  # empty or swapped: an error, not "no findings"
    the_lake = Lake(lake).require_existing()
    df = list_findings(
        the_lake,
        since=since,
        until=until,
        principal=_needle(principal) if principal else None,
        min_severity=min_severity.value if min_severity else None,
    )
    df = findings_with_status(the_lake, df)
    if status is not None:
        df = df.filter(df["status"] == status)
    if output == OutputFormat.json:
        emit_json(findings_json(df))
    else:
        render_findings(df)


@findings_app.command("show")
def show(
    finding_id: Annotated[str, typer.Argument(help="The finding's id (first column of the list).")],
    lake: LakeOpt = "./lake",
    output: FormatOpt = OutputFormat.table,
    limit: Annotated[
        int,
        typer.Option(
            "--limit",
            min=1,
            max=MAX_EVENTS_PER_FINDING,  # a finding keeps no more
            help="Events to print (table only).",
        ),
    ] = 50,
) -> None:
    """Show one finding: why it was raised and the events behind it.

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect findings show 3f9c0a1b2c3d4e5f6a7b --lake ./lake
    """
    from detector.events.addresses import shown_source
    from detector.lake.events import Lake
    from detector.lake.findings import get_finding

    if len(finding_id) < 20:  # a prefix: ids are 20 hex characters
        finding_id = _full_id(lake, finding_id)
    row, events = get_finding(Lake(lake).require_existing(), finding_id)
    row.update(_status_of(lake, row))
    identity = finding_identity(row, events)
    if output == OutputFormat.json:
        emit_json({**row, "identity": identity, "events": events.drop("finding_id").to_dicts()})
        return
    out = stdout
    out.line(f"{row['title']}", style="bold")
    out.line(
        f"finding {row['finding_id']}  severity {row['severity']}  "
        f"score {format_score(row['score'])}"
        f"  threshold {format_score(row['threshold'])}  detector {row['detector']}"
        f"{'  (cold start)' if row['cold_start'] else ''}",
    )
    out.line(
        f"principal {row['principal']} ({row['principal_kind']}) in cluster {row['cluster']}, "
        f"{row['window_start']:%Y-%m-%d %H:%M}-{row['window_end']:%H:%M} UTC",
    )
    out.line(
        f"status {row['status']}"
        + (f" (suppressed by {row['suppression']})" if row["suppression"] else "")
        + (f": {clip(row['status_reason'], TEXT_CHARS)}" if row["status_reason"] else "")
        + (f"; incident {row['incident_id']}" if row["incident_id"] else ""),
    )
    render_identity(identity)
    if row.get("tactic"):
        out.line(f"MITRE ATT&CK: {row['tactic']} {row.get('technique') or ''}")
    out.line("why:")
    for reason in row["reasons"] or []:
        out.line(f"  - {reason}")
    out.line(f"events ({row['event_count']:,}; showing up to {limit}):")
    cols = [
        "event_time",
        "verb",
        "resource",
        "subresource",
        "namespace",
        "name",
        "response_code",
        "source",
        "user_agent",
    ]
    shown = events.head(limit).with_columns(shown_source()).select(cols)
    for ev in shown.iter_rows(named=True):
        # Lake text is as long as a client made it; --format json has it whole.
        ev = {k: clip(v, TEXT_CHARS) if isinstance(v, str) else v for k, v in ev.items()}
        target = "/".join(x for x in (ev["resource"], ev["subresource"]) if x) or "-"
        where = "/".join(x for x in (ev["namespace"], ev["name"]) if x) or "-"
        out.line(
            f"  {ev['event_time']:%H:%M:%S} {ev['verb'] or '-':<8} {target:<22} {where:<40} "
            f"{ev['response_code'] or '-'} {ev['source'] or '-'} {ev['user_agent'] or '-'}",
        )


def _needle(principal: str) -> str:
    """The text a finding's principal must contain for ``--principal``: the stored form of
    what was typed; of the form a table shows (``developer (session grace)``), its role and
    session in any account."""
    from detector.events.identity import ANY_ACCOUNT, canonical_principal

    return canonical_principal(principal).removeprefix(ANY_ACCOUNT)


def _full_id(lake: str, prefix: str) -> str:
    """The finding id that ``prefix`` starts (unique, 4+ characters), or a usage error."""
    from detector.incidents.status import resolve_prefix
    from detector.lake.events import Lake
    from detector.lake.findings import list_findings

    ids = list_findings(Lake(lake).require_existing(), min_severity="info")["finding_id"].to_list()
    return resolve_prefix(prefix, ids, "finding")


def _status_of(lake: str, row: dict) -> dict:
    """Workflow status of one finding (new when it never reached an incident)."""
    import polars as pl

    from detector.lake.events import Lake
    from detector.lake.incidents import read_status

    st = read_status(Lake(lake), since=row["window_start"]).filter(
        pl.col("finding_id") == row["finding_id"]
    )
    if st.is_empty():
        return {"status": "new", "status_reason": None, "suppression": None, "incident_id": None}
    # The reason typed with `ack`/`resolve` too: kept in the lake, it was never shown.
    return st.select("status", "status_reason", "suppression", "incident_id").row(0, named=True)


def _set_status(
    finding_id: str, lake: str, status: str, reason: str | None, output: OutputFormat
) -> None:
    from detector.incidents.workflow import set_finding_status
    from detector.lake.events import Lake

    done = set_finding_status(Lake(lake).require_existing(), finding_id, status, reason)
    if output == OutputFormat.json:
        emit_json({"finding_id": done["finding_id"], "status": status})
    else:
        stdout.line(f"finding {done['finding_id']}: {status}")


_IdArg = Annotated[str, typer.Argument(help="Finding id or a unique prefix of it (4+ chars).")]
_ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why (kept in the lake).")]


@findings_app.command("ack")
def ack(
    finding_id: _IdArg,
    lake: LakeOpt = "./lake",
    reason: _ReasonOpt = None,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Acknowledge a finding (OCSF status In Progress).

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect findings ack 3f9c0a --lake ./lake --reason "checking with the team"
    """
    _set_status(finding_id, lake, "acknowledged", reason, output)


@findings_app.command("resolve")
def resolve(
    finding_id: _IdArg,
    lake: LakeOpt = "./lake",
    reason: _ReasonOpt = None,
    benign: Annotated[
        bool,
        typer.Option(
            "--benign",
            help="It was expected: the nightly retrain may learn its windows as normal "
            "(alerts not judged benign stay out of the baseline).",
        ),
    ] = False,
    output: FormatOpt = OutputFormat.table,
) -> None:
    """Resolve a finding; its incident resolves once all its findings are resolved.

    Exit codes: 0 done, 2 bad arguments or unknown id, 3 storage failure.

    Example:

    \b
        detect findings resolve 3f9c0a --lake ./lake --benign --reason "migration job"
    """
    if benign:
        reason = f"benign: {reason}" if reason else "benign"
    _set_status(finding_id, lake, "resolved", reason, output)


def finding_identity(row: dict, events) -> dict:  # type: ignore[no-untyped-def]
    """Who it was (both ARN forms, account, access keys) and where to look next.

    The CloudTrail lookup spans the window plus an hour each side: the same credentials are
    usually used against AWS APIs around the Kubernetes requests, not only inside them.
    """
    import os
    from datetime import timedelta

    from detector.events.identity import identity_summary

    keys = events["access_key_id"].drop_nulls().unique(maintain_order=True).to_list()
    return identity_summary(
        row["principal"],
        keys,
        start=row["window_start"] - timedelta(hours=1),
        end=row["window_end"] + timedelta(hours=1),
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    )


def render_identity(identity: dict) -> None:
    """The identity lines of `findings show`: readable name, full ARNs, keys, next steps."""
    if identity["kind"] == "other":
        return
    out = stdout
    out.line(f"identity {identity['display']}  account {identity['account']}")
    for label, key in (("  stored as", "principal"), ("  STS ARN  ", "sts_arn")):
        if identity.get(key):
            out.line(f"{label} {identity[key]}")
    if identity["access_key_ids"]:
        out.line(f"  access key(s) {', '.join(identity['access_key_ids'])}")
    for link in identity["links"]:
        out.line(f"  {link['label']}:")
        out.line(f"    {link['target']}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(findings_app, name="findings")
