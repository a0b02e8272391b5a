"""How many files an hour of `detect export --follow` leaves, before and after `detect compact`.

A follow exporter writes one file per partition touched at every flush (``--flush-interval``,
default 60s), so an hour of follow is 60 flushes. This bench runs those flushes compressed in
time: `detect export --follow --flush-interval 1s --interval 1s` against a moto server on
loopback while events arrive in CloudWatch every quarter second, stops after ``--flushes``
flushes, counts the Parquet files in the lake, runs `detect compact --grace 0s` twice (the
second run deletes the replaced files) and counts again. The file count depends on the
number of flushes and partitions touched, not on wall time, so 60 compressed flushes leave
what an hour at the default interval leaves (one or two hour partitions, as in real time).

Run: `python bench/bench_compact.py --flushes 60`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).parent))
from bench_export import DETECT, MOTO, _free_port, _message


def parquet_files(lake: Path) -> int:
    return sum(1 for _ in (lake / "events").rglob("*.parquet")) + sum(
        1 for _ in (lake / "quarantine").rglob("*.parquet")
    )


def live_files(lake: Path) -> int:
    from detector.lake.events import Lake

    store = Lake(str(lake))
    return sum(len(store.partition_files(p)) for p in store.partitions())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flushes", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args, _ = parser.parse_known_args()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="bench-compact-"))
    lake = work / "lake"
    rng = random.Random(args.seed)
    try:
        for _ in range(100):
            try:
                boto3.client("logs", endpoint_url=endpoint).describe_log_groups()
                break
            except Exception:
                time.sleep(0.1)
        logs = boto3.client("logs", endpoint_url=endpoint)
        group = "/aws/eks/bench/cluster"
        stream = "kube-apiserver-audit-00c0ffee0000"
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        export = subprocess.Popen(
            [
                *(str(DETECT), "export", "--log-group", group, "--lake", str(lake)),
                *("--since", "1m", "--follow", "--interval", "1s", "--flush-interval", "1s"),
                *("--latency", "1s", "--rate", "0", "--format", "json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        n = 0
        flushes = 0
        while flushes < args.flushes:
            now = int(time.time() * 1000)
            batch = [{"timestamp": now, "message": _message(rng, n + i, now)} for i in range(25)]
            n += len(batch)
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=batch)
            time.sleep(0.25)
            state = list((lake / "_state" / "cloudwatch").rglob("*.json"))
            if state:
                flushes = json.loads(state[0].read_text()).get("seq", 0)
            assert export.poll() is None, export.communicate()
        export.send_signal(signal.SIGTERM)
        out, _err = export.communicate(timeout=60)
        summary = json.loads(out)
        before = parquet_files(lake)
        rows = summary["events_written"]
        t = time.perf_counter()
        first = subprocess.run(
            [str(DETECT), "compact", "--lake", str(lake), "--grace", "0s", "--format", "json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        seconds = time.perf_counter() - t
        live = live_files(lake)
        subprocess.run(
            [str(DETECT), "compact", "--lake", str(lake), "--grace", "0s"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        after = parquet_files(lake)
        result = {
            "flushes": summary.get("flushes"),
            "checkpoint_writes": flushes,
            "events": rows,
            "files_before": before,
            "live_files_after_compact": live,
            "files_after_second_compact": after,
            "compact_seconds": round(seconds, 2),
            "compact": json.loads(first.stdout),
        }
        print(json.dumps(result, indent=2))
    finally:
        moto.terminate()
        moto.wait()


if __name__ == "__main__":
    main()
