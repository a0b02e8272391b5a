"""The stream's consumer: findings of each durable batch -> incidents -> sinks, exactly once.

``detect watch`` hands every batch that is durable in the lake to :meth:`StreamAlerter.consume`
(through the export loop's after-write hook, or the tail/replay loop). It returns the new
checkpoint payload, the stream detector's open windows, which the caller stores with the
stream position in one conditional write: after a SIGKILL the batches after the checkpoint
are processed again. What reached which sink is kept apart, in the lake's delivery records
(``_state/deliveries.json``), the ones ``detect score`` and ``detect incidents deliver``
keep: a watch Deployment and an hourly scoring job send each incident version once between
them, and an alert recorded as sent is never sent again, whoever processes its batch again.
One sent but not yet recorded (a kill in that second) is sent again with the same
idempotency key (``<incident_id>:v<version>``, docs/alerts.md).

Why this lives in ``delivery`` and not in ``pipeline``: it needs the detectors, the incident
workflow and the sinks, all above the pipeline layer; the pipeline's watch loop receives it
as a plain callable (dependency injection) and stays below them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from detector.delivery import sinks as sink_mod
from detector.delivery.config import SecretMissing, SinkConfig
from detector.delivery.deliver import DeliveryReport, SinkHealth, deliver
from detector.delivery.records import DeliveryState, DeliveryStore, file_dead_letters, merge
from detector.delivery.run import DELIVERY_WAIT, PendingIncidents, _build
from detector.detect.stream import StreamDetector, StreamState
from detector.errors import RuntimeFailure
from detector.incidents import suppress, workflow
from detector.incidents.group import DEFAULT_HORIZON
from detector.lake.events import Lake
from detector.lake.lock import check_fence, delivery_lock
from detector.pipeline.watch_metrics import WatchMetrics

log = logging.getLogger(__name__)

#: How often (stream clock) incidents not in a batch are re-checked for deliveries that
#: are due (throttled updates, a sink that was down).
PENDING_EVERY = timedelta(minutes=1)


@dataclass
class ConsumeResult:
    findings: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0
    model_windows: int = 0
    late_windows: int = 0  # closed windows scored again because late events arrived


class StreamAlerter:
    """Detect, group and deliver one batch; state in and out as the checkpoint payload."""

    def __init__(
        self,
        lake: Lake,
        detector: StreamDetector,
        sink_configs: list[SinkConfig],
        *,
        suppressions: list[suppress.Suppression] | None = None,
        horizon: timedelta = DEFAULT_HORIZON,
        metrics: WatchMetrics | None = None,
        sink_kw: dict[str, Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``clock``: the wall clock (the stream's is each batch's ``now``): what counts
        in real time, as a sink's alerts of the hour, runs on it."""
        self.lake = lake
        self.detector = detector
        self.sink_configs = [c for c in sink_configs if c.enabled]
        self.suppressions = suppressions or []
        self.horizon = horizon
        self.metrics = metrics
        self.sink_kw = sink_kw or {}
        self.clock = clock
        self._pending_at: datetime | None = None
        # what is pending, re-read only where the lake changed (a call a minute for months)
        self._pending = PendingIncidents(lake)
        self._health: dict[str, SinkHealth] = {}  # a sink that fails waits, across batches
        # when a sink's next digest may go (wall clock): that batch checks what is owed,
        # so the digest carries every alert held for it, not only the batch's own
        self._digest_at: datetime | None = None
        self.last: ConsumeResult = ConsumeResult()

    def consume(
        self, events: pl.DataFrame, now: datetime, payload: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Findings due for this batch, incidents, deliveries; returns the new payload."""
        payload = payload or {}
        state = StreamState.from_dict(payload.get("detect"))
        # Checkpoints written before the delivery records moved to the lake hold them here.
        earlier = DeliveryState.from_dict(payload.get("delivery"))
        started = time.monotonic()
        found = self.detector.process(events, now, state)
        out = ConsumeResult(
            findings=found.findings.height,
            model_windows=found.model_windows,
            late_windows=found.late_windows,
        )
        candidates = {}
        if found.findings.height or found.rescored:
            res = workflow.update(
                self.lake,
                found.findings,
                found.events,
                suppressions=self.suppressions,
                horizon=self.horizon,
                now=now,
                rescored=found.rescored,
            )
            candidates = {i.incident_id: i for i in res.incidents}
            if self.metrics is not None:
                self.metrics.count_findings(found.findings)
        digest_due = self._digest_at is not None and self.clock() >= self._digest_at
        checked = bool(self.sink_configs) and (
            self._pending_at is None or now - self._pending_at >= PENDING_EVERY or digest_due
        )
        if checked:
            self._pending_at = now
            for inc in self._pending(now):
                candidates.setdefault(inc.incident_id, inc)
        if candidates and self.sink_configs:
            report = self._deliver(list(candidates.values()), earlier, now, checked)
            out.sent, out.failed = report.sent, len(report.dead_letters)
        elif earlier.sent:
            DeliveryStore(self.lake).save_merged(earlier, now)  # moved to the lake once
        self.last = out
        if self.metrics is not None:
            self.metrics.batch_seconds.observe(time.monotonic() - started)
        return {"detect": state.to_dict()}

    def _sink(self, cfg: SinkConfig) -> sink_mod.Sink:
        """The sink for ``cfg``, or, when it cannot start now (what the start checked
        succeeded then), a stand-in whose alerts fail and wait as in an outage."""
        try:
            return _build(cfg, dict(self.sink_kw))
        except (RuntimeFailure, SecretMissing) as exc:
            # A secret file read at start and gone now (rotated, a Vault agent rewriting
            # it) stopped every sink and the stream, as an STS outage did (found by review)
            log.warning("%s: its alerts wait for it", exc)
            return sink_mod.Unstarted(cfg, str(exc), **self.sink_kw)

    def _deliver(
        self, incidents: list, earlier: DeliveryState, now: datetime, checked: bool
    ) -> DeliveryReport:
        """Deliver ``incidents`` (``checked``: with everything owed, the minute's check)."""
        built = [self._sink(c) for c in self.sink_configs]
        store = DeliveryStore(self.lake)
        with delivery_lock(self.lake, wait=DELIVERY_WAIT) as held:
            if not held:  # another run delivers; what it leaves, a later batch's check finds
                log.warning(
                    "another run has been delivering alerts from %s for over %.0fs: this "
                    "batch's alerts wait for the next check",
                    self.lake.uri,
                    DELIVERY_WAIT,
                )
                if earlier.sent:
                    store.save_merged(earlier, now)
                return DeliveryReport(state=DeliveryState())
            state = merge(store.load(), earlier)  # read under the lock: the other run's too

            def checkpoint(sent: DeliveryState) -> None:
                store.save_merged(sent, now)  # what was sent is recorded, deposed or not
                check_fence()  # then a deposed leader stops (lake.lock)

            check_fence()
            report = deliver(
                incidents,
                built,
                state,
                now=now,
                lake=self.lake.uri,
                checkpoint=checkpoint,
                health=self._health,
                wall=self.clock(),
            )
            # Alerts held for a digest are filed at the check only: each batch between
            # holds its own again, and a file a batch (every few seconds) is no record.
            owed = report.owed if checked else []
            reader = self._pending.dead_letters
            file_dead_letters(self.lake, report.dead_letters, report.waiting + owed, now, reader)
            if report.next_digest is not None:
                self._digest_at = report.next_digest
            elif checked:  # everything owed was planned and nothing is held any more
                self._digest_at = None
        if self.metrics is not None:
            if checked:  # everything owed was planned: the whole count
                self.metrics.alerts_held.set(report.held)
            for s in report.sent:  # a digest counts once, at the worst severity it folds
                self.metrics.alerts_sent.labels(severity=s["severity"], sink=s["sink"]).inc()
            for d in report.dead_letters:
                self.metrics.delivery_failures.labels(sink=d["sink"]).inc()
        for s in report.sent:
            log.info(
                "alert %s v%d sent to %s (%s)", s["incident_id"], s["version"], s["sink"], s["kind"]
            )
        return report


__all__ = ["StreamAlerter"]
