"""Group findings into incidents: one principal (or source IP) within a horizon is one incident.

Why: a stolen token used across two windows, anonymous probing that trips five rules and a
developer's privileged pod that trips four detectors are each *one* thing to an analyst.
Sinks receive incidents, never raw findings, so those cases are one alert each.

How, incrementally so that a batch run and the stream give the same incidents:
findings are taken in time order; a finding joins the open incident with the same key
(cluster plus principal, or plus source IP for anonymous traffic) whose last finding is at
most ``horizon`` before it; otherwise it opens a new incident whose id is derived from its
key and first finding, so re-running over the same findings gives the same ids. A finding
already in an incident is never moved. A resolved incident is closed: new activity of the
same principal opens a new one. When windows are scored again (late events, a rule
changed), an incident's findings there that the new run did not find are withdrawn from
it (:class:`~detector.lake.findings.Rescored`); an incident left with none is resolved,
which its sinks hear.

Severity: the worst alert finding's (suppressed ones left out), raised when the findings
chain ATT&CK tactics, as GuardDuty's attack sequences do: two distinct tactics raise it one
level, three or more make it critical. ``severity_reason`` says which finding set it and,
when detectors disagree about the same activity (a rule says high, the model medium), why
the incident took the worse one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from detector.incidents.status import ACKNOWLEDGED, NEW, RESOLVED, SUPPRESSED
from detector.lake.findings import Rescored
from detector.lake.findings_schema import SEVERITIES
from detector.rules.loader import TACTICS

DEFAULT_HORIZON = timedelta(hours=6)
#: The lowest severity that is an alert; ``info`` findings are records, never delivered.
ALERT_RANK = SEVERITIES.index("low")
ANONYMOUS = frozenset({"system:anonymous", ""})

#: ATT&CK enterprise tactics in kill-chain order: the rules' own list (one spelling).
TACTIC_ORDER = TACTICS


#: Why an incident whose every finding was withdrawn is resolved.
WITHDRAWN = "resolved: its findings were withdrawn when their windows were scored again"


@dataclass
class Incident:
    """One incident; ``version`` grows whenever what a sink shows would change."""

    incident_id: str
    cluster: str
    key_kind: str  # "principal" or "source_ip"
    key: str
    principal: str | None
    principal_kind: str | None
    first_seen: datetime
    last_seen: datetime
    version: int = 0
    severity: str = "info"
    severity_rank: int = 0
    base_severity: str = "info"
    severity_reason: str = ""
    title: str = ""
    tactics: list[str] = field(default_factory=list)
    techniques: list[str] = field(default_factory=list)
    detectors: list[str] = field(default_factory=list)
    finding_ids: list[str] = field(default_factory=list)
    source_ips: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    status: str = NEW
    suppression: str | None = None
    status_reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: one entry per finding: time, finding_id, detector, severity, title, tactic, suppression
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def alert_findings(self) -> list[dict[str, Any]]:
        return [
            t
            for t in self.timeline
            if t["severity_rank"] >= ALERT_RANK and t.get("suppression") is None
        ]

    def to_row(self) -> dict[str, Any]:
        """The incident as plain data, lists and timeline entries copied.

        Not :func:`dataclasses.asdict`: its deep copy of every timeline value took most of
        the incident step of `detect score`; the values are immutable (str, numbers,
        datetimes), so copying the containers gives the same data.
        """
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in row.items():
            if isinstance(value, list):
                row[key] = [_copied(v) for v in value]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Incident:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in row.items() if k in known}
        for k in (
            "tactics",
            "techniques",
            "detectors",
            "finding_ids",
            "source_ips",
            "namespaces",
            "timeline",
        ):
            data[k] = list(data.get(k) or [])
        data["timeline"] = [dict(t) for t in data["timeline"]]
        return cls(**data)


def _copied(value: Any) -> Any:
    """``value`` with its containers copied (what asdict does for plain data)."""
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v) for v in value)
    return value


def incident_id(cluster: str, key_kind: str, key: str, first_finding_id: str) -> str:
    """Stable: the same key and first finding always give the same id (sha256, 20 hex)."""
    text = f"incident|{cluster}|{key_kind}|{key}|{first_finding_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _main_source_ips(events: pl.DataFrame | None) -> dict[str, list[str]]:
    """finding_id -> its source IPs, most requests first."""
    if events is None or events.is_empty() or "source_ip" not in events.columns:
        return {}
    counts = (
        events.filter(pl.col("source_ip").is_not_null())
        .group_by("finding_id", "source_ip")
        .len()
        .sort(["finding_id", "len", "source_ip"], descending=[False, True, False])
        .group_by("finding_id", maintain_order=True)
        .agg(pl.col("source_ip"))
    )
    return dict(zip(counts["finding_id"], counts["source_ip"].to_list(), strict=True))


def _namespaces(events: pl.DataFrame | None) -> dict[str, list[str]]:
    if events is None or events.is_empty() or "namespace" not in events.columns:
        return {}
    ns = (
        events.filter(pl.col("namespace").is_not_null())
        .group_by("finding_id")
        .agg(pl.col("namespace").unique().sort())
    )
    return dict(zip(ns["finding_id"], ns["namespace"].to_list(), strict=True))


def group_key(row: dict[str, Any], ips: list[str]) -> tuple[str, str]:
    """(key_kind, key): the principal, or the source IP for unauthenticated traffic and for
    the findings of rules that count by source IP (``principal`` holds the address there),
    so a spike of denials from an address joins the anonymous probing from it."""
    principal = row.get("principal") or ""
    if row.get("principal_kind") == "source_ip" and principal:
        return "source_ip", principal
    anonymous = row.get("principal_kind") == "anonymous" or principal in ANONYMOUS
    if anonymous and ips:
        return "source_ip", ips[0]
    return "principal", principal or "unknown"


def _raise(rank: int, steps: int) -> int:
    top = len(SEVERITIES) - 1
    if steps >= 3:
        return top
    if steps == 2:
        return min(rank + 1, top)
    return rank


def recompute(inc: Incident) -> None:
    """Severity, title, tactics and status from the timeline (suppressed findings left out).

    An incident every finding of which was withdrawn keeps its last severity and title and
    is resolved (see :class:`~detector.lake.findings.Rescored`).
    """
    inc.timeline.sort(key=lambda t: (t["time"], t["finding_id"]))
    if not inc.timeline:
        inc.tactics, inc.techniques, inc.detectors, inc.finding_ids = [], [], [], []
        inc.severity_reason = f"no finding left, all withdrawn; it was {inc.severity} with them"
        if inc.status != RESOLVED:
            inc.status, inc.status_reason = RESOLVED, WITHDRAWN
        return
    alerts = inc.alert_findings
    counted = alerts or [t for t in inc.timeline if t.get("suppression") is None]
    inc.tactics = []
    for t in sorted(alerts, key=lambda t: t["time"]):
        if t.get("tactic") and t["tactic"] not in inc.tactics:
            inc.tactics.append(t["tactic"])
    inc.techniques = sorted({t["technique"] for t in alerts if t.get("technique")})
    inc.detectors = sorted({t["detector"] for t in inc.timeline})
    inc.finding_ids = [t["finding_id"] for t in inc.timeline]
    if not counted:  # every finding suppressed
        worst = max(inc.timeline, key=lambda t: t["severity_rank"])
        inc.base_severity = inc.severity = worst["severity"]
        inc.severity_rank = worst["severity_rank"]
        names = sorted({t["suppression"] for t in inc.timeline if t.get("suppression")})
        inc.suppression = names[0] if names else None
        if inc.status in (NEW, ACKNOWLEDGED):
            inc.status = SUPPRESSED
        inc.severity_reason = "all findings suppressed"
        inc.title = worst["title"] or ""
        return
    if inc.status == SUPPRESSED:  # a finding no suppression covers: it is news again
        inc.status = NEW
        inc.suppression = None
    worst = max(counted, key=lambda t: (t["severity_rank"], -t["time"].timestamp()))
    base = worst["severity_rank"]
    steps = len(inc.tactics)
    rank = _raise(base, steps) if alerts else base
    inc.base_severity = SEVERITIES[base]
    inc.severity_rank = rank
    inc.severity = SEVERITIES[rank]
    reason = f"worst finding {worst['finding_id']} ({worst['detector']}) is {worst['severity']}"
    if rank > base:
        reason += f"; raised to {inc.severity}: tactics chained {' -> '.join(inc.tactics)}"
    others = {
        t["detector"]: t["severity"]
        for t in counted
        if t["detector"] != worst["detector"] and t["severity_rank"] < base
    }
    if others:
        said = ", ".join(f"{d} said {s}" for d, s in sorted(others.items()))
        reason += f"; {said}: the incident takes the most severe reading of the same activity"
    inc.severity_reason = reason
    inc.title = _title(inc, worst["title"], len(alerts))


def _title(inc: Incident, worst: str, alerts: int) -> str:
    """The worst finding's title, then what else the incident holds: alerts apart from
    records (``info`` or suppressed findings), since a developer's routine execs joining
    an incident are no more alerts ("+82 more finding(s)" read as 82 more alarms)."""
    n = len(inc.timeline)
    if alerts:
        more = [f"{alerts - 1} more alert(s)"] if alerts > 1 else []
        more += [f"{n - alerts} record(s)"] if n > alerts else []
    else:
        more = [f"{n - 1} more record(s)"] if n > 1 else []
    if not more:
        return worst
    who = inc.key if inc.key_kind == "source_ip" else (inc.principal or inc.key)
    return f"{worst} (+{' and '.join(more)} for {who})"


def _content(inc: Incident) -> tuple[Any, ...]:
    """What a sink shows: a change here is a new version."""
    return (
        inc.severity,
        inc.status == SUPPRESSED,
        tuple(t["finding_id"] for t in inc.alert_findings),
    )


def group(
    findings: pl.DataFrame,
    existing: Iterable[Incident],
    *,
    events: pl.DataFrame | None = None,
    suppressed: dict[str, str] | None = None,
    horizon: timedelta = DEFAULT_HORIZON,
    now: datetime | None = None,
    rescored: Sequence[Rescored] = (),
) -> tuple[list[Incident], set[str]]:
    """Add ``findings`` to ``existing`` incidents (or open new ones).

    ``suppressed`` maps finding ids to the suppression that matched them. ``rescored``: the
    spans whose findings ``findings`` replace; what ``existing`` holds there and they lack
    is withdrawn. Returns every incident touched and the ids of those whose version
    changed (what sinks must hear).
    """
    now = now or datetime.now(UTC)
    suppressed = suppressed or {}
    incidents = {i.incident_id: i for i in existing}
    before = {k: _content(v) for k, v in incidents.items()}
    touched = _withdraw(incidents.values(), findings, rescored)
    placed = {fid: i.incident_id for i in incidents.values() for fid in i.finding_ids}
    ips = _main_source_ips(events)
    nss = _namespaces(events)
    open_by_key: dict[tuple[str, str, str], Incident] = {}
    for inc in sorted(incidents.values(), key=lambda i: i.last_seen):
        if inc.status != RESOLVED:
            open_by_key[(inc.cluster, inc.key_kind, inc.key)] = inc
    rows = findings.sort(["window_start", "finding_id"]).iter_rows(named=True)
    for row in rows:
        fid = row["finding_id"]
        sup = suppressed.get(fid)
        if fid in placed:  # re-scored: refresh what may have changed, never move it
            inc = incidents[placed[fid]]
            for t in inc.timeline:
                if t["finding_id"] == fid:
                    t.update(_entry(row, sup))
            touched.add(inc.incident_id)
            continue
        f_ips = ips.get(fid, [])
        kind, key = group_key(row, f_ips)
        cluster = row.get("cluster") or ""
        inc = open_by_key.get((cluster, kind, key))
        if inc is None or row["window_start"] > inc.last_seen + horizon:
            iid = incident_id(cluster, kind, key, fid)
            # The same first finding again: an incident resolved when its findings were
            # withdrawn, found again. Its versions go on, so sinks hear of it again.
            prior = incidents.get(iid)
            inc = Incident(
                incident_id=iid,
                cluster=cluster,
                key_kind=kind,
                key=key,
                principal=row.get("principal"),
                principal_kind=row.get("principal_kind"),
                first_seen=row["window_start"],
                last_seen=row["window_end"],
                version=prior.version if prior else 0,
                created_at=prior.created_at if prior else now,
            )
            incidents[inc.incident_id] = inc
            open_by_key[(cluster, kind, key)] = inc
        inc.timeline.append(_entry(row, sup))
        inc.first_seen = min(inc.first_seen, row["window_start"])
        inc.last_seen = max(inc.last_seen, row["window_end"])
        inc.source_ips = sorted(set(inc.source_ips) | set(f_ips))
        inc.namespaces = sorted(set(inc.namespaces) | set(nss.get(fid, [])))
        placed[fid] = inc.incident_id
        touched.add(inc.incident_id)
    changed: set[str] = set()
    for iid in touched:
        inc = incidents[iid]
        recompute(inc)
        if before.get(iid) != _content(inc):
            inc.version += 1
            inc.updated_at = now
            changed.add(iid)
    return [incidents[i] for i in sorted(touched)], changed


def _withdraw(
    incidents: Iterable[Incident], findings: pl.DataFrame, rescored: Sequence[Rescored]
) -> set[str]:
    """Drop from ``incidents`` the findings a rescored span no longer holds; their ids.

    An incident's times then span the findings left: its first_seen is the first one's
    window start and its last_seen the last one's window end. A timeline entry keeps only
    its window start, so the end is the last entry's start plus the window length the
    incident had (one run scores one window length; every finding has it).
    """
    if not rescored:
        return set()
    found = set(findings["finding_id"].to_list()) if findings.height else set()
    touched = set()
    for inc in incidents:
        kept = [
            t
            for t in inc.timeline
            if t["finding_id"] in found or not any(r.covers(inc.cluster, t) for r in rescored)
        ]
        if len(kept) < len(inc.timeline):
            if kept:  # span what is left (an emptied incident keeps its times, for history)
                length = inc.last_seen - max(t["time"] for t in inc.timeline)
                inc.first_seen = min(t["time"] for t in kept)
                inc.last_seen = max(t["time"] for t in kept) + length
            inc.timeline = kept
            inc.finding_ids = [t["finding_id"] for t in kept]
            touched.add(inc.incident_id)
    return touched


def _entry(row: dict[str, Any], suppression: str | None) -> dict[str, Any]:
    return {
        "time": row["window_start"],
        "finding_id": row["finding_id"],
        "detector": row["detector"],
        "severity": row["severity"],
        "severity_rank": int(row["severity_rank"]),
        "title": row.get("title") or "",
        "tactic": row.get("tactic"),
        "technique": row.get("technique"),
        "suppression": suppression,
    }
