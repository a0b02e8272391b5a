"""Rule findings on real benign traffic (hkerma capture): do the defaults flood a cluster?

Converts the CSV (bench/hkerma_convert.py), normalizes it through the real ingest path,
runs every default-enabled rule and prints findings per rule, then the same with every
rule enabled (Falco's informational activity rules included) for comparison.

Usage::

    python bench/rules_hkerma.py [CSV]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hkerma_convert import DEFAULT_CSV, write_ndjson

from detector.pipeline.ingest import read_events
from detector.rules import evaluate_rules, load_ruleset


def per_rule(findings: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    counts = findings.group_by("detector").agg(
        pl.len().alias("findings"), pl.col("event_count").sum().alias("events")
    )
    base = pl.DataFrame({"detector": [f"rule:{i}" for i in ids]})
    return (
        base.join(counts, on="detector", how="left")
        .fill_null(0)
        .sort(["findings", "detector"], descending=[True, False])
    )


def main(csv_path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ndjson = Path(tmp) / "hkerma.ndjson"
        with ndjson.open("w") as out:
            n = write_ndjson(csv_path, out)
        started = time.monotonic()
        events, quarantine = read_events([str(ndjson)], cluster="hkerma")
        read_s = time.monotonic() - started
    print(f"{n} rows -> {events.height} events, {quarantine.height} quarantined ({read_s:.2f}s)")
    defaults = load_ruleset()
    started = time.monotonic()
    result = evaluate_rules(events, defaults)
    print(
        f"default rules ({len(defaults.enabled_rules)} enabled): "
        f"{result.findings.height} findings in {time.monotonic() - started:.2f}s"
    )
    with pl.Config(tbl_rows=100, fmt_str_lengths=200, tbl_width_chars=200):
        print(per_rule(result.findings, [r.id for r in defaults.enabled_rules]))
        print(result.findings.select("detector", "principal", "event_count", "reasons"))
    everything = load_ruleset(enabled=[r.id for r in defaults.rules])
    result = evaluate_rules(events, everything)
    print(f"all {len(everything.rules)} rules enabled: {result.findings.height} findings")
    with pl.Config(tbl_rows=100):
        print(per_rule(result.findings, everything.ids).filter(pl.col("findings") > 0))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CSV)
