"""The incident workflow over the lake: fold new findings in, and set statuses by id prefix.

``update`` is what ``detect score`` (and ``detect watch``, per batch) calls after findings are
written: apply suppressions, group into incidents, file incidents and finding statuses.
It returns the incidents whose version changed: exactly what delivery must send.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from detector.incidents import suppress
from detector.incidents.group import DEFAULT_HORIZON, Incident, group
from detector.incidents.status import (
    ACKNOWLEDGED,
    NEW,
    RESOLVED,
    STATUSES,
    SUPPRESSED,
    UnknownId,
    resolve_prefix,
)
from detector.lake import incidents as table
from detector.lake.events import Lake
from detector.lake.findings import Rescored, list_findings

log = logging.getLogger(__name__)


@dataclass
class UpdateResult:
    incidents: list[Incident] = field(default_factory=list)  # every incident touched
    changed: list[Incident] = field(default_factory=list)  # new version: to deliver
    suppressed_findings: int = 0


def update(
    lake: Lake | None,
    findings: pl.DataFrame,
    events: pl.DataFrame | None = None,
    *,
    suppressions: list[suppress.Suppression] | None = None,
    horizon: timedelta = DEFAULT_HORIZON,
    now: datetime | None = None,
    existing: list[Incident] | None = None,
    rescored: Sequence[Rescored] = (),
) -> UpdateResult:
    """Group ``findings`` into incidents; with a lake, read open ones and write the result.

    ``existing`` replaces the lake read (for evaluation, which writes nothing).
    ``rescored``: the spans ``findings`` were scored over, each replacing what the lake
    held there (see :class:`~detector.lake.findings.Rescored`); given, a run that found
    nothing still withdraws what incidents held there.
    """
    now = now or datetime.now(UTC)
    result = UpdateResult()
    if findings.is_empty() and not rescored:
        return result
    sup = suppress.apply(findings, events, suppressions or [], now)
    hits = {f: s for f, s in sup.iter_rows() if s is not None}
    result.suppressed_findings = len(hits)
    if existing is None and lake is not None:
        starts = [r.start for r in rescored]
        if findings.height:
            starts.append(findings["window_start"].min())
        old = table.recent_incidents(lake, min(starts), horizon)
        existing = [Incident.from_row(r) for r in old.iter_rows(named=True)]
    filed_under = {i.incident_id: i.first_seen.astimezone(UTC).date() for i in existing or []}
    touched, changed = group(
        findings,
        existing or [],
        events=events,
        suppressed=hits,
        horizon=horizon,
        now=now,
        rescored=rescored,
    )
    result.incidents = touched
    result.changed = [i for i in touched if i.incident_id in changed]
    if lake is not None:
        table.write_incidents(lake, [i.to_row() for i in touched], moved_from=filed_under)
        statuses = []
        prior = _prior_status(lake, findings)
        for inc in touched:
            for t in inc.timeline:
                own = prior.get(t["finding_id"], NEW)
                status = SUPPRESSED if t.get("suppression") else (own if own != SUPPRESSED else NEW)
                statuses.append(
                    {
                        "finding_id": t["finding_id"],
                        "window_start": t["time"],
                        "incident_id": inc.incident_id,
                        "status": status,
                        "suppression": t.get("suppression"),
                        "status_reason": (
                            f"suppressed by {t['suppression']}" if t.get("suppression") else None
                        ),
                        "updated_at": now,
                    }
                )
        table.write_status(lake, statuses)
    return result


def _prior_status(lake: Lake, findings: pl.DataFrame) -> dict[str, str]:
    if findings.is_empty():
        return {}
    since = findings["window_start"].min()
    st = table.read_status(lake, since=since)
    st = st.filter(pl.col("finding_id").is_in(findings["finding_id"].implode()))
    return dict(zip(st["finding_id"], st["status"], strict=True))


# ---------------------------------------------------------------------------- by id
def find_incident(lake: Lake, prefix: str) -> Incident:
    df = table.read_incidents(lake)
    iid = resolve_prefix(prefix, df["incident_id"].to_list(), "incident")
    return Incident.from_row(df.filter(pl.col("incident_id") == iid).row(0, named=True))


def apply_status(inc: Incident, status: str, reason: str | None, now: datetime) -> None:
    """Set ``inc``'s status. Resolving (or reopening) is a new version: sinks that were
    told about the incident are told it was closed (Security Hub archives its finding,
    Slack and webhooks get an update saying so) by the next delivery, which picks up
    incidents updated in the last day (``detect score``, ``watch``, ``incidents deliver``).
    Acknowledging changes nothing a sink shows, so it is not a new version."""
    if (status == RESOLVED) != (inc.status == RESOLVED):
        inc.version += 1
    inc.status, inc.status_reason, inc.updated_at = status, reason, now


def set_incident_status(
    lake: Lake, prefix: str, status: str, reason: str | None = None, now: datetime | None = None
) -> Incident:
    """Acknowledge, resolve or reopen an incident (and its findings that are not suppressed)."""
    if status not in STATUSES or status == SUPPRESSED:
        raise UnknownId(f"status must be new, acknowledged or resolved, not {status!r}")
    now = now or datetime.now(UTC)
    inc = find_incident(lake, prefix)
    if inc.status == RESOLVED and status == ACKNOWLEDGED:
        # Closed incidents are not worked on: a mistyped id, or one to reopen first.
        raise UnknownId(
            f"incident {inc.incident_id} is resolved: `detect incidents reopen "
            f"{inc.incident_id[:8]}` first to work on it again"
        )
    apply_status(inc, status, reason, now)
    table.write_incidents(lake, [inc.to_row()])
    rows = [
        {
            "finding_id": t["finding_id"],
            "window_start": t["time"],
            "incident_id": inc.incident_id,
            "status": status,
            "suppression": None,
            "status_reason": reason,
            "updated_at": now,
        }
        for t in inc.timeline
        if not t.get("suppression")
    ]
    table.write_status(lake, rows)
    return inc


def set_finding_status(
    lake: Lake, prefix: str, status: str, reason: str | None = None, now: datetime | None = None
) -> dict:
    """Acknowledge or resolve one finding; its incident resolves when all its findings do."""
    if status not in STATUSES or status == SUPPRESSED:
        raise UnknownId(f"status must be new, acknowledged or resolved, not {status!r}")
    now = now or datetime.now(UTC)
    findings = list_findings(lake, min_severity="info")
    fid = resolve_prefix(prefix, findings["finding_id"].to_list(), "finding")
    row = findings.filter(pl.col("finding_id") == fid).row(0, named=True)
    st = table.read_status(lake, since=row["window_start"])
    prev = st.filter(pl.col("finding_id") == fid)
    incident_id = prev["incident_id"][0] if prev.height else None
    if prev.height and prev["status"][0] == SUPPRESSED:
        log.warning(
            "finding %s is suppressed by %s; its status is set anyway", fid, prev["suppression"][0]
        )
    if incident_id and status != RESOLVED and find_incident(lake, incident_id).status == RESOLVED:
        # As for the incident itself: worked on again only once reopened (the incident
        # stayed resolved holding an acknowledged finding; found by review).
        raise UnknownId(
            f"finding {fid} belongs to incident {incident_id}, which is resolved: "
            f"`detect incidents reopen {incident_id[:8]}` first to work on it again"
        )
    table.write_status(
        lake,
        [
            {
                "finding_id": fid,
                "window_start": row["window_start"],
                "incident_id": incident_id,
                "status": status,
                "suppression": None,
                "status_reason": reason,
                "updated_at": now,
            }
        ],
    )
    if incident_id and status == RESOLVED:
        inc = find_incident(lake, incident_id)
        # The findings it holds now: a withdrawn one keeps its old row naming the incident
        # (the status comes back with the finding if its window finds it again).
        st = table.read_status(lake, since=inc.first_seen).filter(
            pl.col("finding_id").is_in(inc.finding_ids)
        )
        held = len(inc.finding_ids)
        if held and st.height == held and st["status"].is_in([RESOLVED, SUPPRESSED]).all():
            apply_status(inc, RESOLVED, reason, now)
            table.write_incidents(lake, [inc.to_row()])
    return {"finding_id": fid, "status": status, "incident_id": incident_id}


def findings_with_status(lake: Lake, findings: pl.DataFrame) -> pl.DataFrame:
    """``findings`` plus status, suppression and incident_id (new when never grouped)."""
    if findings.is_empty():
        return findings.with_columns(
            pl.lit(None, pl.String).alias(c) for c in ("status", "suppression", "incident_id")
        )
    st = table.read_status(lake, since=findings["window_start"].min()).select(
        "finding_id", "status", "suppression", "incident_id"
    )
    return findings.join(st, on="finding_id", how="left").with_columns(
        pl.col("status").fill_null(NEW)
    )
