"""An alert reaches its sink whatever the incident quotes, and one alert a receiver refuses
never holds back the others.

Incidents quote what a request carried (user agents, names, a namespace from a URL path):
an attacker chooses them. Before, a few findings quoting long user agents made a Slack
section past Block Kit's 3,000 characters, a 300 KB namespace made an SNS message past
256 KB, and each refused alert marked its sink down: every later alert of the sink, the
attack that followed included, waited behind it run after run for the 30 days its dead
letter was owed.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import orjson
import pytest
from alerts_data import T0, W, drain, finding, frames, queue
from hypothesis import given, settings
from hypothesis import strategies as st
from throttle_proxy import FaultProxy

from detector.delivery import config as sink_config
from detector.delivery import payloads
from detector.delivery.deliver import deliver
from detector.delivery.records import DeliveryState
from detector.delivery.sinks import build as build_sink
from detector.incidents.group import Incident, group

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ATTACKER = "arn:aws:iam::111122223333:role/dev/mallory"
VICTIM = "arn:aws:iam::111122223333:role/admin/alice"
#: SNS's message limit and EventBridge's entry limit.
AWS_MESSAGE_BYTES = 256 * 1024
#: The EventBridge source of this module's events: test_delivery's rule on the shared moto
#: server matches audit-detector's, and its queue must not get these.
BOUNDS_SOURCE = "audit-detector.bounds-test"


def no_sleep(_seconds: float) -> None:
    """Backoff waits skipped (no sleeps in tests)."""


def sink(**kw) -> sink_config.SinkConfig:
    return sink_config.parse_sink({"backoff": "1s", "retries": 0, **kw}, "test")


def base_incident() -> Incident:
    df, ev = frames(
        [
            finding(ATTACKER, T0, severity="high", detector="rule:exec", tactic="Execution"),
            finding(ATTACKER, T0 + W, severity="medium"),
        ]
    )
    (inc,), _ = group(df, [], events=ev, now=T0)
    return inc


def hostile(inc: Incident, text: str, items: list[str]) -> Incident:
    """``inc`` quoting ``text`` wherever a request's strings reach an incident."""
    timeline = [{**t, "title": f"{t['title']} {text}"} for t in inc.timeline]
    return replace(
        inc,
        title=text,
        principal=text,
        severity_reason=text,
        source_ips=items,
        namespaces=items,
        finding_ids=[f"f{i:019d}" for i in range(len(items) * 10)],
        timeline=timeline * 4,
    )


# Control characters (JSON writes each as six bytes), mrkdwn's specials, line breaks,
# characters outside the BMP, and plain text; short and very long.
_CHARS = st.sampled_from(["\x00", "\x1b", "\n", "\r", "\t", "<", ">", "&", "*", "é", "😀", "a"])
_TEXT = st.one_of(
    st.text(_CHARS, max_size=300),
    st.builds(lambda c, n: c * n, _CHARS, st.integers(3_000, 300_000)),
)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(text=_TEXT, items=st.lists(_TEXT, max_size=40))
def test_every_payload_stays_within_its_receivers_limits(text, items):
    alert = payloads.Alert(hostile(base_incident(), text, items), "new")

    msg = payloads.slack(alert)
    header, fields, why, context = msg["blocks"]
    assert len(header["text"]["text"]) <= 150
    assert all(len(f["text"]) <= 2000 for f in fields["fields"])
    assert len(why["text"]["text"]) <= 3000 and len(context["elements"][0]["text"]) <= 3000
    assert len(msg["text"]) <= 3000
    # Nothing from the lake is read as mrkdwn (a link, <!channel>) or starts a line of its
    # own (a field an attacker drew), in the blocks and in the notification text alike.
    assert "<" not in msg["text"] and ">" not in msg["text"]
    for field in fields["fields"]:
        _name, value = field["text"].split("\n", 1)
        assert "<" not in value and "\n" not in value
    # Nor is an address in it made a link, a mention parsed, or a preview fetched (review)
    texts = [*fields["fields"], why["text"], *context["elements"]]
    assert all(t["verbatim"] is True for t in texts)
    assert msg["unfurl_links"] is False and msg["unfurl_media"] is False

    doc = orjson.dumps(payloads.incident_doc(alert))
    subject = payloads.sns_subject(alert)
    assert len(doc) + len(subject) < AWS_MESSAGE_BYTES
    assert len(subject) <= 100 and all(" " <= c <= "~" for c in subject)
    entry = payloads.eventbridge_entry(alert, "audit-detector", "default")
    assert len(entry["Detail"].encode()) < AWS_MESSAGE_BYTES
    falco = payloads.falcosidekick(alert)
    assert len(orjson.dumps(falco)) < AWS_MESSAGE_BYTES
    # its `output` is a line people read (falcosidekick forwards it to syslog, Loki...)
    assert not {"\n", "\r", "\x00", "\x1b"} & set(falco["output"])
    asff = payloads.asff(alert, "111122223333", "us-east-1", now=NOW)
    assert len(asff["Title"]) <= 256 and len(asff["Description"]) <= 1024
    assert not {"\n", "\x00", "\x1b"} & set(asff["Title"] + asff["Description"])
    # OCSF was not bounded at all: a 150 KB principal made a 1.8 MB record (review)
    assert len(orjson.dumps(payloads.ocsf(alert, account_id="1", region="r"))) < 256 * 1024


def test_a_cut_list_says_how_many_it_had():
    items = [f"ns-{i}" for i in range(45)]
    inc = hostile(base_incident(), "x", items)
    doc = payloads.incident_doc(payloads.Alert(inc, "new"))
    assert doc["namespaces"] == items[: payloads.LIST_ITEMS]
    assert doc["truncated"] == {"source_ips": 45, "namespaces": 45, "finding_ids": 450}
    small = payloads.incident_doc(payloads.Alert(base_incident(), "new"))
    assert "truncated" not in small  # the documented shape when nothing was cut


class Gateway:
    """A loopback receiver behind a gateway that refuses bodies over ``limit`` bytes
    (413, as API Gateway and most proxies do) and answers 400 to any body naming one of
    ``refused`` (a receiver that will not take a character or a field)."""

    def __init__(self, limit: int, refused: tuple[str, ...] = ()) -> None:
        self.accepted: list[dict] = []
        self.refused: list[bytes] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 200
                if len(body) > limit:
                    status = 413
                elif any(word.encode() in body for word in refused):
                    status = 400
                if status == 200:
                    gateway.accepted.append(json.loads(body))
                else:
                    gateway.refused.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-PATH"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def roles(n: int) -> list[Incident]:
    """``n`` incidents, one high finding each of as many IAM roles."""
    incs = []
    for i in range(n):
        df, ev = frames([finding(f"arn:aws:iam::1:role/r{i}", T0, severity="high")])
        incs += group(df, [], events=ev, now=T0)[0]
    return incs


def poison_and_victim() -> tuple[Incident, Incident]:
    """A big incident of an attacker's making, first, and a later critical one."""
    rows = [
        finding(ATTACKER, T0 + i * W, severity="medium", title=f"new user agent {'A' * 400} {i}")
        for i in range(30)
    ]
    rows.append(
        finding(VICTIM, T0 + 40 * W, severity="critical", detector="rule:exec", tactic="Execution")
    )
    df, ev = frames(rows)
    incs, _ = group(df, [], events=ev, now=T0)
    poison = next(i for i in incs if i.principal == ATTACKER)
    victim = next(i for i in incs if i.principal == VICTIM)
    return poison, victim


def test_an_alert_the_receiver_refuses_is_sent_shortened_and_holds_back_nothing():
    poison, victim = poison_and_victim()
    full = len(orjson.dumps(payloads.falcosidekick(payloads.Alert(poison, "new"))))
    gateway = Gateway(limit=full // 2)
    try:
        hook = build_sink(sink(name="hook", type="webhook", url=gateway.url), sleep=no_sleep)
        report = deliver([poison, victim], [hook], DeliveryState(), now=NOW)
    finally:
        gateway.close()
    assert report.summary()["new"] == 2
    assert (report.dead_letters, report.waiting) == ([], [])
    assert len(gateway.refused) == 1 and len(gateway.accepted) == 2
    short, critical = gateway.accepted
    assert "[shortened]" in short["output"]
    # Recorded as the alert it stands for: the same incident and version, sent once.
    fields = short["output_fields"]
    assert (fields["detect.incident.id"], fields["detect.incident.version"]) == (
        poison.incident_id,
        poison.version,
    )
    assert report.state.delivered(poison.incident_id, "hook")["version"] == poison.version
    assert critical["output_fields"]["detect.incident.id"] == victim.incident_id


def test_an_alert_refused_even_shortened_is_owed_waits_and_the_others_go_through():
    """A refusal repeats (the same alert gives the same bytes): the alert is owed, and
    tried again an hour later, then two, not at every run (a watch checks each minute)."""
    poison, victim = poison_and_victim()
    gateway = Gateway(limit=10**9, refused=(poison.incident_id,))
    state = DeliveryState()
    dead_letters, refused_counts = [], []
    try:
        for minutes in (0, 1, 61, 62, 181):
            hook = build_sink(sink(name="hook", type="webhook", url=gateway.url), sleep=no_sleep)
            report = deliver([poison, victim], [hook], state, now=NOW + timedelta(minutes=minutes))
            state = report.state
            assert report.waiting == []
            dead_letters.append([d["error"] for d in report.dead_letters])
            refused_counts.append(report.summary()["refused"])
    finally:
        gateway.close()
    error = "sink hook: HTTP 400; shortened: sink hook: HTTP 400"
    assert dead_letters == [[error], [], [error], [], [error]]
    assert refused_counts == [0, 1, 0, 1, 0]  # owed and said so while it waits
    assert "SECRET-PATH" not in error
    # The critical alert went out on the first run, once; the refused one stays owed.
    assert [a["output_fields"]["detect.incident.id"] for a in gateway.accepted] == [
        victim.incident_id
    ]
    assert state.delivered(poison.incident_id, "hook") is None
    assert len(gateway.refused) == 6  # full and shortened, at 0, 61 and 181 minutes
    # A new version of the incident is news: tried at once.
    grown = replace(poison, version=poison.version + 1)
    gateway = Gateway(limit=10**9)
    try:
        hook = build_sink(sink(name="hook", type="webhook", url=gateway.url), sleep=no_sleep)
        report = deliver([grown], [hook], state, now=NOW + timedelta(minutes=182))
    finally:
        gateway.close()
    assert report.summary()["updates"] == 0 and report.summary()["new"] == 1


def test_a_receiver_that_refuses_everything_gets_each_alert_twice_then_waits():
    """A webhook URL that is not the endpoint it should be answers 400 to every alert: each
    is tried full and shortened, then waits an hour; it is not sent twice a minute."""
    incs = [poison_and_victim()[1]]
    incs += roles(4)
    gateway = Gateway(limit=10**9, refused=("incident",))
    state = DeliveryState()
    try:
        for minutes in range(5):  # a watch's checks, a minute apart
            hook = build_sink(sink(name="hook", type="webhook", url=gateway.url), sleep=no_sleep)
            state = deliver(incs, [hook], state, now=NOW + timedelta(minutes=minutes)).state
    finally:
        gateway.close()
    assert len(gateway.refused) == 2 * len(incs)


def test_a_sink_that_refuses_the_sender_is_still_down():
    """401/403/404 refuse the sink's address or credentials, not an alert: its other
    alerts wait (one request, not one per alert)."""
    poison, victim = poison_and_victim()
    calls: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append(403)
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        hook = build_sink(sink(name="hook", type="webhook", url=url), sleep=no_sleep)
        report = deliver([poison, victim], [hook], DeliveryState(), now=NOW)
    finally:
        server.shutdown()
        server.server_close()
    assert calls == [403]
    assert (len(report.dead_letters), len(report.waiting)) == (1, 1)


def test_sns_takes_an_incident_with_a_huge_namespace_and_a_control_character(aws):
    """moto checks SNS's 256 KB message limit; AWS also refuses a Subject holding a
    control character, which moto does not check (the subject is asserted instead)."""
    _, victim = poison_and_victim()
    df, ev = frames(
        [finding(ATTACKER, T0, severity="high", title="x\r\x1b[2J"), finding(ATTACKER, T0 + W)],
        namespace="n" * 300_000,
    )
    (poison,), _ = group(df, [], events=ev, now=T0)
    # names of their own: the moto server is shared with test_delivery's queues and rules
    topic = boto3.client("sns").create_topic(Name="bounds-alerts")["TopicArn"]
    url, arn = queue("bounds-sns-alerts")
    boto3.client("sns").subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    sns = build_sink(sink(name="sns", type="sns", topic_arn=topic), sleep=no_sleep)
    report = deliver([poison, victim], [sns], DeliveryState(), now=NOW)
    assert report.summary()["new"] == 2 and report.dead_letters == []
    notes = drain(url)
    docs = {json.loads(n["Message"])["incident_id"]: n for n in notes}
    assert set(docs) == {poison.incident_id, victim.incident_id}
    subject = docs[poison.incident_id]["Subject"]
    assert all(" " <= c <= "~" for c in subject)


class PutEventsLimit(FaultProxy):
    """In front of moto: refuses a PutEvents call over ``limit`` bytes as EventBridge does
    (400 ValidationException for the whole call; moto does not check the size)."""

    def __init__(self, upstream: str, limit: int) -> None:
        super().__init__(upstream, operations=())
        self.limit = limit
        self.sizes: list[int] = []

    def _forward(self, method, path, headers, body):
        if headers.get("X-Amz-Target", "").endswith(".PutEvents"):
            self.sizes.append(len(json.loads(body)["Entries"]))
            if len(body) > self.limit:
                error = {"__type": "ValidationException", "message": "Total size over limit"}
                return (
                    400,
                    [("Content-Type", "application/x-amz-json-1.1")],
                    json.dumps(error).encode(),
                )
        return super()._forward(method, path, headers, body)


def test_eventbridge_puts_alone_the_entries_of_a_call_refused_for_its_size(aws, monkeypatch):
    incs = roles(4)
    one = len(payloads.eventbridge_entry(payloads.Alert(incs[0], "new"), "s", "b")["Detail"])
    events = boto3.client("events")
    url, arn = queue("bounds-eb-alerts")
    events.put_rule(Name="bounds-alerts", EventPattern=json.dumps({"source": [BOUNDS_SOURCE]}))
    events.put_targets(Rule="bounds-alerts", Targets=[{"Id": "q", "Arn": arn}])
    with PutEventsLimit(aws, limit=3 * one) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        eb = build_sink(sink(name="eb", type="eventbridge", source=BOUNDS_SOURCE), sleep=no_sleep)
        report = deliver(incs, [eb], DeliveryState(), now=NOW)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    assert proxy.sizes == [4, 1, 1, 1, 1]
    assert report.summary()["new"] == 4 and report.dead_letters == []
    assert {e["detail"]["incident_id"] for e in drain(url)} == {i.incident_id for i in incs}


class RefusesTheSender(FaultProxy):
    """In front of moto: every PutEvents entry fails with AccessDeniedException, as
    EventBridge answers a caller the bus's policy does not let publish (moto has no bus
    policies to refuse with)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, operations=())
        self.calls = 0

    def _forward(self, method, path, headers, body):
        if not headers.get("X-Amz-Target", "").endswith(".PutEvents"):
            return super()._forward(method, path, headers, body)
        self.calls += 1
        entries = json.loads(body)["Entries"]
        answer = {
            "FailedEntryCount": len(entries),
            "Entries": [{"ErrorCode": "AccessDeniedException", "ErrorMessage": "no"}]
            * len(entries),
        }
        return 200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(answer).encode()


def test_a_record_code_that_refuses_the_sender_marks_the_sink_down(aws, monkeypatch):
    """Only codes that refuse a record's content (MalformedDetail, InvalidArgument,
    InvalidInput) are the record's fault; AccessDenied refuses every record alike: no
    shortened re-send of each, and the sink is down, as for a 403."""
    from detector.delivery.deliver import SinkHealth

    incs = roles(3)
    health: dict[str, SinkHealth] = {}
    with RefusesTheSender(aws) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        eb = build_sink(sink(name="eb", type="eventbridge", source=BOUNDS_SOURCE), sleep=no_sleep)
        report = deliver(incs, [eb], DeliveryState(), now=NOW, health=health)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    assert proxy.calls == 1 and len(report.dead_letters) == 3
    assert health["eb"].failures == 1  # down: the next batch's alerts wait


def test_a_fenced_leader_sends_no_shortened_alert(monkeypatch):
    """A `detect watch` leader replaced mid-delivery (its checkpoint raises the fence)
    sends nothing more, shortened alerts included: the new leader sends them. In-process
    sink clients, as no server can hold an answer until another thread's checkpoint ran."""
    import threading as th

    from detector.delivery import deliver as deliver_mod
    from detector.delivery.sinks import Outcome, Sink

    monkeypatch.setattr(deliver_mod, "CHECKPOINT_EVERY", 0.0)
    started, fenced = th.Event(), th.Event()
    imports: list[list[str]] = []

    class Hub:  # refuses every full finding once the fence has been raised
        def batch_import_findings(self, Findings):
            started.set()
            fenced.wait(timeout=30)
            imports.append([f["Title"] for f in Findings])
            return {"FailedFindings": [{"Id": f["Id"], "ErrorCode": "InvalidInput"}
                                       for f in Findings]}  # fmt: skip

    class Quick(Sink):  # its alert is sent once Security Hub is in its call
        def send(self, alerts):
            started.wait(timeout=30)
            return [Outcome(a, True, 1, None, None) for a in alerts]

    def checkpoint(_state):
        fenced.set()
        raise RuntimeError("fence: another leader holds the lake")

    hub = build_sink(
        sink(name="hub", type="securityhub", region="us-east-1", account_id="111122223333"),
        sleep=no_sleep,
    )
    hub.client = Hub()
    quick = Quick(sink(name="quick", type="webhook", url="https://example.invalid/x"))
    with pytest.raises(RuntimeError, match="fence"):
        deliver(poison_and_victim(), [quick, hub], DeliveryState(), now=NOW, checkpoint=checkpoint)
    assert len(imports) == 1  # the chunk in flight; no shortened re-send after the fence


def test_the_shortened_alert_is_smaller_than_any_full_one():
    """A receiver refusing bodies over a size (413) took the shortened alert only if it
    was smaller: a small alert's shortened form had been the larger (found by a soak)."""
    for inc in (base_incident(), hostile(base_incident(), "x" * 300, ["10.0.0.1"] * 3)):
        full, short = payloads.Alert(inc, "new"), payloads.Alert(payloads.shortened(inc), "new")
        for build in (payloads.falcosidekick, payloads.slack, payloads.incident_doc):
            assert len(orjson.dumps(build(short))) < len(orjson.dumps(build(full)))


class UnnamedFailure(FaultProxy):
    """In front of moto: the first BatchImportFindings answer reports a failed finding
    with an Id the call did not send (moto never answers so; a proxy is the only way)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, operations=())
        self.calls: list[int] = []

    def _forward(self, method, path, headers, body):
        status, hdrs, payload = super()._forward(method, path, headers, body)
        if path.startswith("/findings/import"):
            self.calls.append(len(json.loads(body)["Findings"]))
            if len(self.calls) == 1:
                doc = json.loads(payload)
                doc["FailedFindings"] = [{"Id": "not-sent", "ErrorCode": "InternalFailure"}]
                doc["FailedCount"] = 1
                payload = json.dumps(doc).encode()
        return status, hdrs, payload


def test_a_failure_security_hub_ties_to_no_finding_puts_them_all_again(aws, monkeypatch):
    """A failure naming no finding the call sent was ignored, and every finding of the call
    counted as delivered, one of them perhaps never taken (noted by the final review).
    They are put again (a finding with the same Id is updated in place)."""
    incs = roles(3)
    with UnnamedFailure(aws) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        hub = build_sink(
            sink(name="hub", type="securityhub", region="us-east-1", account_id="123456789012",
                 retries=1),
            sleep=no_sleep,
        )  # fmt: skip
        report = deliver(incs, [hub], DeliveryState(), now=NOW)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    assert proxy.calls == [3, 3]
    assert report.summary()["new"] == 3 and report.dead_letters == []


class ShortAnswer(FaultProxy):
    """In front of moto: the first PutEvents answer lists only its first entry (moto always
    answers every entry; a proxy is the only way)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, operations=())
        self.calls: list[int] = []

    def _forward(self, method, path, headers, body):
        status, hdrs, payload = super()._forward(method, path, headers, body)
        if headers.get("X-Amz-Target", "").endswith(".PutEvents"):
            self.calls.append(len(json.loads(body)["Entries"]))
            if len(self.calls) == 1:
                doc = json.loads(payload)
                doc["Entries"] = doc["Entries"][:1]
                payload = json.dumps(doc).encode()
        return status, hdrs, payload


def test_entries_eventbridge_does_not_answer_for_are_put_again(aws, monkeypatch):
    incs = roles(3)
    with ShortAnswer(aws) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        eb = build_sink(
            sink(name="eb", type="eventbridge", source=BOUNDS_SOURCE, retries=1), sleep=no_sleep
        )
        report = deliver(incs, [eb], DeliveryState(), now=NOW)
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws)
    assert proxy.calls == [3, 2]
    assert report.summary()["new"] == 3 and report.dead_letters == []
