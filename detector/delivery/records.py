"""Which alert went where: delivery records (exactly once per incident version and sink),
and dead letters for what could not be delivered.

:class:`DeliveryState` is a plain, JSON-able value kept in ``LAKE/_state/deliveries.json``
(compare-and-swap, like the export checkpoint) by every command that delivers: ``detect
score``, ``detect incidents deliver`` and ``detect watch`` share it, so each incident
version reaches each sink once whichever of them sends it (a run that finds the file
changed under it saves both runs' records, :meth:`DeliveryStore.save_merged`).

Exactly once, and where it cannot be: a record is written after the sink accepted the
alert. A crash between the two re-sends that alert on the next run with the *same*
idempotency key (``<incident_id>:v<version>``), the same falcosidekick ``uuid``, the same
Security Hub finding Id (an in-place update) and, on FIFO SNS topics, the same
deduplication id; Slack and plain SNS cannot deduplicate, so a crash in that instant can
show one message twice there (docs/alerts.md says so).

Dead letters: ``LAKE/dead_letters/date=YYYY-MM-DD/<stamp>-<sink>.parquet`` with the
payload as JSON (no URL, no key), the error and the attempts. The alert stays pending and
is tried again by the next run.
"""

from __future__ import annotations

import fnmatch
import io
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import polars as pl

from detector.lake.events import Lake
from detector.lake.incidents import FileRows, signed_files
from detector.lake.state import CheckpointConflict, StateError, StateObject

log = logging.getLogger(__name__)

STATE_FILE = "deliveries.json"
DEAD_LETTERS_DIR = "dead_letters"
#: Records older than this are dropped from the state: incidents that old are closed.
RETENTION = timedelta(days=30)
#: How long an alert sent one by one counts against its sink's budget.
HOURLY = timedelta(hours=1)
#: How long an alert a receiver refused, shortened too, waits before it is tried again
#: (doubled at each refusal of the same version, at most a day).
REFUSED_WAIT = timedelta(hours=1)
REFUSED_WAIT_AT_MOST = timedelta(days=1)

DEAD_LETTER_COLUMNS: dict[str, pl.DataType] = {
    "incident_id": pl.String(),
    "version": pl.Int64(),
    "sink": pl.String(),
    "sink_type": pl.String(),
    "kind": pl.String(),
    "idempotency_key": pl.String(),
    "attempts": pl.Int64(),
    "error": pl.String(),
    "failed_at": pl.Datetime("us", "UTC"),
    "payload": pl.String(),
}


@dataclass
class DeliveryState:
    """(incident, sink) -> last version delivered; (sink, principal) -> last update time
    (wall clock); per sink, the alerts it was sent one by one in the last hour and its last
    digest (the storm budget, :mod:`detector.delivery.storm`)."""

    sent: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_update: dict[str, str] = field(default_factory=dict)
    #: sink -> {idempotency key: when}: keyed by alert, so two runs' records merge into
    #: one count (a run saves its own records again and again as it sends).
    hourly: dict[str, dict[str, str]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    #: (incident, sink) -> the version a receiver refused even shortened, when, how often
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def _k(*parts: str) -> str:
        return "|".join(parts)

    def delivered(self, incident_id: str, sink: str) -> dict[str, Any] | None:
        return self.sent.get(self._k(incident_id, sink))

    def record(
        self,
        incident_id: str,
        version: int,
        sink: str,
        severity: str,
        who: str,
        at: datetime,
        *,
        digest: str | None = None,
        updated: datetime | None = None,
        closed: bool = False,
    ) -> None:
        """``closed``: this version closed the incident at the sink (resolved or
        suppressed): a later version of a closed incident is no news there.
        ``digest``: the id of the digest that delivered this version (a storm). Where
        the incident was opened (``opened_in``: its first delivery's digest) is kept
        across versions: its closing goes there (:mod:`detector.delivery.storm`).
        ``updated``: when the principal's throttle starts, on the wall clock (default
        ``at``); ``at`` is the caller's clock, a watch's stream clock."""
        key = self._k(incident_id, sink)
        prev = self.sent.get(key)
        opened_in = prev.get("opened_in") if prev is not None else digest
        self.sent[key] = {
            "version": version,
            "severity": severity,
            "at": at.isoformat(),
            "key": f"{incident_id}:v{version}",
            **({"opened_in": opened_in} if opened_in else {}),
            **({"closed": True} if closed else {}),
        }
        # a new alert counts too: its first update waits out the throttle like any other
        self.last_update[self._k(sink, who)] = (updated or at).isoformat()

    def count_sent(self, sink: str, key: str, at: datetime) -> None:
        """An alert sent to ``sink`` one by one at ``at`` (the wall clock): it takes one of
        the sink's hour. The sink's alerts older than that hour are let go here, on the
        same clock (:meth:`prune` runs on the caller's, a watch's stream clock)."""
        cut = (at - HOURLY).isoformat()
        sent = {k: v for k, v in self.hourly.get(sink, {}).items() if v > cut}
        sent[key] = at.isoformat()
        self.hourly[sink] = sent

    def sent_since(self, sink: str, since: datetime) -> int:
        cut = since.isoformat()
        return sum(at > cut for at in self.hourly.get(sink, {}).values())

    def clamp(self, sink: str, wall: datetime) -> None:
        """The sink's storm times no later than ``wall``: a time ahead of the wall (a host
        whose clock runs ahead, a replay before these times were kept on the wall clock)
        counts from now, instead of holding every digest until the wall catches up."""
        now = wall.isoformat()
        if self.digests.get(sink, "") > now:
            self.digests[sink] = now
        sent = self.hourly.get(sink, {})
        for key, at in sent.items():
            if at > now:
                sent[key] = now

    def record_digest(self, sink: str, at: datetime) -> None:
        self.digests[sink] = at.isoformat()

    def digest_at(self, sink: str) -> datetime | None:
        at = self.digests.get(sink)
        return datetime.fromisoformat(at) if at else None

    def refuse(self, incident_id: str, version: int, sink: str, at: datetime) -> None:
        """The receiver refused this version's alert, shortened too. A refusal repeats
        (the same alert gives the same bytes), so it is tried again only after
        :data:`REFUSED_WAIT`, doubled at each refusal up to a day, or at a new version:
        a receiver that refuses every alert (a URL that is not the endpoint it should be)
        is not sent each of them twice a minute for the 30 days a dead letter is owed."""
        key = self._k(incident_id, sink)
        prev = self.refused.get(key)
        times = prev["times"] + 1 if prev and prev["version"] == version else 1
        self.refused[key] = {"version": version, "at": at.isoformat(), "times": times}

    def refused_until(self, incident_id: str, version: int, sink: str, now: datetime) -> bool:
        """Whether this version's alert was refused so recently that it waits."""
        rec = self.refused.get(self._k(incident_id, sink))
        if rec is None or rec["version"] != version:
            return False
        wait = min(REFUSED_WAIT * 2 ** (rec["times"] - 1), REFUSED_WAIT_AT_MOST)
        return now < min(datetime.fromisoformat(rec["at"]), now) + wait

    def last_update_at(self, sink: str, who: str, wall: datetime) -> datetime | None:
        """When the principal's last update went to ``sink``, no later than ``wall``: one
        ahead of it (a host whose clock ran ahead, a replay's stream time kept before the
        throttle ran on the wall clock) counts from now, instead of holding the
        principal's updates until the wall catches up."""
        key = self._k(sink, who)
        at = self.last_update.get(key)
        if not at:
            return None
        last = datetime.fromisoformat(at)
        if last > wall:
            self.last_update[key] = wall.isoformat()
            return wall
        return last

    def prune(self, now: datetime) -> None:
        cut = (now - RETENTION).isoformat()
        self.sent = {k: v for k, v in self.sent.items() if v["at"] >= cut}
        self.last_update = {k: v for k, v in self.last_update.items() if v >= cut}
        # the hour's alerts are let go by count_sent on the wall clock; here only those a
        # sink no longer sent to for the retention (a sink renamed or removed)
        hourly = {
            s: {k: at for k, at in sent.items() if at >= cut} for s, sent in self.hourly.items()
        }
        self.hourly = {s: sent for s, sent in hourly.items() if sent}
        self.digests = {k: v for k, v in self.digests.items() if v >= cut}
        self.refused = {k: v for k, v in self.refused.items() if v["at"] >= cut}

    def copy(self) -> DeliveryState:
        return DeliveryState.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "sent": dict(self.sent),
            "last_update": dict(self.last_update),
            "hourly": {s: dict(sent) for s, sent in self.hourly.items()},
            "digests": dict(self.digests),
            "refused": {k: dict(v) for k, v in self.refused.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DeliveryState:
        """The state as saved; the keys an older version did not write start empty.

        The records of what was sent must be whole (dropping them would send everything
        again): a section of another shape is one line naming it. The storm budget's and
        the refusals' entries only pace sending: one of another shape is let go (logged),
        and the sink's hour or the alert's wait starts over.
        """
        if not data:
            return cls()
        sent, last_update = data.get("sent", {}), data.get("last_update", {})
        if not _map_of(sent, dict) or not _map_of(last_update, str):
            raise StateError(
                "the delivery records (sent, last_update) are not what this version writes; "
                "move _state/deliveries.json aside to start over (every incident is sent again)"
            )
        return cls(
            sent={k: dict(v) for k, v in sent.items()},
            last_update=dict(last_update),
            hourly={s: dict(v) for s, v in _kept(data, "hourly", _instants).items()},
            digests=_kept(data, "digests", lambda v: isinstance(v, str) and _instant(v)),
            refused={k: dict(v) for k, v in _kept(data, "refused", _refusal).items()},
        )


def _map_of(value: Any, kind: type) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, kind) for k, v in value.items()
    )


def _instants(value: Any) -> bool:
    return _map_of(value, str) and all(_instant(t) for t in value.values())


def _refusal(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("version"), int)
        and isinstance(value.get("times"), int)
        and value["times"] >= 1
        and isinstance(value.get("at"), str)
        and _instant(value["at"])
    )


def _instant(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _kept(data: dict[str, Any], key: str, valid: Callable[[Any], bool]) -> dict[str, Any]:
    """``data[key]``'s entries that ``valid`` accepts; the others let go, with a warning."""
    section = data.get(key, {})
    if not isinstance(section, dict):
        log.warning("delivery records: %s is not a map; it starts over", key)
        return {}
    kept = {k: v for k, v in section.items() if isinstance(k, str) and valid(v)}
    if len(kept) < len(section):
        log.warning(
            "delivery records: %d %s entries unreadable, let go", len(section) - len(kept), key
        )
    return kept


class DeliveryStore:
    """The state in ``LAKE/_state/deliveries.json``, written compare-and-swap."""

    def __init__(self, lake: Lake) -> None:
        self.obj = StateObject(lake, STATE_FILE)
        self.etag: str | None = None
        #: what other runs saved, learned from a conflict: every later save keeps it
        self._theirs = DeliveryState()

    def load(self) -> DeliveryState:
        doc = self.obj.read()
        self.etag = doc.etag
        return DeliveryState.from_dict(doc.data)

    def save(self, state: DeliveryState) -> None:
        """Raises CheckpointConflict when another run saved in between (it then re-reads)."""
        self.etag = self.obj.write(state.to_dict(), etag=self.etag)

    def save_merged(self, state: DeliveryState, now: datetime) -> None:
        """Save ``state``; when another run (a ``detect score``, ``detect watch``) saved in
        between, save both runs' records instead, so neither re-sends the other's. What the
        other run saved is kept for this store's later saves too: a caller saving its own
        state again (a delivery checkpointed as it goes) would otherwise write it away.

        Records past :data:`RETENTION` at ``now`` are dropped from what is saved: a run that
        loaded them before another pruned them wrote them back when the two merged."""
        while True:
            merged = merge(self._theirs, state)
            merged.prune(now)
            try:
                self.save(merged)
                return
            except CheckpointConflict:
                self._theirs = merge(self._theirs, self.load())


def merge(a: DeliveryState, b: DeliveryState) -> DeliveryState:
    """Both states' records: per (incident, sink) the later version, per (sink, principal)
    the later update, per sink both runs' alerts of the hour and the later digest."""
    out = a.copy()
    for k, v in b.sent.items():
        if k not in out.sent or out.sent[k]["version"] < v["version"]:
            out.sent[k] = v
    for k, v in b.last_update.items():
        out.last_update[k] = max(v, out.last_update.get(k, v))
    for sink, sent in b.hourly.items():
        mine = out.hourly.setdefault(sink, {})
        for key, at in sent.items():
            mine[key] = max(at, mine.get(key, at))
    for k, v in b.digests.items():
        out.digests[k] = max(v, out.digests.get(k, v))
    for k, v in b.refused.items():
        mine = out.refused.get(k)
        if mine is None or (v["version"], v["times"], v["at"]) > (
            mine["version"],
            mine["times"],
            mine["at"],
        ):
            out.refused[k] = dict(v)
    return out


__all__ = [
    "CheckpointConflict",
    "DeadLetterReader",
    "DeliveryState",
    "DeliveryStore",
    "file_dead_letters",
    "merge",
    "read_dead_letters",
    "write_dead_letters",
]


def write_dead_letters(lake: Lake, rows: list[dict[str, Any]], now: datetime) -> int:
    """File failed deliveries (one file per sink and run)."""
    if not rows:
        return 0
    df = pl.DataFrame(
        [{**r, "payload": orjson.dumps(r.get("payload")).decode()} for r in rows],
        schema=DEAD_LETTER_COLUMNS,
    )
    for (sink,), group in df.group_by("sink", maintain_order=True):
        buf = io.BytesIO()
        group.write_parquet(buf, compression="zstd")
        name = f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{sink}-{uuid.uuid4().hex[:8]}.parquet"
        lake.loc.put_atomic(
            lake.loc.path(DEAD_LETTERS_DIR, f"date={now.astimezone(UTC):%Y-%m-%d}", name),
            buf.getvalue(),
        )
    return df.height


def file_dead_letters(
    lake: Lake,
    failed: list[dict[str, Any]],
    waiting: list[dict[str, Any]],
    now: datetime,
    reader: DeadLetterReader | None = None,
) -> int:
    """File a delivery's failed alerts, and those that waited for a sink down (or for a
    digest) unless one for the same version and sink is filed already: a watch checks
    what is owed every minute, and during an outage each check filed every waiting alert
    again. ``reader``: a caller's own, which reads only the files new since its last call
    (a watch in a storm read 30 days of files at every batch)."""
    if waiting:
        filed = (reader or DeadLetterReader(lake)).read(since=now - RETENTION)
        seen = set(filed.select("incident_id", "version", "sink").iter_rows())
        waiting = [w for w in waiting if (w["incident_id"], w["version"], w["sink"]) not in seen]
    return write_dead_letters(lake, failed + waiting, now)


def read_dead_letters(lake: Lake, *, since: datetime | None = None) -> pl.DataFrame:
    """The dead letters filed on ``since``'s day or after (all when None); a file readers
    cannot use is skipped with a warning, as every lake table's."""
    return DeadLetterReader(lake).read(since=since)


class DeadLetterReader:
    """:func:`read_dead_letters` for a caller that asks again and again (``detect watch``):
    one listing a call (:func:`~detector.lake.incidents.signed_files`), and only files not
    read before (or written again since) are read; the others' rows are kept. A file that
    cannot be read is skipped with a warning and tried again on the next call."""

    def __init__(self, lake: Lake) -> None:
        self.lake = lake
        self._rows = FileRows()
        self._all: pl.DataFrame | None = None
        #: files read over the reader's life (a count for tests and benchmarks)
        self.files_read = 0

    def read(self, *, since: datetime | None = None) -> pl.DataFrame:
        first = f"date={since.astimezone(UTC):%Y-%m-%d}" if since is not None else ""
        root = self.lake.loc.path(DEAD_LETTERS_DIR)
        live = {}
        for path, signature in signed_files(self.lake.loc, root).items():
            parts = path[len(root) :].strip("/").split("/")
            if (
                len(parts) == 2
                and fnmatch.fnmatchcase(parts[0], "date=*")
                and fnmatch.fnmatchcase(parts[1], "*.parquet")
                and parts[0] >= first
            ):
                live[path] = signature
        changed = self._rows.update(live, self._read)
        if changed or self._all is None:
            frames = self._rows.frames()
            self._all = (
                pl.concat(frames, how="diagonal_relaxed")
                if frames
                else pl.DataFrame(schema=DEAD_LETTER_COLUMNS)
            )
        return self._all

    def _read(self, path: str, _signature: tuple) -> pl.DataFrame | None:
        try:
            with self.lake.loc.fs.open(path, "rb") as fh:
                rows = pl.read_parquet(fh)
        except (OSError, pl.exceptions.PolarsError) as exc:
            log.warning("skipped dead letters %s: %s", path, type(exc).__name__)
            return None
        self.files_read += 1
        return rows
