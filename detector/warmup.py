"""Imports a command will need later, started on a side thread while it does other work.

Importing scikit-learn costs ~1 s of interpreter work and the alerting modules ~0.1 s; a
command that first reads Parquet and aggregates in polars (which lets go of the GIL) can
have them imported meanwhile. Whoever imports the module next waits for this import to
finish (Python's import lock), so nothing races; an import that fails here is simply tried
again there, where its error is reported.
"""

from __future__ import annotations

import contextlib
import importlib
import threading


def import_in_background(*modules: str) -> threading.Thread:
    """Start importing ``modules`` (in order) on a daemon thread; returns the thread."""

    def run() -> None:
        for module in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    thread = threading.Thread(target=run, name="warmup-imports", daemon=True)
    thread.start()
    return thread
