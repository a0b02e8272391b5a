"""The Airflow DAGs, for real: Airflow 3 in its own venv, DagBag import, dag.test() on moto.

Airflow pins its own dependency set, so it lives in ``.venvs/airflow`` (tests/venvs.py),
installed from PyPI with pipelines/airflow/constraints.txt on first use and reused after.
The DAG tasks call the project's ``detect`` console script (DETECT_BIN), as in production.

The scenario: simulated EKS traffic up to the end of an hour a day ago; everything before
midnight goes into the lake as the baseline, the scored hour goes into CloudWatch Logs on
the moto server (two audit streams and one other stream). ``dag.test()`` of the retrain DAG
fits the model on the baseline, then ``dag.test()`` of the hourly DAG exports that hour from
CloudWatch and scores it; the lake must then hold the hour's events and findings. AWS
settings reach the tasks only through Airflow Variables and an Airflow connection.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import run_detect_in_process
from tests.venvs import BUILD_SECONDS, ensure_venv, venv_python

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "pipelines" / "airflow"
CONSTRAINTS = DAGS / "constraints.txt"
AIRFLOW = ("apache-airflow==3.3.2",)
CLUSTER = "demo"
LOG_GROUP = f"/aws/eks/{CLUSTER}/cluster"

pytestmark = pytest.mark.slow

TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report_timings(request: pytest.FixtureRequest):
    """Print how long the Airflow parts took, after the module's tests."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not TIMINGS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for name, seconds in TIMINGS.items():
            reporter.write_line(f"airflow timing: {name}: {seconds:.1f}s")


# Runs inside the Airflow venv: import the DAG folder, dag.test() each (dag_id, logical
# date, environment) given, one after the other, and write what happened as JSON (Airflow
# logs a lot on stdout). The module's runs share one process: each process spends about
# 7 s starting (Airflow's imports, then the execution API that dag.test() serves its tasks
# from), while the runs hand each other nothing but what is in S3. A run's environment
# (Airflow Variables as AIRFLOW_VAR_*) is read by its tasks when they run.
RUNNER = r"""
import json, os, sys
from datetime import datetime
from airflow.dag_processing.dagbag import DagBag

folder, out, runs = sys.argv[1:]
bag = DagBag(dag_folder=folder)
result = {
    "import_errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": {
        d.dag_id: {
            "timetable": type(d.timetable).__name__,
            "max_active_runs": d.max_active_runs,
            "tasks": {
                t.task_id: {
                    "retries": t.retries,
                    "backoff": t.retry_exponential_backoff,
                    "trigger_rule": str(t.trigger_rule.value),
                    "upstream": sorted(t.upstream_task_ids),
                }
                for t in d.tasks
            },
        }
        for d in bag.dags.values()
    },
}
result["runs"] = []
for dag_id, logical, env in json.loads(runs):
    os.environ.update(env)
    dr = bag.dags[dag_id].test(logical_date=datetime.fromisoformat(logical))
    result["runs"].append({
        "state": str(dr.state),
        "data_interval": [dr.data_interval_start.isoformat(), dr.data_interval_end.isoformat()],
        "tasks": {ti.task_id: str(ti.state) for ti in dr.get_task_instances()},
    })
with open(out, "w") as fh:
    json.dump(result, fh)
"""


@pytest.fixture(scope="session")
def airflow_python() -> Path:
    started = time.monotonic()
    path = ensure_venv("airflow", AIRFLOW, constraints=CONSTRAINTS)
    TIMINGS["airflow venv (0 if cached)"] = BUILD_SECONDS.get("airflow", 0.0)
    TIMINGS["airflow venv fixture"] = time.monotonic() - started
    return venv_python(path)


@pytest.fixture(scope="module")
def airflow_env(airflow_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """AIRFLOW_HOME with a migrated SQLite database; the DAG folder is pipelines/airflow."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "DETECT_", "VIRTUAL_ENV", "PYTHON"))
        and k != "AWS_ENDPOINT_URL"  # the endpoint comes from the Airflow connection
    }
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "DETECT_BIN": str(Path(sys.executable).parent / "detect"),
        "DETECT_SETTLE": "5",
        "DETECT_RETRIES": "1",  # a transient failure is retried once, after 3 s
        "DETECT_RETRY_DELAY": "0.05",
        "PATH": f"{airflow_python.parent}:{env_path()}",
    }
    started = time.monotonic()
    proc = subprocess.run(
        [str(airflow_python.parent / "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    TIMINGS["airflow db migrate"] = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


def env_path() -> str:
    """PATH without the project's venv: Airflow's environment and ours must not mix."""
    ours = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != ours)


def run_airflow(python: Path, env: dict, tmp: Path, *runs: tuple[str, str, dict[str, str]]) -> dict:
    """The DagBag of the DAG folder and ``result["runs"]``, one for each (dag_id, logical
    date, environment) in ``runs``, dag.test() one after the other in one Airflow process."""
    out = tmp / f"result-{time.monotonic_ns()}.json"
    started = time.monotonic()
    proc = subprocess.run(
        [str(python), "-c", RUNNER, str(DAGS), str(out), json.dumps(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    label = " + ".join(f"dag.test {d} {at}" for d, at, _ in runs) or "DagBag import"
    TIMINGS[label] = time.monotonic() - started
    assert proc.returncode == 0 and out.exists(), proc.stdout[-6000:] + proc.stderr[-6000:]
    result = json.loads(out.read_text())
    result["log"] = proc.stdout + proc.stderr
    return result


# ---------------------------------------------------------------------- the DAG file
def test_dagbag_imports_with_no_errors(dag_runs):
    result = dag_runs
    assert result["import_errors"] == {}
    dags = result["dags"]
    assert set(dags) == {"audit_detector_hourly", "audit_detector_retrain"}
    hourly = dags["audit_detector_hourly"]
    assert hourly["timetable"] == "CronDataIntervalTimetable"  # real hour-long intervals
    assert hourly["max_active_runs"] == 1
    tasks = hourly["tasks"]
    assert tasks["export"]["upstream"] == ["wait_for_cloudwatch"]
    assert tasks["score"]["upstream"] == ["export"]
    assert tasks["score"]["trigger_rule"] == "all_success"  # no scoring after a failed export
    for task in tasks.values():
        assert task["retries"] >= 1 and task["backoff"] is True
    assert set(dags["audit_detector_retrain"]["tasks"]) == {"train"}


# ---------------------------------------------------------------------- one hour, for real
def _ts_ms(line: str) -> int:
    event = json.loads(line)
    stamp = event.get("stageTimestamp") or event["timestamp"]
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return int(at.timestamp() * 1000)


def put_events(logs, lines: list[str]) -> None:
    """Put lines into two audit streams and one other stream, in batches CloudWatch takes."""
    logs.create_log_group(logGroupName=LOG_GROUP)
    streams = ["kube-apiserver-audit-0a1b", "kube-apiserver-audit-2c3d"]
    for s in [*streams, "authenticator-9f8e"]:
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=s)
    by_stream: dict[str, list[dict]] = {s: [] for s in streams}
    for i, line in enumerate(lines):
        by_stream[streams[i % 2]].append({"timestamp": _ts_ms(line), "message": line})
    for stream, events in by_stream.items():
        events.sort(key=lambda e: e["timestamp"])
        batch: list[dict] = []
        size = 0
        for e in [*events, None]:
            if e is None or len(batch) >= 5000 or size + len(e["message"]) + 26 > 900_000:
                if batch:
                    logs.put_log_events(
                        logGroupName=LOG_GROUP, logStreamName=stream, logEvents=batch
                    )
                batch, size = [], 0
            if e is not None:
                batch.append(e)
                size += len(e["message"]) + 26
    # a non-audit stream in the same group: must be ignored
    logs.put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName="authenticator-9f8e",
        logEvents=[{"timestamp": _ts_ms(lines[0]), "message": "time=... msg=access granted"}],
    )


def _exec_into_kube_system(at: datetime) -> dict:
    from tests.factories import make_event

    uri = "/api/v1/namespaces/kube-system/pods/coredns-1/exec?command=sh&stdin=true&tty=true"
    return make_event(
        990_001,
        at=at,
        verb="create",
        requestURI=uri,
        objectRef={
            "resource": "pods",
            "namespace": "kube-system",
            "name": "coredns-1",
            "subresource": "exec",
            "apiVersion": "v1",
        },
        responseStatus={"metadata": {}, "code": 101},
    )


@pytest.fixture(scope="module")
def scenario(moto_endpoint, tmp_path_factory) -> dict:
    """Baseline in the lake (S3 on moto), the scored hour in CloudWatch Logs (moto)."""
    import boto3

    tmp = tmp_path_factory.mktemp("dag-scenario")
    bucket = f"dag-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = midnight - timedelta(days=1)  # yesterday, well inside CloudWatch's 14 days
    hour_start, hour_end = day + timedelta(hours=5), day + timedelta(hours=6)
    started = time.monotonic()
    sim = tmp / "sim"
    # The commands that make the scenario run in this process (the DAG's tasks run detect's
    # console script, as in production; these only prepare what they read).
    proc = run_detect_in_process(
        "simulate", "--out", str(sim), "--days", "0.75", "--rate", "1", "--seed", "5",
        "--end", hour_end.isoformat(), "--cluster", CLUSTER,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    baseline, hour = [], []
    for line in (sim / "audit.log").read_text().splitlines():
        if not line.strip():
            continue
        at = _ts_ms(line)
        if at < day.timestamp() * 1000:
            baseline.append(line)
        elif hour_start.timestamp() * 1000 <= at < hour_end.timestamp() * 1000:
            hour.append(line)
    assert len(baseline) > 10_000 and len(hour) > 1_000
    # Something to find in the hour whatever the traffic drew (a model trained on half a
    # day may rightly flag nothing): a person opening a shell in a kube-system pod.
    hour.append(json.dumps(_exec_into_kube_system(hour_start + timedelta(minutes=30))))
    (tmp / "baseline.log").write_text("\n".join(baseline) + "\n")
    lake = f"s3://{bucket}/lake"
    proc = run_detect_in_process(
        "ingest", str(tmp / "baseline.log"), "--lake", lake, "--cluster", CLUSTER
    )
    assert proc.returncode == 0, proc.stderr
    put_events(boto3.client("logs", endpoint_url=moto_endpoint), hour)
    TIMINGS["scenario setup (simulate, ingest, CloudWatch)"] = time.monotonic() - started
    keys = {(json.loads(x)["auditID"], json.loads(x)["stage"]) for x in hour}
    return {
        "lake": lake,
        "bucket": bucket,
        "model_dir": f"s3://{bucket}/models",
        "day": day,
        "hour_start": hour_start,
        "hour_end": hour_end,
        "keys": keys,
        "endpoint": moto_endpoint,
        "tmp": tmp,
    }


def airflow_settings(scenario: dict, **override: str) -> dict[str, str]:
    """Airflow Variables and the AWS connection, given the way Airflow reads them from env."""
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"region_name": "us-east-1", "endpoint_url": scenario["endpoint"]},
    }
    settings = {
        "AIRFLOW_VAR_DETECT_LAKE": scenario["lake"],
        "AIRFLOW_VAR_DETECT_LOG_GROUP": LOG_GROUP,
        "AIRFLOW_VAR_DETECT_MODEL_DIR": scenario["model_dir"],
        "AIRFLOW_VAR_DETECT_AWS_CONN": "detect_aws",
        "AIRFLOW_CONN_DETECT_AWS": json.dumps(conn),
    }
    return settings | override


def lake_frame(scenario: dict, table: str):
    import polars as pl

    from detector.lake.events import Lake

    lake = Lake(scenario["lake"])
    files = sorted(lake.loc.fs.glob(lake.loc.path(table, "**", "*.parquet")))
    if not files:
        return pl.DataFrame()
    frames = []
    for f in files:
        with lake.loc.fs.open(f, "rb") as fh:
            frames.append(pl.read_parquet(fh))
    return pl.concat(frames, how="diagonal_relaxed")


@pytest.fixture(scope="module")
def dag_runs(airflow_python, airflow_env, scenario, tmp_path_factory) -> dict:
    """Three DAG runs in one Airflow process, as a scheduler would start them:
    1. the daily retrain for the day before the scored hour: fits on the baseline;
    2. the hourly run for [hour_start, hour_end) (logical date = end of the interval);
    3. the hourly run for the hour after, its export pointed at a log group that does not
       exist (exit 2: no retry)."""
    settings = airflow_settings(scenario)
    broken = airflow_settings(scenario, AIRFLOW_VAR_DETECT_LOG_GROUP="/aws/eks/nope/cluster")
    after = (scenario["hour_end"] + timedelta(hours=1)).isoformat()
    return run_airflow(
        airflow_python, airflow_env, tmp_path_factory.mktemp("dag-runs"),
        ("audit_detector_retrain", scenario["day"].isoformat(), settings),
        ("audit_detector_hourly", scenario["hour_end"].isoformat(), settings),
        ("audit_detector_hourly", after, broken),
    )  # fmt: skip


def test_retrain_then_hourly_export_and_score_one_hour(dag_runs, scenario):
    result = dag_runs
    retrain, run, _ = result["runs"]
    assert retrain["tasks"] == {"train": "success"}, result["log"][-8000:]
    assert retrain["data_interval"][1] == scenario["day"].isoformat()
    assert run["data_interval"] == [
        scenario["hour_start"].isoformat(),
        scenario["hour_end"].isoformat(),
    ]
    assert run["tasks"] == {
        "wait_for_cloudwatch": "success",
        "export": "success",
        "score": "success",
    }, result["log"][-8000:]
    assert "success" in run["state"]

    events = lake_frame(scenario, "events")
    start, end = scenario["hour_start"], scenario["hour_end"]
    in_hour = events.filter((events["event_time"] >= start) & (events["event_time"] < end))
    assert set(zip(in_hour["audit_id"], in_hour["stage"], strict=True)) == scenario["keys"]
    assert in_hour.height == len(scenario["keys"])  # each event once

    findings = lake_frame(scenario, "findings")
    assert findings.height > 0, result["log"][-8000:]
    assert ((findings["window_start"] >= start) & (findings["window_start"] < end)).all()
    flagged = lake_frame(scenario, "findings_events")
    assert flagged.height > 0
    assert set(flagged["finding_id"]) <= set(findings["finding_id"])


def test_failed_export_does_not_score(dag_runs, scenario):
    """Export fails (unknown log group, exit 2: no retry); score must not run."""
    *_, run = dag_runs["runs"]
    tasks = run["tasks"]
    assert tasks["export"] == "failed", dag_runs["log"][-8000:]
    assert tasks["score"] == "upstream_failed"
    assert "failed" in run["state"]
    findings = lake_frame(scenario, "findings")
    hour_start = scenario["hour_end"]
    assert (
        findings.is_empty()
        or not (
            (findings["window_start"] >= hour_start)
            & (findings["window_end"] <= hour_start + timedelta(hours=1))
        ).any()
    )
