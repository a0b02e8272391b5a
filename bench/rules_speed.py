"""Rules engine speed: every default rule over a ~1M-event canonical frame, in memory.

Simulates one day of traffic (kept in --workdir), normalizes it through the real ingest
path, tiles it to ``--events`` rows (audit IDs made unique per copy so each request still
counts once) and times ``evaluate_rules`` alone, best of ``--runs``. This is the rules-only
figure of ``detect score``: the lake read is not included (score reads the range once and
hands the frame over), only the columns ``RuleSet.columns_needed()`` names are kept.

Usage::

    python bench/rules_speed.py [--events 1000000] [--runs 3] [--workdir /tmp/rules-bench]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

from detector.pipeline.ingest import read_events
from detector.rules import evaluate_rules, load_ruleset

DETECT = Path(sys.executable).parent / "detect"
SIM_ARGS = ["--days", "1", "--rate", "2.5", "--seed", "7", "--end", "2026-11-27T00:00:00Z"]


def frame(workdir: Path, events: int) -> pl.DataFrame:
    sim = workdir / "sim"
    if not (sim / "audit.log").exists():
        subprocess.run(
            [str(DETECT), "simulate", "--out", str(sim), *SIM_ARGS],
            check=True,
        )
    base, _ = read_events([str(sim / "audit.log")], cluster="bench")
    copies = -(-events // base.height)
    tiled = pl.concat(
        [base.with_columns(pl.col("audit_id") + pl.lit(f"-{i}")) for i in range(copies)]
    )
    return tiled.head(events)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/rules-bench"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    ruleset = load_ruleset()
    # What `detect score` hands over: only the columns the rules read (all, before
    # columns_needed existed).
    cols = ruleset.columns_needed() if hasattr(ruleset, "columns_needed") else None
    df = frame(args.workdir, args.events)
    if cols is not None:
        df = df.select([c for c in df.columns if c in cols])
    times = []
    cpu = []
    findings = 0
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        result = evaluate_rules(df, ruleset, window=timedelta(minutes=10))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        findings = result.findings.height
    best = min(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"rules: {len(ruleset.enabled_rules)} enabled, {df.height:,} events, "
        f"{len(df.columns)} columns, {findings} findings; best of {args.runs}: {best:.3f}s "
        f"({df.height / best / 1e6:.2f}M events/s); runs {', '.join(f'{t:.3f}' for t in times)}; "
        f"CPU best {min(cpu):.3f}s (all threads); "
        f"peak RSS {rss:.0f} MB"
    )


if __name__ == "__main__":
    main()
