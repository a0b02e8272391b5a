"""Shared fixtures: a real moto server on loopback, lakes, the CLI as a subprocess.

AWS is never mocked in-process: S3 and CloudWatch Logs are served by moto in server mode
on 127.0.0.1 (a free port per test session), and boto3, s3fs and polars reach it through
``AWS_ENDPOINT_URL`` exactly as they would reach AWS.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
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
