"""Sentences for rule findings: who did what, in the terms of the activity.

Evaluation (engine.py) decides which requests a rule counts; this module only turns the
matched rows into what an analyst reads: one line per distinct action ("eng-admin (session alice)
patched ConfigMap kube-system/aws-auth; ..."), the rule's ``output`` detail with the
evidence filled in, and the threshold sentence for counting rules. Kept apart so wording
can change without touching evaluation, and so it runs only on the rows of fired findings.
"""

from __future__ import annotations

import functools
import re
from datetime import timedelta

import polars as pl

from detector.events.identity import UNVERIFIED
from detector.rules.condition import DERIVED_FIELDS, resolve_field
from detector.rules.loader import Rule
from detector.timeparse import humanize

#: Resources that live outside namespaces: a list of them is not "in all namespaces".
CLUSTER_SCOPED = [
    "nodes",
    "namespaces",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "customresourcedefinitions",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "certificatesigningrequests",
    "storageclasses",
    "priorityclasses",
    "ingressclasses",
    "runtimeclasses",
    "apiservices",
    "csinodes",
    "csidrivers",
    "volumeattachments",
    "tokenreviews",
    "subjectaccessreviews",
    "selfsubjectaccessreviews",
    "selfsubjectrulesreviews",
]

#: Group keys of a finding (engine.py groups by the same).
KEYS = ["cluster", "_key", "window_start"]

#: At most this many distinct "what happened" sentences per finding; the rest are counted.
MAX_REASONS = 5

_PAST = {
    "create": "created",
    "update": "updated",
    "patch": "patched",
    "delete": "deleted",
    "deletecollection": "deleted all",
    "get": "read",
    "list": "listed",
    "watch": "watched",
    "proxy": "proxied to",
}

_KINDS = {
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "services": "Service",
    "serviceaccounts": "ServiceAccount",
    "namespaces": "Namespace",
    "nodes": "Node",
    "deployments": "Deployment",
    "daemonsets": "DaemonSet",
    "statefulsets": "StatefulSet",
    "replicasets": "ReplicaSet",
    "jobs": "Job",
    "cronjobs": "CronJob",
    "roles": "Role",
    "rolebindings": "RoleBinding",
    "clusterroles": "ClusterRole",
    "clusterrolebindings": "ClusterRoleBinding",
    "validatingwebhookconfigurations": "ValidatingWebhookConfiguration",
    "mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
    "events": "Event",
    "persistentvolumes": "PersistentVolume",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "customresourcedefinitions": "CustomResourceDefinition",
}


def who() -> pl.Expr:
    """``role (session NAME)`` for IAM role sessions (``eng-admin (session alice)``, as every
    table shows them; reasons said ``alice@eng-admin``), else the username.

    EKS may map a role to a username of its own (``eng-admin``) or to the session ARN
    itself; either way analysts know people by session name and role, taken from the IAM
    identity EKS logs in ``user.extra``. A username that only looks like a session ARN is
    named as its principal (``unverified:arn:...``), not as the session it claims to be.
    """
    session, user, principal = pl.col("iam_session_name"), pl.col("user_name"), pl.col("principal")
    role = pl.col("iam_arn").str.extract(r":role/(?:.*/)?([^/]+)$", 1)
    claimed = pl.when(principal.str.starts_with(UNVERIFIED)).then(principal)
    return (
        pl.when(session.is_not_null() & role.is_not_null())
        .then(pl.concat_str([role, pl.lit(" (session "), session, pl.lit(")")]))
        .when(session.is_not_null() & user.is_not_null())
        .then(pl.concat_str([user, pl.lit(" (session "), session, pl.lit(")")]))
        .otherwise(pl.coalesce(claimed, user, principal, pl.lit("system:anonymous")))
    )


def _action() -> pl.Expr:
    """What one event did, as words: "patched ConfigMap kube-system/aws-auth"."""
    verb, res, sub = pl.col("verb"), pl.col("resource"), pl.col("subresource")
    ns, code = pl.col("namespace"), pl.col("response_code")
    name = DERIVED_FIELDS["object_name"].build()
    has_ns = ns.is_not_null() & (ns != "")
    failed = code.fill_null(0) >= 400
    past = (
        pl.when(failed)
        .then(pl.concat_str([pl.lit("tried to "), verb.fill_null("request")]))
        .otherwise(verb.replace_strict(_PAST, default=verb, return_dtype=pl.String))
        .fill_null("requested")
    )
    kind = res.replace_strict(_KINDS, default=res, return_dtype=pl.String)
    obj = (
        pl.when(res == "namespaces")
        .then(name)
        .when(name.is_not_null() & has_ns)
        .then(pl.concat_str([ns, pl.lit("/"), name]))
        .otherwise(name)
    )
    scope = pl.when(has_ns & (res != "namespaces")).then(
        pl.concat_str([pl.lit(" in namespace "), ns])
    )
    pod_verbs = {
        "exec": "opened an exec session in pod ",
        "attach": "attached to pod ",
        "portforward": "port-forwarded to pod ",
        "ephemeralcontainers": "added an ephemeral container to pod ",
    }
    action = pl.when(res.is_null()).then(
        pl.concat_str([past, pl.lit(" "), DERIVED_FIELDS["request_path"].build().fill_null("?")])
    )
    for subresource, words in pod_verbs.items():
        action = action.when((res == "pods") & (sub == subresource)).then(
            pl.concat_str(
                [
                    pl.when(failed).then(pl.concat_str([past, pl.lit(": ")])).otherwise(pl.lit("")),
                    pl.lit(words),
                    obj.fill_null("?"),
                ]
            )
        )
    action = (
        action.when((res == "serviceaccounts") & (sub == "token"))
        .then(
            pl.concat_str(
                [
                    pl.when(failed).then(pl.lit("tried to request")).otherwise(pl.lit("requested")),
                    pl.lit(" a token for service account "),
                    obj.fill_null("?"),
                ]
            )
        )
        .when(name.is_null())
        .then(
            pl.concat_str(
                [
                    past,
                    pl.lit(" "),
                    res,
                    # "in all namespaces" only where namespaces exist
                    scope.fill_null(
                        pl.when(res.is_in(CLUSTER_SCOPED))
                        .then(pl.lit(""))
                        .otherwise(pl.lit(" in all namespaces"))
                    ),
                ]
            )
        )
        .when(sub.is_not_null() & (sub != ""))
        .then(
            pl.concat_str(
                [past, pl.lit(" "), kind, pl.lit(" "), obj, pl.lit(" ("), sub, pl.lit(")")]
            )
        )
        .otherwise(pl.concat_str([past, pl.lit(" "), kind, pl.lit(" "), obj]))
    )
    outcome = (
        pl.when(code.is_in([401, 403]))
        .then(pl.concat_str([pl.lit(" (denied, HTTP "), code.cast(pl.String), pl.lit(")")]))
        .when(failed)
        .then(pl.concat_str([pl.lit(" (failed, HTTP "), code.cast(pl.String), pl.lit(")")]))
        .otherwise(pl.lit(""))
    )
    return pl.concat_str([action.fill_null("made a request"), outcome])


def _sentence() -> pl.Expr:
    """Who did what to what: "eng-admin (session alice) patched ConfigMap kube-system/aws-auth".

    A request sent as another identity (``kubectl --as``) says so, "eng-admin (session alice) as
    bob read Secret prod/db": the rights it used were bob's, the person was alice.
    """
    impersonated = pl.col("impersonated_user")
    as_whom = pl.when(impersonated.is_not_null()).then(pl.lit(" as ") + impersonated)
    return pl.concat_str([who(), as_whom, pl.lit(" "), _action()], ignore_nulls=True)


def _render(template: str) -> pl.Expr:
    """A rule's ``output`` template with ``{field}`` values filled in; null if all empty."""
    pieces: list[pl.Expr] = []
    present: list[pl.Expr] = []
    pos = 0
    for m in re.finditer(r"\{([^{}]+)\}", template):
        if m.start() > pos:
            pieces.append(pl.lit(template[pos : m.start()]))
        resolved = resolve_field(m.group(1).strip())
        value = (
            resolved.expr.list.drop_nulls().list.unique(maintain_order=True).list.join(", ")
            if resolved.kind == "list"
            else resolved.expr.cast(pl.String)
        )
        value = pl.when(value != "").then(value)
        present.append(value.is_not_null())
        # An empty list is a fact ("host paths none"); a missing scalar is unknown.
        pieces.append(value.fill_null("none" if resolved.kind == "list" else "?"))
        pos = m.end()
    if pos < len(template):
        pieces.append(pl.lit(template[pos:]))
    text = pl.concat_str(pieces)
    return pl.when(pl.any_horizontal(present)).then(text) if present else text


@functools.cache
def _base_columns() -> frozenset[str]:
    return frozenset(_sentence().meta.root_names())


def line_columns(rule: Rule) -> set[str]:
    """The columns :func:`line` reads for ``rule`` (without building the whole sentence).

    The who-did-what part is the same for every rule: its columns are found once.
    """
    cols = set(_base_columns())
    if rule.output:
        cols.update(_render(rule.output).meta.root_names())
    return cols


def line(rule: Rule) -> pl.Expr:
    """One sentence per event: who did what, plus the rule's own detail."""
    base = _sentence()
    if rule.output:
        detail = _render(rule.output)
        return (
            pl.when(detail.is_not_null())
            .then(pl.concat_str([base, pl.lit("; "), detail]))
            .otherwise(base)
        )
    return base


def reasons(fired: list[tuple[Rule, pl.DataFrame]]) -> list[pl.DataFrame]:
    """Per rule, up to MAX_REASONS distinct sentences per finding, most frequent first.

    ``fired``: each rule with the rows of its findings (grouped by ``KEYS``). The sentence
    expression is large and the rows are few, so its cost is per evaluation, not per row:
    the rows of every rule are stacked and the sentences built in one pass, each rule's
    own ``output`` detail filled in first. Returns one frame (``KEYS``, ``_lines``) per rule.
    """
    if not fired:
        return []
    stacked = pl.concat(
        [
            rows.select(
                pl.exclude("^_.*$"),
                pl.col("_key"),
                (_render(rule.output) if rule.output else pl.lit(None, pl.String)).alias("_detail"),
                pl.lit(i, pl.Int32).alias("_rule"),
            )
            for i, (rule, rows) in enumerate(fired)
        ],
        how="vertical",
    )
    base = _sentence()
    detail = pl.col("_detail")
    text = (
        pl.when(detail.is_not_null())
        .then(pl.concat_str([base, pl.lit("; "), detail]))
        .otherwise(base)
    )
    keys = ["_rule", *KEYS]
    counted = (
        stacked.lazy()
        .with_columns(text.alias("_text"))
        .group_by([*keys, "_text"])
        .agg(pl.len().alias("_n"), pl.col("event_time").min().alias("_first"))  # requests
    )
    counted = counted.with_columns(
        pl.when(pl.col("_n") > 1)
        .then(pl.format("{} ({} events)", pl.col("_text"), pl.col("_n")))
        .otherwise(pl.col("_text"))
        .alias("_text")
    ).sort(["_n", "_first"], descending=[True, False])
    top = counted.group_by(keys, maintain_order=True).agg(
        pl.col("_text").head(MAX_REASONS).alias("_lines"),
        (pl.len().cast(pl.Int64) - MAX_REASONS).alias("_more"),
        (pl.col("_n").sum() - pl.col("_n").head(MAX_REASONS).sum()).alias("_more_events"),
    )
    more = pl.when(pl.col("_more") > 0).then(
        pl.format(
            "and {} more distinct actions ({} events)", pl.col("_more"), pl.col("_more_events")
        )
    )
    lines = top.select(
        "_rule", *KEYS, pl.concat_list("_lines", more).list.drop_nulls().alias("_lines")
    ).collect()
    parts = lines.partition_by("_rule", as_dict=True, include_key=False)
    empty = lines.clear().drop("_rule")
    return [parts.get((i,), empty) for i in range(len(fired))]


def threshold_sentence(rule: Rule, window: timedelta, with_usual: bool) -> pl.Expr:
    t = rule.threshold
    assert t is not None
    value = pl.col("_value").cast(pl.Int64).cast(pl.String)
    thr = pl.col("threshold").ceil().cast(pl.Int64).cast(pl.String)
    who = (
        pl.concat_str([pl.lit("source IP "), pl.col("_key")])
        if t.by == "source_ip"
        else pl.col("_who").fill_null(pl.col("_key"))
    )
    parts = [
        who,
        pl.lit(": "),
        value,
        pl.lit(f" {t.label} within {humanize(window)} (threshold "),
        thr,
    ]
    if with_usual:
        # A key with no matching request in the baseline has no "usual" to compare with.
        parts.append(
            pl.when(pl.col("_usual") > 0)
            .then(
                pl.concat_str(
                    [
                        pl.lit("; usual "),
                        pl.col("_usual").round(1).cast(pl.String),
                        pl.lit(" per window"),
                    ]
                )
            )
            .otherwise(pl.lit("; none in the baseline range"))
        )
    parts.append(pl.lit(")"))
    sentence = pl.concat_str(parts)
    if t.by == "source_ip":
        principals = pl.col("_principals").list.head(5).list.join(", ")
        sentence = pl.concat_str([sentence, pl.lit("; identities: "), principals.fill_null("?")])
    return sentence
