"""`make bench`: every benchmark in bench/, one after the other, figures on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    "bench_ingest.py",
    "bench_export.py",
    "bench_score.py",
    "rules_speed.py",
    "bench_compact.py",
    "bench_watch.py",
    "bench_e2e.py",
    "bench_central_fit.py",
]

if __name__ == "__main__":
    failed = []
    for name in BENCHES:
        path = HERE / name
        if not path.exists():
            continue
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, str(path), *sys.argv[1:]], check=False).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
