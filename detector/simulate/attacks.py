"""Attack scenarios: what each of the ten attacks logs, and the labels that say so.

Why: evaluation needs ground truth. Each scenario is injected once into its own event
factory (so adding one never shifts the benign traffic's random draws), and its label
records the audit IDs, principal, time span and MITRE technique it produced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from detector.simulate.actors import (
    ACCOUNT_ID,
    BASE32_ALPHABET,
    DAY_US,
    DISCOVERY_REASON,
    HOUR_US,
    KUBECTL_GIT,
    PUBLIC_INFO_REASON,
    US,
    Actor,
    allow_annotations,
    principal_of,
    service_account_user,
)
from detector.simulate.benign import ci_actor
from detector.simulate.factory import EventFactory
from detector.simulate.kubectl import rolebinding_body
from detector.simulate.world import ALL_NAMESPACES, World

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


# --------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------


class AttackScenarios:
    """Plans the ten scenarios and logs their events into their own factory."""

    def __init__(self, world: World, factory: EventFactory, start_us: int, end_us: int) -> None:
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
        lo = self.end_us - DAY_US if span >= 36 * HOUR_US else self.start_us + span // 4
        hi = self.end_us - min(45 * 60 * US, span // 8) - duration_us
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
                at_us = lo + int(rnd.random() * (hi - lo))
                hour = ((at_us + utc_offset * HOUR_US) % DAY_US) // HOUR_US
                if hour < 6 or hour >= 22:
                    return at_us
        return lo + int(rnd.random() * (hi - lo))

    def step(self, at_us: int, low: float, high: float) -> int:
        return at_us + int((low + self.rnd.random() * (high - low)) * US)

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
        admins = [human for human in humans if human.kind == "admin"]
        devs = [
            human
            for human in humans
            if human.kind == "developer" and human.join_us <= self.start_us
        ]
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
    ) -> Actor:
        """The cast human's identity at ``t`` with fresh credentials; the day's usual address
        unless ``new_ip`` is given."""
        human = self.cast[name]
        key = "ASIA" + "".join(self.rnd.choices(BASE32_ALPHABET, k=16))
        if new_ip is None:
            day = (at_us + human.tz * HOUR_US) // DAY_US
            _, usual = self.world.human_actor(human, day)
            ips = [usual.ips[0]]
        else:
            ips = [new_ip]
        return self.world.make_human_actor(human, key, ips, ua)

    # -- the scenarios ------------------------------------------------------------------------
    def stolen_sa_token(self) -> None:
        factory, world = self.factory, self.world
        pod = next(p for p in world.pods if p.app == "payments-api")
        real = world.pod_actor[pod.name]
        actor = Actor(
            real.user, [self.outside_ip("185.220.101")], "python-requests/2.32.3", real.allow
        )
        mark = len(factory.buf)
        at_us = self.when(15 * 60 * US)
        disc = allow_annotations(DISCOVERY_REASON)
        factory.req(at_us, actor, "get", uri="/api", level="Metadata", ann=disc)
        at_us = self.step(at_us, 0.5, 3)
        factory.req(at_us, actor, "get", uri="/apis", level="Metadata", ann=disc)
        at_us = self.step(at_us, 3, 20)
        factory.req(at_us, actor, "list", "secrets", "payments")
        for name in ("payments-api-secrets", "payments-worker-secrets", "payments-db"):
            at_us = self.step(at_us, 1, 8)
            factory.req(
                at_us,
                actor,
                "get",
                "secrets",
                "payments",
                name,
                code=404 if name == "payments-db" else 200,
            )
        others = [ns for ns in ALL_NAMESPACES if ns not in ("payments", "kube-node-lease")]
        self.rnd.shuffle(others)
        for ns in others:
            at_us = self.step(at_us, 2, 25)
            if ns == "checkout":
                factory.req(at_us, actor, "list", "secrets", ns)
                at_us = self.step(at_us, 1, 5)
                factory.req(at_us, actor, "get", "secrets", ns, "checkout-api-secrets")
            else:
                factory.req(at_us, actor, "list", "secrets", ns, code=403)
        at_us = self.step(at_us, 2, 20)
        factory.req(at_us, actor, "list", "secrets", code=403)
        at_us = self.step(at_us, 1, 10)
        factory.req(at_us, actor, "list", "namespaces", code=403)
        self.record(
            "stolen_sa_token",
            actor.username,
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def cluster_admin_binding(self) -> None:
        factory = self.factory
        human = self.cast["cluster_admin_binding"]
        at_us = self.when(10 * 60 * US, human.tz, night=True)
        actor = self._human(
            "cluster_admin_binding",
            at_us,
            new_ip=self.outside_ip("91.219.236"),
            ua=f"kubectl/v1.31.2 (linux/amd64) kubernetes/{KUBECTL_GIT}",
        )
        reason = allow_annotations(
            'RBAC: allowed by ClusterRoleBinding "developers-rbac" of ClusterRole "rbac-manager" '
            'to Group "developers"'
        )
        mark = len(factory.buf)
        factory.req(at_us, actor, "list", "clusterrolebindings", query="?limit=500", ann=reason)
        at_us = self.step(at_us, 5, 60)
        factory.req(at_us, actor, "get", "clusterroles", None, "cluster-admin", ann=reason)
        name = f"{human.session}-cluster-admin"
        subject = actor.username
        body = rolebinding_body(
            name,
            None,
            "ClusterRole",
            "cluster-admin",
            [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": subject}],
        )
        at_us = self.step(at_us, 20, 90)
        resp = rolebinding_body(name, None, "ClusterRole", "cluster-admin", body["subjects"])
        resp["metadata"] = {
            "name": name,
            "uid": factory.uuid(),
            "resourceVersion": "2918811",
            "creationTimestamp": factory.ts(at_us)[:19] + "Z",
        }
        factory.req(
            at_us,
            actor,
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
        admin = allow_annotations(
            f'RBAC: allowed by ClusterRoleBinding "{name}" of ClusterRole "cluster-admin" to '
            f'User "{subject}"'
        )
        at_us = self.step(at_us, 10, 40)
        factory.req(at_us, actor, "list", "secrets", "kube-system", query="?limit=500", ann=admin)
        at_us = self.step(at_us, 5, 30)
        factory.req(at_us, actor, "list", "pods", query="?limit=500", ann=admin)
        self.record(
            "cluster_admin_binding",
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def aws_auth_edit(self) -> None:
        factory, world = self.factory, self.world
        human = self.cast["aws_auth_edit"]
        at_us = self.when(10 * 60 * US, human.tz, night=True)
        actor = self._human("aws_auth_edit", at_us)
        mark = len(factory.buf)
        factory.req(at_us, actor, "get", "configmaps", "kube-system", "aws-auth")
        roles = (
            f"- rolearn: arn:aws:iam::{ACCOUNT_ID}:role/{world.node_role}\n"
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
            "uid": factory.uuid(),
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
        at_us = self.step(at_us, 40, 180)
        factory.req(
            at_us,
            actor,
            "update",
            "configmaps",
            "kube-system",
            "aws-auth",
            request_object=body,
            response_object=resp,
            query="?fieldManager=kubectl-edit&fieldValidation=Strict",
        )
        at_us = self.step(at_us, 5, 30)
        factory.req(at_us, actor, "get", "configmaps", "kube-system", "aws-auth")
        self.record(
            "aws_auth_edit",
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def anonymous_probing(self) -> None:
        factory = self.factory
        ip = self.outside_ip("45.155.205")
        user = {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
        actor = Actor(user, [ip], "Mozilla/5.0 zgrab/0.x", allow_annotations(PUBLIC_INFO_REASON))
        mark = len(factory.buf)
        at_us = self.when(8 * 60 * US)
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
            at_us = self.step(at_us, 0.2, 12)
            ua = uas[0] if i < 6 else uas[1 + int(self.rnd.random() * 2)]
            verb = "list" if res else "get"
            factory.req(at_us, actor, verb, res, ns, uri=uri, code=code, ua=ua, level="Metadata")
        self.record(
            "anonymous_probing",
            "system:anonymous",
            mark,
            {"source_ips": [ip], "user_agent": uas[0]},
        )

    def exec_kube_system(self) -> None:
        factory, world = self.factory, self.world
        human = self.cast["exec_kube_system"]
        # Leave room for the delete_events follow-up by the same principal.
        at_us = self.when(35 * 60 * US, human.tz, night=self.rnd.random() < 0.5)
        actor = self._human("exec_kube_system", at_us)
        mark = len(factory.buf)
        factory.req(at_us, actor, "list", "pods", "kube-system", query="?limit=500")
        pod = next(pod for pod in world.pods if pod.app == "aws-node")
        at_us = self.step(at_us, 5, 40)
        factory.req(at_us, actor, "get", "pods", "kube-system", pod.name)
        at_us = self.step(at_us, 2, 10)
        dur = int((60 + self.rnd.random() * 240) * US)
        factory.req(
            at_us,
            actor,
            "create",
            "pods",
            "kube-system",
            pod.name,
            "exec",
            code=101,
            level="Request",
            query="?command=sh&container=aws-node&stdin=true&stdout=true&tty=true",
            dur=dur,
        )
        self.exec_actor = actor
        self.exec_end = at_us + dur
        self.record(
            "exec_kube_system",
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def delete_events(self) -> None:
        factory = self.factory
        actor = getattr(self, "exec_actor", None)
        if actor is None:
            self.cast.setdefault("delete_events", self.cast["exec_kube_system"])
            at_us = self.when(10 * 60 * US)
            actor = self._human("exec_kube_system", at_us)
        else:
            at_us = self.exec_end + int((60 + self.rnd.random() * 400) * US)
        mark = len(factory.buf)
        factory.req(at_us, actor, "list", "events", "kube-system", query="?limit=500")
        at_us = self.step(at_us, 10, 60)
        factory.req(at_us, actor, "deletecollection", "events", "kube-system")
        at_us = self.step(at_us, 3, 20)
        factory.req(at_us, actor, "list", "events", "kube-system", query="?limit=500")
        self.record(
            "delete_events",
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def webhook_registration(self) -> None:
        factory, world = self.factory, self.world
        run = 9000 + self.rnd.randrange(900)
        key = "ASIA" + "".join(self.rnd.choices(BASE32_ALPHABET, k=16))
        actor = ci_actor(world, f"gha-{run}", self.outside_ip("193.142.146"), key)
        mark = len(factory.buf)
        at_us = self.when(10 * 60 * US, -5, night=True)
        factory.req(at_us, actor, "list", "mwc", query="?limit=500")
        name = "pod-policy-injector"
        hook = {
            "name": "inject.pod-policy.io",
            "clientConfig": {
                "url": "https://pod-policy.example.net:8443/mutate",
                "caBundle": factory.b64(48),
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
                "uid": factory.uuid(),
                "resourceVersion": "2920071",
                "creationTimestamp": factory.ts(at_us)[:19] + "Z",
            },
        }
        at_us = self.step(at_us, 5, 40)
        factory.req(
            at_us,
            actor,
            "create",
            "mwc",
            None,
            name,
            code=201,
            request_object=body,
            response_object=resp,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        at_us = self.step(at_us, 1, 5)
        factory.req(at_us, actor, "get", "mwc", None, name)
        self.record(
            "webhook_registration",
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def permission_enumeration(self) -> None:
        factory, world = self.factory, self.world
        pod = next(p for p in world.pods if p.app == "catalog-indexer")
        user = service_account_user(
            "catalog", "default", factory.uuid(), pod, world.nodes[pod.node]
        )
        actor = Actor(
            user,
            [pod.ip],
            f"kubectl/v1.31.2 (linux/amd64) kubernetes/{KUBECTL_GIT}",
            allow_annotations(DISCOVERY_REASON),
        )
        review = allow_annotations(
            'RBAC: allowed by ClusterRoleBinding "system:basic-user" of ClusterRole '
            '"system:basic-user" to Group "system:authenticated"'
        )
        mark = len(factory.buf)
        at_us = self.when(12 * 60 * US)
        factory.req(at_us, actor, "get", uri="/api?timeout=32s", level="Metadata")
        at_us = self.step(at_us, 0.1, 0.5)
        factory.req(at_us, actor, "get", uri="/apis?timeout=32s", level="Metadata")
        for ns in ("catalog", "default", "kube-system", "payments"):
            at_us = self.step(at_us, 1, 6)
            body = {
                "kind": "SelfSubjectRulesReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": {"namespace": ns},
                "status": {"resourceRules": None, "nonResourceRules": None, "incomplete": False},
            }
            factory.req(at_us, actor, "create", "ssrr", code=201, request_object=body, ann=review)
        checks = [
            ("secrets", "get"),
            ("pods", "create"),
            ("pods/exec", "create"),
            ("clusterrolebindings", "create"),
            ("nodes", "list"),
            ("serviceaccounts/token", "create"),
        ]
        for res, verb in checks:
            at_us = self.step(at_us, 0.5, 3)
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
            factory.req(at_us, actor, "create", "ssar", code=201, request_object=body, ann=review)
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
            at_us = self.step(at_us, 0.3, 4)
            factory.req(at_us, actor, "list", res, query="?limit=500", code=403)
        for ns in spaces:
            picks = self.rnd.sample(targets, 5)
            for res in picks:
                at_us = self.step(at_us, 0.3, 4)
                factory.req(at_us, actor, "list", res, ns, query="?limit=500", code=403)
        self.record(
            "permission_enumeration",
            actor.username,
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def privileged_workload(self) -> None:
        factory, world = self.factory, self.world
        at_us = self.when(15 * 60 * US)
        actor = self._human("privileged_workload", at_us)
        mark = len(factory.buf)
        node = world.nodes[int(self.rnd.random() * 6)]
        name = f"node-debugger-{factory.suffix()}"
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
                "uid": factory.uuid(),
                "resourceVersion": "2920554",
                "creationTimestamp": factory.ts(at_us)[:19] + "Z",
            },
            "spec": spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        }
        ann = {**actor.allow, "pod-security.kubernetes.io/enforce-policy": "privileged:latest"}
        factory.req(
            at_us,
            actor,
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
            at_us = self.step(at_us, 1, 4)
            factory.req(at_us, actor, "get", "pods", "default", name)
        at_us = self.step(at_us, 1, 5)
        dur = int((120 + self.rnd.random() * 400) * US)
        factory.req(
            at_us,
            actor,
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
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )

    def token_for_privileged_sa(self) -> None:
        factory = self.factory
        human = self.cast["token_for_privileged_sa"]
        at_us = self.when(10 * 60 * US, human.tz, night=self.rnd.random() < 0.5)
        actor = self._human("token_for_privileged_sa", at_us, new_ip=self.outside_ip("104.244.72"))
        mark = len(factory.buf)
        factory.req(at_us, actor, "list", "serviceaccounts", "kube-system", query="?limit=500")
        sa = "clusterrole-aggregation-controller"
        at_us = self.step(at_us, 10, 60)
        factory.req(at_us, actor, "get", "serviceaccounts", "kube-system", sa)
        rq, rs = factory.token_request(at_us, "kube-system", sa, 86400, None)
        rq["spec"]["expirationSeconds"] = 86400
        at_us = self.step(at_us, 5, 30)
        factory.req(
            at_us,
            actor,
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
            principal_of(actor.user),
            mark,
            {"source_ips": actor.ips, "user_agent": actor.ua},
        )
