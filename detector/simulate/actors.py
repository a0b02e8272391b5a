"""Who and what the simulated requests are about: API resources, users and actors.

Why a module of its own: every other part of the simulator (the world, the event factory,
benign traffic and the attacks) builds ``user`` objects and ``objectRef``s; keeping the
resource table, the IAM/service-account user shapes and the control-plane actors in one
place makes sure they all log the same identity the same way, as EKS does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detector.simulate.world import Node, Pod

#: The AWS account all simulated IAM identities live in (documentation range).
ACCOUNT_ID = "111122223333"
#: The region of the simulated cluster; node names end in ``.ec2.internal`` there.
REGION = "us-east-1"

#: Version strings the control plane and kubectl put in their user agents.
K8S_GIT = "7f9249a"
EKS_VERSION = f"v1.31.2-eks-{K8S_GIT}"
KUBECTL_GIT = "5864a46"
# Times are integer epoch microseconds throughout: exact, and cheap to compare and sort.
US = 1_000_000
HOUR_US = 3600 * US
DAY_US = 24 * HOUR_US
#: Pod-name suffix alphabet of Kubernetes' rand.String (no vowels, no confusable digits).
POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
HEX_DIGITS = "0123456789abcdef"
BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

# Shared, never-mutated sub-objects (orjson serializes shared objects fine).
SUCCESS_STATUS = {
    200: {"metadata": {}, "code": 200},
    201: {"metadata": {}, "code": 201},
    101: {"metadata": {}, "code": 101},
}
UNAUTHORIZED_STATUS = {
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}
FORBID = {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}
ALLOW_NODE = {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}
DISCOVERY_REASON = (
    'RBAC: allowed by ClusterRoleBinding "system:discovery" of ClusterRole "system:discovery" '
    'to Group "system:authenticated"'
)
PUBLIC_INFO_REASON = (
    'RBAC: allowed by ClusterRoleBinding "system:public-info-viewer" of ClusterRole '
    '"system:public-info-viewer" to Group "system:unauthenticated"'
)


def allow_annotations(reason: str) -> dict[str, str]:
    """The annotations of a request RBAC allowed, with the binding that allowed it."""
    return {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason}


# --------------------------------------------------------------------------------------------
# Resources and identities
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resource:
    """An API resource: enough to build ``requestURI`` and ``objectRef`` like the server."""

    resource: str
    group: str
    version: str
    namespaced: bool

    @property
    def base(self) -> str:
        return "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"


def _resource(
    resource: str, group: str = "", version: str = "v1", namespaced: bool = True
) -> Resource:
    """A :class:`Resource`; the core group (``/api/v1``) unless ``group`` is given."""
    return Resource(resource, group, version, namespaced)


RESOURCES = {
    "pods": _resource("pods"),
    "configmaps": _resource("configmaps"),
    "secrets": _resource("secrets"),
    "services": _resource("services"),
    "endpoints": _resource("endpoints"),
    "events": _resource("events"),
    "serviceaccounts": _resource("serviceaccounts"),
    "pvcs": _resource("persistentvolumeclaims"),
    "namespaces": _resource("namespaces", namespaced=False),
    "nodes": _resource("nodes", namespaced=False),
    "pvs": _resource("persistentvolumes", namespaced=False),
    "deployments": _resource("deployments", "apps"),
    "replicasets": _resource("replicasets", "apps"),
    "daemonsets": _resource("daemonsets", "apps"),
    "statefulsets": _resource("statefulsets", "apps"),
    "jobs": _resource("jobs", "batch"),
    "cronjobs": _resource("cronjobs", "batch"),
    "leases": _resource("leases", "coordination.k8s.io"),
    "endpointslices": _resource("endpointslices", "discovery.k8s.io"),
    "ingresses": _resource("ingresses", "networking.k8s.io"),
    "networkpolicies": _resource("networkpolicies", "networking.k8s.io"),
    "roles": _resource("roles", "rbac.authorization.k8s.io"),
    "rolebindings": _resource("rolebindings", "rbac.authorization.k8s.io"),
    "clusterroles": _resource("clusterroles", "rbac.authorization.k8s.io", namespaced=False),
    "clusterrolebindings": _resource(
        "clusterrolebindings", "rbac.authorization.k8s.io", namespaced=False
    ),
    "csinodes": _resource("csinodes", "storage.k8s.io", namespaced=False),
    "volumeattachments": _resource("volumeattachments", "storage.k8s.io", namespaced=False),
    "csrs": _resource("certificatesigningrequests", "certificates.k8s.io", namespaced=False),
    "mwc": _resource(
        "mutatingwebhookconfigurations", "admissionregistration.k8s.io", namespaced=False
    ),
    "vwc": _resource(
        "validatingwebhookconfigurations", "admissionregistration.k8s.io", namespaced=False
    ),
    "ssar": _resource("selfsubjectaccessreviews", "authorization.k8s.io", namespaced=False),
    "ssrr": _resource("selfsubjectrulesreviews", "authorization.k8s.io", namespaced=False),
    "tokenreviews": _resource("tokenreviews", "authentication.k8s.io", namespaced=False),
    "podmetrics": _resource("pods", "metrics.k8s.io", "v1beta1"),
    "nodemetrics": _resource("nodes", "metrics.k8s.io", "v1beta1", namespaced=False),
    "applications": _resource("applications", "argoproj.io", "v1alpha1"),
    "hpas": _resource("horizontalpodautoscalers", "autoscaling", "v2"),
    "pdbs": _resource("poddisruptionbudgets", "policy"),
    "crds": _resource("customresourcedefinitions", "apiextensions.k8s.io", namespaced=False),
    "eniconfigs": _resource("eniconfigs", "crd.k8s.amazonaws.com", "v1alpha1", namespaced=False),
    "certificates": _resource("certificates", "cert-manager.io"),
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
class Actor:
    """Who sends a request: the Event ``user`` object plus where and how it calls from."""

    user: dict[str, Any]
    ips: list[str]
    ua: str
    allow: dict[str, str]

    @property
    def username(self) -> str:
        return self.user.get("username", "")


def service_account_user(
    namespace: str, name: str, uid: str, pod: Pod | None = None, node: Node | None = None
) -> dict[str, Any]:
    """A service-account user; with ``pod`` and ``node``, the bound-token extras
    Kubernetes >= 1.30 adds."""
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


def iam_user(
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


def controller_actor(controller: str) -> Actor:
    """The service account of one kube-controller-manager controller (created once,
    shared: controllers run with per-controller credentials)."""
    actor = _CONTROLLER_ACTORS.get(controller)
    if actor is None:
        user = {
            "username": f"system:serviceaccount:kube-system:{controller}",
            "uid": stable_uuid(controller),
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
            f"kube-controller-manager/{EKS_VERSION} (linux/amd64) kubernetes/{K8S_GIT}/"
            f"system:serviceaccount:kube-system:{controller}"
        )
        actor = _CONTROLLER_ACTORS[controller] = Actor(
            user, ["10.0.137.24"], ua, allow_annotations(reason)
        )
    return actor


def stable_uuid(name: str) -> str:
    """A UUID derived from ``name`` alone: control-plane identities keep their uid across
    seeds, as they do across restarts of a real cluster."""
    h = random.Random(f"uid:{name}").getrandbits(128)
    s = f"{h:032x}"
    return f"{s[:8]}-{s[8:12]}-4{s[13:16]}-a{s[17:20]}-{s[20:]}"


def system_actor(username: str, ip: str, ua: str, reason: str = "") -> Actor:
    """A control-plane component authenticated by certificate (no IAM session)."""
    user = {"username": username, "uid": stable_uuid(username), "groups": ["system:authenticated"]}
    return Actor(user, [ip], ua, allow_annotations(reason))


_CONTROLLER_ACTORS: dict[str, Actor] = {}
CONTROLLER_MANAGER = system_actor(
    "system:kube-controller-manager",
    "10.0.137.24",
    f"kube-controller-manager/{EKS_VERSION} (linux/amd64) kubernetes/{K8S_GIT}/shared-informers",
    'RBAC: allowed by ClusterRoleBinding "system:kube-controller-manager" of ClusterRole '
    '"system:kube-controller-manager" to User "system:kube-controller-manager"',
)
SCHEDULER = system_actor(
    "system:kube-scheduler",
    "10.0.137.24",
    f"kube-scheduler/{EKS_VERSION} (linux/amd64) kubernetes/{K8S_GIT}/scheduler",
    'RBAC: allowed by ClusterRoleBinding "system:kube-scheduler" of ClusterRole '
    '"system:kube-scheduler" to User "system:kube-scheduler"',
)
CLOUD_CONTROLLER_MANAGER = system_actor(
    "eks:cloud-controller-manager",
    "10.0.137.24",
    "aws-cloud-controller-manager/v1.31.0 (linux/amd64) kubernetes/$Format",
    'RBAC: allowed by ClusterRoleBinding "eks:cloud-controller-manager" of ClusterRole '
    '"eks:cloud-controller-manager" to User "eks:cloud-controller-manager"',
)


def eks_actor(name: str, ua: str) -> Actor:
    """An ``eks:*`` component running inside the managed control plane (loopback address)."""
    return system_actor(
        name,
        "127.0.0.1",
        ua,
        f'RBAC: allowed by ClusterRoleBinding "{name}" of ClusterRole "{name}" to User "{name}"',
    )


EKS_ACTORS = {
    "eks:cloud-controller-manager": CLOUD_CONTROLLER_MANAGER,
    "eks:node-manager": eks_actor("eks:node-manager", "eks-node-manager/v0.1.0 (linux/amd64)"),
    "eks:certificate-controller": eks_actor(
        "eks:certificate-controller",
        "eks-certificates-controller/v0.0.0 (linux/amd64) kubernetes/$Format",
    ),
    "eks:authenticator": eks_actor("eks:authenticator", "aws-iam-authenticator/v0.6.26"),
    "eks:k8s-metrics": eks_actor("eks:k8s-metrics", "eks-k8s-metrics/v0.0.0 (linux/amd64)"),
    "eks:addon-manager": eks_actor(
        "eks:addon-manager", "eks-addon-manager/v0.0.0 (linux/amd64) kubernetes/$Format"
    ),
}
