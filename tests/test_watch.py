"""`detect watch`: the stream equals the batch, alerts reach a real webhook once despite
SIGKILLs, two replicas share one log group, probes and metrics, SIGTERM drains.

Real parts only: a simulated EKS audit log with planted attacks, a loopback HTTP receiver
(tests/alerts_data.Receiver) as the webhook, moto's server on loopback for CloudWatch Logs
and S3 (conftest), the real ``detect`` console script in subprocesses. Kills happen at
chosen points (a patched hook in the killed process), never at random times; waiting is
polling for a condition with a bounded deadline, never a sleep.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import orjson
import polars as pl
import pytest
from alerts_data import Receiver
from conftest import built_once, detect_cmd, free_port
from factories import BASE_TIME, make_event
from throttle_proxy import FaultProxy

from detector.delivery import config as sink_config
from detector.delivery.stream import StreamAlerter
from detector.detect.score import ScoreOptions, score_range
from detector.detect.stream import ModelReloader, StreamDetector, StreamState
from detector.detect.train import train_model
from detector.lake.events import Lake
from detector.lake.findings import list_findings
from detector.pipeline.export import ExportOptions
from detector.pipeline.ingest import read_events
from detector.pipeline.watch import (
    CloudWatchSource,
    ReplaySource,
    TailSource,
    Watcher,
    WatchOptions,
)
from detector.pipeline.watch_metrics import WatchMetrics
from detector.ratelimit import client_config

END = "2026-11-27T12:00:00Z"
STEP = timedelta(minutes=10)
TRAINED_UNTIL = datetime(2026, 11, 27, 11, 30, tzinfo=UTC)
COMPARED = ["finding_id", "detector", "severity", "event_count", "audit_ids"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def sim(tmp_path_factory) -> Path:
    """72 minutes of simulated EKS traffic with its planted attacks (about 4,200 events).
    Built once per run (conftest.built_once), not once per xdist worker: tests read it."""

    def build(out: Path) -> None:
        proc = subprocess.run(
            [
                *detect_cmd(),
                "simulate",
                "--out",
                str(out),
                "--days",
                "0.05",
                "--rate",
                "1",
                "--end",
                END,
                "--seed",
                "3",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    return built_once(tmp_path_factory, "watch-sim", build) / "audit.log"


@pytest.fixture(scope="session")
def model_dir(sim, tmp_path_factory) -> str:
    """A model trained (batch `detect train`) on the traffic before :data:`TRAINED_UNTIL`;
    a high alert rate so that this little traffic gives model findings. Built once per
    run, like :func:`sim`: tests load it, or copy it before training into it."""

    def build(root: Path) -> None:
        lake = Lake(str(root / "lake"))
        events, _ = read_events([str(sim)], cluster="demo")
        lake.write_events(events)
        lo = events["event_time"].min()
        train_model(lake, lo, TRAINED_UNTIL, model_dir=str(root / "model"), alert_rate=0.1)

    return str(built_once(tmp_path_factory, "watch-model", build) / "model")


def hook_sink(url: str) -> sink_config.SinkConfig:
    return sink_config.parse_sink(
        {"name": "hook", "type": "webhook", "url": url, "retries": 0}, "test"
    )


def replay_in_process(
    lake: Lake, path: Path, sinks, model=None
) -> tuple[StreamAlerter, ReplaySource]:
    """The library path `detect watch --replay FILE --once --step 10m` takes."""
    metrics = WatchMetrics()
    detector = StreamDetector(lake, model=(lambda: model) if model else None)
    alerter = StreamAlerter(lake, detector, sinks, metrics=metrics)
    src = ReplaySource(
        lake, str(path), alerter.consume, metrics, speed=0, step=STEP, cluster="demo"
    )
    Watcher([lambda: src], metrics, WatchOptions(once=True, poll=0.01)).run()
    return alerter, src


_OUT = {"capture_output": True, "text": True, "check": True, "timeout": 60}


def wait_for(condition, what: str, timeout: float = 60.0):
    """Poll ``condition`` until it is true (returns its value) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)  # a poll interval, not a wait for something to happen
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def keys(receiver: Receiver) -> list[str]:
    return [r["headers"]["Idempotency-Key"] for r in receiver.requests if r["status"] < 300]


# ----------------------------------------------------------------------- stream == batch
def test_stream_findings_equal_a_batch_score_and_a_late_event_reopens_its_window_once(
    sim, model_dir, tmp_path
):
    from detector.model.storage import Model

    model = Model.load(model_dir)
    events, _ = read_events([str(sim)], cluster="demo")
    # The stream runs after the model's training range, as it does between nightly trainings.
    events = events.filter(pl.col("event_time") >= TRAINED_UNTIL)
    # Hold back one principal's requests in one window: they arrive after its grace.
    win = datetime(2026, 11, 27, 11, 40, tzinfo=UTC)
    who = events.filter(pl.col("event_time") >= win)["principal"][0]
    late_mask = (
        (pl.col("principal") == who)
        & (pl.col("event_time") >= win)
        & (pl.col("event_time") < win + timedelta(minutes=10))
    )
    late = events.filter(late_mask)
    assert late.height > 0
    on_time = tmp_path / "on_time.log"
    raw = [json.loads(line) for line in sim.read_text().splitlines()]
    keep = set(events["audit_id"]) - set(late["audit_id"])
    on_time.write_text("".join(json.dumps(e) + "\n" for e in raw if e["auditID"] in keep))

    lake = Lake(str(tmp_path / "lake"))
    alerter, src = replay_in_process(lake, on_time, [], model)
    lake.write_events(late)
    now = datetime.fromisoformat(END) + timedelta(minutes=30)
    payload = alerter.consume(late, now, src.payload)
    assert alerter.last.late_windows == 1  # the closed window is scored again, once
    alerter.consume(late.clear(), now + timedelta(minutes=1), payload)
    assert alerter.last.late_windows == 0 and alerter.last.findings == 0

    stream = list_findings(lake, min_severity="info")
    lo, hi = events["event_time"].min(), events["event_time"].max() + timedelta(seconds=1)
    batch = score_range(lake, lo, hi, model=model, options=ScoreOptions(write=False)).findings
    assert stream.filter(pl.col("detector").str.starts_with("model")).height > 0
    assert stream.filter(pl.col("detector").str.starts_with("rule")).height > 0
    assert (
        stream.select(COMPARED).sort("finding_id").equals(batch.select(COMPARED).sort("finding_id"))
    )
    assert stream["score"].sort().to_list() == pytest.approx(batch["score"].sort().to_list())


def test_the_rules_history_kept_between_batches_is_what_a_fresh_read_gives(tmp_path, monkeypatch):
    """`detect watch` keeps the threshold rules' week of history hour by hour between
    batches (detector.detect.history.HistoryCache). Each batch must still compare with
    exactly the week a batch run reads, after a late event and a rule change too, while
    reading again only the hours that changed, and never too many hours in one polars pass
    (a week of a watch's small files in one pass ran polars out of blocking threads)."""
    from lakefill import event, write_events

    from detector.detect import history
    from detector.detect.history import HistoryCache, rules_history
    from detector.rules import load_ruleset

    passes: list[int] = []
    read_slices = history.rules.read_history_slices

    def counted(pieces, *args, **kwargs):
        passes.append(len(pieces))
        return read_slices(pieces, *args, **kwargs)

    monkeypatch.setattr(history.rules, "read_history_slices", counted)
    monkeypatch.setattr(history, "HOURS_PER_PASS", 10, raising=False)

    lake = Lake(str(tmp_path / "lake"))
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    denied = {"response_code": 403, "decision": "forbid"}
    rows = [event("web", t0 + timedelta(hours=h, minutes=5)) for h in range(30)]
    rows += [
        event("ci", t0 + timedelta(hours=h, minutes=m), **denied)
        for h in range(0, 30, 3)
        for m in (1, 27, 55)
    ]
    write_events(lake, rows)
    window = timedelta(minutes=10)
    cache = HistoryCache()

    def kept_equals_fresh(ruleset, start: datetime) -> int:
        fresh = rules_history(lake, ruleset, start, window, None)
        kept = rules_history(lake, ruleset, start, window, None, cache)
        assert kept.n_windows == fresh.n_windows
        assert kept.stages == fresh.stages == {"prod": {"ResponseComplete"}}
        by = ["audit_id", "stage"]
        assert kept.candidates.sort(by).equals(fresh.candidates.sort(by))
        return kept.candidates.height

    rules = load_ruleset()
    start = t0 + timedelta(hours=27, minutes=20)  # hours 0..26 whole, 27 cut by the start
    assert kept_equals_fresh(rules, start) == 28  # ci's denials before 27:20
    assert cache.hours_read == 27
    assert max(passes) <= 10 and sum(passes[-3:]) == 27 + 1  # 27 hours and the edges
    assert kept_equals_fresh(rules, start + window) == 29  # and 27:27
    assert cache.hours_read == 27  # the next batch: no whole hour read again
    assert kept_equals_fresh(rules, start + 4 * window) == 30  # 28:00: hour 27 is whole now
    assert cache.hours_read == 28

    write_events(lake, [event("ci", t0 + timedelta(hours=4, minutes=2), **denied)])  # late
    assert kept_equals_fresh(rules, start + 4 * window) == 31
    assert cache.hours_read == 29  # hour 4 alone, for its new file

    fewer = load_ruleset(disabled=["auth-failure-spike-source-ip"])
    assert fewer.fingerprint != rules.fingerprint
    kept_equals_fresh(fewer, start + 4 * window)
    assert cache.hours_read == 29 + 28  # other rules: every hour read again


# --------------------------------------------------------------------------- SIGKILLs
#: `detect watch` with a kill switch: SIGKILL when the Nth of a chosen moment comes.
#: "sent": a sink accepted alerts but the checkpoint does not know yet; "written": a batch
#: is durable in the lake, nothing detected yet; "checkpointed": right after a checkpoint.
_KILLED_WATCH = """
import os, signal, sys
import detector.delivery.stream as ds
import detector.pipeline.watch as pw
point, n = sys.argv[1], int(sys.argv[2])
seen = {"n": 0}

def tick():
    seen["n"] += 1
    if seen["n"] == n:
        os.kill(os.getpid(), signal.SIGKILL)

if point == "sent":
    real = ds.StreamAlerter._deliver
    def patched(self, *a, **k):
        report = real(self, *a, **k)
        if report.sent:
            tick()
        return report
    ds.StreamAlerter._deliver = patched
elif point == "written":
    real_w = pw.write_to_lake
    def patched_w(*a, **k):
        out = real_w(*a, **k)
        tick()
        return out
    pw.write_to_lake = patched_w
else:
    real_c = pw._LeasedSource._commit
    def patched_c(self, *a, **k):
        real_c(self, *a, **k)
        tick()
    pw._LeasedSource._commit = patched_c
from detector.cli.app import main
sys.argv = ["detect", *sys.argv[3:]]
main()
"""


def test_watch_and_a_scoring_job_on_its_lake_send_each_incident_once_between_them(
    sim, tmp_path, detect
):
    """The documented deployment: a watch Deployment, and an hourly job that only scores
    the same lake with the same sinks. They kept apart records of what they had sent, so
    the job sent every incident watch had already sent again, as new."""
    receiver = Receiver()
    try:
        lake = tmp_path / "lake"
        replay_in_process(Lake(str(lake)), sim, [hook_sink(receiver.url)])
        sent = keys(receiver)
        assert len(sent) == len(set(sent)) >= 5
        (tmp_path / "detect.toml").write_text(
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{receiver.url}"\n'
        )
        end = datetime.fromisoformat(END.replace("Z", "+00:00"))
        scored = detect(
            *("--config", str(tmp_path / "detect.toml"), "score", "--lake", str(lake)),
            *("--since", (end - timedelta(hours=2)).isoformat(), "--until", END),
            *("--no-model", "--format", "json"),
        )
        assert scored.returncode == 0, scored.stderr
        assert json.loads(scored.stdout)["incidents"]["delivery"]["sent"] == 0
        assert keys(receiver) == sent
    finally:
        receiver.close()


def test_sigkill_at_chosen_moments_every_due_alert_arrives_once_per_key(sim, model_dir, tmp_path):
    from detector.model.storage import Model

    reference = Receiver()
    receiver = Receiver()
    try:
        replay_in_process(
            Lake(str(tmp_path / "ref")), sim, [hook_sink(reference.url)], Model.load(model_dir)
        )
        expected = keys(reference)
        assert len(expected) == len(set(expected)) >= 5  # planted attacks alert, once each

        (tmp_path / "detect.toml").write_text(
            '[[sinks]]\nname = "hook"\ntype = "webhook"\nurl_env = "WATCH_HOOK_URL"\nretries = 0\n'
        )
        args = [
            "watch",
            "--replay",
            str(sim),
            "--once",
            "--step",
            "10m",
            "--cluster",
            "demo",
            "--lake",
            str(tmp_path / "lake"),
            "--model-dir",
            model_dir,
        ]
        env = {**os.environ, "WATCH_HOOK_URL": receiver.url}
        after: dict[str, int] = {}  # requests received when each killed run died
        for point, n in (("sent", 2), ("written", 3), ("checkpointed", 2)):
            proc = subprocess.run(
                [sys.executable, "-c", _KILLED_WATCH, point, str(n), *args],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
                env=env,
                check=False,
            )
            assert proc.returncode == -signal.SIGKILL, proc.stderr
            after[point] = len(receiver.requests)
        proc = subprocess.run(
            [*detect_cmd(), *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        got = keys(receiver)
        assert set(got) == set(expected)  # every due alert arrived
        dupes = {k: n for k, n in Counter(got).items() if n > 1}
        # Only the "sent" kill repeats alerts: those its last batch sent before the checkpoint
        # could record them, each once more, with the same key and the same body.
        assert all(n == 2 for n in dupes.values())
        for k in dupes:
            first, second = [i for i, key in enumerate(got) if key == k]
            assert first < after["sent"] <= second < after["written"]
            assert got[after["sent"] - len(dupes) : after["sent"]].count(k) == 1
            bodies = {r["body"] for r in receiver.requests if r["headers"]["Idempotency-Key"] == k}
            assert len(bodies) == 1
    finally:
        reference.close()
        receiver.close()


# --------------------------------------------------------------------- two replicas
def anonymous_denied(i: int, ts_ms: int, ip: str) -> str:
    ev = make_event(
        i,
        at=ts_ms,
        auditID=str(uuid.uuid4()),
        user={"username": "system:anonymous", "groups": ["system:unauthenticated"]},
        sourceIPs=[ip],
        responseStatus={"metadata": {}, "code": 403},
        annotations={"authorization.k8s.io/decision": "forbid"},
    )
    return orjson.dumps(ev).decode()


def rbac_change(i: int, ts_ms: int) -> str:
    """A cluster-wide RBAC change by an IAM role (rule rbac-changed: medium)."""
    ev = make_event(
        i,
        at=ts_ms,
        auditID=str(uuid.uuid4()),
        verb="create",
        requestURI="/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        objectRef={
            "resource": "clusterrolebindings",
            "name": "backdoor",
            "apiGroup": "rbac.authorization.k8s.io",
            "apiVersion": "v1",
        },
        responseStatus={"metadata": {}, "code": 201},
    )
    return orjson.dumps(ev).decode()


def put(logs, group: str, messages: list[str], ts_ms: int) -> None:
    logs.put_log_events(
        logGroupName=group,
        logStreamName="kube-apiserver-audit-0a1b",
        logEvents=[{"timestamp": ts_ms, "message": m} for m in messages],
    )


def _spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*detect_cmd(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def test_a_second_signal_ends_a_watch_stuck_on_a_hanging_sink_at_once(tmp_path):
    """A sink that accepts and never answers: SIGTERM drains (the alert it is sending
    waits for its timeout), and a second signal was meant to abort, but the stuck sink
    thread was still joined: 150 s later the process was alive, past any grace period."""
    import socket

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = hung.accept()
            except OSError:
                return
            held.append(conn)  # read nothing, answer nothing
            connected.set()

    threading.Thread(target=accept, daemon=True).start()
    port = hung.getsockname()[1]
    (tmp_path / "detect.toml").write_text(
        f'[[sinks]]\nname = "hook"\ntype = "webhook"\ntimeout = "120s"\n'
        f'url = "http://127.0.0.1:{port}/hook"\n'
    )
    log_path = tmp_path / "audit.log"
    t0 = int(time.time() * 1000)
    log_path.write_text(
        "".join(anonymous_denied(i, t0 + i, "198.51.100.9") + "\n" for i in range(5))
    )
    env = {**os.environ, "DETECT_CONFIG": str(tmp_path / "detect.toml")}
    proc = _spawn(
        ["watch", "--tail", str(log_path), "--lake", str(tmp_path / "lake"), "--no-model",
         "--poll", "0.2s", "--cluster", "c"],
        env,
        tmp_path,
    )  # fmt: skip
    try:
        assert connected.wait(timeout=60), "the sink was never called"
        proc.send_signal(signal.SIGTERM)  # drain: the alert being sent waits for 120 s
        proc.send_signal(signal.SIGINT)  # another signal (the same one could merge)
        _, err = proc.communicate(timeout=60)  # far less than the sink's 120 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
        hung.close()
        for conn in held:
            conn.close()
    assert proc.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), err
    assert "aborted by a second signal" in err


def test_two_replicas_one_leads_the_standby_takes_over_without_gap_or_duplicate(
    moto_endpoint, s3_bucket, tmp_path
):
    logs = boto3.client("logs", endpoint_url=moto_endpoint)
    group = f"/aws/eks/ha-{uuid.uuid4().hex[:6]}/cluster"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="kube-apiserver-audit-0a1b")
    receiver = Receiver()
    (tmp_path / "detect.toml").write_text(
        '[[sinks]]\nname = "hook"\ntype = "webhook"\nurl_env = "WATCH_HOOK_URL"\n'
    )
    env = {**os.environ, "WATCH_HOOK_URL": receiver.url, "AWS_ENDPOINT_URL": moto_endpoint}
    ports = [free_port(), free_port()]
    lake = f"s3://{s3_bucket}/lake"
    procs = [
        _spawn(
            [
                "--log-level",
                "info",
                "watch",
                "--log-group",
                group,
                "--lake",
                lake,
                "--no-model",
                "--lease",
                "4s",
                "--poll",
                "0.3s",
                "--latency",
                "0s",
                "--rate",
                "0",
                "--since",
                "5m",
                "--port",
                str(p),
            ],
            env,
            tmp_path,
        )
        for p in ports
    ]
    try:
        ready = wait_for(
            lambda: [p for p in ports if get(f"http://127.0.0.1:{p}/readyz")[0] == 200],
            "a leader",
        )
        (leader_port,) = ready
        standby_port = next(p for p in ports if p != leader_port)
        # On a loaded machine the leader may be ready before the other one serves at all.
        wait_for(lambda: get(f"http://127.0.0.1:{standby_port}/healthz")[0] == 200, "the standby")
        assert get(f"http://127.0.0.1:{standby_port}/readyz")[0] == 503  # alive, waiting
        # A standby says so: its leader gauge is 0, not absent (found by a soak). It serves
        # before its first try for the lease, so the gauge is waited for, not read at once.
        wait_for(
            lambda: re.search(
                r'detect_watch_leader\{source="[^"]+"\} 0\.0',
                get(f"http://127.0.0.1:{standby_port}/metrics")[1],
            ),
            "the standby's leader gauge at 0",
        )
        leader = procs[ports.index(leader_port)]

        t1 = int(time.time() * 1000)
        put(logs, group, [anonymous_denied(1, t1, "198.51.100.1")], t1)
        wait_for(lambda: len(keys(receiver)) == 1, "the first alert, from the leader")
        s3 = boto3.client("s3", endpoint_url=moto_endpoint)

        def recorded() -> bool:
            # the chosen moment: the alert is in the lake's delivery records (the batch may
            # not be checkpointed yet: the standby then reads it again and sends nothing)
            try:
                body = s3.get_object(Bucket=s3_bucket, Key="lake/_state/deliveries.json")["Body"]
            except s3.exceptions.NoSuchKey:
                return False
            return bool(json.loads(body.read()).get("sent"))

        wait_for(recorded, "the delivery records to hold the alert")

        leader.kill()  # SIGKILL: no release, the lease is still on the books
        leader.wait(timeout=30)
        t2 = int(time.time() * 1000)
        # Another principal: a new incident (a second anonymous event in the same window
        # would only update the first finding, and rightly send nothing).
        put(logs, group, [rbac_change(2, t2)], t2)
        wait_for(
            lambda: get(f"http://127.0.0.1:{standby_port}/readyz")[0] == 200, "the takeover", 30
        )
        wait_for(lambda: len(keys(receiver)) == 2, "the second alert, from the new leader")
        assert len(set(keys(receiver))) == 2
        metrics = get(f"http://127.0.0.1:{standby_port}/metrics")[1]
        assert 'detect_watch_alerts_sent_total{severity="medium",sink="hook"}' in metrics
        assert "detect_watch_lag_seconds" in metrics
        standby = procs[ports.index(standby_port)]
        standby.send_signal(signal.SIGTERM)
        assert standby.wait(timeout=60) == 0
        events = (
            Lake(lake)
            .scan_events(
                datetime.fromtimestamp(t1 / 1000 - 60, UTC),
                datetime.now(UTC) + timedelta(minutes=1),
            )
            .collect()
        )
        assert events.height == 2  # no gap, nothing twice
        assert len(keys(receiver)) == 2  # the drain sent nothing again
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
        receiver.close()


# ------------------------------------------------------- tail, quarantine, probes, SIGTERM
def test_tail_with_rotation_quarantines_bad_lines_serves_probes_and_drains_on_sigterm(
    tmp_path,
):
    log_path = tmp_path / "audit.log"
    log_path.write_text("")
    port = free_port()
    lake = str(tmp_path / "lake")
    t0 = int(time.time() * 1000)
    proc = _spawn(
        [
            "watch",
            "--tail",
            str(log_path),
            "--lake",
            lake,
            "--no-model",
            "--poll",
            "0.2s",
            "--port",
            str(port),
            "--no-deliver",
            "--cluster",
            "self",
        ],
        dict(os.environ),
        tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/readyz")[0] == 200, "ready")
        with log_path.open("a") as fh:
            fh.write(anonymous_denied(1, t0, "198.51.100.9") + "\n")
            fh.write("{not json at all\n")
            fh.write(anonymous_denied(2, t0 + 1, "198.51.100.9") + "\n")

        def metric(name: str) -> float:
            for line in get(base + "/metrics")[1].splitlines():
                if line.startswith(name) and not line.startswith("#"):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        wait_for(lambda: metric("detect_watch_events_total") == 2, "two events")
        wait_for(lambda: metric("detect_watch_quarantined_total") == 1, "one quarantined line")
        log_path.rename(tmp_path / "audit.log.1")  # the API server rotates
        log_path.write_text(anonymous_denied(3, t0 + 2, "198.51.100.9") + "\n")
        wait_for(lambda: metric("detect_watch_events_total") == 3, "the event after rotation")
        assert get(base + "/healthz")[0] == 200
        assert metric('detect_watch_findings_total{detector_kind="rule"}') >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert "watch stopped by SIGTERM" in err
    got = Lake(lake).scan_events(
        datetime.fromtimestamp(t0 / 1000 - 60, UTC), datetime.now(UTC) + timedelta(minutes=1)
    )
    assert got.collect().height == 3
    reasons = Lake(lake).scan_quarantine().collect()["reason"].to_list()
    assert len(reasons) == 1 and reasons[0]
    state = json.loads(next((Path(lake) / "_state" / "watch" / "tail").glob("*.json")).read_text())
    assert state["position"]["offset"] > 0 and state["payload"]["detect"] is not None


# ------------------------------------------------------------- faults and a new model
def test_a_replay_out_of_time_order_with_bad_lines_is_staged_resumed_and_cleaned_up(
    tmp_path, monkeypatch
):
    """A replayed file is read a block at a time into per-hour staging files, not held in
    memory: events written hours out of order still arrive in time order, each once, in
    the step whose clock covers them; bad lines are filed once, also across a restart; the
    staging folder is gone when the source stops or ends, and one a killed replay left
    behind is removed by the next."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # this test's own temp folder
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_OUT)
    abandoned = temp / f"detect-replay-{int(gone.stdout)}-k1ll3d"  # its process has exited
    running = temp / f"detect-replay-{os.getpid()}-l1v3"
    for folder in (abandoned, running):
        (folder / "0").mkdir(parents=True)
    hours = [2, 0, 1]  # the file's hours out of order
    lines, n = [], 0
    for h in hours:
        for k in range(30):
            at = BASE_TIME + timedelta(hours=h, minutes=2 * k)
            lines.append(orjson.dumps(make_event(n, at=at)).decode())
            n += 1
        lines.append('{"kind": "Event", "auditID": "cut')  # a truncated line per hour
    log_file = tmp_path / "audit.log"
    log_file.write_text("\n".join(lines) + "\n")
    lake = Lake(str(tmp_path / "lake"))
    seen: list[tuple[datetime, list[str], list[datetime]]] = []
    stop = None
    staging: list[str] = []

    def consume(events, now, payload):
        seen.append((now, events["audit_id"].to_list(), events["event_time"].to_list()))
        if stop is not None and len(seen) == 4:
            stop.set()  # a SIGTERM after the fourth step: drained and checkpointed
        return {"steps": (payload or {}).get("steps", 0) + 1}

    def run(stop_event):
        metrics = WatchMetrics()
        src = ReplaySource(
            lake,
            str(log_file),
            consume,
            metrics,
            speed=0,
            step=STEP,
            cluster="demo",
            stop=stop_event,
        )
        original = src.start

        def start():
            original()
            staging.append(src.staged.root)
            assert any(os.scandir(src.staged.root))  # staged on disk, one folder per hour

        src.start = start
        Watcher([lambda: src], metrics, WatchOptions(once=True, poll=0.01), stop=stop_event).run()
        return metrics

    stop = threading.Event()
    first = run(stop)
    assert stop.is_set() and len(seen) == 4
    stop = None
    second = run(None)

    delivered = [a for _, ids, _ in seen for a in ids]
    assert sorted(delivered) == sorted(f"00000000-0000-0000-0000-{i:012d}" for i in range(n))
    times = [t for _, _, ts in seen for t in ts]
    assert times == sorted(times)  # the stream clock never goes back
    assert all(t < now for now, _, ts in seen for t in ts)
    lake_ids = lake.scan_events().select("audit_id").collect()["audit_id"]
    assert lake_ids.len() == n and lake_ids.n_unique() == n
    quarantine = lake.scan_quarantine().collect()
    assert quarantine.height == len(hours)
    assert quarantine["reason"].str.contains("JSON|json|truncat").all()
    filed = [m.totals["quarantined"] for m in (first, second)]
    assert filed == [len(hours), 0]  # the restart does not file them again
    assert len(staging) == 2 and not any(os.path.exists(p) for p in staging)
    assert all(p.startswith(str(temp)) for p in staging)
    assert not abandoned.exists() and running.exists()


def test_a_long_replay_holds_dedup_keys_of_recent_hours_only(tmp_path):
    """A watch runs for months: the lake's dedup keys of hours behind the stream clock are
    let go (held up to the lake's bound, they were most of its memory growth day after
    day), and dedup still holds: a late duplicate of a let-go hour adds nothing, a late new
    event is added once, and the whole file replayed again adds nothing."""
    per_hour, hours = 20, 6
    lines = [
        orjson.dumps(make_event(n, at=BASE_TIME + timedelta(minutes=60 * n / per_hour))).decode()
        for n in range(per_hour * hours)
    ]
    log_file = tmp_path / "audit.log"
    log_file.write_text("\n".join(lines) + "\n")
    lake = Lake(str(tmp_path / "lake"))
    held: list[int] = []

    def consume(events, now, payload):
        held.append(lake.keys.rows)
        return {}

    def replay(path: Path) -> None:
        metrics = WatchMetrics()
        src = ReplaySource(lake, str(path), consume, metrics, speed=0, step=STEP, cluster="demo")
        Watcher([lambda: src], metrics, WatchOptions(once=True, poll=0.01)).run()

    def lake_ids() -> pl.Series:
        return lake.scan_events().select("audit_id").collect()["audit_id"]

    replay(log_file)
    assert lake_ids().len() == per_hour * hours
    assert max(held) <= 2 * per_hour  # the stream clock's hour and the one before it
    late = tmp_path / "late.log"
    late_event = make_event(10_000, at=BASE_TIME + timedelta(minutes=1))
    late.write_text(lines[0] + "\n" + orjson.dumps(late_event).decode() + "\n")
    replay(late)
    again = tmp_path / "again.log"
    again.write_text(log_file.read_text())
    replay(again)
    ids = lake_ids()
    assert ids.len() == per_hour * hours + 1 and ids.n_unique() == ids.len()


def test_throttling_and_5xx_from_cloudwatch_are_survived(moto_endpoint, tmp_path):
    logs = boto3.client("logs", endpoint_url=moto_endpoint)
    group = f"/aws/eks/flaky-{uuid.uuid4().hex[:6]}/cluster"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="kube-apiserver-audit-0a1b")
    t = int(time.time() * 1000) - 30_000
    put(logs, group, [anonymous_denied(i, t + i, "198.51.100.3") for i in range(5)], t)
    receiver = Receiver()
    faults = ["throttle", "unavailable", "throttle", "reset"]
    try:
        with FaultProxy(moto_endpoint, faults=faults) as proxy:
            # botocore's own retries off, as the CLI's client: every retry is ours, counted
            client = boto3.client("logs", endpoint_url=proxy.url, config=client_config())
            lake = Lake(str(tmp_path / "lake"))
            metrics = WatchMetrics()
            alerter = StreamAlerter(lake, StreamDetector(lake), [hook_sink(receiver.url)])
            opts = ExportOptions(
                log_group=group,
                cluster="flaky",
                latency=timedelta(0),
                rate=0,
                backoff_base=0.001,
                lease_seconds=30,
            )
            src = CloudWatchSource(
                lake,
                opts,
                alerter.consume,
                metrics,
                since=datetime.now(UTC) - timedelta(minutes=5),
                client=client,
            )
            Watcher([lambda: src], metrics, WatchOptions(once=True)).run()
            assert sum(proxy.injected.values()) == len(faults)
        assert (
            lake.scan_events(datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC))
            .collect()
            .height
            == 5
        )
        assert len(keys(receiver)) == 1
    finally:
        receiver.close()


def test_a_newly_trained_model_is_picked_up_without_a_restart(sim, model_dir, tmp_path):
    import shutil

    live = tmp_path / "model"
    shutil.copytree(model_dir, live)
    seen = []
    reloader = ModelReloader(str(live), every=0, on_change=lambda m: seen.append(m.version))
    first = reloader()
    assert first is not None and seen == [first.version]
    assert reloader() is first  # unchanged card: nothing reloaded
    lake = Lake(str(tmp_path / "lake"))
    events, _ = read_events([str(sim)], cluster="demo")
    lake.write_events(events)
    lo, hi = events["event_time"].min(), events["event_time"].max()
    train_model(lake, lo, hi + timedelta(seconds=1), model_dir=str(live), seed=7)
    second = reloader()
    assert second is not first and seen[-1] == second.version
    (live / "model.json").write_text("{half written")
    assert reloader() is second  # a broken card keeps the model in use


def test_a_damaged_first_model_is_said_once_and_truly(model_dir, tmp_path, detect):
    """With no model in use yet, a card that does not load was said as "keeping the one in
    use", then "no model in ... yet": two lines, neither true (found by review)."""
    import shutil

    live = tmp_path / "model"
    shutil.copytree(model_dir, live)
    (live / "model.json").write_text("{garbage")
    (tmp_path / "audit.log").write_text("")
    run = detect("watch", "--tail", str(tmp_path / "audit.log"), "--cluster", "c",
                 "--lake", str(tmp_path / "lake"), "--model-dir", str(live), "--once",
                 "--no-deliver")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "not loaded" in run.stderr and "rules only until one loads" in run.stderr
    assert "keeping the one in use" not in run.stderr and "no model in" not in run.stderr


def test_a_card_that_does_not_load_is_warned_of_once_and_still_retried(
    sim, model_dir, tmp_path, caplog
):
    """A card edited by hand is refused at every check (30 s) for as long as it stays: one
    warning, not two a minute for days; the next card that loads is used at once."""
    import json
    import logging
    import shutil

    live = tmp_path / "model"
    shutil.copytree(model_dir, live)
    reloader = ModelReloader(str(live), every=0)
    first = reloader()
    assert first is not None
    good = (live / "model.json").read_text()
    card = json.loads(good)
    card["threshold"] = card["threshold"] + 1.0  # raised by hand: nothing would be flagged
    (live / "model.json").write_text(json.dumps(card))
    with caplog.at_level(logging.WARNING, logger="detector.detect.stream"):
        for _ in range(3):
            assert reloader() is first
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "threshold" in caplog.records[0].getMessage()
    lake = Lake(str(tmp_path / "lake"))
    events, _ = read_events([str(sim)], cluster="demo")
    lake.write_events(events)
    lo, hi = events["event_time"].min(), events["event_time"].max()
    train_model(lake, lo, hi + timedelta(seconds=1), model_dir=str(live), seed=7)
    assert reloader() is not first


def test_a_lake_that_fails_is_retried_and_nothing_is_lost(moto_endpoint, tmp_path):
    """The lake's bucket is missing at first (a real S3 error from moto): the source fails,
    is restarted from its checkpoint with a backoff, and catches up once the bucket exists."""
    import threading

    bucket = f"late-{uuid.uuid4().hex[:10]}"
    log_path = tmp_path / "audit.log"
    t0 = int(time.time() * 1000)
    log_path.write_text(
        "".join(anonymous_denied(i, t0 + i, "198.51.100.4") + "\n" for i in range(3))
    )
    lake = Lake(f"s3://{bucket}/lake")
    metrics = WatchMetrics()
    alerter = StreamAlerter(lake, StreamDetector(lake), [], metrics=metrics)
    from detector.pipeline.watch import TailSource

    stop = threading.Event()
    watcher = Watcher(
        [lambda: TailSource(lake, str(log_path), alerter.consume, metrics, cluster="s3")],
        metrics,
        WatchOptions(poll=0.1, max_backoff=1.0),
        stop=stop,
    )
    runner = threading.Thread(target=watcher.run, daemon=True)
    runner.start()
    try:
        wait_for(
            lambda: sum(c._value.get() for c in metrics.source_errors._metrics.values()) >= 1,
            "the first failure",
        )
        boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
        wait_for(lambda: metrics.totals["events"] == 3, "the events, once the lake is back")
    finally:
        stop.set()
        runner.join(timeout=60)
    got = lake.scan_events(
        datetime.fromtimestamp(t0 / 1000 - 60, UTC), datetime.now(UTC) + timedelta(minutes=1)
    ).collect()
    assert got.height == 3


def test_a_once_run_that_fails_part_way_leaves_its_checkpoint_before_the_failed_lines(tmp_path):
    """A `--once` run whose lake failed mid-batch (out of space) exited 3, and its drain
    stepped once more from where the failed step had read to and checkpointed that:
    the next run read nothing and 16,252 events were lost (found by a soak). A failed
    step leaves the checkpoint where it was; the next run reads those lines."""
    from detector.errors import DetectError
    from detector.pipeline.watch import WatchError

    log_path = tmp_path / "audit.log"
    t0 = int(time.time() * 1000)
    log_path.write_text(
        "".join(anonymous_denied(i, t0 + i, "198.51.100.7") + "\n" for i in range(8))
    )
    lake = Lake(str(tmp_path / "lake"))
    metrics = WatchMetrics()
    alerter = StreamAlerter(lake, StreamDetector(lake), [], metrics=metrics)

    def run() -> None:
        Watcher(
            [lambda: TailSource(lake, str(log_path), alerter.consume, metrics, cluster="c")],
            metrics,
            WatchOptions(poll=0.05, once=True),
        ).run()

    # The events folder cannot be made (a file is in its place), as a full disk: a write
    # of events fails, and a step that writes nothing still goes through.
    blocker = tmp_path / "lake" / "events"
    blocker.parent.mkdir()
    blocker.write_text("")
    with pytest.raises((WatchError, DetectError)):
        run()
    blocker.unlink()
    run()
    got = lake.scan_events(
        datetime.fromtimestamp(t0 / 1000 - 60, UTC), datetime.now(UTC) + timedelta(minutes=1)
    ).collect()
    assert got.height == 8


def test_a_once_run_whose_catch_up_fails_loses_nothing(tmp_path):
    """The same, where the failing write is in the run's last steps (a `--once` run
    catching up a poll at a time): the drain after it stepped on from the failed read and
    checkpointed it (found by review). The run fails; the next one reads the rest."""
    from detector.pipeline.watch import WatchError

    log_path = tmp_path / "audit.log"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    t0 = int(hour.timestamp() * 1000)
    lines = [anonymous_denied(i, t0 + i, "198.51.100.7") + "\n" for i in range(4)]
    lines += [anonymous_denied(i, t0 + 3_600_000 + i, "198.51.100.7") + "\n" for i in range(4)]
    log_path.write_text("".join(lines))
    lake = Lake(str(tmp_path / "lake"))
    metrics = WatchMetrics()
    alerter = StreamAlerter(lake, StreamDetector(lake), [], metrics=metrics)
    half = sum(len(x) for x in lines[:4])

    def run() -> None:
        Watcher(
            [lambda: TailSource(
                lake, str(log_path), alerter.consume, metrics, cluster="c", poll_bytes=half
            )],
            metrics,
            WatchOptions(poll=0.05, once=True),
        ).run()  # fmt: skip

    # The second hour's partition cannot be made (a file is in its place): its write fails.
    later = hour + timedelta(hours=1)
    blocker = tmp_path / f"lake/events/cluster=c/date={later:%Y-%m-%d}/hour={later:%H}"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("")
    with pytest.raises(WatchError):
        run()
    blocker.unlink()
    run()
    got = lake.scan_events(hour - timedelta(minutes=1), later + timedelta(hours=1)).collect()
    assert got.height == 8


def test_a_source_that_starts_and_then_fails_waits_longer_each_time():
    """A source whose start works and whose step fails (a lake out of space, S3 down) was
    retried every second: the wait was reset at each start (found by a soak). It doubles
    up to max_backoff until a step goes through. A stand-in source: the failure is the
    thing under test, and no server fails on cue at its start but not after it."""

    class Failing:
        name, finite = "tail:x", False
        steps = 0

        def start(self) -> None: ...

        def step(self) -> None:
            Failing.steps += 1
            if Failing.steps <= 4:
                raise OSError(28, "No space left on device")

        def abort(self) -> None: ...

    watcher = Watcher([Failing], WatchMetrics(), WatchOptions(max_backoff=8.0))
    slot = {"make": Failing, "src": None, "standby": False, "retry_at": 0.0, "backoff": 1.0}
    waits = []
    for _ in range(5):
        slot["retry_at"] = 0.0  # due now: the waits themselves are what is checked
        watcher._step(slot)
        waits.append(slot["backoff"])
    assert waits == [2.0, 4.0, 8.0, 8.0, 1.0]


def test_a_stop_while_far_behind_ends_within_a_step_and_the_next_run_reads_the_rest(tmp_path):
    """SIGTERM on a tail with a backlog (a big log followed from its start): the watcher
    hands over one more poll, checkpoints and exits, rather than reading the whole
    backlog past the pod's grace period; the next run goes on from the checkpoint, and
    every line is in the lake once. (It used to read to the end on a stop.)"""
    from detector.pipeline.watch import TailSource

    log_path = tmp_path / "audit.log"
    t0 = int(time.time() * 1000)
    lines = [anonymous_denied(i, t0 + i, "198.51.100.9") + "\n" for i in range(60)]
    log_path.write_text("".join(lines))
    poll = 5 * len(lines[0])  # about five lines a step
    lake = Lake(str(tmp_path / "lake"))
    metrics = WatchMetrics()
    alerter = StreamAlerter(lake, StreamDetector(lake), [], metrics=metrics)
    stop = threading.Event()
    rounds = []

    def tick() -> None:
        rounds.append(1)
        if len(rounds) == 2:  # the second round starts: SIGTERM arrives
            stop.set()

    def source() -> TailSource:
        return TailSource(
            lake, str(log_path), alerter.consume, metrics, cluster="c1", poll_bytes=poll
        )

    Watcher([source], metrics, WatchOptions(poll=60), stop=stop, on_tick=tick).run()
    first = metrics.totals["events"]
    assert 0 < first <= 15  # the two rounds begun before the stop, and one more poll
    Watcher([source], metrics, WatchOptions(poll=60, once=True)).run()
    got = lake.scan_events(
        datetime.fromtimestamp(t0 / 1000 - 60, UTC), datetime.now(UTC) + timedelta(minutes=1)
    ).collect()
    assert got.height == len(lines) and got["audit_id"].n_unique() == len(lines)


def test_a_first_run_killed_before_its_first_checkpoint_then_a_rotation_loses_nothing(
    tmp_path,
):
    """The first run's position was stored only when its first step ended (up to 128 MB:
    seconds): killed during it, and the log rotated before the re-run, the re-run had no
    file to look for and read the new log only (60,000 events lost; found by review). The
    file as found is stored when the source starts."""
    from detector.pipeline.watch import TailSource

    log_path = tmp_path / "audit.log"
    t0 = int(time.time() * 1000)
    lines = [anonymous_denied(i, t0 + i, "198.51.100.9") + "\n" for i in range(30)]
    log_path.write_text("".join(lines[:20]))
    lake = Lake(str(tmp_path / "lake"))
    metrics = WatchMetrics()
    alerter = StreamAlerter(lake, StreamDetector(lake), [], metrics=metrics)

    def source() -> TailSource:
        return TailSource(lake, str(log_path), alerter.consume, metrics, cluster="c1")

    killed = source()
    killed.start()  # SIGKILL here: the lease taken, nothing read or written yet
    os.rename(log_path, tmp_path / "audit.log.1")
    log_path.write_text("".join(lines[20:]))
    Watcher([source], metrics, WatchOptions(poll=60, once=True)).run()
    got = lake.scan_events(
        datetime.fromtimestamp(t0 / 1000 - 60, UTC), datetime.now(UTC) + timedelta(minutes=1)
    ).collect()
    assert got.height == len(lines) and got["audit_id"].n_unique() == len(lines)


def test_edited_rule_files_are_picked_up_without_a_restart_and_a_broken_edit_is_not(
    tmp_path, caplog
):
    from test_rules_engine import rule_yaml
    from test_rules_helpers import T0, ev, frame

    lake = Lake(str(tmp_path / "lake"))
    events = frame(
        ev("delete", "pods", ns="shop", name="a", at=T0),
        ev("create", "configmaps", ns="shop", name="b", at=T0 + timedelta(minutes=20)),
    )
    lake.write_events(events)
    site = tmp_path / "site.yaml"
    site.write_text(rule_yaml("site-watch", "verb = delete and resource = pods"))
    detector = StreamDetector(lake, rule_files=[str(site)], rules_check=0)

    def fired(batch: pl.DataFrame) -> set[str]:
        res = detector.process(batch, T0 + timedelta(hours=1), StreamState())
        return set(res.findings.filter(pl.col("detector") == "rule:site-watch")["principal"])

    first, second = events[0], events[1]
    assert fired(first) == {"alice"}
    assert fired(second) == set()  # a configmap creation: not what the rule says yet
    site.write_text(rule_yaml("site-watch", "verb = create and resource = configmaps"))
    assert fired(second) == {"alice"}  # the edit is in force, no restart
    site.write_text("- rule: site-watch\n  title: [unclosed\n")
    with caplog.at_level("WARNING"):
        assert fired(second) == {"alice"}  # a half-saved file keeps the rules in use
    assert any("do not load" in r.getMessage() for r in caplog.records)


_STAMP_OF_ZERO = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from detector.detect.stream import _files_stamp
print(_files_stamp([sys.argv[1], sys.argv[2]]))
"""


def test_a_rules_path_pointed_at_an_endless_file_is_unreadable_not_read(tmp_path):
    """`detect watch` looks at its rule files every few seconds to notice an edit. A path
    an operator points at a log or ``/dev/zero`` by mistake is refused by the loader (16
    MB at most); the edit check must not read it whole either (it read until memory ran
    out). A child process under a 2 GB address-space limit, so a regression fails this
    test with a MemoryError instead of exhausting the machine."""
    site = tmp_path / "site.yaml"
    site.write_text("[]\n")
    done = subprocess.run(
        [sys.executable, "-c", _STAMP_OF_ZERO, str(site), "/dev/zero"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "unreadable: larger than 16 MB" in done.stdout
    assert str(site) in done.stdout and done.stdout.count("unreadable") == 1


def test_the_probe_endpoints_drop_silent_clients_and_answer_past_them():
    """Each connection to /healthz holds a thread: a client that connects and sends half a
    request (or nothing) held one forever, so enough of them would starve the probes and
    get the pod restarted. They are dropped after ``idle_timeout``; the server closing the
    socket is what the test waits for (no sleep), bounded by a socket timeout."""
    import socket

    from detector.pipeline.watch_metrics import HealthServer

    server = HealthServer(WatchMetrics(), 0, host="127.0.0.1", idle_timeout=0.2).start()
    try:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
        for s in silent[:10]:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.status == 200
        for s in silent:
            s.settimeout(5)
            assert s.recv(1024) == b""  # closed by the server, not by us
            s.close()
    finally:
        server.stop()


def test_a_health_port_already_in_use_is_one_line_naming_the_port(tmp_path, detect):
    """A second `detect watch` on the same node, or any process on 9102: the error said
    only 'Address already in use', not what the address was for or which one."""
    import socket

    log_path = tmp_path / "audit.log"
    log_path.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = detect(
            *("watch", "--tail", str(log_path), "--cluster", "c1"),
            *("--lake", str(tmp_path / "lake"), "--no-model", "--port", str(port), "--once"),
            timeout=60,
        )
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: cannot serve /healthz and /metrics on 0.0.0.0:{port}: Address already in use "
        "(another process has it? choose one with --port)"
    ]


#: A port-forward session opened just before 21:40 and closed just after: logged twice.
SESSION_START = datetime(2026, 11, 27, 21, 39, 59, tzinfo=UTC)
SESSION_END = SESSION_START + timedelta(seconds=6)


def session_lines() -> tuple[dict, dict]:
    """The session's two log lines: (opened, closed), one audit ID."""
    from lakefill import GRACE, event

    forward = {"verb": "create", "subresource": "portforward", "audit_id": "pf-1"}
    at = {"received_time": SESSION_START, **forward}
    return (
        event(GRACE, SESSION_START, stage="ResponseStarted", **at),
        event(GRACE, SESSION_END, stage="ResponseComplete", **at),
    )


def assert_counted_once_where_it_opened(lake: Lake) -> None:
    """The stream's port-forward findings are a batch score's: one, in the start's window."""
    rule = pl.col("detector") == "rule:pod-port-forward"
    stream = list_findings(lake, min_severity="info").filter(rule)
    lo, hi = SESSION_START - timedelta(minutes=10), SESSION_END + timedelta(minutes=10)
    batch = score_range(
        lake, lo, hi, model=None, options=ScoreOptions(use_model=False, write=False)
    ).findings.filter(rule)
    assert batch["window_start"].to_list() == [datetime(2026, 11, 27, 21, 30, tzinfo=UTC)]
    assert stream.select(COMPARED).sort("finding_id").equals(batch.select(COMPARED))


def test_a_session_start_read_after_its_end_leaves_no_finding_in_the_ends_window(tmp_path):
    """Read from two CloudWatch streams, a session's close can arrive before its start.
    The batch with the close counts the session in the close's window (no start is there
    to prefer); the batch with the start counts it in the start's window, and must take it
    out of the close's: a batch score over the range counts it once, where it began (found
    by the watch soak on CloudWatch)."""
    from lakefill import GRACE, event, write_events

    lake = Lake(str(tmp_path / "lake"))
    opened, closed = session_lines()
    before = event(GRACE, SESSION_START - timedelta(minutes=5))  # the batch spans 2 windows
    detector, state = StreamDetector(lake, cluster="prod"), StreamState()
    detector.process(write_events(lake, [before, closed]), SESSION_END, state)
    detector.process(write_events(lake, [opened]), SESSION_END + timedelta(seconds=1), state)
    assert_counted_once_where_it_opened(lake)


def test_a_session_closed_in_a_quiet_window_is_not_counted_again_there(tmp_path):
    """A session is counted where it opened. Its close comes in a later batch whose window
    holds no other session start: that batch took the log for one that never records
    starts (an audit policy can omit the stage), and counted the session again, in the
    close's window."""
    from lakefill import write_events

    lake = Lake(str(tmp_path / "lake"))
    opened, closed = session_lines()
    detector, state = StreamDetector(lake, cluster="prod"), StreamState()
    detector.process(write_events(lake, [opened]), SESSION_START, state)
    detector.process(write_events(lake, [closed]), SESSION_END, state)
    assert_counted_once_where_it_opened(lake)


def test_a_quiet_range_scored_after_a_session_start_does_not_count_the_close(tmp_path):
    """The same quiet window, scored by a batch run (`detect score --since 10m` from cron)
    and by a new stream's first batch: neither has seen the start, yet the lake's week
    before holds it, so the log records starts and the close was counted where it opened."""
    from lakefill import write_events

    lake = Lake(str(tmp_path / "lake"))
    opened, closed = session_lines()
    write_events(lake, [opened])
    rule = pl.col("detector") == "rule:pod-port-forward"
    close_window = datetime(2026, 11, 27, 21, 40, tzinfo=UTC)
    quiet = ScoreOptions(use_model=False, write=False)
    StreamDetector(lake, cluster="prod").process(
        write_events(lake, [closed]), SESSION_END, StreamState()
    )
    assert list_findings(lake, min_severity="info").filter(rule).is_empty()
    batch = score_range(
        lake, close_window, close_window + timedelta(minutes=10), model=None, options=quiet
    )
    assert batch.findings.filter(rule).is_empty()


def test_a_leader_deposed_while_it_detected_writes_nothing(tmp_path):
    """A leader that stalls past its lease (CPU throttled, a slow store) is replaced; when
    it woke it wrote the findings of its batch after its successor's, older over newer,
    and only its checkpoint failed. Its writes now renew its lease first, under the lake's
    writer lock: deposed, it writes nothing."""
    from alerts_data import T0, W, finding, frames

    from detector.lake import findings as findings_store
    from detector.lake.state import CheckpointConflict, Owner

    lake = Lake(str(tmp_path / "lake"))
    log_path = tmp_path / "audit.log"
    log_path.write_text(json.dumps(make_event(1)) + "\n")
    clock = [datetime.now(UTC).timestamp()]
    metrics = WatchMetrics()

    def source(consume, owner: Owner) -> TailSource:
        return TailSource(
            lake, str(log_path), consume, metrics, cluster="c", lease_seconds=60,
            owner=owner, clock=lambda: clock[0],
        )  # fmt: skip

    successor = source(lambda events, now, payload: {"by": "successor"}, Owner())

    def take_over() -> None:
        successor.start()
        successor.step()

    def stalled(events, now, payload):
        clock[0] += 120  # past the lease: the standby takes over and goes on
        other = threading.Thread(target=take_over)  # its own context, as its own process
        other.start()
        other.join()
        df, ev = frames([finding("stale", T0, cluster="c")])
        findings_store.write_range(lake, "rules", T0, T0 + W, df, ev, cluster="c")
        return {"by": "deposed"}

    deposed = source(stalled, Owner())
    deposed.start()
    with pytest.raises(CheckpointConflict):
        deposed.step()
    assert list_findings(lake, min_severity="info").is_empty()
    assert successor.lease.peek()["payload"] == {"by": "successor"}


def test_a_deposed_leader_sends_no_alert(sim, tmp_path):
    """A replaced leader that woke sent the incidents due (a retry, an update) although its
    successor sends them too: only lake writes passed its fence. Sending does now, before
    the first alert and after each checkpoint of what was sent."""
    from detector.lake.lock import fenced
    from detector.lake.state import CheckpointConflict

    lake = Lake(str(tmp_path / "lake"))
    replay_in_process(lake, sim, [])  # incidents filed, nothing sent: no sink yet
    now = datetime.fromisoformat(END) + timedelta(minutes=5)
    nothing = lake.scan_events(now, now).collect()
    receiver = Receiver()
    try:

        def taken_over() -> None:
            raise CheckpointConflict("the lease was taken by another replica")

        deposed = StreamAlerter(lake, StreamDetector(lake), [hook_sink(receiver.url)])
        with fenced(taken_over), pytest.raises(CheckpointConflict):
            deposed.consume(nothing, now, None)
        assert receiver.requests == []
        leader = StreamAlerter(lake, StreamDetector(lake), [hook_sink(receiver.url)])
        leader.consume(nothing, now, None)
        assert len(keys(receiver)) > 0  # they were due: the leader sends them
    finally:
        receiver.close()


def test_the_stream_state_round_trips_and_survives_a_garbled_payload(tmp_path):
    """The stream's state lives in its checkpoint payload: it reads back as it was saved,
    and a payload of another shape (edited by hand, written by the build that also kept
    the log's stages) reads as what it can of a fresh state, not a crash."""
    from lakefill import GRACE, event, write_events

    lake = Lake(str(tmp_path / "lake"))
    state = StreamState()
    StreamDetector(lake, cluster="prod").process(
        write_events(lake, [event(GRACE, SESSION_START)]), SESSION_START, state
    )
    assert state.latest_ms is not None
    assert StreamState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    garbled = {"latest_ms": "soon", "open_windows": [{"a": 1}, "x", True, 600_000]}
    assert StreamState.from_dict(garbled) == StreamState(open_windows={600_000})
    older = {**state.to_dict(), "stages": ["ResponseStarted", "x" * 10_000]}
    assert StreamState.from_dict(older) == state
    for payload in ([], "x", {"open_windows": "abc", "latest_ms": 1.5}):
        assert StreamState.from_dict(payload) == StreamState()  # type: ignore[arg-type]


def test_the_status_line_of_a_standby_says_it_stands_by():
    """A standby's status line said "lag 0.0s", read as caught up (found by a soak)."""
    metrics = WatchMetrics()
    metrics.standing_by.add("tail:a")
    assert "standing by" in metrics.status_line() and "lag" not in metrics.status_line()
    metrics.standing_by.discard("tail:a")  # took over, or a leader that stopped
    metrics.leader.labels(source="tail:a").set(0)
    metrics.lag.labels(source="tail:a").set(2.5)
    assert "lag 2.5s" in metrics.status_line()


def test_the_closing_summary_of_a_watch_whose_sink_failed_says_so(tmp_path, detect):
    """The status line and /metrics counted a failed delivery, but the summary a watch
    prints as it stops said "1 alerts sent" and nothing of the failure (found by review)."""
    (tmp_path / "detect.toml").write_text(
        f'[[sinks]]\nname = "hook"\ntype = "webhook"\nretries = 0\n'
        f'url = "http://127.0.0.1:{free_port()}/hook"\n'  # nothing listens: refused at once
    )
    log_path = tmp_path / "audit.log"
    t0 = int(time.time() * 1000)
    log_path.write_text(
        "".join(anonymous_denied(i, t0 + i, "198.51.100.9") + "\n" for i in range(5))
    )
    run = detect(
        *("watch", "--tail", str(log_path), "--lake", str(tmp_path / "lake"), "--no-model"),
        *("--cluster", "c", "--once"),
        env={"DETECT_CONFIG": str(tmp_path / "detect.toml")},
    )
    assert run.returncode == 0, run.stderr
    summary = next(line for line in run.stderr.splitlines() if "watch stopped" in line)
    assert "0 alerts sent, 1 failed" in summary, summary
