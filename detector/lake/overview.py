"""What an operator checks first in a lake: events per hour, top principals, quarantine.

Used by ``detect demo``; one pass of small aggregations over the lazy scans, so it stays
cheap on a lake of any size.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from detector.lake.events import Lake


def lake_overview(lake: Lake) -> dict[str, Any]:
    """Events per hour, top principals and quarantined lines: what an operator checks first."""
    events = lake.scan_events()
    per_hour = (
        events.group_by(pl.col("event_time").dt.truncate("1h").alias("hour"))
        .agg(pl.len().alias("events"))
        .sort("hour")
        .collect()
    )
    top = (
        events.group_by("principal", "principal_kind")
        .agg(pl.len().alias("events"))
        .sort("events", descending=True)
        .head(10)
        .collect()
    )
    quarantine = lake.scan_quarantine().group_by("reason").agg(pl.len().alias("lines")).collect()
    return {
        "events": int(per_hour["events"].sum()),
        "events_per_hour": per_hour.to_dicts(),
        "top_principals": top.to_dicts(),
        "quarantined": quarantine.to_dicts(),
    }
