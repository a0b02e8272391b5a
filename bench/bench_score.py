"""Score and train benchmark: `detect score` over ~1M events, `detect train` over 14 days.

Builds (once, kept in --workdir) a lake of ``--days`` simulated days with ``--events``
events a day, trains on all days but the last, then, over ``--runs`` runs each, prints for
the last day (each a fresh process, wall time, events/s and peak RSS):

(a) `detect score` as a user runs it: interpreter start, imports, model load, one read of
    the range, features, model, every default rule, the flagged-event lookup, findings
    written;
(b) the model alone (the library path with rules off, in a fresh process);
(c) the rules alone (`detect score --rules-only`);
(d) `detect train` over all days but the last (time and peak RSS; with --days 15 that is
    the 14-day training of the performance issue);
(e) scoring the last min(days, 7) days (the library path, findings not written): a range
    longer than a day is read a (cluster, day) partition at a time, so its peak RSS stays
    near (a)'s; next to it the same range read as one frame (``by_partition=False``), whose
    memory grows with the range;
(f) what `detect watch` pays before each batch for the threshold rules' history (the
    7 days before it): read fresh, and kept hour by hour between batches;
(g) a `detect watch` model batch: the day's last window scored as it closes, which reads
    back to the model's training end (time and peak RSS of that process);
(h) (a)'s steps one after another, wall and CPU time each (``bench/score_phases.py``).

Run with `make bench` or `python bench/bench_score.py --events N --days D --workdir DIR`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

# (b): the model alone, as `detect score` runs it but with the rules off.
MODEL_ONLY = """
import json, sys
from datetime import datetime
from detector.detect.score import ScoreOptions, score_range
from detector.lake.events import Lake
from detector.model.storage import Model
lake, models, since, until = sys.argv[1:5]
since, until = datetime.fromisoformat(since), datetime.fromisoformat(until)
result = score_range(Lake(lake), since, until, model=Model.load(models),
                     options=ScoreOptions(use_rules=False))
print(json.dumps({"windows": result.windows, "findings": result.findings.height}))
"""

# (e): a range of several days as `detect score` reads it, findings not written.
LONG_RANGE = """
import sys
from datetime import datetime
from detector.detect.score import ScoreOptions, score_range
from detector.lake.events import Lake
from detector.model.storage import Model
lake, models, since, until, by_partition = sys.argv[1:6]
since, until = datetime.fromisoformat(since), datetime.fromisoformat(until)
options = ScoreOptions(write=False, by_partition=by_partition == "yes")
score_range(Lake(lake), since, until, model=Model.load(models), options=options)
"""

# (f): the rules' history as `detect watch` reads it before each batch, fresh or kept.
HISTORY = """
import json, statistics, sys, time
from datetime import datetime, timedelta
from detector.detect.history import HistoryCache, rules_history
from detector.detect.score import ScoreOptions, load_rules
from detector.lake.events import Lake
lake, since = Lake(sys.argv[1]), datetime.fromisoformat(sys.argv[2])
ruleset, cache, window = load_rules(ScoreOptions()), HistoryCache(), timedelta(minutes=10)
fresh, kept = [], []
for i in range(6):  # six batches, ten minutes apart
    start = since + i * window
    t = time.perf_counter()
    rules_history(lake, ruleset, start, window, None)
    fresh.append(time.perf_counter() - t)
    t = time.perf_counter()
    rules_history(lake, ruleset, start, window, None, cache)
    kept.append(time.perf_counter() - t)
print(json.dumps({"fresh": statistics.median(fresh), "first": kept[0],
                  "kept": statistics.median(kept[1:]), "hours": cache.hours_read}))
"""

# (g): the model's closing windows as `detect watch` scores them (the hours since training).
WATCH_MODEL = """
import json, sys, time
from datetime import datetime
from detector.detect.stream import StreamDetector, _ms
from detector.lake.events import Lake
from detector.model.storage import Model
lake, model = Lake(sys.argv[1]), Model.load(sys.argv[2])
lo, hi = (_ms(datetime.fromisoformat(a)) for a in sys.argv[3:5])
t = time.perf_counter()
found = StreamDetector(lake, model=lambda: model)._score_model(model, lo, hi).findings
print(json.dumps({"seconds": time.perf_counter() - t, "findings": found.height}))
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


def simulate_into(
    lake: Path, sim: Path, *, days: float, events: int, seed: int, cluster: str
) -> None:
    """``days`` simulated days ending at :data:`END`, ``events`` a day, ingested into
    ``lake`` under ``cluster`` with the real commands; the simulated log is removed after."""
    rate = f"{events / 86_400:.6f}"
    subprocess.run(
        [
            *(str(DETECT), "simulate", "--out", str(sim), "--days", str(days)),
            *("--rate", rate, "--seed", str(seed), "--end", END.strftime(ISO)),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [str(DETECT), "ingest", str(sim / "audit.log"), "--lake", str(lake), "--cluster", cluster],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (sim / "audit.log").unlink()


def build(work: Path, events: int, days: int, seed: int) -> Path:
    """``days`` simulated days with ``events`` events per day, ingested into a lake.

    Done in subprocesses: a child forked from a big parent starts with the parent's
    resident pages, so building in-process would inflate every later peak-RSS figure.
    """
    lake = work / f"lake-{days}d"
    done = work / f"lake-{days}d.done"
    if done.exists():
        return lake
    t = time.perf_counter()
    simulate_into(lake, work / "sim", days=days, events=events, seed=seed, cluster="bench")
    done.touch()
    print(f"built {lake} in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    return lake


def widen(work: Path, lake: Path, days: int) -> Path:
    """A lake of ``days`` days: the simulated two, and copies of the first one before them.

    Simulating 15M events takes far longer on two cores than the training it is for; a copy
    shifted by whole days (audit IDs made unique) costs the same to train on per event.
    """
    import polars as pl

    from detector.lake.events import Lake

    out = work / f"lake-{days}d"
    done = work / f"lake-{days}d.done"
    if days <= 2 or done.exists():
        return lake if days <= 2 else out
    src, dst = Lake(str(lake)), Lake(str(out))
    first = END - timedelta(days=2)
    copies = [(first, k) for k in range(days - 2, 0, -1)] + [(first, 0), (DAY, 0)]
    for start, k in copies:
        shift = timedelta(days=k)
        for h in range(0, 24, 6):  # a quarter of a day at a time: memory stays small
            lo = start + timedelta(hours=h)
            dst.write_events(
                src.scan_events(lo, lo + timedelta(hours=6))
                .with_columns(
                    pl.col("event_time") - shift,
                    pl.col("received_time") - shift,
                    pl.col("audit_id") + (f"-{k}" if k else ""),
                )
                .collect()
            )
    done.touch()
    return out


def count_events(lake: Path, since: datetime, until: datetime) -> int:
    import polars as pl

    from detector.lake.events import Lake

    return Lake(str(lake)).scan_events(since, until).select(pl.len()).collect().item()


def repeat(args: list[str], runs: int) -> tuple[list[float], list[float], str]:
    times, rss, out = [], [], ""
    for _ in range(runs):
        t, r, out = run(args)
        times.append(t)
        rss.append(r)
    return times, rss, out


def line(name: str, n: int, times: list[float], rss: list[float], extra: str = "") -> str:
    best, med = min(times), statistics.median(times)
    return (
        f"  {name:<44} median {med:6.2f}s  best {best:6.2f}s  {n / med:>10,.0f} events/s "
        f"(median)  peak RSS {max(rss):,.0f} MB{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per day")
    parser.add_argument("--days", type=int, default=2, help="days in the lake (the last scored)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the lake here (default: temp)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-score-"))
    work.mkdir(parents=True, exist_ok=True)
    lake = widen(work, build(work, args.events, 2, args.seed), args.days)
    models = work / f"models-{args.days}d"
    n = count_events(lake, DAY, END)
    train_since = END - timedelta(days=args.days)
    n_train = count_events(lake, train_since, DAY)

    train_args = [
        *(str(DETECT), "train", "--lake", str(lake), "--model-dir", str(models)),
        *("--since", train_since.strftime(ISO), "--until", DAY.strftime(ISO), "--format", "json"),
    ]
    t_train, rss_train, out = repeat(train_args, 1 if args.days > 3 else args.runs)
    windows_train = json.loads(out)["training"]["windows"]
    rng = ["--since", DAY.strftime(ISO), "--until", END.strftime(ISO)]
    common = ["--lake", str(lake), *rng, "--format", "json"]
    t_a, rss_a, out = repeat([str(DETECT), "score", *common, "--model-dir", str(models)], args.runs)
    doc = json.loads(out)
    model_cmd = [sys.executable, "-c", MODEL_ONLY, str(lake), str(models)]
    t_b, rss_b, out_b = repeat([*model_cmd, DAY.isoformat(), END.isoformat()], args.runs)
    t_c, rss_c, out_c = repeat([str(DETECT), "score", *common, "--rules-only"], args.runs)
    rules_doc = json.loads(out_c)

    print(
        f"score benchmark: {n:,} events in the scored day, {doc['windows']:,} principal "
        f"windows, {os.cpu_count()} cores, {args.runs} runs each, every run a fresh process"
    )
    print(
        line(
            f"(a) detect score (model + {doc['rules']})",
            n,
            t_a,
            rss_a,
            f"  {len(doc['findings'])} findings",
        )
    )
    print(line("(b) model alone (rules off)", n, t_b, rss_b, f"  {json.loads(out_b)}"))
    print(
        line(
            f"(c) rules alone (--rules-only, {rules_doc['rules']})",
            n,
            t_c,
            rss_c,
            f"  {len(rules_doc['findings'])} findings",
        )
    )
    print(
        line(
            f"(d) detect train, {args.days - 1} day(s), {windows_train:,} windows",
            n_train,
            t_train,
            rss_train,
        )
    )
    # (e) a range longer than a day, read a (cluster, day) partition at a time.
    long_days = min(args.days, 7)
    since = END - timedelta(days=long_days)
    n_long = count_events(lake, since, END)
    # Not written: findings in the days trained on would leave their windows out of (d).
    long_args = [sys.executable, "-c", LONG_RANGE, str(lake), str(models)]
    long_args += [since.isoformat(), END.isoformat()]
    long_runs = 1 if long_days > 2 else args.runs
    t_e, rss_e, _ = repeat([*long_args, "yes"], long_runs)
    print(line(f"(e) score {long_days} days, a day at a time", n_long, t_e, rss_e))
    t_f, rss_f, _ = repeat([*long_args, "no"], long_runs)
    print(line(f"    the same {long_days} days as one frame", n_long, t_f, rss_f))
    # (f) what detect watch pays per batch for the threshold rules' week of history.
    mid_day = (DAY + timedelta(hours=12, minutes=20)).isoformat()
    _, _, out_f = run([sys.executable, "-c", HISTORY, str(lake), mid_day])
    h = json.loads(out_f)
    print(
        f"(f) watch: the rules' history before each batch ({min(args.days - 1, 7)} day(s)): "
        f"read fresh {h['fresh']:.3f} s; kept hour by hour {h['kept']:.3f} s "
        f"(the first batch {h['first']:.3f} s, {h['hours']} hours read)"
    )
    # (g) a watch model batch at the end of the scored day: it reads back to the training end.
    lo, hi = END - timedelta(minutes=10), END
    _, rss_g, out_g = run([sys.executable, "-c", WATCH_MODEL, str(lake), str(models),
                           lo.isoformat(), hi.isoformat()])  # fmt: skip
    g = json.loads(out_g)
    print(
        f"(g) watch: the model's last window of the day, scored as a batch closes it: "
        f"{g['seconds']:.2f} s, peak RSS {rss_g:,.0f} MB"
    )
    print("  target: >= 1,000,000 events/s end to end for (a), peak RSS <= 1 GB")
    # (h) where (a)'s time goes: its steps one after another, wall and CPU each.
    print("(h) detect score's steps, one after another in one process:", flush=True)
    phases = Path(__file__).resolve().parent / "score_phases.py"
    subprocess.run(
        [sys.executable, str(phases), "--workdir", str(work), "--days", str(args.days)], check=True
    )


if __name__ == "__main__":
    main()
