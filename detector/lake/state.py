"""Checkpoints in ``LAKE/_state/``: small JSON documents, changed only by compare-and-swap.

Two layers:

- :class:`StateObject` is one JSON document with versioned writes. Locally a write is a
  temporary file, fsync and rename, done under an exclusive ``flock`` that makes the
  read-compare-write step atomic between processes on the machine. On S3 it is one
  conditional ``PutObject``: ``IfNoneMatch="*"`` to create, ``IfMatch=<etag>`` to replace;
  S3 answers 412 when someone else wrote in between, which becomes
  :class:`CheckpointConflict`.
- :class:`Lease` puts an owner and an expiry in that document, so only one exporter works
  on a log group at a time. A second one finds a live lease and stops with
  :class:`CheckpointBusy` before writing anything to the lake; an owner that was
  SIGKILLed is recognised as dead (same host and PID namespace, PID gone or reused by a
  restarted container) and replaced at once, otherwise its lease runs out.

"One exporter per log group" keeps checkpoints consistent; the lake's own writer lock
(:mod:`detector.lake.lock`, a :class:`Lease` on ``_state/locks/writer.json``) is what keeps
concurrent writers from storing an event twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from detector.errors import RuntimeFailure
from detector.lake.table import put_atomic
from detector.storage import endpoint_url

if TYPE_CHECKING:
    from detector.lake.events import Lake
    from detector.ratelimit import Retrier

# detector.ratelimit (botocore, about a second to import) is imported where S3 is used, so a
# local lake's writer lock costs no start-up time.

log = logging.getLogger(__name__)


class StateError(RuntimeFailure):
    """The state document cannot be read or written (permissions, bucket gone, bad JSON)."""


class CheckpointConflict(StateError):
    """The document changed since we read it: another process wrote it."""


class CheckpointBusy(StateError):
    """Another live process holds the lease."""


@dataclass(frozen=True)
class Versioned:
    """A document and the version it was read at (``etag`` None: it does not exist)."""

    data: dict[str, Any] | None
    etag: str | None


def _now_iso(ts: float | None = None) -> str:
    value = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def _loads(body: bytes, where: str) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"{where}: not valid JSON ({exc}); move it aside to start over") from None
    if not isinstance(data, dict):
        raise StateError(f"{where}: not a JSON object; move it aside to start over")
    return data


class StateObject:
    """One JSON document under ``LAKE/_state/`` with compare-and-swap writes."""

    def __init__(self, lake: Lake, *parts: str, retrier: Retrier | None = None) -> None:
        self.lake = lake
        self.path = lake.state_path(*parts)
        self.uri = lake.loc.uri_of(self.path)
        self._retrier = retrier
        self._client: Any = None

    @property
    def retrier(self) -> Retrier:
        if self._retrier is None:
            from detector.ratelimit import Retrier

            self._retrier = Retrier(max_attempts=6, base=0.2, cap=5)
        return self._retrier

    # ------------------------------------------------------------------ public
    def read(self) -> Versioned:
        return self._s3_read() if self.lake.loc.is_s3 else self._local_read()

    def write(self, data: dict[str, Any], *, etag: str | None) -> str:
        """Replace the document if it is still at ``etag`` (None: only if absent).

        Returns the new etag; raises :class:`CheckpointConflict` when the document moved.
        """
        body = _dumps(data)
        if self.lake.loc.is_s3:
            return self._s3_write(body, etag)
        return self._local_write(body, etag)

    # ------------------------------------------------------------------ local
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(self.path)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _local_read(self) -> Versioned:
        try:
            with open(self.path, "rb") as fh:
                body = fh.read()
        except FileNotFoundError:
            return Versioned(None, None)
        except OSError as exc:
            raise StateError(f"{self.uri}: cannot read: {exc}") from None
        return Versioned(_loads(body, self.uri), hashlib.md5(body).hexdigest())

    def _local_write(self, body: bytes, etag: str | None) -> str:
        try:
            with self._locked():
                current = self._local_read()
                if current.etag != etag:
                    raise CheckpointConflict(f"{self.uri} was changed by another process")
                put_atomic(self.lake.loc, self.path, body)
        except OSError as exc:
            raise StateError(f"{self.uri}: cannot write: {exc}") from None
        return hashlib.md5(body).hexdigest()

    # ------------------------------------------------------------------ S3
    @property
    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.path.partition("/")
        return bucket, key

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            from detector.ratelimit import client_config

            self._client = boto3.client(
                "s3", endpoint_url=endpoint_url(), config=client_config(read_timeout=30)
            )
        return self._client

    def _s3_call(self, operation: str, **kwargs: Any) -> Any:
        from detector.ratelimit import RetriesExhausted

        try:
            return self.retrier.call(operation, getattr(self.client, _snake(operation)), **kwargs)
        except RetriesExhausted as exc:
            raise StateError(f"{self.uri}: {exc}") from None

    def _s3_read(self) -> Versioned:
        from botocore.exceptions import BotoCoreError, ClientError

        from detector.ratelimit import describe_error, setup_problem

        bucket, key = self._bucket_key
        try:
            resp = self._s3_call("GetObject", Bucket=bucket, Key=key)
            body = resp["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return Versioned(None, None)
            raise StateError(f"{self.uri}: cannot read: {describe_error(exc)}") from None
        except BotoCoreError as exc:
            if setup_problem(exc):
                raise
            raise StateError(f"{self.uri}: cannot read: {describe_error(exc)}") from None
        return Versioned(_loads(body, self.uri), resp["ETag"])

    def _s3_write(self, body: bytes, etag: str | None) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        from detector.ratelimit import describe_error, setup_problem

        bucket, key = self._bucket_key
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        for attempt in range(8):
            try:
                resp = self._s3_call(
                    "PutObject",
                    Bucket=bucket,
                    Key=key,
                    Body=body,
                    ContentType="application/json",
                    **condition,
                )
                return resp["ETag"]
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code == "ConditionalRequestConflict" or status == 409:
                    # S3: a concurrent conditional write is in flight; retry shortly.
                    time.sleep(min(2.0, 0.1 * 2**attempt))
                    continue
                if code == "PreconditionFailed" or status == 412:
                    # Our own earlier attempt may have landed with its answer lost: if the
                    # object now holds exactly our bytes, the write succeeded.
                    now = self._s3_read_raw()
                    if now is not None and now[0] == body:
                        return now[1]
                    raise CheckpointConflict(f"{self.uri} was changed by another process") from None
                raise StateError(f"{self.uri}: cannot write: {describe_error(exc)}") from None
            except BotoCoreError as exc:
                if setup_problem(exc):
                    raise
                raise StateError(f"{self.uri}: cannot write: {describe_error(exc)}") from None
        raise StateError(f"{self.uri}: cannot write: conditional write kept conflicting")

    def _s3_read_raw(self) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        bucket, key = self._bucket_key
        try:
            resp = self._s3_call("GetObject", Bucket=bucket, Key=key)
        except ClientError:
            return None
        return resp["Body"].read(), resp["ETag"]


def _snake(operation: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


# --------------------------------------------------------------------------- lease
def _pid_namespace() -> str | None:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


@dataclass(frozen=True)
class Owner:
    """Who holds a lease: enough to tell "me, restarted" and "dead on this host" apart."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    pidns: str | None = field(default_factory=_pid_namespace)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: str = field(default_factory=_now_iso)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "pidns": self.pidns,
            "run_id": self.run_id,
            "started_at": self.started_at,
        }

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (run {self.run_id})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_alive(holder: dict[str, Any], me: Owner) -> bool:
    """Can the process recorded in ``holder`` still be running?

    Only decidable for a holder in our own PID namespace on our host; anything else is
    presumed alive until its lease expires.
    """
    if holder.get("host") != me.host or holder.get("pidns") != me.pidns or me.pidns is None:
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    if pid == me.pid:
        # Our PID, another run: a restarted container (PID 1 again). That run is gone.
        return holder.get("run_id") == me.run_id
    return _pid_alive(pid)


class Lease:
    """Exclusive, expiring ownership of one state document, renewed on every write."""

    def __init__(
        self,
        obj: StateObject,
        *,
        owner: Owner | None = None,
        seconds: float = 180.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.obj = obj
        self.owner = owner or Owner()
        self.seconds = seconds
        self.clock = clock
        self.data: dict[str, Any] | None = None
        self._etag: str | None = None
        self._renewed_at = 0.0
        self.held = False

    def peek(self) -> dict[str, Any] | None:
        """The document as it is now, without claiming anything."""
        return self.obj.read().data

    def busy_reason(self, data: dict[str, Any] | None) -> str | None:
        """Why we may not take the lease now, or None if we may."""
        if not data:
            return None
        holder = data.get("owner") or {}
        until = float(data.get("lease_until_ms") or 0) / 1000
        if until <= self.clock() or holder.get("run_id") == self.owner.run_id:
            return None
        if not holder_is_alive(holder, self.owner):
            return None
        return (
            f"another exporter holds {self.obj.uri}: pid {holder.get('pid')} on "
            f"{holder.get('host')} (run {holder.get('run_id')}), lease until "
            f"{_now_iso(until)}; run one exporter per log group (docs/operations.md)"
        )

    def acquire(
        self, *, wait: float = 0.0, poll: float = 5.0, fields: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Claim the document (adding ``fields``); returns its previous content, or None.

        With ``wait`` > 0, a busy lease is polled until it frees up or ``wait`` seconds
        pass; then :class:`CheckpointBusy` is raised.
        """
        deadline = self.clock() + wait
        while True:
            current = self.obj.read()
            reason = self.busy_reason(current.data)
            if reason is None and current.data:
                holder = current.data.get("owner") or {}
                until = float(current.data.get("lease_until_ms") or 0) / 1000
                if until > self.clock() and holder.get("run_id") != self.owner.run_id:
                    log.warning(
                        "taking over %s from pid %s on %s: that process is gone",
                        self.obj.uri,
                        holder.get("pid"),
                        holder.get("host"),
                    )
            if reason is None:
                try:
                    self._write({**(current.data or {}), **(fields or {})}, current.etag)
                except CheckpointConflict:
                    reason = (
                        f"another exporter claimed {self.obj.uri} at the same moment; "
                        "run one exporter per log group (docs/operations.md)"
                    )
                else:
                    self.held = True
                    return current.data
            if self.clock() >= deadline:
                raise CheckpointBusy(reason)
            time.sleep(min(poll, max(0.05, deadline - self.clock())))

    def update(self, **fields: Any) -> None:
        """Write ``fields`` into the document, renewing the lease; conflicts are fatal."""
        if not self.held:
            raise StateError("lease not held")
        data = dict(self.data or {})
        data.update(fields)
        try:
            self._write(data, self._etag)
        except CheckpointConflict:
            self.held = False
            raise CheckpointConflict(
                f"{self.obj.uri} was changed by another exporter while this one ran "
                "(its lease was taken over); stopping. Run one exporter per log group "
                "(docs/operations.md)"
            ) from None

    def renew_if_due(self) -> bool:
        """Renew when a third of the lease has passed since the last write."""
        if self.held and self.clock() - self._renewed_at >= self.seconds / 3:
            self.update()
            return True
        return False

    def release(self) -> None:
        """Give the lease up (expiry now), keeping everything else in the document."""
        if not self.held:
            return
        data = dict(self.data or {})
        data["lease_until_ms"] = int(self.clock() * 1000)
        data["released_at"] = _now_iso(self.clock())
        self._etag = self.obj.write(self._stamp(data, renew=False), etag=self._etag)
        self.held = False

    # ------------------------------------------------------------------ internals
    def _stamp(self, data: dict[str, Any], *, renew: bool = True) -> dict[str, Any]:
        now = self.clock()
        data["owner"] = self.owner.to_dict()
        if renew:
            data["lease_until_ms"] = int((now + self.seconds) * 1000)
            data.pop("released_at", None)
        data["updated_at"] = _now_iso(now)
        data["seq"] = int(data.get("seq") or 0) + 1
        return data

    def _write(self, data: dict[str, Any], etag: str | None) -> None:
        data = self._stamp(data)
        self._etag = self.obj.write(data, etag=etag)
        self.data = data
        self._renewed_at = self.clock()
