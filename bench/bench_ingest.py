"""Ingest benchmark: 1M simulated events, parse floor vs `detect ingest`.

Prints (a) pyarrow.json.read_json of the file, the parse floor, (b) `detect ingest` of the
same file into a fresh local lake, as a subprocess, with events/s, MB/s, peak RSS of each
and the ratio b/a. Run with `make bench` (or `python bench/bench_ingest.py --events N`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DETECT = Path(sys.executable).parent / "detect"


def _child_peak_rss_mb(code: str, *args: str) -> tuple[float, float, str]:
    """Run python code in a fresh process; (seconds, peak RSS MB, stdout)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - started
    return seconds, _last_child_rss(), proc.stdout


def _last_child_rss() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def generate(out: Path, events: int, seed: int) -> Path:
    from detector.simulate import write_simulation

    days = 2.0
    rate = events / (days * 86400)
    end = datetime(2026, 11, 27, tzinfo=UTC)
    write_simulation(out, days=days, rate=rate, seed=seed, end=end)
    return out / "audit.log"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep files here (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "sim" / "audit.log"
    if not log.exists():
        t = time.perf_counter()
        generate(work / "sim", args.events, args.seed)
        print(f"generated {log} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    size_mb = log.stat().st_size / 1e6
    lines = sum(1 for _ in log.open("rb"))

    # (a) the parse floor, in its own process so its peak RSS is its own
    floor_code = "import sys, pyarrow.json as pj; t = pj.read_json(sys.argv[1]); print(t.num_rows)"
    a_sec, a_rss, _ = _child_peak_rss_mb(floor_code, str(log))

    # (b) detect ingest into a fresh lake (RUSAGE_CHILDREN is a max over children, so run
    # it after (a) only if it is bigger; measure with /usr/bin/time-like wait4 instead)
    lake = work / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            *(str(DETECT), "ingest", str(log), "--lake", str(lake)),
            *("--cluster", "bench", "--format", "json"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    b_sec = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"detect ingest failed with status {status}")
    summary = json.loads(out)
    b_rss = usage.ru_maxrss / 1024

    print(f"ingest benchmark: {lines:,} events, {size_mb:,.0f} MB NDJSON (2 cores)")
    print(
        f"  (a) pyarrow.json.read_json : {a_sec:6.2f}s  {lines / a_sec:>10,.0f} events/s  "
        f"{size_mb / a_sec:6.0f} MB/s  peak RSS {a_rss:,.0f} MB"
    )
    print(
        f"  (b) detect ingest          : {b_sec:6.2f}s  {lines / b_sec:>10,.0f} events/s  "
        f"{size_mb / b_sec:6.0f} MB/s  peak RSS {b_rss:,.0f} MB"
    )
    print(f"  ratio b/a = {b_sec / a_sec:.2f} (target <= 1.5); peak RSS target <= 1500 MB")
    print(
        f"  lake: {summary['events_written']:,} events written, "
        f"{summary['quarantined']} quarantined"
    )


if __name__ == "__main__":
    main()
