"""Small hand-made lakes for the timeline and report tests: canonical events and findings
written through the real lake writers (no simulation: a few hundred rows, built in ms)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl

from detector.events.schema import CANONICAL_COLUMNS
from detector.lake import findings as store
from detector.lake.events import Lake
from detector.lake.findings_schema import (
    FINDINGS_COLUMNS,
    FINDINGS_EVENTS_COLUMNS,
    SEVERITIES,
    with_finding_ids,
)

ACCOUNT = "111122223333"
GRACE = f"arn:aws:iam::{ACCOUNT}:role/developer/grace"
GRACE_STS = f"arn:aws:sts::{ACCOUNT}:assumed-role/developer/grace"
HEIDI = f"arn:aws:iam::{ACCOUNT}:role/developer/heidi"
GRACE_KEY = "ASIAGRACEKEY0000TEST"

_n = 0


def event(principal: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """One canonical event row; ``fields`` override the defaults (verb, resource...)."""
    global _n
    _n += 1
    iam = principal.startswith("arn:aws:iam::")
    row: dict[str, Any] = {c: None for c in CANONICAL_COLUMNS}
    row.update(
        cluster="prod",
        event_time=at,
        received_time=at,
        audit_id=f"audit-{_n:06d}",
        stage="ResponseComplete",
        level="Metadata",
        verb="get",
        request_uri="/api/v1/namespaces/default/pods/web-1",
        user_name="developer" if iam else principal,
        principal=principal,
        principal_kind="iam_role" if iam else "service_account",
        iam_arn=principal.rsplit("/", 1)[0] if iam else None,
        iam_session_name=principal.rsplit("/", 1)[1] if iam else None,
        access_key_id=GRACE_KEY if principal == GRACE else None,
        source_ip="10.0.1.5",
        user_agent="kubectl/v1.31.2",
        resource="pods",
        namespace="default",
        name="web-1",
        response_code=200,
        decision="allow",
        source="test",
        source_position=str(_n),
    )
    row.update(fields)
    if row["source_ip"]:
        row["source_ips"] = [row["source_ip"]]
    return row


def write_events(lake: Lake, rows: list[dict[str, Any]]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=CANONICAL_COLUMNS, orient="row")
    lake.write_events(df)
    return df


def finding(
    principal: str,
    start: datetime,
    events: pl.DataFrame,
    *,
    severity: str = "high",
    title: str = "Binding to the cluster-admin role",
    detector: str = "rule:cluster-admin-binding",
) -> dict[str, Any]:
    return {
        "finding_id": None,
        "detector": detector,
        "severity": severity,
        "severity_rank": SEVERITIES.index(severity),
        "score": 1.0,
        "threshold": 1.0,
        "cluster": "prod",
        "principal": principal,
        "principal_kind": "iam_role",
        "window_start": start,
        "window_end": start + timedelta(minutes=10),
        "title": title,
        "reasons": [f"{title} ({events.height} requests)"],
        "top_features": [],
        "tactic": "privilege-escalation",
        "technique": "T1078",
        "event_count": events.height,
        "audit_ids": events["audit_id"].to_list(),
        "created_at": start,
        "model_version": "rules-v1",
        "cold_start": False,
    }


def write_findings(
    lake: Lake, start: datetime, end: datetime, items: list[tuple[dict, pl.DataFrame]]
) -> pl.DataFrame:
    """Findings and their events as `detect score` files them; returns the findings."""
    df = with_finding_ids(
        pl.DataFrame([f for f, _ in items], schema=FINDINGS_COLUMNS, orient="row")
    )
    frames = [
        ev.with_columns(pl.lit(fid).alias("finding_id"))
        for fid, (_, ev) in zip(df["finding_id"], items, strict=True)
    ]
    events = pl.concat(frames).select(list(FINDINGS_EVENTS_COLUMNS)).cast(FINDINGS_EVENTS_COLUMNS)
    store.write_range(lake, "rules", start, end, df, events)
    return df
