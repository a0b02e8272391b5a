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
    ingest_paths([log], lake, cluster="bench")
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
        "train_windows_per_day": train["windows"] / ((DAY - START).days or 1),
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


# Public AWS prices and quotas (us-east-1, looked up 2026-11-30; sources in docs/operations.md).
CW_INGEST_PER_GB = 0.50  # CloudWatch Logs ingestion, standard class, first tier
FILTER_TPS = 5  # FilterLogEvents per account and Region
FILTER_PAGE = (10_000, 1_048_576)  # events, bytes per FilterLogEvents page
S3_PUT_LIST_PER_1K = 0.005
S3_GET_HEAD_PER_1K = 0.0004
ATHENA_PER_TB = 5.0


def sizing(local: dict, s3: dict, raw_bytes: float, args: argparse.Namespace) -> None:
    """The organisation of the issue, from the per-partition figures just measured."""
    per_day, clusters = args.org_events, args.clusters
    hunt, train_days, cores = args.hunt_days, args.train_days, args.worker_cores
    ingest_core_h = per_day / local["ingest_eps_core"] / 3600
    train_events = per_day * train_days
    train_core_h = train_events / local["train_task_eps_core"] / 3600
    windows = local["train_windows_per_day"] * clusters * train_days
    fit_h = windows / 1000 * local["fit_s_per_1k_windows"] / 3600
    hunt_core_h = per_day * hunt / local["score_eps_core"] / 3600
    lake_gb_day = per_day * local["lake_bytes_per_event"] / 1e9
    raw_gb_day = per_day * raw_bytes / 1e9
    per_page = min(FILTER_PAGE[0], FILTER_PAGE[1] / raw_bytes)
    filter_ceiling = FILTER_TPS * per_page * 86_400

    def requests(kinds: dict[str, int], times: float) -> tuple[float, float]:
        puts = (kinds.get("PUT", 0) + kinds.get("LIST", 0)) * times
        gets = (kinds.get("GET", 0) + kinds.get("HEAD", 0)) * times
        return puts + gets, puts / 1000 * S3_PUT_LIST_PER_1K + gets / 1000 * S3_GET_HEAD_PER_1K

    ingest_req, ingest_usd = requests(s3["ingest"], clusters * 30 / 2)  # measured: 2 days
    train_req, train_usd = requests(s3["train"], clusters * train_days * 30)
    hunt_req, hunt_usd = requests(s3["score"], clusters * hunt)
    print(
        f"\nsizing: {clusters} clusters, {per_day / 1e6:,.0f}M events a day "
        f"({per_day / clusters / 1e6:,.1f}M per (cluster, day) partition), nightly retrain "
        f"on {train_days} days, retro-hunt of {hunt} days, workers of {cores} cores"
    )
    rows = [
        (
            "ingest (continuous)",
            f"{ingest_core_h:,.1f} core-h/day = {ingest_core_h / 24:,.2f} cores on average",
            f"S3 {ingest_req:,.0f} requests/month ${ingest_usd:,.2f}",
        ),
        (
            f"retrain, {clusters * train_days:,} partition tasks",
            f"{train_core_h:,.2f} core-h; {train_core_h / cores * 60:,.1f} min on 1 worker",
            f"S3 {train_req:,.0f} requests/month ${train_usd:,.2f}",
        ),
        (
            f"retrain, central fit of {windows:,.0f} windows",
            f"{fit_h * 60:,.0f} min on the head (one core)",
            "",
        ),
        (
            f"retro-hunt, {clusters * hunt:,} partitions",
            f"{hunt_core_h:,.0f} core-h; {hunt_core_h / (8 * cores):,.1f} h on 8 workers, "
            f"{hunt_core_h / (32 * cores):,.1f} h on 32",
            f"S3 {hunt_req:,.0f} requests ${hunt_usd:,.2f}",
        ),
        (
            "lake",
            f"{lake_gb_day:,.1f} GB/day, {lake_gb_day * hunt / 1000:,.2f} TB for {hunt} days",
            f"Athena full scan of {hunt} days ${lake_gb_day * hunt / 1000 * ATHENA_PER_TB:,.2f}",
        ),
        (
            "CloudWatch Logs",
            f"{raw_gb_day:,.0f} GB/day ingested",
            f"${raw_gb_day * CW_INGEST_PER_GB:,.0f}/day, ${raw_gb_day * CW_INGEST_PER_GB * 30:,.0f}"
            "/month",
        ),
        (
            "FilterLogEvents",
            f"{per_day / 86_400 / per_page:,.2f} TPS needed on average "
            f"(quota {FILTER_TPS}/account/Region)",
            f"ceiling {filter_ceiling / 1e6:,.0f}M events/day per account and Region",
        ),
    ]
    for name, work, aws in rows:
        print(f"  {name:<40} {work:<58} {aws}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000, help="events per day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--org-events", type=float, default=100e6, help="events a day")
    parser.add_argument("--hunt-days", type=int, default=90)
    parser.add_argument("--train-days", type=int, default=14)
    parser.add_argument("--worker-cores", type=int, default=4)
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
    s3 = s3_costs(log, env)
    for name, kinds in s3.items():
        print(f"  S3 requests, {name:<42} {json.dumps(kinds, sort_keys=True)}")
    raw_bytes = log.stat().st_size / sum(1 for _ in log.open("rb"))
    print(f"  audit JSON as CloudWatch holds it      {raw_bytes:>12,.0f} bytes per event")
    keys = dict(zip(("ingest", "train", "score"), s3.values(), strict=True))
    sizing(local, keys, raw_bytes, args)


if __name__ == "__main__":
    main()
