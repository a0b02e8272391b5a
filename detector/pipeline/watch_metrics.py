"""Prometheus metrics, health probes and the status line of ``detect watch``.

One :class:`WatchMetrics` per watch process, on its own registry (so several watchers in
one test process do not collide), served with ``/healthz``, ``/readyz`` and ``/metrics``
by :class:`HealthServer` on a port of the operator's choice:

- ``/healthz``: 200 while the loop turns (it touched :meth:`WatchMetrics.beat` within
  ``stale_after`` seconds), 503 when it is stuck: the liveness probe restarts the pod.
- ``/readyz``: 200 once every source is running as leader (or finished), 503 while
  starting or standing by for another replica's lease: a standby is alive but not ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from detector.errors import RuntimeFailure

log = logging.getLogger(__name__)


class WatchMetrics:
    """The counters and gauges an operator watches; see docs/operations.md for the list."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("detect_watch_events", "Events written to the lake", registry=r)
        self.events_per_second = Gauge(
            "detect_watch_events_per_second", "Events/s over the last minute", registry=r
        )
        self.lag = Gauge(
            "detect_watch_lag_seconds",
            "How far the durable stream position is behind now (CloudWatch: the watermark)",
            ["source"],
            registry=r,
        )
        self.alerts_sent = Counter(
            "detect_watch_alerts_sent", "Alerts delivered", ["severity", "sink"], registry=r
        )
        self.delivery_failures = Counter(
            "detect_watch_delivery_failures",
            "Alerts a sink did not accept after its retries (dead letters)",
            ["sink"],
            registry=r,
        )
        self.alerts_held = Gauge(
            "detect_watch_alerts_held",
            "Alerts past a sink's hourly budget, owed to its next digest (at the last check)",
            registry=r,
        )
        self.findings = Counter(
            "detect_watch_findings", "Findings written", ["detector_kind"], registry=r
        )
        self.quarantined = Counter(
            "detect_watch_quarantined", "Input lines quarantined", ["reason"], registry=r
        )
        self.source_errors = Counter(
            "detect_watch_source_errors",
            "Source restarts after a failure (CloudWatch or lake still failing after retries)",
            ["source"],
            registry=r,
        )
        self.model_info = Gauge(
            "detect_watch_model_info", "The model in use (value 1)", ["model_version"], registry=r
        )
        self.leader = Gauge(
            "detect_watch_leader",
            "1 when this replica holds the source's lease",
            ["source"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "detect_watch_batch_seconds", "Detect + deliver time per batch", registry=r
        )
        self._recent: deque[tuple[float, int]] = deque()
        self._beat = time.monotonic()
        self.ready = False
        #: sources this replica stands by for (another holds their lease)
        self.standing_by: set[str] = set()
        self.model_version: str | None = None
        self.totals = {"events": 0, "alerts": 0, "failed": 0, "quarantined": 0}

    # ------------------------------------------------------------------ updates
    def beat(self) -> None:
        self._beat = time.monotonic()

    def since_beat(self) -> float:
        return time.monotonic() - self._beat

    def count_events(self, n: int) -> None:
        now = time.monotonic()
        self.events.inc(n)
        self.totals["events"] += n
        self._recent.append((now, n))
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        span = max(1.0, min(60.0, now - self._recent[0][0])) if self._recent else 60.0
        self.events_per_second.set(sum(k for _, k in self._recent) / span)

    def count_quarantine(self, quarantine: pl.DataFrame) -> None:
        if quarantine.is_empty():
            return
        self.totals["quarantined"] += quarantine.height
        fam = quarantine.select(pl.col("reason").str.split(":").list.first().alias("r"))
        for reason, n in fam.group_by("r").len().iter_rows():
            self.quarantined.labels(reason=str(reason)[:60]).inc(n)

    def count_findings(self, findings: pl.DataFrame) -> None:
        kinds = findings.select(pl.col("detector").str.split(":").list.first().alias("k"))
        for kind, n in kinds.group_by("k").len().iter_rows():
            self.findings.labels(detector_kind=str(kind)).inc(n)

    def set_model(self, version: str | None) -> None:
        if version == self.model_version:
            return
        if self.model_version is not None:
            self.model_info.remove(self.model_version)
        if version is not None:
            self.model_info.labels(model_version=version).set(1)
        self.model_version = version

    def held_text(self) -> str:
        """``N held for a digest, `` when alerts wait past a sink's budget, else nothing."""
        held = _held(self.alerts_held)
        return f"{held} held for a digest, " if held else ""

    def alerts_text(self) -> str:
        """``N alerts sent, M failed, `` and what is held: the status line's and the closing
        summary's, so the summary of a run whose sink failed says so (it did not: review)."""
        sent = sum(s.get() for s in _samples(self.alerts_sent))
        failed = sum(s.get() for s in _samples(self.delivery_failures))
        return f"{int(sent)} alerts sent, {int(failed)} failed, {self.held_text()}"

    def status_line(self) -> str:
        lags = [g.get() for g in _samples(self.lag)]
        # A standby reads nothing: "lag 0.0s" read as caught up (found by a soak).
        lag = "standing by" if self.standing_by else f"lag {max(lags or [0]):.1f}s"
        return (
            f"watch: {self.totals['events']} events ({self.events_per_second._value.get():.1f}/s), "
            f"{lag}, {self.alerts_text()}{self.totals['quarantined']} quarantined, model "
            f"{self.model_version or 'none'}, {'ready' if self.ready else 'not ready'}"
        )


def _held(gauge: Gauge) -> int:
    return int(gauge._value.get())


def _samples(metric: Counter | Gauge) -> list:
    """The child values of a labelled metric (prometheus-client keeps them in _metrics)."""
    return [child._value for child in metric._metrics.values()]


class _QuietServer(ThreadingHTTPServer):
    """A client gone mid-answer (a probe that timed out) is logged in one debug line; the
    standard server printed a traceback to stderr for it."""

    def handle_error(self, request: object, client_address: object) -> None:
        log.debug("health endpoint: client %s went away mid-request", client_address)


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a daemon thread (port 0: any free)."""

    def __init__(
        self,
        metrics: WatchMetrics,
        port: int,
        *,
        host: str = "0.0.0.0",
        stale_after: float = 120,
        idle_timeout: float = 10.0,
    ) -> None:
        m = metrics

        class Handler(BaseHTTPRequestHandler):
            # A client that connects and stays silent (or sends half a request) is dropped
            # after this long: each connection holds a thread, and the probes must not wait
            # behind a pile of them.
            timeout = idle_timeout

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(m.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = m.since_beat() <= stale_after
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stuck\n")
                elif path == "/readyz":
                    self._send(200 if m.ready else 503, b"ready\n" if m.ready else b"waiting\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self.server = _QuietServer((host, port), Handler)
        except OSError as exc:  # in use, a privileged port, an address not on this host
            raise RuntimeFailure(
                f"cannot serve /healthz and /metrics on {host}:{port}: "
                f"{exc.strerror or exc} (another process has it? choose one with --port)"
            ) from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # polled every 0.1 s: a stop waits for the loop to notice (0.5 s by default)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


__all__ = ["HealthServer", "WatchMetrics"]
