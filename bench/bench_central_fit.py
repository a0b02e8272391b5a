"""The central fit of a many-cluster retrain, measured at size: time and peak RSS.

With ``--executor ray`` the window rows of every (cluster, day) are computed on the
workers, and the baseline and the forest are fitted on the Ray head from all of them
(docs/operations.md). This measures that fit for an organisation of ``--clusters``
clusters over ``--days`` days: one simulated day's window rows (one cluster, ~7k rows:
principals x 10-minute windows) copied under new cluster names and shifted by whole days,
then ``fit_model`` on them in a fresh process, after scikit-learn is imported (a head is
long-lived). Prints rows, seconds (wall and CPU) and the peak RSS of that process, and
the bytes per window row the head needs.

    python bench/bench_central_fit.py [--clusters 5,25] [--days 14] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench_score import END, simulate_into  # one simulate-then-ingest setup

FIT = """
import json, resource, sys, time
from datetime import datetime, timedelta
import polars as pl
import sklearn.ensemble  # a head is long-lived: imports are not part of the fit
from detector.detect.train import fit_model

path, clusters, days = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
one = pl.read_parquet(path)
first = one["window_start"].min()
parts = []
for d in range(days):
    shift = timedelta(days=d)
    for c in range(clusters):
        parts.append(one.with_columns(
            pl.lit(f"cluster-{c:03d}").alias("cluster"),
            pl.col("window_start") - shift,
            pl.col("window_end") - shift,
        ))
rows = pl.concat(parts).rechunk()
del parts
start = first - timedelta(days=days - 1)
end = start + timedelta(days=days)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
wall, cpu = time.perf_counter(), time.process_time()
model = fit_model(rows, window=timedelta(minutes=10), start=start, end=end)
out = {
    "rows": rows.height,
    "rows_mb": rows.estimated_size() / 1e6,
    "wall": time.perf_counter() - wall,
    "cpu": time.process_time() - cpu,
    "rss_before_mb": before,
    "principals": model.baseline.principals.height,
}
print(json.dumps(out))
"""


def one_day_windows(work: Path, events: int, seed: int) -> Path:
    """Window rows of one simulated day of one cluster (built once per workdir)."""
    out = work / "windows-1d.parquet"
    if out.exists():
        return out
    lake = work / "lake"
    simulate_into(lake, work / "sim", days=1, events=events, seed=seed, cluster="c")
    code = (
        "import sys; from datetime import datetime; from detector.lake.events import Lake; "
        "from detector.detect.train import training_windows; "
        "s, e = (datetime.fromisoformat(a) for a in sys.argv[2:4]); "
        "training_windows(Lake(sys.argv[1]), s, e).write_parquet(sys.argv[4])"
    )
    since = (END - timedelta(days=1)).isoformat()
    subprocess.run([sys.executable, "-c", code, str(lake), since, END.isoformat(), str(out)])
    return out


def measure(windows: Path, clusters: int, days: int) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", FIT, str(windows), str(clusters), str(days)],
            stdout=out,
            stderr=err,
            text=True,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        if status:
            err.seek(0)
            raise SystemExit(f"fit failed: {err.read()[-800:]}")
        out.seek(0)
        result = json.loads(out.read().strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--clusters", default="5,25", help="comma-separated cluster counts (25: ~12 GB of RAM)"
    )
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--events", type=int, default=300_000, help="simulated events a day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-central-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    windows = one_day_windows(work, args.events, args.seed)
    print(
        f"central fit ({os.cpu_count()} cores; windows built in "
        f"{time.perf_counter() - started:.0f}s)"
    )
    for clusters in (int(c) for c in args.clusters.split(",")):
        r = measure(windows, clusters, args.days)
        per_row = (r["peak_rss_mb"] - 150) * 1e6 / r["rows"]  # ~150 MB: the interpreter
        print(
            f"  {clusters:>3} clusters x {args.days} days: {r['rows']:>10,} window rows "
            f"({r['rows_mb']:,.0f} MB), {r['principals']:,} principals: fit {r['wall']:6.1f}s "
            f"wall, {r['cpu']:6.1f}s cpu; peak RSS {r['peak_rss_mb']:,.0f} MB "
            f"(~{per_row:,.0f} bytes per window row)",
            flush=True,
        )


if __name__ == "__main__":
    main()
