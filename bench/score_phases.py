"""Where `detect score`'s time goes: each step of a run over the bench's day, one after another.

`python bench/bench_score.py` times the whole command; this shows its parts, to say what
reaching a target would take. It runs the steps of :func:`detector.detect.score.score_range`
in one process, in sequence (the command runs the rules on a second thread beside the
model), and prints each step's wall time and CPU time (user + sys of the process: polars'
threads included). Best of ``--runs`` per step; the model and the rules are loaded once.

Usage (the lake and model are the ones `bench_score.py --workdir DIR` builds and keeps)::

    python bench/bench_score.py --days 2 --runs 1 --workdir /tmp/bw
    python bench/score_phases.py --workdir /tmp/bw
"""

from __future__ import annotations

import argparse
import resource
import time

T0 = time.perf_counter()
_C0 = resource.getrusage(resource.RUSAGE_SELF)

from collections.abc import Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from detector.detect.history import rules_history  # noqa: E402
from detector.detect.scan import frame_windows, read_range, recent_values  # noqa: E402
from detector.detect.score import (  # noqa: E402
    NOVELTY_MEMORY,
    ScoreOptions,
    flagged_events,
    frame_columns,
    load_rules,
    model_findings,
    model_links,
    rule_findings,
)
from detector.features import unseen_principals  # noqa: E402
from detector.lake.events import Lake  # noqa: E402
from detector.model.storage import Model  # noqa: E402

#: The day bench_score.py scores (its END minus a day).
DAY = datetime(2026, 11, 26, tzinfo=UTC)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(name: str, step: Callable[[], Any], runs: int) -> Any:
    """``step()``'s result; prints its best wall and CPU time over ``runs``."""
    best_wall = best_cpu = float("inf")
    out = None
    for _ in range(runs):
        wall, cpu = time.perf_counter(), cpu_seconds()
        out = step()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, cpu_seconds() - cpu)
    print(f"  {name:<38} wall {best_wall:6.3f} s   CPU {best_cpu:6.3f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="bench_score.py's --workdir")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=int, default=2, help="bench_score.py's --days")
    args = parser.parse_args()
    work = Path(args.workdir)
    imports = time.perf_counter() - T0
    imports_cpu = cpu_seconds() - (_C0.ru_utime + _C0.ru_stime)
    print(f"  {'imports':<38} wall {imports:6.3f} s   CPU {imports_cpu:6.3f} s")
    lake = Lake(str(work / f"lake-{args.days}d"))
    start, end, now = DAY, DAY + timedelta(days=1), datetime.now(UTC)
    # Loaded once, as the command loads them (a second load hits caches).
    model = timed("model load", lambda: Model.load(str(work / f"models-{args.days}d")), 1)
    ruleset = timed("rules load", lambda: load_rules(ScoreOptions()), 1)
    window = model.window
    history = timed(
        "rules' history (7 days before)",
        lambda: rules_history(lake, ruleset, start, window, None),
        args.runs,
    )
    parts = lake.partitions(start, end)
    columns = frame_columns(ruleset, use_model=True)
    frame = timed(
        "read the range once",
        lambda: read_range(lake, parts, start, end, columns=columns),
        args.runs,
    )
    rules_found, rules_links = timed(
        "rules",
        lambda: rule_findings(
            frame, lake, ruleset, start, end, window=window, cluster=None, now=now,
            history=history,
        ),
        args.runs,
    )  # fmt: skip
    windows = timed(
        "window rows (features)", lambda: frame_windows(frame, start, end, window=window), args.runs
    )
    lookback = max(start - NOVELTY_MEMORY, model.trained_until or start - NOVELTY_MEMORY)
    recent = timed(
        "novelty memory (hours before)",
        lambda: recent_values(
            lake, lookback, start, principals=unseen_principals(windows, model.baseline),
            window=window,
        ),
        args.runs,
    )  # fmt: skip
    found = timed(
        "model", lambda: model_findings(windows, model, now=now, recent=recent), args.runs
    )
    links = timed("model's events", lambda: model_links(frame, found), args.runs)
    timed(
        "flagged-event lookup",
        lambda: flagged_events(lake, parts, frame, [links, rules_links]),
        args.runs,
    )
    print(
        f"{frame.height:,} events, {windows.height:,} windows, "
        f"{rules_found.height + found.height:,} findings; whole process: "
        f"wall {time.perf_counter() - T0:.2f} s, CPU {cpu_seconds():.2f} s"
    )


if __name__ == "__main__":
    main()
