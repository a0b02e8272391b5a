"""Events -> window rows: one row per (cluster, principal, window) with counts and values.

The only step whose cost grows with the number of events. :func:`window_counts` is a lazy
polars query over canonical events (from a lake scan or a frame already in memory); it
reduces them to per-window counts plus the distinct values each window touched (source
IPs, user agents, namespaces, resources and *actions*). Reading the lake is not done here:
``detect`` reads a range once (:mod:`detector.detect.scan`) and hands the frame over.

Each request is counted once: the API server logs an event per stage. We keep the
``ResponseComplete`` (or ``Panic``) event of ordinary requests and, for long-running ones
(watch, exec, attach, port-forward, proxy, log) that may never complete inside the range,
the ``ResponseStarted`` event, falling back to ``ResponseComplete``/``Panic`` when no
``ResponseStarted`` was logged (and not for a request received before the range, whose
start was counted there: :func:`request_rows`). ``RequestReceived`` events are never
counted. See docs/features.md for every feature, its definition and why it matters.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import polars as pl

from detector.events.addresses import connection_address
from detector.features.catalogue import (
    DEFAULT_WINDOW,
    DELETE_VERBS,
    INPUT_COLUMNS,
    INTERACTIVE_SUBRESOURCES,
    KEYS,
    LONG_RUNNING_SUBRESOURCES,
    MUTATING_VERBS,
    RBAC_RESOURCES,
    READ_VERBS,
    SYSTEM_NAMESPACES,
    WEBHOOK_RESOURCES,
    WORKLOAD_RESOURCES,
    WRITE_VERBS,
)

# Pod-spec fields in a request body (JSON text; whitespace tolerant, key order free).
_PRIVILEGED = r'"privileged"\s*:\s*true'
_HOST_PATH = r'"hostPath"\s*:\s*\{'
_HOST_NETWORK = r'"hostNetwork"\s*:\s*true'
_HOST_PID = r'"hostPID"\s*:\s*true'


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
    # The URL path only where there is no resource (the one place it is used), and the
    # namespace only where it is a system one: string work on a few rows, not every event.
    uri = pl.when(pl.col("resource").is_null()).then(pl.col("request_uri"))
    path = uri.str.split_exact("?", 1).struct.field("field_0")
    namespace = pl.col("namespace")
    tag = lambda flag, text: pl.when(pl.col(flag)).then(pl.lit(text))  # noqa: E731
    return pl.concat_str(
        [
            pl.col("verb").fill_null("-"),
            pl.lit(" "),
            pl.coalesce(resource_path(), path, pl.lit("?")),
            pl.lit(" in ") + pl.when(namespace.is_in(SYSTEM_NAMESPACES)).then(namespace),
            pl.when(is_aws_auth()).then(pl.lit(" aws-auth")),
            tag("_privileged", " privileged"),
            tag("_hostpath", " hostPath"),
            tag("_hostnetwork", " hostNetwork"),
            tag("_hostpid", " hostPID"),
        ],
        ignore_nulls=True,
    ).alias("action")


def distinct_values(expr: pl.Expr, name: str) -> pl.Expr:
    """The distinct non-null values of ``expr`` in the group, as a list column.

    In no particular order (sorting every window's lists cost a fifth of the aggregation);
    everything downstream treats them as sets.
    """
    return expr.drop_nulls().unique().alias(name)


# --------------------------------------------------------------------------- step 1: events
def request_rows(
    events: pl.LazyFrame,
    *,
    columns: tuple[str, ...] | list[str] = INPUT_COLUMNS,
    frame: pl.LazyFrame | pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """One row per request: drop ``RequestReceived`` and the second stage of long-running ones.

    A long-running request is counted where it opened, as the rules count it: its close
    is left out when its start is in the frame, and also when it was received before the
    frame began and the frame holds starts of its cluster (that log records them: the
    start was counted by the range or chunk before; another cluster's audit policy may
    omit them). So a range cut anywhere, by the hour or into a long read's chunks, counts
    it once. ``columns`` are the event columns kept (they must include the ones the filter
    reads); ``frame``: the frame ``events`` were cut from, when they are a part of it
    (where it begins and which clusters it holds starts of are its).
    """
    stage = pl.col("stage")
    done = stage.is_in(["ResponseComplete", "Panic"])
    long_running = is_long_running().fill_null(False)
    started = stage == "ResponseStarted"
    # Only completed long-running requests ask whether a start was logged: the others'
    # ids are nulled first, so the membership test hashes a few ids instead of every one.
    asks = pl.when(done & long_running).then(pl.col("audit_id"))
    was_started = asks.is_in(pl.col("audit_id").filter(started).implode()).fill_null(False)
    cluster = pl.col("cluster").fill_null("")
    begins, recording = pl.col("event_time").min(), cluster.filter(started).unique().implode()
    if frame is not None:
        facts = frame.lazy().select(begins.alias("begins"), recording.alias("clusters")).collect()
        clusters = pl.Series(facts["clusters"][0], dtype=pl.String)
        begins, recording = pl.lit(facts["begins"][0]), clusters.implode()
    # The same trick: only closes received before the frame ask about their cluster.
    asks_cluster = pl.when(done & long_running & (pl.col("received_time") < begins)).then(cluster)
    earlier = asks_cluster.is_in(recording).fill_null(False)
    return events.select(columns).filter(
        (done & ~long_running) | started | (done & long_running & ~was_started & ~earlier)
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
        # The connection's address, not the first of sourceIPs: a stolen token used from a
        # new address behind `X-Forwarded-For: <its owner's usual address>` showed no new
        # address to the model (found by review).
        distinct_values(connection_address(), "_source_ips"),
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


# --------------------------------------------------------------------------- ranges
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
