"""Delivery against real endpoints: local HTTP receivers for the webhook and Slack, moto's
server on loopback for SNS, EventBridge, Security Hub and S3; OCSF validated with
py-ocsf-models (Prowler's maintained pydantic models of the OCSF schema)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import boto3
import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from alerts_data import T0, Receiver, W, drain, finding, frames, queue
from throttle_proxy import FaultProxy

from detector.delivery import config as sink_config
from detector.delivery import payloads
from detector.delivery.deliver import SinkHealth, deliver
from detector.delivery.records import DeliveryState, read_dead_letters
from detector.delivery.run import send
from detector.delivery.sinks import SIGNATURE_HEADER
from detector.delivery.sinks import build as build_sink
from detector.incidents.group import Incident, group
from detector.lake.events import Lake

ROLE = "arn:aws:iam::111122223333:role/dev"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def sink(**kw) -> sink_config.SinkConfig:
    return sink_config.parse_sink({"backoff": "1s", **kw}, "test")


class FakeSleep:
    """Backoff waits recorded instead of slept (no sleeps in tests)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def build(cfg, sleep=None):
    """A sink whose backoff waits are recorded, never slept."""
    return build_sink(cfg, sleep=sleep or FakeSleep())


def incidents(rows=None) -> list[Incident]:
    rows = rows or [
        finding(ROLE, T0, severity="high", detector="rule:exec", tactic="Execution"),
        finding(ROLE, T0 + W, severity="medium"),
    ]
    df, ev = frames(rows)
    incs, _ = group(df, [], events=ev, now=T0)
    return incs


def grow(inc: Incident, severity: str = "medium", at: datetime = T0 + 2 * W) -> Incident:
    df, ev = frames([finding(inc.principal, at, severity=severity, detector="rule:more")])
    (out,), _ = group(df, [Incident.from_row(inc.to_row())], events=ev, now=at)
    return out


# --------------------------------------------------------------------------- webhook
def test_webhook_is_signed_and_falcosidekick_shaped(receiver, monkeypatch):
    monkeypatch.setenv("TEST_HOOK_URL", receiver.url)
    monkeypatch.setenv("TEST_HOOK_KEY", "k3y")
    cfg = sink(name="hook", type="webhook", url_env="TEST_HOOK_URL", secret_env="TEST_HOOK_KEY")
    report = deliver(incidents(), [build(cfg)], DeliveryState(), now=NOW)
    assert report.summary()["new"] == 1
    (req,) = receiver.requests
    expected = "sha256=" + hmac.new(b"k3y", req["body"], hashlib.sha256).hexdigest()
    assert req["headers"][SIGNATURE_HEADER] == expected
    body = json.loads(req["body"])
    # falcosidekick's types.FalcoPayload: output, priority, rule, time, output_fields...
    assert body["priority"] in {"Critical", "Error", "Warning", "Notice"}
    assert body["rule"] == "rule:exec" and body["source"] == "k8saudit"
    datetime.fromisoformat(body["time"].replace("Z", "+00:00"))
    assert body["output_fields"]["ka.user.name"] == ROLE
    assert req["headers"]["Idempotency-Key"] == body["output_fields"]["detect.idempotency_key"]


def test_each_incident_version_reaches_a_sink_once_and_updates_are_throttled(receiver):
    cfg = sink(name="hook", type="webhook", url=receiver.url, throttle="15m")
    hook = build(cfg)
    (inc,) = incidents()
    state = deliver([inc], [hook], DeliveryState(), now=NOW).state
    state = deliver([inc], [hook], state, now=NOW + timedelta(minutes=1)).state  # same version
    assert len(receiver.delivered) == 1
    v2 = grow(inc)  # a new finding, same severity: an update, but within the throttle
    report = deliver([v2], [hook], state, now=NOW + timedelta(minutes=5))
    assert report.throttled and len(receiver.delivered) == 1
    report = deliver([v2], [hook], report.state, now=NOW + timedelta(minutes=16))
    assert report.summary()["updates"] == 1
    first, update = receiver.delivered
    assert (
        update["output_fields"]["detect.incident.id"]
        == first["output_fields"]["detect.incident.id"]
    )
    assert update["output_fields"]["detect.incident.kind"] == "update"
    # a rise in severity is not held back by the throttle
    v3 = grow(v2, severity="critical", at=T0 + 3 * W)
    report = deliver([v3], [hook], report.state, now=NOW + timedelta(minutes=17))
    assert report.summary()["updates"] == 1 and len(receiver.delivered) == 3
    # the state survives a checkpoint round trip (what detect watch stores)
    state = DeliveryState.from_dict(json.loads(json.dumps(report.state.to_dict())))
    assert deliver([v3], [hook], state, now=NOW + timedelta(hours=1)).sent == []


def test_info_suppressed_and_never_sent_resolved_incidents_are_not_delivered(receiver):
    hook = build(sink(name="hook", type="webhook", url=receiver.url))
    (info,) = incidents([finding(ROLE, T0, severity="info")])
    (sup,) = incidents([finding("arn:aws:iam::1:role/x", T0, severity="high")])
    sup.status = "suppressed"
    (closed,) = incidents([finding("arn:aws:iam::1:role/y", T0, severity="high")])
    closed.status, closed.version = "resolved", closed.version + 1  # resolved before any send
    assert deliver([info, sup, closed], [hook], DeliveryState(), now=NOW).sent == []
    assert receiver.requests == []
    with pytest.raises(sink_config.SinkConfigError, match="info is a record"):
        sink(name="x", type="webhook", url=receiver.url, min_severity="info")


def test_failures_are_retried_then_dead_lettered_without_the_secret(tmp_path, caplog):
    lake = Lake(str(tmp_path / "lake"))
    r = Receiver(statuses=[503] * 4)
    try:
        cfg = sink(name="hook", type="webhook", url=r.url, retries=3)
        sleep = FakeSleep()
        with caplog.at_level(logging.INFO):
            report = send(lake, incidents(), [cfg], now=NOW, sleep=sleep)
        assert len(r.requests) == 4 and sleep.waits == [1.0, 2.0, 4.0]
        dead = read_dead_letters(lake)
        assert dead.select("sink", "attempts", "error").row(0) == ("hook", 4, "sink hook: HTTP 503")
        assert "SECRET-PATH" not in caplog.text + dead.write_csv()
        # the receiver is back: the next run delivers what is pending, once
        report = send(lake, incidents(), [cfg], now=NOW + timedelta(minutes=1), sleep=sleep)
        assert report.summary()["new"] == 1 and len(r.delivered) == 1
        report = send(lake, incidents(), [cfg], now=NOW + timedelta(minutes=2), sleep=sleep)
        assert report.sent == [] and len(r.delivered) == 1
    finally:
        r.close()


@pytest.mark.parametrize("status", [401, 403, 404])
def test_client_errors_are_not_retried(tmp_path, status):
    """The same bytes cannot succeed. (A 400, 413 or 422 refuses the alert itself: it is
    sent once more, shortened; see test_payload_bounds.py.)"""
    r = Receiver(statuses=[status])
    try:
        sleep = FakeSleep()
        report = deliver(
            incidents(),
            [build(sink(name="h", type="webhook", url=r.url), sleep=sleep)],
            DeliveryState(),
            now=NOW,
        )
        assert len(r.requests) == 1 and sleep.waits == [] and len(report.dead_letters) == 1
    finally:
        r.close()


@pytest.mark.parametrize(
    "url, why",
    [
        ("https://hooks.example.com:99999/hook?token=SECRET", "port"),
        ("https:///hook/SECRET", "names no host"),
        ("https://hooks.example.com/services/T0/B0/SECRET TOKEN", "spaces"),
        ("https://alerts:SECRET@hooks.example.com/falco", "credentials in the URL"),
        # urllib's own errors quote the host or user part (a secret, exit 3 before)
        ("https://alerts:SECRET\u2100x@hooks.example.com/falco", "cannot be read"),
        ("https://[SECRET]/hook", "cannot be read"),
        ("http://[::1/SECRET", "cannot be read"),
    ],
)
def test_a_url_no_request_can_be_sent_to_is_refused_in_one_line_without_it(url, why, monkeypatch):
    with pytest.raises(sink_config.SinkConfigError, match=why) as raised:
        sink(name="hook", type="webhook", url=url)
    assert "SECRET" not in str(raised.value)
    monkeypatch.setenv("TEST_HOOK_URL", url)  # from the environment: checked when built
    with pytest.raises(sink_config.SinkConfigError, match=why) as raised:
        build(sink(name="hook", type="slack", url_env="TEST_HOOK_URL"))
    assert "SECRET" not in str(raised.value)
    with pytest.raises(sink_config.SinkConfigError, match="longer than 0s"):
        sink(name="hook", type="webhook", url="https://hooks.example.com/x", timeout="0s")


def test_a_sink_that_answers_garbage_fails_alone_and_the_others_hear_each_alert_once(
    tmp_path, receiver, caplog
):
    """An endpoint that is not HTTP (an SSH port behind a proxy): http.client raised
    BadStatusLine, which stopped the whole delivery before any record was saved, so every
    run sent the other sinks everything again."""
    import socket

    lake = Lake(str(tmp_path / "lake"))
    with socket.socket() as garbage:
        garbage.bind(("127.0.0.1", 0))
        garbage.listen()
        port = garbage.getsockname()[1]

        def answer() -> None:
            while True:
                try:
                    conn, _ = garbage.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        threading.Thread(target=answer, daemon=True).start()
        bad = sink(name="bad", type="webhook", url=f"http://127.0.0.1:{port}/SECRET-PATH")
        good = sink(name="good", type="webhook", url=receiver.url, retries=0)
        three = incidents(
            [finding(f"arn:aws:iam::1:role/r{i}", T0, severity="high") for i in range(3)]
        )
        with caplog.at_level(logging.INFO):
            for minute in (0, 1):
                at = NOW + timedelta(minutes=minute)
                report = send(lake, three, [bad, good], now=at, sleep=FakeSleep())
                # the first alert fails; the sink is then down and the other two wait
                assert (report.summary()["failed"], report.summary()["waiting"]) == (1, 2)
    assert len(receiver.delivered) == 3  # once each, not once per run
    dead = read_dead_letters(lake)
    # the ones that waited are filed too, so a run days later still owes them
    assert set(dead["error"]) == {
        "sink bad: BadStatusLine: not an HTTP answer",
        "not tried: sink bad was down (an alert before it failed)",
    }
    assert "SECRET-PATH" not in caplog.text + dead.write_csv()


def test_sinks_are_served_side_by_side(tmp_path):
    """The first sink answers only once the second has its alert: one after the other,
    the first timed out and failed (and a hung sink held every sink behind it)."""
    second_heard = threading.Event()
    first = Receiver(before=lambda: None if second_heard.wait(timeout=5) else 504)
    second = Receiver(before=lambda: second_heard.set())
    try:
        cfgs = [
            sink(name="first", type="webhook", url=first.url, retries=0),
            sink(name="second", type="webhook", url=second.url, retries=0),
        ]
        report = send(Lake(str(tmp_path / "lake")), incidents(), cfgs, now=NOW)
        assert report.summary()["per_sink"] == {"first": 1, "second": 1}
        assert [s["sink"] for s in report.sent] == ["first", "second"]  # the sinks' order
    finally:
        first.close()
        second.close()


def test_what_is_sent_is_recorded_as_it_goes_so_a_kill_re_sends_little(tmp_path, monkeypatch):
    """The records were saved once every sink had finished: a run killed by its cron
    timeout while a slow sink was sending re-sent everything, to every sink."""
    from detector.delivery import deliver as deliver_mod
    from detector.delivery.records import DeliveryStore

    monkeypatch.setattr(deliver_mod, "CHECKPOINT_EVERY", 0.0)
    lake = Lake(str(tmp_path / "lake"))
    recorded: list[int] = []  # records in the lake as each alert arrives
    r = Receiver(before=lambda: recorded.append(len(DeliveryStore(lake).load().sent)))
    try:
        three = incidents(
            [finding(f"arn:aws:iam::1:role/r{i}", T0, severity="high") for i in range(3)]
        )
        send(lake, three, [sink(name="hook", type="webhook", url=r.url)], now=NOW)
        assert recorded == [0, 1, 2]
        assert len(DeliveryStore(lake).load().sent) == 3
    finally:
        r.close()


def test_a_checkpoint_that_fails_stops_every_sink_and_sees_the_callers_context(
    tmp_path, monkeypatch
):
    """`detect watch` checks after each checkpoint that it still leads (a fence in a
    context variable, lake.lock): the sinks' threads did not see it, and a sink went on
    sending after the check failed."""
    import contextvars

    from detector.delivery import deliver as deliver_mod

    monkeypatch.setattr(deliver_mod, "CHECKPOINT_EVERY", 0.0)
    leader = contextvars.ContextVar("leader", default="nobody")
    seen: list[str] = []

    def checkpoint(_state: DeliveryState) -> None:
        seen.append(leader.get())
        raise RuntimeError("deposed")

    r = Receiver()
    try:
        three = incidents(
            [finding(f"arn:aws:iam::1:role/r{i}", T0, severity="high") for i in range(3)]
        )
        hook = build(sink(name="hook", type="webhook", url=r.url))
        leader.set("replica-a")
        with pytest.raises(RuntimeError, match="deposed"):
            deliver(three, [hook], DeliveryState(), now=NOW, checkpoint=checkpoint)
        assert seen == ["replica-a"]  # the sink's thread ran in the caller's context
        assert len(r.requests) == 1  # and stopped after the checkpoint that failed
    finally:
        r.close()


class Redirecting:
    """A loopback server that answers every POST with a redirect (an endpoint moved
    behind an ingress) and records the requests it gets, GETs included."""

    def __init__(self, status: int = 302) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[str] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, code: int) -> None:
                seen.append(self.command)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(code)
                self.send_header("Location", "/moved")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self._answer(status)

            def do_GET(self) -> None:
                self._answer(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failure_never_a_delivery(status):
    """urllib followed a 302 with a GET without the body: the alert reached nobody and was
    recorded as sent, never to be sent again."""
    moved = Redirecting(status)
    try:
        cfg = sink(name="hook", type="webhook", url=moved.url, retries=2)
        report = deliver(incidents(), [build(cfg)], DeliveryState(), now=NOW)
        assert moved.requests == ["POST"]  # not followed, not retried
        assert report.sent == [] and not report.state.sent
        assert "redirected; sinks do not follow redirects" in report.dead_letters[0]["error"]
    finally:
        moved.close()


def test_a_sink_that_fails_waits_and_holds_up_no_other(receiver):
    """A sink that is down cost every alert its timeout x attempts, each batch, while the
    other sinks' alerts of the batch waited for it (182 s to reach Slack in `detect
    watch`), and each pending check added a dead letter per alert. Now its first failure
    marks it down: its other alerts wait, untried; later deliveries skip it until the
    wait is over, then one alert probes it with a single attempt."""

    five = incidents([finding(f"arn:aws:iam::1:role/r{i}", T0, severity="high") for i in range(5)])
    down = Receiver(statuses=[503] * 100)
    try:
        health: dict[str, SinkHealth] = {}
        sleep = FakeSleep()
        sinks = [
            build_sink(sink(name="down", type="webhook", url=down.url, retries=3), sleep=sleep),
            build_sink(sink(name="up", type="webhook", url=receiver.url), sleep=sleep),
        ]
        first = deliver(five, sinks, DeliveryState(), now=NOW, health=health)
        assert len(receiver.delivered) == 5  # the healthy sink hears everything
        assert len(down.requests) == 4  # one alert: its attempt and 3 retries
        assert (len(first.dead_letters), len(first.waiting)) == (1, 4)
        again = deliver(five, sinks, first.state, now=NOW, health=health)
        assert len(down.requests) == 4 and again.dead_letters == []  # not tried
        assert len(again.waiting) == 5 and again.sent == []
        health["down"].retry_at = 0.0  # the wait is over (it doubles at each failure)
        probe = deliver(five, sinks, again.state, now=NOW, health=health)
        assert len(down.requests) == 5  # one attempt, no retries
        assert (len(probe.dead_letters), len(probe.waiting)) == (1, 4)
        assert health["down"].failures == 2
        down.statuses = []  # back up: the next probe goes through, the rest follow
        health["down"].retry_at = 0.0
        back = deliver(five, sinks, probe.state, now=NOW, health=health)
        assert len(back.sent) == 5 and back.waiting == [] and health["down"].failures == 0
        assert {s["sink"] for s in back.sent} == {"down"}
    finally:
        down.close()


def test_a_signal_the_kernel_gives_a_sink_thread_is_handled_while_the_sink_hangs():
    """A process-wide signal goes to any thread that does not block it. Given to a sink's
    thread, its handler waited for the main thread, which was blocked for good on that
    hung sink: a second SIGTERM did not end `detect watch` (it ran 150 s past it). The
    main thread now wakes while it waits. (The signal is aimed at the sink's thread with
    pthread_kill, in this process: a handler runs only in the main thread of a process.)"""
    import signal

    arrived, released = threading.Event(), threading.Event()

    def hang() -> int | None:
        arrived.set()
        return None if released.wait(timeout=20) else 504  # answered once the handler ran

    r = Receiver(before=hang)

    def poke() -> None:
        arrived.wait(timeout=20)
        (sender,) = [t for t in threading.enumerate() if t.name.startswith("sink")]
        signal.pthread_kill(sender.ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, lambda *_: released.set())
    try:
        threading.Thread(target=poke, daemon=True).start()
        (one,) = incidents([finding(ROLE, T0, severity="high")])
        hook = build(sink(name="hook", type="webhook", url=r.url, retries=0))
        report = deliver([one], [hook], DeliveryState(), now=NOW)
        assert len(report.sent) == 1, report.dead_letters  # not the 504 of a handler too late
    finally:
        signal.signal(signal.SIGUSR1, previous)
        r.close()


def _in_seconds(seconds: int) -> str:
    """An HTTP date ``seconds`` from now, as a ``Retry-After`` may give one."""
    from email.utils import format_datetime

    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds), usegmt=True)


@contextlib.contextmanager
def _asks_to_wait(statuses: list[int], after: str) -> Iterator[tuple[str, list[str]]]:
    """A loopback receiver answering ``statuses`` in turn (then 429), each with
    ``Retry-After: after``: (its URL, the paths posted to it)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    posts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(self.path)
            self.send_response(statuses.pop(0) if statuses else 429)
            self.send_header("Retry-After", after)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", posts
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("after", ["7", "date"])
def test_a_throttled_sink_waits_as_long_as_it_asks(after):
    """429 with ``Retry-After: 7``: the next attempt came after the fixed backoff (1 s).
    Given as an HTTP date, the wait was dropped for the backoff (found by review)."""
    if after == "date":  # whole seconds: the date is 6 to 7 s away when it is read
        after = _in_seconds(7)
    with _asks_to_wait([429, 200], after) as (url, _posts):
        sleep = FakeSleep()
        cfg = sink(name="hook", type="webhook", url=url, retries=2)
        (one,) = incidents([finding(ROLE, T0, severity="high")])
        report = deliver([one], [build(cfg, sleep)], DeliveryState(), now=NOW)
        assert len(report.sent) == 1 and len(sleep.waits) == 1
        assert 5.0 < sleep.waits[0] <= 7.0


@pytest.mark.parametrize("after", ["120", "date"])
def test_a_sink_asking_for_a_long_wait_is_not_tried_again_before_it(after):
    """429 with ``Retry-After: 120`` was dropped as too long, and the sink was tried again
    1, 2 and 4 s later, and then every 30 s under a watch (found by review). The alert is
    not retried now: the sink is down for as long as asked, and its alerts wait."""
    if after == "date":
        after = _in_seconds(120)
    with _asks_to_wait([], after) as (url, posts):
        sleep = FakeSleep()
        cfg = sink(name="hook", type="webhook", url=url, retries=3)
        two = incidents([finding(ROLE, T0, severity="high"), finding(ROLE + "2", T0)])
        health: dict[str, SinkHealth] = {}
        report = deliver(two, [build(cfg, sleep)], DeliveryState(), now=NOW, health=health)
        assert len(posts) == 1 and sleep.waits == []  # asked once, and not again
        assert not report.sent and len(report.dead_letters) == 1 and len(report.waiting) == 1
        assert health["hook"].retry_at - time.monotonic() > 100  # not 30 s


def test_a_receiver_that_drips_its_answer_or_sends_a_huge_one_holds_no_run():
    """Each read of the socket is bounded by ``timeout``, not the answer: headers sent a
    byte at a time held a run for hours; a 200 with a huge body was read whole into
    memory. The request now has a deadline (3 x timeout) and the body is never read."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    dripped = threading.Event()  # the client went away while headers were still dripping
    bodies_sent: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/drip":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                try:
                    for _ in range(400):  # 400 header bytes, one per 0.05 s read window
                        self.wfile.write(b"X")
                        self.wfile.flush()
                        dripped.wait(0.05)  # the server's pace, not the test's
                except OSError:  # the client hung up: what the deadline does
                    dripped.set()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            sent = 0
            try:
                while sent < 1 << 30:
                    self.wfile.write(b"\0" * 65536)
                    sent += 65536
            except OSError:
                pass
            bodies_sent.append(sent)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (one,) = incidents([finding(ROLE, T0, severity="high")])
        drip = sink(name="drip", type="webhook", url=f"{base}/drip", retries=0, timeout="0.2s")
        report = deliver([one], [build(drip, FakeSleep())], DeliveryState(), now=NOW)
        assert report.sent == [] and len(report.dead_letters) == 1
        assert dripped.wait(30)  # cut before the 400 bytes (20 s) were sent
        huge = sink(name="huge", type="webhook", url=f"{base}/huge", retries=0)
        report = deliver([one], [build(huge, FakeSleep())], DeliveryState(), now=NOW)
        assert len(report.sent) == 1  # a 200 is delivered; its body is not ours to read
    finally:
        server.shutdown()
        server.server_close()
    assert bodies_sent and bodies_sent[0] < 1 << 30  # the client closed, not read it all


def test_a_receiver_that_drips_its_tls_handshake_holds_no_run():
    """An https receiver that sends its handshake a byte at a time, each within
    ``timeout``, fails the attempt as the drip of an answer does: the handshake is bounded
    as a whole (CPython's ssl bounds it by the socket timeout; the request deadline is
    armed before it too), so it cannot hold a run for as long as it drips."""
    import socket

    hung_up = threading.Event()  # the client went away while the handshake still dripped
    listener = socket.create_server(("127.0.0.1", 0))

    def drip_handshake() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the ClientHello
            try:
                # a handshake record announcing 16 KiB, then its bytes one per 0.05 s
                conn.sendall(b"\x16\x03\x03\x40\x00")
                for _ in range(400):  # 20 s of dripping, if nobody hangs up
                    conn.sendall(b"\x00")
                    hung_up.wait(0.05)  # the server's pace, not the test's
            except OSError:  # the client hung up: what the deadline does
                hung_up.set()

    server = threading.Thread(target=drip_handshake, daemon=True)
    server.start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/hook"
        drip = sink(name="drip", type="webhook", url=url, retries=0, timeout="0.2s")
        (one,) = incidents([finding(ROLE, T0, severity="high")])
        report = deliver([one], [build(drip, FakeSleep())], DeliveryState(), now=NOW)
        assert report.sent == [] and len(report.dead_letters) == 1
        assert hung_up.wait(30)  # cut before the 400 bytes (20 s) were sent
    finally:
        listener.close()
        server.join(30)


def test_what_is_owed_is_found_however_old_the_incident_or_long_the_outage(tmp_path, receiver):
    """`incidents deliver` read the incidents begun in the last nine days and updated in
    the last one: the resolve of a twelve-day-old incident (a retro-hunt's) never reached
    the sinks that had it, nor did the dead letters of a sink down for more than a day."""
    from detector.delivery.run import pending
    from detector.incidents import workflow

    lake = Lake(str(tmp_path / "lake"))
    df, ev = frames([finding(ROLE, T0, severity="high")])
    (old,) = workflow.update(lake, df, ev, now=T0).incidents
    hook = sink(name="hook", type="webhook", url=receiver.url, retries=0)
    first = send(lake, pending(lake, T0), [hook], now=T0)
    assert first.summary()["new"] == 1
    later = T0 + timedelta(days=12)
    workflow.set_incident_status(lake, old.incident_id, "resolved", "rotated", now=later)
    closing = send(lake, pending(lake, later), [hook], now=later)
    assert closing.summary()["updates"] == 1
    assert receiver.delivered[-1]["output_fields"]["detect.status"] == "resolved"

    df2, ev2 = frames([finding("arn:aws:iam::111122223333:role/ops", T0, severity="high")])
    (other,) = workflow.update(lake, df2, ev2, now=T0).incidents
    down = sink(name="pager", type="webhook", url="http://127.0.0.1:9/hook", retries=0)
    failed = send(lake, pending(lake, T0), [down], now=T0)
    assert failed.summary()["failed"] >= 1  # dead letters, one at least for `other`
    back = sink(name="pager", type="webhook", url=receiver.url, retries=0)
    three_days = T0 + timedelta(days=3)  # the sink was down for three days
    owed = {i.incident_id for i in pending(lake, three_days)}
    assert other.incident_id in owed
    report = send(lake, pending(lake, three_days), [back], now=three_days)
    assert other.incident_id in {s["incident_id"] for s in report.sent}


def test_alerts_that_waited_for_a_sink_down_are_owed_after_any_outage(tmp_path, receiver):
    """A sink that fails is down for the rest of the run: its other alerts wait, untried.
    Only the failed one had a dead letter, and a run more than a day later (what is owed:
    the last day's incidents and the dead letters) never sent the ones that waited."""
    from detector.delivery.run import pending
    from detector.incidents import workflow

    lake = Lake(str(tmp_path / "lake"))
    roles = [f"arn:aws:iam::111122223333:role/team-{i}" for i in range(3)]
    df, ev = frames([finding(role, T0, severity="high") for role in roles])
    made = workflow.update(lake, df, ev, now=T0).incidents
    assert len(made) == 3
    down = sink(name="pager", type="webhook", url="http://127.0.0.1:9/hook", retries=0)
    failed = send(lake, pending(lake, T0), [down], now=T0)
    assert (failed.summary()["failed"], failed.summary()["waiting"]) == (1, 2)
    # A check a minute later, the sink still down: the waiting ones are not filed again
    # (a watch checks every minute: a file of every waiting alert each time).
    send(lake, pending(lake, T0 + W), [down], now=T0 + W)
    assert read_dead_letters(lake).height == 3 + 1
    back = sink(name="pager", type="webhook", url=receiver.url, retries=0)
    two_days = T0 + timedelta(days=2)  # the sink was down for two days
    assert {i.incident_id for i in pending(lake, two_days)} == {i.incident_id for i in made}
    report = send(lake, pending(lake, two_days), [back], now=two_days)
    assert sorted(s["incident_id"] for s in report.sent) == sorted(i.incident_id for i in made)


def test_two_runs_delivering_at_once_send_each_alert_once_between_them(tmp_path):
    """Two runs (a `detect score` and a `detect watch`, two hourly jobs overlapping) each
    planned from the delivery records they had loaded and sent every incident twice. Both
    start together here; the receiver answers slowly, so the first is still sending when
    the second would plan."""
    lake = Lake(str(tmp_path / "lake"))
    pace = threading.Event()  # never set: each answer takes 0.1 s, the receiver's pace
    r = Receiver(before=lambda: pace.wait(0.1) and None)
    try:
        hook = sink(name="hook", type="webhook", url=r.url, retries=0)
        owed = incidents(
            [finding(f"arn:aws:iam::1:role/r{i}", T0, severity="high") for i in range(4)]
        )
        start = threading.Barrier(2)
        reports: list = []

        def run() -> None:
            start.wait()
            reports.append(send(lake, owed, [hook], now=NOW))

        runs = [threading.Thread(target=run) for _ in range(2)]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        keys = [q["headers"].get("Idempotency-Key") for q in r.requests]
        assert sorted(keys) == sorted({f"{i.incident_id}:v{i.version}" for i in owed})
        assert sorted(len(rep.sent) for rep in reports) == [0, 4]
    finally:
        r.close()


def test_records_another_run_saved_survive_this_runs_later_saves(tmp_path):
    """A delivery saves its records as it goes. When another run saved in between, the
    first save kept both runs' records, but the next save of this run's own state (its
    etag now current) wrote the other run's away: they would be sent again."""
    from detector.delivery.records import DeliveryStore

    lake = Lake(str(tmp_path / "lake"))
    ours, theirs = DeliveryStore(lake), DeliveryStore(lake)
    state = ours.load()
    other = theirs.load()
    other.record("inc-theirs", 1, "hook", "high", "bob", NOW)
    theirs.save(other)
    state.record("inc-ours", 1, "hook", "high", "alice", NOW)
    ours.save_merged(state, NOW)  # a conflict: both kept
    state.record("inc-later", 1, "hook", "high", "carol", NOW)
    ours.save_merged(state, NOW)  # no conflict now
    saved = DeliveryStore(lake).load()
    assert {k.split("|")[0] for k in saved.sent} == {"inc-theirs", "inc-ours", "inc-later"}


def test_records_another_run_pruned_are_not_written_back_by_a_merge(tmp_path):
    """A run that loaded the records before another pruned the old ones wrote them back
    when its save met the other's and merged: nothing dropped them again."""
    from detector.delivery.records import RETENTION, DeliveryStore

    lake = Lake(str(tmp_path / "lake"))
    old = NOW - RETENTION - timedelta(days=1)
    seed = DeliveryStore(lake)
    first = seed.load()
    first.record("inc-old", 1, "hook", "high", "bob", old)
    seed.save(first)
    ours, theirs = DeliveryStore(lake), DeliveryStore(lake)
    state, other = ours.load(), theirs.load()
    other.prune(NOW)
    theirs.save(other)  # the other run pruned it
    state.record("inc-new", 1, "hook", "high", "alice", NOW)
    ours.save_merged(state, NOW)  # a conflict: merged with what the other run saved
    assert {k.split("|")[0] for k in DeliveryStore(lake).load().sent} == {"inc-new"}


# --------------------------------------------------------------------------- slack
def test_slack_message_is_readable(receiver, monkeypatch):
    monkeypatch.setenv("TEST_SLACK", receiver.url)
    cfg = sink(name="slack", type="slack", url_env="TEST_SLACK", lake="s3://audit-lake/prod")
    deliver(incidents(), [build(cfg)], DeliveryState(), now=NOW)
    (msg,) = receiver.delivered
    text = json.dumps(msg)
    assert msg["text"].startswith("[HIGH] New incident:")
    for needle in ("prod", ROLE, "rule:exec", "detect incidents show", "s3://audit-lake/prod"):
        assert needle in text
    with pytest.raises(sink_config.SinkConfigError, match="unknown key"):
        sink(name="s", type="slack", url=receiver.url)  # a Slack URL is a secret


# --------------------------------------------------------------------------- AWS
def test_sns_publishes_the_incident(aws):
    topic = boto3.client("sns").create_topic(Name="alerts")["TopicArn"]
    url, arn = queue("sns-alerts")
    boto3.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    report = deliver(
        incidents(),
        [build(sink(name="sns", type="sns", topic_arn=topic))],
        DeliveryState(),
        now=NOW,
    )
    assert report.summary()["new"] == 1
    (note,) = drain(url)
    doc = json.loads(note["Message"])
    assert note["Subject"].startswith("[high]")
    assert doc["kind"] == "new" and doc["principal"] == ROLE and doc["version"] == 1


def test_eventbridge_puts_one_detail_type_per_kind(aws):
    events = boto3.client("events")
    url, arn = queue("eb-alerts")
    events.put_rule(Name="alerts", EventPattern=json.dumps({"source": ["audit-detector"]}))
    events.put_targets(Rule="alerts", Targets=[{"Id": "q", "Arn": arn}])
    eb = build(sink(name="eb", type="eventbridge"))
    (inc,) = incidents()
    state = deliver([inc], [eb], DeliveryState(), now=NOW).state
    deliver([grow(inc, "critical")], [eb], state, now=NOW + timedelta(minutes=1))
    got = drain(url)
    assert [g["detail-type"] for g in got] == [
        "Audit Detector Incident Created",
        "Audit Detector Incident Updated",
    ]
    assert {g["detail"]["incident_id"] for g in got} == {inc.incident_id}


class PartialFailureProxy(FaultProxy):
    """In front of moto: marks the first ``n`` findings of the first import as failed with
    InternalFailure, as Security Hub does under load (moto itself only fails bad input)."""

    def __init__(self, upstream: str, n: int) -> None:
        super().__init__(upstream, operations=())
        self.n = n
        self.calls: list[int] = []

    def _forward(self, method, path, headers, body):
        status, hdrs, payload = super()._forward(method, path, headers, body)
        if path.startswith("/findings/import"):
            sent = json.loads(body)["Findings"]
            self.calls.append(len(sent))
            if len(self.calls) == 1:
                doc = json.loads(payload)
                doc["FailedFindings"] = [
                    {"Id": f["Id"], "ErrorCode": "InternalFailure", "ErrorMessage": "retry"}
                    for f in sent[: self.n]
                ]
                doc["FailedCount"], doc["SuccessCount"] = self.n, len(sent) - self.n
                payload = json.dumps(doc).encode()
        return status, hdrs, payload


def test_security_hub_batches_of_100_retry_partial_failures_and_update_in_place(aws, monkeypatch):
    rows = [finding(f"arn:aws:iam::1:role/r{i}", T0, severity="medium") for i in range(130)]
    incs = incidents(rows)
    with PartialFailureProxy(aws, n=3) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        sleep = FakeSleep()
        hub = build(
            sink(name="hub", type="securityhub", account_id="123456789012", region="us-east-1"),
            sleep=sleep,
        )
        report = deliver(incs, [hub], DeliveryState(), now=NOW)
        assert proxy.calls == [100, 3, 30] and sleep.waits == [1.0]
        assert report.summary()["new"] == 130 and not report.dead_letters
        v2 = grow(incs[0], "critical")
        assert v2.incident_id == incs[0].incident_id
        deliver([v2], [hub], report.state, now=NOW + timedelta(minutes=1))
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    client = boto3.client("securityhub")
    found = []
    for page in client.get_paginator("get_findings").paginate():
        found += page["Findings"]
    assert len(found) == 130  # the update replaced the finding with the same Id
    updated = [f for f in found if f["Id"] == payloads.asff_id(incs[0])]
    assert updated[0]["Severity"]["Label"] == "CRITICAL"


# --------------------------------------------------------------------------- OCSF
def _subset(ours, theirs, path="") -> list[str]:
    """Paths in ``ours`` that the validated model dropped or changed (misnamed fields)."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path]
        out = []
        for k, v in ours.items():
            if k == "unmapped":  # free-form by definition
                continue
            out += [f"{path}.{k}"] if k not in theirs else _subset(v, theirs[k], f"{path}.{k}")
        return out
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [path]
        return [p for a, b in zip(ours, theirs, strict=True) for p in _subset(a, b, path)]
    return [] if ours == theirs else [path]


def validate_ocsf(record: dict) -> None:
    from py_ocsf_models.events.findings.detection_finding import DetectionFinding

    model = DetectionFinding.model_validate(record)
    dumped = json.loads(model.model_dump_json(exclude_none=True))
    assert _subset(record, dumped) == []
    assert model.class_uid == 2004 and model.type_uid == 2004 * 100 + record["activity_id"]


def test_ocsf_json_lines_are_valid_detection_findings(tmp_path):
    out = tmp_path / "ocsf" / "findings.jsonl"
    oc = build(
        sink(name="ocsf", type="ocsf", path=str(out), account_id="123456789012", region="eu-west-1")
    )
    # ATT&CK as the rules map it: a technique, and a sub-technique under its parent (the
    # records a rule with a technique produced failed the validator: no technique name)
    (inc,) = incidents(
        [
            finding(ROLE, T0, severity="high", detector="rule:exec", tactic="Execution",
                    technique="T1609"),
            finding(ROLE, T0 + W, severity="medium", tactic="Execution",
                    technique="T1098.006"),
        ]
    )  # fmt: skip
    from detector.incidents.workflow import apply_status

    state = deliver([inc], [oc], DeliveryState(), now=NOW).state
    grown = grow(inc, "critical")
    state = deliver([grown], [oc], state, now=NOW + timedelta(minutes=1)).state
    apply_status(grown, "resolved", "rotated", NOW + timedelta(minutes=2))
    deliver([grown], [oc], state, now=NOW + timedelta(minutes=2))
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    # created, updated, closed (a resolve was an Update with status Resolved)
    assert [x["activity_id"] for x in lines] == [1, 2, 3]
    assert [x["status_id"] for x in lines] == [1, 1, 4]
    attacks = lines[0]["finding_info"]["attacks"]
    assert {"uid": "T1609", "name": "Container Administration Command"} in [
        a["technique"] for a in attacks
    ]
    sub = next(a for a in attacks if "sub_technique" in a)
    assert sub["technique"] == {"uid": "T1098", "name": "Account Manipulation"}
    assert sub["sub_technique"] == {
        "uid": "T1098.006",
        "name": "Additional Container Cluster Roles",
    }
    assert {x["finding_info"]["uid"] for x in lines} == {inc.incident_id}
    for rec in lines:
        validate_ocsf(rec)


def test_every_technique_a_shipped_rule_or_scenario_gives_has_its_attack_name():
    from detector.rules import load_ruleset
    from detector.rules.attack import TECHNIQUES
    from detector.simulate.attacks import SCENARIOS

    given = {r.technique for r in load_ruleset().rules if r.technique}
    given |= {technique for _tactic, technique, _ in SCENARIOS.values()}
    assert given and given <= set(TECHNIQUES), sorted(given - set(TECHNIQUES))
    assert {t.split(".")[0] for t in given} <= set(TECHNIQUES)  # the parents too


def test_ocsf_parquet_lands_in_the_security_lake_layout_on_s3(aws, s3_bucket):
    oc = build(
        sink(
            name="lake",
            type="ocsf",
            format="parquet",
            path=f"s3://{s3_bucket}",
            source_name="k8s-audit",
            account_id="123456789012",
            region="eu-west-1",
        )
    )
    report = deliver(incidents(), [oc], DeliveryState(), now=NOW)
    assert report.summary()["new"] == 1
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    (key,) = keys
    assert key.startswith(
        "ext/k8s-audit/region=eu-west-1/accountId=123456789012/eventDay=20261127/"
    )
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    row = pl.read_parquet(body).row(0, named=True)
    assert row["class_uid"] == 2004 and row["finding_info"]["uid"] == incidents()[0].incident_id
    row = _without_nulls(row)  # a member a record lacks is a null in the file's one schema
    validate_ocsf(
        {
            **row,
            "unmapped": json.loads(row["unmapped"]),
            "evidences": [{**e, "data": json.loads(e["data"])} for e in row["evidences"]],
        }
    )


def _without_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_every_security_lake_file_has_the_one_ocsf_schema_and_loses_nothing(tmp_path):
    """The schema was inferred from each batch: an incident without ATT&CK tactics wrote a
    file without ``finding_info.attacks`` beside one with it under one eventDay, and Glue
    and Athena read a custom source with one table schema (found by review). And a record
    with every optional member (a sub-technique, a region and an account, cut lists) is
    stored whole: a member the schema missed would be dropped without a word."""
    from detector.delivery.ocsf_parquet import OCSF_PARQUET_SCHEMA, ocsf_table
    from detector.delivery.payloads import Alert, ocsf

    root = tmp_path / "sl"
    oc = sink(
        name="lake", type="ocsf", format="parquet", path=str(root),
        source_name="k8s", account_id="123456789012", region="eu-west-1",
    )  # fmt: skip
    tagged = finding(ROLE, T0, severity="high", tactic="Persistence", technique="T1098.006")
    plain = finding(ROLE + "2", T0, severity="medium", detector="model:iforest")
    for row in (tagged, plain):  # two sends: two files
        deliver(incidents([row]), [build(oc)], DeliveryState(), now=NOW)
    files = sorted(root.rglob("*.parquet"))
    assert len(files) == 2
    schemas = [pq.read_schema(f) for f in files]
    assert all(s.remove_metadata() == OCSF_PARQUET_SCHEMA for s in schemas)

    inc = incidents([tagged])[0]
    many = inc.source_ips + [f"10.0.0.{i}" for i in range(40)]  # past the lists' cut
    record = ocsf(
        Alert(replace(inc, source_ips=many), "new"), account_id="123456789012", region="r"
    )
    assert record["finding_info"]["attacks"][0]["sub_technique"]["uid"] == "T1098.006"
    assert record["unmapped"]["truncated"]
    flat = {
        **record,
        "unmapped": orjson.dumps(record["unmapped"]).decode(),
        "evidences": [{**e, "data": orjson.dumps(e["data"]).decode()} for e in record["evidences"]],
    }
    assert _without_nulls(ocsf_table([flat]).to_pylist()[0]) == _without_nulls(flat)


# --------------------------------------------------------------------------- config
def test_sink_config_errors_name_the_sink_and_key():
    with pytest.raises(sink_config.SinkConfigError, match=r"'a'.*exactly one of url_env"):
        sink_config.parse_sinks([{"name": "a", "type": "webhook"}])
    with pytest.raises(sink_config.SinkConfigError, match="https://"):
        sink_config.parse_sinks([{"name": "a", "type": "webhook", "url": "http://example.com/x"}])
    with pytest.raises(sink_config.SinkConfigError, match="used twice"):
        sink_config.parse_sinks([{"name": "a", "type": "sns", "topic_arn": "x"}] * 2)
    with pytest.raises(sink_config.SinkConfigError, match="source_name must be"):
        sink_config.parse_sinks(
            [{"name": "a", "type": "ocsf", "format": "parquet", "path": "/x", "source_name": ".."}]
        )
    with pytest.raises(sink_config.SinkConfigError, match="needs region and account_id"):
        # Security Lake files by region and account: a guess filed them as us-east-1 and
        # 000000000000, where nothing attributes them
        sink_config.parse_sinks(
            [
                {
                    "name": "a",
                    "type": "ocsf",
                    "format": "parquet",
                    "path": "/x",
                    "region": "eu-west-1",
                }
            ]
        )
    with pytest.raises(sink_config.SinkConfigError, match="DETECT_NOPE"):
        build(sink(name="a", type="webhook", url_env="DETECT_NOPE"))
    # Found at start-up, not at the first alert (each of these failed there, or hung):
    for key, value, why in [
        ("secret_env", 5, "non-empty string"),
        ("url_file", "", "non-empty string"),
        ("url_env", "MY HOOK", "name an environment variable"),
        ("secret_file", "key\x00", "control characters"),
        ("allow_http", "yes", "true or false"),
        ("backoff", float("inf"), "at most 3650d"),
        ("timeout", 1e308, "at most 3650d"),
    ]:
        cfg = {"name": "a", "type": "webhook", "url": "https://example.com/x", key: value}
        if key in ("url_file", "url_env"):
            del cfg["url"]
        with pytest.raises(sink_config.SinkConfigError, match=f"'a': {key} .*{why}"):
            sink_config.parse_sinks([cfg])
    account = sink_config.parse_sinks(
        [{"name": "a", "type": "securityhub", "account_id": 123456789012}]
    )[0].options["account_id"]
    assert account == "123456789012"  # a TOML number, taken as its digits
    for region in ("us east", "us_east_1"):
        with pytest.raises(sink_config.SinkConfigError, match="region must be an AWS region"):
            sink_config.parse_sinks(
                [{"name": "a", "type": "sns", "topic_arn": "x", "region": region}]
            )


def test_a_secret_written_where_its_variable_name_goes_is_never_printed(monkeypatch):
    """``url_env = "https://hooks.slack.com/..."`` or ``secret_env = "<the key>"``: the
    refusal, the unset-variable error and ``config show`` say so without the value (each
    printed it, found by review). An UPPER_CASE name is shown as it is."""
    hook = "https://hooks.slack.com/services/T0/B0/s3cr3tPathPart"
    with pytest.raises(sink_config.SinkConfigError) as err:
        sink_config.parse_sinks([{"name": "a", "type": "slack", "url_env": hook}])
    assert "s3cr3tPathPart" not in str(err.value) and "url_env" in str(err.value)
    monkeypatch.delenv("hmacS3cretValue", raising=False)
    (cfg,) = sink_config.parse_sinks(
        [
            {
                "name": "a",
                "type": "webhook",
                "url": "https://example.com/x",
                "secret_env": "hmacS3cretValue",
            }
        ]
    )
    assert "hmacS3cretValue" not in cfg.describe() and "NOT SET" in cfg.describe()
    with pytest.raises(sink_config.SecretMissing) as missing:
        cfg.check_secrets()
    assert "hmacS3cretValue" not in str(missing.value) and "'a'" in str(missing.value)
    digest = "F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
    (upper,) = sink_config.parse_sinks(
        [{"name": "a", "type": "webhook", "url": "https://example.com/x", "secret_env": digest}]
    )
    assert digest not in upper.describe()  # upper case, but no variable is named so
    monkeypatch.setenv("HOOK_KEY", "x")
    (named,) = sink_config.parse_sinks(
        [{"name": "a", "type": "webhook", "url": "https://example.com/x", "secret_env": "HOOK_KEY"}]
    )
    assert "secret_env=HOOK_KEY (set)" in named.describe()


def test_a_sink_secret_file_that_cannot_be_read_is_one_clear_error(tmp_path):
    """Missing, not text (a key saved in binary), or far too big: the sink and the file are
    named, the secret never printed, and no error from inside Python escapes."""
    binary = tmp_path / "key.bin"
    binary.write_bytes(b"\xffsecret\xfe")
    big = tmp_path / "big.key"
    big.write_bytes(b"k" * (16 * 2**20 + 1))
    for path, why in [
        (binary, "not UTF-8 text"),
        (tmp_path / "missing.key", "No such file"),
        (big, "larger than 16 MB"),
    ]:
        cfg = sink(name="a", type="webhook", url="https://example.com/x", secret_file=str(path))
        with pytest.raises(sink_config.SinkConfigError) as err:
            build(cfg)
        assert f"sink 'a': secret_file {path} cannot be read: {why}" in str(err.value)
        assert "secret" not in str(err.value).replace("secret_file", "")


def test_an_incident_suppressed_after_it_was_sent_is_closed_where_it_was_sent(aws, tmp_path):
    """A suppression written after an incident reached the sinks (the range scored again)
    left it open in Security Hub (ACTIVE, workflow NEW) and in the OCSF store, for ever
    (found by review). Like a resolve, it now reaches each sink that had it, as a closing
    update: Security Hub's workflow SUPPRESSED, OCSF's Close with status Suppressed. An
    incident suppressed before any send is still sent nowhere (above)."""
    hub = sink(name="hub", type="securityhub", account_id="123456789012", region="us-east-1")
    ocsf_file = tmp_path / "findings.ocsf.jsonl"
    store = sink(name="store", type="ocsf", path=str(ocsf_file))
    (inc,) = incidents()
    state = deliver([inc], [build(hub), build(store)], DeliveryState(), now=NOW).state
    inc.status, inc.version, inc.suppression = "suppressed", inc.version + 1, "ci-runner"
    report = deliver([inc], [build(hub), build(store)], state, now=NOW + timedelta(minutes=6))
    assert report.summary()["updates"] == 2
    pages = boto3.client("securityhub").get_paginator("get_findings").paginate()
    (stored,) = [f for p in pages for f in p["Findings"] if f["Id"] == payloads.asff_id(inc)]
    assert stored["Workflow"]["Status"] == "SUPPRESSED"
    opened, closed = [json.loads(line) for line in ocsf_file.read_text().splitlines()]
    assert (opened["activity_name"], opened["status"]) == ("Create", "New")
    assert (closed["activity_name"], closed["status"]) == ("Close", "Suppressed")
    later = NOW + timedelta(hours=1)
    assert deliver([inc], [build(hub), build(store)], report.state, now=later).sent == []
    # more suppressed findings join it: a new version, and no second closing (review)
    inc.version += 1
    again = NOW + timedelta(hours=2)
    assert deliver([inc], [build(hub), build(store)], report.state, now=again).sent == []


def test_a_resolved_incident_is_archived_in_security_hub(aws):
    """Security Hub keeps a finding ACTIVE until told otherwise: resolving the incident in
    the tool must reach it as Workflow RESOLVED and RecordState ARCHIVED, same finding Id."""
    from detector.incidents.workflow import apply_status

    hub = build(sink(name="hub", type="securityhub", account_id="123456789012", region="us-east-1"))
    (inc,) = incidents()
    state = deliver([inc], [hub], DeliveryState(), now=NOW).state
    apply_status(inc, "resolved", "key rotated", NOW + timedelta(minutes=5))
    report = deliver([inc], [hub], state, now=NOW + timedelta(minutes=6))
    assert report.summary()["updates"] == 1
    hub_id = payloads.asff_id(inc)
    pages = boto3.client("securityhub").get_paginator("get_findings").paginate()
    # the server is shared with the other tests of this worker: find ours by its Id
    (stored,) = [f for page in pages for f in page["Findings"] if f["Id"] == hub_id]
    assert stored["Workflow"]["Status"] == "RESOLVED" and stored["RecordState"] == "ARCHIVED"
    assert deliver([inc], [hub], report.state, now=NOW + timedelta(hours=1)).sent == []
