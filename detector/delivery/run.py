"""After findings are written: incidents, suppressions, delivery, records. One call.

``detect score`` calls :func:`process` with the findings it just wrote; ``detect watch``
uses the same pieces per batch (``incidents.workflow.update`` then
``delivery.deliver.deliver`` with its own checkpointed state).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from detector.delivery import sinks as sink_mod
from detector.delivery.config import SinkConfig
from detector.delivery.deliver import DeliveryReport, deliver
from detector.delivery.records import (
    RETENTION,
    DeadLetterReader,
    DeliveryState,
    DeliveryStore,
    file_dead_letters,
)
from detector.errors import DetectError, RuntimeFailure
from detector.incidents import suppress, workflow
from detector.incidents.group import DEFAULT_HORIZON, Incident
from detector.lake import incidents as table
from detector.lake.events import Lake
from detector.lake.findings import Rescored
from detector.lake.lock import delivery_lock

log = logging.getLogger(__name__)

#: A suppressions file found here is used when none is given (kept in git with detect.toml).
DEFAULT_SUPPRESSIONS = "suppressions.yaml"
#: Incidents updated this recently are re-checked for pending deliveries (a sink that was
#: down on the last run gets them now).
PENDING_LOOKBACK = timedelta(days=1)
#: How long a delivery waits for another run's to finish (a score's or a watch batch's
#: takes seconds; a sink down costs its timeout x attempts, once).
DELIVERY_WAIT = 120.0


@dataclass
class AlertSummary:
    incidents: int = 0
    changed: int = 0
    suppressed_findings: int = 0
    delivery: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "incidents": self.incidents,
            "changed": self.changed,
            "suppressed_findings": self.suppressed_findings,
            "delivery": self.delivery,
        }


def suppressions_for(path: str | None) -> list[suppress.Suppression]:
    if path:
        return suppress.load(path)
    if Path(DEFAULT_SUPPRESSIONS).is_file():
        return suppress.load(DEFAULT_SUPPRESSIONS)
    return []


def pending(lake: Lake, now: datetime) -> list[Incident]:
    """Incidents a sink may still be owed something of: updated in the last
    :data:`PENDING_LOOKBACK` (a new finding, a resolve), whatever day they began, and
    those with a dead letter (an outage longer than the lookback); both within the
    delivery records' :data:`RETENTION`, before which what a sink was sent is not known.

    Incidents began up to RETENTION ago are read: a resolve of a twelve-day-old incident
    (a retro-hunt's) was never sent, since only the last nine days were, and a sink down
    for more than a day was never sent its dead letters.

    A caller that asks every minute keeps a :class:`PendingIncidents` instead: the same
    answer, reading only what changed since its last call.
    """
    return PendingIncidents(lake)(now)


class PendingIncidents:
    """:func:`pending`, asked again and again (``detect watch``, every minute).

    Reads the incidents and dead letters of the whole :data:`RETENTION` on its first call,
    then, on each call, lists both tables (one request each on S3 up to 1,000 files) and
    reads only the files written since its last call, by this process or any other (a
    ``detect score`` cron beside the watch, ``detect incidents deliver``, an ``ack``). The
    answer is always what :func:`pending` would give at that moment; a restarted process
    starts with a full read.
    """

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self.incidents = table.IncidentsReader(lake)
        self.dead_letters = DeadLetterReader(lake)

    @property
    def files_read(self) -> int:
        """Incident and dead-letter files read so far."""
        return self.incidents.files_read + self.dead_letters.files_read

    def __call__(self, now: datetime) -> list[Incident]:
        df = self.incidents.read(since=now - RETENTION - table.MAX_INCIDENT_SPAN)
        failed = self.dead_letters.read(since=now - RETENTION)["incident_id"].unique()
        df = df.filter(
            (pl.col("updated_at") >= now - PENDING_LOOKBACK)
            | pl.col("incident_id").is_in(failed.implode())
        ).sort(["severity_rank", "last_seen"], descending=[True, True])
        return [Incident.from_row(r) for r in df.iter_rows(named=True)]


def send(
    lake: Lake,
    incidents: list[Incident],
    sink_configs: list[SinkConfig],
    *,
    now: datetime | None = None,
    sleep: Any = None,
) -> DeliveryReport:
    """Deliver ``incidents`` with the lake's delivery state; save state and dead letters."""
    now = now or datetime.now(UTC)
    kw = {"sleep": sleep} if sleep is not None else {}
    built = [_build(c, kw, start=True) for c in sink_configs if c.enabled]
    with delivery_lock(lake, wait=DELIVERY_WAIT) as held:
        if not held:
            log.warning(
                "another run has been delivering alerts from %s for over %.0fs: it sends "
                "what is owed, and what it leaves the next delivery run sends",
                lake.uri,
                DELIVERY_WAIT,
            )
            return DeliveryReport(state=DeliveryState(), busy=True)
        store = DeliveryStore(lake)  # read under the lock: what the other run sent, too
        report = deliver(
            incidents,
            built,
            store.load(),
            now=now,
            lake=lake.uri,
            checkpoint=functools.partial(store.save_merged, now=now),
        )
        file_dead_letters(lake, report.dead_letters, report.waiting + report.owed, now)
    return report


def check_sinks(sink_configs: Sequence[SinkConfig]) -> None:
    """Build each enabled sink once and drop it: what only the environment tells (a URL
    variable unset, no AWS region) is an error before a run scores and writes, not after."""
    for cfg in sink_configs:
        if cfg.enabled:
            _build(cfg, {}, start=True)


def _build(cfg: SinkConfig, kw: dict[str, Any], *, start: bool = False) -> sink_mod.Sink:
    """A sink, or one line saying which could not start (no credentials, no region...).

    ``start``: also ask AWS what the sink needs before its first send (Security Hub's
    account), so a one-shot run stops at start; `detect watch` leaves that to the send,
    where an outage is the sink's own (see :meth:`~detector.delivery.sinks.Sink.start`).
    """
    try:
        sink = sink_mod.build(cfg, **kw)
        if start:
            sink.start()
        return sink
    except DetectError:
        raise
    except Exception as exc:  # botocore's NoCredentialsError, NoRegionError, ClientError...
        raise RuntimeFailure(
            f"sink {cfg.name!r} ({cfg.type}) cannot start: {type(exc).__name__}: {exc}"[:300]
        ) from None


def process(
    lake: Lake,
    findings: pl.DataFrame,
    events: pl.DataFrame | None,
    *,
    sink_configs: list[SinkConfig] | None = None,
    suppressions: list[suppress.Suppression] | None = None,
    horizon: timedelta = DEFAULT_HORIZON,
    now: datetime | None = None,
    deliver_alerts: bool = True,
    rescored: Sequence[Rescored] = (),
) -> AlertSummary:
    """Group new findings into incidents (suppressions first), then deliver what is due.

    ``rescored``: the spans the findings replaced (their incidents lose what is gone).
    """
    now = now or datetime.now(UTC)
    res = workflow.update(
        lake,
        findings,
        events,
        suppressions=suppressions,
        horizon=horizon,
        now=now,
        rescored=rescored,
    )
    summary = AlertSummary(
        incidents=len(res.incidents),
        changed=len(res.changed),
        suppressed_findings=res.suppressed_findings,
    )
    if deliver_alerts and sink_configs:
        candidates = {i.incident_id: i for i in pending(lake, now)}
        candidates.update({i.incident_id: i for i in res.incidents})
        report = send(lake, list(candidates.values()), sink_configs, now=now)
        summary.delivery = report.summary()
    return summary
