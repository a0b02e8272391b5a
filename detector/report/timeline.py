"""One principal's day in time order: requests, denied requests, findings, source addresses.

An analyst following a principal needs the order of things ("listed secrets, was denied,
then came back from a new address and exec'd into a pod"), not ten thousand rows. Routine
is collapsed: the requests with the same verb and resource and the same outcome (allowed
or denied) within one 10-minute window (``--every``) become one entry with a count, the
namespaces and names it touched and the addresses it came from, placed at its first request;
consecutive entries of the same key are joined. Denied requests never merge with allowed
ones, a finding is its own entry, and the first request from each source address is marked.

Memory is bounded by the number of runs, not of events: the lake is read one hour
partition at a time (only the principal's rows, only the columns shown), each hour is
collapsed on its own, and runs that continue across an hour boundary are merged after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from detector.controls import TEXT_CHARS, clip
from detector.events.addresses import shown_source
from detector.events.identity import ANY_ACCOUNT, canonical_principal
from detector.features.windows import request_rows
from detector.lake.events import Lake
from detector.lake.findings import list_findings

#: Columns read from the events table (a projection: the rest is never loaded).
EVENT_FIELDS = (
    "cluster",
    "event_time",
    "audit_id",
    "verb",
    "request_uri",
    "resource",
    "subresource",
    "namespace",
    "name",
    "response_code",
    "decision",
    "source_ip",
    "source_ips",
    "user_agent",
    "access_key_id",
)
#: What makes two consecutive requests "the same routine".
#: The namespace is not part of it: a sweep across namespaces is one entry that lists them.
RUN_KEY = ("verb", "target", "denied")
#: Default collapsing window of `detect timeline` (the feature and finding window length).
DEFAULT_EVERY = timedelta(minutes=10)
#: Sample names (and namespaces) kept per entry (the count of distinct ones is kept too).
SAMPLE_NAMES = 3

RUNS_SCHEMA: dict[str, pl.DataType] = {
    "time": pl.Datetime("us", "UTC"),
    "last_time": pl.Datetime("us", "UTC"),
    "count": pl.UInt32(),
    "verb": pl.String(),
    "target": pl.String(),
    "denied": pl.Boolean(),
    "namespaces": pl.List(pl.String()),
    "namespace_count": pl.UInt32(),
    "names": pl.List(pl.String()),
    "name_count": pl.UInt32(),
    "response_codes": pl.List(pl.Int32()),
    "sources": pl.List(pl.String()),
    "user_agent": pl.String(),
    "audit_id": pl.String(),
    "cluster": pl.String(),
}


def principal_filter(principal: str) -> pl.Expr:
    """Rows of this principal, typed in either ARN form; a role without a session matches
    every session of the role (``arn:aws:iam::1:role/developer`` -> all developers)."""
    wanted = canonical_principal(principal)
    col = pl.col("principal")
    if wanted.startswith(ANY_ACCOUNT + ":"):  # the form a table shows: in any account
        return col.str.starts_with("arn:") & col.str.ends_with(wanted.removeprefix(ANY_ACCOUNT))
    if ":role/" in wanted and wanted.count("/") == 1:
        return (col == wanted) | col.str.starts_with(wanted + "/")
    return col == wanted


def denied_expr() -> pl.Expr:
    """Refused requests: 401 (not authenticated), 403 (not authorized) or an RBAC forbid."""
    code = pl.col("response_code")
    return (code.is_in([401, 403]) | (pl.col("decision") == "forbid")).fill_null(False)


def _event_aggs(*, key: bool = True) -> list[pl.Expr]:
    """Aggregations of events into an entry; ``key=False`` when the key is grouped on."""
    return [
        pl.col("event_time").first().alias("time"),
        pl.col("event_time").last().alias("last_time"),
        pl.len().cast(pl.UInt32).alias("count"),
        *(pl.col(k).first() for k in RUN_KEY if key),
        pl.col("namespace")
        .drop_nulls()
        .unique(maintain_order=True)
        .head(SAMPLE_NAMES)
        .alias("namespaces"),
        pl.col("namespace").drop_nulls().n_unique().cast(pl.UInt32).alias("namespace_count"),
        pl.col("name").drop_nulls().unique(maintain_order=True).head(SAMPLE_NAMES).alias("names"),
        pl.col("name").drop_nulls().n_unique().cast(pl.UInt32).alias("name_count"),
        pl.col("response_code").drop_nulls().unique().sort().alias("response_codes"),
        shown_source().drop_nulls().unique(maintain_order=True).alias("sources"),
        pl.col("user_agent").first(),
        pl.col("audit_id").first(),
        pl.col("cluster").first(),
    ]


def _run_aggs(*, key: bool = True) -> list[pl.Expr]:
    """Aggregations of entries into one; ``key=False`` when the key is grouped on."""
    return [
        pl.col("time").min(),
        pl.col("last_time").max(),
        pl.col("count").sum(),
        *(pl.col(k).first() for k in RUN_KEY if key),
        pl.col("namespaces").explode().drop_nulls().unique(maintain_order=True).head(SAMPLE_NAMES),
        pl.col("namespace_count").max(),  # a lower bound when parts saw different ones
        pl.col("names").explode().drop_nulls().unique(maintain_order=True).head(SAMPLE_NAMES),
        pl.col("name_count").sum(),  # an upper bound when a name recurs in several parts
        pl.col("response_codes").explode().drop_nulls().unique().sort(),
        pl.col("sources").explode().drop_nulls().unique(maintain_order=True),
        pl.col("user_agent").first(),
        pl.col("audit_id").first(),
        pl.col("cluster").first(),
    ]


def collapse_runs(events: pl.DataFrame, *, every: timedelta | None = None) -> pl.DataFrame:
    """Events -> entries with :data:`RUNS_SCHEMA`, in time order.

    Without ``every``: each run of consecutive events with the same :data:`RUN_KEY` is one
    entry. With ``every`` (``10m``): all events with the same key within one window of that
    length are one entry, so routine that interleaves (a controller's watches and lease
    updates) collapses too; the entry is placed at its first event.
    """
    if events.is_empty():
        return pl.DataFrame(schema=RUNS_SCHEMA)
    df = events.sort("event_time", maintain_order=True).with_columns(
        pl.when(pl.col("resource").is_not_null())
        .then(
            pl.concat_str(
                [pl.col("resource"), pl.col("subresource")], separator="/", ignore_nulls=True
            )
        )
        .otherwise(pl.col("request_uri").str.replace(r"\?.*$", "").fill_null("-"))
        .alias("target"),
        denied_expr().alias("denied"),
    )
    if every:
        keys = [pl.col("event_time").dt.truncate(every).alias("_bucket"), *RUN_KEY]
    else:
        keys = [pl.struct(list(RUN_KEY)).rle_id().alias("_run")]
    runs = df.group_by(keys, maintain_order=True).agg(_event_aggs(key=not every))
    return runs.sort("time", maintain_order=True).select(list(RUNS_SCHEMA)).cast(RUNS_SCHEMA)


def merge_runs(runs: pl.DataFrame, *, every: timedelta | None = None) -> pl.DataFrame:
    """Join entries computed per hour partition: parts of one window (with ``every``), then
    entries that continue one another (the same key, next in time order)."""
    if runs.height < 2:
        return runs
    if every:
        runs = (
            runs.sort("time", maintain_order=True)
            .group_by(
                pl.col("time").dt.truncate(every).alias("_bucket"), *RUN_KEY, maintain_order=True
            )
            .agg(_run_aggs(key=False))
        )
    runs = runs.sort("time", maintain_order=True).with_columns(
        pl.struct(list(RUN_KEY)).rle_id().alias("_run")
    )
    merged = runs.group_by("_run", maintain_order=True).agg(_run_aggs())
    return merged.sort("time", maintain_order=True).select(list(RUNS_SCHEMA)).cast(RUNS_SCHEMA)


def _sample(values: list[str], count: int) -> str:
    """``a, b, c +7``: a few values and how many more there were."""
    more = count - len(values)
    return ", ".join(clip(v, TEXT_CHARS) or "" for v in values) + (f" +{more}" if more > 0 else "")


def describe_entry(entry: dict[str, Any]) -> str:
    """One entry as a phrase: ``get pods in default (web-1, web-2 +8)``."""
    kind = entry["kind"]
    if kind == "finding":
        return f"{entry['severity'].upper()} {entry['title']}  [{entry['finding_id']}]"
    if kind == "source":
        agent = clip(entry["user_agent"], TEXT_CHARS) or "-"
        return f"first request from {clip(entry['source'], TEXT_CHARS)} ({agent})"
    where = _sample(entry["namespaces"], entry["namespace_count"])
    where = f" in {where}" if where else ""
    names = _sample(entry["names"], entry["name_count"])
    names = f" ({names})" if names else ""
    codes = ",".join(str(c) for c in entry["response_codes"])
    denied = "DENIED " if kind == "denied" else ""
    return f"{denied}{entry['verb'] or '-'} {entry['target']}{where}{names} -> {codes or '-'}"


@dataclass
class Timeline:
    """A principal's collapsed activity in ``[start, end)``."""

    principal: str
    start: datetime
    end: datetime
    runs: pl.DataFrame  # RUNS_SCHEMA
    sources: pl.DataFrame  # source, first_seen, last_seen, requests, user_agent
    findings: pl.DataFrame  # the findings schema
    access_key_ids: list[str] = field(default_factory=list)
    principals: list[str] = field(default_factory=list)  # stored principals matched

    @property
    def requests(self) -> int:
        return int(self.runs["count"].sum()) if self.runs.height else 0

    @property
    def denied(self) -> int:
        return int(self.runs.filter(pl.col("denied"))["count"].sum()) if self.runs.height else 0

    def entries(self) -> list[dict[str, Any]]:
        """Requests, denied requests, new source addresses and findings, in time order."""
        out: list[dict[str, Any]] = []
        for r in self.runs.iter_rows(named=True):
            out.append({"kind": "denied" if r["denied"] else "requests", **r})
        for s in self.sources.iter_rows(named=True):
            out.append(
                {
                    "kind": "source",
                    "time": s["first_seen"],
                    "source": s["source"],
                    "requests": s["requests"],
                    "user_agent": s["user_agent"],
                }
            )
        for f in self.findings.iter_rows(named=True):
            out.append(
                {
                    "kind": "finding",
                    "time": f["window_start"],
                    "last_time": f["window_end"],
                    "finding_id": f["finding_id"],
                    "severity": f["severity"],
                    "detector": f["detector"],
                    "title": f["title"],
                    "principal": f["principal"],
                }
            )
        order = {"source": 0, "finding": 1, "requests": 2, "denied": 2}
        out.sort(key=lambda e: (e["time"], order[e["kind"]]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "principals": self.principals,
            "since": self.start,
            "until": self.end,
            "summary": {
                "requests": self.requests,
                "denied": self.denied,
                "entries": self.runs.height,
                "sources": self.sources.height,
                "findings": self.findings.height,
                "access_key_ids": self.access_key_ids,
            },
            "sources": self.sources.to_dicts(),
            "entries": self.entries(),
        }


def build_timeline(
    lake: Lake,
    principal: str,
    start: datetime,
    end: datetime,
    *,
    cluster: str | None = None,
    every: timedelta | None = DEFAULT_EVERY,
) -> Timeline:
    """Read the principal's events hour by hour and collapse them (see the module doc and
    :func:`collapse_runs` for ``every``)."""
    wanted = canonical_principal(principal)
    match = principal_filter(principal)
    runs: list[pl.DataFrame] = []
    sources: list[pl.DataFrame] = []
    keys: list[pl.DataFrame] = []
    principals: set[str] = set()
    for _part, lf in lake.iter_hours(start, end, cluster=cluster):
        # One row per request, as scoring counts them: an exec or a watch logs a start and
        # an end, and the timeline said "2 requests" for one exec.
        columns = dict.fromkeys([*EVENT_FIELDS, "principal", "stage", "received_time"])
        hour = request_rows(lf.filter(match), columns=list(columns), frame=lf).collect()
        if hour.is_empty():
            continue
        principals.update(hour["principal"].unique().to_list())
        runs.append(collapse_runs(hour, every=every))
        sources.append(
            hour.with_columns(shown_source())
            .filter(pl.col("source").is_not_null())
            .sort("event_time")
            .group_by("source")
            .agg(
                pl.col("event_time").min().alias("first_seen"),
                pl.col("event_time").max().alias("last_seen"),
                pl.len().cast(pl.UInt32).alias("requests"),
                pl.col("user_agent").first(),
            )
        )
        keys.append(hour.select("access_key_id").drop_nulls().unique())
    all_runs = (
        merge_runs(pl.concat(runs), every=every) if runs else pl.DataFrame(schema=RUNS_SCHEMA)
    )
    if sources:
        src = (
            pl.concat(sources)
            .sort("first_seen")
            .group_by("source", maintain_order=True)
            .agg(
                pl.col("first_seen").min(),
                pl.col("last_seen").max(),
                pl.col("requests").sum(),
                pl.col("user_agent").first(),
            )
            .sort("first_seen")
        )
    else:
        src = pl.DataFrame(
            schema={
                "source": pl.String(),
                "first_seen": pl.Datetime("us", "UTC"),
                "last_seen": pl.Datetime("us", "UTC"),
                "requests": pl.UInt32(),
                "user_agent": pl.String(),
            }
        )
    found = list_findings(lake, since=start, until=end)
    found = found.filter(match)
    if cluster:
        found = found.filter(pl.col("cluster") == cluster)
    principals.update(found["principal"].unique().to_list())
    key_ids = pl.concat(keys).unique(maintain_order=True) if keys else None
    return Timeline(
        principal=wanted,
        start=start,
        end=end,
        runs=all_runs,
        sources=src,
        findings=found.sort("window_start"),
        access_key_ids=key_ids["access_key_id"].to_list() if key_ids is not None else [],
        principals=sorted(principals),
    )
