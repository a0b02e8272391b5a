"""The simulation driver: labels up front, events one UTC hour at a time.

Why: a multi-day simulation must not hold all events in memory. :class:`Simulation` plans
the attacks first (so labels are known before any event is written), then runs benign
traffic hour by hour, merges the attack events in and hands each hour out sorted by
``stageTimestamp``, carrying over only requests that complete in a later hour.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from detector.simulate.actors import ACCOUNT_ID, HOUR_US, REGION, US
from detector.simulate.attacks import SCENARIOS, AttackScenarios
from detector.simulate.benign import BenignTraffic
from detector.simulate.factory import EventFactory
from detector.simulate.world import World
from detector.sources import formats

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def default_end() -> datetime:
    """Now in UTC, rounded down to the minute (the demo simulates "two days ending now")."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


def to_us(moment: datetime) -> int:
    """Epoch microseconds of an aware datetime (exact: no float rounding)."""
    if moment.tzinfo is None:
        raise ValueError(f"datetime must be timezone-aware (UTC), got naive {moment!r}")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * US + delta.microseconds


def iso_us(at_us: int) -> str:
    """Epoch microseconds as the RFC 3339 form ``labels.json`` uses."""
    return datetime.fromtimestamp(at_us / US, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class EventBatch:
    """One hour of events in ``stageTimestamp`` order.

    ``streams[i]`` is the index (into :attr:`Simulation.log_streams`) of the API-server
    instance that logged ``events[i]``: EKS writes one CloudWatch log stream per instance.
    """

    hour: datetime
    events: list[dict[str, Any]]
    times_us: list[int]
    streams: list[int]

    def lines(self) -> list[bytes]:
        """Each event as compact JSON (no trailing newline), as the API server writes it."""
        dumps = orjson.dumps
        return [dumps(e) for e in self.events]


class Simulation:
    """A configured simulation: labels up front, events on demand (each call starts afresh)."""

    def __init__(
        self,
        *,
        start: datetime,
        end: datetime,
        rate: float,
        seed: int,
        cluster: str,
        scenarios: Iterable[str] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        for name, value in (("start", start), ("end", end)):
            if value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
        self.start = start.astimezone(UTC)
        self.end = end.astimezone(UTC)
        self.start_us = to_us(self.start)
        self.end_us = to_us(self.end)
        if self.end_us <= self.start_us:
            raise ValueError(f"end ({end}) must be after start ({start})")
        self.rate = float(rate)
        self.seed = int(seed)
        self.cluster = cluster
        names = list(SCENARIOS) if scenarios is None else list(scenarios)
        unknown = sorted(set(names) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
        self._ss = np.random.SeedSequence(self.seed).spawn(2)
        self.world = World(self.seed, cluster, self.start_us, self.end_us)
        self.log_streams: list[str] = list(self.world.streams)
        factory = EventFactory(
            self.world,
            np.random.default_rng(self._ss[0]),
            random.Random(f"attacks:{self.seed}"),
        )
        attacks = AttackScenarios(self.world, factory, self.start_us, self.end_us)
        if names:
            attacks.run(names)
        self._attack_events = sorted(factory.buf, key=_first)
        #: One dict per injected scenario (see the docstring of :mod:`detector.simulate`).
        self.labels: list[dict[str, Any]] = attacks.labels

    def labels_document(self) -> dict[str, Any]:
        """The ``labels.json`` document: the run's parameters and the scenarios."""
        return {
            "seed": self.seed,
            "start": iso_us(self.start_us),
            "end": iso_us(self.end_us),
            "cluster": self.cluster,
            "rate": self.rate,
            "account": ACCOUNT_ID,
            "region": REGION,
            "log_group": formats.eks_log_group(self.cluster),
            "log_streams": self.log_streams,
            "scenarios": self.labels,
        }

    def iter_batches(self) -> Iterator[EventBatch]:
        """Yield the traffic one UTC hour at a time (the first and last may be partial).

        Memory stays bounded by one hour of events plus the long-running requests (watches,
        exec sessions) whose ``ResponseComplete`` falls in a later hour.
        """
        factory = EventFactory(
            self.world,
            np.random.default_rng(self._ss[1]),
            random.Random(f"benign:{self.seed}"),
        )
        benign = BenignTraffic(self.world, factory, self.rate)
        carry: list[tuple[int, dict[str, Any], int]] = []
        attacks = self._attack_events
        ai = 0
        t0 = self.start_us
        while t0 < self.end_us:
            t1 = min((t0 // HOUR_US + 1) * HOUR_US, self.end_us)
            factory.buf = carry
            benign.run(t0, t1)
            while ai < len(attacks) and attacks[ai][0] < t1:
                factory.buf.append(attacks[ai])
                ai += 1
            buf = factory.buf
            buf.sort(key=_first)
            cut = bisect(buf, t1 - 1, key=_first)
            out, carry = buf[:cut], buf[cut:]
            if t1 == self.end_us:
                carry = []  # requests still running at the end are cut off, as in a real log
            yield EventBatch(
                hour=datetime.fromtimestamp(t0 // HOUR_US * 3600, UTC),
                events=[e for _, e, _ in out],
                times_us=[ts for ts, _, _ in out],
                streams=[s for _, _, s in out],
            )
            t0 = t1

    def iter_events(self) -> Iterator[dict[str, Any]]:
        """Yield Event dicts in ``stageTimestamp`` order. Treat them as read-only: nested
        objects are shared between events."""
        for batch in self.iter_batches():
            yield from batch.events

    def iter_lines(self) -> Iterator[bytes]:
        """Yield each event as one compact JSON line (without the newline)."""
        for batch in self.iter_batches():
            yield from batch.lines()


def _first(item: tuple[int, Any, Any]) -> int:
    return item[0]


def simulate(
    *,
    start: datetime,
    end: datetime,
    rate: float = 2.0,
    seed: int = 0,
    cluster: str = "demo",
    scenarios: Iterable[str] | None = None,
) -> Simulation:
    """Configure a simulation of ``[start, end)`` at ``rate`` events per second on average.

    ``scenarios`` selects attack scenarios by name (default: all of :data:`SCENARIOS`;
    ``()`` for benign traffic only). Scenarios land in the last 24 hours of ranges of 36
    hours or more, else in the later three quarters of the range; the range must then be at
    least an hour long. Nothing is generated until events are iterated.
    """
    return Simulation(
        start=start, end=end, rate=rate, seed=seed, cluster=cluster, scenarios=scenarios
    )
