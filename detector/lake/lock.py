"""The lake's writer lock: one writer at a time adds files, locally and on S3.

Deduplication reads the keys already in a partition and writes only new rows; two writers
doing that at once both see the other's rows as absent and both store them (two
``detect ingest`` runs once stored 39,473 duplicate rows). So every write into the lake's
tables (a flush of events and quarantine, a compaction of one partition) happens while
holding ``LAKE/_state/locks/writer.json``, a :class:`~detector.lake.state.Lease`:

- taking it is a conditional write (S3 ``IfNoneMatch``/``IfMatch``, locally an ``flock``d
  compare-and-swap), so two processes can never both hold it;
- it expires (:data:`LEASE_SECONDS`), so a writer killed with ``kill -9`` on another host
  blocks the lake for at most that long; one on this host is recognised as dead at once;
- it is held per flush, not per run: a long ``export --follow`` and a nightly ``ingest``
  interleave their flushes instead of one waiting for the other to finish.

Within one process, threads share one owner identity and a threading lock.

**Fencing.** ``detect watch`` writes findings and incidents for a source it leads by
lease. A leader that stalls past its lease (CPU throttled, a slow store) is
replaced, and when it wakes its writes would land after the new leader's, older data over
newer. :func:`fenced` names a check (renew the source's lease, failing if it was taken)
that every outermost :func:`writer_lock` of the body runs once it holds the lock: a
deposed leader fails there and writes nothing, and one that passes keeps its lease while
it writes, so a successor's writes, which need this lock too, come after its own. Alert
delivery runs the same check (:func:`check_fence`) before it sends and after each
checkpoint of what it sent: a deposed leader sends nothing more, and what it did send is
recorded first, so its successor does not send it again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from detector.errors import RuntimeFailure
from detector.lake.state import (
    CheckpointBusy,
    CheckpointConflict,
    Lease,
    Owner,
    StateError,
    StateObject,
)

if TYPE_CHECKING:
    from detector.lake.events import Lake

LOCK_PARTS = ("locks", "writer.json")
LEASE_SECONDS = 120.0
#: How long a writer waits for the lock: longer than a lease, so a crashed holder's runs out.
WAIT_SECONDS = 2 * LEASE_SECONDS + 30

_OWNER = Owner()
#: The check the current context's writes must pass (see the module doc), or None.
_FENCE: ContextVar[Callable[[], object] | None] = ContextVar("writer_fence", default=None)


@contextmanager
def fenced(check: Callable[[], object] | None) -> Iterator[None]:
    """Run ``check`` under the writer lock before each write of the body (it raises to stop
    one): a ``detect watch`` source's lease renewal, so a deposed leader writes nothing.
    None: no check (a source that holds no lease)."""
    token = _FENCE.set(check)
    try:
        yield
    finally:
        _FENCE.reset(token)


def check_fence() -> None:
    """Run the current context's fence check, if :func:`fenced` named one: for what a
    deposed leader must not do besides writing the lake (sending alerts). Raises as the
    check does (the lease was taken)."""
    check = _FENCE.get()
    if check is not None:
        check()


@dataclass
class _Slot:
    """Per lake and process: a thread lock, and the lease while some thread holds it."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    lease: Lease | None = None


_slots: dict[str, _Slot] = {}
_guard = threading.Lock()


class LakeBusy(RuntimeFailure):
    """Another writer held the lake's lock for longer than we could wait."""


def _slot(uri: str) -> _Slot:
    with _guard:
        return _slots.setdefault(uri, _Slot())


@contextmanager
def writer_lock(
    lake: Lake, *, wait: float | None = None, seconds: float | None = None
) -> Iterator[Lease]:
    """Hold the lake's writer lock for the body; re-entrant within one thread.

    ``wait`` and ``seconds`` default to :data:`WAIT_SECONDS` and :data:`LEASE_SECONDS`.
    """
    wait = WAIT_SECONDS if wait is None else wait
    seconds = LEASE_SECONDS if seconds is None else seconds
    slot = _slot(lake.uri)
    with slot.lock:
        if slot.depth and slot.lease is not None:
            slot.depth += 1
            try:
                yield slot.lease
            finally:
                slot.depth -= 1
            return
        lake.require_root()
        lease = Lease(StateObject(lake, *LOCK_PARTS), owner=_OWNER, seconds=seconds)
        _acquire(lease, lake, wait)
        slot.depth, slot.lease = 1, lease
        try:
            check_fence()
            yield lease
        finally:
            slot.depth, slot.lease = 0, None
            # Taken over after our lease ran out: nothing of ours is left to release.
            with contextlib.suppress(CheckpointConflict):
                lease.release()


def _acquire(lease: Lease, lake: Lake, wait: float) -> None:
    deadline = time.monotonic() + wait
    delay = 0.02
    while True:
        try:
            lease.acquire()
            return
        except CheckpointBusy:
            if time.monotonic() >= deadline:
                holder = (lease.peek() or {}).get("owner") or {}
                raise LakeBusy(
                    f"another writer holds the lock of {lake.uri} (pid {holder.get('pid')} on "
                    f"{holder.get('host')}) and did not release it within {wait:.0f}s; if it "
                    f"crashed, its lease expires {LEASE_SECONDS:.0f}s after its last write"
                ) from None
        time.sleep(delay)  # back off: a flush takes well under a second
        delay = min(0.5, delay * 2)


#: The lock of alert delivery: planning what is owed from the delivery records, sending it
#: and recording it, as one step. Two runs delivering at once (a `detect score` and a
#: `detect watch`, two hourly jobs overlapping) each planned from the records they loaded
#: and sent every incident twice.
DELIVERY_LOCK_PARTS = ("locks", "delivery.json")
#: Longer than a writer's: a delivery to a slow sink takes longer than a flush.
DELIVERY_LEASE_SECONDS = 300.0


_delivery_threads: dict[str, threading.Lock] = {}


@contextmanager
def delivery_lock(lake: Lake, *, wait: float) -> Iterator[bool]:
    """Hold the lake's delivery lock for the body: yields True, or False when another run
    held it for longer than ``wait`` (that run sends what is owed; this one sends nothing).

    A thread lock per lake keeps two threads of one process apart (a lease held by this
    process is this process's, whichever thread asks), the lease two processes.
    """
    with _guard:
        local = _delivery_threads.setdefault(lake.uri, threading.Lock())
    started = time.monotonic()
    if not local.acquire(timeout=wait):
        yield False
        return
    try:
        lake.require_root()
        lease = Lease(
            StateObject(lake, *DELIVERY_LOCK_PARTS), owner=_OWNER, seconds=DELIVERY_LEASE_SECONDS
        )
        try:
            _acquire(lease, lake, max(0.0, wait - (time.monotonic() - started)))
        except LakeBusy:
            yield False
            return
        done = threading.Event()
        renewer = threading.Thread(
            target=_keep_renewed, args=(lease, done), name="delivery-lease", daemon=True
        )
        renewer.start()
        try:
            yield True
        finally:
            done.set()
            renewer.join()
            with contextlib.suppress(CheckpointConflict):
                lease.release()
    finally:
        local.release()


def _keep_renewed(lease: Lease, done: threading.Event) -> None:
    """Renew ``lease`` every third of its length until ``done``: a delivery to slow sinks
    can outlast one lease, and another run would then take it and send the same alerts.
    A renewal that fails (the lease was taken after a stall) stops renewing; the sends
    already made are recorded with the idempotency key either run would use."""
    while not done.wait(lease.seconds / 3):
        try:
            lease.renew_if_due()
        except (CheckpointConflict, StateError):
            return
