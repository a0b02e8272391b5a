"""The feature catalogue: every feature, its sentence, its family and its ATT&CK mapping.

One place that names what the model computes, so the window code, the surprise model, the
explanations and docs/features.md (checked by a test) all read the same list. Nothing here
computes: see :mod:`detector.features.windows` (events -> window rows),
:mod:`detector.features.compare` (window rows -> features against a baseline) and
:mod:`detector.features.surprise` (features -> the forest's inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

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


#: Event columns the features read (projection pushdown reads only these from Parquet).
INPUT_COLUMNS = (
    "cluster",
    "event_time",
    "received_time",
    "audit_id",
    "stage",
    "verb",
    "request_uri",
    "principal",
    "principal_kind",
    "iam_arn",
    "source_ip",
    "source_ips",  # the connection's address, which a forwarded-for header cannot hide
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


#: How a novelty phrase ends; left out for a principal with no history, where every value
#: is new and "no history for this principal" follows (``explain.phrase``).
NEVER_SEEN = " never seen for this principal"


def _f(name: str, phrase: str, family: str, *, integer: bool = True) -> Feature:
    return Feature(name, phrase, family, integer)


#: The feature catalogue, in model column order. docs/features.md documents each one.
CATALOGUE: tuple[Feature, ...] = (
    _f("requests", "made {v} request{s}", "volume"),
    _f("reads", "made {v} read request{s} (get/list/watch)", "volume"),
    _f("writes", "made {v} write request{s} (create/update/patch)", "volume"),
    _f("deletes", "made {v} delete request{s}", "volume"),
    _f("cluster_list_watch", "made {v} cluster-wide list or watch request{s}", "volume"),
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
    _f("new_source_ips", "came from {v} source IP{s}" + NEVER_SEEN, "novelty"),
    _f("new_user_agents", "used {v} user agent{s}" + NEVER_SEEN, "novelty"),
    _f("new_namespaces", "touched {v} namespace{s}" + NEVER_SEEN, "novelty"),
    _f("new_resources", "touched {v} resource type{s}" + NEVER_SEEN, "novelty"),
    _f(
        "new_verb_resources",
        "made {v} kind{s} of request (verb and resource)" + NEVER_SEEN,
        "novelty",
    ),
    _f("first_seen_principal", "is a principal never seen before", "novelty"),
    _f(
        "hour_rarity",
        "was active at an hour of day it rarely is",
        "novelty",
        integer=False,
    ),
    _f(
        "rare_action",
        "made a kind of request rare for principals of its kind",
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
#: surprise hierarchy, the rarest action's name and the window's addresses and clients (for
#: explanations that name new values next to usual ones).
ID_COLUMNS = ("cluster", "principal", "principal_kind", "window_start", "window_end")
#: ``parent``: the principal's IAM role (sessions of one role share it) or else its kind.
#: Columns beside the features that explanations read: the new source addresses and user
#: agents are the values ``new_source_ips`` / ``new_user_agents`` counted (neither in the
#: baseline nor recent, in their first window), so a reason names what was counted.
NAMED_NOVELTY = {"new_source_ips": "_source_ips", "new_user_agents": "_user_agents"}
DETAIL_COLUMNS = (
    "parent",
    "rare_action_name",
    "rare_action_seen",  # in how many baseline windows its principals' kind made it
    "_source_ips",
    "_user_agents",
    *(f"_{name}" for name in NAMED_NOVELTY),
)


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


#: ATT&CK (tactic, technique) a feature points to when it is among a finding's strongest
#: features; a model finding takes the mapping of its most surprising mapped feature.
#: Features that say "unusual" without saying "how" (request volume, 409s, 5xx, hour of
#: day as such) have none: a finding explained only by them carries no tactic.
ATTACK: dict[str, tuple[str, str]] = {
    "requests": ("Discovery", "T1613"),
    "reads": ("Discovery", "T1613"),
    "cluster_list_watch": ("Discovery", "T1613"),
    "requests_vs_usual": ("Discovery", "T1613"),
    "deletes": ("Impact", "T1485"),
    "status_401": ("Credential Access", "T1110"),
    "status_403": ("Discovery", "T1613"),
    "status_404": ("Discovery", "T1613"),
    "denied": ("Discovery", "T1613"),
    "error_ratio": ("Discovery", "T1613"),
    "errors_vs_usual": ("Discovery", "T1613"),
    "status_429": ("Impact", "T1499"),
    "distinct_namespaces": ("Discovery", "T1613"),
    "distinct_resources": ("Discovery", "T1613"),
    "distinct_names": ("Discovery", "T1613"),
    "distinct_source_ips": ("Initial Access", "T1078"),
    "distinct_user_agents": ("Initial Access", "T1078"),
    "secret_reads": ("Credential Access", "T1552.007"),
    "secret_namespaces": ("Credential Access", "T1552.007"),
    "secret_reads_vs_usual": ("Credential Access", "T1552.007"),
    "rbac_writes": ("Privilege Escalation", "T1098.006"),
    "exec_attach_portforward": ("Execution", "T1609"),
    "system_exec": ("Execution", "T1609"),
    "token_requests": ("Credential Access", "T1528"),
    "webhook_writes": ("Persistence", "T1546"),
    "aws_auth_writes": ("Persistence", "T1098.006"),
    "event_deletes": ("Defense Evasion", "T1070"),
    "privileged_workloads": ("Privilege Escalation", "T1611"),
    "hostpath_workloads": ("Privilege Escalation", "T1611"),
    "hostnetwork_workloads": ("Privilege Escalation", "T1611"),
    "hostpid_workloads": ("Privilege Escalation", "T1611"),
    "new_source_ips": ("Initial Access", "T1078"),
    "new_user_agents": ("Initial Access", "T1078"),
    "first_seen_principal": ("Initial Access", "T1078"),
    "new_namespaces": ("Discovery", "T1613"),
    "new_resources": ("Discovery", "T1613"),
}
