"""Score benchmark: `detect score` over 1M events already in the lake.

Builds (once, kept in --workdir) a lake of two simulated days with ``--events`` events in the
second, trains on the first, then prints for the second day:

(a) `detect score` as a user runs it (a subprocess: interpreter start, imports, model load,
    features, model, rules, findings written), wall time, events/s and peak RSS;
(b) the same without the rules engine, in a fresh process, split into featurizing
    (reading the lake) and everything after it, with peak RSS;
(c) (b) over a quarter of the day, to show that memory does not grow with the range.

Run with `make bench` or `python bench/bench_score.py --events N --workdir DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

DETECT = Path(sys.executable).parent / "detect"
END = datetime(2026, 11, 27, tzinfo=UTC)
DAY = END - timedelta(days=1)
ISO = "%Y-%m-%dT%H:%M:%SZ"

# (b)/(c): the library path without rules, timed in parts, in its own process.
LIBRARY_RUN = """
import json, resource, sys, time
from datetime import datetime
t0 = time.perf_counter()
from detector.features.windows import lake_windows
from detector.lake.events import Lake
from detector.model.estimator import Model
from detector.detect.score import score_range
lake, models, since, until = sys.argv[1:5]
since, until = datetime.fromisoformat(since), datetime.fromisoformat(until)
t1 = time.perf_counter()
model = Model.load(models)
t2 = time.perf_counter()
windows = lake_windows(Lake(lake), since, until, window=model.window)
t3 = time.perf_counter()
result = score_range(Lake(lake), since, until, model=model, use_rules=False, write=True)
t4 = time.perf_counter()
print(json.dumps({
    "imports": t1 - t0, "load": t2 - t1, "featurize": t3 - t2, "score_range": t4 - t3,
    "windows": windows.height, "findings": result.findings.height,
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(args: list[str]) -> tuple[float, float, str]:
    """Run a command; (wall seconds, peak RSS MB of that process, stdout).

    Output goes to files, not pipes: a child blocked on a full pipe would never exit.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) not in (0, 1):
            raise SystemExit(f"{' '.join(args[:3])} failed: {err.read().strip()}")
        return seconds, usage.ru_maxrss / 1024, out.read()


def build(work: Path, events: int, seed: int) -> Path:
    """Two simulated days with ``events`` events per day, ingested into work/lake.

    Done in subprocesses: a child forked from a big parent starts with the parent's
    resident pages, so building in-process would inflate every later peak-RSS figure.
    """
    lake = work / "lake"
    if (work / "lake.done").exists():
        return lake
    t = time.perf_counter()
    sim = work / "sim"
    end = END.strftime(ISO)
    rate = f"{events / 86_400:.6f}"
    subprocess.run(
        [
            str(DETECT),
            "simulate",
            "--out",
            str(sim),
            "--days",
            "2",
            "--rate",
            rate,
            "--seed",
            str(seed),
            "--end",
            end,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [str(DETECT), "ingest", str(sim / "audit.log"), "--lake", str(lake), "--cluster", "bench"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (sim / "audit.log").unlink()
    (work / "lake.done").touch()
    print(f"built {lake} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return lake


def count_events(lake: Path, since: datetime, until: datetime) -> int:
    import polars as pl

    from detector.lake.events import Lake

    return Lake(str(lake)).scan_events(since, until).select(pl.len()).collect().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the scored day")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the lake here (default: temp)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    lake = build(work, args.events, args.seed)
    models = work / "models"
    n = count_events(lake, DAY, END)

    t_train, rss_train, _ = run(
        [
            str(DETECT),
            "train",
            "--lake",
            str(lake),
            "--since",
            (DAY - timedelta(days=1)).strftime(ISO),
            "--until",
            DAY.strftime(ISO),
            "--model-dir",
            str(models),
        ]
    )
    # (a) the command as a user runs it
    t_a, rss_a, out = run(
        [
            str(DETECT),
            "score",
            "--lake",
            str(lake),
            "--since",
            DAY.strftime(ISO),
            "--until",
            END.strftime(ISO),
            "--model-dir",
            str(models),
            "--format",
            "json",
        ]
    )
    doc = json.loads(out)
    # (b) library path, no rules; (c) a quarter of the range
    quarter = DAY + timedelta(hours=6)
    _, rss_b, out_b = run(
        [
            sys.executable,
            "-c",
            LIBRARY_RUN,
            str(lake),
            str(models),
            DAY.isoformat(),
            END.isoformat(),
        ]
    )
    _, rss_c, out_c = run(
        [
            sys.executable,
            "-c",
            LIBRARY_RUN,
            str(lake),
            str(models),
            DAY.isoformat(),
            quarter.isoformat(),
        ]
    )
    b, c = json.loads(out_b), json.loads(out_c)
    n_c = count_events(lake, DAY, quarter)

    print(
        f"score benchmark: {n:,} events in the scored day, {doc['windows']:,} principal "
        f"windows, {os.cpu_count()} cores (training on the day before: {t_train:.1f}s, "
        f"peak RSS {rss_train:,.0f} MB)"
    )
    print(
        f"  (a) detect score (model + {doc['rules']}), whole command: {t_a:6.2f}s "
        f"{n / t_a:>10,.0f} events/s  peak RSS {rss_a:,.0f} MB  {len(doc['findings'])} findings"
    )
    print(
        f"  (b) model only, in process: featurize alone {b['featurize']:.2f}s "
        f"({n / b['featurize']:,.0f} events/s); score_range (featurize, model, explanations, "
        f"events of findings, findings written) {b['score_range']:.2f}s "
        f"({n / b['score_range']:,.0f} events/s); imports {b['imports']:.1f}s, model load "
        f"{b['load']:.1f}s; peak RSS {rss_b:,.0f} MB"
    )
    print(
        f"  (c) a quarter of the day ({n_c:,} events): score_range {c['score_range']:.2f}s, "
        f"peak RSS {rss_c:,.0f} MB (whole day: {rss_b:,.0f} MB)"
    )
    print("  target: >= 500,000 events/s end to end, memory flat in the range")


if __name__ == "__main__":
    main()
