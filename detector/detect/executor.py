"""Where the per-partition work of train, score and evaluate runs: here, or on a Ray cluster.

One machine reads a 100M-events-a-day organisation's months of history too slowly, so the
work that touches events is cut into **(cluster, day) partitions** and mapped over an
executor: :class:`LocalExecutor` runs them one after the other in this process,
:class:`RayExecutor` as Ray tasks (a local Ray, a cluster at ``--address``, or KubeRay's
``RAY_ADDRESS``). What needs every partition (fitting the forest on all windows, novelty
across days, writing findings) stays on the driver, on window rows (thousands a day, not
events), so both executors give exactly the same findings.

Results cross from a Ray worker as Arrow tables (Ray's object store hands their buffers over
without copying them) and become polars frames with ``pl.from_arrow``, zero-copy too. Ray is
an optional extra (``audit-detector[ray]``): asking for it without it installed is a usage
error, and nothing here imports it otherwise.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

from detector.detect.scan import chunk_span
from detector.errors import RuntimeFailure, UsageError
from detector.lake.events import Partition, partition_start

#: ``--executor`` values.
EXECUTORS = ("local", "ray")


class ExecutorError(UsageError):
    """An executor that cannot be used here (Ray not installed, bad address...)."""


class ClusterUnreachable(RuntimeFailure):
    """Nothing answers at the Ray address: a cluster down or a wrong port (exit 3, as an
    unreachable AWS endpoint is)."""


#: How long a Ray head may take to accept a connection before the run gives up. Ray's own
#: wait on an address where nothing listens runs past two minutes, printing its retries.
CONNECT_TIMEOUT_S = 5.0


def _endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for Ray's own words
    (``auto``, ``local``) and anything without a port, which ``ray.init`` judges."""
    rest = address.split("://", 1)[1] if "://" in address else address
    try:
        parts = urlsplit("//" + rest)
        host, port = parts.hostname, parts.port
        if port == 0 or (host and len(host) > 253):  # no port, or no host name DNS takes
            raise ValueError(address)
    except ValueError:
        raise ExecutorError(
            f"--address {address[:80]!r} is not host:port or ray://host:port"
        ) from None
    return (host, port) if host and port else None


def _client_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("grpc") is not None


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, within ``timeout``, when nothing accepts a connection at the Ray
    address (:class:`ClusterUnreachable`); the address's form is Ray's to check.

    A ``ray://`` address is Ray Client's, which needs ``ray[client]`` (gRPC); the extra
    installs plain ``ray``, which joins a cluster at its GCS address (``head:6379``) or
    through ``RAY_ADDRESS``: said in one line rather than after Ray's own start-up."""
    if address.startswith("ray://") and not _client_installed():
        raise ExecutorError(
            f"--address {address[:80]!r} is a Ray Client address, which needs "
            '`pip install "ray[client]"`; or join the cluster at its head\'s GCS address '
            "(head:6379) from a pod inside it"
        )
    endpoint = _endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=timeout).close()
    except UnicodeError:  # a host name no resolver can encode (a label over 63 characters)
        raise ExecutorError(f"--address {address[:80]!r}: not a host name") from None
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterUnreachable(
            f"cannot reach the Ray cluster at {address}: {why} (is the head node up, and "
            "is this its GCS port (6379) or Ray Client port (10001)?)"
        ) from None


class Executor(Protocol):
    """Maps a module-level function over argument tuples; results in the order given."""

    name: str

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]: ...


class LocalExecutor:
    """Every partition in this process, one after the other (the default)."""

    name = "local"

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [fn(*args) for args in calls]


class RayExecutor:
    """Every partition as a Ray task; joins a running cluster or starts a local one.

    ``address``: ``host:6379`` (the head's GCS) or ``ray://host:10001`` (Ray Client, with
    ``ray[client]``) of a cluster; ``None`` joins the
    cluster of ``RAY_ADDRESS`` (set by KubeRay in a RayJob) or one already initialised in
    this process, else starts a local one.
    """

    name = "ray"

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                "--executor ray needs Ray: pip install 'audit-detector[ray]'"
            ) from None
        self._ray = ray
        if not ray.is_initialized():
            joins = address or os.environ.get("RAY_ADDRESS")
            if joins:
                check_reachable(joins)
            extra = {} if joins else {"include_dashboard": False}  # a local Ray: no dashboard
            try:
                ray.init(address=address, log_to_driver=False, **extra)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ExecutorError(f"cannot join the Ray cluster at {address}: {exc}") from None
        self._remote: dict[Callable[..., Any], Any] = {}

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        ray = self._ray
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(num_cpus=1, max_retries=2)(fn)
        return ray.get([remote.remote(*args) for args in calls])


def make_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor behind ``--executor NAME [--address A]``; a usage error when unusable."""
    if name == "local":
        if address:
            raise ExecutorError("--address is for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise ExecutorError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")


def is_local(executor: Executor | None) -> bool:
    return executor is None or executor.name == "local"


# --------------------------------------------------------------------------- partitions
def partition_span(window: timedelta) -> int:
    """Seconds of a partition's time slice: whole local chunks adding up to at least a day.

    Made of the chunks a local run reads (:func:`~detector.detect.scan.chunk_span`), so a
    partition's window rows are exactly the local rows of its cluster and hours; with 10m
    windows it is one UTC day.
    """
    chunk = chunk_span(window)
    return chunk * max(1, math.ceil(86_400 / chunk))


def partition_units(
    parts: list[Partition], window: timedelta
) -> list[tuple[str, int, list[Partition]]]:
    """Hour partitions grouped into (cluster, day) units: ``(cluster, slice start, hours)``.

    Sorted by cluster then time, so work is listed (and logged) in a stable order.
    """
    span = partition_span(window)
    units: dict[tuple[str, int], list[Partition]] = {}
    for part in parts:
        start = int(partition_start(part).timestamp()) // span * span
        units.setdefault((part[0], start), []).append(part)
    return [(c, t, sorted(units[(c, t)])) for c, t in sorted(units)]
