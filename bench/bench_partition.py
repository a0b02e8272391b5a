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

# Each step timed inside a one-core child around the library call a Ray worker makes:
# workers are long-lived, so interpreter start and imports are not a per-partition cost.
# Timed in CPU seconds of the process (time.process_time, one thread): a core-second is
# what a worker pays, and the figure holds on a machine shared with other work.
STEP = """
import json, sys, time
from datetime import datetime, timedelta
import polars as pl
from detector.lake.events import Lake
step, lake, log, models = sys.argv[1:5]
start, day, end = (datetime.fromisoformat(a) for a in sys.argv[5:8])
w = timedelta(minutes=10)
out = {}
if step == "ingest":
    from detector.pipeline.ingest import ingest_paths
    t = time.process_time()
    ingest_paths([log], lake)
    out["seconds"] = time.process_time() - t
elif step == "train":
    from detector.detect.executor import partition_units
    from detector.detect.partitioned import unit_windows
    from detector.detect.train import fit_model
    units = partition_units(Lake(lake).partitions(start, day), w)
    t = time.process_time()
    done = [unit_windows(lake, parts, start, day, w) for _, _, parts in units]
    out["windows_seconds"] = time.process_time() - t
    rows = pl.concat([pl.from_arrow(a) for a, _ in done])
    out["events"], out["windows"], out["units"] = sum(n for _, n in done), rows.height, len(units)
    t = time.process_time()
    fit_model(rows, window=w, start=start, end=day).save(models)
    out["fit_seconds"] = time.process_time() - t
elif step == "score":
    from detector.detect.score import score_range
    from detector.model.storage import Model
    model = Model.load(models)
    t = time.process_time()
    result = score_range(Lake(lake), day, end, model=model)
    out["seconds"], out["events"] = time.process_time() - t, result.events_read
print(json.dumps(out))
"""


def step(name: str, lake: str, log: Path, models: str, env: dict[str, str]) -> dict:
    times = [t.isoformat() for t in (START, DAY, END)]
    _, out = run([sys.executable, "-c", STEP, name, lake, str(log), models, *times], env)
    return json.loads(out.strip().splitlines()[-1])


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

    import polars as pl

    from detector.lake.events import Lake

    lake, models = work / "lake", work / "models"
    shutil.rmtree(lake, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    ingest = step("ingest", str(lake), log, str(models), env)
    n_all = Lake(str(lake)).scan_events().select(pl.len()).collect().item()
    size = sum(f.stat().st_size for f in (lake / "events").rglob("*.parquet"))
    train = step("train", str(lake), log, str(models), env)
    score = step("score", str(lake), log, str(models), env)
    return {
        "events": n_all,
        "ingest_eps_core": n_all / ingest["seconds"],
        "lake_bytes_per_event": size / n_all,
        "train_task_eps_core": train["events"] / train["windows_seconds"],
        "train_windows": train["windows"],
        "fit_s_per_1k_windows": train["fit_seconds"] / train["windows"] * 1000,
        "score_events": score["events"],
        "score_eps_core": score["events"] / score["seconds"],
    }


class _S3Requests(logging.Handler):
    """Counts the requests moto's server logs (one line per request), by S3 request kind."""

    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')

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
    werkzeug.handlers = [counting]
    werkzeug.propagate = False  # counted, not printed
    werkzeug.setLevel(logging.INFO)
    env = {**env, **creds, "AWS_ENDPOINT_URL": upstream}
    lake, models = "s3://bench/lake", "s3://bench/models"
    out: dict[str, dict[str, int]] = {}
    try:
        runs = {
            "ingest (2 days)": lambda: step("ingest", lake, log, models, env),
            "train (1 day: windows, fit, model saved)": lambda: step(
                "train", lake, log, models, env
            ),
            "score (1 day, findings written)": lambda: step("score", lake, log, models, env),
        }
        for name, call in runs.items():
            counting.kinds.clear()
            call()
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
