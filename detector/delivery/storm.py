"""Alert storms: at most ``max_alerts_per_hour`` alerts one by one per sink, then a digest.

Why: one principal's noise is already held back (an update waits out ``throttle``), but a
storm comes from many principals at once: a broken deployment's 403s across 500 service
accounts, a botnet probing from 5,000 addresses, an analyst resolving a thousand incidents
in one go. Each is an incident of its own, and a channel of hundreds of alerts an hour is
read by nobody: the floods users of Elastic's and Falco's rules describe.

Past a sink's hourly budget, the alerts due are folded into one *digest*: an alert shaped
like an incident (so every sink's payload carries it) that counts them and names the worst,
with the command that lists them all. The most severe alerts take the budget first; a
critical one is never folded; the closing of an incident opened in a digest goes in a
digest too (closing is news where the opening was), and closings of incidents opened alone
take what room is left after the open alerts. At most one digest goes to a sink per
:func:`digest_every`; until the next may go, the alerts past the budget wait, filed as owed
(like an alert waiting for a sink that is down), so every later run finds them whatever
their age. Once the digest is delivered its alerts are recorded as delivered at their
versions: the digest was their delivery. The budget and the digests' times run on the wall
clock, whatever clock the caller delivers on (``deliver``'s ``wall``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from detector.delivery.config import SinkConfig
from detector.delivery.payloads import DIGEST, DIGEST_IDS, Alert
from detector.delivery.records import HOURLY, DeliveryState
from detector.incidents.group import Incident
from detector.incidents.status import CLOSED, NEW, RESOLVED
from detector.lake.findings_schema import SEVERITIES

#: The least time between two digests to a sink, whatever its ``throttle`` (0 would send
#: one with every `detect watch` batch).
DIGEST_EVERY_AT_LEAST = timedelta(minutes=15)


def digest_every(cfg: SinkConfig) -> timedelta:
    return max(timedelta(seconds=cfg.throttle), DIGEST_EVERY_AT_LEAST)


def split(
    due: list[Alert], cfg: SinkConfig, state: DeliveryState, now: datetime
) -> tuple[list[Alert], list[Alert], list[Alert]]:
    """``due`` as (sent one by one, past the budget, past what one digest names), each in
    ``due``'s order."""
    limit = cfg.max_alerts_per_hour
    if not limit:
        return due, [], []
    closings, critical, ranked, folded = [], [], [], []
    for i, alert in enumerate(due):
        inc = alert.incident
        rec = state.delivered(inc.incident_id, cfg.name)
        if inc.status in CLOSED:
            # closed where it was opened: in a digest if it was opened in one; else alone
            # while there is room, after every open alert (news before closings)
            (folded if rec is not None and rec.get("opened_in") else closings).append(i)
        elif inc.severity == "critical":
            critical.append(i)
        else:
            ranked.append(i)
    room = max(0, limit - state.sent_since(cfg.name, now - HOURLY) - len(critical))
    ranked.sort(key=lambda i: (-due[i].incident.severity_rank, due[i].incident.first_seen, i))
    ranked += sorted(closings, key=lambda i: (due[i].incident.first_seen, i))
    alone = set(critical) | set(ranked[:room])
    past = folded + ranked[room:]
    # one digest names all it folds (payloads.DIGEST_IDS): the rest wait for the next
    in_digest, later = set(past[:DIGEST_IDS]), set(past[DIGEST_IDS:])
    return (
        [a for i, a in enumerate(due) if i in alone],
        [a for i, a in enumerate(due) if i in in_digest],
        [a for i, a in enumerate(due) if i in later],
    )


def digest_due(cfg: SinkConfig, state: DeliveryState, now: datetime) -> bool:
    """Whether a digest may go to the sink now: none within :func:`digest_every`."""
    at = next_digest(cfg, state, now)
    return at is None or now >= at


def next_digest(cfg: SinkConfig, state: DeliveryState, now: datetime) -> datetime | None:
    """When the sink's next digest may go (None: now); see :meth:`DeliveryState.clamp`."""
    last = state.digest_at(cfg.name)
    return None if last is None else min(last, now) + digest_every(cfg)


def digest(folded: list[Alert], cfg: SinkConfig, now: datetime) -> Alert:
    """One alert standing for ``folded`` (see the module's docstring).

    Its id is derived from what it folds, so a run killed after sending it and run again
    over the same alerts sends the same digest with the same idempotency key.
    """
    incidents = [a.incident for a in folded]
    open_ = [i for i in incidents if i.status not in CLOSED]
    worst = max(open_ or incidents, key=lambda i: i.severity_rank)
    severity = worst.severity if open_ else "low"  # only closings: news, not an alarm
    kinds = Counter(
        i.status if i.status in CLOSED else a.kind for a, i in zip(folded, incidents, strict=True)
    )
    counts = Counter(i.severity for i in open_)
    what = ", ".join(
        f"{kinds[k]} {word}"
        for k, word in (
            ("new", "new"),
            ("update", "updated"),
            ("resolved", "resolved"),
            ("suppressed", "suppressed"),
        )
        if kinds[k]
    )
    by_severity = ", ".join(f"{counts[s]} {s}" for s in reversed(SEVERITIES) if counts[s])
    clusters = sorted({i.cluster for i in incidents})
    principals = {i.principal or i.key for i in incidents}
    title = (
        f"Alert storm: {len(folded)} alerts in one ({what}"
        + (f"; {by_severity}" if by_severity else "")
        + f") from {len(principals)} principal(s), past {cfg.max_alerts_per_hour} an hour"
    )
    timeline: list[dict[str, Any]] = [
        {
            "time": i.last_seen,
            "finding_id": i.incident_id,
            "detector": f"incident v{i.version}" + (f" {i.status}" if i.status in CLOSED else ""),
            "severity": i.severity,
            "severity_rank": i.severity_rank,
            "title": i.title,
            "tactic": i.tactics[-1] if i.tactics else None,
            "technique": None,
            "suppression": None,
        }
        for i in incidents
    ]
    key = "|".join(sorted(a.key for a in folded))
    summary = Incident(
        incident_id=hashlib.sha256(f"digest|{cfg.name}|{key}".encode()).hexdigest()[:20],
        cluster=",".join(clusters),
        key_kind=DIGEST,
        key=DIGEST,
        principal=None,
        principal_kind=None,
        first_seen=min(i.first_seen for i in incidents),
        last_seen=max(i.last_seen for i in incidents),
        version=1,
        severity=severity,
        severity_rank=SEVERITIES.index(severity),
        base_severity=severity,
        severity_reason=(
            f"the worst of {len(folded)} alerts folded into one: incident "
            f"{worst.incident_id} ({worst.severity})"
        ),
        title=title,
        tactics=sorted({t for i in open_ for t in i.tactics}),
        techniques=sorted({t for i in open_ for t in i.techniques}),
        detectors=sorted({d for i in incidents for d in i.detectors}),
        finding_ids=[i.incident_id for i in incidents],
        source_ips=sorted({ip for i in incidents for ip in i.source_ips}),
        namespaces=sorted({n for i in incidents for n in i.namespaces}),
        status=NEW if open_ else RESOLVED,
        created_at=now,
        updated_at=now,
        timeline=timeline,
    )
    return replace(folded[0], incident=summary, kind=DIGEST, folded=tuple(folded))
