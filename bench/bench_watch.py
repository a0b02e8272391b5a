"""`detect watch` benchmark: alert latency from CloudWatch (moto) to a webhook, events/s, memory.

1. **Latency.** moto's server on loopback (its own process), one log group, a local webhook
   receiver, and `detect watch` as a subprocess at its default poll interval (5 s). A
   producer puts benign events at a steady rate and, every 3 seconds, a planted attack: a
   cluster-wide RBAC change by a new user (rule ``rbac-changed``), so each is its own
   alert. Latency = the alert's arrival at the webhook minus the moment ``PutLogEvents``
   returned (the event is readable from CloudWatch from then on). For model findings (a
   model with 1-minute windows trained on the same benign traffic, ``--grace 10s``), latency is
   counted from the window's close plus the grace: the earliest a finding can be due.
2. **Events/s sustained**: a burst of events put at once, timed until the watcher's
   ``detect_watch_events_total`` reaches it.
3. **Memory over a day**: `detect simulate --days 1`, replayed flat out (`--replay
   --speed 0 --step 5m`); VmRSS sampled; prints the peak growth after the first replayed
   hour (target < 10%). ``--repeat-day N`` replays one simulated day N times on
   consecutive days and prints the peak per day: flat when nothing grows with time.

Targets (issue 11): single-event rules p95 <= 10 s; model findings p95 <= window close +
grace + 10 s. Run with `make bench` or `python bench/bench_watch.py [--seconds 90]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson

DETECT = Path(sys.executable).parent / "detect"
MOTO = Path(sys.executable).parent / "moto_server"
STREAM = "kube-apiserver-audit-0bench0"
USERS = [f"system:serviceaccount:team-{i}:app" for i in range(12)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _event(ts: int, user: str, *, verb: str = "get", ip: str = "10.0.0.9", code: int = 200):
    ns = user.split(":")[2] if user.count(":") >= 3 else "default"
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/{ns}/configmaps",
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": [ip],
        "userAgent": "app/1.0",
        "objectRef": {"resource": "configmaps", "namespace": ns, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": _iso(ts - 5),
        "stageTimestamp": _iso(ts),
    }


def _rbac_change(ts: int, user: str) -> dict:
    """A cluster-wide RBAC change (rule rbac-changed): by a new user each time, so each is
    a new finding and a new incident (a second one by the same user in the same window
    would only update the first finding, by design)."""
    ev = _event(ts, user, verb="create", code=201)
    ev["requestURI"] = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    ev["objectRef"] = {
        "resource": "clusterrolebindings",
        "name": "bench",
        "apiGroup": "rbac.authorization.k8s.io",
        "apiVersion": "v1",
    }
    return ev


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q * (len(values) - 1))))
    return values[k]


class Hook:
    """Webhook receiver: arrival time and body of every alert."""

    def __init__(self) -> None:
        self.got: list[tuple[float, dict]] = []
        hook = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.got.append((time.time(), json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's server on a free loopback port, in its own process; this process's AWS_*
    variables point at it (children started after inherit them). Returns it and its URL."""
    port = _free_port()
    moto = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    return moto, endpoint


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _train_model(work: Path) -> str:
    """A 1-minute-window model on two hours of the same benign traffic (library calls)."""
    from detector.detect.train import train_model
    from detector.lake.events import Lake
    from detector.pipeline.ingest import read_events

    rng = random.Random(7)
    end = int(time.time() * 1000) - 10 * 60_000
    start = end - 2 * 3600_000
    path = work / "history.log"
    with path.open("wb") as fh:
        for ts in range(start, end, 250):
            user = USERS[rng.randrange(len(USERS))]
            fh.write(orjson.dumps(_event(ts, user, verb=_verb(rng))) + b"\n")
    events, _ = read_events([str(path)], cluster="bench")
    lake = Lake(str(work / "history-lake"))
    lake.write_events(events)
    model_dir = str(work / "model")
    train_model(
        lake,
        datetime.fromtimestamp(start / 1000, UTC),
        datetime.fromtimestamp(end / 1000, UTC),
        model_dir=model_dir,
        window=timedelta(minutes=1),
        alert_rate=0.05,
    )
    return model_dir


def _verb(rng: random.Random) -> str:
    return "get" if rng.random() < 0.8 else "list"


def latency(seconds: float, rate: float, burst: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    moto, endpoint = start_moto()
    env = dict(os.environ)
    hook = Hook()
    watch = None
    try:
        import boto3

        for _ in range(100):
            try:
                logs = boto3.client("logs", endpoint_url=endpoint)
                logs.create_log_group(logGroupName="/aws/eks/bench/cluster")
                break
            except Exception:
                time.sleep(0.1)
        group = "/aws/eks/bench/cluster"
        logs.create_log_stream(logGroupName=group, logStreamName=STREAM)
        model_dir = _train_model(work)
        (work / "detect.toml").write_text(
            f'[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "{hook.url}"\n'
        )
        mport = _free_port()
        watch = subprocess.Popen(
            [str(DETECT), "watch", "--log-group", group, "--lake", str(work / "lake"),
             "--model-dir", model_dir, "--grace", "10s", "--since", "1m", "--rate", "0",
             "--port", str(mport)],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.time() + 60
        while _metric(mport, "detect_watch_leader") == 0 and time.time() < deadline:
            time.sleep(0.2)
        rng = random.Random(1)
        put_at: dict[str, float] = {}
        t_end = time.time() + seconds
        n = next_attack = 0
        started = time.time()
        while time.time() < t_end:
            now = int(time.time() * 1000)
            batch = [
                _event(now, USERS[rng.randrange(len(USERS))], verb=_verb(rng))
                for _ in range(max(1, int(rate)))
            ]
            # a principal never seen in training, new every minute, deleting secrets: the
            # model's kind of finding (no rule needs to fire for it)
            rogue = f"system:serviceaccount:rogue-{now // 60_000 % 1000}:miner"
            batch += [_event(now, rogue, verb="delete") for _ in range(5)]
            who = None
            if time.time() >= next_attack:
                n += 1
                who = f"bench-admin-{n}"
                batch.append(_rbac_change(now, who))
                next_attack = time.time() + 3
            logs.put_log_events(
                logGroupName=group,
                logStreamName=STREAM,
                logEvents=[{"timestamp": now, "message": orjson.dumps(e).decode()} for e in batch],
            )
            if who:
                put_at[who] = time.time()
            time.sleep(max(0.0, 1.0 - (time.time() - started) % 1.0))
        time.sleep(15)  # the last alerts of the run
        rule_lat, model_lat = [], []
        for at, body in hook.got:
            fields = body.get("output_fields", {})
            if body.get("rule", "").startswith("model:"):
                close = datetime.fromisoformat(body["time"].replace("Z", "+00:00")).timestamp()
                model_lat.append(at - (close + 10))
                continue
            who = fields.get("ka.user.name")
            if who in put_at and fields.get("detect.incident.kind") == "new":
                rule_lat.append(at - put_at[who])
        if rule_lat:
            print(
                f"single-event rule alerts: {len(rule_lat)} of {len(put_at)} planted; latency "
                f"p50 {statistics.median(rule_lat):.2f}s p95 {_percentile(rule_lat, 0.95):.2f}s "
                f"(target p95 <= 10s) at the default 5s poll"
            )
        else:
            print("single-event rule alerts: none arrived")
        if model_lat:
            print(
                f"model alerts: {len(model_lat)}; after window close + grace: "
                f"p50 {statistics.median(model_lat):.2f}s p95 {_percentile(model_lat, 0.95):.2f}s "
                f"(target p95 <= 10s)"
            )
        else:
            print("model alerts: none in this run (no window scored above the threshold)")
        # sustained: a burst put at once, timed to the watcher's event counter
        before = _metric(mport, "detect_watch_events_total")
        now = int(time.time() * 1000)
        t0 = time.time()
        for i in range(0, burst, 5000):
            evs = [
                _event(now + j // 50, USERS[j % len(USERS)]) for j in range(i, min(burst, i + 5000))
            ]
            logs.put_log_events(
                logGroupName=group,
                logStreamName=STREAM,
                logEvents=[
                    {"timestamp": now + j // 50, "message": orjson.dumps(e).decode()}
                    for j, e in enumerate(evs)
                ],
            )
        put_s = time.time() - t0
        deadline = time.time() + 600
        while _metric(mport, "detect_watch_events_total") < before + burst:
            if time.time() > deadline:
                break
            time.sleep(0.2)
        took = time.time() - t0
        print(
            f"sustained: {burst} events through watch in {took:.1f}s = {burst / took:,.0f} "
            f"events/s (put into moto in {put_s:.1f}s; moto's FilterLogEvents is the ceiling)"
        )
    finally:
        if watch is not None:
            watch.terminate()
            watch.wait(timeout=120)
        moto.terminate()
        moto.wait(timeout=30)
        hook.server.shutdown()


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def repeat_day(log: Path, copies: int) -> Path:
    """``log`` (one simulated day, 2026-11-26) followed by ``copies - 1`` copies of it on
    the days after, each with its own audit IDs: days that bring the rules nothing new, so
    what still grows from day to day grows with the lake's or the process's age."""
    first = datetime(2026, 11, 26, tzinfo=UTC)
    out = log.with_name("repeated.log")
    lines = log.read_bytes().splitlines()
    with out.open("wb") as fh:
        for k in range(copies):
            day = (first + timedelta(days=k)).strftime("%Y-%m-%dT").encode()
            for line in lines:
                if k:
                    line = line.replace(b'"2026-11-26T', b'"' + day)
                    line = re.sub(rb'"auditID":\s*"', b'"auditID":"r%d-' % k, line, count=1)
                fh.write(line + b"\n")
    return out


def memory(days: float, rate: float, repeat: int = 1) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-watch-mem-"))
    subprocess.run(
        [str(DETECT), "simulate", "--out", str(work / "sim"), "--days",
         str(1 if repeat > 1 else days), "--rate", str(rate), "--end", "2026-11-27T00:00:00Z"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    log = work / "sim" / "audit.log"
    if repeat > 1:
        log = repeat_day(log, repeat)
    times = []
    with log.open("rb") as fh:
        for line in fh:
            m = re.search(rb'"stageTimestamp":\s*"([^"]+)"', line)
            if m:
                times.append(m.group(1).decode())
    times.sort()
    first = datetime.fromisoformat(times[0].replace("Z", "+00:00"))
    first_hour = sum(
        1
        for t in times
        if datetime.fromisoformat(t.replace("Z", "+00:00")) < first + timedelta(hours=1)
    )
    port = _free_port()
    t0 = time.time()
    proc = subprocess.Popen(
        [str(DETECT), "watch", "--replay", str(log), "--speed", "0", "--step", "5m",
         "--lake", str(work / "lake"), "--no-model", "--no-deliver", "--port", str(port),
         "--cluster", "demo"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rss_1h = None
    samples: list[int] = []
    by_day: dict[int, int] = {}  # replayed day -> peak RSS, for --repeat-day
    per_day = len(times) / repeat
    while proc.poll() is None:
        try:
            rss = _rss_kb(proc.pid)
        except OSError:
            break
        done = _metric(port, "detect_watch_events_total")
        if rss_1h is None and done >= first_hour:
            rss_1h = rss
        elif rss_1h is not None:
            samples.append(rss)
            if done > 0:  # 0: the metrics endpoint did not answer this time
                day = min(repeat - 1, int((done - 1) // per_day))
                by_day[day] = max(by_day.get(day, 0), rss)
        time.sleep(0.5)
    took = time.time() - t0
    if rss_1h and samples:
        peak = max(samples)
        print(
            f"24h replay ({len(times):,} events, {repeat if repeat > 1 else days:g} day(s) at "
            f"{rate:g}/s) in {took:.0f}s: "
            f"RSS after the first hour {rss_1h / 1024:.0f} MB, peak after it "
            f"{peak / 1024:.0f} MB: growth {100 * (peak - rss_1h) / rss_1h:+.1f}% (target < 10%)"
        )
        if repeat > 1:
            peaks = ", ".join(f"{by_day[d] / 1024:.0f}" for d in sorted(by_day))
            print(f"  the same day replayed {repeat} times: peak RSS per day {peaks} MB")
    else:
        print(f"replay ended in {took:.0f}s before memory could be sampled")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=90, help="latency run length")
    ap.add_argument("--rate", type=float, default=20, help="benign events/s during it")
    ap.add_argument("--burst", type=int, default=20_000, help="events for events/s")
    ap.add_argument("--days", type=float, default=1.0, help="replayed traffic for memory")
    ap.add_argument("--replay-rate", type=float, default=1.0)
    ap.add_argument(
        "--repeat-day", type=int, default=1,
        help="replay one simulated day this many times, on consecutive days (memory)",
    )  # fmt: skip
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    if args.repeat_day < 1:
        ap.error("--repeat-day must be 1 or more")
    if not args.skip_latency:
        latency(args.seconds, args.rate, args.burst)
    if not args.skip_memory:
        memory(args.days, args.replay_rate, args.repeat_day)
