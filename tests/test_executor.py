"""`--executor ray`: the same model and the same findings as the local executor.

A real local Ray cluster (2 CPUs, no dashboard) is started once for the session by the
``ray_cluster`` fixture, and one test uses it (under pytest-xdist, one worker starts Ray);
the work is split into (cluster, day) partitions there. The lake
holds two clusters and the scored range crosses midnight, so window rows from several
partitions, novelty across days and per-cluster rules all meet.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pytest
from conftest import built_once, copy_tree
from factories import make_event
from typer.testing import CliRunner

from detector.cli import app
from detector.detect.evaluate import evaluate, load_labels
from detector.detect.executor import LocalExecutor, make_executor, partition_units
from detector.detect.partitioned import rule_spans
from detector.detect.score import ScoreOptions, score_range
from detector.detect.train import train_model
from detector.events.normalize import normalize_lines
from detector.lake.events import Lake
from detector.simulate import simulate

END = datetime(2026, 11, 20, 12, tzinfo=UTC)
START = END - timedelta(days=3)
CUT = END - timedelta(hours=30)  # scored range: 06:00 one day to 12:00 the next
NOW = datetime(2026, 11, 21, tzinfo=UTC)
CLUSTERS = {"east": 11, "west": 12}


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session: its start-up is the cost of this module."""
    import ray  # the ray extra: `make setup` installs every extra

    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register; on a loaded 2-core machine
            # (the whole suite on every core) its agents' imports can take longer. Only
            # that start-up timeout is retried; the half-started node dies with this process.
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def two_clusters(tmp_path_factory) -> tuple[Lake, Path]:
    """The two clusters' lake and their labels, built once per run (conftest.built_once)
    whichever xdist workers run this module's tests: tests only read it (the one that
    writes findings writes them into a copy)."""

    def build(root: Path) -> None:
        lake = Lake(str(root / "lake"))
        labels = []
        for name, seed in CLUSTERS.items():
            sim = simulate(start=START, end=END, rate=0.08, seed=seed, cluster=name)
            lines = list(sim.iter_lines())
            result = normalize_lines(
                pa.array(lines, pa.binary()),
                positions=pa.array([str(i) for i in range(len(lines))]),
                source="sim",
                cluster=name,
            )
            lake.write_events(result.events)
            labels += sim.labels
        (root / "labels.json").write_text(json.dumps(labels, default=str))

    root = built_once(tmp_path_factory, "executor-two-clusters", build)
    return Lake(str(root / "lake")), root / "labels.json"


@pytest.fixture(scope="module")
def local_model(two_clusters):  # type: ignore[no-untyped-def]
    """The model the local executor trains on the two clusters before :data:`CUT`, trained
    once for the module: two tests compare against it, and training is deterministic (the
    Ray test checks exactly that: its own training gives the same fingerprint, threshold
    and training summary). Tests only read it."""
    lake, _ = two_clusters
    return train_model(lake, START, CUT, model_dir=None)


@pytest.fixture(scope="module")
def one_read(two_clusters, local_model):  # type: ignore[no-untyped-def]
    """The local scoring of [CUT, END) in one read of the whole range, without writing:
    the reference both the Ray run and the partition-at-a-time local run must equal
    (computed once; the comparisons only read it)."""
    lake, _ = two_clusters
    options = ScoreOptions(write=False, now=NOW, by_partition=False)
    return score_range(lake, CUT, END, model=local_model, options=options)


def assert_same_result(got, expected) -> None:  # type: ignore[no-untyped-def]
    """Two scoring results of one range: the same findings, events behind them and counts."""
    assert got.findings.equals(expected.findings)
    assert got.events.equals(expected.events)
    counts = ("windows", "requests", "events_read")
    assert [getattr(got, c) for c in counts] == [getattr(expected, c) for c in counts]


def _sorted(df: pl.DataFrame, *keys: str) -> pl.DataFrame:
    return df.sort(list(keys))


def test_partitions_are_cluster_days_made_of_whole_local_chunks(two_clusters):
    lake, _ = two_clusters
    units = partition_units(lake.partitions(CUT, END), timedelta(minutes=10))
    assert [(c, datetime.fromtimestamp(t, UTC).day) for c, t, _ in units] == [
        ("east", 19),
        ("east", 20),
        ("west", 19),
        ("west", 20),
    ]
    assert all(p[0] == c for c, _, parts in units for p in parts)


def test_ray_executor_trains_the_same_model_and_finds_the_same(
    two_clusters, local_model, one_read, ray_cluster, tmp_path
):
    lake, labels = two_clusters
    ray = make_executor("ray")
    ray_model = train_model(lake, START, CUT, model_dir=None, executor=ray)
    assert ray_model.fingerprint == local_model.fingerprint
    assert ray_model.threshold == local_model.threshold
    assert ray_model.training == local_model.training

    opts = ScoreOptions(write=False, now=NOW)
    here = one_read
    there = score_range(lake, CUT, END, model=local_model, options=opts, executor=ray)
    assert here.findings.height > 0
    assert {"model", "rules"} <= {
        "model" if d.startswith("model:") else "rules" for d in here.findings["detector"]
    }
    assert set(here.findings["cluster"]) == set(CLUSTERS)
    assert_same_result(there, here)

    scenarios = load_labels(labels)
    report_here = evaluate(lake, scenarios, train_until=CUT, executor=LocalExecutor())
    report_there = evaluate(lake, scenarios, train_until=CUT, executor=ray)
    assert report_there.to_dict() == report_here.to_dict()

    # The command as a user runs it (in this test so that one xdist worker starts Ray),
    # on a copy of the lake: it writes findings, and the other tests share the lake.
    written = copy_tree(Path(lake.uri), tmp_path / "lake")
    models = str(tmp_path / "models")
    local_model.save(models)
    args = ["score", "--lake", str(written), "--model-dir", models, "--since", CUT.isoformat()]
    args += ["--until", END.isoformat(), "--format", "json"]
    runner = CliRunner()
    local = runner.invoke(app, args)
    assert local.exit_code in (0, 1), local.output
    local_written = pl.read_parquet(f"{written}/findings/**/*.parquet").drop("created_at")
    distributed = runner.invoke(app, [*args, "--executor", "ray"])
    assert distributed.exit_code == local.exit_code, distributed.output
    ray_written = pl.read_parquet(f"{written}/findings/**/*.parquet").drop("created_at")
    assert ray_written.height == local_written.height > 0
    assert _sorted(ray_written, "finding_id").equals(_sorted(local_written, "finding_id"))


def test_a_local_range_longer_than_a_day_read_a_partition_at_a_time_finds_the_same(
    two_clusters, local_model, one_read
):
    """A local run reads a range of more than a day (cluster, day) partition by partition,
    so its memory does not grow with the range: the findings, their events and the counts
    are those of the one read of the whole range."""
    lake, _ = two_clusters
    one = one_read
    auto = score_range(
        lake, CUT, END, model=local_model, options=ScoreOptions(write=False, now=NOW)
    )
    assert timedelta(days=1) < END - CUT
    assert one.findings.height > 0 and set(one.findings["cluster"]) == set(CLUSTERS)
    assert_same_result(auto, one)


def _store(lake: Lake, lines: list[bytes], cluster: str) -> None:
    """Raw audit lines into the lake, as `detect ingest` stores them."""
    lake.write_events(
        normalize_lines(
            pa.array(lines, pa.binary()),
            positions=pa.array([str(i) for i in range(len(lines))]),
            source="sim",
            cluster=cluster,
        ).events
    )


def test_a_hunt_longer_than_a_week_finds_with_the_rules_what_weekly_runs_would(tmp_path):
    """The rules run per cluster over spans of at most a week (a task's memory follows a
    week of candidates, not a 90-day hunt): a 10-day range finds, with the rules, exactly
    what one run per span finds, the events behind the findings included. Planted: an
    identity denied 24 times in every window of the first span's last two days (over the
    absolute threshold: the lake holds nothing before the range, so no baseline), then 24
    times in one window of the second: against the week before the second span that is
    its usual, not a spike (against the week before the whole range it would be one)."""
    end = datetime(2026, 12, 1, tzinfo=UTC)
    start = end - timedelta(days=10)
    lake = Lake(str(tmp_path / "lake"))
    sim = simulate(start=start, end=end, rate=0.02, seed=5, cluster="east")
    lines = list(sim.iter_lines())
    busy = [datetime(2026, 11, 24, tzinfo=UTC) + timedelta(minutes=10 * w) for w in range(288)]
    for n, at in enumerate(
        [t + timedelta(seconds=s) for t in busy for s in range(24)]
        + [datetime(2026, 11, 27, 1, tzinfo=UTC) + timedelta(seconds=s) for s in range(24)]
    ):
        denied = make_event(
            900_000 + n,
            at=at,
            responseStatus={"metadata": {}, "code": 403},
            annotations={"authorization.k8s.io/decision": "forbid"},
        )
        lines.append(orjson.dumps(denied))
    _store(lake, lines, "east")
    spans = rule_spans(start, end, timedelta(minutes=10))
    assert len(spans) == 2  # a week boundary falls inside the range
    opts = ScoreOptions(write=False, now=NOW, use_model=False)
    hunt = score_range(lake, start, end, model=None, options=opts)
    runs = [score_range(lake, lo, hi, model=None, options=opts) for lo, hi in spans]
    assert hunt.findings.height > 0 and all(r.findings.height for r in runs)
    spikes = hunt.findings.filter(
        (pl.col("detector") == "rule:auth-failure-spike-principal")
        & pl.col("principal").str.ends_with("/eng-admin/alice")
    )
    # the busy days spike against the quiet week before them; the later window does not
    assert spikes["window_start"].dt.date().unique().sort().to_list() == [
        date(2026, 11, 24),
        date(2026, 11, 25),
    ]
    by_id = ["finding_id"]
    assert hunt.findings.sort(by_id).equals(pl.concat([r.findings for r in runs]).sort(by_id))
    keys = ["finding_id", "audit_id", "stage"]
    assert hunt.events.sort(keys).equals(pl.concat([r.events for r in runs]).sort(keys))


def test_executor_ray_without_ray_installed_is_a_usage_error(two_clusters, monkeypatch):
    # Uninstalling Ray for one test is not possible in a shared venv: a None entry in
    # sys.modules makes `import ray` raise ImportError exactly as a missing package does.
    lake, _ = two_clusters
    monkeypatch.setitem(sys.modules, "ray", None)
    result = CliRunner().invoke(
        app, ["train", "--lake", lake.uri, "--since", "3d", "--executor", "ray"]
    )
    assert result.exit_code == 2
    assert "--executor ray needs Ray: pip install 'audit-detector[ray]'" in result.output


def test_a_ray_address_where_nothing_listens_is_one_line_at_once(tmp_path, detect):
    """A cluster that is down, or a wrong port: Ray's own wait went on past two minutes,
    printing its retries. Now a connection is tried first (5 s at most): nothing there is
    one line and exit 3, as an unreachable AWS endpoint is; an address Ray could never
    read is a usage error. A child process: this one may have joined the test cluster."""
    from conftest import free_port

    (tmp_path / "lake").mkdir()
    base = ("score", "--lake", str(tmp_path / "lake"), "--since", "1h", "--no-model")
    port = free_port()  # bound, then released: nothing listens there
    import importlib.util

    client = importlib.util.find_spec("grpc") is not None  # ray[client], not in the extra
    if not client:  # Ray Client's address without it: one line, not Ray's own traceback
        run = detect(*base, "--executor", "ray", "--address", f"ray://127.0.0.1:{port}")
        assert run.returncode == 2, run.stderr
        assert 'Ray Client address, which needs `pip install "ray[client]"`' in run.stderr
    addresses = [f"127.0.0.1:{port}", *([f"ray://127.0.0.1:{port}"] if client else [])]
    for address in addresses:
        run = detect(*base, "--executor", "ray", "--address", address, timeout=60)
        assert run.returncode == 3, run.stderr
        assert run.stderr.strip().splitlines() == [
            f"error: cannot reach the Ray cluster at {address}: Connection refused "
            "(is the head node up, and is this its GCS port (6379) or Ray Client port "
            "(10001)?)"
        ]
    for address in ("head:6379x", "head:0"):  # port 0 left Ray waiting without end
        run = detect(*base, "--executor", "ray", "--address", address, timeout=60)
        assert run.returncode == 2 and "is not host:port or ray://host:port" in run.stderr
    label = "a" * 100 + ".example:6379"  # a DNS label over 63 characters: "unexpected"
    run = detect(*base, "--executor", "ray", "--address", label, timeout=60)
    assert run.returncode == 2 and run.stderr.strip().endswith(": not a host name"), run.stderr


class _CountingExecutor(LocalExecutor):
    """The local executor, counting the tasks it is handed (what a Ray cluster would run)."""

    def __init__(self) -> None:
        self.tasks = 0

    def map(self, fn, calls):
        self.tasks += len(calls)
        return super().map(fn, calls)


def test_a_hunt_over_years_of_an_empty_lake_hands_out_tasks_only_where_events_are(tmp_path):
    """`detect score --since 1970-01-01` on a lake of two days ran the rules once per
    week of the 56 years, empty or not (99 s); the spans without a partition are skipped,
    and the findings are those of the days that hold events."""
    end = datetime(2026, 12, 1, tzinfo=UTC)
    lake = Lake(str(tmp_path / "lake"))
    sim = simulate(start=end - timedelta(days=2), end=end, rate=0.05, seed=5, cluster="east")
    lines = list(sim.iter_lines())
    _store(lake, lines, "east")
    opts = ScoreOptions(write=False, now=NOW, use_model=False)
    counting = _CountingExecutor()
    years = score_range(
        lake, datetime(1970, 1, 1, tzinfo=UTC), end, model=None, options=opts, executor=counting
    )
    days = score_range(lake, end - timedelta(days=7), end, model=None, options=opts)
    assert days.findings.height > 0
    assert years.findings.sort("finding_id").equals(days.findings.sort("finding_id"))
    assert counting.tasks <= 2 * 3  # window rows of each day and rules of each span held
