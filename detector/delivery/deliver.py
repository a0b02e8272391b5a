"""Decide what each sink must hear and send it: the one call batch and stream share.

``deliver(incidents, sinks, state)`` is pure with respect to the lake: it returns the new
state and the dead letters (to file), and saves the state only through the ``checkpoint``
it is given. ``detect score`` calls it once per run (:func:`detector.delivery.run.send`),
``detect watch`` per batch (:mod:`detector.delivery.stream`), both with the lake's
delivery records.

Per sink and incident:

- never delivered and at or above the sink's minimum severity (``info`` never): sent as
  ``new``;
- delivered at an older version: sent as ``update`` of the same alert (same id), unless
  the same principal had an update on this sink less than ``throttle`` ago and the
  severity did not rise, in which case it waits (``throttled``) and a later run sends the
  latest version: nothing is lost, the channel just is not flooded;
- a resolved incident is sent once more as an ``update`` (status resolved) to the sinks
  that were sent it before, so they can close it; suppressed incidents, and resolved ones a
  sink never heard of, are not sent.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from detector.delivery import storm
from detector.delivery.payloads import DIGEST, Alert, shortened
from detector.delivery.records import DeliveryState
from detector.delivery.sinks import Outcome, Sink
from detector.incidents.group import Incident
from detector.incidents.status import CLOSED, DELIVERED
from detector.lake.findings_schema import SEVERITIES

log = logging.getLogger(__name__)


#: A sink that failed is tried again after this long, doubled at each failure in a row, at
#: most :data:`DOWN_AT_MOST` (wall-clock time: a replay's stream clock runs faster).
DOWN_FOR = 30.0
DOWN_AT_MOST = 1800.0


@dataclass
class SinkHealth:
    """Whether a sink is taking alerts, kept across the deliveries of one process.

    One failed alert (after its retries) marks the sink down, unless the receiver answered
    and refused that alert alone (:class:`~detector.delivery.sinks.Rejected`: the sink is
    up, and the alert is sent again shortened). Down, its other alerts wait,
    pending, instead of each costing ``timeout`` x attempts while every other sink's alerts
    of the batch wait for this one, and instead of a dead letter per alert per minute of an
    outage. Once the wait is over, one alert is tried without retries (a probe); it going
    through brings the sink back. Waiting alerts are neither sent nor dead-lettered: the
    next delivery after the sink is back sends them.
    """

    failures: int = 0
    retry_at: float = 0.0  # time.monotonic()

    def down(self) -> bool:
        return self.failures > 0 and time.monotonic() < self.retry_at

    def probing(self) -> bool:
        return self.failures > 0

    def failed(self, asked: float = 0.0) -> None:
        """One more failure in a row; ``asked``: the wait the receiver asked for
        (``Retry-After``), kept when longer than the doubling wait, both at most
        :data:`DOWN_AT_MOST` (a receiver cannot park a sink for a year)."""
        self.failures += 1
        wait = min(max(DOWN_FOR * 2 ** (self.failures - 1), asked), DOWN_AT_MOST)
        self.retry_at = time.monotonic() + wait

    def ok(self) -> None:
        self.failures, self.retry_at = 0, 0.0


@dataclass
class DeliveryReport:
    state: DeliveryState
    sent: list[dict[str, Any]] = field(default_factory=list)  # incident_id, version, sink, kind
    throttled: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    #: Due alerts not tried because their sink is down (:class:`SinkHealth`): still
    #: pending, and filed with the dead letters so a later run finds them whatever their age.
    waiting: list[dict[str, Any]] = field(default_factory=list)
    #: Nothing was tried: another run held the delivery lock past the wait.
    busy: bool = False
    #: Alerts held back, as dead letters to file: updates waiting out the throttle and
    #: alerts past a sink's hourly budget held for its next digest (:mod:`.storm`), owed
    #: to later runs whatever their age (a run looks back a day otherwise). Not failures.
    owed: list[dict[str, Any]] = field(default_factory=list)
    #: How many of the throttled alerts are held for a digest.
    held: int = 0
    #: Alerts a receiver refused, shortened too, waiting to be tried again: owed.
    refused: list[dict[str, Any]] = field(default_factory=list)
    #: When the first sink with alerts held for a digest may send it: ``detect watch``
    #: then checks what is owed, so that digest carries every alert held.
    next_digest: datetime | None = None

    def summary(self) -> dict[str, Any]:
        per_sink: dict[str, int] = {}
        for s in self.sent:
            per_sink[s["sink"]] = per_sink.get(s["sink"], 0) + 1
        return {
            "sent": len(self.sent),
            "new": sum(1 for s in self.sent if s["kind"] == "new"),
            "updates": sum(1 for s in self.sent if s["kind"] == "update"),
            "digests": sum(1 for s in self.sent if s["kind"] == DIGEST),
            "folded": sum(s.get("folded", 0) for s in self.sent),
            "throttled": len(self.throttled),
            "held": self.held,  # of those, past a sink's hourly budget (.storm)
            "failed": len(self.dead_letters),
            "waiting": len(self.waiting),
            "refused": len(self.refused),
            "per_sink": per_sink,
        }


@dataclass
class Plan:
    """What one sink is due (:func:`plan`)."""

    due: list[Alert] = field(default_factory=list)
    #: updates waiting out the per-principal throttle, owed once it ends
    throttled: list[Alert] = field(default_factory=list)
    #: alerts past the sink's hourly budget, owed to its next digest (:mod:`.storm`)
    past: list[Alert] = field(default_factory=list)
    #: alerts a receiver refused, shortened too, waiting to be tried again
    refused: list[Alert] = field(default_factory=list)


def plan(
    incidents: Iterable[Incident],
    sink: Sink,
    state: DeliveryState,
    now: datetime,
    lake: str,
    wall: datetime | None = None,
) -> Plan:
    """The alerts ``sink`` must receive now, those held back by the throttle (an update of a
    principal updated within it, or an alert past the sink's hourly budget while its last
    digest is recent), and of those the alerts past the budget (:mod:`.storm`), which
    are owed: filed like alerts waiting for a sink that is down, so a later run sends
    them in the next digest whatever their age; and the alerts a receiver refused, shortened
    too, that wait to be tried again (:meth:`DeliveryState.refuse`). ``wall``: see
    :func:`deliver`."""
    wall = wall or now
    cfg = sink.cfg
    out = Plan()
    due = out.due
    for inc in sorted(incidents, key=lambda i: (i.first_seen, i.incident_id)):
        if state.refused_until(inc.incident_id, inc.version, cfg.name, wall):
            out.refused.append(Alert(inc, "new", lake))  # owed, tried again later
            continue
        rec = state.delivered(inc.incident_id, cfg.name)
        if inc.status in CLOSED:
            # Closing (resolved, or suppressed after it was sent) is news only where the
            # opening was: never throttled, never first. Suppressed, it was left open in
            # Security Hub and OCSF stores (found by review). Once: a suppressed incident
            # that takes in more suppressed findings sent "Incident suppressed" again (review).
            if rec is not None and rec["version"] < inc.version and not rec.get("closed"):
                due.append(Alert(inc, "update", lake))
            continue
        if inc.status not in DELIVERED:
            continue
        if not cfg.accepts(inc.severity_rank, inc.detectors, inc.cluster, inc.namespaces):
            continue
        if rec is None:
            due.append(Alert(inc, "new", lake))
            continue
        if rec["version"] >= inc.version:
            continue
        alert = Alert(inc, "update", lake)
        raised = SEVERITIES.index(inc.severity) > SEVERITIES.index(rec["severity"])
        last = state.last_update_at(cfg.name, alert.who, wall)
        if not raised and last is not None and (wall - last).total_seconds() < cfg.throttle:
            out.throttled.append(alert)
            continue
        due.append(alert)
    state.clamp(cfg.name, wall)
    out.due, past, later = storm.split(due, cfg, state, wall)
    if past and storm.digest_due(cfg, state, wall):
        out.due.append(storm.digest(past, cfg, now))
        past = []
    out.past = past + later
    return out


#: Least time between two saves of the delivery records while sinks are sending.
CHECKPOINT_EVERY = 1.0


def deliver(
    incidents: Iterable[Incident],
    sinks: list[Sink],
    state: DeliveryState,
    *,
    now: datetime | None = None,
    lake: str = "./lake",
    checkpoint: Callable[[DeliveryState], None] | None = None,
    health: dict[str, SinkHealth] | None = None,
    wall: datetime | None = None,
) -> DeliveryReport:
    """Send what is due to every sink; returns a new state (the input is not changed).

    Sinks are served side by side, a thread each, so a slow or failing sink delays no
    other. Each gets its alerts ``sink.chunk`` at a time; what a chunk delivered is
    recorded at once and ``checkpoint`` (the caller's save) is called at most every
    :data:`CHECKPOINT_EVERY` seconds and after the last chunk, so a run killed part way
    re-sends only what it sent in its last second. A sink that raises (a bug, a library
    error nobody expected) fails its own alerts into dead letters, naming the error's
    type only (its text may quote a URL's secret). A ``checkpoint`` that raises (the
    fence of a ``detect watch`` leader that was replaced) stops every sink before its
    next chunk, and its error reaches the caller.

    ``health``: each sink's :class:`SinkHealth` by name, kept by a caller that delivers
    again and again (``detect watch``); without it a sink that fails is down for the rest
    of this call only.

    ``wall``: the wall-clock time, for what counts in real time (a sink's alerts of the
    hour, its last digest, a refused alert's wait), when ``now`` is another clock: a
    watch's is its stream's, which a catch-up or a replay runs far ahead of or behind
    the wall (a replay ahead of it held every live digest for most of a day). Default
    ``now``.
    """
    now = now or datetime.now(UTC)
    wall = wall or now
    incidents = list(incidents)
    kept = health is not None  # a caller that delivers again (watch) retries on a clock
    health = {} if health is None else health
    report = DeliveryReport(state=state.copy())
    plans = []
    for sink in sinks:
        planned = plan(incidents, sink, report.state, now, lake, wall)
        due = planned.due
        report.throttled += [_ref(a, sink) for a in planned.throttled + planned.past]
        report.refused += [_ref(a, sink) for a in planned.refused]
        report.owed += [_owed(a, sink, now, THROTTLED) for a in planned.throttled]
        report.held += len(planned.past)
        if planned.past:
            report.owed += [_owed(a, sink, now, HELD) for a in planned.past]
            at = storm.next_digest(sink.cfg, report.state, wall)
            if at is not None and (report.next_digest is None or at < report.next_digest):
                report.next_digest = at
        sink_health = health.setdefault(sink.name, SinkHealth())
        if due and sink_health.down():
            report.waiting += [_waiting(m, sink, now) for a in due for m in _members(a)]
            continue
        if sink_health.probing():
            sink.retries = 0  # a probe: one attempt, not a stall of timeout x retries
        if due:
            plans.append((sink, due))
    if not plans:
        report.state.prune(now)
        return report
    guard = threading.Lock()
    saved = [time.monotonic()]
    outcomes: dict[str, list[Outcome]] = {}
    stopped = threading.Event()  # a checkpoint raised: no sink sends another chunk

    def serve(sink: Sink, due: list[Alert]) -> None:
        done = outcomes.setdefault(sink.name, [])
        sink_health = health[sink.name]
        try:
            for start in range(0, len(due), sink.chunk):
                if stopped.is_set():
                    return
                if sink_health.down():  # the chunk before failed whole: the rest waits
                    with guard:
                        report.waiting += [
                            _waiting(m, sink, now) for a in due[start:] for m in _members(a)
                        ]
                    return
                chunk = _send(sink, due[start : start + sink.chunk])
                if not stopped.is_set():  # a fenced leader sends nothing more
                    chunk = _shortened_where_rejected(sink, chunk)
                if any(o.ok or o.rejected for o in chunk):  # the sink answered: it is up
                    sink_health.ok()
                    sink.retries = sink.cfg.retries
                else:
                    sink_health.failed(max((o.retry_after or 0.0 for o in chunk), default=0.0))
                with guard:
                    done += chunk
                    _record(report.state, sink, chunk, now, wall)
                    if checkpoint is not None and time.monotonic() - saved[0] >= CHECKPOINT_EVERY:
                        try:
                            checkpoint(report.state)
                        except BaseException:
                            stopped.set()
                            raise
                        saved[0] = time.monotonic()
        finally:
            sink.close()

    # Each sink's thread runs in a copy of the caller's context: a checkpoint may depend on
    # it (detect watch's fence, lake.lock).
    with ThreadPoolExecutor(max_workers=len(plans), thread_name_prefix="sink") as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, serve, sink, due) for sink, due in plans
        ]
        for future in futures:
            _wait(future)
    for sink, _ in plans:  # reported in the sinks' order, whichever finished first
        _report(report, sink, outcomes.get(sink.name, []), now)
    for name in dict.fromkeys(w["sink"] for w in report.waiting):
        waiting = sum(w["sink"] == name for w in report.waiting)
        if kept:
            log.warning(
                "sink %s is down: %d alert(s) wait for it; it is tried again in %.0fs",
                name,
                waiting,
                max(0.0, health[name].retry_at - time.monotonic()),
            )
        else:  # a one-shot run (`incidents deliver`, `score`): the next run tries again
            log.warning(
                "sink %s is down: %d alert(s) wait for it; the next delivery run "
                "(`detect incidents deliver`) tries again",
                name,
                waiting,
            )
    report.state.prune(now)
    if checkpoint is not None:
        checkpoint(report.state)
    return report


#: How often the main thread wakes while sinks send: a signal the kernel delivered to a
#: sink's thread (any thread may get it) runs its handler only once the main thread runs.
WAKE_EVERY = 0.25


def _wait(future: Future[None]) -> None:
    """``future.result()``, waking every :data:`WAKE_EVERY`: blocked for good on a sink that
    hangs, the main thread never ran the handler of a second SIGTERM delivered to another
    thread, and ``detect watch`` outlived its grace period."""
    while not wait([future], timeout=WAKE_EVERY).done:
        pass
    future.result()  # what the sink's thread raised (a checkpoint's fence), raised here


def _send(sink: Sink, alerts: list[Alert]) -> list[Outcome]:
    """``sink.send``; whatever it raises fails the chunk instead of the run."""
    try:
        return sink.send(alerts)
    except Exception as exc:
        err = f"sink {sink.name}: {type(exc).__name__}"
        return [Outcome(a, False, 1, err, None) for a in alerts]


def _shortened_where_rejected(sink: Sink, chunk: list[Outcome]) -> list[Outcome]:
    """``chunk``'s outcomes, those of alerts the receiver refused (:class:`Rejected`)
    replaced by the outcome of the alert sent again shortened (:func:`payloads.shortened`),
    all of them in one send.

    The lake holds whatever a request carried, and a receiver's limits are its own: an
    incident whose alert one refuses is still announced there, in a few plain words with
    its id, rather than only filed as a dead letter. Recorded as the alert it stands for
    (same incident, version and idempotency key). Refused again, the outcome stays
    ``rejected``: the alert then waits before it is tried again (:meth:`DeliveryState.refuse`).
    """
    refused = [i for i, o in enumerate(chunk) if o.rejected]
    if not refused:
        return chunk
    shorts = [replace(chunk[i].alert, incident=shortened(chunk[i].alert.incident)) for i in refused]
    out = list(chunk)
    for i, second in zip(refused, _send(sink, shorts), strict=True):
        first = chunk[i]
        alert, attempts = first.alert, first.attempts + second.attempts
        if not second.ok:
            error = f"{first.error}; shortened: {second.error}"
            out[i] = Outcome(alert, False, attempts, error, first.payload, second.rejected)
            continue
        log.warning(
            "sink %s: incident %s v%d: the receiver refused the alert (%s); sent it shortened",
            sink.name,
            alert.incident.incident_id,
            alert.incident.version,
            first.error,
        )
        out[i] = Outcome(alert, True, attempts, None, second.payload)
    return out


def _ref(alert: Alert, sink: Sink) -> dict[str, Any]:
    inc = alert.incident
    return {"incident_id": inc.incident_id, "version": inc.version, "sink": sink.name}


def _members(alert: Alert) -> tuple[Alert, ...]:
    """The alerts ``alert`` delivers: those a digest folded, else itself. Records, dead
    letters and waiting alerts are kept per member: those are what a later run owes."""
    return alert.folded or (alert,)


#: Why an alert is held (a dead letter's ``error``): its sink's budget, or the throttle.
HELD = "held: past sink {name}'s {limit} alerts an hour; it goes in the sink's next digest"
THROTTLED = "held: an update within sink {name}'s throttle for its principal; sent once it ends"


def _owed(alert: Alert, sink: Sink, now: datetime, why: str) -> dict[str, Any]:
    """An alert held back (``why``: :data:`HELD` or :data:`THROTTLED`), as a dead letter:
    a run looks back a day for incidents to deliver, and a throttled update or a digest
    can outlast it (a throttle of days, runs a day apart). See :func:`plan`."""
    error = why.format(name=sink.name, limit=sink.cfg.max_alerts_per_hour)
    return {**_waiting(alert, sink, now), "error": error}


def _waiting(alert: Alert, sink: Sink, now: datetime) -> dict[str, Any]:
    """An alert not tried because its sink is down, as a dead letter: the runs after find
    what is owed by the last day's incidents and by dead letters, so an outage longer than
    a day lost every alert that had only waited."""
    return {
        **_ref(alert, sink),
        "sink_type": sink.cfg.type,
        "kind": alert.kind,
        "idempotency_key": alert.key,
        "attempts": 0,
        "error": f"not tried: sink {sink.name} was down (an alert before it failed)",
        "failed_at": now,
        "payload": None,
    }


def _record(
    state: DeliveryState, sink: Sink, outcomes: list[Outcome], now: datetime, wall: datetime
) -> None:
    """What ``outcomes`` delivered, at ``now``; the storm budget's and a refusal's times at
    ``wall`` (see :func:`deliver`). Alerts of the hour are counted only for a sink with a
    budget: Security Hub takes thousands a run, and counting them kept a growing map in
    every save of the records, rebuilt at each alert."""
    budget = sink.cfg.max_alerts_per_hour > 0
    for o in outcomes:
        digest = o.alert.incident.incident_id if o.alert.folded else None
        if not o.ok:
            if o.rejected and digest:  # the next digest waits its turn, not each member
                state.record_digest(sink.name, wall)
            elif o.rejected:  # refused even shortened: it waits before another try
                inc = o.alert.incident
                state.refuse(inc.incident_id, inc.version, sink.name, wall)
                if budget:  # the receiver got it
                    state.count_sent(sink.name, o.alert.key, wall)
            continue
        if digest:
            state.record_digest(sink.name, wall)
        elif budget:
            state.count_sent(sink.name, o.alert.key, wall)
        for m in _members(o.alert):
            inc = m.incident
            state.record(
                inc.incident_id, inc.version, sink.name, inc.severity, m.who, now,
                digest=digest, updated=wall, closed=inc.status in CLOSED,
            )  # fmt: skip


def _report(report: DeliveryReport, sink: Sink, outcomes: list[Outcome], now: datetime) -> None:
    for o in outcomes:
        inc = o.alert.incident
        if o.ok:
            sent = {
                "incident_id": inc.incident_id,
                "version": inc.version,
                "sink": sink.name,
                "kind": o.alert.kind,
                "severity": inc.severity,
            }
            if o.alert.folded:
                sent["folded"] = len(o.alert.folded)
            report.sent.append(sent)
            continue
        log.warning(
            "sink %s: incident %s v%d not delivered after %d attempt(s): %s",
            sink.name,
            inc.incident_id,
            inc.version,
            o.attempts,
            o.error,
        )
        error = o.error
        if o.alert.folded:
            error = f"folded into digest {inc.incident_id}, which failed: {o.error}"
        for m in _members(o.alert):
            report.dead_letters.append(
                {
                    "incident_id": m.incident.incident_id,
                    "version": m.incident.version,
                    "sink": sink.name,
                    "sink_type": sink.cfg.type,
                    "kind": m.kind,
                    "idempotency_key": m.key,
                    "attempts": o.attempts,
                    "error": error,
                    "failed_at": now,
                    "payload": None if o.alert.folded else o.payload,  # not a copy each
                }
            )
