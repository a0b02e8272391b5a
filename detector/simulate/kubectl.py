"""What one kubectl command of a human engineer logs, command by command.

Why a module of its own: the human command mix is the part of benign traffic closest to
the attacks (403s, execs, role bindings, tokens), so it is worth reading and tuning on its
own. Each command takes ``(traffic, human, actor, at_us, namespace)`` and logs its
requests through ``traffic.factory``; the weighted tables at the end say how often each
runs for developers and for admins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detector.simulate.actors import ACCOUNT_ID, DISCOVERY_REASON, US, Actor, allow_annotations
from detector.simulate.world import APP_NAMESPACES, APPS, Human, Pod

if TYPE_CHECKING:
    from detector.simulate.benign import BenignTraffic


def rolebinding_body(
    name: str, namespace: str | None, role_kind: str, role: str, subjects: list[dict[str, str]]
) -> dict[str, Any]:
    """A RoleBinding (``namespace`` given) or ClusterRoleBinding request body, as kubectl
    sends it; attacks bind roles with the same shape as people do."""
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
# Each takes (traffic, human, actor, at_us, namespace) and logs what one kubectl command logs.


def pick_pod(traffic: BenignTraffic, namespace: str) -> Pod:
    """A random pod in ``namespace`` (the one a command is about)."""
    pods = traffic.world.pods_by_ns[namespace]
    return pods[int(traffic.rnd.random() * len(pods))]


def get_pods(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "pods", namespace, query="?limit=500")


def describe_pod(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    pod = pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, pod.name)
    q = (
        f"?fieldSelector=involvedObject.name%3D{pod.name}%2CinvolvedObject.namespace%3D{namespace}"
        f"%2CinvolvedObject.uid%3D{pod.uid}&limit=500"
    )
    traffic.factory.req(at_us + 60_000, actor, "list", "events", namespace, query=q)


def get_logs(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    pod = pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, pod.name)
    traffic.factory.req(
        at_us + 40_000,
        actor,
        "get",
        "pods",
        namespace,
        pod.name,
        "log",
        query=f"?container={pod.app}&tailLines=200",
        lat=int(80_000 + traffic.rnd.random() * 900_000),
    )


def get_deployments(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "deployments", namespace, query="?limit=500")


def get_services(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    res = "services" if traffic.rnd.random() < 0.6 else "ingresses"
    traffic.factory.req(at_us, actor, "list", res, namespace, query="?limit=500")


def get_configmaps(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    app = APPS[namespace][0][0]
    traffic.factory.req(at_us, actor, "get", "configmaps", namespace, f"{app}-config")


def get_nodes(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "nodes", query="?limit=500")


def top_pods(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "podmetrics", namespace)


def get_events(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "events", namespace, query="?limit=500")


def watch_pods(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    factory = traffic.factory
    factory.req(at_us, actor, "list", "pods", namespace, query="?limit=500")
    dur = int((10 + traffic.rnd.random() * 290) * US)
    factory.req(
        at_us + 90_000,
        actor,
        "watch",
        "pods",
        namespace,
        query=f"?resourceVersion={factory.rv(at_us)}&watch=true",
        dur=dur,
    )


def rollout_restart(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces and human.kind == "developer":
        namespace = human.namespaces[0]
    app = APPS[namespace][0][0]
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


def exec_shell(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    pod = pick_pod(traffic, namespace)
    cmd = ("sh", "bash", "env", "printenv")[int(traffic.rnd.random() * 4)]
    tty = (
        "&stdin=true&stdout=true&tty=true" if cmd in ("sh", "bash") else "&stderr=true&stdout=true"
    )
    dur = int((2 + traffic.rnd.random() * (600 if cmd in ("sh", "bash") else 3)) * US)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, pod.name)
    traffic.factory.req(
        at_us + 70_000,
        actor,
        "create",
        "pods",
        namespace,
        pod.name,
        "exec",
        code=101,
        query=f"?command={cmd}&container={pod.app}{tty}",
        dur=dur,
    )


def port_forward(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    pod = pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "get", "pods", namespace, pod.name)
    dur = int((30 + traffic.rnd.random() * 1200) * US)
    traffic.factory.req(
        at_us + 70_000,
        actor,
        "create",
        "pods",
        namespace,
        pod.name,
        "portforward",
        code=101,
        dur=dur,
    )


def get_missing(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    app = APPS[namespace][0][0]
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


def get_forbidden(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    other = (
        "kube-system"
        if traffic.rnd.random() < 0.5
        else APP_NAMESPACES[int(traffic.rnd.random() * 6)]
    )
    if other in human.namespaces:
        other = "kube-system"
    traffic.factory.req(at_us, actor, "list", "secrets", other, code=403, query="?limit=500")


def discovery(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    ann = allow_annotations(DISCOVERY_REASON)
    traffic.factory.req(at_us, actor, "get", uri="/api?timeout=32s", level="Metadata", ann=ann)
    traffic.factory.req(
        at_us + 40_000, actor, "get", uri="/apis?timeout=32s", level="Metadata", ann=ann
    )


def peek_other_namespace(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    other = APP_NAMESPACES[int(traffic.rnd.random() * len(APP_NAMESPACES))]
    traffic.factory.req(at_us, actor, "list", "pods", other, query="?limit=500")


def apply_configmap(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    app = APPS[namespace][0][0]
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


def create_rolebinding(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    """Rare but benign: grant a colleague view in one's own namespace."""
    namespace = human.namespaces[0]
    mate = traffic.world.humans[int(traffic.rnd.random() * len(traffic.world.humans))]
    subject = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/developer/{mate.session}"
    body = rolebinding_body(
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


def get_secret(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    traffic.factory.req(
        at_us, actor, "get", "secrets", namespace, f"{APPS[namespace][0][0]}-secrets"
    )


def auth_can_i(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
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


def delete_pod(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    if namespace not in human.namespaces:
        namespace = human.namespaces[0]
    pod = pick_pod(traffic, namespace)
    traffic.factory.req(at_us, actor, "delete", "pods", namespace, pod.name)


def look_at_kube_system(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "pods", "kube-system", query="?limit=500")
    if traffic.rnd.random() < 0.5:
        pod = pick_pod(traffic, "kube-system")
        traffic.factory.req(
            at_us + 2 * US,
            actor,
            "get",
            "pods",
            "kube-system",
            pod.name,
            "log",
            query=f"?container={pod.app}&tailLines=100",
        )


def get_all_pods(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    traffic.factory.req(at_us, actor, "list", "pods", query="?limit=500")


def impersonate(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
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


def create_token(
    traffic: BenignTraffic, human: Human, actor: Actor, at_us: int, namespace: str
) -> None:
    """Rare but benign: an admin mints a short token for an app's own service account."""
    namespace = human.namespaces[0]
    sa = APPS[namespace][0][0]
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
COMMON_COMMANDS = [
    (25, 1, get_pods),
    (12, 2, describe_pod),
    (15, 2, get_logs),
    (10, 1, get_deployments),
    (6, 1, get_services),
    (5, 1, get_configmaps),
    (4, 1, top_pods),
    (4, 1, get_events),
    (3, 3, watch_pods),
    (2, 2, rollout_restart),
    (2, 3, exec_shell),
    (1, 3, port_forward),
    (3, 1, get_missing),
    (4, 2, discovery),
    (4, 1, peek_other_namespace),
    (1, 2, apply_configmap),
    (0.25, 1, create_rolebinding),
    (1, 1, get_secret),
    (0.5, 1, auth_can_i),
    (1, 1, delete_pod),
]
DEVELOPER_COMMANDS = [*COMMON_COMMANDS, (2, 1, get_forbidden), (1, 1, get_nodes)]
ADMIN_COMMANDS = [
    *COMMON_COMMANDS,
    (5, 1, get_nodes),
    (3, 1.5, look_at_kube_system),
    (2, 1, get_all_pods),
    (0.3, 1, impersonate),
    (0.15, 1, create_token),
]
