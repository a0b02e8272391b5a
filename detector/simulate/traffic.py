"""Synthetic Amazon EKS kube-apiserver audit traffic with labeled attack scenarios.

Why this exists: detection code needs data with ground truth, and real audit logs with
labeled attacks are rare and sensitive. The simulator writes raw ``audit.k8s.io/v1`` Event
JSON in exactly the shape the API server (and EKS control-plane logging) emits, so that
everything downstream -- ingest, the lake, features, the model, rules and evaluation -- runs
on the same code path as real data.

What is in the traffic:

* benign actors: kubelets (``system:node:*`` through IAM, Node authorizer), the controller
  manager (and its per-controller service accounts), the scheduler, ``eks:*`` control-plane
  components, kube-system / monitoring / ingress / cert-manager / application service
  accounts, an Argo CD controller, a CI deployer IAM role (one STS session per pipeline run)
  and human engineers behind shared IAM roles (work hours in their own time zone, office or
  VPN addresses, kubectl user agents, 403s and 404s, occasional exec, port-forward, late
  nights, weekend on-call, a new engineer joining half-way through, a node joining);
* ten attack scenarios (:data:`SCENARIOS`), each injected once and labeled with the audit
  IDs it produced (see :attr:`Simulation.labels`).

Design choices that matter to callers:

* Deterministic: every random draw comes from generators seeded by ``seed``; audit IDs are
  UUID-shaped strings drawn from those generators, never ``uuid4``. Same arguments, same
  bytes.
* Memory-bounded and fast: events are generated one UTC hour at a time, sorted by
  ``stageTimestamp`` and handed out; only events whose stage lies in a later hour (the end
  of a watch or an exec session) are carried over. Nested parts of events (``user``,
  ``objectRef``, ``sourceIPs``, status and annotation objects) are shared between events to
  keep this cheap, so treat yielded events as read-only.
* Output in four input formats the ingest side must read: kube-apiserver ``audit.log``
  (NDJSON, optionally gzip), ``aws logs filter-log-events`` JSON pages, CloudWatch Logs
  export-task objects and CloudWatch-subscription records delivered by Firehose to S3.
"""

from __future__ import annotations

import base64
import gzip
import io
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson

__all__ = [
    "ACCOUNT_ID",
    "FORMATS",
    "REGION",
    "SCENARIOS",
    "EventBatch",
    "Simulation",
    "SimulationSummary",
    "default_end",
    "principal_of",
    "simulate",
    "write_simulation",
]

#: The AWS account all simulated IAM identities live in (documentation range).
ACCOUNT_ID = "111122223333"
#: The region of the simulated cluster; node names end in ``.ec2.internal`` there.
REGION = "us-east-1"

#: Output formats understood by :func:`write_simulation`.
FORMATS = ("ndjson", "cloudwatch-json", "export-gz", "firehose")

#: Attack scenarios, in label order: name -> (MITRE tactic, technique id, description).
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "stolen_sa_token": (
        "credential-access",
        "T1552.007",
        "An application service-account token used from an outside address with a scripted "
        "client to list and read secrets across namespaces.",
    ),
    "cluster_admin_binding": (
        "privilege-escalation",
        "T1098.006",
        "A human IAM session binds itself to cluster-admin with a ClusterRoleBinding.",
    ),
    "aws_auth_edit": (
        "persistence",
        "T1098",
        "The aws-auth ConfigMap in kube-system is rewritten to map a foreign IAM role to "
        "system:masters.",
    ),
    "anonymous_probing": (
        "reconnaissance",
        "T1595",
        "system:anonymous from an outside address probes API paths (401/403, 200 on /version).",
    ),
    "exec_kube_system": (
        "execution",
        "T1609",
        "A human execs a shell in a kube-system pod.",
    ),
    "webhook_registration": (
        "persistence",
        "T1546",
        "A MutatingWebhookConfiguration pointing at an outside URL is created.",
    ),
    "permission_enumeration": (
        "discovery",
        "T1069",
        "A service account from a compromised pod bursts access reviews and forbidden "
        "requests across resources and namespaces.",
    ),
    "privileged_workload": (
        "privilege-escalation",
        "T1611",
        "A privileged pod with hostPID/hostNetwork and hostPath mounts of / and the "
        "container runtime socket is created, then exec'd into.",
    ),
    "token_for_privileged_sa": (
        "credential-access",
        "T1528",
        "A human mints a token for a powerful kube-system service account.",
    ),
    "delete_events": (
        "defense-evasion",
        "T1070",
        "Events in a namespace are deleted (deletecollection) to cover tracks.",
    ),
}

_K8S_GIT = "7f9249a"
_EKS_VERSION = f"v1.31.2-eks-{_K8S_GIT}"
_KUBECTL_GIT = "5864a46"
_US = 1_000_000
_HOUR_US = 3600 * _US
_DAY_US = 24 * _HOUR_US
#: Pod-name suffix alphabet of Kubernetes' rand.String (no vowels, no confusable digits).
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"
_HEX = "0123456789abcdef"
_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# Shared, never-mutated sub-objects (orjson serializes shared objects fine).
_RS = {
    200: {"metadata": {}, "code": 200},
    201: {"metadata": {}, "code": 201},
    101: {"metadata": {}, "code": 101},
}
_RS_401 = {
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}
_FORBID = {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}
_ALLOW_NODE = {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}
_DISCOVERY_REASON = (
    'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" '
    'to Group "system:authenticated"'
)
_PUBLIC_INFO_REASON = (
    'RBAC: allowed by ClusterRoleBinding "system:public-info-viewer" of ClusterRole '
    '"system:public-info-viewer" to Group "system:unauthenticated"'
)


def _allow(reason: str) -> dict[str, str]:
    return {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason}


# --------------------------------------------------------------------------------------------
# Resources and identities
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Res:
    """An API resource: enough to build ``requestURI`` and ``objectRef`` like the server."""

    resource: str
    group: str
    version: str
    namespaced: bool

    @property
    def base(self) -> str:
        return "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"


def _r(resource: str, group: str = "", version: str = "v1", namespaced: bool = True) -> _Res:
    return _Res(resource, group, version, namespaced)


_R = {
    "pods": _r("pods"),
    "configmaps": _r("configmaps"),
    "secrets": _r("secrets"),
    "services": _r("services"),
    "endpoints": _r("endpoints"),
    "events": _r("events"),
    "serviceaccounts": _r("serviceaccounts"),
    "pvcs": _r("persistentvolumeclaims"),
    "namespaces": _r("namespaces", namespaced=False),
    "nodes": _r("nodes", namespaced=False),
    "pvs": _r("persistentvolumes", namespaced=False),
    "deployments": _r("deployments", "apps"),
    "replicasets": _r("replicasets", "apps"),
    "daemonsets": _r("daemonsets", "apps"),
    "statefulsets": _r("statefulsets", "apps"),
    "jobs": _r("jobs", "batch"),
    "cronjobs": _r("cronjobs", "batch"),
    "leases": _r("leases", "coordination.k8s.io"),
    "endpointslices": _r("endpointslices", "discovery.k8s.io"),
    "ingresses": _r("ingresses", "networking.k8s.io"),
    "networkpolicies": _r("networkpolicies", "networking.k8s.io"),
    "roles": _r("roles", "rbac.authorization.k8s.io"),
    "rolebindings": _r("rolebindings", "rbac.authorization.k8s.io"),
    "clusterroles": _r("clusterroles", "rbac.authorization.k8s.io", namespaced=False),
    "clusterrolebindings": _r("clusterrolebindings", "rbac.authorization.k8s.io", namespaced=False),
    "csinodes": _r("csinodes", "storage.k8s.io", namespaced=False),
    "volumeattachments": _r("volumeattachments", "storage.k8s.io", namespaced=False),
    "csrs": _r("certificatesigningrequests", "certificates.k8s.io", namespaced=False),
    "mwc": _r("mutatingwebhookconfigurations", "admissionregistration.k8s.io", namespaced=False),
    "vwc": _r("validatingwebhookconfigurations", "admissionregistration.k8s.io", namespaced=False),
    "ssar": _r("selfsubjectaccessreviews", "authorization.k8s.io", namespaced=False),
    "ssrr": _r("selfsubjectrulesreviews", "authorization.k8s.io", namespaced=False),
    "tokenreviews": _r("tokenreviews", "authentication.k8s.io", namespaced=False),
    "podmetrics": _r("pods", "metrics.k8s.io", "v1beta1"),
    "nodemetrics": _r("nodes", "metrics.k8s.io", "v1beta1", namespaced=False),
    "applications": _r("applications", "argoproj.io", "v1alpha1"),
    "hpas": _r("horizontalpodautoscalers", "autoscaling", "v2"),
    "pdbs": _r("poddisruptionbudgets", "policy"),
    "crds": _r("customresourcedefinitions", "apiextensions.k8s.io", namespaced=False),
    "eniconfigs": _r("eniconfigs", "crd.k8s.amazonaws.com", "v1alpha1", namespaced=False),
    "certificates": _r("certificates", "cert-manager.io"),
}


def principal_of(user: dict[str, Any]) -> str:
    """The canonical principal of an Event ``user`` object, as the schema derives it.

    EKS maps many people onto one Kubernetes username (a shared IAM role), so for IAM
    identities the stable who-is-it is ``canonicalArn + "/" + sessionName`` from
    ``user.extra``; everything else is identified by its username.
    """
    extra = user.get("extra") or {}
    arn = (extra.get("canonicalArn") or extra.get("arn") or [None])[0]
    session = (extra.get("sessionName") or [None])[0]
    if arn and session:
        return f"{arn}/{session}"
    return user.get("username", "")


@dataclass(slots=True)
class _Actor:
    """Who sends a request: the Event ``user`` object plus where and how it calls from."""

    user: dict[str, Any]
    ips: list[str]
    ua: str
    allow: dict[str, str]

    @property
    def username(self) -> str:
        return self.user.get("username", "")


def _sa_user(
    namespace: str, name: str, uid: str, pod: _Pod | None = None, node: _Node | None = None
) -> dict[str, Any]:
    user: dict[str, Any] = {
        "username": f"system:serviceaccount:{namespace}:{name}",
        "uid": uid,
        "groups": [
            "system:serviceaccounts",
            f"system:serviceaccounts:{namespace}",
            "system:authenticated",
        ],
    }
    if pod is not None and node is not None:
        # Pod-bound projected tokens (Kubernetes >= 1.30) carry the pod and node they belong to.
        user["extra"] = {
            "authentication.kubernetes.io/credential-id": [f"JTI={pod.jti}"],
            "authentication.kubernetes.io/node-name": [node.name],
            "authentication.kubernetes.io/node-uid": [node.uid],
            "authentication.kubernetes.io/pod-name": [pod.name],
            "authentication.kubernetes.io/pod-uid": [pod.uid],
        }
    return user


def _iam_user(
    username: str, role: str, session: str, groups: list[str], key: str, role_id: str
) -> dict[str, Any]:
    """An IAM-authenticated user as aws-iam-authenticator / EKS access entries log it."""
    return {
        "username": username,
        "uid": f"aws-iam-authenticator:{ACCOUNT_ID}:{role_id}",
        "groups": [*groups, "system:authenticated"],
        "extra": {
            "accessKeyId": [key],
            "arn": [f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{role}/{session}"],
            "canonicalArn": [f"arn:aws:iam::{ACCOUNT_ID}:role/{role}"],
            "principalId": [role_id],
            "sessionName": [session],
        },
    }


# --------------------------------------------------------------------------------------------
# The world: nodes, pods, people (built once per seed, read-only afterwards)
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    name: str
    ip: str
    uid: str
    instance: str
    join_us: int
    actor: _Actor = field(init=False)
    pods: list[_Pod] = field(default_factory=list)


@dataclass(slots=True)
class _Pod:
    ns: str
    name: str
    app: str
    sa: str
    node: int
    uid: str
    ip: str
    jti: str
    configmaps: tuple[str, ...]
    secrets: tuple[str, ...]
    ds: bool = False


@dataclass(slots=True)
class _Human:
    session: str
    role: str  # IAM role name
    kind: str  # "admin" | "developer" | "platform"
    tz: int  # UTC offset in hours (no DST: the simulator does not need it)
    namespaces: tuple[str, ...]
    os: str
    secondary_ua: str
    join_us: int
    role_id: str
    oncall_week_parity: int


#: Application namespaces: app -> (replicas, talks to the API server).
_APPS: dict[str, tuple[tuple[str, int, bool], ...]] = {
    "payments": (("payments-api", 3, True), ("payments-worker", 2, True)),
    "checkout": (("checkout-api", 3, True), ("checkout-web", 2, False)),
    "catalog": (("catalog-api", 2, True), ("catalog-indexer", 1, False)),
    "search": (("search-api", 2, False), ("opensearch-proxy", 1, False)),
    "notifications": (("notifier", 2, True),),
    "identity": (("identity-api", 2, True),),
}
_APP_NS = tuple(_APPS)
#: Platform deployments: (namespace, app, replicas, service account).
_PLATFORM = (
    ("kube-system", "coredns", 2, "coredns"),
    ("kube-system", "ebs-csi-controller", 2, "ebs-csi-controller-sa"),
    ("kube-system", "metrics-server", 1, "metrics-server"),
    ("kube-system", "cluster-autoscaler", 1, "cluster-autoscaler"),
    ("monitoring", "kube-state-metrics", 1, "kube-state-metrics"),
    ("monitoring", "grafana", 1, "grafana"),
    ("argocd", "argocd-server", 1, "argocd-server"),
    ("argocd", "argocd-repo-server", 1, "argocd-repo-server"),
    ("argocd", "argocd-redis", 1, "argocd-redis"),
    ("ingress-nginx", "ingress-nginx-controller", 2, "ingress-nginx"),
    ("cert-manager", "cert-manager", 1, "cert-manager"),
    ("cert-manager", "cert-manager-webhook", 1, "cert-manager-webhook"),
    ("cert-manager", "cert-manager-cainjector", 1, "cert-manager-cainjector"),
)
#: Per-node daemonsets: (namespace, daemonset, service account).
_DAEMONSETS = (
    ("kube-system", "aws-node", "aws-node"),
    ("kube-system", "kube-proxy", "kube-proxy"),
    ("kube-system", "ebs-csi-node", "ebs-csi-node-sa"),
    ("kube-system", "eks-pod-identity-agent", "eks-pod-identity-agent"),
    ("monitoring", "node-exporter", "node-exporter"),
)
_ALL_NS = (
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "monitoring",
    "argocd",
    "ingress-nginx",
    "cert-manager",
    *_APP_NS,
)
_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
_OFFICE_IPS = tuple(f"203.0.113.{i}" for i in (10, 11, 12, 13))  # office NAT in 203.0.113.0/26
_VPN_POOL = tuple(f"198.51.100.{i}" for i in range(2, 31))  # VPN pool 198.51.100.0/27
_CI_POOL = tuple(f"192.0.2.{i}" for i in range(20, 120))  # hosted CI runners' egress


class _World:
    """Everything that is fixed for a seed: nodes, pods, people, actors, log streams."""

    def __init__(self, seed: int, cluster: str, start_us: int, end_us: int) -> None:
        rnd = random.Random(f"world:{seed}")
        self.rnd = rnd
        self.seed = seed
        self.cluster = cluster
        self.start_us = start_us
        self.end_us = end_us
        span = end_us - start_us
        self.streams = [f"kube-apiserver-audit-{self.hex(32)}" for _ in range(2)]

        # Nodes: six at the start, one joins part-way through (daemonset pods are created).
        self.nodes: list[_Node] = []
        used: set[str] = set()
        for i in range(7):
            while True:
                subnet = (16, 32, 48)[i % 3] + rnd.randrange(0, 12)
                ip = f"10.0.{subnet}.{rnd.randrange(10, 250)}"
                if ip not in used:
                    used.add(ip)
                    break
            name = f"ip-{ip.replace('.', '-')}.ec2.internal"
            join = start_us - _DAY_US if i < 6 else start_us + int(span * 0.4)
            self.nodes.append(_Node(name, ip, self.uuid(), f"i-0{self.hex(16)}", join))
        self.node_role = f"eks-{cluster}-node-role"
        node_role_id = "AROA" + self.b32(17)
        for n in self.nodes:
            key = "ASIA" + self.b32(16)
            user = _iam_user(
                f"system:node:{n.name}",
                self.node_role,
                n.instance,
                ["system:bootstrappers", "system:nodes"],
                key,
                node_role_id,
            )
            ua = f"kubelet/{_EKS_VERSION} (linux/amd64) kubernetes/{_K8S_GIT}"
            n.actor = _Actor(user, [n.ip], ua, _ALLOW_NODE)

        # Pods.
        self.pods: list[_Pod] = []
        for ns, apps in _APPS.items():
            for app, replicas, _talks in apps:
                self._deployment(ns, app, replicas, app, (f"{app}-config",), (f"{app}-secrets",))
        for ns, app, replicas, sa in _PLATFORM:
            self._deployment(ns, app, replicas, sa, (), ())
        self._pod("monitoring", "prometheus-k8s-0", "prometheus", "prometheus-k8s", 1, (), ())
        self._pod(
            "argocd",
            "argocd-application-controller-0",
            "argocd-application-controller",
            "argocd-application-controller",
            2,
            ("argocd-cm", "argocd-rbac-cm"),
            (),
        )
        for i in range(6):
            self.daemon_pods(i)
        self.pods_by_ns: dict[str, list[_Pod]] = {}
        self.pods_by_app: dict[str, list[_Pod]] = {}
        for p in self.pods:
            self.pods_by_ns.setdefault(p.ns, []).append(p)
            self.pods_by_app.setdefault(p.app, []).append(p)
        self.deploy_pods = [p for p in self.pods if not p.ds and p.name.count("-") >= 2]
        self.new_node_pods = self.daemon_pods(6, attach=False)

        # Service-account actors (one per pod for pod-bound tokens).
        self.pod_actor: dict[str, _Actor] = {}
        for p in [*self.pods, *self.new_node_pods]:
            self.pod_actor[p.name] = self._pod_actor(p)
        self.sa_uid: dict[tuple[str, str], str] = {}

        # Humans: one platform admin (kubernetes-admin), three eng-admins sharing the
        # username "eng-admin", two or three developers (access entries), and one new
        # developer who joins part-way through.
        n_dev = rnd.choice((2, 3))
        names = list(_NAMES)
        rnd.shuffle(names)
        tzs = (-8, -5, -5, 0, 1, 2, -7, 1, 5)
        roles = ["platform"] + ["admin"] * 3 + ["developer"] * n_dev + ["developer"]
        self.humans: list[_Human] = []
        ids = {"platform": "AROA" + self.b32(17), "admin": "AROA" + self.b32(17)}
        ids["developer"] = "AROA" + self.b32(17)
        for i, kind in enumerate(roles):
            role = {"platform": "platform-admin", "admin": "eng-admin", "developer": "developer"}[
                kind
            ]
            own = tuple(rnd.sample(_APP_NS, 2 if kind == "developer" else 1))
            os_ = rnd.choice(("darwin/arm64", "darwin/arm64", "darwin/arm64", "linux/amd64"))
            secondary = rnd.choice(
                (
                    f"k9s/v0.32.5 ({os_}) kubernetes/$Format",
                    f"kubectl/v1.30.5 ({os_}) kubernetes/74e84a9",
                    f"Lens/2024.11.5 ({os_}) kubernetes/$Format",
                )
            )
            join = start_us - 30 * _DAY_US if i < len(roles) - 1 else start_us + int(span * 0.45)
            self.humans.append(
                _Human(
                    names[i],
                    role,
                    kind,
                    tzs[i % len(tzs)],
                    own,
                    os_,
                    secondary,
                    join,
                    ids[kind],
                    i % 2,
                )
            )
        self.ci_role_id = "AROA" + self.b32(17)
        self._day_cache: dict[tuple[str, int], tuple[float, _Actor]] = {}

    # -- small deterministic helpers --------------------------------------------------------
    def hex(self, length: int) -> str:
        return "".join(self.rnd.choices(_HEX, k=length))

    def b32(self, length: int) -> str:
        return "".join(self.rnd.choices(_B32, k=length))

    def uuid(self) -> str:
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def suffix(self, length: int = 5) -> str:
        return "".join(self.rnd.choices(_ALNUM, k=length))

    def pod_ip(self, node: int) -> str:
        a, b, c, _ = self.nodes[node].ip.split(".")
        return f"{a}.{b}.{c}.{self.rnd.randrange(2, 254)}"

    def _pod(
        self,
        namespace: str,
        name: str,
        app: str,
        sa: str,
        node: int,
        cms: tuple[str, ...],
        secrets: tuple[str, ...],
        ds: bool = False,
        attach: bool = True,
    ) -> _Pod:
        p = _Pod(
            namespace,
            name,
            app,
            sa,
            node,
            self.uuid(),
            self.pod_ip(node),
            self.uuid(),
            ("kube-root-ca.crt", *cms),
            secrets,
            ds,
        )
        if attach:
            self.pods.append(p)
            self.nodes[node].pods.append(p)
        return p

    def _deployment(
        self,
        namespace: str,
        app: str,
        replicas: int,
        sa: str,
        cms: tuple[str, ...],
        sec: tuple[str, ...],
    ) -> None:
        rs = self.suffix(self.rnd.choice((9, 10)))
        for _ in range(replicas):
            node = self.rnd.randrange(6)
            self._pod(namespace, f"{app}-{rs}-{self.suffix()}", app, sa, node, cms, sec)

    def daemon_pods(self, node: int, attach: bool = True) -> list[_Pod]:
        return [
            self._pod(ns, f"{ds}-{self.suffix()}", ds, sa, node, (), (), True, attach)
            for ns, ds, sa in _DAEMONSETS
        ]

    def _pod_actor(self, pod: _Pod) -> _Actor:
        node = self.nodes[pod.node]
        user = _sa_user(pod.ns, pod.sa, self.uuid(), pod, node)
        reason = (
            f'RBAC: allowed by RoleBinding "{pod.sa}" of Role "{pod.sa}" to ServiceAccount '
            f'"{pod.sa}/{pod.ns}"'
        )
        return _Actor(user, [pod.ip], _POD_UA.get(pod.app, "Go-http-client/2.0"), _allow(reason))

    def human_actor(self, human: _Human, day: int) -> tuple[float, _Actor]:
        """(presence multiplier, actor) of a human on one local day: credentials rotate daily,
        the source address depends on office or VPN day."""
        key = (human.session, day)
        hit = self._day_cache.get(key)
        if hit is not None:
            return hit
        r = random.Random(f"human:{self.seed}:{human.session}:{day}")
        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        if weekday < 5:
            present = 1.0 if r.random() < 0.88 else 0.0
            late = r.random() < 0.15
            mult = present * (2.0 if late else 1.0)
        else:
            oncall = (day // 7) % 2 == human.oncall_week_parity and human.kind != "platform"
            mult = 1.0 if oncall and r.random() < 0.6 else 0.0
        ips = [r.choice(_OFFICE_IPS)] if r.random() < 0.45 else [r.choice(_VPN_POOL)]
        if r.random() < 0.1:
            ips.append(r.choice(_VPN_POOL))
        key_id = "ASIA" + "".join(r.choices(_B32, k=16))
        actor = self.make_human_actor(human, key_id, ips)
        self._day_cache[key] = (mult, actor)
        return mult, actor

    def make_human_actor(
        self, human: _Human, key_id: str, ips: list[str], ua: str | None = None
    ) -> _Actor:
        if human.kind == "platform":
            user = _iam_user(
                "kubernetes-admin",
                human.role,
                human.session,
                ["system:masters"],
                key_id,
                human.role_id,
            )
            allow = _ALLOW_NODE
        elif human.kind == "admin":
            user = _iam_user(
                "eng-admin", human.role, human.session, ["eng-admins"], key_id, human.role_id
            )
            allow = _allow(
                'RBAC: allowed by ClusterRoleBinding "eng-admins" of ClusterRole '
                '"cluster-admin" to Group "eng-admins"'
            )
        else:
            username = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{human.role}/{human.session}"
            user = _iam_user(
                username, human.role, human.session, ["developers"], key_id, human.role_id
            )
            allow = _allow(
                'RBAC: allowed by ClusterRoleBinding "developers-edit" of ClusterRole "edit" '
                'to Group "developers"'
            )
        ua = ua or f"kubectl/v1.31.2 ({human.os}) kubernetes/{_KUBECTL_GIT}"
        return _Actor(user, ips, ua, allow)

    def human_level(self, human: _Human, t_us: int) -> float:
        """Activity multiplier (mean about 1 over a week) for the hour starting at ``t_us``."""
        if t_us < human.join_us:
            return 0.0
        local = t_us + human.tz * _HOUR_US
        day, rem = divmod(local, _DAY_US)
        hour = rem // _HOUR_US
        mult, _ = self.human_actor(human, day)
        if mult == 0.0:
            return 0.0
        weekday = (day + 3) % 7
        if weekday >= 5:
            level = 0.35 if 10 <= hour < 20 else 0.0
        else:
            level = _WORKDAY[hour]
            if mult > 1.0 and 19 <= hour < 24:
                level = 0.5  # a late evening
        return level / _HUMAN_MEAN


#: Weekday activity by local hour (0 = midnight).
_WORKDAY = (
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0.02,
    0.3,
    1.0,
    1.0,
    1.0,
    0.5,
    1.0,
    1.0,
    1.0,
    1.0,
    0.6,
    0.3,
    0.1,
    0.03,
    0.03,
    0.01,
    0,
)
#: Mean of the weekly profile (weekdays 88% present, 15% late; every other weekend on call).
_HUMAN_MEAN = (
    5 * 0.88 * (sum(_WORKDAY) + 0.15 * (5 * 0.5 - sum(_WORKDAY[19:]))) + 2 * 0.5 * 0.6 * 0.35 * 10
) / (7 * 24)

_POD_UA = {
    "payments-api": "Go-http-client/2.0",
    "payments-worker": "Go-http-client/2.0",
    "checkout-api": "fabric8-kubernetes-client/6.13.1",
    "catalog-api": "OpenAPI-Generator/30.1.0/python",
    "notifier": "Go-http-client/2.0",
    "identity-api": "fabric8-kubernetes-client/6.13.1",
    "coredns": "coredns/v0.0.0 (linux/amd64) kubernetes/$Format",
    "aws-node": "aws-node/v1.18.5 (linux/amd64) kubernetes/$Format",
    "kube-proxy": f"kube-proxy/{_EKS_VERSION} (linux/amd64) kubernetes/{_K8S_GIT}",
    "ebs-csi-controller": "csi-provisioner/v5.1.0 (linux/amd64) kubernetes/$Format",
    "ebs-csi-node": "aws-ebs-csi-driver/v1.35.0 (linux/amd64) kubernetes/$Format",
    "eks-pod-identity-agent": "eks-pod-identity-agent/v0.1.10 (linux/amd64) kubernetes/$Format",
    "metrics-server": "metrics-server/v0.7.2 (linux/amd64) kubernetes/$Format",
    "cluster-autoscaler": "cluster-autoscaler/v1.31.0 (linux/amd64) kubernetes/$Format",
    "prometheus": "Prometheus/2.54.1",
    "kube-state-metrics": "kube-state-metrics/v2.13.0 (linux/amd64) kubernetes/$Format",
    "grafana": "Go-http-client/2.0",
    "node-exporter": "Go-http-client/2.0",
    "argocd-application-controller": (
        "argocd-application-controller/v2.12.4+27d1e64 (linux/amd64) kubernetes/$Format"
    ),
    "argocd-server": "argocd-server/v2.12.4+27d1e64 (linux/amd64) kubernetes/$Format",
    "argocd-repo-server": "argocd-repo-server/v2.12.4+27d1e64",
    "ingress-nginx-controller": "nginx-ingress-controller/v1.11.2 (linux/amd64) ingress-nginx/",
    "cert-manager": "cert-manager-controller/v1.15.3 (linux/amd64) cert-manager/",
    "cert-manager-webhook": "cert-manager-webhook/v1.15.3 (linux/amd64) cert-manager/",
    "cert-manager-cainjector": "cert-manager-cainjector/v1.15.3 (linux/amd64) cert-manager/",
}


# --------------------------------------------------------------------------------------------
# Event factory
# --------------------------------------------------------------------------------------------


class _Ids:
    """UUID-shaped audit IDs drawn in blocks from a numpy generator (fast, deterministic)."""

    __slots__ = ("_hex", "_i", "_n", "_rng")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._hex = ""
        self._i = 0
        self._n = 0

    def __call__(self) -> str:
        if self._i >= self._n:
            a = self._rng.integers(0, 256, size=(4096, 16), dtype=np.uint8)
            a[:, 6] = (a[:, 6] & 0x0F) | 0x40
            a[:, 8] = (a[:, 8] & 0x3F) | 0x80
            self._hex = a.tobytes().hex()
            self._i, self._n = 0, 4096
        h, o = self._hex, self._i * 32
        self._i += 1
        return f"{h[o : o + 8]}-{h[o + 8 : o + 12]}-{h[o + 12 : o + 16]}-{h[o + 16 : o + 20]}-{h[o + 20 : o + 32]}"  # noqa: E501


class _Factory:
    """Builds Event dicts into ``buf`` as ``(stageTimestamp_us, event, stream)`` tuples."""

    def __init__(self, world: _World, rng: np.random.Generator, rnd: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.rnd = rnd
        self.ids = _Ids(rng)
        self.buf: list[tuple[int, dict[str, Any], int]] = []
        self._tcache: dict[int, str] = {}
        self._refs: dict[tuple[Any, ...], tuple[str, dict[str, str]]] = {}
        self._iplists: dict[str, list[str]] = {}

    # -- formatting ---------------------------------------------------------------------------
    def ts(self, at_us: int) -> str:
        """RFC 3339 with microseconds and ``Z``, as the API server writes; the
        ``YYYY-MM-DDTHH:MM:`` prefix is cached per minute (strftime is the slow part)."""
        m, frac = divmod(at_us, 60 * _US)
        p = self._tcache.get(m)
        if p is None:
            if len(self._tcache) > 4096:
                self._tcache.clear()
            p = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(m * 60))
            self._tcache[m] = p
        sec, frac = divmod(frac, _US)
        return f"{p}{sec:02d}.{frac:06d}Z"

    def ref(
        self, res: str, namespace: str | None, name: str | None, sub: str | None
    ) -> tuple[str, dict[str, str]]:
        """(request path, objectRef) of a resource reference, memoized: both are the same
        for every request to the same object, and the objectRef dict is shared."""
        key = (res, namespace, name, sub)
        hit = self._refs.get(key)
        if hit is None:
            r = _R[res]
            p = r.base
            o = {"resource": r.resource}
            if namespace and r.namespaced:
                p += f"/namespaces/{namespace}"
                o["namespace"] = namespace
            p += f"/{r.resource}"
            if name:
                p += f"/{name}"
                o["name"] = name
            if sub:
                p += f"/{sub}"
            if r.group:
                o["apiGroup"] = r.group
            o["apiVersion"] = r.version
            if sub:
                o["subresource"] = sub
            if len(self._refs) > 100_000:
                self._refs.clear()
            hit = self._refs[key] = (p, o)
        return hit

    def path(self, res: str, namespace: str | None) -> str:
        """The collection path of ``res`` (in ``ns``), for list/watch URIs with selectors."""
        return self.ref(res, namespace, None, None)[0]

    def suffix(self, length: int = 5) -> str:
        return "".join(self.rnd.choices(_ALNUM, k=length))

    def uuid(self) -> str:
        h = "".join(self.rnd.choices(_HEX, k=32))
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def iplist(self, ip: str) -> list[str]:
        lst = self._iplists.get(ip)
        if lst is None:
            lst = self._iplists[ip] = [ip]
        return lst

    def rv(self, at_us: int) -> int:
        return 180_000_000 + (at_us // 40_000) % 700_000_000 + self.rnd.randrange(50)

    def watch_q(self, at_us: int, secs: int, selector: str = "") -> str:
        sel = f"&fieldSelector={selector}" if selector else ""
        return (
            f"?allowWatchBookmarks=true{sel}&resourceVersion={self.rv(at_us)}"
            f"&timeout={secs // 60}m{secs % 60}s&timeoutSeconds={secs}&watch=true"
        )

    # -- the one event builder ---------------------------------------------------------------
    def req(
        self,
        at_us: int,
        actor: _Actor,
        verb: str,
        res: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        sub: str | None = None,
        *,
        code: int = 200,
        query: str = "",
        uri: str | None = None,
        level: str | None = None,
        request_object: Any = None,
        response_object: Any = None,
        ip: str | None = None,
        ua: str | None = None,
        lat: int | None = None,
        dur: int | None = None,
        ann: dict[str, str] | None = None,
        imp: dict[str, Any] | None = None,
        stream: int | None = None,
    ) -> str:
        """Log one request; return its audit ID.

        ``dur`` marks a long-running request (watch, exec, port-forward): it is logged at
        ``ResponseStarted`` and again at ``ResponseComplete`` ``dur`` microseconds later,
        with the same audit ID, exactly as the API server does.
        """
        rnd = self.rnd
        aid = self.ids()
        if res is not None:
            r: _Res | None = _R[res]
            path, oref = self.ref(res, namespace, name, sub)
            if uri is None:
                if verb == "create" and name and not sub:
                    # The URI of a create names the collection; the server copies the new
                    # object's name into objectRef.
                    path = self.ref(res, namespace, None, None)[0]
                uri = path + query
        else:
            r = oref = None
            assert uri is not None
        if ip is None:
            ips = actor.ips
            ip = ips[0] if len(ips) == 1 else ips[int(rnd.random() * len(ips))]
        if lat is None:
            lat = 900 + int(rnd.random() ** 3 * (60_000 if verb in ("list", "create") else 25_000))
        if level is None:
            if response_object is not None:
                level = "RequestResponse"
            elif request_object is not None:
                level = "Request"
            elif r is None or r.resource in ("secrets", "configmaps", "tokenreviews"):
                level = "Metadata"
            elif verb in ("get", "list", "watch"):
                level = "Request"
            else:
                level = "Metadata"
        ev: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": level,
            "auditID": aid,
            "stage": "ResponseComplete" if dur is None else "ResponseStarted",
            "requestURI": uri,
            "verb": verb,
            "user": actor.user if code != 401 else {},
        }
        if imp is not None:
            ev["impersonatedUser"] = imp
        ev["sourceIPs"] = self.iplist(ip)
        ev["userAgent"] = ua or actor.ua
        if oref is not None:
            ev["objectRef"] = oref
        if code in _RS:
            ev["responseStatus"] = _RS[code]
        else:
            ev["responseStatus"] = self.failure(
                code, verb, r, namespace, name, sub, uri, imp or actor.user
            )
        if request_object is not None:
            ev["requestObject"] = request_object
        if response_object is not None:
            ev["responseObject"] = response_object
        ev["requestReceivedTimestamp"] = self.ts(at_us)
        ev["stageTimestamp"] = self.ts(at_us + lat)
        if code == 401:
            # Failed authentication: logged once, at ResponseStarted, with no user and no
            # authorization decision.
            ev["stage"] = "ResponseStarted"
            dur = None
        elif code == 403:
            ev["annotations"] = ann or _FORBID
        else:
            ev["annotations"] = ann or actor.allow
        s = stream if stream is not None else (0 if rnd.random() < 0.5 else 1)
        self.buf.append((at_us + lat, ev, s))
        if dur is not None:
            done = dict(ev)
            done["stage"] = "ResponseComplete"
            done["stageTimestamp"] = self.ts(at_us + dur)
            self.buf.append((at_us + dur, done, s))
        return aid

    def failure(
        self,
        code: int,
        verb: str,
        resource: _Res | None,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        uri: str,
        user: dict[str, Any],
    ) -> dict[str, Any]:
        if code == 401:
            return _RS_401
        if resource is None:
            path = uri.split("?", 1)[0]
            return {
                "metadata": {},
                "status": "Failure",
                "message": f'forbidden: User "{user.get("username", "")}" cannot {verb} path '
                f'"{path}"',
                "reason": "Forbidden",
                "details": {},
                "code": code,
            }
        what = f"{resource.resource}/{sub}" if sub else resource.resource
        details: dict[str, Any] = {"name": name, "group": resource.group, "kind": resource.resource}
        if not name:
            del details["name"]
        if not resource.group:
            del details["group"]
        if code == 404:
            return {
                "metadata": {},
                "status": "Failure",
                "message": f'{resource.resource} "{name}" not found',
                "reason": "NotFound",
                "details": details,
                "code": 404,
            }
        if code == 409:
            return {
                "metadata": {},
                "status": "Failure",
                "message": f"Operation cannot be fulfilled on {resource.resource}.{resource.group or 'core'} "
                f'"{name}": the object has been modified; please apply your changes to the '
                "latest version and try again",
                "reason": "Conflict",
                "details": details,
                "code": 409,
            }
        obj = f'{resource.resource} "{name}"' if name else resource.resource
        scope = (
            f'in the namespace "{namespace}"'
            if namespace and resource.namespaced
            else "at the cluster scope"
        )
        return {
            "metadata": {},
            "status": "Failure",
            "message": f'{obj} is forbidden: User "{user.get("username", "")}" cannot {verb} '
            f'resource "{what}" in API group "{resource.group}" {scope}',
            "reason": "Forbidden",
            "details": details,
            "code": 403,
        }

    # -- bodies -------------------------------------------------------------------------------
    def jwt(self) -> str:
        """A JWT-shaped token (random, never valid) for TokenRequest responses."""
        rb = self.rng.bytes
        head = base64.urlsafe_b64encode(
            b'{"alg":"RS256","kid":"' + rb(20).hex().encode() + b'"}'
        ).rstrip(b"=")
        body = base64.urlsafe_b64encode(rb(330)).rstrip(b"=")
        sig = base64.urlsafe_b64encode(rb(256)).rstrip(b"=")
        return b".".join((head, body, sig)).decode()

    def b64(self, length: int) -> str:
        return base64.b64encode(self.rng.bytes(length)).decode()

    def token_request(
        self, at_us: int, namespace: str, sa: str, seconds: int, bound: _Pod | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        spec: dict[str, Any] = {
            "audiences": ["https://kubernetes.default.svc"],
            "expirationSeconds": seconds,
            "boundObjectRef": None,
        }
        if bound is not None:
            spec["boundObjectRef"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": bound.name,
                "uid": bound.uid,
            }
        rq = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": {"token": "", "expirationTimestamp": None},
        }
        rs = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {
                "name": sa,
                "namespace": namespace,
                "creationTimestamp": self.ts(at_us)[:19] + "Z",
            },
            "spec": spec,
            "status": {
                "token": self.jwt(),
                "expirationTimestamp": self.ts(at_us + seconds * _US)[:19] + "Z",
            },
        }
        return rq, rs


def _pod_body(
    pod: _Pod, image: str, *, privileged: bool = False, host: bool = False, uid: str | None = None
) -> dict[str, Any]:
    """A Pod object as a controller or a user sends it (spec trimmed to what matters)."""
    container: dict[str, Any] = {
        "name": pod.app,
        "image": image,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": [
            {
                "name": "kube-api-access",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            },
        ],
        "imagePullPolicy": "IfNotPresent",
    }
    volumes: list[dict[str, Any]] = [
        {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                ]
            },
        },
    ]
    spec: dict[str, Any] = {"serviceAccountName": pod.sa}
    if host:
        spec["hostNetwork"] = True
        volumes += [
            {"name": "log-dir", "hostPath": {"path": "/var/log", "type": ""}},
            {
                "name": "xtables-lock",
                "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"},
            },
        ]
        container["volumeMounts"] += [{"name": "log-dir", "mountPath": "/var/log"}]
    if privileged:
        container["securityContext"] = {"privileged": True}
    else:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }
    spec["containers"] = [container]
    spec["volumes"] = volumes
    spec["restartPolicy"] = "Always"
    meta: dict[str, Any] = {"name": pod.name, "namespace": pod.ns, "labels": {"app": pod.app}}
    if uid:
        meta["uid"] = uid
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec}


# --------------------------------------------------------------------------------------------
# Benign traffic
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Proc:
    """A Poisson process of calls; ``share`` of all events, ``per_call`` events per call."""

    share: float
    per_call: float
    fn: Callable[[int], None]
    profile: Callable[[int], float] | None = None
    start_us: int = 0


@dataclass(slots=True)
class _Periodic:
    """A near-periodic call (lease renewals): every ``period_us`` from ``phase_us``."""

    period_us: int
    phase_us: int
    fn: Callable[[int], None]
    start_us: int = 0


class _Benign:
    """Generates benign traffic hour by hour into a :class:`_Factory`."""

    def __init__(self, world: _World, factory: _Factory, rate: float) -> None:
        self.world = world
        self.factory = factory
        self.rnd = factory.rnd
        self.rate = rate
        self.procs: list[_Proc] = []
        self.periodic: list[_Periodic] = []
        self.ci_run = 4100 + self.rnd.randrange(900)
        self._build()

    # -- registry ----------------------------------------------------------------------------
    def _proc(
        self,
        share: float,
        per_call: float,
        action: Callable[[int], None],
        profile: Callable[[int], float] | None = None,
        start_us: int = 0,
    ) -> None:
        self.procs.append(_Proc(share, per_call, action, profile, start_us))

    def _lease(self, share: float, fns: list[tuple[Callable[[int], None], int]]) -> None:
        """Lease renewals: ``share`` of all events split over ``fns`` (fn, start)."""
        period = max(2 * _US, int(len(fns) * _US / (self.rate * share)))
        for fn, start in fns:
            phase = self.rnd.randrange(period)
            self.periodic.append(_Periodic(period, phase, fn, start))

    def _build(self) -> None:
        """Register every benign process. Shares add up to 1 so that ``rate`` is the average
        total; ``per_call`` is each call's mean number of events (measured)."""
        w = self.world
        nodes = w.nodes
        # Kubelets: 40% of traffic.
        self._lease(0.13, [(self._node_lease(n), n.join_us) for n in nodes])
        for share, per, fn in (
            (0.05, 1, self.kubelet_get_node),
            (0.03, 1, self.kubelet_patch_node_status),
            (0.08, 2, self.kubelet_watch_object),
            (0.03, 2, self.kubelet_watch_pods),
            (0.03, 1, self.kubelet_patch_pod_status),
            (0.02, 1, self.kubelet_token),
            (0.03, 1.25, self.kubelet_misc),
        ):
            self._proc(share, per, fn)
        # Control plane: 22%.
        self._lease(
            0.07,
            [
                (self._cp_lease("kube-controller-manager", _KCM, "kube-controller-manager"), 0),
                (self._cp_lease("kube-scheduler", _SCHED, "kube-scheduler"), 0),
                (self._cp_lease("cloud-controller-manager", _CCM, "cloud-controller-manager"), 0),
            ],
        )
        self._proc(0.01, 1, self.scheduler_bind)
        self._proc(0.07, 1.27, self.kcm_controllers)
        self._proc(0.07, 1.15, self.eks_components)
        # kube-system and platform service accounts: 18%.
        self._proc(0.11, 1.45, self.kube_system_sas)
        self._proc(0.07, 1.5, self.monitoring)
        # Argo CD: 7%.
        self._proc(0.07, 1.5, self.argocd)
        # Applications: 6%.
        self._proc(0.064, 1.06, self.app_sas)
        # CI deploys: 0.6% (a few dozen runs a day at 2 events/s), company hours (UTC-5).
        self._proc(0.006, 12.5, self.ci_deploy, self._ci_profile)
        # Humans: 6%, spread over the engineers present at the start.
        humans = [h for h in w.humans if h.join_us <= w.start_us]
        per_human = 0.06 / len(humans)
        for h in w.humans:
            cmds = _ADMIN_CMDS if h.kind in ("admin", "platform") else _DEV_CMDS
            self._proc(
                per_human,
                sum(wt * n for wt, n, _ in cmds) / sum(wt for wt, _, _ in cmds),
                self._human_fn(h),
                (lambda at_us, human=h: self.world.human_level(human, at_us)),
                h.join_us,
            )

    # -- hour slices ---------------------------------------------------------------------------
    def run(self, t0: int, t1: int) -> None:
        """Generate all benign requests received in ``[t0, t1)``."""
        rng = self.factory.rng
        rate = self.rate
        for p in self.procs:
            a = max(t0, p.start_us)
            if a >= t1 or p.share <= 0:
                continue
            mult = p.profile(t0) if p.profile is not None else 1.0
            if mult <= 0:
                continue
            lam = rate * p.share / p.per_call * mult * (t1 - a) / _US
            n = int(rng.poisson(lam))
            if n:
                times = rng.integers(a, t1, n)
                times.sort()
                fn = p.fn
                for t in times.tolist():
                    fn(t)
        rnd = self.rnd
        for p in self.periodic:
            a = max(t0, p.start_us)
            if a >= t1:
                continue
            k = -((p.phase_us - a) // p.period_us)  # first k with phase + k*period >= a
            t = p.phase_us + k * p.period_us
            fn = p.fn
            while t < t1:
                fn(t + int(rnd.random() * 300_000))
                t += p.period_us
        join = self.world.nodes[6].join_us
        if t0 <= join < t1:
            self.node_join(join)

    # -- kubelets ------------------------------------------------------------------------------
    def _node(self, at_us: int) -> _Node:
        nodes = self.world.nodes
        n = nodes[int(self.rnd.random() * 7)]
        if n.join_us > at_us:
            n = nodes[int(self.rnd.random() * 6)]
        return n

    def _node_lease(self, node: _Node) -> Callable[[int], None]:
        def fn(at_us: int) -> None:
            self.factory.req(
                at_us,
                node.actor,
                "update",
                "leases",
                "kube-node-lease",
                node.name,
                query="?timeout=10s",
            )

        return fn

    def kubelet_get_node(self, at_us: int) -> None:
        n = self._node(at_us)
        self.factory.req(
            at_us, n.actor, "get", "nodes", None, n.name, query="?resourceVersion=0&timeout=10s"
        )

    def kubelet_patch_node_status(self, at_us: int) -> None:
        n = self._node(at_us)
        self.factory.req(
            at_us, n.actor, "patch", "nodes", None, n.name, "status", query="?timeout=10s"
        )

    def _node_pod(self, node: _Node) -> _Pod | None:
        pods = node.pods or (self.world.new_node_pods if node is self.world.nodes[6] else [])
        return pods[int(self.rnd.random() * len(pods))] if pods else None

    def kubelet_watch_object(self, at_us: int) -> None:
        n = self._node(at_us)
        p = self._node_pod(n)
        if p is None:
            return
        f = self.factory
        if p.secrets and self.rnd.random() < 0.4:
            res, name = "secrets", p.secrets[0]
        else:
            res, name = "configmaps", p.configmaps[int(self.rnd.random() * len(p.configmaps))]
        secs = 300 + int(self.rnd.random() * 300)
        q = f.watch_q(at_us, secs, f"metadata.name%3D{name}")
        uri = f.path(res, p.ns) + q
        f.req(at_us, n.actor, "watch", res, p.ns, name, uri=uri, dur=secs * _US)

    def kubelet_watch_pods(self, at_us: int) -> None:
        n = self._node(at_us)
        f = self.factory
        secs = 300 + int(self.rnd.random() * 300)
        q = f.watch_q(at_us, secs, f"spec.nodeName%3D{n.name}")
        f.req(at_us, n.actor, "watch", "pods", query=q, dur=secs * _US)

    def kubelet_patch_pod_status(self, at_us: int) -> None:
        n = self._node(at_us)
        p = self._node_pod(n)
        if p is not None:
            self.factory.req(at_us, n.actor, "patch", "pods", p.ns, p.name, "status")

    def kubelet_token(self, at_us: int) -> None:
        n = self._node(at_us)
        p = self._node_pod(n)
        if p is None:
            return
        f = self.factory
        rq, rs = f.token_request(at_us, p.ns, p.sa, 3607, p)
        f.req(
            at_us,
            n.actor,
            "create",
            "serviceaccounts",
            p.ns,
            p.sa,
            "token",
            code=201,
            request_object=rq,
            response_object=rs,
        )

    def kubelet_misc(self, at_us: int) -> None:
        n = self._node(at_us)
        f = self.factory
        x = self.rnd.random()
        if x < 0.35:
            f.req(at_us, n.actor, "get", "csinodes", None, n.name)
        elif x < 0.6:
            secs = 300 + int(self.rnd.random() * 300)
            f.req(at_us, n.actor, "watch", "services", query=f.watch_q(at_us, secs), dur=secs * _US)
        elif x < 0.8:
            p = self._node_pod(n)
            if p is not None:
                f.req(at_us, n.actor, "get", "pods", p.ns, p.name)
        else:
            f.req(at_us, n.actor, "get", "leases", "kube-node-lease", n.name, query="?timeout=10s")

    def node_join(self, at_us: int) -> None:
        """A node joins: CSR approval and privileged daemonset pods (rare but benign)."""
        w, f = self.world, self.factory
        n = w.nodes[6]
        csr = f"csr-{f.suffix()}"
        f.req(at_us, n.actor, "create", "csrs", None, csr, code=201)
        f.req(
            at_us + 2 * _US,
            _EKS_ACTORS["eks:certificate-controller"],
            "update",
            "csrs",
            None,
            csr,
            "approval",
        )
        ctrl = _kcm_actor("daemon-set-controller")
        for i, p in enumerate(w.new_node_pods):
            body = _pod_body(
                p,
                f"602401143452.dkr.ecr.{REGION}.amazonaws.com/eks/{p.app}:v1",
                privileged=p.app in ("aws-node", "kube-proxy", "ebs-csi-node"),
                host=p.app != "node-exporter",
            )
            resp = _pod_body(
                p,
                body["spec"]["containers"][0]["image"],
                privileged=p.app in ("aws-node", "kube-proxy", "ebs-csi-node"),
                host=p.app != "node-exporter",
                uid=p.uid,
            )
            f.req(
                at_us + (5 + i) * _US,
                ctrl,
                "create",
                "pods",
                p.ns,
                p.name,
                code=201,
                request_object=body,
                response_object=resp,
            )
            f.req(
                at_us + (6 + i) * _US, _SCHED, "create", "pods", p.ns, p.name, "binding", code=201
            )

    # -- control plane -------------------------------------------------------------------------
    def _cp_lease(self, name: str, actor: _Actor, ua_name: str) -> Callable[[int], None]:
        ua = f"{ua_name}/{_EKS_VERSION} (linux/amd64) kubernetes/{_K8S_GIT}/leader-election"

        def fn(at_us: int) -> None:
            code = 409 if self.rnd.random() < 0.002 else 200
            self.factory.req(
                at_us,
                actor,
                "update",
                "leases",
                "kube-system",
                name,
                query="?timeout=5s",
                ua=ua,
                code=code,
            )

        return fn

    def _any_pod(self) -> _Pod:
        pods = self.world.pods
        return pods[int(self.rnd.random() * len(pods))]

    def scheduler_bind(self, at_us: int) -> None:
        p = self._any_pod()
        self.factory.req(at_us, _SCHED, "create", "pods", p.ns, p.name, "binding", code=201)

    def kcm_controllers(self, at_us: int) -> None:
        f, rnd = self.factory, self.rnd
        x = rnd.random()
        ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
        if x < 0.3:
            app = _APPS[ns][0][0]
            f.req(
                at_us,
                _kcm_actor("endpointslice-controller"),
                "update",
                "endpointslices",
                ns,
                f"{app}-{f.suffix()}",
            )
        elif x < 0.45:
            app = _APPS[ns][0][0]
            f.req(
                at_us,
                _kcm_actor("deployment-controller"),
                "update",
                "deployments",
                ns,
                app,
                "status",
            )
        elif x < 0.55:
            p = self.world.deploy_pods[int(rnd.random() * len(self.world.deploy_pods))]
            f.req(
                at_us,
                _kcm_actor("replicaset-controller"),
                "update",
                "replicasets",
                p.ns,
                p.name.rsplit("-", 1)[0],
                "status",
            )
        elif x < 0.75:
            secs = 300 + int(rnd.random() * 300)
            res = ("pods", "replicasets", "deployments", "endpointslices", "jobs", "leases")[
                int(rnd.random() * 6)
            ]
            f.req(at_us, _KCM, "watch", res, query=f.watch_q(at_us, secs), dur=secs * _US)
        elif x < 0.83:
            f.req(
                at_us,
                _kcm_actor("generic-garbage-collector"),
                "list",
                "replicasets",
                query="?limit=500&resourceVersion=0",
            )
        elif x < 0.9:
            app = _APPS[ns][0][0]
            a = _kcm_actor("horizontal-pod-autoscaler")
            f.req(at_us, a, "get", "deployments", ns, app, "scale")
            f.req(at_us + 3000, a, "list", "podmetrics", ns, query=f"?labelSelector=app%3D{app}")
        elif x < 0.95:
            f.req(
                at_us, _kcm_actor("node-controller"), "get", "nodes", None, self._node(at_us).name
            )
        elif x < 0.985:
            f.req(
                at_us,
                _kcm_actor("resourcequota-controller"),
                "list",
                "pods",
                ns,
                query="?limit=500&resourceVersion=0",
            )
        else:
            name = ("admin", "edit", "view")[int(rnd.random() * 3)]
            f.req(
                at_us,
                _kcm_actor("clusterrole-aggregation-controller"),
                "update",
                "clusterroles",
                None,
                name,
            )

    def eks_components(self, at_us: int) -> None:
        f, rnd = self.factory, self.rnd
        x = rnd.random()
        if x < 0.25:
            a = _EKS_ACTORS["eks:cloud-controller-manager"]
            n = self._node(at_us)
            if rnd.random() < 0.7:
                f.req(at_us, a, "get", "nodes", None, n.name)
            else:
                f.req(at_us, a, "patch", "nodes", None, n.name, "status")
        elif x < 0.45:
            a = _EKS_ACTORS["eks:node-manager"]
            if rnd.random() < 0.5:
                f.req(at_us, a, "get", "configmaps", "kube-system", "aws-auth")
            else:
                f.req(at_us, a, "list", "nodes", query="?limit=500")
        elif x < 0.6:
            a = _EKS_ACTORS["eks:certificate-controller"]
            secs = 300 + int(rnd.random() * 300)
            f.req(at_us, a, "watch", "csrs", query=f.watch_q(at_us, secs), dur=secs * _US)
        elif x < 0.75:
            a = _EKS_ACTORS["eks:authenticator"]
            f.req(at_us, a, "get", "configmaps", "kube-system", "aws-auth")
        elif x < 0.85:
            f.req(at_us, _EKS_ACTORS["eks:k8s-metrics"], "get", uri="/metrics", level="Metadata")
        elif x < 0.97:
            a = _EKS_ACTORS["eks:addon-manager"]
            ds = ("aws-node", "kube-proxy", "coredns")[int(rnd.random() * 3)]
            res = "deployments" if ds == "coredns" else "daemonsets"
            f.req(at_us, a, "get", res, "kube-system", ds)
        else:
            # Rare but benign: the add-on manager reconciles the CoreDNS ConfigMap.
            a = _EKS_ACTORS["eks:addon-manager"]
            body = {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": _COREFILE},
            }
            f.req(
                at_us,
                a,
                "patch",
                "configmaps",
                "kube-system",
                "coredns",
                request_object=body,
                response_object=body,
                query="?fieldManager=eks&force=true",
            )

    # -- platform service accounts ------------------------------------------------------------
    def _pod_of(self, namespace: str, app: str) -> _Pod:
        pods = self.world.pods_by_app[app]
        return pods[int(self.rnd.random() * len(pods))]

    def kube_system_sas(self, at_us: int) -> None:
        f, rnd, w = self.factory, self.rnd, self.world
        x = rnd.random()
        secs = 300 + int(rnd.random() * 300)
        if x < 0.25:
            p = self._pod_of("kube-system", "coredns")
            res = ("endpointslices", "services", "namespaces")[int(rnd.random() * 3)]
            f.req(
                at_us,
                w.pod_actor[p.name],
                "watch",
                res,
                query=f.watch_q(at_us, secs),
                dur=secs * _US,
            )
        elif x < 0.45:
            n = self._node(at_us)
            p = next(p for p in (n.pods or w.new_node_pods) if p.app == "aws-node")
            a = w.pod_actor[p.name]
            y = rnd.random()
            if y < 0.5:
                f.req(at_us, a, "get", "nodes", None, n.name)
            elif y < 0.8:
                q = f"?fieldSelector=spec.nodeName%3D{n.name}&limit=500"
                f.req(at_us, a, "list", "pods", query=q)
            else:
                f.req(at_us, a, "list", "eniconfigs", query="?limit=500")
        elif x < 0.65:
            n = self._node(at_us)
            p = next(p for p in (n.pods or w.new_node_pods) if p.app == "kube-proxy")
            res = ("services", "endpointslices", "nodes")[int(rnd.random() * 3)]
            f.req(
                at_us,
                w.pod_actor[p.name],
                "watch",
                res,
                query=f.watch_q(at_us, secs),
                dur=secs * _US,
            )
        elif x < 0.8:
            p = self._pod_of("kube-system", "ebs-csi-controller")
            a = w.pod_actor[p.name]
            if rnd.random() < 0.6:
                f.req(
                    at_us,
                    a,
                    "update",
                    "leases",
                    "kube-system",
                    "ebs-csi-aws-com",
                    query="?timeout=10s",
                )
            else:
                f.req(at_us, a, "list", "volumeattachments", query="?limit=500&resourceVersion=0")
        elif x < 0.92:
            p = self._pod_of("kube-system", "cluster-autoscaler")
            a = w.pod_actor[p.name]
            if rnd.random() < 0.5:
                f.req(
                    at_us,
                    a,
                    "update",
                    "leases",
                    "kube-system",
                    "cluster-autoscaler",
                    query="?timeout=10s",
                )
            else:
                f.req(at_us, a, "list", "pods", query="?limit=500&resourceVersion=0")
        else:
            p = self._pod_of("kube-system", "metrics-server")
            f.req(at_us, w.pod_actor[p.name], "get", "nodes", None, self._node(at_us).name)

    def monitoring(self, at_us: int) -> None:
        f, rnd, w = self.factory, self.rnd, self.world
        x = rnd.random()
        if x < 0.45:
            a = w.pod_actor["prometheus-k8s-0"]
            n = self._node(at_us)
            sub = "proxy/metrics/cadvisor" if rnd.random() < 0.5 else "proxy/metrics"
            f.req(at_us, a, "get", "nodes", None, n.name, sub)
        elif x < 0.7:
            a = w.pod_actor["prometheus-k8s-0"]
            res = ("pods", "endpoints", "services", "nodes")[int(rnd.random() * 4)]
            secs = 300 + int(rnd.random() * 300)
            f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * _US)
        elif x < 0.95:
            a = w.pod_actor[self._pod_of("monitoring", "kube-state-metrics").name]
            res = ("pods", "deployments", "nodes", "jobs", "secrets", "configmaps", "pvcs")[
                int(rnd.random() * 7)
            ]
            secs = 300 + int(rnd.random() * 300)
            f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * _US)
        else:
            a = w.pod_actor[self._pod_of("monitoring", "grafana").name]
            f.req(
                at_us,
                a,
                "list",
                "configmaps",
                "monitoring",
                query="?labelSelector=grafana_dashboard%3D1",
            )

    def argocd(self, at_us: int) -> None:
        f, rnd, w = self.factory, self.rnd, self.world
        a = w.pod_actor["argocd-application-controller-0"]
        x = rnd.random()
        if x < 0.4:
            res = (
                "pods",
                "deployments",
                "services",
                "configmaps",
                "secrets",
                "ingresses",
                "replicasets",
                "rolebindings",
                "serviceaccounts",
                "applications",
            )[int(rnd.random() * 10)]
            secs = 300 + int(rnd.random() * 300)
            f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * _US)
        elif x < 0.65:
            ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
            f.req(at_us, a, "patch", "applications", "argocd", ns, query="")
        elif x < 0.85:
            ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
            app = _APPS[ns][0][0]
            res = ("deployments", "services", "configmaps")[int(rnd.random() * 3)]
            name = f"{app}-config" if res == "configmaps" else app
            f.req(at_us, a, "get", res, ns, name)
        elif x < 0.97:
            ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
            app = _APPS[ns][0][0]
            f.req(
                at_us,
                a,
                "patch",
                "deployments",
                ns,
                app,
                query="?fieldManager=argocd-controller&force=true",
            )
        else:
            # Rare but benign: a sync creates a RoleBinding in an application namespace.
            ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
            body = _rolebinding(
                f"{ns}-readers",
                ns,
                "ClusterRole",
                "view",
                [
                    {
                        "kind": "Group",
                        "apiGroup": "rbac.authorization.k8s.io",
                        "name": f"{ns}-readers",
                    }
                ],
            )
            code = 409 if rnd.random() < 0.5 else 201
            f.req(
                at_us,
                a,
                "create",
                "rolebindings",
                ns,
                f"{ns}-readers",
                code=code,
                request_object=body,
                response_object=body if code == 201 else None,
            )
        if rnd.random() < 0.1:
            s = w.pod_actor[self._pod_of("argocd", "argocd-server").name]
            f.req(at_us + 50_000, s, "list", "applications", "argocd", query="?limit=500")

    def app_sas(self, at_us: int) -> None:
        f, rnd, w = self.factory, self.rnd, self.world
        x = rnd.random()
        if x < 0.75:
            talkers = _TALKERS
            ns, app = talkers[int(rnd.random() * len(talkers))]
            p = self._pod_of(ns, app)
            a = w.pod_actor[p.name]
            y = rnd.random()
            if y < 0.45:
                f.req(at_us, a, "get", "configmaps", ns, f"{app}-config")
            elif y < 0.75:
                f.req(at_us, a, "get", "secrets", ns, f"{app}-secrets")
            else:
                f.req(at_us, a, "update", "leases", ns, f"{app}-leader", query="?timeout=10s")
        elif x < 0.9:
            p = self._pod_of("ingress-nginx", "ingress-nginx-controller")
            a = w.pod_actor[p.name]
            if rnd.random() < 0.6:
                f.req(
                    at_us,
                    a,
                    "update",
                    "leases",
                    "ingress-nginx",
                    "ingress-nginx-leader",
                    query="?timeout=10s",
                )
            else:
                res = ("ingresses", "services", "endpointslices", "secrets")[int(rnd.random() * 4)]
                secs = 300 + int(rnd.random() * 300)
                f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * _US)
        else:
            p = self._pod_of("cert-manager", "cert-manager")
            a = w.pod_actor[p.name]
            if rnd.random() < 0.9:
                f.req(
                    at_us,
                    a,
                    "update",
                    "leases",
                    "kube-system",
                    "cert-manager-controller",
                    query="?timeout=10s",
                )
            else:
                # Rare: a certificate renewal rewrites a TLS secret (body carries key material).
                ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
                name = f"{_APPS[ns][0][0]}-tls"
                body = {
                    "kind": "Secret",
                    "apiVersion": "v1",
                    "metadata": {"name": name, "namespace": ns},
                    "type": "kubernetes.io/tls",
                    "data": {"tls.crt": f.b64(90), "tls.key": f.b64(60), "ca.crt": f.b64(60)},
                }
                f.req(
                    at_us,
                    a,
                    "update",
                    "secrets",
                    ns,
                    name,
                    request_object=body,
                    response_object=body,
                )

    # -- CI -------------------------------------------------------------------------------------
    def _ci_profile(self, at_us: int) -> float:
        local = at_us - 5 * _HOUR_US
        day, rem = divmod(local, _DAY_US)
        hour = rem // _HOUR_US
        if (day + 3) % 7 >= 5:
            return 0.05 / _CI_MEAN
        return (1.0 if 8 <= hour < 19 else 0.05) / _CI_MEAN

    def ci_deploy(self, at_us: int) -> None:
        """One pipeline run: a fresh STS session applies an app's manifests and waits."""
        f, rnd = self.factory, self.rnd
        self.ci_run += 1 + int(rnd.random() * 3)
        key = "ASIA" + "".join(rnd.choices(_B32, k=16))
        a = _ci_actor(
            self.world, f"gha-{self.ci_run}", _CI_POOL[int(rnd.random() * len(_CI_POOL))], key
        )
        ns = _APP_NS[int(rnd.random() * len(_APP_NS))]
        app = _APPS[ns][int(rnd.random() * len(_APPS[ns]))][0]
        sha = "".join(rnd.choices(_HEX, k=12))
        at_us += int(rnd.random() * 2 * _US)
        f.req(at_us, a, "get", uri="/api", level="Metadata", ann=_allow(_DISCOVERY_REASON))
        at_us += 300_000
        f.req(at_us, a, "get", uri="/apis", level="Metadata", ann=_allow(_DISCOVERY_REASON))
        at_us += 500_000
        f.req(at_us, a, "get", "configmaps", ns, f"{app}-config")
        cm = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": f"{app}-config", "namespace": ns},
            "data": {"LOG_LEVEL": "info", "RELEASE": sha},
        }
        at_us += 200_000
        f.req(
            at_us,
            a,
            "patch",
            "configmaps",
            ns,
            f"{app}-config",
            request_object=cm,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        if rnd.random() < 0.2:
            sec = {
                "kind": "Secret",
                "apiVersion": "v1",
                "metadata": {"name": f"{app}-secrets", "namespace": ns},
                "type": "Opaque",
                "data": {"DB_PASSWORD": f.b64(18), "API_KEY": f.b64(24)},
            }
            at_us += 200_000
            f.req(at_us, a, "get", "secrets", ns, f"{app}-secrets")
            at_us += 200_000
            f.req(
                at_us,
                a,
                "patch",
                "secrets",
                ns,
                f"{app}-secrets",
                request_object=sec,
                response_object=sec,
                query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
            )
        at_us += 300_000
        f.req(at_us, a, "get", "services", ns, app)
        at_us += 200_000
        f.req(
            at_us,
            a,
            "patch",
            "services",
            ns,
            app,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        at_us += 300_000
        f.req(at_us, a, "get", "deployments", ns, app)
        image = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/{app}:{sha}"
        patch = {"spec": {"template": {"spec": {"containers": [{"name": app, "image": image}]}}}}
        at_us += 200_000
        f.req(
            at_us,
            a,
            "patch",
            "deployments",
            ns,
            app,
            request_object=patch,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        at_us += 1_000_000
        wait = int((20 + rnd.random() * 70) * _US)
        q = f"?fieldSelector=metadata.name%3D{app}&resourceVersion={f.rv(at_us)}&watch=true"
        f.req(
            at_us,
            a,
            "watch",
            "deployments",
            ns,
            app,
            uri=f.path("deployments", ns) + q,
            dur=wait,
        )
        at_us += wait + 200_000
        f.req(at_us, a, "list", "replicasets", ns, query=f"?labelSelector=app%3D{app}&limit=500")
        at_us += 200_000
        f.req(at_us, a, "list", "pods", ns, query=f"?labelSelector=app%3D{app}&limit=500")

    # -- humans -----------------------------------------------------------------------------------
    def _human_fn(self, human: _Human) -> Callable[[int], None]:
        cmds = _ADMIN_CMDS if human.kind in ("admin", "platform") else _DEV_CMDS
        cum = list(np.cumsum([c[0] for c in cmds]))
        total = cum[-1]

        def fn(at_us: int) -> None:
            local_day = (at_us + human.tz * _HOUR_US) // _DAY_US
            _, a = self.world.human_actor(human, local_day)
            if self.rnd.random() < 0.08:
                a = _Actor(a.user, a.ips, human.secondary_ua, a.allow)
            if self.rnd.random() < 0.8:
                ns = human.namespaces[int(self.rnd.random() * len(human.namespaces))]
            else:
                ns = _APP_NS[int(self.rnd.random() * len(_APP_NS))]
            i = bisect(cum, self.rnd.random() * total)
            cmds[min(i, len(cmds) - 1)][2](self, human, a, at_us, ns)

        return fn


def _ci_actor(world: _World, session: str, ip: str, key: str) -> _Actor:
    """The CI deployer: one IAM role, a new STS session (``gha-<run>``) per pipeline run."""
    user = _iam_user(
        "ci-deployer", "gha-deployer", session, ["ci-deployers"], key, world.ci_role_id
    )
    allow = _allow(
        'RBAC: allowed by ClusterRoleBinding "ci-deployers" of ClusterRole "ci-deployer" to '
        'Group "ci-deployers"'
    )
    return _Actor(user, [ip], f"kubectl/v1.30.4 (linux/amd64) kubernetes/{_CI_GIT}", allow)


def _kcm_actor(controller: str) -> _Actor:
    a = _KCM_SA.get(controller)
    if a is None:
        user = {
            "username": f"system:serviceaccount:kube-system:{controller}",
            "uid": _stable_uuid(controller),
            "groups": [
                "system:serviceaccounts",
                "system:serviceaccounts:kube-system",
                "system:authenticated",
            ],
        }
        reason = (
            f'RBAC: allowed by ClusterRoleBinding "system:controller:{controller}" of ClusterRole '
            f'"system:controller:{controller}" to ServiceAccount "{controller}/kube-system"'
        )
        ua = (
            f"kube-controller-manager/{_EKS_VERSION} (linux/amd64) kubernetes/{_K8S_GIT}/"
            f"system:serviceaccount:kube-system:{controller}"
        )
        a = _KCM_SA[controller] = _Actor(user, ["10.0.137.24"], ua, _allow(reason))
    return a


def _stable_uuid(name: str) -> str:
    h = random.Random(f"uid:{name}").getrandbits(128)
    s = f"{h:032x}"
    return f"{s[:8]}-{s[8:12]}-4{s[13:16]}-a{s[17:20]}-{s[20:]}"


def _system_actor(username: str, ip: str, ua: str, reason: str = "") -> _Actor:
    user = {"username": username, "uid": _stable_uuid(username), "groups": ["system:authenticated"]}
    return _Actor(user, [ip], ua, _allow(reason))


_KCM_SA: dict[str, _Actor] = {}
_KCM = _system_actor(
    "system:kube-controller-manager",
    "10.0.137.24",
    f"kube-controller-manager/{_EKS_VERSION} (linux/amd64) kubernetes/{_K8S_GIT}/shared-informers",
    'RBAC: allowed by ClusterRoleBinding "system:kube-controller-manager" of ClusterRole '
    '"system:kube-controller-manager" to User "system:kube-controller-manager"',
)
_SCHED = _system_actor(
    "system:kube-scheduler",
    "10.0.137.24",
    f"kube-scheduler/{_EKS_VERSION} (linux/amd64) kubernetes/{_K8S_GIT}/scheduler",
    'RBAC: allowed by ClusterRoleBinding "system:kube-scheduler" of ClusterRole '
    '"system:kube-scheduler" to User "system:kube-scheduler"',
)
_CCM = _system_actor(
    "eks:cloud-controller-manager",
    "10.0.137.24",
    "aws-cloud-controller-manager/v1.31.0 (linux/amd64) kubernetes/$Format",
    'RBAC: allowed by ClusterRoleBinding "eks:cloud-controller-manager" of ClusterRole '
    '"eks:cloud-controller-manager" to User "eks:cloud-controller-manager"',
)


def _eks(name: str, ua: str) -> _Actor:
    return _system_actor(
        name,
        "127.0.0.1",
        ua,
        f'RBAC: allowed by ClusterRoleBinding "{name}" of ClusterRole "{name}" to User "{name}"',
    )


_EKS_ACTORS = {
    "eks:cloud-controller-manager": _CCM,
    "eks:node-manager": _eks("eks:node-manager", "eks-node-manager/v0.1.0 (linux/amd64)"),
    "eks:certificate-controller": _eks(
        "eks:certificate-controller",
        "eks-certificates-controller/v0.0.0 (linux/amd64) kubernetes/$Format",
    ),
    "eks:authenticator": _eks("eks:authenticator", "aws-iam-authenticator/v0.6.26"),
    "eks:k8s-metrics": _eks("eks:k8s-metrics", "eks-k8s-metrics/v0.0.0 (linux/amd64)"),
    "eks:addon-manager": _eks(
        "eks:addon-manager", "eks-addon-manager/v0.0.0 (linux/amd64) kubernetes/$Format"
    ),
}
_TALKERS = tuple((ns, app) for ns, apps in _APPS.items() for app, _, talks in apps if talks)
_CI_GIT = "a51b3b7"
_CI_MEAN = (5 * (11 * 1.0 + 13 * 0.05) + 2 * 24 * 0.05) / (7 * 24)
_COREFILE = (
    ".:53 {\n    errors\n    health {\n        lameduck 5s\n      }\n    ready\n    kubernetes "
    "cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa "
    "ip6.arpa\n    }\n    prometheus :9153\n    forward . /etc/resolv.conf\n    cache 30\n    "
    "loop\n    reload\n    loadbalance\n}\n"
)


def _rolebinding(
    name: str, namespace: str | None, role_kind: str, role: str, subjects: list[dict[str, str]]
) -> dict[str, Any]:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    meta: dict[str, Any] = {"name": name, "creationTimestamp": None}
    if namespace:
        meta["namespace"] = namespace
    return {
        "kind": kind,
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": meta,
        "subjects": subjects,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
    }


# -- human commands ------------------------------------------------------------------------------
# Each takes (benign, human, actor, t, namespace) and logs what one kubectl command logs.


def _pick_pod(traffic: _Benign, namespace: str) -> _Pod:
    pods = traffic.world.pods_by_ns[namespace]
    return pods[int(traffic.rnd.random() * len(pods))]


def _c_get_pods(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    traffic.factory.req(at_us, actor, "list", "pods", namespace, query="?limit=500")


def _c_describe_pod(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    p = _pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, p.name)
    q = (
        f"?fieldSelector=involvedObject.name%3D{p.name}%2CinvolvedObject.namespace%3D{namespace}"
        f"%2CinvolvedObject.uid%3D{p.uid}&limit=500"
    )
    traffic.factory.req(at_us + 60_000, actor, "list", "events", namespace, query=q)


def _c_logs(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    p = _pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, p.name)
    traffic.factory.req(
        at_us + 40_000,
        actor,
        "get",
        "pods",
        namespace,
        p.name,
        "log",
        query=f"?container={p.app}&tailLines=200",
        lat=int(80_000 + traffic.rnd.random() * 900_000),
    )


def _c_get_deploy(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "deployments", namespace, query="?limit=500")


def _c_get_svc(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    res = "services" if traffic.rnd.random() < 0.6 else "ingresses"
    traffic.factory.req(at_us, actor, "list", res, namespace, query="?limit=500")


def _c_get_cm(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    app = _APPS[namespace][0][0]
    traffic.factory.req(at_us, actor, "get", "configmaps", namespace, f"{app}-config")


def _c_get_nodes(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "nodes", query="?limit=500")


def _c_top(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    traffic.factory.req(at_us, actor, "list", "podmetrics", namespace)


def _c_events(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    traffic.factory.req(at_us, actor, "list", "events", namespace, query="?limit=500")


def _c_watch_pods(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    f = traffic.factory
    f.req(at_us, actor, "list", "pods", namespace, query="?limit=500")
    dur = int((10 + traffic.rnd.random() * 290) * _US)
    f.req(
        at_us + 90_000,
        actor,
        "watch",
        "pods",
        namespace,
        query=f"?resourceVersion={f.rv(at_us)}&watch=true",
        dur=dur,
    )


def _c_restart(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    if namespace not in human.namespaces and human.kind == "developer":
        namespace = human.namespaces[0]
    app = _APPS[namespace][0][0]
    body = {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "kubectl.kubernetes.io/restartedAt": traffic.factory.ts(at_us)[:19] + "Z"
                    }
                }
            }
        }
    }
    traffic.factory.req(at_us, actor, "get", "deployments", namespace, app)
    traffic.factory.req(
        at_us + 80_000,
        actor,
        "patch",
        "deployments",
        namespace,
        app,
        request_object=body,
        query="?fieldManager=kubectl-rollout",
    )


def _c_exec(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    p = _pick_pod(traffic, namespace)
    cmd = ("sh", "bash", "env", "printenv")[int(traffic.rnd.random() * 4)]
    tty = (
        "&stdin=true&stdout=true&tty=true" if cmd in ("sh", "bash") else "&stderr=true&stdout=true"
    )
    dur = int((2 + traffic.rnd.random() * (600 if cmd in ("sh", "bash") else 3)) * _US)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, p.name)
    traffic.factory.req(
        at_us + 70_000,
        actor,
        "create",
        "pods",
        namespace,
        p.name,
        "exec",
        code=101,
        query=f"?command={cmd}&container={p.app}{tty}",
        dur=dur,
    )


def _c_port_forward(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    p = _pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, p.name)
    dur = int((30 + traffic.rnd.random() * 1200) * _US)
    traffic.factory.req(
        at_us + 70_000, actor, "create", "pods", namespace, p.name, "portforward", code=101, dur=dur
    )


def _c_404(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    app = _APPS[namespace][0][0]
    if traffic.rnd.random() < 0.5:
        traffic.factory.req(
            at_us,
            actor,
            "get",
            "pods",
            namespace,
            f"{app}-{traffic.factory.suffix(9)}-{traffic.factory.suffix()}",
            code=404,
        )
    else:
        traffic.factory.req(at_us, actor, "get", "deployments", namespace, f"{app}-v2", code=404)


def _c_403(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    other = "kube-system" if traffic.rnd.random() < 0.5 else _APP_NS[int(traffic.rnd.random() * 6)]
    if other in human.namespaces:
        other = "kube-system"
    traffic.factory.req(at_us, actor, "list", "secrets", other, code=403, query="?limit=500")


def _c_discovery(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    ann = _allow(_DISCOVERY_REASON)
    traffic.factory.req(at_us, actor, "get", uri="/api?timeout=32s", level="Metadata", ann=ann)
    traffic.factory.req(
        at_us + 40_000, actor, "get", uri="/apis?timeout=32s", level="Metadata", ann=ann
    )


def _c_other_ns(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    other = _APP_NS[int(traffic.rnd.random() * len(_APP_NS))]
    traffic.factory.req(at_us, actor, "list", "pods", other, query="?limit=500")


def _c_apply_cm(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    app = _APPS[namespace][0][0]
    body = {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": f"{app}-config", "namespace": namespace},
        "data": {"LOG_LEVEL": "debug" if traffic.rnd.random() < 0.5 else "info"},
    }
    traffic.factory.req(at_us, actor, "get", "configmaps", namespace, f"{app}-config")
    traffic.factory.req(
        at_us + 90_000,
        actor,
        "patch",
        "configmaps",
        namespace,
        f"{app}-config",
        request_object=body,
        response_object=body,
        query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
    )


def _c_rolebinding(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    """Rare but benign: grant a colleague view in one's own namespace."""
    namespace = human.namespaces[0]
    mate = traffic.world.humans[int(traffic.rnd.random() * len(traffic.world.humans))]
    subject = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/developer/{mate.session}"
    body = _rolebinding(
        f"{mate.session}-view",
        namespace,
        "ClusterRole",
        "view",
        [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": subject}],
    )
    traffic.factory.req(
        at_us,
        actor,
        "create",
        "rolebindings",
        namespace,
        f"{mate.session}-view",
        code=201,
        request_object=body,
        response_object=body,
        query="?fieldManager=kubectl-create&fieldValidation=Strict",
    )


def _c_get_secret(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    traffic.factory.req(
        at_us, actor, "get", "secrets", namespace, f"{_APPS[namespace][0][0]}-secrets"
    )


def _c_can_i(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    body = {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": {
            "resourceAttributes": {
                "namespace": namespace,
                "verb": "create",
                "group": "apps",
                "resource": "deployments",
            }
        },
        "status": {"allowed": False},
    }
    traffic.factory.req(at_us, actor, "create", "ssar", code=201, request_object=body)


def _c_delete_pod(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    p = _pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "delete", "pods", namespace, p.name)


def _c_kube_system(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "pods", "kube-system", query="?limit=500")
    if traffic.rnd.random() < 0.5:
        p = _pick_pod(traffic, "kube-system")
        traffic.factory.req(
            at_us + 2 * _US,
            actor,
            "get",
            "pods",
            "kube-system",
            p.name,
            "log",
            query=f"?container={p.app}&tailLines=100",
        )


def _c_all_pods(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    traffic.factory.req(at_us, actor, "list", "pods", query="?limit=500")


def _c_impersonate(
    traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str
) -> None:
    """Rare but benign: an admin checks what a developer sees (``kubectl --as``)."""
    dev = next((x for x in traffic.world.humans if x.kind == "developer"), human)
    imp = {
        "username": f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/developer/{dev.session}",
        "groups": ["developers", "system:authenticated"],
    }
    code = 200 if namespace in dev.namespaces else 403
    traffic.factory.req(
        at_us, actor, "list", "pods", namespace, query="?limit=500", imp=imp, code=code
    )


def _c_token(traffic: _Benign, human: _Human, actor: _Actor, at_us: int, namespace: str) -> None:
    """Rare but benign: an admin mints a short token for an app's own service account."""
    namespace = human.namespaces[0]
    sa = _APPS[namespace][0][0]
    rq, rs = traffic.factory.token_request(at_us, namespace, sa, 600, None)
    traffic.factory.req(
        at_us,
        actor,
        "create",
        "serviceaccounts",
        namespace,
        sa,
        "token",
        code=201,
        request_object=rq,
        response_object=rs,
    )


#: (weight, expected events, command) for developers and for admins.
_COMMON = [
    (25, 1, _c_get_pods),
    (12, 2, _c_describe_pod),
    (15, 2, _c_logs),
    (10, 1, _c_get_deploy),
    (6, 1, _c_get_svc),
    (5, 1, _c_get_cm),
    (4, 1, _c_top),
    (4, 1, _c_events),
    (3, 3, _c_watch_pods),
    (2, 2, _c_restart),
    (2, 3, _c_exec),
    (1, 3, _c_port_forward),
    (3, 1, _c_404),
    (4, 2, _c_discovery),
    (4, 1, _c_other_ns),
    (1, 2, _c_apply_cm),
    (0.25, 1, _c_rolebinding),
    (1, 1, _c_get_secret),
    (0.5, 1, _c_can_i),
    (1, 1, _c_delete_pod),
]
_DEV_CMDS = [*_COMMON, (2, 1, _c_403), (1, 1, _c_get_nodes)]
_ADMIN_CMDS = [
    *_COMMON,
    (5, 1, _c_get_nodes),
    (3, 1.5, _c_kube_system),
    (2, 1, _c_all_pods),
    (0.3, 1, _c_impersonate),
    (0.15, 1, _c_token),
]


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


class _Attacks:
    """Plans the ten scenarios and logs their events into their own factory."""

    def __init__(self, world: _World, factory: _Factory, start_us: int, end_us: int) -> None:
        self.world = world
        self.factory = factory
        self.rnd = factory.rnd
        self.start_us = start_us
        self.end_us = end_us
        self.labels: list[dict[str, Any]] = []

    def window(self, duration_us: int) -> tuple[int, int]:
        """Where a scenario may start: the last 24 hours of long ranges, else the later part
        of the range, always leaving room for the scenario to finish before ``end``."""
        span = self.end_us - self.start_us
        lo = self.end_us - _DAY_US if span >= 36 * _HOUR_US else self.start_us + span // 4
        hi = self.end_us - min(45 * 60 * _US, span // 8) - duration_us
        if hi < lo:
            lo = max(self.start_us, hi)
        if hi < self.start_us:
            raise ValueError(
                "the time range is too short for the attack scenarios (need at least an hour); "
                "pass scenarios=() for benign traffic only"
            )
        return lo, hi

    def when(self, duration_us: int, utc_offset: int | None = None, night: bool = False) -> int:
        lo, hi = self.window(duration_us)
        rnd = self.rnd
        if night and utc_offset is not None:
            for _ in range(200):
                t = lo + int(rnd.random() * (hi - lo))
                hour = ((t + utc_offset * _HOUR_US) % _DAY_US) // _HOUR_US
                if hour < 6 or hour >= 22:
                    return t
        return lo + int(rnd.random() * (hi - lo))

    def step(self, at_us: int, low: float, high: float) -> int:
        return at_us + int((low + self.rnd.random() * (high - low)) * _US)

    def record(self, name: str, principal: str, mark: int, extra: dict[str, Any]) -> None:
        events = self.factory.buf[mark:]
        ids: list[str] = []
        seen: set[str] = set()
        for _, ev, _ in events:
            if ev["auditID"] not in seen:
                seen.add(ev["auditID"])
                ids.append(ev["auditID"])
        start = min(ev["requestReceivedTimestamp"] for _, ev, _ in events)
        end = max(ev["stageTimestamp"] for _, ev, _ in events)
        tactic, technique, desc = SCENARIOS[name]
        self.labels.append(
            {
                "id": f"{len(self.labels) + 1:02d}-{name}",
                "scenario": name,
                "principal": principal,
                "tactic": tactic,
                "technique": technique,
                "start": start,
                "end": end,
                "description": desc,
                **extra,
                "events": len(events),
                "audit_ids": ids,
            }
        )

    def outside_ip(self, prefix: str) -> str:
        return f"{prefix}.{self.rnd.randrange(2, 254)}"

    def run(self, names: Iterable[str]) -> None:
        humans = self.world.humans
        admins = [h for h in humans if h.kind == "admin"]
        devs = [h for h in humans if h.kind == "developer" and h.join_us <= self.start_us]
        self.rnd.shuffle(admins)
        self.rnd.shuffle(devs)
        self.cast = {
            "cluster_admin_binding": devs[0],
            "privileged_workload": devs[1],
            "aws_auth_edit": admins[0],
            "exec_kube_system": admins[1],
            "token_for_privileged_sa": admins[2],
        }
        wanted = list(names)
        for name in SCENARIOS:
            if name in wanted and name != "delete_events":
                getattr(self, name)()
        if "delete_events" in wanted:
            self.delete_events()

    def _human(
        self, name: str, at_us: int, *, new_ip: str | None = None, ua: str | None = None
    ) -> _Actor:
        """The cast human's identity at ``t`` with fresh credentials; the day's usual address
        unless ``new_ip`` is given."""
        h = self.cast[name]
        key = "ASIA" + "".join(self.rnd.choices(_B32, k=16))
        if new_ip is None:
            day = (at_us + h.tz * _HOUR_US) // _DAY_US
            _, usual = self.world.human_actor(h, day)
            ips = [usual.ips[0]]
        else:
            ips = [new_ip]
        return self.world.make_human_actor(h, key, ips, ua)

    # -- the scenarios ------------------------------------------------------------------------
    def stolen_sa_token(self) -> None:
        f, w = self.factory, self.world
        pod = next(p for p in w.pods if p.app == "payments-api")
        real = w.pod_actor[pod.name]
        a = _Actor(
            real.user, [self.outside_ip("185.220.101")], "python-requests/2.32.3", real.allow
        )
        mark = len(f.buf)
        t = self.when(15 * 60 * _US)
        disc = _allow(_DISCOVERY_REASON)
        f.req(t, a, "get", uri="/api", level="Metadata", ann=disc)
        t = self.step(t, 0.5, 3)
        f.req(t, a, "get", uri="/apis", level="Metadata", ann=disc)
        t = self.step(t, 3, 20)
        f.req(t, a, "list", "secrets", "payments")
        for name in ("payments-api-secrets", "payments-worker-secrets", "payments-db"):
            t = self.step(t, 1, 8)
            f.req(
                t, a, "get", "secrets", "payments", name, code=404 if name == "payments-db" else 200
            )
        others = [ns for ns in _ALL_NS if ns not in ("payments", "kube-node-lease")]
        self.rnd.shuffle(others)
        for ns in others:
            t = self.step(t, 2, 25)
            if ns == "checkout":
                f.req(t, a, "list", "secrets", ns)
                t = self.step(t, 1, 5)
                f.req(t, a, "get", "secrets", ns, "checkout-api-secrets")
            else:
                f.req(t, a, "list", "secrets", ns, code=403)
        t = self.step(t, 2, 20)
        f.req(t, a, "list", "secrets", code=403)
        t = self.step(t, 1, 10)
        f.req(t, a, "list", "namespaces", code=403)
        self.record("stolen_sa_token", a.username, mark, {"source_ips": a.ips, "user_agent": a.ua})

    def cluster_admin_binding(self) -> None:
        f = self.factory
        h = self.cast["cluster_admin_binding"]
        t = self.when(10 * 60 * _US, h.tz, night=True)
        a = self._human(
            "cluster_admin_binding",
            t,
            new_ip=self.outside_ip("91.219.236"),
            ua=f"kubectl/v1.31.2 (linux/amd64) kubernetes/{_KUBECTL_GIT}",
        )
        reason = _allow(
            'RBAC: allowed by ClusterRoleBinding "developers-rbac" of ClusterRole "rbac-manager" '
            'to Group "developers"'
        )
        mark = len(f.buf)
        f.req(t, a, "list", "clusterrolebindings", query="?limit=500", ann=reason)
        t = self.step(t, 5, 60)
        f.req(t, a, "get", "clusterroles", None, "cluster-admin", ann=reason)
        name = f"{h.session}-cluster-admin"
        subject = a.username
        body = _rolebinding(
            name,
            None,
            "ClusterRole",
            "cluster-admin",
            [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": subject}],
        )
        t = self.step(t, 20, 90)
        resp = _rolebinding(name, None, "ClusterRole", "cluster-admin", body["subjects"])
        resp["metadata"] = {
            "name": name,
            "uid": f.uuid(),
            "resourceVersion": "2918811",
            "creationTimestamp": f.ts(t)[:19] + "Z",
        }
        f.req(
            t,
            a,
            "create",
            "clusterrolebindings",
            None,
            name,
            code=201,
            request_object=body,
            response_object=resp,
            query="?fieldManager=kubectl-create&fieldValidation=Strict",
            ann=reason,
        )
        admin = _allow(
            f'RBAC: allowed by ClusterRoleBinding "{name}" of ClusterRole "cluster-admin" to '
            f'User "{subject}"'
        )
        t = self.step(t, 10, 40)
        f.req(t, a, "list", "secrets", "kube-system", query="?limit=500", ann=admin)
        t = self.step(t, 5, 30)
        f.req(t, a, "list", "pods", query="?limit=500", ann=admin)
        self.record(
            "cluster_admin_binding",
            principal_of(a.user),
            mark,
            {"source_ips": a.ips, "user_agent": a.ua},
        )

    def aws_auth_edit(self) -> None:
        f, w = self.factory, self.world
        h = self.cast["aws_auth_edit"]
        t = self.when(10 * 60 * _US, h.tz, night=True)
        a = self._human("aws_auth_edit", t)
        mark = len(f.buf)
        f.req(t, a, "get", "configmaps", "kube-system", "aws-auth")
        roles = (
            f"- rolearn: arn:aws:iam::{ACCOUNT_ID}:role/{w.node_role}\n"
            "  username: system:node:{{EC2PrivateDNSName}}\n  groups:\n"
            "  - system:bootstrappers\n  - system:nodes\n"
            f"- rolearn: arn:aws:iam::{ACCOUNT_ID}:role/eng-admin\n  username: eng-admin\n"
            "  groups:\n  - eng-admins\n"
            f"- rolearn: arn:aws:iam::{ACCOUNT_ID}:role/platform-admin\n"
            "  username: kubernetes-admin\n  groups:\n  - system:masters\n"
        )
        backdoor = (
            "- rolearn: arn:aws:iam::444455556666:role/OrganizationAccountAccessRole\n"
            "  username: ops-support\n  groups:\n  - system:masters\n"
        )
        meta = {
            "name": "aws-auth",
            "namespace": "kube-system",
            "uid": f.uuid(),
            "resourceVersion": "2917740",
        }
        body = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": meta,
            "data": {"mapRoles": roles + backdoor},
        }
        resp = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {**meta, "resourceVersion": "2919307"},
            "data": {"mapRoles": roles + backdoor},
        }
        t = self.step(t, 40, 180)
        f.req(
            t,
            a,
            "update",
            "configmaps",
            "kube-system",
            "aws-auth",
            request_object=body,
            response_object=resp,
            query="?fieldManager=kubectl-edit&fieldValidation=Strict",
        )
        t = self.step(t, 5, 30)
        f.req(t, a, "get", "configmaps", "kube-system", "aws-auth")
        self.record(
            "aws_auth_edit", principal_of(a.user), mark, {"source_ips": a.ips, "user_agent": a.ua}
        )

    def anonymous_probing(self) -> None:
        f = self.factory
        ip = self.outside_ip("45.155.205")
        user = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
        a = _Actor(user, [ip], "Mozilla/5.0 zgrab/0.x", _allow(_PUBLIC_INFO_REASON))
        mark = len(f.buf)
        t = self.when(8 * 60 * _US)
        probes: list[tuple[str, str | None, str | None, int]] = [
            ("/", None, None, 403),
            ("/version", None, None, 200),
            ("/healthz", None, None, 200),
            ("/api", None, None, 403),
            ("/apis", None, None, 403),
            ("/api/v1/secrets", "secrets", None, 403),
            ("/api/v1/namespaces", "namespaces", None, 403),
            ("/api/v1/namespaces/kube-system/pods", "pods", "kube-system", 403),
            ("/api/v1/nodes", "nodes", None, 403),
            ("/api/v1/namespaces/default/pods", "pods", "default", 401),
            ("/apis/apps/v1/deployments", "deployments", None, 403),
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                "clusterrolebindings",
                None,
                403,
            ),
            ("/api/v1/namespaces/kube-system/secrets", "secrets", "kube-system", 401),
            ("/metrics", None, None, 403),
            ("/openapi/v2", None, None, 403),
            ("/logs", None, None, 403),
            ("/.well-known/openid-configuration", None, None, 403),
            ("/api/v1/pods", "pods", None, 401),
            ("/version", None, None, 200),
        ]
        uas = ("Mozilla/5.0 zgrab/0.x", "python-requests/2.31.0", "curl/7.88.1")
        for i, (uri, res, ns, code) in enumerate(probes):
            t = self.step(t, 0.2, 12)
            ua = uas[0] if i < 6 else uas[1 + int(self.rnd.random() * 2)]
            verb = "list" if res else "get"
            f.req(t, a, verb, res, ns, uri=uri, code=code, ua=ua, level="Metadata")
        self.record(
            "anonymous_probing",
            "system:anonymous",
            mark,
            {"source_ips": [ip], "user_agent": uas[0]},
        )

    def exec_kube_system(self) -> None:
        f, w = self.factory, self.world
        h = self.cast["exec_kube_system"]
        # Leave room for the delete_events follow-up by the same principal.
        t = self.when(35 * 60 * _US, h.tz, night=self.rnd.random() < 0.5)
        a = self._human("exec_kube_system", t)
        mark = len(f.buf)
        f.req(t, a, "list", "pods", "kube-system", query="?limit=500")
        p = next(p for p in w.pods if p.app == "aws-node")
        t = self.step(t, 5, 40)
        f.req(t, a, "get", "pods", "kube-system", p.name)
        t = self.step(t, 2, 10)
        dur = int((60 + self.rnd.random() * 240) * _US)
        f.req(
            t,
            a,
            "create",
            "pods",
            "kube-system",
            p.name,
            "exec",
            code=101,
            level="Request",
            query="?command=sh&container=aws-node&stdin=true&stdout=true&tty=true",
            dur=dur,
        )
        self.exec_actor = a
        self.exec_end = t + dur
        self.record(
            "exec_kube_system",
            principal_of(a.user),
            mark,
            {"source_ips": a.ips, "user_agent": a.ua},
        )

    def delete_events(self) -> None:
        f = self.factory
        a = getattr(self, "exec_actor", None)
        if a is None:
            self.cast.setdefault("delete_events", self.cast["exec_kube_system"])
            t = self.when(10 * 60 * _US)
            a = self._human("exec_kube_system", t)
        else:
            t = self.exec_end + int((60 + self.rnd.random() * 400) * _US)
        mark = len(f.buf)
        f.req(t, a, "list", "events", "kube-system", query="?limit=500")
        t = self.step(t, 10, 60)
        f.req(t, a, "deletecollection", "events", "kube-system")
        t = self.step(t, 3, 20)
        f.req(t, a, "list", "events", "kube-system", query="?limit=500")
        self.record(
            "delete_events", principal_of(a.user), mark, {"source_ips": a.ips, "user_agent": a.ua}
        )

    def webhook_registration(self) -> None:
        f, w = self.factory, self.world
        run = 9000 + self.rnd.randrange(900)
        key = "ASIA" + "".join(self.rnd.choices(_B32, k=16))
        a = _ci_actor(w, f"gha-{run}", self.outside_ip("193.142.146"), key)
        mark = len(f.buf)
        t = self.when(10 * 60 * _US, -5, night=True)
        f.req(t, a, "list", "mwc", query="?limit=500")
        name = "pod-policy-injector"
        hook = {
            "name": "inject.pod-policy.io",
            "clientConfig": {
                "url": "https://pod-policy.example.net:8443/mutate",
                "caBundle": f.b64(48),
            },
            "rules": [
                {
                    "operations": ["CREATE", "UPDATE"],
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "scope": "*",
                }
            ],
            "failurePolicy": "Ignore",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }
        body = {
            "kind": "MutatingWebhookConfiguration",
            "apiVersion": "admissionregistration.k8s.io/v1",
            "metadata": {"name": name, "creationTimestamp": None},
            "webhooks": [hook],
        }
        resp = {
            **body,
            "metadata": {
                "name": name,
                "uid": f.uuid(),
                "resourceVersion": "2920071",
                "creationTimestamp": f.ts(t)[:19] + "Z",
            },
        }
        t = self.step(t, 5, 40)
        f.req(
            t,
            a,
            "create",
            "mwc",
            None,
            name,
            code=201,
            request_object=body,
            response_object=resp,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        t = self.step(t, 1, 5)
        f.req(t, a, "get", "mwc", None, name)
        self.record(
            "webhook_registration",
            principal_of(a.user),
            mark,
            {"source_ips": a.ips, "user_agent": a.ua},
        )

    def permission_enumeration(self) -> None:
        f, w = self.factory, self.world
        pod = next(p for p in w.pods if p.app == "catalog-indexer")
        user = _sa_user("catalog", "default", f.uuid(), pod, w.nodes[pod.node])
        a = _Actor(
            user,
            [pod.ip],
            f"kubectl/v1.31.2 (linux/amd64) kubernetes/{_KUBECTL_GIT}",
            _allow(_DISCOVERY_REASON),
        )
        review = _allow(
            'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole '
            '"system:basic-user" to Group "system:authenticated"'
        )
        mark = len(f.buf)
        t = self.when(12 * 60 * _US)
        f.req(t, a, "get", uri="/api?timeout=32s", level="Metadata")
        t = self.step(t, 0.1, 0.5)
        f.req(t, a, "get", uri="/apis?timeout=32s", level="Metadata")
        for ns in ("catalog", "default", "kube-system", "payments"):
            t = self.step(t, 1, 6)
            body = {
                "kind": "SelfSubjectRulesReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": {"namespace": ns},
                "status": {"resourceRules": None, "nonResourceRules": None, "incomplete": False},
            }
            f.req(t, a, "create", "ssrr", code=201, request_object=body, ann=review)
        checks = [
            ("secrets", "get"),
            ("pods", "create"),
            ("pods/exec", "create"),
            ("clusterrolebindings", "create"),
            ("nodes", "list"),
            ("serviceaccounts/token", "create"),
        ]
        for res, verb in checks:
            t = self.step(t, 0.5, 3)
            resource, _, sub = res.partition("/")
            attrs: dict[str, Any] = {"namespace": "kube-system", "verb": verb, "resource": resource}
            if sub:
                attrs["subresource"] = sub
            body = {
                "kind": "SelfSubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": {"resourceAttributes": attrs},
                "status": {"allowed": False},
            }
            f.req(t, a, "create", "ssar", code=201, request_object=body, ann=review)
        targets = [
            "secrets",
            "pods",
            "deployments",
            "configmaps",
            "serviceaccounts",
            "roles",
            "rolebindings",
            "daemonsets",
        ]
        spaces = ["kube-system", "default", "catalog", "payments", "monitoring", "argocd"]
        for res in ("nodes", "namespaces", "clusterroles", "clusterrolebindings", "crds", "pvs"):
            t = self.step(t, 0.3, 4)
            f.req(t, a, "list", res, query="?limit=500", code=403)
        for ns in spaces:
            picks = self.rnd.sample(targets, 5)
            for res in picks:
                t = self.step(t, 0.3, 4)
                f.req(t, a, "list", res, ns, query="?limit=500", code=403)
        self.record(
            "permission_enumeration", a.username, mark, {"source_ips": a.ips, "user_agent": a.ua}
        )

    def privileged_workload(self) -> None:
        f, w = self.factory, self.world
        t = self.when(15 * 60 * _US)
        a = self._human("privileged_workload", t)
        mark = len(f.buf)
        node = w.nodes[int(self.rnd.random() * 6)]
        name = f"node-debugger-{f.suffix()}"
        container = {
            "name": "debugger",
            "image": "docker.io/library/alpine:3.20",
            "command": [
                "nsenter",
                "--target",
                "1",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--",
                "sh",
            ],
            "securityContext": {"privileged": True},
            "volumeMounts": [
                {"name": "host-root", "mountPath": "/host"},
                {"name": "docker-sock", "mountPath": "/var/run/docker.sock"},
            ],
            "stdin": True,
            "tty": True,
        }
        spec = {
            "hostPID": True,
            "hostNetwork": True,
            "hostIPC": True,
            "nodeName": node.name,
            "containers": [container],
            "volumes": [
                {"name": "host-root", "hostPath": {"path": "/", "type": ""}},
                {
                    "name": "docker-sock",
                    "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"},
                },
            ],
            "restartPolicy": "Never",
            "tolerations": [{"operator": "Exists"}],
        }
        body = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": None},
            "spec": spec,
            "status": {},
        }
        resp = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "namespace": "default",
                "uid": f.uuid(),
                "resourceVersion": "2920554",
                "creationTimestamp": f.ts(t)[:19] + "Z",
            },
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        }
        ann = {**a.allow, "pod-security.kubernetes.io/enforce-policy": "privileged:latest"}
        f.req(
            t,
            a,
            "create",
            "pods",
            "default",
            name,
            code=201,
            request_object=body,
            response_object=resp,
            ann=ann,
            query="?fieldManager=kubectl-run",
        )
        for _ in range(3):
            t = self.step(t, 1, 4)
            f.req(t, a, "get", "pods", "default", name)
        t = self.step(t, 1, 5)
        dur = int((120 + self.rnd.random() * 400) * _US)
        f.req(
            t,
            a,
            "create",
            "pods",
            "default",
            name,
            "attach",
            code=101,
            level="Request",
            query="?container=debugger&stdin=true&stdout=true&tty=true",
            dur=dur,
        )
        self.record(
            "privileged_workload",
            principal_of(a.user),
            mark,
            {"source_ips": a.ips, "user_agent": a.ua},
        )

    def token_for_privileged_sa(self) -> None:
        f = self.factory
        h = self.cast["token_for_privileged_sa"]
        t = self.when(10 * 60 * _US, h.tz, night=self.rnd.random() < 0.5)
        a = self._human("token_for_privileged_sa", t, new_ip=self.outside_ip("104.244.72"))
        mark = len(f.buf)
        f.req(t, a, "list", "serviceaccounts", "kube-system", query="?limit=500")
        sa = "clusterrole-aggregation-controller"
        t = self.step(t, 10, 60)
        f.req(t, a, "get", "serviceaccounts", "kube-system", sa)
        rq, rs = f.token_request(t, "kube-system", sa, 86400, None)
        rq["spec"]["expirationSeconds"] = 86400
        t = self.step(t, 5, 30)
        f.req(
            t,
            a,
            "create",
            "serviceaccounts",
            "kube-system",
            sa,
            "token",
            code=201,
            request_object=rq,
            response_object=rs,
        )
        self.record(
            "token_for_privileged_sa",
            principal_of(a.user),
            mark,
            {"source_ips": a.ips, "user_agent": a.ua},
        )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def default_end() -> datetime:
    """Now in UTC, rounded down to the minute (the demo simulates "two days ending now")."""
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"datetime must be timezone-aware (UTC), got naive {moment!r}")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


def _iso(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / _US, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class EventBatch:
    """One hour of events in ``stageTimestamp`` order.

    ``streams[i]`` is the index (into :attr:`Simulation.log_streams`) of the API-server
    instance that logged ``events[i]``: EKS writes one CloudWatch log stream per instance.
    """

    hour: datetime
    events: list[dict[str, Any]]
    times_us: list[int]
    streams: list[int]

    def lines(self) -> list[bytes]:
        """Each event as compact JSON (no trailing newline), as the API server writes it."""
        dumps = orjson.dumps
        return [dumps(e) for e in self.events]


class Simulation:
    """A configured simulation: labels up front, events on demand (each call starts afresh)."""

    def __init__(
        self,
        *,
        start: datetime,
        end: datetime,
        rate: float,
        seed: int,
        cluster: str,
        scenarios: Iterable[str] | None = None,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        for name, value in (("start", start), ("end", end)):
            if value.tzinfo is None:
                raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value!r}")
        self.start = start.astimezone(UTC)
        self.end = end.astimezone(UTC)
        self.start_us = _us(self.start)
        self.end_us = _us(self.end)
        if self.end_us <= self.start_us:
            raise ValueError(f"end ({end}) must be after start ({start})")
        self.rate = float(rate)
        self.seed = int(seed)
        self.cluster = cluster
        names = list(SCENARIOS) if scenarios is None else list(scenarios)
        unknown = sorted(set(names) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown scenarios {unknown}; known: {sorted(SCENARIOS)}")
        self._ss = np.random.SeedSequence(self.seed).spawn(2)
        self.world = _World(self.seed, cluster, self.start_us, self.end_us)
        self.log_streams: list[str] = list(self.world.streams)
        f = _Factory(
            self.world,
            np.random.default_rng(self._ss[0]),
            random.Random(f"attacks:{self.seed}"),
        )
        attacks = _Attacks(self.world, f, self.start_us, self.end_us)
        if names:
            attacks.run(names)
        self._attack_events = sorted(f.buf, key=_first)
        #: One dict per injected scenario (see the docstring of :mod:`detector.simulate.traffic`).
        self.labels: list[dict[str, Any]] = attacks.labels

    def labels_document(self) -> dict[str, Any]:
        """The ``labels.json`` document: the run's parameters and the scenarios."""
        return {
            "seed": self.seed,
            "start": _iso(self.start_us),
            "end": _iso(self.end_us),
            "cluster": self.cluster,
            "rate": self.rate,
            "account": ACCOUNT_ID,
            "region": REGION,
            "log_group": f"/aws/eks/{self.cluster}/cluster",
            "log_streams": self.log_streams,
            "scenarios": self.labels,
        }

    def iter_batches(self) -> Iterator[EventBatch]:
        """Yield the traffic one UTC hour at a time (the first and last may be partial).

        Memory stays bounded by one hour of events plus the long-running requests (watches,
        exec sessions) whose ``ResponseComplete`` falls in a later hour.
        """
        f = _Factory(
            self.world,
            np.random.default_rng(self._ss[1]),
            random.Random(f"benign:{self.seed}"),
        )
        benign = _Benign(self.world, f, self.rate)
        carry: list[tuple[int, dict[str, Any], int]] = []
        attacks = self._attack_events
        ai = 0
        t0 = self.start_us
        while t0 < self.end_us:
            t1 = min((t0 // _HOUR_US + 1) * _HOUR_US, self.end_us)
            f.buf = carry
            benign.run(t0, t1)
            while ai < len(attacks) and attacks[ai][0] < t1:
                f.buf.append(attacks[ai])
                ai += 1
            buf = f.buf
            buf.sort(key=_first)
            cut = bisect(buf, t1 - 1, key=_first)
            out, carry = buf[:cut], buf[cut:]
            if t1 == self.end_us:
                carry = []  # requests still running at the end are cut off, as in a real log
            yield EventBatch(
                hour=datetime.fromtimestamp(t0 // _HOUR_US * 3600, UTC),
                events=[e for _, e, _ in out],
                times_us=[ts for ts, _, _ in out],
                streams=[s for _, _, s in out],
            )
            t0 = t1

    def iter_events(self) -> Iterator[dict[str, Any]]:
        """Yield Event dicts in ``stageTimestamp`` order. Treat them as read-only: nested
        objects are shared between events."""
        for batch in self.iter_batches():
            yield from batch.events

    def iter_lines(self) -> Iterator[bytes]:
        """Yield each event as one compact JSON line (without the newline)."""
        for batch in self.iter_batches():
            yield from batch.lines()


def _first(item: tuple[int, Any, Any]) -> int:
    return item[0]


def simulate(
    *,
    start: datetime,
    end: datetime,
    rate: float = 2.0,
    seed: int = 0,
    cluster: str = "demo",
    scenarios: Iterable[str] | None = None,
) -> Simulation:
    """Configure a simulation of ``[start, end)`` at ``rate`` events per second on average.

    ``scenarios`` selects attack scenarios by name (default: all of :data:`SCENARIOS`;
    ``()`` for benign traffic only). Scenarios land in the last 24 hours of ranges of 36
    hours or more, else in the later three quarters of the range; the range must then be at
    least an hour long. Nothing is generated until events are iterated.
    """
    return Simulation(
        start=start, end=end, rate=rate, seed=seed, cluster=cluster, scenarios=scenarios
    )


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What :func:`write_simulation` wrote."""

    out_dir: Path
    start: datetime
    end: datetime
    seed: int
    rate: float
    cluster: str
    events: int
    scenarios: int
    files: tuple[Path, ...]
    bytes_written: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "start": self.start.isoformat().replace("+00:00", "Z"),
            "end": self.end.isoformat().replace("+00:00", "Z"),
            "seed": self.seed,
            "rate": self.rate,
            "cluster": self.cluster,
            "events": self.events,
            "scenarios": self.scenarios,
            "files": [str(p) for p in self.files],
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events / self.seconds) if self.seconds else None,
        }


def _gzip_writer(path: Path) -> gzip.GzipFile:
    """A gzip stream with no name and mtime 0 in its header, so output is byte-reproducible."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=path.open("wb"), compresslevel=6, mtime=0)


def _close_gzip(stream: gzip.GzipFile) -> None:
    raw = stream.fileobj
    stream.close()
    if raw is not None:
        raw.close()


def _event_id(ts_ms: int, rnd: random.Random) -> str:
    """A CloudWatch-Logs-like 56-digit event id (time-ordered prefix, random tail)."""
    return f"{ts_ms:013d}{rnd.getrandbits(142) % 10**43:043d}"


def _iso_ms(ts_ms: int) -> str:
    s, ms = divmod(ts_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{ms:03d}Z"


class _Writer:
    files: list[Path]

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        """Take one hour of events; ``lines`` are their JSON texts (None: ndjson-only run)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _NdjsonWriter(_Writer):
    """``audit.log``: what ``--audit-log-path`` produces on a self-managed API server."""

    def __init__(self, out: Path, gz: bool) -> None:
        path = out / ("audit.log.gz" if gz else "audit.log")
        self.gz = _gzip_writer(path) if gz else None
        # Many small writes into a large buffer: serializing and writing event by event is
        # about 3x faster than building a list of lines and joining it (allocator churn).
        self.fh: BinaryIO = io.BufferedWriter(self.gz or path.open("wb"), 1 << 20)  # type: ignore[arg-type]
        self.files = [path]

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        write = self.fh.write
        if lines is None:
            dumps, nl = orjson.dumps, orjson.OPT_APPEND_NEWLINE
            for e in batch.events:
                write(dumps(e, option=nl))
        else:
            for line in lines:
                write(line)
                write(b"\n")

    def close(self) -> None:
        self.fh.close()  # closes the gzip stream (writing its trailer) or the file
        if self.gz is not None and self.gz.fileobj is not None:
            self.gz.fileobj.close()


class _CloudWatchWriter(_Writer):
    """Pages of ``aws logs filter-log-events --interleaved`` output, 10,000 events each
    (``page-0001.json`` ...; ``.json.gz`` when ``gz``: same JSON, gzip-compressed)."""

    PAGE = 10_000

    def __init__(self, out: Path, streams: list[str], seed: int, gz: bool) -> None:
        self.dir = out / "cloudwatch"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.streams = streams
        self.gz = gz
        self.page: list[bytes] = []
        self.files = []
        self.rnd = random.Random(f"cloudwatch:{seed}")

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        assert lines is not None
        dumps = orjson.dumps
        for line, ts, s, eid in zip(lines, batch.times_us, batch.streams, ids, strict=True):
            if len(self.page) >= self.PAGE:
                self._flush(last=False)
            ms = ts // 1000
            self.page.append(
                dumps(
                    {
                        "logStreamName": self.streams[s],
                        "timestamp": ms,
                        "message": line.decode(),
                        "ingestionTime": ms + 600 + self.rnd.randrange(4000),
                        "eventId": eid,
                    }
                )
            )

    def _flush(self, last: bool) -> None:
        n = len(self.files) + 1
        path = self.dir / (f"page-{n:04d}.json" + (".gz" if self.gz else ""))
        searched = b",".join(
            orjson.dumps({"logStreamName": s, "searchedCompletely": True}) for s in self.streams
        )
        tail = b"" if last else b',"nextToken":"' + f"Bf{n:06d}{'A' * 48}".encode() + b'"'
        doc = b"".join(
            (
                b'{"events":[',
                b",".join(self.page),
                b'],"searchedLogStreams":[' + searched + b"]" + tail + b"}\n",
            )
        )
        path.write_bytes(gzip.compress(doc, compresslevel=6, mtime=0) if self.gz else doc)
        self.files.append(path)
        self.page = []

    def close(self) -> None:
        self._flush(last=True)  # the last page carries no nextToken (may be empty)


class _ExportWriter(_Writer):
    """CloudWatch Logs export-task objects: ``export/<task>/<stream>/000000.gz`` ..., each
    line ``<ISO-8601 ms timestamp> <message>``, sorted by time within a stream."""

    CHUNK = 10_000

    def __init__(self, out: Path, streams: list[str], task: str) -> None:
        self.dir = out / "export" / task
        self.streams = streams
        self.open: dict[int, tuple[gzip.GzipFile, int, int]] = {}  # stream -> (fh, lines, part)
        self.files = []

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        assert lines is not None
        for line, ts, s in zip(lines, batch.times_us, batch.streams, strict=True):
            fh, n, part = self.open.get(s, (None, 0, 0))
            if fh is None or n >= self.CHUNK:
                if fh is not None:
                    _close_gzip(fh)
                    part += 1
                d = self.dir / self.streams[s]
                d.mkdir(parents=True, exist_ok=True)
                path = d / f"{part:06d}.gz"
                self.files.append(path)
                fh, n = _gzip_writer(path), 0
            fh.write(_iso_ms(ts // 1000).encode() + b" " + line + b"\n")
            self.open[s] = (fh, n + 1, part)

    def close(self) -> None:
        for fh, _, _ in self.open.values():
            _close_gzip(fh)


class _FirehoseWriter(_Writer):
    """CloudWatch Logs subscription records as Firehose delivers them to S3.

    Each S3 object covers a 300 s buffer and is the concatenation of the records'
    gzip members (CloudWatch gzips every record; Firehose concatenates them as-is), so
    decompressing gives JSON objects back to back with no newline between them. The very
    first object starts with the CONTROL_MESSAGE CloudWatch sends when the subscription is
    created.
    """

    BUFFER_US = 300 * _US
    RECORD = 250  # log events per DATA_MESSAGE record at most

    def __init__(self, out: Path, streams: list[str], cluster: str, seed: int) -> None:
        self.out = out / "firehose"
        self.streams = streams
        self.cluster = cluster
        self.rnd = random.Random(f"firehose:{seed}")
        self.window: int | None = None
        self.pending: list[tuple[int, int, bytes, str]] = []  # (ts_us, stream, line, id)
        self.files = []
        self.first = True

    def add(self, batch: EventBatch, lines: list[bytes] | None, ids: list[str]) -> None:
        assert lines is not None
        for line, ts, s, eid in zip(lines, batch.times_us, batch.streams, ids, strict=True):
            w = ts // self.BUFFER_US
            if self.window is not None and w != self.window:
                self._flush()
            self.window = w
            self.pending.append((ts, s, line, eid))

    def _record(self, stream: int, items: list[tuple[int, int, bytes, str]]) -> bytes:
        doc = {
            "messageType": "DATA_MESSAGE",
            "owner": ACCOUNT_ID,
            "logGroup": f"/aws/eks/{self.cluster}/cluster",
            "logStream": self.streams[stream],
            "subscriptionFilters": [f"eks-audit-{self.cluster}-to-firehose"],
            "logEvents": [
                {"id": eid, "timestamp": ts // 1000, "message": line.decode()}
                for ts, _, line, eid in items
            ],
        }
        return gzip.compress(orjson.dumps(doc), compresslevel=6, mtime=0)

    def _flush(self) -> None:
        if not self.pending:
            return
        first_ts = self.pending[0][0]
        parts: list[bytes] = []
        if self.first:
            control = {
                "messageType": "CONTROL_MESSAGE",
                "owner": "CloudwatchLogs",
                "logGroup": "",
                "logStream": "",
                "subscriptionFilters": [],
                "logEvents": [
                    {
                        "id": "",
                        "timestamp": first_ts // 1000,
                        "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose.",
                    }
                ],
            }
            parts.append(gzip.compress(orjson.dumps(control), compresslevel=6, mtime=0))
            self.first = False
        by_stream: dict[int, list[tuple[int, int, bytes, str]]] = {}
        for item in self.pending:
            by_stream.setdefault(item[1], []).append(item)
        chunks = []
        for s, items in by_stream.items():
            for i in range(0, len(items), self.RECORD):
                chunks.append((items[i][0], s, items[i : i + self.RECORD]))
        chunks.sort(key=lambda chunk: (chunk[0], chunk[1]))
        parts.extend(self._record(s, items) for _, s, items in chunks)
        arrival = first_ts + self.BUFFER_US
        tm = time.gmtime(arrival // _US)
        d = self.out / time.strftime("%Y/%m/%d/%H", tm)
        d.mkdir(parents=True, exist_ok=True)
        uid = "".join(self.rnd.choices(_HEX, k=32))
        uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:]}"
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", tm)
        path = d / f"eks-audit-{self.cluster}-1-{stamp}-{uid}.gz"
        path.write_bytes(b"".join(parts))
        self.files.append(path)
        self.pending = []

    def close(self) -> None:
        self._flush()


def write_simulation(
    out_dir: Path,
    *,
    days: float = 2,
    rate: float = 2.0,
    seed: int = 0,
    end: datetime | None = None,
    cluster: str = "demo",
    formats: Iterable[str] = ("ndjson",),
    gzip: bool = False,
    scenarios: Iterable[str] | None = None,
) -> SimulationSummary:
    """Simulate ``days`` ending at ``end`` (default: now, to the minute) and write it.

    Always writes ``out_dir/labels.json``. Per format:

    * ``ndjson``: ``audit.log`` (``audit.log.gz`` with ``gzip=True``), one Event per line;
    * ``cloudwatch-json``: ``cloudwatch/page-0001.json`` ..., ``filter-log-events`` pages
      (``.json.gz`` with ``gzip=True``, to keep checked-in samples small);
    * ``export-gz``: ``export/<task-id>/<log stream>/000000.gz`` ..., export-task objects;
    * ``firehose``: ``firehose/YYYY/MM/DD/HH/<delivery stream>-1-<time>-<uuid>.gz``.

    All formats carry the same events; the same arguments give the same bytes.
    """
    fmts = list(dict.fromkeys(formats))
    bad = [x for x in fmts if x not in FORMATS]
    if bad:
        raise ValueError(f"unknown formats {bad}; known: {list(FORMATS)}")
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    began = time.perf_counter()
    end = default_end() if end is None else end.astimezone(UTC)
    start = end - timedelta(days=days)
    sim = simulate(start=start, end=end, rate=rate, seed=seed, cluster=cluster, scenarios=scenarios)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_path = out / "labels.json"
    labels_path.write_bytes(orjson.dumps(sim.labels_document(), option=orjson.OPT_INDENT_2) + b"\n")
    writers: list[_Writer] = []
    for fmt in fmts:
        if fmt == "ndjson":
            writers.append(_NdjsonWriter(out, gzip))
        elif fmt == "cloudwatch-json":
            writers.append(_CloudWatchWriter(out, sim.log_streams, sim.seed, gzip))
        elif fmt == "export-gz":
            task = _Factory(
                sim.world, np.random.default_rng(0), random.Random(f"export:{seed}")
            ).uuid()
            writers.append(_ExportWriter(out, sim.log_streams, task))
        else:
            writers.append(_FirehoseWriter(out, sim.log_streams, cluster, sim.seed))
    others = any(not isinstance(w, _NdjsonWriter) for w in writers)
    id_rnd = random.Random(f"eventid:{seed}")
    count = 0
    try:
        for batch in sim.iter_batches():
            # CloudWatch-shaped formats embed each line and need CloudWatch event ids; the
            # plain audit.log path serializes straight into its buffer instead.
            lines = batch.lines() if others else None
            ids = [_event_id(ts // 1000, id_rnd) for ts in batch.times_us] if others else []
            for w in writers:
                w.add(batch, lines, ids)
            count += len(batch.events)
    finally:
        for w in writers:
            w.close()
    files = [labels_path] + [p for w in writers for p in w.files]
    return SimulationSummary(
        out_dir=out,
        start=sim.start,
        end=sim.end,
        seed=sim.seed,
        rate=sim.rate,
        cluster=cluster,
        events=count,
        scenarios=len(sim.labels),
        files=tuple(files),
        bytes_written=sum(p.stat().st_size for p in files),
        seconds=time.perf_counter() - began,
    )


if __name__ == "__main__":  # pragma: no cover - a quick manual check
    import sys

    s = write_simulation(Path(sys.argv[1] if len(sys.argv) > 1 else "sim-out"))
    print(orjson.dumps(s.as_dict(), option=orjson.OPT_INDENT_2).decode())
