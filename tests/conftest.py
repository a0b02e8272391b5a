"""Shared fixtures: a real moto server on loopback, lakes, the CLI as a subprocess.

AWS is never mocked in-process: S3 and CloudWatch Logs are served by moto in server mode
on 127.0.0.1 (a free port per test session), and boto3, s3fs and polars reach it through
``AWS_ENDPOINT_URL`` exactly as they would reach AWS.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_DATA = Path(__file__).resolve().parent / "data"

# Fake credentials for every test: nothing here may ever reach real AWS.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "TERMINAL_WIDTH": "120",
        "COLUMNS": "120",
    }
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)


def _build_click_commands_once() -> None:
    """``CliRunner().invoke(app, ...)`` builds the whole click command tree from the typer
    app at every call: ~40 ms of ``get_type_hints`` over every command's parameters, about
    40 s of the suite's CPU over its in-process runs. The tree depends only on the app, so
    it is built once per app here. (The ``detect`` console script builds only the command
    it runs, once per process: this is the test runner's cost, not a user's.)"""
    import functools

    import typer.testing

    assert hasattr(typer.testing, "_get_command"), "typer.testing changed: drop this shortcut"
    typer.testing._get_command = functools.cache(typer.testing._get_command)


_build_click_commands_once()


#: Modules that share something slow to set up (an Airflow database, a Ray cluster, a
#: browser, simulated lakes and models trained on them) or hold the longest tests, with
#: about the seconds each takes on one core. Only the order of the run depends on it
#: (see pytest_collection_modifyitems): a module missing here or a wrong figure costs
#: time, never a result.
HEAVY_MODULES: dict[str, float] = {
    "test_airflow_dag.py": 32,
    "test_watch.py": 42,
    "test_executor.py": 36,
    "test_export.py": 18,
    "test_normalize.py": 16,
    "test_ingest.py": 15,
    "test_demo.py": 14,
    "test_scoring.py": 14,
    "test_report.py": 12,
    "test_model.py": 12,
    "test_input_fuzz.py": 10,
    "test_delivery_pending.py": 8,
    "test_iam_policy.py": 8,
    "test_lake_concurrency.py": 7,
    "test_evaluate.py": 6,
    "test_simulate.py": 4,
    "test_athena.py": 3,
    "test_cli_output.py": 3,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the run for ``--dist worksteal`` (``make test``): every worker starts with a
    share of the heavy modules, then runs light tests, which are what the others steal.

    worksteal first gives each of the N workers a contiguous 1/N of the collection, and a
    worker that runs dry steals the second half of another's queue. In file order the
    heavy modules sat anywhere in those queues: a stolen half could cut one in two, and
    both workers then built its module fixtures (an Airflow database, a trained model),
    or the run ended waiting on a long test begun last. Here each worker's share begins
    with heavy modules, whole and balanced by :data:`HEAVY_MODULES`' seconds, longest
    first; light tests fill the rest in file order. Every worker computes the same order
    (xdist requires it); a worker does not know the --dist mode, and the others (load,
    loadfile...) only hand tests out in other ways from it. Without xdist, file order.
    """
    workers = int(getattr(config, "workerinput", {}).get("workercount", 0))
    if workers < 2:
        return
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.path.name, []).append(item)
    heavy = sorted(
        (name for name in modules if name in HEAVY_MODULES),
        key=lambda name: (-HEAVY_MODULES[name], name),
    )
    light = [item for name, group in modules.items() if name not in HEAVY_MODULES for item in group]
    # The sizes of worksteal's first shares: each idle worker in turn gets pending // left.
    sizes, left = [], len(items)
    for k in range(workers):
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    seconds = [0.0] * workers
    for name in heavy:  # longest first, each to the share with the least so far that has room
        fits = [k for k in range(workers) if len(shares[k]) + len(modules[name]) <= sizes[k]]
        k = min(fits or range(workers), key=lambda k: seconds[k])
        shares[k] += modules[name]
        seconds[k] += HEAVY_MODULES[name]
    rest = iter(light)
    for k in range(workers):
        shares[k] += itertools.islice(rest, max(0, sizes[k] - len(shares[k])))
    shares[-1] += rest  # nothing, unless a share overflowed
    ordered = [item for share in shares for item in share]
    assert sorted(map(id, ordered)) == sorted(map(id, items))
    items[:] = ordered


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback; ``AWS_ENDPOINT_URL`` points at it for the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous
        server.stop()


@pytest.fixture
def aws(moto_endpoint, monkeypatch) -> str:
    """The moto server's endpoint, with test credentials and a region in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_endpoint


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def lake_dir(tmp_path: Path) -> str:
    return str(tmp_path / "lake")


@pytest.fixture(scope="session")
def external_data() -> Path:
    """Real audit events from public projects (copied into tests/data with licences)."""
    return TEST_DATA


def detect_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "detect"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]


def run_detect(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``detect`` console script in a subprocess, as a user or cron would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*detect_cmd(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or str(ROOT),
        check=False,
    )


def run_detect_in_process(
    *args: str, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """``detect *args`` through the same typer app in this process, returning what
    :func:`run_detect` returns. For steps that only prepare what a test is about (a lake
    to read, findings to show): a ``detect`` process costs 0.6-1 s of start-up. A test
    about the process itself (exit codes, signals, what reaches a terminal) uses
    :func:`run_detect`. An exception the CLI would not catch is raised here."""
    from typer.testing import CliRunner

    from detector.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def on_terminal(args: list[str], *, stream: str = "stdout", env: dict[str, str] | None = None):
    """``detect *args`` with ``stream`` (stdout or stderr) on a pseudo-terminal, as an
    analyst's is: (exit code, what it wrote there, the other stream's text)."""
    import pty

    leader, follower = pty.openpty()
    other = subprocess.PIPE
    proc = subprocess.Popen(
        [*detect_cmd(), *args],
        stdout=follower if stream == "stdout" else other,
        stderr=follower if stream == "stderr" else other,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    _, rest = proc.communicate(timeout=120)
    return proc.returncode, b"".join(chunks).decode(), (rest or b"").decode()


@pytest.fixture
def detect():
    """``detect(*args)`` -> CompletedProcess, running the CLI as a subprocess."""
    return run_detect


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """``ROOT/name``, made by ``build(path)`` once per test run however many xdist workers
    ask for it; the others wait for it, then use it as it is.

    Session fixtures are per worker process: a simulated log and the model trained on it
    were built again by every worker that ran one test needing them (seconds each). Only
    for what tests treat as read-only (a test that changes it must copy it first, e.g.
    with :func:`copy_tree`). ROOT is the run's base temporary folder that every worker's
    own lies in (pytest's own folder without xdist), so nothing survives into a later run.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = root / "built-once"
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # a build that failed half-way
            path.mkdir()
            build(path)
            done.touch()
    return path
