"""A real loopback HTTP proxy in front of moto that injects AWS faults.

boto3 is pointed at the proxy through ``AWS_ENDPOINT_URL``; every request is forwarded to
moto unchanged, except calls to the chosen operations (``X-Amz-Target`` ending in e.g.
``.FilterLogEvents``), which consume the fault plan first:

- ``throttle``: HTTP 400 ``{"__type": "ThrottlingException", "message": "Rate exceeded"}``,
  as CloudWatch Logs answers when the account's TPS quota is exceeded;
- ``unavailable``: HTTP 503 ``ServiceUnavailableException``;
- ``reset``: the connection is closed with a TCP RST and no answer at all.

``forever`` makes every matching call fail the same way (a persistent outage).
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_BODIES = {
    "throttle": (400, b'{"__type":"ThrottlingException","message":"Rate exceeded"}'),
    "unavailable": (
        503,
        b'{"__type":"ServiceUnavailableException","message":"The service is unavailable"}',
    ),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class FaultProxy:
    """``with FaultProxy(upstream, faults=["throttle"] * 3) as proxy: ... proxy.url``."""

    def __init__(
        self,
        upstream: str,
        *,
        faults: list[str] | None = None,
        forever: str | None = None,
        operations: tuple[str, ...] = ("FilterLogEvents",),
    ) -> None:
        self.upstream = urlsplit(upstream)
        self.plan = list(faults or [])
        self.forever = forever
        self.operations = operations
        self.injected: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                target = self.headers.get("X-Amz-Target", "")
                operation = target.rsplit(".", 1)[-1] if target else self.command
                fault = proxy._next_fault(operation)
                if fault == "reset":
                    # SO_LINGER 0 then close: the client sees "connection reset by peer".
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault is not None:
                    status, payload = FAULT_BODIES[fault]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-amz-json-1.1")
                    self.send_header("x-amzn-RequestId", "00000000-fault")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                status, headers, payload = proxy._forward(
                    self.command, self.path, dict(self.headers.items()), body
                )
                proxy.forwarded[operation] += 1
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _next_fault(self, operation: str) -> str | None:
        if operation not in self.operations:
            return None
        with self._lock:
            if self.plan:
                fault = self.plan.pop(0)
            elif self.forever:
                fault = self.forever
            else:
                return None
            self.injected[fault] += 1
            return fault

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
