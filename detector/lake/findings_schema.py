"""The findings contract: what `detect score` writes and analysts (Athena, DuckDB, pandas) read.

``LAKE/findings/date=YYYY-MM-DD/*.parquet`` holds one row per finding (date of
``window_start``, UTC); ``LAKE/findings_events/date=YYYY-MM-DD/*.parquet`` holds the flagged
events themselves (canonical event columns plus ``finding_id``). Documented column by
column in docs/schema.md.

``finding_id`` is derived from (detector, cluster, principal, window_start), so scoring the
same range again produces the same ids and replaces rows instead of adding new ones.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import polars as pl

from detector.events.schema import CANONICAL_COLUMNS

_TS = pl.Datetime("us", "UTC")

#: Severity names in increasing order; ``severity_rank`` is the index.
SEVERITIES = ("info", "low", "medium", "high", "critical")
#: The flagged events kept per finding (the first ones in time); ``event_count`` is exact.
MAX_EVENTS_PER_FINDING = 10_000

TOP_FEATURE = pl.Struct(
    {
        "name": pl.String(),
        "value": pl.Float64(),
        "baseline": pl.Float64(),  # the principal's own typical value (median of its windows)
        "population": pl.Float64(),  # 99th percentile over all principals
    }
)

FINDINGS_COLUMNS: dict[str, pl.DataType] = {
    "finding_id": pl.String(),
    "detector": pl.String(),  # "model:iforest" or "rule:<rule id>"
    "severity": pl.String(),  # one of SEVERITIES
    "severity_rank": pl.Int8(),
    "score": pl.Float64(),  # anomaly score (higher = more unusual) or rule hit count
    "threshold": pl.Float64(),
    "cluster": pl.String(),
    "principal": pl.String(),
    "principal_kind": pl.String(),
    "window_start": _TS,
    "window_end": _TS,
    "title": pl.String(),
    "reasons": pl.List(pl.String()),
    "top_features": pl.List(TOP_FEATURE),
    "tactic": pl.String(),  # MITRE ATT&CK tactic (model findings: their top mapped feature's)
    "technique": pl.String(),  # MITRE ATT&CK technique id
    "event_count": pl.Int64(),
    "audit_ids": pl.List(pl.String()),
    "created_at": _TS,
    "model_version": pl.String(),  # model fingerprint, or rules version for rule findings
    "cold_start": pl.Boolean(),  # model fitted on the scored window itself (--fit-on-window)
}

FINDINGS_EVENTS_COLUMNS: dict[str, pl.DataType] = {"finding_id": pl.String(), **CANONICAL_COLUMNS}


def finding_id(
    detector: str, cluster: str | None, principal: str | None, window_start: datetime
) -> str:
    """Stable id of a finding: the same detector, principal and window always give the same id.

    sha256 rather than polars' ``hash``, which is not stable across polars versions; there
    are few findings per run, so hashing them in Python costs nothing.
    """
    key = f"{detector}|{cluster or ''}|{principal or ''}|{window_start.isoformat()}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def with_finding_ids(df: pl.DataFrame) -> pl.DataFrame:
    """Fill ``finding_id`` from (detector, cluster, principal, window_start)."""
    ids = [
        finding_id(d, c, p, w)
        for d, c, p, w in df.select("detector", "cluster", "principal", "window_start").iter_rows()
    ]
    return df.with_columns(pl.Series("finding_id", ids, dtype=pl.String))


def empty_findings() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDINGS_COLUMNS)
