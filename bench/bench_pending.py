"""What `detect watch` pays each minute to learn what its sinks are still owed.

Builds a lake with 37 days of incidents (30 a day, through the library as scoring files
them) and a dead letter every other day of the last 30, then asks what is pending five
times as a watch does (one :class:`~detector.delivery.run.PendingIncidents` kept between
calls), then once more after another process acknowledged a 20-day-old incident. Prints
each call's time and, on S3 (moto's server on loopback), the requests it made.

Usage::

    python bench/bench_pending.py            # S3 on moto
    python bench/bench_pending.py --local DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_partition import _S3Requests as S3Requests  # noqa: E402
from detector.delivery.records import write_dead_letters  # noqa: E402
from detector.delivery.run import PendingIncidents  # noqa: E402
from detector.incidents import workflow  # noqa: E402
from detector.lake.events import Lake  # noqa: E402
from detector.lake.incidents import read_incidents  # noqa: E402
from tests.alerts_data import T0, W, finding, frames  # noqa: E402

DAYS, PER_DAY = 37, 30
NOW = T0 + timedelta(days=DAYS)


def build(lake: Lake) -> None:
    for d in range(DAYS):
        day = T0 + timedelta(days=d)
        rows = [
            finding(f"arn:aws:iam::111122223333:role/r{i}", day + i * W, severity="high")
            for i in range(PER_DAY)
        ]
        result = workflow.update(lake, *frames(rows), now=day + timedelta(hours=6))
        if d >= DAYS - 30 and d % 2 == 0:
            letter = {
                "incident_id": result.incidents[0].incident_id, "version": 1, "sink": "pager",
                "sink_type": "webhook", "kind": "new", "idempotency_key": "k", "attempts": 3,
                "error": "down", "failed_at": day, "payload": {},
            }  # fmt: skip
            write_dead_letters(lake, [letter], day)


def call(index: PendingIncidents, counter: S3Requests | None, label: str) -> set[str]:
    if counter:
        counter.kinds.clear()
    started = time.perf_counter()
    got = index(NOW)
    took = (time.perf_counter() - started) * 1000
    requests = f", S3 requests {dict(sorted(counter.kinds.items()))}" if counter else ""
    print(f"{label}: {len(got)} pending, {took:.1f} ms{requests}")
    return {i.incident_id for i in got}


def measure(lake: Lake, counter: S3Requests | None) -> None:
    index = PendingIncidents(lake)
    for i in range(5):
        call(index, counter, f"call {i + 1}")
    old = read_incidents(lake, since=NOW - timedelta(days=20))
    old = old.filter(old["first_seen"] < NOW - timedelta(days=19)).row(0, named=True)
    workflow.set_incident_status(lake, old["incident_id"], "acknowledged", "bench", now=NOW)
    seen = old["incident_id"] in call(index, counter, "after another process's ack")
    print(f"the acknowledged incident is pending again: {seen}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", metavar="DIR", help="a local lake (built when missing)")
    args = parser.parse_args()
    if args.local:
        lake = Lake(args.local)
        if not Path(args.local).exists():
            build(lake)
        measure(lake, None)
        return
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(key, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    counter = S3Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.handlers, werkzeug.propagate = [counter], False
    werkzeug.setLevel(logging.INFO)
    boto3.client("s3").create_bucket(Bucket="bench")
    started = time.perf_counter()
    lake = Lake("s3://bench/lake")
    build(lake)
    print(f"built in {time.perf_counter() - started:.1f} s")
    measure(lake, counter)
    server.stop()


if __name__ == "__main__":
    main()
