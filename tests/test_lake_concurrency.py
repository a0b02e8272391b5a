"""Concurrent writers into one lake: two `detect ingest` runs and a `detect export` at once.

Every process is the real CLI; S3 and CloudWatch Logs are a moto server on loopback. The
lake's writer lock (detector/lake/lock.py: a lease taken by conditional S3 writes) is what
keeps the three from each deciding that the same (audit_id, stage) is new: without it two
ingests of overlapping files once stored 39,473 duplicate rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import boto3
import orjson

from detector.lake.events import Lake


def detect_cmd() -> list[str]:
    import sys

    exe = Path(os.environ.get("DETECT_UNDER_TEST") or Path(sys.executable).parent / "detect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]


N = 3_000
LATE = 300


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message(i: int, ts: int) -> str:
    return orjson.dumps(
        {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": f"c-{i:08d}",
            "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/app/pods",
            "verb": "list",
            "user": {"username": "alice", "groups": ["system:authenticated"]},
            "sourceIPs": ["203.0.113.7"],
            "objectRef": {"resource": "pods", "namespace": "app", "apiVersion": "v1"},
            "responseStatus": {"metadata": {}, "code": 200},
            "requestReceivedTimestamp": iso(ts - 1),
            "stageTimestamp": iso(ts),
        }
    ).decode()


def test_two_ingests_and_an_export_at_once_store_each_event_once(
    tmp_path, s3_bucket, moto_endpoint
):
    t0 = int(time.time() * 1000)
    # Early events: in CloudWatch from the start. Late ones: put while the follow export
    # runs, after both ingests stored them. Everything is in one of the two ingest files.
    early = [t0 - 30 * 60_000 + i * (22 * 60_000) // N for i in range(N)]
    late = [t0 - 7 * 60_000 + i * 60_000 // LATE for i in range(LATE)]
    stamps = early + late
    msgs = [message(i, t) for i, t in enumerate(stamps)]
    total = len(msgs)
    a = tmp_path / "a.log"
    b = tmp_path / "b.log"
    a.write_text("\n".join(msgs[: 2 * total // 3]) + "\n")
    b.write_text("\n".join(msgs[total // 3 :]) + "\n")

    logs = boto3.client("logs", endpoint_url=moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    group = f"/aws/eks/t{uuid.uuid4().hex[:10]}/cluster"
    stream = "kube-apiserver-audit-0a1b2c3d4e5f"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)

    def put(indexes: range) -> None:
        for k in range(indexes.start, indexes.stop, 2000):
            logs.put_log_events(
                logGroupName=group,
                logStreamName=stream,
                logEvents=[
                    {"timestamp": stamps[i], "message": msgs[i]}
                    for i in range(k, min(k + 2000, indexes.stop))
                ],
            )

    put(range(N))
    lake = f"s3://{s3_bucket}/lake"
    common = ["--lake", lake, "--cluster", "prod", "--format", "json"]
    follow = [
        *("export", "--log-group", group, "--since", "31m", "--follow", "--latency", "5m"),
        *("--interval", "1s", "--flush-interval", "1s", "--rate", "0", *common),
    ]

    def start(command: list[str]) -> subprocess.Popen:
        return subprocess.Popen(
            [*detect_cmd(), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )

    def wait_for(what: str, done, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + 120
        while not done():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def watermark() -> int:
        listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="lake/_state/cloudwatch/")
        if not listed.get("KeyCount"):
            return 0
        body = s3.get_object(Bucket=s3_bucket, Key=listed["Contents"][0]["Key"])["Body"]
        return json.loads(body.read()).get("watermark_ms") or 0

    export = start(follow)
    wait_for("the export wrote nothing", lambda: watermark() > 0, export)
    # Two ingests at once, into the hours the export has already written (and holds
    # dedup keys for); then the late events reach CloudWatch and the export.
    ingests = [start(["ingest", str(a), *common]), start(["ingest", str(b), *common])]
    results = [p.communicate(timeout=300) for p in ingests]
    for p, (_out, err) in zip(ingests, results, strict=True):
        assert p.returncode == 0, err
    put_at = int(time.time() * 1000)
    put(range(N, total))
    wait_for(
        "the export did not pass over the late events",
        lambda: watermark() > put_at - 5 * 60_000 + 2000,
        export,
    )
    export.send_signal(signal.SIGTERM)
    out, err = export.communicate(timeout=60)
    assert export.returncode == 0, err
    summaries = [json.loads(o) for o, _ in results] + [json.loads(out)]

    got = Lake(lake).scan_events().select("audit_id", "stage").collect()
    assert got.height == total  # each event once, whichever process stored it
    assert got["audit_id"].n_unique() == total
    assert sum(s["events_written"] for s in summaries) == total
