"""Per-partition costs, measured here, that docs/operations.md sizes a Ray cluster from.

A partition is one (cluster, day). Simulates two days of one cluster (``--events`` a day),
then, with every process held to ONE core (POLARS_MAX_THREADS=1, OMP/BLAS threads 1):

- ingest: events/s per core of `detect ingest` (the whole file), and lake bytes per event;
- train: events/s per core of one partition's window rows (the Ray task of
  `--executor ray`), and the central fit's seconds per thousand windows;
- score: events/s per core of `detect score` over one day (model and every default rule);
- S3: requests per partition of ingest, of a training task and of a score, counted by a
  moto S3 server on loopback from its request log (same client code path as a real bucket).

    python bench/bench_partition.py [--events 300000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DETECT = Path(sys.executable).parent / "detect"
END = datetime(2026, 11, 27, tzinfo=UTC)
DAY = END - timedelta(days=1)
START = END - timedelta(days=2)
ISO = "%Y-%m-%dT%H:%M:%SZ"
ONE_CORE = {
    "POLARS_MAX_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
}

TASK = """
import sys, time
from datetime import datetime, timedelta
from detector.detect.executor import partition_units
from detector.detect.partitioned import unit_windows
from detector.detect.train import fit_model
from detector.lake.events import Lake
lake = sys.argv[1]
start, end = (datetime.fromisoformat(a) for a in sys.argv[2:4])
w = timedelta(minutes=10)
units = partition_units(Lake(lake).partitions(start, end), w)
t = time.perf_counter()
import polars as pl
out = [unit_windows(lake, parts, start, end, w) for _, _, parts in units]
t_windows = time.perf_counter() - t
rows = pl.concat([pl.from_arrow(t) for t, _ in out])
t = time.perf_counter()
if len(sys.argv) > 4:
    fit_model(rows, window=w, start=start, end=end)
t_fit = time.perf_counter() - t
print(len(units), sum(n for _, n in out), rows.height, t_windows, t_fit)
"""


def run(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args[:3])} failed: {proc.stderr.strip()[-800:]}")
    return time.perf_counter() - started, proc.stdout


def simulate(work: Path, events: int, seed: int) -> Path:
    log = work / "sim" / "audit.log"
    if not log.exists():
        rate = f"{events / 86_400:.6f}"
        subprocess.run(
            [
                *(str(DETECT), "simulate", "--out", str(work / "sim"), "--days", "2"),
                *("--rate", rate, "--seed", str(seed), "--end", END.strftime(ISO)),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return log


def local_costs(log: Path, work: Path, env: dict[str, str]) -> dict[str, float]:
    import shutil

    lake, models = work / "lake", work / "models"
    shutil.rmtree(lake, ignore_errors=True)
    t_ingest, _ = run([str(DETECT), "ingest", str(log), "--lake", str(lake)], env)
    import polars as pl

    from detector.lake.events import Lake

    n_all = Lake(str(lake)).scan_events().select(pl.len()).collect().item()
    size = sum(f.stat().st_size for f in (lake / "events").rglob("*.parquet"))
    _, out = run(
        [sys.executable, "-c", TASK, str(lake), START.isoformat(), DAY.isoformat(), "fit"], env
    )
    _units, n_train, windows, t_windows, t_fit = out.split()
    run(
        [
            str(DETECT),
            "train",
            "--lake",
            str(lake),
            "--model-dir",
            str(models),
            "--since",
            START.strftime(ISO),
            "--until",
            DAY.strftime(ISO),
        ],
        env,
    )
    score = [str(DETECT), "score", "--lake", str(lake), "--model-dir", str(models)]
    score += ["--since", DAY.strftime(ISO), "--until", END.strftime(ISO), "--format", "json"]
    t_score, _ = run(score, env)
    n_day = Lake(str(lake)).scan_events(DAY, END).select(pl.len()).collect().item()
    return {
        "events": n_all,
        "ingest_eps_core": n_all / t_ingest,
        "lake_bytes_per_event": size / n_all,
        "train_task_eps_core": int(n_train) / float(t_windows),
        "train_windows": int(windows),
        "fit_s_per_1k_windows": float(t_fit) / int(windows) * 1000,
        "score_events": n_day,
        "score_eps_core": n_day / t_score,
    }


class _S3Requests(logging.Handler):
    """Counts the requests moto's server logs (one line per request), by S3 request kind."""

    LINE = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')

    def __init__(self) -> None:
        super().__init__()
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.search(record.getMessage())
        if found:
            method, path = found.groups()
            listing = method == "GET" and "list-type=" in path.partition("?")[2]
            self.kinds["LIST" if listing else method] += 1


def s3_costs(log: Path, env: dict[str, str]) -> dict[str, dict[str, int]]:
    import boto3
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    upstream = f"http://127.0.0.1:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    creds["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ.update(creds)
    boto3.client("s3", endpoint_url=upstream).create_bucket(Bucket="bench")
    counting = _S3Requests()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(counting)
    werkzeug.propagate = False  # counted, not printed
    werkzeug.setLevel(logging.INFO)
    env = {**env, **creds, "AWS_ENDPOINT_URL": upstream}
    lake, models = "s3://bench/lake", "s3://bench/models"
    out: dict[str, dict[str, int]] = {}
    try:
        steps = {
            "ingest (2 days)": [str(DETECT), "ingest", str(log), "--lake", lake],
            "train task (1 day)": [
                sys.executable,
                "-c",
                TASK,
                lake,
                START.isoformat(),
                DAY.isoformat(),
            ],
            "train (1 day, model saved)": [
                str(DETECT),
                "train",
                "--lake",
                lake,
                "--model-dir",
                models,
                "--since",
                START.strftime(ISO),
                "--until",
                DAY.strftime(ISO),
            ],
            "score (1 day, findings written)": [
                str(DETECT),
                "score",
                "--lake",
                lake,
                "--model-dir",
                models,
                "--since",
                DAY.strftime(ISO),
                "--until",
                END.strftime(ISO),
            ],
        }
        for name, args in steps.items():
            counting.kinds.clear()
            run(args, env)
            out[name] = dict(counting.kinds)
    finally:
        werkzeug.removeHandler(counting)
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000, help="events per day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-partition-"))
    work.mkdir(parents=True, exist_ok=True)
    log = simulate(work, args.events, args.seed)
    env = {**os.environ, **ONE_CORE}
    local = local_costs(log, work, env)
    print(f"per-partition costs, one core per process ({os.cpu_count()} cores here)")
    print(f"  events in the file (2 days, 1 cluster)  {local['events']:>12,}")
    print(f"  ingest                  {local['ingest_eps_core']:>12,.0f} events/s per core")
    print(f"  lake                    {local['lake_bytes_per_event']:>12,.0f} bytes per event")
    print(f"  train task (windows)    {local['train_task_eps_core']:>12,.0f} events/s per core")
    print(
        f"  train fit (central)     {local['fit_s_per_1k_windows']:>12,.3f} s per 1,000 windows "
        f"({local['train_windows']:,} windows a day)"
    )
    print(f"  score (model + rules)   {local['score_eps_core']:>12,.0f} events/s per core")
    sys.stdout.flush()
    for name, kinds in s3_costs(log, env).items():
        print(f"  S3 requests, {name:<32} {json.dumps(kinds, sort_keys=True)}")


if __name__ == "__main__":
    main()
