"""Per-principal window features: a lake time range -> one row per (cluster, principal, window).

One code path for training and scoring, in two steps:

1. :func:`window_counts` (polars lazy, streamed one time chunk at a time by
   :func:`lake_windows`) reduces canonical events to per-window counts plus the distinct
   values each window touched (source IPs, user agents, namespaces, resources and
   verb-resource pairs). This is the only step whose cost grows with the number of events.
2. :func:`finish_features` turns those window rows into the model's features: counts,
   ratios, novelty against the principal's own history and volume relative to the
   principal's typical window. The history is a :class:`Baseline` (saved with the model) at
   scoring time; at training time it is the principal's own earlier windows (prequential:
   a value is new in the first window it appears in), so that novelty is not constant zero
   on the training rows, which would make it invisible to the forest.

Each request is counted once: the API server logs an event per stage. We keep the
``ResponseComplete`` (or ``Panic``) event of ordinary requests and, for long-running ones
(watch, exec, attach, port-forward, proxy, log) that may never complete inside the range,
the ``ResponseStarted`` event, falling back to ``ResponseComplete``/``Panic`` when no
``ResponseStarted`` was logged. ``RequestReceived`` events are never counted. See
docs/features.md for every feature, its definition and why it matters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from detector.lake import Lake, Partition

#: Bump when a feature's definition changes: a model trained on other definitions is refused.
FEATURES_VERSION = 1

DEFAULT_WINDOW = timedelta(minutes=10)
KEYS = ("cluster", "principal", "window_start")

READ_VERBS = ("get", "list", "watch")
WRITE_VERBS = ("create", "update", "patch")
DELETE_VERBS = ("delete", "deletecollection")
MUTATING_VERBS = WRITE_VERBS + DELETE_VERBS
RBAC_RESOURCES = ("roles", "rolebindings", "clusterroles", "clusterrolebindings")
WEBHOOK_RESOURCES = ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
WORKLOAD_RESOURCES = (
    "pods",
    "deployments",
    "daemonsets",
    "statefulsets",
    "replicasets",
    "replicationcontrollers",
    "jobs",
    "cronjobs",
)
INTERACTIVE_SUBRESOURCES = ("exec", "attach", "portforward")
#: Requests that may log ``ResponseStarted`` and run past the end of a window or range.
LONG_RUNNING_SUBRESOURCES = (*INTERACTIVE_SUBRESOURCES, "proxy", "log")

# Pod-spec fields in a request body (JSON text; whitespace tolerant, key order free).
_PRIVILEGED = r'"privileged"\s*:\s*true'
_HOST_PATH = r'"hostPath"\s*:\s*\{'
_HOST_NETWORK = r'"hostNetwork"\s*:\s*true'
_HOST_PID = r'"hostPID"\s*:\s*true'

#: Event columns the features read (projection pushdown reads only these from Parquet).
INPUT_COLUMNS = (
    "cluster",
    "event_time",
    "audit_id",
    "stage",
    "verb",
    "principal",
    "principal_kind",
    "source_ip",
    "user_agent",
    "resource",
    "subresource",
    "namespace",
    "name",
    "api_group",
    "response_code",
    "decision",
    "request_object",
)

#: Distinct-value dimensions: (list column in window rows, novelty feature, distinct feature).
DIMENSIONS = (
    ("_source_ips", "new_source_ips", "distinct_source_ips"),
    ("_user_agents", "new_user_agents", "distinct_user_agents"),
    ("_namespaces", "new_namespaces", "distinct_namespaces"),
    ("_resources", "new_resources", "distinct_resources"),
    ("_verb_resources", "new_verb_resources", None),
)
LIST_COLUMNS = tuple(d[0] for d in DIMENSIONS)


@dataclass(frozen=True)
class Feature:
    """One model feature: its name, what a value means in a sentence, and its family."""

    name: str
    phrase: str  # "{v}" is the formatted value
    family: str
    integer: bool = True


def _f(name: str, phrase: str, family: str, *, integer: bool = True) -> Feature:
    return Feature(name, phrase, family, integer)


#: The feature catalogue, in model column order. docs/features.md documents each one.
CATALOGUE: tuple[Feature, ...] = (
    _f("requests", "made {v} requests", "volume"),
    _f("reads", "made {v} read requests (get/list/watch)", "volume"),
    _f("writes", "made {v} write requests (create/update/patch)", "volume"),
    _f("deletes", "made {v} delete requests", "volume"),
    _f("cluster_list_watch", "listed or watched across all namespaces {v} times", "volume"),
    _f("status_401", "got {v} 401 Unauthorized responses", "errors"),
    _f("status_403", "got {v} 403 Forbidden responses", "errors"),
    _f("status_404", "got {v} 404 Not Found responses", "errors"),
    _f("status_409", "got {v} 409 Conflict responses", "errors"),
    _f("status_429", "got {v} 429 Too Many Requests responses", "errors"),
    _f("status_5xx", "got {v} server errors (5xx)", "errors"),
    _f("denied", "was denied by authorization {v} times", "errors"),
    _f("error_ratio", "had {v} of its requests fail", "errors", integer=False),
    _f("distinct_namespaces", "touched {v} namespaces", "spread"),
    _f("distinct_resources", "touched {v} resource types", "spread"),
    _f("distinct_names", "touched {v} distinct object names", "spread"),
    _f("distinct_source_ips", "came from {v} source IPs", "spread"),
    _f("distinct_user_agents", "used {v} user agents", "spread"),
    _f("secret_reads", "read or listed secrets {v} times", "sensitive"),
    _f("secret_namespaces", "read or listed secrets in {v} namespaces", "sensitive"),
    _f("rbac_writes", "changed RBAC roles or bindings {v} times", "sensitive"),
    _f("exec_attach_portforward", "opened {v} exec/attach/port-forward sessions", "sensitive"),
    _f("token_requests", "requested {v} service-account tokens", "sensitive"),
    _f("webhook_writes", "changed admission webhook configurations {v} times", "sensitive"),
    _f("aws_auth_writes", "changed the aws-auth ConfigMap {v} times", "sensitive"),
    _f("event_deletes", "deleted Kubernetes events {v} times", "sensitive"),
    _f("privileged_workloads", "wrote {v} workloads with privileged containers", "sensitive"),
    _f("hostpath_workloads", "wrote {v} workloads mounting a host path", "sensitive"),
    _f("hostnetwork_workloads", "wrote {v} workloads on the host network", "sensitive"),
    _f("hostpid_workloads", "wrote {v} workloads sharing the host PID namespace", "sensitive"),
    _f("new_source_ips", "came from {v} source IPs never seen for this principal", "novelty"),
    _f("new_user_agents", "used {v} user agents never seen for this principal", "novelty"),
    _f("new_namespaces", "touched {v} namespaces never seen for this principal", "novelty"),
    _f("new_resources", "touched {v} resource types never seen for this principal", "novelty"),
    _f(
        "new_verb_resources",
        "made {v} kinds of request (verb and resource) never seen for this principal",
        "novelty",
    ),
    _f("first_seen_principal", "is a principal never seen before", "novelty"),
    _f(
        "hour_rarity",
        "was active at an hour of day it rarely is (rarity {v})",
        "novelty",
        integer=False,
    ),
    _f("requests_vs_usual", "made {v}x its usual number of requests", "relative", integer=False),
    _f("writes_vs_usual", "made {v}x its usual number of writes", "relative", integer=False),
    _f("secret_reads_vs_usual", "read secrets {v}x as often as usual", "relative", integer=False),
    _f(
        "errors_vs_usual", "had {v}x its usual number of failed requests", "relative", integer=False
    ),
)
FEATURES: tuple[str, ...] = tuple(f.name for f in CATALOGUE)
BY_NAME: dict[str, Feature] = {f.name: f for f in CATALOGUE}

#: Relative features: (feature, the per-window count it compares with the principal's median).
RELATIVE = (
    ("requests_vs_usual", "requests"),
    ("writes_vs_usual", "writes"),
    ("secret_reads_vs_usual", "secret_reads"),
    ("errors_vs_usual", "errors"),
)
_RELATIVE_BASES = tuple((base, feat) for feat, base in RELATIVE)

#: Counts produced by :func:`window_counts` (besides the distinct-value lists).
WINDOW_COUNTS = (
    "requests",
    "reads",
    "writes",
    "deletes",
    "cluster_list_watch",
    "status_401",
    "status_403",
    "status_404",
    "status_409",
    "status_429",
    "status_5xx",
    "errors",
    "denied",
    "distinct_names",
    "secret_reads",
    "secret_namespaces",
    "rbac_writes",
    "exec_attach_portforward",
    "token_requests",
    "webhook_writes",
    "aws_auth_writes",
    "event_deletes",
    "privileged_workloads",
    "hostpath_workloads",
    "hostnetwork_workloads",
    "hostpid_workloads",
)

#: Columns of a feature frame besides the features themselves.
ID_COLUMNS = ("cluster", "principal", "principal_kind", "window_start", "window_end")


# --------------------------------------------------------------------------- expressions
def verb_in(verbs: tuple[str, ...]) -> pl.Expr:
    """True where the request verb is one of ``verbs``.

    Examples
    --------
    >>> pl.DataFrame({"verb": ["get", "patch"]}).select(verb_in(READ_VERBS))["verb"].to_list()
    [True, False]
    """
    return pl.col("verb").is_in(verbs)


def is_long_running() -> pl.Expr:
    """Requests the API server may keep open (and log a ``ResponseStarted`` stage for)."""
    return (pl.col("verb") == "watch") | pl.col("subresource").is_in(LONG_RUNNING_SUBRESOURCES)


def is_secret_read() -> pl.Expr:
    return (pl.col("resource") == "secrets") & verb_in(READ_VERBS)


def is_workload_write() -> pl.Expr:
    return (
        pl.col("resource").is_in(WORKLOAD_RESOURCES)
        & pl.col("subresource").is_null()
        & verb_in(WRITE_VERBS)
    )


def body_matches(pattern: str) -> pl.Expr:
    """Workload writes whose request body matches ``pattern`` (false when no body was logged)."""
    return is_workload_write() & pl.col("request_object").str.contains(pattern).fill_null(False)


def count(expr: pl.Expr, name: str) -> pl.Expr:
    """Number of rows in the group where ``expr`` holds, as ``name``."""
    return expr.fill_null(False).sum().cast(pl.UInt32).alias(name)


def resource_path() -> pl.Expr:
    """``resource`` or ``resource/subresource`` (``pods/exec``); null for non-resource URLs."""
    return (
        pl.when(pl.col("subresource").is_not_null())
        .then(pl.concat_str([pl.col("resource"), pl.col("subresource")], separator="/"))
        .otherwise(pl.col("resource"))
    )


def distinct_values(expr: pl.Expr, name: str) -> pl.Expr:
    """The sorted distinct non-null values of ``expr`` in the group, as a list column."""
    return expr.drop_nulls().unique().sort().alias(name)


# --------------------------------------------------------------------------- step 1: events
def request_rows(
    events: pl.LazyFrame, *, columns: tuple[str, ...] | list[str] = INPUT_COLUMNS
) -> pl.LazyFrame:
    """One row per request: drop ``RequestReceived`` and the second stage of long-running ones.

    ``columns`` are the event columns kept (they must include the ones the filter reads).
    """
    lf = events.select(columns)
    stage = pl.col("stage")
    done = stage.is_in(["ResponseComplete", "Panic"])
    long_running = is_long_running()
    ordinary = lf.filter(done & ~long_running.fill_null(False))
    started = lf.filter(stage == "ResponseStarted")
    unstarted = lf.filter(done & long_running.fill_null(False)).join(
        started.select("audit_id"), on="audit_id", how="anti"
    )
    return pl.concat([ordinary, started, unstarted], how="vertical")


def window_counts(events: pl.LazyFrame, *, window: timedelta = DEFAULT_WINDOW) -> pl.LazyFrame:
    """Canonical events -> one row per (cluster, principal, window_start): counts and value lists.

    Parameters
    ----------
    events
        Canonical event rows (with ``cluster``), any stages.
    window
        Window length; windows are aligned on the Unix epoch (10m windows start at :00, :10...).
    """
    code = pl.col("response_code")
    verb = pl.col("verb")
    resource = pl.col("resource")
    subresource = pl.col("subresource")
    namespace = pl.col("namespace")
    mutating = verb_in(MUTATING_VERBS)
    secret_read = is_secret_read()
    aggs = [
        pl.col("principal_kind").drop_nulls().first().alias("principal_kind"),
        pl.len().cast(pl.UInt32).alias("requests"),
        count(verb_in(READ_VERBS), "reads"),
        count(verb_in(WRITE_VERBS), "writes"),
        count(verb_in(DELETE_VERBS), "deletes"),
        count(verb.is_in(["list", "watch"]) & namespace.is_null(), "cluster_list_watch"),
        count(code == 401, "status_401"),
        count(code == 403, "status_403"),
        count(code == 404, "status_404"),
        count(code == 409, "status_409"),
        count(code == 429, "status_429"),
        count(code >= 500, "status_5xx"),
        count(code >= 400, "errors"),
        count(pl.col("decision") == "forbid", "denied"),
        pl.col("name").drop_nulls().n_unique().cast(pl.UInt32).alias("distinct_names"),
        count(secret_read, "secret_reads"),
        namespace.filter(secret_read.fill_null(False))
        .drop_nulls()
        .n_unique()
        .cast(pl.UInt32)
        .alias("secret_namespaces"),
        count(
            resource.is_in(RBAC_RESOURCES)
            & (pl.col("api_group") == "rbac.authorization.k8s.io")
            & mutating,
            "rbac_writes",
        ),
        count(subresource.is_in(INTERACTIVE_SUBRESOURCES), "exec_attach_portforward"),
        count(
            (resource == "serviceaccounts") & (subresource == "token") & (verb == "create"),
            "token_requests",
        ),
        count(resource.is_in(WEBHOOK_RESOURCES) & mutating, "webhook_writes"),
        count(
            (resource == "configmaps")
            & (namespace == "kube-system")
            & (pl.col("name") == "aws-auth")
            & mutating,
            "aws_auth_writes",
        ),
        count((resource == "events") & verb_in(DELETE_VERBS), "event_deletes"),
        count(body_matches(_PRIVILEGED), "privileged_workloads"),
        count(body_matches(_HOST_PATH), "hostpath_workloads"),
        count(body_matches(_HOST_NETWORK), "hostnetwork_workloads"),
        count(body_matches(_HOST_PID), "hostpid_workloads"),
        distinct_values(pl.col("source_ip"), "_source_ips"),
        distinct_values(pl.col("user_agent"), "_user_agents"),
        distinct_values(namespace, "_namespaces"),
        distinct_values(resource, "_resources"),
        distinct_values(pl.concat_str([verb, resource_path()], separator=" "), "_verb_resources"),
    ]
    every = f"{int(window.total_seconds())}s"
    return (
        request_rows(events)
        .with_columns(
            pl.col("principal").fill_null("<unknown>"),
            pl.col("event_time").dt.truncate(every).alias("window_start"),
        )
        .group_by(list(KEYS))
        .agg(aggs)
        .with_columns((pl.col("window_start") + window).alias("window_end"))
    )


def window_schema() -> pl.Schema:
    """Schema of :func:`window_counts` output (for empty ranges)."""
    from detector.schema import events_polars_schema

    return window_counts(
        pl.LazyFrame(schema=events_polars_schema(with_cluster=True))
    ).collect_schema()


def empty_windows() -> pl.DataFrame:
    return pl.DataFrame(schema=window_schema())


# --------------------------------------------------------------------------- streaming the lake
def check_window(window: timedelta) -> timedelta:
    """Windows are whole seconds between 1 minute and 1 day; raises ``ValueError`` otherwise."""
    seconds = window.total_seconds()
    if seconds != int(seconds) or not 60 <= seconds <= 86_400:
        raise ValueError(f"window must be whole seconds between 1m and 1d, not {window}")
    return window


def align(start: datetime, end: datetime, window: timedelta) -> tuple[datetime, datetime]:
    """Widen ``[start, end)`` to whole windows (epoch-aligned), so no window is cut in two."""
    w = int(window.total_seconds())
    s = int(start.timestamp()) // w * w
    e = -(-math.ceil(end.timestamp()) // w) * w
    return datetime.fromtimestamp(s, UTC), datetime.fromtimestamp(e, UTC)


def chunk_partitions(
    parts: list[Partition], window: timedelta, *, min_hours: int = 6
) -> list[list[Partition]]:
    """Group hour partitions so no window straddles two groups.

    A group spans a multiple of lcm(window, 1h) (epoch-aligned like the windows), and at
    least ``min_hours`` when possible, so per-query overhead is amortised while memory stays
    bounded by one group of hours.
    """
    w = int(window.total_seconds())
    span = w * 3600 // math.gcd(w, 3600)
    span = span * max(1, -(-min_hours * 3600 // span))
    groups: dict[int, list[Partition]] = {}
    for part in parts:
        _, date, hour = part
        at = datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=UTC)
        groups.setdefault(int(at.timestamp()) // span, []).append(part)
    return [groups[k] for k in sorted(groups)]


def lake_windows(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pl.DataFrame:
    """Window rows for ``[start, end)`` of the lake, reading a few hours at a time.

    Memory grows with the number of windows (principals x windows), not with events.
    """
    frames = list(
        iter_lake_windows(lake, start, end, window=window, cluster=cluster, progress=progress)
    )
    if not frames:
        return empty_windows()
    return pl.concat(frames, how="vertical")


def iter_lake_windows(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[pl.DataFrame]:
    """Yield the window rows of each chunk of hours in ``[start, end)``."""
    chunks = chunk_partitions(lake.partitions(start, end, cluster=cluster), window)
    for i, parts in enumerate(chunks):
        lf = lake.scan_partitions(parts).filter(
            (pl.col("event_time") >= start) & (pl.col("event_time") < end)
        )
        yield window_counts(lf, window=window).collect()
        if progress:
            progress(i + 1, len(chunks))


# --------------------------------------------------------------------------- baseline
@dataclass
class Baseline:
    """What the model knows about each principal from its training range.

    Attributes
    ----------
    seen
        (cluster, principal, dimension, value): every source IP, user agent, namespace,
        resource and verb-resource pair each principal used.
    principals
        One row per (cluster, principal): windows active, first/last window, a 24-bin
        hour-of-day histogram of active windows, and the median and 99th percentile of every
        feature over the principal's windows.
    population
        Per feature: median and 99th percentile over all principals' windows.
    """

    seen: pl.DataFrame
    principals: pl.DataFrame
    population: pl.DataFrame  # columns: feature, median, p99

    def population_median(self, feature: str) -> float:
        row = self.population.filter(pl.col("feature") == feature)
        return float(row["median"][0]) if row.height else 0.0


def _seen_values(windows: pl.DataFrame) -> pl.DataFrame:
    frames = [
        windows.select("cluster", "principal", "window_start", pl.col(col).alias("value"))
        .explode("value")
        .drop_nulls("value")
        .with_columns(pl.lit(col.lstrip("_")).alias("dimension"))
        for col, _, _ in DIMENSIONS
    ]
    return pl.concat(frames, how="vertical").select(
        "cluster", "principal", "dimension", "value", "window_start"
    )


def _hour_histogram() -> pl.Expr:
    hours = pl.col("window_start").dt.hour().cast(pl.Int64)
    return pl.concat_list([(hours == h).sum().cast(pl.UInt32) for h in range(24)]).alias(
        "hour_counts"
    )


def fit_baseline(windows: pl.DataFrame) -> tuple[Baseline, pl.DataFrame]:
    """Learn a :class:`Baseline` from training window rows; also return their features.

    The features of the training rows use prequential novelty (see the module docstring).
    """
    values = _seen_values(windows)
    seen = (
        values.group_by("cluster", "principal", "dimension", "value")
        .agg(pl.col("window_start").min().alias("first_window"))
        .sort("cluster", "principal", "dimension", "value")
    )
    per_principal = windows.group_by("cluster", "principal").agg(
        pl.len().cast(pl.UInt32).alias("windows"),
        pl.col("window_start").min().alias("first_window"),
        pl.col("window_start").max().alias("last_window"),
        _hour_histogram(),
        *[pl.col(c).median().alias(f"median_{c}") for c, _ in _RELATIVE_BASES],
    )
    features = _finish(windows, per_principal, seen=seen, prequential=True)
    stats = features.group_by("cluster", "principal").agg(
        *[pl.col(f).median().alias(f"median_{f}") for f in FEATURES],
        *[pl.col(f).quantile(0.99, "nearest").alias(f"p99_{f}") for f in FEATURES],
    )
    principals = per_principal.join(stats, on=["cluster", "principal"], how="left").sort(
        "cluster", "principal"
    )
    population = pl.DataFrame(
        {
            "feature": list(FEATURES),
            "median": [float(features[f].median() or 0.0) for f in FEATURES],
            "p99": [float(features[f].quantile(0.99, "nearest") or 0.0) for f in FEATURES],
        }
    )
    baseline = Baseline(
        seen=seen.drop("first_window"), principals=principals, population=population
    )
    return baseline, features


# --------------------------------------------------------------------------- step 2: features
def finish_features(windows: pl.DataFrame, baseline: Baseline) -> pl.DataFrame:
    """Window rows -> feature rows, with novelty and relative volume against ``baseline``."""
    return _finish(
        windows,
        baseline.principals,
        seen=baseline.seen,
        prequential=False,
        population=baseline.population,
    )


def _finish(
    windows: pl.DataFrame,
    principals: pl.DataFrame,
    *,
    seen: pl.DataFrame,
    prequential: bool,
    population: pl.DataFrame | None = None,
) -> pl.DataFrame:
    keys = list(KEYS)
    pkeys = ["cluster", "principal"]
    out = windows.with_columns(
        (pl.col("errors").cast(pl.Float64) / pl.col("requests").cast(pl.Float64))
        .fill_nan(0.0)
        .alias("error_ratio"),
        *[
            pl.col(col).list.len().cast(pl.UInt32).alias(dist)
            for col, _, dist in DIMENSIONS
            if dist
        ],
    )
    # Novelty: distinct values of the window the principal had not used before.
    for col, new_name, _ in DIMENSIONS:
        dim = col.lstrip("_")
        vals = out.select(*keys, pl.col(col).alias("value")).explode("value").drop_nulls("value")
        known = seen.filter(pl.col("dimension") == dim)
        if prequential:
            # Known = first used in an earlier window of the training range.
            vals = vals.join(
                known.select(*pkeys, "value", "first_window"), on=[*pkeys, "value"], how="left"
            ).filter(pl.col("first_window") >= pl.col("window_start"))
        else:
            vals = vals.join(known.select(*pkeys, "value"), on=[*pkeys, "value"], how="anti")
        new = vals.group_by(keys).agg(pl.len().cast(pl.UInt32).alias(new_name))
        out = out.join(new, on=keys, how="left").with_columns(pl.col(new_name).fill_null(0))

    hist_cols = [
        "first_window",
        "windows",
        "hour_counts",
        *[f"median_{base}" for base, _ in _RELATIVE_BASES],
    ]
    out = out.join(principals.select(*pkeys, *hist_cols), on=pkeys, how="left")
    known_principal = pl.col("windows").is_not_null()
    if prequential:
        first_seen = pl.col("window_start") == pl.col("first_window")
    else:
        first_seen = ~known_principal
    hour_share = (
        pl.col("hour_counts")
        .list.get(pl.col("window_start").dt.hour().cast(pl.Int64))
        .cast(pl.Float64)
        * 24.0
        / pl.col("windows").cast(pl.Float64)
    )
    rarity = pl.when(known_principal).then((1.0 - hour_share).clip(0.0, 1.0)).otherwise(1.0)

    def usual(base: str) -> pl.Expr:
        fallback = 0.0
        if population is not None:
            row = population.filter(pl.col("feature") == base)
            if row.height:
                fallback = float(row["median"][0])
        return pl.col(f"median_{base}").fill_null(fallback)

    relative = [
        ((pl.col(base).cast(pl.Float64) + 1.0) / (usual(base) + 1.0)).alias(feat)
        for feat, base in RELATIVE
    ]
    out = out.with_columns(
        first_seen.cast(pl.UInt32).alias("first_seen_principal"),
        rarity.alias("hour_rarity"),
        *relative,
    )
    return out.select(*ID_COLUMNS, *[pl.col(f).cast(pl.Float64) for f in FEATURES]).sort(keys)
