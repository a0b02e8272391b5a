"""Alert storms: past a sink's hourly budget, one digest per throttle, nothing lost or
sent twice (detector/delivery/storm.py).

A storm is many principals at once (a broken deployment's 403s across hundreds of service
accounts, a botnet's probes from thousands of addresses): each is an incident of its own,
and the per-principal throttle holds back none of them. Before, every one was a message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from alerts_data import T0, Receiver, finding, frames

from detector.delivery import config as sink_config
from detector.delivery.deliver import deliver
from detector.delivery.records import DeliveryState, merge
from detector.delivery.sinks import build
from detector.incidents.group import Incident, group

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def no_sleep(_seconds: float) -> None:
    """Backoff waits skipped (no sleeps in tests)."""


def hook(url: str, per_hour: int, **kw) -> sink_config.SinkConfig:
    return sink_config.parse_sink(
        {"name": "hook", "type": "webhook", "url": url, "allow_http": True, "retries": 0,
         "max_alerts_per_hour": per_hour, **kw},
        "test",
    )  # fmt: skip


def incidents(n: int, *, offset: int = 0, critical_last: bool = False) -> list[Incident]:
    """``n`` incidents of ``n`` principals, a minute apart; the last one critical if asked."""
    rows = []
    for i in range(n):
        severity = "critical" if critical_last and i == n - 1 else ("high" if i % 4 == 1 else "low")
        start = T0 + timedelta(minutes=offset + i)
        rows.append(finding(f"arn:aws:iam::1:role/r{offset + i}", start, severity=severity))
    df, ev = frames(rows)
    return group(df, [], events=ev, now=T0)[0]


def heard(receiver: Receiver) -> list[str]:
    """Every incident id the receiver was told of: alone, or in a digest."""
    out = []
    for body in receiver.delivered:
        fields = body["output_fields"]
        if fields["detect.incident.kind"] == "digest":
            out += fields["detect.finding_ids"]
        else:
            out.append(fields["detect.incident.id"])
    return out


def run(incs: list[Incident], cfg, state: DeliveryState, at: datetime):
    return deliver(incs, [build(cfg, sleep=no_sleep)], state, now=at)


def test_past_the_budget_one_digest_per_throttle_and_each_alert_once(receiver):
    cfg = hook(receiver.url, per_hour=5)
    first = incidents(12, critical_last=True)
    report = run(first, cfg, DeliveryState(), NOW)
    summary = report.summary()
    assert (summary["new"], summary["digests"], summary["folded"]) == (5, 1, 7)
    alone = [b for b in receiver.delivered if b["output_fields"]["detect.incident.kind"] == "new"]
    # The most severe take the budget (the critical one, last in time, the three high ones,
    # the earliest low one), sent in time order; the other seven low ones fold.
    assert [b["priority"] for b in alone] == ["Notice", "Error", "Error", "Error", "Critical"]
    (digest,) = [b for b in receiver.delivered if b not in alone]
    assert digest["output"].split(": ", 1)[1].startswith("Notice Alert storm: 7 alerts in one")
    assert sorted(heard(receiver)) == sorted(i.incident_id for i in first)
    state = report.state
    assert all(state.delivered(i.incident_id, "hook") for i in first)

    # Run again a minute later: nothing is owed.
    assert run(first, cfg, state, NOW + timedelta(minutes=1)).sent == []
    # Four more within the throttle: the budget is spent and a digest went 2 minutes ago:
    # they wait (pending, as a throttled update does), then go as one digest.
    more = incidents(4, offset=100)
    held = run(first + more, cfg, state, NOW + timedelta(minutes=2))
    assert held.sent == [] and len(held.throttled) == 4
    later = run(first + more, cfg, held.state, NOW + timedelta(minutes=16))
    assert [(s["kind"], s.get("folded")) for s in later.sent] == [("digest", 4)]
    # An hour after the first alerts the budget is back: one by one again.
    fresh = incidents(3, offset=200)
    again = run(first + more + fresh, cfg, later.state, NOW + timedelta(minutes=61))
    assert [s["kind"] for s in again.sent] == ["new"] * 3
    ids = heard(receiver)
    assert sorted(ids) == sorted(i.incident_id for i in first + more + fresh)  # each once


def test_a_digest_that_fails_leaves_each_alert_it_folded_owed():
    receiver = Receiver(statuses=[200, 503])  # the alert alone passes, the digest fails
    try:
        cfg = hook(receiver.url, per_hour=1)
        incs = incidents(4)
        failed = run(incs, cfg, DeliveryState(), NOW)
        assert failed.summary()["new"] == 1 and failed.summary()["digests"] == 0
        (alone,) = heard(receiver)
        owed = {d["incident_id"] for d in failed.dead_letters}
        # each alert the digest folded, not the digest
        assert owed == {i.incident_id for i in incs} - {alone} and len(owed) == 3
        assert all(d["error"].startswith("folded into digest ") for d in failed.dead_letters)
        # The next run (the receiver is back) sends them, as one digest, once.
        later = run(incs, cfg, failed.state, NOW + timedelta(minutes=1))
        assert [(s["kind"], s.get("folded")) for s in later.sent] == [("digest", 3)]
        assert sorted(heard(receiver)) == sorted(i.incident_id for i in incs)
    finally:
        receiver.close()


def test_the_same_alerts_fold_into_the_same_digest_id(receiver):
    """A run killed after the digest went and before it was recorded sends it again with
    the same idempotency key: the receiver can tell."""
    cfg = hook(receiver.url, per_hour=1)
    incs = incidents(5)
    run(incs, cfg, DeliveryState(), NOW)
    run(incs, cfg, DeliveryState(), NOW + timedelta(minutes=1))  # as if nothing was recorded
    keys = [r["headers"]["Idempotency-Key"] for r in receiver.requests]
    assert len(keys) == 4 and keys[:2] == keys[2:]


def test_two_runs_count_the_hour_together():
    a, b = DeliveryState(), DeliveryState()
    a.count_sent("hook", "i1:v1", NOW)
    b.count_sent("hook", "i1:v1", NOW)  # the same alert, saved by both (a re-save)
    b.count_sent("hook", "i2:v1", NOW)
    a.record_digest("hook", NOW)
    b.record_digest("hook", NOW + timedelta(minutes=3))
    both = merge(a, b)
    assert both.sent_since("hook", NOW - timedelta(hours=1)) == 2
    assert both.digest_at("hook") == NOW + timedelta(minutes=3)
    saved = DeliveryState.from_dict(json.loads(json.dumps(both.to_dict())))
    assert saved.sent_since("hook", NOW - timedelta(hours=1)) == 2
    saved.prune(NOW + timedelta(hours=2))
    assert saved.sent_since("hook", NOW) == 0
    assert DeliveryState.from_dict({"sent": {}}).hourly == {}  # a file an older run wrote


def test_slack_is_capped_by_default_and_the_others_are_not():
    slack = sink_config.parse_sink({"name": "s", "type": "slack", "url_env": "X"}, "t")
    other = sink_config.parse_sink({"name": "w", "type": "webhook", "url_env": "X"}, "t")
    assert (slack.max_alerts_per_hour, other.max_alerts_per_hour) == (20, 0)
    for bad in (-1, "20", 1.5, True, 10_001):
        with pytest.raises(sink_config.SinkConfigError, match="max_alerts_per_hour must be"):
            sink_config.parse_sink({"name": "w", "type": "webhook", "url_env": "X",
                                    "max_alerts_per_hour": bad}, "t")  # fmt: skip


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()
