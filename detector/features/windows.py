"""Per-principal window features: a lake time range -> one row per (cluster, principal, window).

One code path for training and scoring, in two steps:

1. :func:`window_counts` (polars lazy, streamed a few hours at a time by
   :func:`lake_windows`) reduces canonical events to per-window counts plus the distinct
   values each window touched (source IPs, user agents, namespaces, resources and
   *actions*). This is the only step whose cost grows with the number of events.
2. :func:`finish_features` turns window rows into the model's features: counts, ratios,
   novelty against the principal's own history, the rarity of its actions among principals
   of its kind, and volume relative to its typical window. The history is a
   :class:`Baseline`, learned at training time and saved with the model.

Training rows are *cross-fitted* (:func:`cross_fit_features`): the training range is cut
into folds (a UTC day for ranges of three days or more) and each fold is featurized against
a baseline of the other folds, through the same :func:`finish_features`, exactly as scoring
judges a new day against the days before. (Against the whole training range novelty would
be constant zero on the training rows, and a constant feature is invisible to an isolation
forest.) :func:`model_inputs` then turns features into what the forest sees: per family of
features, the largest *surprise* (``-log10`` of how rarely the principal, its IAM role and
everyone reached such a value), see docs/features.md.

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
    from detector.lake.events import Lake, Partition

#: Bump when a feature's definition changes: a model trained on other definitions is refused.
FEATURES_VERSION = 2

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
#: Namespaces whose objects are the cluster's own machinery: actions there are told apart.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

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
    "request_uri",
    "principal",
    "principal_kind",
    "iam_arn",
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
    ("_actions", "new_verb_resources", None),
)
LIST_COLUMNS = tuple(d[0] for d in DIMENSIONS)


@dataclass(frozen=True)
class Feature:
    """One model feature: its name, what a value means in a sentence, and its family."""

    name: str
    phrase: str  # "{v}": the value; "{s}": plural s; "{times}": "once" / "N times"
    family: str
    integer: bool = True


def _f(name: str, phrase: str, family: str, *, integer: bool = True) -> Feature:
    return Feature(name, phrase, family, integer)


#: The feature catalogue, in model column order. docs/features.md documents each one.
CATALOGUE: tuple[Feature, ...] = (
    _f("requests", "made {v} request{s}", "volume"),
    _f("reads", "made {v} read request{s} (get/list/watch)", "volume"),
    _f("writes", "made {v} write request{s} (create/update/patch)", "volume"),
    _f("deletes", "made {v} delete request{s}", "volume"),
    _f("cluster_list_watch", "listed or watched across all namespaces {times}", "volume"),
    _f("status_401", "got {v} 401 Unauthorized response{s}", "errors"),
    _f("status_403", "got {v} 403 Forbidden response{s}", "errors"),
    _f("status_404", "got {v} 404 Not Found response{s}", "errors"),
    _f("status_409", "got {v} 409 Conflict response{s}", "errors"),
    _f("status_429", "got {v} 429 Too Many Requests response{s}", "errors"),
    _f("status_5xx", "got {v} server error{s} (5xx)", "errors"),
    _f("denied", "was denied by authorization {times}", "errors"),
    _f("error_ratio", "had {v} of its requests fail", "errors", integer=False),
    _f("distinct_namespaces", "touched {v} namespace{s}", "spread"),
    _f("distinct_resources", "touched {v} resource type{s}", "spread"),
    _f("distinct_names", "touched {v} distinct object name{s}", "spread"),
    _f("distinct_source_ips", "came from {v} source IP{s}", "spread"),
    _f("distinct_user_agents", "used {v} user agent{s}", "spread"),
    _f("secret_reads", "read or listed secrets {times}", "sensitive"),
    _f("secret_namespaces", "read or listed secrets in {v} namespace{s}", "sensitive"),
    _f("rbac_writes", "changed RBAC roles or bindings {times}", "sensitive"),
    _f("exec_attach_portforward", "opened {v} exec/attach/port-forward session{s}", "sensitive"),
    _f("system_exec", "opened {v} exec/attach session{s} in system namespaces", "sensitive"),
    _f("token_requests", "requested {v} service-account token{s}", "sensitive"),
    _f("webhook_writes", "changed admission webhook configurations {times}", "sensitive"),
    _f("aws_auth_writes", "changed the aws-auth ConfigMap {times}", "sensitive"),
    _f("event_deletes", "deleted Kubernetes events {times}", "sensitive"),
    _f("privileged_workloads", "wrote {v} workload{s} with privileged containers", "sensitive"),
    _f("hostpath_workloads", "wrote {v} workload{s} mounting a host path", "sensitive"),
    _f("hostnetwork_workloads", "wrote {v} workload{s} on the host network", "sensitive"),
    _f("hostpid_workloads", "wrote {v} workload{s} sharing the host PID namespace", "sensitive"),
    _f("new_source_ips", "came from {v} source IP{s} never seen for this principal", "novelty"),
    _f("new_user_agents", "used {v} user agent{s} never seen for this principal", "novelty"),
    _f("new_namespaces", "touched {v} namespace{s} never seen for this principal", "novelty"),
    _f("new_resources", "touched {v} resource type{s} never seen for this principal", "novelty"),
    _f(
        "new_verb_resources",
        "made {v} kind{s} of request (verb and resource) never seen for this principal",
        "novelty",
    ),
    _f("first_seen_principal", "is a principal never seen before", "novelty"),
    _f(
        "hour_rarity",
        "was active at an hour of day it rarely is (rarity {v})",
        "novelty",
        integer=False,
    ),
    _f(
        "rare_action",
        "made a kind of request rare for principals of its kind (rarity {v})",
        "novelty",
        integer=False,
    ),
    _f("requests_vs_usual", "made {v}x its usual number of requests", "relative", integer=False),
    _f("writes_vs_usual", "made {v}x its usual number of writes", "relative", integer=False),
    _f("secret_reads_vs_usual", "read secrets {v}x as often as usual", "relative", integer=False),
    _f(
        "errors_vs_usual",
        "had {v}x its usual number of failed requests",
        "relative",
        integer=False,
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
RELATIVE_BASES = tuple(base for _, base in RELATIVE)

#: Columns of a feature frame besides the features: identity, the principal's parent in the
#: surprise hierarchy and the rarest action's name (for explanations).
ID_COLUMNS = ("cluster", "principal", "principal_kind", "window_start", "window_end")
#: ``parent``: the principal's IAM role (sessions of one role share it) or else its kind.
DETAIL_COLUMNS = ("parent", "rare_action_name")


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


def is_aws_auth() -> pl.Expr:
    """The EKS aws-auth ConfigMap (IAM -> Kubernetes identity mapping)."""
    return (
        (pl.col("resource") == "configmaps")
        & (pl.col("namespace") == "kube-system")
        & (pl.col("name") == "aws-auth")
    )


def body_matches(pattern: str) -> pl.Expr:
    """Workload writes whose request body matches ``pattern`` (false when no body was logged)."""
    return (is_workload_write() & pl.col("request_object").str.contains(pattern)).fill_null(False)


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


def action() -> pl.Expr:
    """What a request did, as a short string: verb, resource and what makes it sensitive.

    ``verb resource[/subresource]``, then `` in <ns>`` for system namespaces,
    `` aws-auth`` for that ConfigMap and `` privileged``/`` hostPath``/`` hostNetwork``/
    `` hostPID`` for risky workload specs; non-resource requests use the URL path.

    Examples
    --------
    >>> df = pl.DataFrame({"verb": ["create"], "resource": ["pods"], "subresource": ["exec"],
    ...     "namespace": ["kube-system"], "name": ["x"], "request_uri": ["/api/v1/..."],
    ...     "_privileged": [False], "_hostpath": [False], "_hostnetwork": [False],
    ...     "_hostpid": [False]})
    >>> df.select(action())["action"].to_list()
    ['create pods/exec in kube-system']
    """
    path = pl.col("request_uri").str.split_exact("?", 1).struct.field("field_0")
    tag = lambda flag, text: pl.when(pl.col(flag)).then(pl.lit(text))  # noqa: E731
    return pl.concat_str(
        [
            pl.col("verb").fill_null("-"),
            pl.lit(" "),
            pl.coalesce(resource_path(), path, pl.lit("?")),
            pl.when(pl.col("namespace").is_in(SYSTEM_NAMESPACES)).then(
                pl.lit(" in ") + pl.col("namespace")
            ),
            pl.when(is_aws_auth()).then(pl.lit(" aws-auth")),
            tag("_privileged", " privileged"),
            tag("_hostpath", " hostPath"),
            tag("_hostnetwork", " hostNetwork"),
            tag("_hostpid", " hostPID"),
        ],
        ignore_nulls=True,
    ).alias("action")


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
    stage = pl.col("stage")
    done = stage.is_in(["ResponseComplete", "Panic"])
    long_running = is_long_running().fill_null(False)
    started = stage == "ResponseStarted"
    was_started = pl.col("audit_id").is_in(pl.col("audit_id").filter(started).implode())
    return events.select(columns).filter(
        (done & ~long_running) | started | (done & long_running & ~was_started)
    )


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
    interactive = subresource.is_in(INTERACTIVE_SUBRESOURCES)
    aggs = [
        pl.col("principal_kind").drop_nulls().first().alias("principal_kind"),
        pl.coalesce(pl.col("iam_arn"), pl.col("principal_kind"))
        .drop_nulls()
        .first()
        .alias("parent"),
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
        count(interactive, "exec_attach_portforward"),
        count(
            subresource.is_in(["exec", "attach"]) & namespace.is_in(SYSTEM_NAMESPACES),
            "system_exec",
        ),
        count(
            (resource == "serviceaccounts") & (subresource == "token") & (verb == "create"),
            "token_requests",
        ),
        count(resource.is_in(WEBHOOK_RESOURCES) & mutating, "webhook_writes"),
        count(is_aws_auth() & mutating, "aws_auth_writes"),
        count((resource == "events") & verb_in(DELETE_VERBS), "event_deletes"),
        count(pl.col("_privileged"), "privileged_workloads"),
        count(pl.col("_hostpath"), "hostpath_workloads"),
        count(pl.col("_hostnetwork"), "hostnetwork_workloads"),
        count(pl.col("_hostpid"), "hostpid_workloads"),
        distinct_values(pl.col("source_ip"), "_source_ips"),
        distinct_values(pl.col("user_agent"), "_user_agents"),
        distinct_values(namespace, "_namespaces"),
        distinct_values(resource, "_resources"),
        distinct_values(pl.col("action"), "_actions"),
    ]
    every = f"{int(window.total_seconds())}s"
    return (
        request_rows(events)
        .with_columns(
            pl.col("principal").fill_null("<unknown>"),
            pl.col("event_time").dt.truncate(every).alias("window_start"),
            body_matches(_PRIVILEGED).alias("_privileged"),
            body_matches(_HOST_PATH).alias("_hostpath"),
            body_matches(_HOST_NETWORK).alias("_hostnetwork"),
            body_matches(_HOST_PID).alias("_hostpid"),
        )
        .with_columns(action())
        .group_by(list(KEYS))
        .agg(aggs)
        .with_columns((pl.col("window_start") + window).alias("window_end"))
    )


def window_schema() -> pl.Schema:
    """Schema of :func:`window_counts` output (for empty ranges)."""
    from detector.events.schema import events_polars_schema

    empty = pl.LazyFrame(schema=events_polars_schema(with_cluster=True))
    return window_counts(empty).collect_schema()


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
    """What the model knows from its training range (saved with it as Parquet).

    Attributes
    ----------
    seen
        (cluster, principal, dimension, value): every source IP, user agent, namespace,
        resource and action each principal used.
    principals
        One row per (cluster, principal): windows active, a 24-bin hour-of-day histogram of
        active windows, and the median and 99th percentile of every feature over the
        principal's windows.
    actions
        (principal_kind, action, windows): in how many windows principals of each kind made
        each kind of request; ``action = "*"`` holds the kind's total windows.
    population
        (feature, median, p99) over all principals' windows.
    tails
        (level, key, feature, bin, n_ge): in how many windows of each principal
        (``level="own"``), IAM role or principal kind (``"parent"``) and of everyone (``"pop"``)
        each feature reached each value bin or more; ``bin = -1`` rows hold window totals.
        See :func:`feature_surprises`.
    """

    seen: pl.DataFrame
    principals: pl.DataFrame
    actions: pl.DataFrame
    population: pl.DataFrame
    tails: pl.DataFrame | None = None

    def population_stat(self, feature: str, stat: str = "median") -> float:
        row = self.population.filter(pl.col("feature") == feature)
        return float(row[stat][0]) if row.height else 0.0


def fold_length(start: datetime, end: datetime) -> timedelta:
    """Fold of the cross-fitting of training rows: a day, or a third of ranges under 3 days."""
    span = end - start
    if span >= timedelta(days=3):
        return timedelta(days=1)
    return max(timedelta(hours=1), timedelta(hours=int(span.total_seconds() // 3 // 3600)))


def _with_fold(windows: pl.DataFrame, fold: timedelta) -> pl.DataFrame:
    every = f"{int(fold.total_seconds())}s"
    return windows.with_columns(pl.col("window_start").dt.truncate(every).alias("_fold"))


def _exploded(windows: pl.DataFrame, col: str, extra: tuple[str, ...] = ()) -> pl.DataFrame:
    return (
        windows.select(*KEYS, *extra, pl.col(col).alias("value"))
        .explode("value")
        .drop_nulls("value")
    )


def _hour_histogram(name: str = "hour_counts") -> pl.Expr:
    hours = pl.col("window_start").dt.hour().cast(pl.Int64)
    return pl.concat_list([(hours == h).sum().cast(pl.UInt32) for h in range(24)]).alias(name)


def _rarity(n: pl.Expr, total: pl.Expr) -> pl.Expr:
    """-log10 of the smoothed share of windows: 0 = every window, ~log10(total) = never."""
    return -(((n.cast(pl.Float64) + 1.0) / (total.cast(pl.Float64) + 1.0)).log10())


def seen_values(windows: pl.DataFrame) -> pl.DataFrame:
    """(cluster, principal, dimension, value) for every distinct value the windows used."""
    return pl.concat(
        [
            _exploded(windows, col)
            .select("cluster", "principal", pl.lit(col.lstrip("_")).alias("dimension"), "value")
            .unique()
            for col, _, _ in DIMENSIONS
        ]
    ).sort("cluster", "principal", "dimension", "value")


def recent_values(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    principals: list[str],
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
) -> pl.DataFrame:
    """Values ``principals`` used in ``[start, end)`` (just before a scored range).

    Scoring passes them to :func:`finish_features` so that a value first used an hour
    before the range (and after the baseline) is not new again in this range.
    """
    frames = []
    if end > start and principals:
        wanted = pl.Series(principals, dtype=pl.String).implode()
        for parts in chunk_partitions(lake.partitions(start, end, cluster=cluster), window):
            lf = lake.scan_partitions(parts).filter(
                (pl.col("event_time") >= start)
                & (pl.col("event_time") < end)
                & pl.col("principal").is_in(wanted)
            )
            frames.append(window_counts(lf, window=window).collect())
    if not frames:
        return seen_values(empty_windows())
    return seen_values(pl.concat(frames))


def unseen_principals(windows: pl.DataFrame, baseline: Baseline) -> list[str]:
    """Principals of ``windows`` that used some value their baseline does not hold."""
    fresh = seen_values(windows).join(
        baseline.seen, on=["cluster", "principal", "dimension", "value"], how="anti"
    )
    return sorted(fresh["principal"].unique().to_list())


def build_baseline(windows: pl.DataFrame) -> Baseline:
    """The history :func:`finish_features` compares windows with, from training window rows.

    Only what novelty, rarity and relative volume need; :func:`fit_baseline` adds the
    per-feature statistics used by explanations.
    """
    pkeys = ["cluster", "principal"]
    seen = seen_values(windows)
    principals = (
        windows.group_by(pkeys)
        .agg(
            pl.len().cast(pl.UInt32).alias("windows"),
            _hour_histogram(),
            *[pl.col(c).median().cast(pl.Float64).alias(f"median_{c}") for c in RELATIVE_BASES],
        )
        .sort(pkeys)
    )
    acts = _exploded(windows, "_actions", ("principal_kind",))
    actions = pl.concat(
        [
            acts.group_by("principal_kind", pl.col("value").alias("action")).agg(
                pl.len().cast(pl.UInt32).alias("windows")
            ),
            windows.group_by("principal_kind").agg(
                pl.lit("*").alias("action"), pl.len().cast(pl.UInt32).alias("windows")
            ),
        ]
    ).sort("principal_kind", "action")
    population = pl.DataFrame(
        {
            "feature": list(RELATIVE_BASES),
            "median": [float(windows[c].median() or 0.0) for c in RELATIVE_BASES],
            "p99": [float(windows[c].quantile(0.99, "nearest") or 0.0) for c in RELATIVE_BASES],
        }
    )
    return Baseline(seen=seen, principals=principals, actions=actions, population=population)


def cross_fit_features(windows: pl.DataFrame, *, fold: timedelta) -> pl.DataFrame:
    """Features of training rows, each fold scored against a baseline of the other folds.

    This is exactly what scoring does (a new day against the days before), through the same
    :func:`finish_features`, so the forest learns the distribution it will score. With a
    single fold the rows are featurized against their own range.
    """
    w = _with_fold(windows, fold)
    folds = w["_fold"].unique().sort().to_list()
    if len(folds) < 2:
        return finish_features(windows, build_baseline(windows))
    parts = []
    for k in folds:
        inside = w.filter(pl.col("_fold") == k).drop("_fold")
        outside = w.filter(pl.col("_fold") != k).drop("_fold")
        parts.append(finish_features(inside, build_baseline(outside)))
    return pl.concat(parts).sort(KEYS)


def fit_baseline(
    windows: pl.DataFrame, *, fold: timedelta = timedelta(days=1)
) -> tuple[Baseline, pl.DataFrame]:
    """Learn the :class:`Baseline` from training window rows; also return their features.

    The features are cross-fitted (:func:`cross_fit_features`); the baseline saved for
    scoring is built from all rows and carries each principal's median and 99th percentile
    of every feature (what explanations call "usual") and the population's.
    """
    pkeys = ["cluster", "principal"]
    features = cross_fit_features(windows, fold=fold)
    baseline = build_baseline(windows)
    stats = features.group_by(pkeys).agg(
        *[pl.col(f).median().alias(f"median_{f}") for f in FEATURES],
        *[pl.col(f).quantile(0.99, "nearest").alias(f"p99_{f}") for f in FEATURES],
    )
    own = [f"median_{c}" for c in RELATIVE_BASES if c not in FEATURES]
    baseline.principals = (
        baseline.principals.select(*pkeys, "windows", "hour_counts", *own)
        .join(stats, on=pkeys, how="left")
        .sort(pkeys)
    )
    extra = baseline.population.filter(~pl.col("feature").is_in(FEATURES))
    baseline.population = pl.concat(
        [
            pl.DataFrame(
                {
                    "feature": list(FEATURES),
                    "median": [float(features[f].median() or 0.0) for f in FEATURES],
                    "p99": [float(features[f].quantile(0.99, "nearest") or 0.0) for f in FEATURES],
                }
            ),
            extra,
        ]
    )
    baseline.tails = tail_counts(features)
    return baseline, features


def _rarest(rare: pl.DataFrame) -> pl.DataFrame:
    """Per window: the rarity of its rarest action, and that action."""
    return (
        rare.sort([*KEYS, "_r", "value"], descending=[False, False, False, True, False])
        .group_by(KEYS, maintain_order=True)
        .agg(
            pl.col("_r").first().alias("rare_action"),
            pl.col("value").first().alias("rare_action_name"),
        )
    )


# --------------------------------------------------------------------------- step 2: features
def finish_features(
    windows: pl.DataFrame, baseline: Baseline, *, recent: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Window rows -> feature rows, with novelty, rarity and relative volume vs ``baseline``.

    ``recent`` holds values seen shortly before the windows (same columns as
    ``baseline.seen``; see :func:`recent_values`): they are not new either.
    """
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
    # Novelty: values the principal used in neither the baseline nor recently, counted in
    # the first window that uses them (a new address used all day is one new address).
    seen = baseline.seen if recent is None else pl.concat([baseline.seen, recent])
    for col, new_name, _ in DIMENSIONS:
        known = seen.filter(pl.col("dimension") == col.lstrip("_")).select(*pkeys, "value")
        new = (
            _exploded(windows, col)
            .join(known, on=[*pkeys, "value"], how="anti")
            .filter(pl.col("window_start") == pl.col("window_start").min().over(*pkeys, "value"))
            .group_by(keys)
            .agg(pl.len().cast(pl.UInt32).alias(new_name))
        )
        out = out.join(new, on=keys, how="left").with_columns(pl.col(new_name).fill_null(0))
    # Rarity of the window's rarest action among baseline windows of the same principal kind.
    totals = baseline.actions.filter(pl.col("action") == "*").select(
        "principal_kind", pl.col("windows").alias("_kt")
    )
    counts = baseline.actions.filter(pl.col("action") != "*").select(
        "principal_kind", pl.col("action").alias("value"), pl.col("windows").alias("_at")
    )
    rare = _rarest(
        _exploded(windows, "_actions", ("principal_kind",))
        .join(counts, on=["principal_kind", "value"], how="left")
        .join(totals, on="principal_kind", how="left")
        .with_columns(_rarity(pl.col("_at").fill_null(0), pl.col("_kt").fill_null(0)).alias("_r"))
    )
    medians = [f"median_{c}" for c in RELATIVE_BASES]
    out = out.join(rare, on=keys, how="left").join(
        baseline.principals.select(*pkeys, "windows", "hour_counts", *medians),
        on=pkeys,
        how="left",
    )
    # Share of the principal's baseline windows at this hour of day, against an even spread.
    hour = pl.col("window_start").dt.hour().cast(pl.Int64)
    share = (
        pl.col("hour_counts").list.get(hour).cast(pl.Float64)
        * 24.0
        / pl.col("windows").cast(pl.Float64)
    )
    known = pl.col("windows").is_not_null()
    if recent is not None:
        known = known | pl.struct(pkeys).is_in(
            recent.select(pl.struct(pkeys)).to_series().implode()
        )
    first = (~known) & (pl.col("window_start") == pl.col("window_start").min().over(pkeys))
    relative = [
        (
            (pl.col(base).cast(pl.Float64) + 1.0)
            / (pl.col(f"median_{base}").fill_null(baseline.population_stat(base)) + 1.0)
        ).alias(feat)
        for feat, base in RELATIVE
    ]
    out = out.with_columns(
        first.cast(pl.UInt32).alias("first_seen_principal"),
        pl.when(known).then((1.0 - share).clip(0.0, 1.0)).otherwise(1.0).alias("hour_rarity"),
        pl.col("rare_action").fill_null(0.0),
        *relative,
    )
    return out.select(
        *ID_COLUMNS, *[pl.col(f).cast(pl.Float64) for f in FEATURES], *DETAIL_COLUMNS
    ).sort(keys)


# --------------------------------------------------------------------------- model inputs
#: The forest sees one input per family: the surprise of the family's most surprising feature.
FAMILIES: dict[str, tuple[str, ...]] = {
    "surprise_volume": (
        "requests",
        "reads",
        "writes",
        "deletes",
        "cluster_list_watch",
        "requests_vs_usual",
        "writes_vs_usual",
    ),
    "surprise_errors": (
        "status_401",
        "status_403",
        "status_404",
        "status_409",
        "status_429",
        "status_5xx",
        "denied",
        "error_ratio",
        "errors_vs_usual",
    ),
    "surprise_spread": (
        "distinct_namespaces",
        "distinct_resources",
        "distinct_names",
        "distinct_source_ips",
        "distinct_user_agents",
    ),
    "surprise_sensitive": (
        "secret_reads",
        "secret_namespaces",
        "rbac_writes",
        "exec_attach_portforward",
        "system_exec",
        "token_requests",
        "webhook_writes",
        "aws_auth_writes",
        "event_deletes",
        "privileged_workloads",
        "hostpath_workloads",
        "hostnetwork_workloads",
        "hostpid_workloads",
        "secret_reads_vs_usual",
    ),
    "surprise_novelty": (
        "new_source_ips",
        "new_user_agents",
        "new_namespaces",
        "new_resources",
        "new_verb_resources",
        "first_seen_principal",
    ),
    "surprise_hour": ("hour_rarity",),
    "surprise_rare_action": ("rare_action",),
}
MODEL_INPUTS: tuple[str, ...] = tuple(FAMILIES)
FAMILY_OF: dict[str, str] = {f: fam for fam, fs in FAMILIES.items() for f in fs}
#: Weight (in windows) of the parent's and the population's distribution in a principal's.
PRIOR_WEIGHT = 5.0
_LEVELS = ("own", "parent", "pop")


def value_bin(x: pl.Expr) -> pl.Expr:
    """Eighth-of-an-octave bins of a non-negative value: 0 only for 0, then 1, 2, ..."""
    return (
        pl.when(x > 0)
        .then(pl.max_horizontal(pl.lit(1), (8.0 * (x.clip(0.0) + 1.0).log(2)).floor()))
        .otherwise(0)
        .cast(pl.Int32)
    )


def _level_keys() -> dict[str, pl.Expr]:
    return {
        "own": pl.concat_str([pl.col("cluster"), pl.col("principal")], separator="\x1f"),
        "parent": pl.col("parent").fill_null("-"),
        "pop": pl.lit("*"),
    }


def _long(features: pl.DataFrame, fold: timedelta | None = None) -> pl.DataFrame:
    """One row per (window row, feature) with a non-zero value, keyed for every level."""
    keys = _level_keys()
    extra = []
    if fold is not None:
        every = f"{int(fold.total_seconds())}s"
        extra = [pl.col("window_start").dt.truncate(every).alias("_fold")]
    base = features.with_row_index("row").select(
        "row", *[e.alias(f"key_{lvl}") for lvl, e in keys.items()], *extra, *FEATURES
    )
    return (
        base.unpivot(
            index=["row", *[f"key_{lvl}" for lvl in _LEVELS], *(["_fold"] if extra else [])],
            on=list(FEATURES),
            variable_name="feature",
            value_name="x",
        )
        .filter(pl.col("x") > 0)
        .with_columns(value_bin(pl.col("x")).alias("bin"))
    )


def tail_counts(features: pl.DataFrame, *, fold: timedelta | None = None) -> pl.DataFrame:
    """The ``tails`` table of :class:`Baseline` (per ``_fold`` too when ``fold`` is given)."""
    long = _long(features, fold)
    keys = _level_keys()
    by_fold = ["_fold"] if fold is not None else []
    rows = features.select(
        *[e.alias(f"key_{lvl}") for lvl, e in keys.items()],
        *(
            [pl.col("window_start").dt.truncate(f"{int(fold.total_seconds())}s").alias("_fold")]
            if fold is not None
            else []
        ),
    )
    parts = []
    for lvl in _LEVELS:
        k = f"key_{lvl}"
        hist = (
            long.group_by(k, *by_fold, "feature", "bin")
            .agg(pl.len().alias("n"))
            .sort(k, *by_fold, "feature", "bin", descending=[False] * (2 + len(by_fold)) + [True])
            .with_columns(pl.col("n").cum_sum().over(k, *by_fold, "feature").alias("n_ge"))
            .drop("n")
        )
        totals = rows.group_by(k, *by_fold).agg(
            pl.lit("*").alias("feature"), pl.lit(-1, pl.Int32).alias("bin"), pl.len().alias("n_ge")
        )
        parts.append(
            pl.concat([hist, totals.select(hist.columns)]).select(
                pl.lit(lvl).alias("level"),
                pl.col(k).alias("key"),
                *by_fold,
                "feature",
                "bin",
                pl.col("n_ge").cast(pl.UInt32),
            )
        )
    return pl.concat(parts).sort("level", "key", *by_fold, "feature", "bin")


def _lookup(query: pl.DataFrame, tails: pl.DataFrame, lvl: str, name: str, by_fold: list[str]):
    """Attach ``n_ge`` (windows with a value in the query's bin or above) and the total."""
    k = f"key_{lvl}"
    table = tails.filter(pl.col("level") == lvl).rename({"key": k})
    counts = (
        table.filter(pl.col("bin") >= 0)
        .select(k, *by_fold, "feature", "bin", pl.col("n_ge").alias(name))
        .sort("bin")
    )
    totals = table.filter(pl.col("bin") < 0).select(k, *by_fold, pl.col("n_ge").alias(f"{name}_n"))
    return (
        query.sort("bin")
        .join_asof(
            counts,
            on="bin",
            by=[k, *by_fold, "feature"],
            strategy="forward",
            check_sortedness=False,
        )
        .join(totals, on=[k, *by_fold], how="left")
        .with_columns(pl.col(name).fill_null(0), pl.col(f"{name}_n").fill_null(0))
    )


def feature_surprises(
    features: pl.DataFrame,
    baseline: Baseline,
    *,
    loo_fold: timedelta | None = None,
    fold_tails: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per (row, feature) with a non-zero value: how surprising the value is for the principal.

    ``surprise = -log10 P(X >= x)``, where P is the principal's own share of baseline windows
    at that value or above, smoothed towards its parent's (IAM role, else principal kind), itself
    smoothed towards the population's, each prior weighing :data:`PRIOR_WEIGHT` windows::

        p_pop = (n_pop + 1) / (N_pop + 1)
        p_parent = (n_parent + w * p_pop) / (N_parent + w)
        p_own = (n_own + w * p_parent) / (N_own + w)

    A principal never seen falls back on its role and then everyone; a value nobody reached
    scores about log10 of the number of baseline windows. With ``loo_fold`` (training), each
    row's own fold is left out of the counts, as :func:`cross_fit_features` does for novelty;
    ``fold_tails`` (``tail_counts(all_training_rows, fold=loo_fold)``) must then be given when
    ``features`` are only some of the training rows.
    """
    if baseline.tails is None:
        raise ValueError("baseline has no tail counts (fit it with fit_baseline)")
    query = _long(features, loo_fold)
    w = PRIOR_WEIGHT
    by_fold = ["_fold"] if loo_fold is not None else []
    if loo_fold is not None and fold_tails is None:
        fold_tails = tail_counts(features, fold=loo_fold)
    for lvl in _LEVELS:
        query = _lookup(query, baseline.tails, lvl, f"n_{lvl}", [])
        if fold_tails is not None:
            query = _lookup(query, fold_tails, lvl, f"f_{lvl}", by_fold).with_columns(
                (pl.col(f"n_{lvl}") - pl.col(f"f_{lvl}")).alias(f"n_{lvl}"),
                (pl.col(f"n_{lvl}_n") - pl.col(f"f_{lvl}_n")).alias(f"n_{lvl}_n"),
            )
    n = lambda c: pl.col(c).cast(pl.Float64)  # noqa: E731
    p_pop = (n("n_pop") + 1.0) / (n("n_pop_n") + 1.0)
    p_parent = (n("n_parent") + w * p_pop) / (n("n_parent_n") + w)
    p_own = (n("n_own") + w * p_parent) / (n("n_own_n") + w)
    return query.select("row", "feature", "x", (-p_own.log10()).clip(0.0).alias("surprise")).sort(
        "row", "feature"
    )


def model_inputs(
    features: pl.DataFrame, baseline: Baseline, *, loo_fold: timedelta | None = None
) -> pl.DataFrame:
    """The forest's input: per row, the largest feature surprise of each family."""
    surprises = feature_surprises(features, baseline, loo_fold=loo_fold).with_columns(
        pl.col("feature").replace_strict(FAMILY_OF, default=None).alias("family")
    )
    per_row = surprises.group_by("row").agg(
        pl.col("surprise").filter(pl.col("family") == fam).max().alias(fam) for fam in MODEL_INPUTS
    )
    rows = pl.DataFrame({"row": pl.arange(0, features.height, eager=True, dtype=pl.UInt32)})
    return (
        rows.join(per_row, on="row", how="left")
        .sort("row")
        .select(pl.col(fam).fill_null(0.0).cast(pl.Float64) for fam in MODEL_INPUTS)
    )
