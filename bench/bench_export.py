"""Export benchmark: `detect export` of 200k events from a moto server into a fresh lake.

Starts moto in server mode on loopback (its own process, so its CPU and memory are not
counted), writes N audit events into three kube-apiserver-audit streams plus a non-audit
stream, then runs `detect export` as a subprocess three times: unthrottled (``--rate 0``:
what the code can do), with the default client-side rate limit (5 requests/s: what it does
against an account's quota), and unthrottled with pages of 1,000 events (CloudWatch's own
are cut at 1 MB; moto's hold up to 10,000). Prints events/s, API calls per 10k events and
peak RSS of each run. moto is much slower than CloudWatch at filtering (it scans every event of the
group per call), so the unthrottled figure is a floor for our side, not a forecast.

Run with `make bench` or `python bench/bench_export.py --events 200000`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

DETECT = Path(sys.executable).parent / "detect"
MOTO = Path(sys.executable).parent / "moto_server"
STREAMS = [f"kube-apiserver-audit-{i:02d}c0ffee{i:04d}" for i in range(3)]
VERBS = ["get", "list", "watch", "create", "update", "patch", "delete"]
RESOURCES = ["pods", "secrets", "configmaps", "deployments", "services", "leases"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}000Z"


def _message(rng: random.Random, n: int, ts: int) -> str:
    resource = rng.choice(RESOURCES)
    namespace = f"team-{rng.randrange(40)}"
    return orjson.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": f"{n:08x}-bench-4000-8000-{rng.getrandbits(48):012x}",
            "stage": "ResponseComplete",
            "requestURI": f"/api/v1/namespaces/{namespace}/{resource}",
            "verb": rng.choice(VERBS),
            "user": {
                "username": f"system:serviceaccount:{namespace}:app-{rng.randrange(8)}",
                "uid": f"{rng.getrandbits(64):016x}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            },
            "sourceIPs": [f"10.0.{rng.randrange(256)}.{rng.randrange(256)}"],
            "userAgent": "kube-controller/v1.31.2 (linux/amd64) kubernetes/abcdef0",
            "objectRef": {"resource": resource, "namespace": namespace, "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": _iso(ts - 3),
            "stageTimestamp": _iso(ts),
            "annotations": {
                "authorization.k8s.io/decision": "allow",
                "authorization.k8s.io/reason": "RBAC: allowed by RoleBinding",
            },
        }
    ).decode()


def populate(endpoint: str, group: str, events: int, seed: int) -> tuple[int, int]:
    """N audit events over the last 3 hours (minus 10 min), round-robin over the streams."""
    import boto3

    logs = boto3.client("logs", endpoint_url=endpoint)
    logs.create_log_group(logGroupName=group)
    for name in [*STREAMS, "authenticator-c0ffee"]:
        logs.create_log_stream(logGroupName=group, logStreamName=name)
    rng = random.Random(seed)
    end = int(time.time() * 1000) - 10 * 60_000
    start = end - 3 * 3600_000
    per_stream = [[] for _ in STREAMS]
    for n in range(events):
        ts = start + (end - start) * n // events
        per_stream[n % len(STREAMS)].append({"timestamp": ts, "message": _message(rng, n, ts)})
    for name, items in zip(STREAMS, per_stream, strict=True):
        for i in range(0, len(items), 5000):
            logs.put_log_events(
                logGroupName=group, logStreamName=name, logEvents=items[i : i + 5000]
            )
    logs.put_log_events(
        logGroupName=group,
        logStreamName="authenticator-c0ffee",
        logEvents=[
            {"timestamp": start + i * 1000, "message": f"time=x msg=auth {i}"} for i in range(2000)
        ],
    )
    return start, end


def run_export(
    lake: Path, group: str, start_ms: int, rate: str, env: dict, extra: list[str]
) -> dict:
    shutil.rmtree(lake, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(DETECT),
            "export",
            "--log-group",
            group,
            "--lake",
            str(lake),
            "--since",
            _iso(start_ms - 60_000),
            "--latency",
            "0s",
            "--rate",
            rate,
            "--format",
            "json",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    if status != 0:
        raise SystemExit(f"detect export failed ({status}): {err}")
    summary = json.loads(out)
    summary["wall_seconds"] = seconds
    summary["peak_rss_mb"] = usage.ru_maxrss / 1024
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flush-events", type=int, default=None, help="passed to detect export")
    args, _ = parser.parse_known_args()  # bench/run.py passes its arguments to every bench

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    os.environ.update(
        {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        group = "/aws/eks/bench/cluster"
        t = time.perf_counter()
        start, _ = populate(endpoint, group, args.events, args.seed)
        print(
            f"put {args.events:,} events into moto in {time.perf_counter() - t:.1f}s",
            file=sys.stderr,
        )
        # moto answers with pages of up to 10,000 events; CloudWatch stops a page at 1 MB
        # (about 1,000 events): the third run reads pages of that size.
        runs = [
            ("--rate 0 (unthrottled)", "0", []),
            ("--rate 5 (default)", "5", []),
            ("--page-limit 1000", "0", ["--page-limit", "1000"]),
        ]
        print(
            f"export benchmark: {args.events:,} events, 3 audit streams + 1 other, "
            "moto server on loopback (2 cores)"
        )
        for label, rate, pages in runs:
            extra = ["--flush-events", str(args.flush_events)] if args.flush_events else []
            extra += pages
            s = run_export(work / "lake", group, start, rate, env, extra)
            assert s["events_written"] == args.events, s
            calls_per_10k = s["api_calls"] * 10_000 / s["events_read"]
            waiting = s["api_seconds"] + s["backoff_seconds"] + s["rate_limit_wait_seconds"]
            ours = max(s["seconds"] - waiting, 1e-9)
            print(
                f"  {label:24}: {s['wall_seconds']:6.1f}s wall, "
                f"{s['events_read'] / s['wall_seconds']:>7,.0f} events/s end to end, "
                f"peak RSS {s['peak_rss_mb']:,.0f} MB\n"
                f"  {'':24}  {s['api_calls']} API calls = {calls_per_10k:.1f} per 10k events; "
                f"{s['api_seconds']:.1f}s waiting for moto, "
                f"{s['rate_limit_wait_seconds']:.1f}s held by the rate limit; "
                f"our side alone {s['events_read'] / ours:,.0f} events/s; "
                f"{s['files_written']} files"
            )
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
