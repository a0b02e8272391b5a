"""End to end on one file: ours (ingest, train, score) against the plain recipe, side by side.

The plain recipe is what the seed did, written plainly: stdlib ``json`` line by line, a
pandas frame, per-principal 10-minute window counts, scikit-learn's IsolationForest fitted
on the first day's windows and scoring the second's. Ours is the three commands a user runs
(`detect ingest`, `detect train`, `detect score` with every default rule), each a fresh
process. Both read the same ~1M-event NDJSON file of two simulated days, alternately, over
``--runs`` runs; wall time is the sum of a side's processes, peak RSS the largest of them.

    python bench/bench_e2e.py [--events 1000000] [--runs 3] [--workdir DIR]

The recipe runs in its own virtualenv (``.venvs/recipe``: pandas, and the numpy and
scikit-learn versions the tool has, built once from PyPI). The tool's venv holds what a
user installs, and no pandas: pyarrow imports pandas whenever it is installed (on the
first array it builds), which would add its import time (~0.4 s) to each of our processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_ingest import generate  # a sibling script
from venvs import ensure_venv, venv_python  # the tests' side virtualenvs

DETECT = Path(sys.executable).parent / "detect"
END = datetime(2026, 11, 27, tzinfo=UTC)  # bench_ingest.generate's end
CUT = END - timedelta(days=1)
ISO = "%Y-%m-%dT%H:%M:%SZ"

PLAIN = r"""
import json, sys
import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

path, cut = sys.argv[1], pd.Timestamp(sys.argv[2])
rows = []
with open(path, "rb") as f:
    for line in f:
        e = json.loads(line)
        if e.get("stage") == "RequestReceived":
            continue
        ref = e.get("objectRef") or {}
        ips = e.get("sourceIPs") or [None]
        rows.append((
            (e.get("user") or {}).get("username"),
            e.get("requestReceivedTimestamp"),
            e.get("verb"),
            ref.get("resource"),
            ref.get("namespace"),
            ips[0],
            e.get("userAgent"),
            (e.get("responseStatus") or {}).get("code") or 0,
        ))
df = pd.DataFrame(rows, columns=["user", "ts", "verb", "resource", "ns", "ip", "ua", "code"])
df["window"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601").dt.floor("10min")
df["error"] = df["code"] >= 400
df["write"] = df["verb"].isin(["create", "update", "patch", "delete"])
df["secret"] = df["resource"] == "secrets"
w = df.groupby(["user", "window"]).agg(
    requests=("verb", "size"), errors=("error", "sum"), writes=("write", "sum"),
    secrets=("secret", "sum"), verbs=("verb", "nunique"), resources=("resource", "nunique"),
    namespaces=("ns", "nunique"), ips=("ip", "nunique"), agents=("ua", "nunique"),
).reset_index()
X = w.drop(columns=["user", "window"]).to_numpy(dtype=float)
train = (w["window"] < cut).to_numpy()
forest = IsolationForest(n_estimators=200, random_state=0).fit(X[train])
threshold = np.quantile(-forest.score_samples(X[train]), 0.999)
flagged = int((-forest.score_samples(X[~train]) >= threshold).sum())
print(len(df), len(w), flagged)
"""


def recipe_python() -> Path:
    """The side venv's Python for the recipe: pandas, and our numpy and scikit-learn."""
    from importlib.metadata import version

    pins = (
        "pandas==3.1.1",
        f"numpy=={version('numpy')}",
        f"scikit-learn=={version('scikit-learn')}",
    )
    return venv_python(ensure_venv("recipe", pins))


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process; output to files so no pipe blocks."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: score found something
            err.seek(0)
            raise SystemExit(f"{' '.join(args[:2])} failed: {err.read().strip()[-500:]}")
    return seconds, usage.ru_maxrss / 1024


def ours(log: Path, work: Path, steps_out: list[list[float]]) -> tuple[float, float]:
    lake, models = work / "lake-e2e", work / "models-e2e"
    shutil.rmtree(lake, ignore_errors=True)
    shutil.rmtree(models, ignore_errors=True)
    store = ["--lake", str(lake), "--model-dir", str(models)]
    first = (END - timedelta(days=2)).strftime(ISO)
    steps = [
        [str(DETECT), "ingest", str(log), "--lake", str(lake), "--cluster", "bench"],
        [str(DETECT), "train", *store, "--since", first, "--until", CUT.strftime(ISO)],
        [str(DETECT), "score", *store, "--since", CUT.strftime(ISO), "--until", END.strftime(ISO)],
    ]
    measured = [run(s) for s in steps]
    steps_out.append([t for t, _ in measured])
    return sum(t for t, _ in measured), max(r for _, r in measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep files here (default: temp)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "sim" / "audit.log"
    if not log.exists():
        generate(work / "sim", args.events, args.seed)
    lines = sum(1 for _ in log.open("rb"))
    size_mb = log.stat().st_size / 1e6
    plain_cmd = [str(recipe_python()), "-c", PLAIN, str(log), CUT.isoformat()]
    plain, mine, steps = [], [], []
    for _ in range(args.runs):  # alternate, so both see the same machine load
        plain.append(run(plain_cmd))
        mine.append(ours(log, work, steps))

    def show(name: str, m: list[tuple[float, float]]) -> float:
        times = [t for t, _ in m]
        med = statistics.median(times)
        print(
            f"  {name:<48} median {med:6.1f}s  best {min(times):6.1f}s  "
            f"{lines / med:>9,.0f} events/s  peak RSS {max(r for _, r in m):,.0f} MB"
        )
        return med

    print(f"end-to-end benchmark: {lines:,} events, {size_mb:,.0f} MB NDJSON, {args.runs} runs")
    a = show("(a) json + pandas + IsolationForest", plain)
    b = show("(b) detect ingest + train + score (all rules)", mine)
    each = [statistics.median(s) for s in zip(*steps, strict=True)]
    print(
        f"      of which ingest {each[0]:.1f}s, train {each[1]:.1f}s, score {each[2]:.1f}s "
        "(medians; each a fresh process)"
    )
    print(f"  ratio b/a = {b / a:.2f} (target < 1: ours faster)")


if __name__ == "__main__":
    main()
