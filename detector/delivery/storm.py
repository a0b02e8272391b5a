"""Alert storms: at most ``max_alerts_per_hour`` alerts one by one per sink, then a digest.

Why: one principal's noise is already held back (an update waits out ``throttle``), but a
storm comes from many principals at once: a broken deployment's 403s across 500 service
accounts, a botnet probing from 5,000 addresses, an analyst resolving a thousand incidents
in one go. Each is an incident of its own, and a channel of hundreds of alerts an hour is
read by nobody: the floods users of Elastic's and Falco's rules describe.

Past a sink's hourly budget, the alerts due are folded into one *digest*: an alert shaped
like an incident (so every sink's payload carries it) that counts them by severity and
names the worst, with the command that lists them all. The most severe alerts take the
budget first. At most one digest goes to a sink per its ``throttle``; until the next may
go, the alerts past the budget wait, pending, as a throttled update does. Once the digest
is delivered its alerts are recorded as delivered at their versions: the digest was their
delivery, and nothing is lost or sent twice.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from detector.delivery.config import SinkConfig
from detector.delivery.payloads import Alert
from detector.delivery.records import DeliveryState
from detector.incidents.group import Incident
from detector.incidents.status import NEW
from detector.lake.findings_schema import SEVERITIES

HOUR = timedelta(hours=1)
#: ``Incident.key_kind`` of a digest, and its ``detector`` in the timeline of what it folds.
DIGEST = "digest"


def split(
    due: list[Alert], cfg: SinkConfig, state: DeliveryState, now: datetime
) -> tuple[list[Alert], list[Alert]]:
    """``due`` as (sent one by one, past the budget): the most severe first take what is
    left of the sink's hour. Both keep ``due``'s order."""
    limit = cfg.max_alerts_per_hour
    room = max(0, limit - state.sent_since(cfg.name, now - HOUR)) if limit else len(due)
    if len(due) <= room:
        return due, []
    ranked = sorted(
        range(len(due)),
        key=lambda i: (-due[i].incident.severity_rank, due[i].incident.first_seen, i),
    )
    keep = set(ranked[:room])
    return (
        [a for i, a in enumerate(due) if i in keep],
        [a for i, a in enumerate(due) if i not in keep],
    )


def digest_due(cfg: SinkConfig, state: DeliveryState, now: datetime) -> bool:
    """Whether a digest may go to the sink now: none in its last ``throttle``."""
    last = state.digest_at(cfg.name)
    return last is None or (now - last).total_seconds() >= cfg.throttle


def digest(folded: list[Alert], cfg: SinkConfig) -> Alert:
    """One alert standing for ``folded`` (see the module's docstring).

    Its id is derived from what it folds, so a run killed after sending it and run again
    sends the same digest with the same idempotency key.
    """
    incidents = [a.incident for a in folded]
    worst = max(incidents, key=lambda i: i.severity_rank)
    counts = Counter(i.severity for i in incidents)
    by_severity = ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s])
    clusters = sorted({i.cluster for i in incidents})
    principals = {i.principal or i.key for i in incidents}
    where = clusters[0] if len(clusters) == 1 else ""
    lake = folded[0].lake
    key = "|".join(sorted(a.key for a in folded))
    title = (
        f"Alert storm: {len(folded)} alerts in one ({by_severity}) from {len(principals)} "
        f"principal(s), past {cfg.max_alerts_per_hour} an hour; "
        f"`detect incidents --lake {lake}` lists them"
    )
    timeline: list[dict[str, Any]] = [
        {
            "time": i.last_seen,
            "finding_id": i.incident_id,
            "detector": f"incident v{i.version}",
            "severity": i.severity,
            "severity_rank": i.severity_rank,
            "title": i.title,
            "tactic": i.tactics[-1] if i.tactics else None,
            "technique": None,
            "suppression": None,
        }
        for i in incidents
    ]
    summary = Incident(
        incident_id=hashlib.sha256(f"digest|{cfg.name}|{key}".encode()).hexdigest()[:20],
        cluster=where,
        key_kind=DIGEST,
        key=DIGEST,
        principal=None,
        principal_kind=None,
        first_seen=min(i.first_seen for i in incidents),
        last_seen=max(i.last_seen for i in incidents),
        version=1,
        severity=worst.severity,
        severity_rank=worst.severity_rank,
        base_severity=worst.severity,
        severity_reason=(
            f"the worst of {len(folded)} alerts folded into one: incident "
            f"{worst.incident_id} ({worst.severity})"
        ),
        title=title,
        tactics=sorted({t for i in incidents for t in i.tactics}),
        techniques=sorted({t for i in incidents for t in i.techniques}),
        detectors=sorted({d for i in incidents for d in i.detectors}),
        finding_ids=[i.incident_id for i in incidents],
        source_ips=sorted({ip for i in incidents for ip in i.source_ips}),
        namespaces=sorted({n for i in incidents for n in i.namespaces}),
        status=NEW,
        timeline=timeline,
    )
    return replace(folded[0], incident=summary, kind=DIGEST, folded=tuple(folded))
