"""The simulated cluster: nodes, pods, people and log streams, fixed per seed.

Why: benign traffic and attacks must agree on what exists (a pod that is exec'd into was
scheduled on a node, a human who binds a role has a session). The world is built once from
the seed and only read afterwards, so generating traffic hour by hour stays deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from detector.simulate.actors import (
    ACCOUNT_ID,
    ALLOW_NODE,
    BASE32_ALPHABET,
    DAY_US,
    EKS_VERSION,
    HEX_DIGITS,
    HOUR_US,
    K8S_GIT,
    KUBECTL_GIT,
    POD_SUFFIX_ALPHABET,
    Actor,
    allow_annotations,
    iam_user,
    service_account_user,
)

# --------------------------------------------------------------------------------------------
# The world: nodes, pods, people (built once per seed, read-only afterwards)
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Node:
    """A worker node: its kubelet's identity and the pods scheduled on it."""

    name: str
    ip: str
    uid: str
    instance: str
    join_us: int
    actor: Actor = field(init=False)
    pods: list[Pod] = field(default_factory=list)


@dataclass(slots=True)
class Pod:
    """A pod: where it runs, which service account and which config it reads."""

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
class Human:
    """An engineer: IAM role and session, time zone, namespaces and habits."""

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
APPS: dict[str, tuple[tuple[str, int, bool], ...]] = {
    "payments": (("payments-api", 3, True), ("payments-worker", 2, True)),
    "checkout": (("checkout-api", 3, True), ("checkout-web", 2, False)),
    "catalog": (("catalog-api", 2, True), ("catalog-indexer", 1, False)),
    "search": (("search-api", 2, False), ("opensearch-proxy", 1, False)),
    "notifications": (("notifier", 2, True),),
    "identity": (("identity-api", 2, True),),
}
APP_NAMESPACES = tuple(APPS)
#: Platform deployments: (namespace, app, replicas, service account).
PLATFORM = (
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
DAEMONSETS = (
    ("kube-system", "aws-node", "aws-node"),
    ("kube-system", "kube-proxy", "kube-proxy"),
    ("kube-system", "ebs-csi-node", "ebs-csi-node-sa"),
    ("kube-system", "eks-pod-identity-agent", "eks-pod-identity-agent"),
    ("monitoring", "node-exporter", "node-exporter"),
)
ALL_NAMESPACES = (
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "monitoring",
    "argocd",
    "ingress-nginx",
    "cert-manager",
    *APP_NAMESPACES,
)
FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
OFFICE_IPS = tuple(f"203.0.113.{i}" for i in (10, 11, 12, 13))  # office NAT in 203.0.113.0/26
VPN_POOL = tuple(f"198.51.100.{i}" for i in range(2, 31))  # VPN pool 198.51.100.0/27
CI_POOL = tuple(f"192.0.2.{i}" for i in range(20, 120))  # hosted CI runners' egress


class World:
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
        self.nodes: list[Node] = []
        used: set[str] = set()
        for i in range(7):
            while True:
                subnet = (16, 32, 48)[i % 3] + rnd.randrange(0, 12)
                ip = f"10.0.{subnet}.{rnd.randrange(10, 250)}"
                if ip not in used:
                    used.add(ip)
                    break
            name = f"ip-{ip.replace('.', '-')}.ec2.internal"
            join = start_us - DAY_US if i < 6 else start_us + int(span * 0.4)
            self.nodes.append(Node(name, ip, self.uuid(), f"i-0{self.hex(16)}", join))
        self.node_role = f"eks-{cluster}-node-role"
        node_role_id = "AROA" + self.b32(17)
        for node in self.nodes:
            key = "ASIA" + self.b32(16)
            user = iam_user(
                f"system:node:{node.name}",
                self.node_role,
                node.instance,
                ["system:bootstrappers", "system:nodes"],
                key,
                node_role_id,
            )
            ua = f"kubelet/{EKS_VERSION} (linux/amd64) kubernetes/{K8S_GIT}"
            node.actor = Actor(user, [node.ip], ua, ALLOW_NODE)

        # Pods.
        self.pods: list[Pod] = []
        for ns, apps in APPS.items():
            for app, replicas, _talks in apps:
                self._deployment(ns, app, replicas, app, (f"{app}-config",), (f"{app}-secrets",))
        for ns, app, replicas, sa in PLATFORM:
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
        self.pods_by_ns: dict[str, list[Pod]] = {}
        self.pods_by_app: dict[str, list[Pod]] = {}
        for pod in self.pods:
            self.pods_by_ns.setdefault(pod.ns, []).append(pod)
            self.pods_by_app.setdefault(pod.app, []).append(pod)
        self.deploy_pods = [pod for pod in self.pods if not pod.ds and pod.name.count("-") >= 2]
        self.new_node_pods = self.daemon_pods(6, attach=False)

        # Service-account actors (one per pod for pod-bound tokens).
        self.pod_actor: dict[str, Actor] = {}
        for pod in [*self.pods, *self.new_node_pods]:
            self.pod_actor[pod.name] = self._pod_actor(pod)
        self.sa_uid: dict[tuple[str, str], str] = {}

        # Humans: one platform admin (kubernetes-admin), three eng-admins sharing the
        # username "eng-admin", two or three developers (access entries), and one new
        # developer who joins part-way through.
        n_dev = rnd.choice((2, 3))
        names = list(FIRST_NAMES)
        rnd.shuffle(names)
        tzs = (-8, -5, -5, 0, 1, 2, -7, 1, 5)
        roles = ["platform"] + ["admin"] * 3 + ["developer"] * n_dev + ["developer"]
        self.humans: list[Human] = []
        ids = {"platform": "AROA" + self.b32(17), "admin": "AROA" + self.b32(17)}
        ids["developer"] = "AROA" + self.b32(17)
        for i, kind in enumerate(roles):
            role = {"platform": "platform-admin", "admin": "eng-admin", "developer": "developer"}[
                kind
            ]
            own = tuple(rnd.sample(APP_NAMESPACES, 2 if kind == "developer" else 1))
            os_ = rnd.choice(("darwin/arm64", "darwin/arm64", "darwin/arm64", "linux/amd64"))
            secondary = rnd.choice(
                (
                    f"k9s/v0.32.5 ({os_}) kubernetes/$Format",
                    f"kubectl/v1.30.5 ({os_}) kubernetes/74e84a9",
                    f"Lens/2024.11.5 ({os_}) kubernetes/$Format",
                )
            )
            join = start_us - 30 * DAY_US if i < len(roles) - 1 else start_us + int(span * 0.45)
            self.humans.append(
                Human(
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
        self._day_cache: dict[tuple[str, int], tuple[float, Actor]] = {}

    # -- small deterministic helpers --------------------------------------------------------
    def hex(self, length: int) -> str:
        return "".join(self.rnd.choices(HEX_DIGITS, k=length))

    def b32(self, length: int) -> str:
        return "".join(self.rnd.choices(BASE32_ALPHABET, k=length))

    def uuid(self) -> str:
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def suffix(self, length: int = 5) -> str:
        return "".join(self.rnd.choices(POD_SUFFIX_ALPHABET, k=length))

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
    ) -> Pod:
        pod = Pod(
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
            self.pods.append(pod)
            self.nodes[node].pods.append(pod)
        return pod

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

    def daemon_pods(self, node: int, attach: bool = True) -> list[Pod]:
        return [
            self._pod(ns, f"{ds}-{self.suffix()}", ds, sa, node, (), (), True, attach)
            for ns, ds, sa in DAEMONSETS
        ]

    def _pod_actor(self, pod: Pod) -> Actor:
        node = self.nodes[pod.node]
        user = service_account_user(pod.ns, pod.sa, self.uuid(), pod, node)
        reason = (
            f'RBAC: allowed by RoleBinding "{pod.sa}" of Role "{pod.sa}" to ServiceAccount '
            f'"{pod.sa}/{pod.ns}"'
        )
        return Actor(
            user,
            [pod.ip],
            POD_USER_AGENTS.get(pod.app, "Go-http-client/2.0"),
            allow_annotations(reason),
        )

    def human_actor(self, human: Human, day: int) -> tuple[float, Actor]:
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
        ips = [r.choice(OFFICE_IPS)] if r.random() < 0.45 else [r.choice(VPN_POOL)]
        if r.random() < 0.1:
            ips.append(r.choice(VPN_POOL))
        key_id = "ASIA" + "".join(r.choices(BASE32_ALPHABET, k=16))
        actor = self.make_human_actor(human, key_id, ips)
        self._day_cache[key] = (mult, actor)
        return mult, actor

    def make_human_actor(
        self, human: Human, key_id: str, ips: list[str], ua: str | None = None
    ) -> Actor:
        if human.kind == "platform":
            user = iam_user(
                "kubernetes-admin",
                human.role,
                human.session,
                ["system:masters"],
                key_id,
                human.role_id,
            )
            allow = ALLOW_NODE
        elif human.kind == "admin":
            user = iam_user(
                "eng-admin", human.role, human.session, ["eng-admins"], key_id, human.role_id
            )
            allow = allow_annotations(
                'RBAC: allowed by ClusterRoleBinding "eng-admins" of ClusterRole '
                '"cluster-admin" to Group "eng-admins"'
            )
        else:
            username = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/{human.role}/{human.session}"
            user = iam_user(
                username, human.role, human.session, ["developers"], key_id, human.role_id
            )
            allow = allow_annotations(
                'RBAC: allowed by ClusterRoleBinding "developers-edit" of ClusterRole "edit" '
                'to Group "developers"'
            )
        ua = ua or f"kubectl/v1.31.2 ({human.os}) kubernetes/{KUBECTL_GIT}"
        return Actor(user, ips, ua, allow)

    def human_level(self, human: Human, t_us: int) -> float:
        """Activity multiplier (mean about 1 over a week) for the hour starting at ``t_us``."""
        if t_us < human.join_us:
            return 0.0
        local = t_us + human.tz * HOUR_US
        day, rem = divmod(local, DAY_US)
        hour = rem // HOUR_US
        mult, _ = self.human_actor(human, day)
        if mult == 0.0:
            return 0.0
        weekday = (day + 3) % 7
        if weekday >= 5:
            level = 0.35 if 10 <= hour < 20 else 0.0
        else:
            level = WORKDAY[hour]
            if mult > 1.0 and 19 <= hour < 24:
                level = 0.5  # a late evening
        return level / HUMAN_MEAN


#: Weekday activity by local hour (0 = midnight).
WORKDAY = (
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
HUMAN_MEAN = (
    5 * 0.88 * (sum(WORKDAY) + 0.15 * (5 * 0.5 - sum(WORKDAY[19:]))) + 2 * 0.5 * 0.6 * 0.35 * 10
) / (7 * 24)

POD_USER_AGENTS = {
    "payments-api": "Go-http-client/2.0",
    "payments-worker": "Go-http-client/2.0",
    "checkout-api": "fabric8-kubernetes-client/6.13.1",
    "catalog-api": "OpenAPI-Generator/30.1.0/python",
    "notifier": "Go-http-client/2.0",
    "identity-api": "fabric8-kubernetes-client/6.13.1",
    "coredns": "coredns/v0.0.0 (linux/amd64) kubernetes/$Format",
    "aws-node": "aws-node/v1.18.5 (linux/amd64) kubernetes/$Format",
    "kube-proxy": f"kube-proxy/{EKS_VERSION} (linux/amd64) kubernetes/{K8S_GIT}",
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
