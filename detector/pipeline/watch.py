"""``detect watch``: the long-running loop. Sources -> lake -> a consumer, checkpointed together.

Three sources, one contract: read what is available, make it durable in the lake, hand the
batch to the consumer, then store the stream position *and* the consumer's payload in one
conditional write (a lease-guarded state document in ``LAKE/_state/``):

- :class:`CloudWatchSource` is :class:`detector.pipeline.export.Exporter`, the code of
  ``detect export --follow`` (same checkpoint, lease and lake writes), driven one pass at a
  time with its ``after_write`` hook as the consumer call. Every pass flushes, so a batch
  is detected as soon as it is read.
- :class:`TailSource` follows a local ``audit.log`` across rotation
  (:class:`detector.sources.tail.FileTail`); its position is the checkpoint.
- :class:`ReplaySource` replays an audit log at ``speed`` times real time (0: as fast as it
  goes), the stream clock being the replayed time; its position is that clock.

Why the consumer is injected: detection, incidents and delivery live in layers above the
pipeline (tests/test_architecture.py); the CLI builds the consumer
(:class:`detector.delivery.stream.StreamAlerter`) and passes ``consume`` here.

The loop (:class:`Watcher`) steps each source every ``poll``; a replica that finds the
lease held waits as a standby and takes over when the holder is gone or its lease
expires. A source that fails (CloudWatch or the lake still failing after the retries) is
restarted from its checkpoint after a backoff; the loop goes on. ``stop`` (SIGTERM)
drains: the current step ends, each source flushes what it has read (a tail one more
poll at most, however far behind), hands it to the consumer, checkpoints and releases
its lease; the next run reads on from the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import polars as pl

from detector.errors import DetectError, RuntimeFailure, UsageError
from detector.events.redact import redact_text
from detector.events.schema import CANONICAL_COLUMNS, QUARANTINE_COLUMNS
from detector.lake.events import KEYS_KEPT, Lake
from detector.lake.lock import fenced
from detector.lake.state import CheckpointBusy, Lease, Owner, StateError, StateObject
from detector.pipeline.export import DurableBatch, Exporter, ExportError, ExportOptions, from_ms
from detector.pipeline.ingest import ClusterUnknown, EventBuffer, write_to_lake
from detector.pipeline.watch_metrics import HealthServer, WatchMetrics
from detector.ratelimit import setup_problem
from detector.sources.files import cluster_from_path, expand_inputs, read_batches
from detector.sources.tail import POLL_BYTES, FileTail, TailPosition
from detector.storage import StorageError

log = logging.getLogger(__name__)

#: consume(events durable in the lake, stream clock, payload at the checkpoint) -> new payload
Consume = Callable[[pl.DataFrame, datetime, "dict[str, Any] | None"], "dict[str, Any]"]


class WatchError(RuntimeFailure):
    """The watch cannot start or go on (exit 3)."""


class LakeUnavailable(RuntimeFailure):
    """The lake cannot be read or written now; the loop retries the source later."""


class Busy(Exception):
    """Another replica holds this source's lease: stand by."""


def state_name(kind: str, key: str) -> tuple[str, ...]:
    """``_state`` parts for a local source: readable, unique, never a path outside the lake."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", ".", key)[-60:].strip("._-") or "source"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    return ("watch", kind, f"{slug}-{digest}.json")


def cluster_for(lake: Lake, path: str, given: str | None) -> str:
    """The cluster of a local file's events, as `detect ingest` decides it: ``--cluster``,
    else an ``aws/eks/<name>/`` or ``cluster=<name>/`` part of the path, else the lake's
    only cluster; never a silent default (a usage error says to pass ``--cluster``)."""
    if given:
        return given
    named = cluster_from_path(path)
    if named:
        return named
    clusters = lake.clusters()
    if len(clusters) == 1:
        return clusters[0]
    raise ClusterUnknown(
        f"cannot tell which cluster {redact_text(path)} is from: pass --cluster NAME"
    )


class Source(Protocol):
    name: str
    done: bool

    def start(self) -> None: ...  # raises Busy when another replica leads

    def step(self) -> None: ...

    def finish(self, *, catch_up: bool = True) -> None:
        """Hand over what was read, checkpoint, release the lease.

        ``catch_up``: first read what is already waiting, to its end (``--once``). A stop
        passes False: what is left is read by the next run from the checkpoint, so a
        SIGTERM ends within a step however far behind the source is.
        """
        ...

    def abort(self) -> None: ...  # after a failure: release what can be, read nothing


# --------------------------------------------------------------------------- CloudWatch
class CloudWatchSource:
    """One log group through the export loop; the consumer is its after-write hook."""

    def __init__(
        self,
        lake: Lake,
        options: ExportOptions,
        consume: Consume,
        metrics: WatchMetrics,
        *,
        since: datetime | None = None,
        client: Any = None,
        owner: Owner | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.lake, self.opts, self.consume, self.metrics = lake, options, consume, metrics
        self.name = f"cloudwatch:{options.log_group}"
        self.since = since
        self.client, self.owner, self.clock = client, owner or Owner(), clock
        self.stop = stop or threading.Event()
        self.exporter: Exporter | None = None
        self.done = False

    def _new_exporter(self) -> Exporter:
        return Exporter(
            self.lake,
            self.opts,
            client=self.client,
            owner=self.owner,
            clock=self.clock,
            stop=self.stop,
            after_write=self._after_write,
        )

    def start(self) -> None:
        ex = self._new_exporter()
        try:
            obj = ex.checkpoint()
            data = obj.read().data
            reason = Lease(obj, owner=self.owner, seconds=self.opts.lease_seconds).busy_reason(data)
        except (StateError, StorageError) as exc:  # retried by the loop (exit 3 with --once)
            raise LakeUnavailable(f"lake: {exc}") from None
        if reason is not None:
            raise Busy(reason)
        # --since is where a log group's first run starts; later (a restart, a standby taking
        # over hours after it started) the checkpoint says where to resume, nothing older.
        resume = bool(data and data.get("watermark_ms") is not None)
        try:
            ex.start(since=None if resume else self.since, follow=True)
        except ExportError as exc:
            if "another exporter" in str(exc):  # lost the race for the lease
                raise Busy(str(exc)) from None
            raise
        self.exporter = ex
        self.metrics.leader.labels(source=self.name).set(1)

    def step(self) -> None:
        ex = self.exporter
        assert ex is not None
        ex.run_pass()
        ex.flush()  # the hook runs even without new events: windows close as time passes

    def _after_write(self, batch: DurableBatch) -> dict[str, Any] | None:
        ex = self.exporter
        now_ms = batch.watermark_ms
        if now_ms is None and ex is not None:
            now_ms = ex.pass_end()
        now = from_ms(now_ms if now_ms is not None else int(self.clock() * 1000))
        self.metrics.count_events(batch.stats.written)
        self.metrics.count_quarantine(batch.quarantine)
        self.metrics.lag.labels(source=self.name).set(max(0.0, self.clock() - now.timestamp()))
        lease = ex.lease if ex is not None else None
        with fenced(lease.renew_if_due if lease else None):  # a deposed leader writes nothing
            return self.consume(batch.events, now, batch.payload)

    def finish(self, *, catch_up: bool = True) -> None:
        if self.exporter is not None:
            self.exporter.finish()
            self.metrics.leader.labels(source=self.name).set(0)

    def abort(self) -> None:
        if self.exporter is not None:
            self.exporter._save_what_is_safe()
            self.exporter = None
            self.metrics.leader.labels(source=self.name).set(0)


# --------------------------------------------------------------------------- local files
class _LeasedSource:
    """A local source's checkpoint: position + payload in one lease-guarded document."""

    kind = "local"

    def __init__(
        self,
        lake: Lake,
        key: str,
        consume: Consume,
        metrics: WatchMetrics,
        *,
        lease_seconds: float,
        owner: Owner | None,
        clock: Callable[[], float],
    ) -> None:
        self.lake, self.consume, self.metrics, self.clock = lake, consume, metrics, clock
        self.obj = StateObject(lake, *state_name(self.kind, key))
        self.lease = Lease(self.obj, owner=owner, seconds=lease_seconds, clock=clock)
        self.payload: dict[str, Any] | None = None
        self.previous: dict[str, Any] = {}
        self.done = False

    def start(self) -> None:
        try:
            self.previous = self.lease.acquire(wait=0, fields={"kind": f"watch-{self.kind}"}) or {}
        except CheckpointBusy as exc:
            raise Busy(str(exc)) from None
        payload = self.previous.get("payload")
        self.payload = payload if isinstance(payload, dict) else None
        self.metrics.leader.labels(source=self.name).set(1)

    def _commit(self, events: pl.DataFrame, quarantine: pl.DataFrame, now: datetime, **pos: Any):
        """Lake first, then the consumer, then position + payload in one conditional write."""
        buffer_summary = EventBuffer().summary
        stats = write_to_lake(self.lake, events, quarantine, buffer_summary)
        self.lake.forget_keys_before(now - KEYS_KEPT)
        self.metrics.count_events(stats.written)
        self.metrics.count_quarantine(quarantine)
        with fenced(self.lease.renew_if_due):  # a deposed leader writes nothing (lake.lock)
            payload = self.consume(events, now, self.payload)
        self.lease.update(payload=payload, **pos)
        self.payload = payload

    def finish(self, *, catch_up: bool = True) -> None:
        self._release()

    def _release(self) -> None:
        if self.lease.held:
            self.lease.release()
        self.metrics.leader.labels(source=self.name).set(0)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the lake may have failed: the lease expires
            self._release()


class TailSource(_LeasedSource):
    """A local audit.log an API server appends to (rotation handled by FileTail)."""

    kind = "tail"

    def __init__(
        self,
        lake: Lake,
        path: str,
        consume: Consume,
        metrics: WatchMetrics,
        *,
        cluster: str | None = None,
        lease_seconds: float = 180.0,
        owner: Owner | None = None,
        clock: Callable[[], float] = time.time,
        poll_bytes: int = POLL_BYTES,
    ) -> None:
        super().__init__(
            lake, path, consume, metrics, lease_seconds=lease_seconds, owner=owner, clock=clock
        )
        self.name = f"tail:{path}"
        self.path, self.cluster = path, cluster
        self.poll_bytes = poll_bytes
        self.tail: FileTail | None = None
        #: a step failed after the tail had read on: this object never steps again (a
        #: drain that did checkpointed the failed batch's end with nothing written)
        self.failed = False

    def start(self) -> None:
        self.cluster = cluster_for(self.lake, self.path, self.cluster)
        super().start()
        pos = self.previous.get("position")
        start = TailPosition.from_dict(pos) if pos else None
        self.tail = FileTail(self.path, start, poll_bytes=self.poll_bytes)
        if start is None and (pinned := self.tail.pin()) is not None:
            # The file as found, from its start, stored before the first step (up to 128 MB:
            # seconds): killed during it and rotated before the re-run, the file was never
            # read again (the re-run had no inode to look for).
            self.lease.update(position=pinned.to_dict())

    def step(self) -> None:
        assert self.tail is not None
        if self.failed:  # the tail read past what was written: only the checkpoint knows
            raise WatchError(f"{self.name}: stepped again after a failed step")
        try:
            buffer = EventBuffer(cluster=self.cluster)
            for batch in self.tail.poll():
                buffer.add(batch)
            events, quarantine = buffer.take()
            now = datetime.fromtimestamp(self.clock(), UTC)
            if events.height:
                lag = (now - events["event_time"].max()).total_seconds()
                self.metrics.lag.labels(source=self.name).set(max(0.0, lag))
            pos = self.tail.position
            self._commit(events, quarantine, now, position=pos.to_dict() if pos else None)
        except BaseException:
            self.failed = True
            raise

    def finish(self, *, catch_up: bool = True) -> None:
        if self.tail is not None and self.lease.held and not self.failed:
            self.step()  # what was appended up to now: one poll's worth
            while catch_up and self.tail.behind:
                self.step()
            self.tail.close()
        super().finish()

    def abort(self) -> None:
        if self.tail is not None:
            self.tail.close()
        super().abort()


class ReplaySource(_LeasedSource):
    """An audit log replayed through the same path, the stream clock being its own time.

    ``speed`` is replayed seconds per real second (60: an hour a minute; 0: no pacing).
    After the last event the clock runs on to ``tail`` past it, so every window closes and
    is scored, then the source is done.

    The file is never held in memory: :meth:`start` reads it a block at a time into a
    local staging folder of Parquet files, one folder per event hour (a log need not be
    in time order), and each step reads only the hours it covers, so memory follows a
    step's events, not the file. The folder is removed when the source finishes or fails.
    """

    kind = "replay"
    finite = True  # --once runs it to its end (flat out) rather than one step

    def __init__(
        self,
        lake: Lake,
        path: str,
        consume: Consume,
        metrics: WatchMetrics,
        *,
        speed: float = 60.0,
        poll: float = 5.0,
        cluster: str | None = None,
        tail: timedelta = timedelta(minutes=15),
        step: timedelta | None = None,
        lease_seconds: float = 180.0,
        owner: Owner | None = None,
        clock: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(
            lake, path, consume, metrics, lease_seconds=lease_seconds, owner=owner, clock=clock
        )
        self.name = f"replay:{path}"
        self.path, self.speed, self.poll, self.cluster = path, speed, poll, cluster
        self.tail_ms = int(tail.total_seconds() * 1000)
        default_step = poll * speed if speed > 0 else 60.0
        self.step_ms = int((step.total_seconds() if step else default_step) * 1000)
        self.stop = stop or threading.Event()
        self.staged: _Staged | None = None
        self.at_ms = 0
        self.end_ms = 0
        self._t0: tuple[float, int] | None = None

    def start(self) -> None:
        self.cluster = cluster_for(self.lake, self.path, self.cluster)
        super().start()
        resuming = self.previous.get("position_ms") is not None
        # Bad lines are filed now (the quarantine table deduplicates), unless the run that
        # checkpointed filed them already.
        self.staged = _Staged.read(
            self.path,
            self.cluster,
            None if resuming else self._file,
            on_block=self.lease.renew_if_due,  # a big file takes a while: keep the lease
        )
        if self.staged.first_ms is None:
            self.at_ms = self.end_ms = int(self.clock() * 1000)
        else:
            assert self.staged.last_ms is not None
            self.at_ms = int(self.previous.get("position_ms") or self.staged.first_ms)
            self.end_ms = self.staged.last_ms + 1 + self.tail_ms

    def _file(self, quarantine: pl.DataFrame) -> None:
        self.lake.write_quarantine(quarantine)
        self.metrics.count_quarantine(quarantine)

    def step(self) -> None:
        assert self.staged is not None
        if self.at_ms >= self.end_ms:
            self.done = True
            return
        hi = min(self.end_ms, self.at_ms + self.step_ms)
        if self.speed > 0:
            self._pace(hi)
            if self.stop.is_set():
                return
        part = self.staged.between(self.at_ms, hi)
        now = from_ms(hi)
        self._commit(part, pl.DataFrame(schema=QUARANTINE_COLUMNS), now, position_ms=hi)
        self.at_ms = hi
        self.metrics.lag.labels(source=self.name).set(0)
        self.done = self.at_ms >= self.end_ms

    def _pace(self, hi: int) -> None:
        """Wait until the replayed clock ``hi`` is due in real time (no drift)."""
        if self._t0 is None:
            self._t0 = (time.monotonic(), self.at_ms)
        real0, sim0 = self._t0
        due = real0 + (hi - sim0) / 1000 / self.speed
        left = due - time.monotonic()
        if left > 0:
            self.stop.wait(left)

    def finish(self, *, catch_up: bool = True) -> None:
        try:
            super().finish()
        finally:
            self._unstage()

    def abort(self) -> None:
        try:
            super().abort()
        finally:
            self._unstage()

    def _unstage(self) -> None:
        if self.staged is not None:
            self.staged.remove()
            self.staged = None


_HOUR_MS = 3_600_000
#: Staging folders are ``<temp dir>/detect-replay-<pid>-<random>``.
_STAGING = "detect-replay-"


def _remove_abandoned() -> None:
    """Remove staging folders whose process no longer runs (a replay killed mid-way)."""
    root = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            m = re.fullmatch(re.escape(_STAGING) + r"(\d+)-\w+", entry.name)
            if m is None or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)
            except (PermissionError, OverflowError):
                continue  # alive under another user, or not a process id


#: Quarantine rows held while a replayed file is staged before they are filed.
_QUARANTINE_ROWS = 50_000


@dataclass
class _Staged:
    """A replayed file's events on local disk, one folder per event hour (see ReplaySource)."""

    root: str
    hours: dict[int, list[str]]
    first_ms: int | None
    last_ms: int | None

    @classmethod
    def read(
        cls,
        path: str,
        cluster: str | None,
        file_quarantine: Callable[[pl.DataFrame], None] | None,
        *,
        on_block: Callable[[], object] | None = None,
    ) -> _Staged:
        """Normalize ``path`` a block at a time into a new staging folder.

        ``file_quarantine`` gets the bad lines, a bounded batch at a time (None: dropped);
        ``on_block`` is called after each block. Folders a killed replay left behind (their
        process is gone) are removed first.
        """
        _remove_abandoned()
        staged = cls(tempfile.mkdtemp(prefix=f"{_STAGING}{os.getpid()}-"), {}, None, None)
        held: list[pl.DataFrame] = []
        try:
            buffer = EventBuffer(cluster=cluster)
            for uri in expand_inputs([path]):
                for batch in read_batches(uri):
                    buffer.add(batch)
                    events, quarantine = buffer.take()
                    staged._add(events)
                    if on_block is not None:
                        on_block()
                    if quarantine.height and file_quarantine is not None:
                        held.append(quarantine)
                        if sum(q.height for q in held) >= _QUARANTINE_ROWS:
                            file_quarantine(pl.concat(held))
                            held = []
            if held and file_quarantine is not None:
                file_quarantine(pl.concat(held))
        except BaseException:
            staged.remove()
            raise
        return staged

    def _add(self, events: pl.DataFrame) -> None:
        if events.is_empty():
            return
        ms = events.with_columns(pl.col("event_time").dt.epoch("ms").alias("_ms"))
        lo, hi = ms["_ms"].min(), ms["_ms"].max()
        assert isinstance(lo, int) and isinstance(hi, int)
        self.first_ms = lo if self.first_ms is None else min(self.first_ms, lo)
        self.last_ms = hi if self.last_ms is None else max(self.last_ms, hi)
        hour = (pl.col("_ms") // _HOUR_MS).alias("_hour")
        for (h,), part in ms.with_columns(hour).partition_by("_hour", as_dict=True).items():
            files = self.hours.setdefault(int(h), [])
            folder = os.path.join(self.root, str(h))
            os.makedirs(folder, exist_ok=True)
            name = os.path.join(folder, f"{len(files):06d}.parquet")
            part.drop("_hour").write_parquet(name, compression="lz4", statistics=False)
            files.append(name)

    def between(self, lo_ms: int, hi_ms: int) -> pl.DataFrame:
        """The events with ``lo_ms <= event time < hi_ms``, in time order."""
        files = [
            f
            for h in range(lo_ms // _HOUR_MS, (hi_ms - 1) // _HOUR_MS + 1)
            for f in self.hours.get(h, ())
        ]
        if not files:
            return pl.DataFrame(schema=CANONICAL_COLUMNS)
        ms = pl.col("_ms")
        return (
            pl.scan_parquet(files)
            .filter((ms >= lo_ms) & (ms < hi_ms))
            .sort("_ms", maintain_order=True)
            .drop("_ms")
            .collect()
        )

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- the loop
@dataclass
class WatchOptions:
    poll: float = 5.0
    once: bool = False
    port: int | None = None
    host: str = "0.0.0.0"
    status_every: float = 60.0
    standby_poll: float = 1.0
    max_backoff: float = 60.0


class Watcher:
    """Step every source until stopped; standby, restart-on-failure and drain included."""

    def __init__(
        self,
        factories: list[Callable[[], Source]],
        metrics: WatchMetrics,
        options: WatchOptions,
        *,
        stop: threading.Event | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.factories = factories
        self.metrics = metrics
        self.opts = options
        self.stop = stop or threading.Event()
        self.on_tick = on_tick
        self.server: HealthServer | None = None

    def run(self) -> int:
        """Returns the number of sources that finished (replay ended or --once)."""
        if self.opts.port is not None:
            self.server = HealthServer(
                self.metrics,
                self.opts.port,
                host=self.opts.host,
                stale_after=max(120.0, 3 * self.opts.poll),
            ).start()
            log.info("health and metrics on port %d", self.server.port)
        slots: list[dict[str, Any]] = [
            {"make": f, "src": None, "retry_at": 0.0, "backoff": 1.0, "standby": False}
            for f in self.factories
        ]
        last_status = time.monotonic()
        finished = 0
        try:
            while not self.stop.is_set():
                round_started = time.monotonic()
                self.metrics.beat()
                if self.on_tick is not None:
                    self.on_tick()
                busy_wait = False
                for slot in slots:
                    if slot.get("finished"):
                        continue
                    if not self._step(slot):
                        busy_wait = True
                    elif slot["src"] is not None and (
                        slot["src"].done
                        or (self.opts.once and not getattr(slot["src"], "finite", False))
                    ):
                        self._finish(slot)
                        slot["finished"], slot["src"] = True, None
                        finished += 1
                self.metrics.ready = all(
                    s.get("finished") or (s["src"] is not None and not s["standby"]) for s in slots
                )
                if all(s.get("finished") for s in slots):
                    break
                if time.monotonic() - last_status >= self.opts.status_every:
                    log.info("%s", self.metrics.status_line())
                    last_status = time.monotonic()
                # the poll interval runs from the start of this round, not its end
                wait = self.opts.standby_poll if busy_wait else self.opts.poll
                if not any(_replaying(s) for s in slots):
                    self.stop.wait(max(0.0, wait - (time.monotonic() - round_started)))
        finally:
            self._drain(slots)
            if self.server is not None:
                self.server.stop()
        return finished

    def _step(self, slot: dict[str, Any]) -> bool:
        """One step of one source; False while it waits (standby or backoff)."""
        now = time.monotonic()
        if now < slot["retry_at"]:
            return False
        made: Any = None
        try:
            if slot["src"] is None:
                src = made = slot["make"]()
                try:
                    src.start()
                except Busy as exc:
                    if self.opts.once:
                        raise WatchError(str(exc)) from None
                    self.metrics.leader.labels(source=src.name).set(0)  # 0, not absent
                    self.metrics.standing_by.add(src.name)
                    if not slot["standby"]:
                        log.info("standing by: %s", exc)
                    slot["standby"] = True
                    return False
                if slot["standby"]:
                    log.warning("%s: took over as leader", src.name)
                self.metrics.standing_by.discard(src.name)
                slot["src"], slot["standby"] = src, False
            slot["src"].step()
            # Only a step that went through resets the wait: a source that starts and then
            # fails (a lake out of space, S3 down) was retried every second, not 1, 2, 4...
            slot["backoff"], slot["stepped"] = 1.0, True
            return True
        except (UsageError, WatchError):
            _abandon(slot, made)
            raise
        except Exception as exc:  # any failure: restart from the checkpoint
            src = slot["src"] or made
            name = src.name if src is not None else "source"
            if (problem := setup_problem(exc)) is not None and not slot.get("stepped"):
                # No AWS region or credentials anywhere before a first step: configuration
                # (exit 2, as `detect export` says it), not an outage; it was retried for
                # ever. Once a source has run, a credential refresh failing is retried.
                _abandon(slot, made)
                raise UsageError(f"{name}: {problem}") from None
            if getattr(src, "finite", False) and isinstance(exc, DetectError):
                _abandon(slot, made)
                raise  # a replay's file missing or unreadable: retrying cannot help
            self.metrics.source_errors.labels(source=name).inc()
            if self.opts.once:  # a run that must finish: the error is its result
                _abandon(slot, made)
                if isinstance(exc, DetectError):
                    raise
                raise WatchError(f"{name}: {type(exc).__name__}: {exc}"[:400]) from None
            log.warning(
                "%s failed (%s: %s); restarting from its checkpoint in %.0fs",
                name,
                type(exc).__name__,
                str(exc)[:300],
                slot["backoff"],
            )
            if src is not None:
                src.abort()
            slot["src"] = None
            slot["retry_at"] = now + slot["backoff"]
            slot["backoff"] = min(self.opts.max_backoff, slot["backoff"] * 2)
            return False

    def _finish(self, slot: dict[str, Any]) -> None:
        """A source's last steps (a `--once` run catching up, a replay's end). One that
        fails is abandoned at its checkpoint, as a failed step is (:func:`_abandon`): the
        drain that follows stepped it on from the failed read and lost that batch."""
        src = slot["src"]
        try:
            src.finish()
        except (UsageError, WatchError, DetectError):
            _abandon(slot, None)
            raise
        except Exception as exc:
            _abandon(slot, None)
            self.metrics.source_errors.labels(source=src.name).inc()
            raise WatchError(f"{src.name}: {type(exc).__name__}: {exc}"[:400]) from None

    def _drain(self, slots: list[dict[str, Any]]) -> None:
        """Stop: flush, hand what is due to the consumer, checkpoint, release."""
        for slot in slots:
            src = slot["src"]
            if src is None:
                continue
            try:
                src.finish(catch_up=False)  # the next run reads on from the checkpoint
            except Exception as exc:  # the others still drain
                log.warning("%s: could not drain cleanly: %s", src.name, exc)
                src.abort()
            slot["src"] = None


def _abandon(slot: dict[str, Any], made: Any) -> None:
    """A source whose step failed, left as its checkpoint says: aborted, never finished.
    Finishing it (the drain at the end of a run) stepped once more from where the failed
    step had read to, and checkpointed that position with nothing written: a `--once` run
    whose lake ran out of space lost the lines of its failed batch (found by a soak)."""
    src = slot["src"] or made
    slot["src"] = None
    if src is not None:
        with contextlib.suppress(Exception):  # the failure that got here is the one to report
            src.abort()


def _replaying(slot: dict[str, Any]) -> bool:
    """A replay paces itself (or runs flat out), and a tail with more to read than one
    step takes is catching up: the loop does not wait between their steps."""
    src = slot["src"]
    if slot.get("finished"):
        return False
    return isinstance(src, ReplaySource) or (
        isinstance(src, TailSource) and src.tail is not None and src.tail.behind
    )


__all__ = [
    "CloudWatchSource",
    "Consume",
    "ReplaySource",
    "TailSource",
    "WatchError",
    "WatchOptions",
    "Watcher",
]
