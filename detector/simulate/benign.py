"""Benign traffic: kubelets, controllers, control-plane components, CI and people.

Why: detectors are judged against realistic background noise. Each actor runs as a
periodic or Poisson process with its own cadence (leases every 10 s, informer watches,
work-hour humans in their time zone); :class:`BenignTraffic` runs them one hour at a time
into an :class:`~detector.simulate.factory.EventFactory`. What a human's kubectl command
logs lives in :mod:`detector.simulate.kubectl`.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.simulate.actors import (
    ACCOUNT_ID,
    BASE32_ALPHABET,
    CLOUD_CONTROLLER_MANAGER,
    CONTROLLER_MANAGER,
    DAY_US,
    DISCOVERY_REASON,
    EKS_ACTORS,
    EKS_VERSION,
    HEX_DIGITS,
    HOUR_US,
    K8S_GIT,
    REGION,
    SCHEDULER,
    US,
    Actor,
    allow_annotations,
    controller_actor,
    iam_user,
)
from detector.simulate.factory import EventFactory, pod_body
from detector.simulate.kubectl import ADMIN_COMMANDS, DEVELOPER_COMMANDS, rolebinding_body
from detector.simulate.world import APP_NAMESPACES, APPS, CI_POOL, Human, Node, Pod, World

# --------------------------------------------------------------------------------------------
# Benign traffic
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Process:
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


class BenignTraffic:
    """Generates benign traffic hour by hour into a :class:`EventFactory`."""

    def __init__(self, world: World, factory: EventFactory, rate: float) -> None:
        self.world = world
        self.factory = factory
        self.rnd = factory.rnd
        self.rate = rate
        self.procs: list[_Process] = []
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
        self.procs.append(_Process(share, per_call, action, profile, start_us))

    def _lease(self, share: float, fns: list[tuple[Callable[[int], None], int]]) -> None:
        """Lease renewals: ``share`` of all events split over ``fns`` (fn, start)."""
        period = max(2 * US, int(len(fns) * US / (self.rate * share)))
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
                (
                    self._cp_lease(
                        "kube-controller-manager", CONTROLLER_MANAGER, "kube-controller-manager"
                    ),
                    0,
                ),
                (self._cp_lease("kube-scheduler", SCHEDULER, "kube-scheduler"), 0),
                (
                    self._cp_lease(
                        "cloud-controller-manager",
                        CLOUD_CONTROLLER_MANAGER,
                        "cloud-controller-manager",
                    ),
                    0,
                ),
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
            cmds = ADMIN_COMMANDS if h.kind in ("admin", "platform") else DEVELOPER_COMMANDS
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
            lam = rate * p.share / p.per_call * mult * (t1 - a) / US
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
    def _node(self, at_us: int) -> Node:
        nodes = self.world.nodes
        n = nodes[int(self.rnd.random() * 7)]
        if n.join_us > at_us:
            n = nodes[int(self.rnd.random() * 6)]
        return n

    def _node_lease(self, node: Node) -> Callable[[int], None]:
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

    def _node_pod(self, node: Node) -> Pod | None:
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
        f.req(at_us, n.actor, "watch", res, p.ns, name, uri=uri, dur=secs * US)

    def kubelet_watch_pods(self, at_us: int) -> None:
        n = self._node(at_us)
        f = self.factory
        secs = 300 + int(self.rnd.random() * 300)
        q = f.watch_q(at_us, secs, f"spec.nodeName%3D{n.name}")
        f.req(at_us, n.actor, "watch", "pods", query=q, dur=secs * US)

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
            f.req(at_us, n.actor, "watch", "services", query=f.watch_q(at_us, secs), dur=secs * US)
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
            at_us + 2 * US,
            EKS_ACTORS["eks:certificate-controller"],
            "update",
            "csrs",
            None,
            csr,
            "approval",
        )
        ctrl = controller_actor("daemon-set-controller")
        for i, p in enumerate(w.new_node_pods):
            body = pod_body(
                p,
                f"602401143452.dkr.ecr.{REGION}.amazonaws.com/eks/{p.app}:v1",
                privileged=p.app in ("aws-node", "kube-proxy", "ebs-csi-node"),
                host=p.app != "node-exporter",
            )
            resp = pod_body(
                p,
                body["spec"]["containers"][0]["image"],
                privileged=p.app in ("aws-node", "kube-proxy", "ebs-csi-node"),
                host=p.app != "node-exporter",
                uid=p.uid,
            )
            f.req(
                at_us + (5 + i) * US,
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
                at_us + (6 + i) * US, SCHEDULER, "create", "pods", p.ns, p.name, "binding", code=201
            )

    # -- control plane -------------------------------------------------------------------------
    def _cp_lease(self, name: str, actor: Actor, ua_name: str) -> Callable[[int], None]:
        ua = f"{ua_name}/{EKS_VERSION} (linux/amd64) kubernetes/{K8S_GIT}/leader-election"

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

    def _any_pod(self) -> Pod:
        pods = self.world.pods
        return pods[int(self.rnd.random() * len(pods))]

    def scheduler_bind(self, at_us: int) -> None:
        p = self._any_pod()
        self.factory.req(at_us, SCHEDULER, "create", "pods", p.ns, p.name, "binding", code=201)

    def kcm_controllers(self, at_us: int) -> None:
        f, rnd = self.factory, self.rnd
        x = rnd.random()
        ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
        if x < 0.3:
            app = APPS[ns][0][0]
            f.req(
                at_us,
                controller_actor("endpointslice-controller"),
                "update",
                "endpointslices",
                ns,
                f"{app}-{f.suffix()}",
            )
        elif x < 0.45:
            app = APPS[ns][0][0]
            f.req(
                at_us,
                controller_actor("deployment-controller"),
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
                controller_actor("replicaset-controller"),
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
            f.req(
                at_us, CONTROLLER_MANAGER, "watch", res, query=f.watch_q(at_us, secs), dur=secs * US
            )
        elif x < 0.83:
            f.req(
                at_us,
                controller_actor("generic-garbage-collector"),
                "list",
                "replicasets",
                query="?limit=500&resourceVersion=0",
            )
        elif x < 0.9:
            app = APPS[ns][0][0]
            a = controller_actor("horizontal-pod-autoscaler")
            f.req(at_us, a, "get", "deployments", ns, app, "scale")
            f.req(at_us + 3000, a, "list", "podmetrics", ns, query=f"?labelSelector=app%3D{app}")
        elif x < 0.95:
            f.req(
                at_us,
                controller_actor("node-controller"),
                "get",
                "nodes",
                None,
                self._node(at_us).name,
            )
        elif x < 0.985:
            f.req(
                at_us,
                controller_actor("resourcequota-controller"),
                "list",
                "pods",
                ns,
                query="?limit=500&resourceVersion=0",
            )
        else:
            name = ("admin", "edit", "view")[int(rnd.random() * 3)]
            f.req(
                at_us,
                controller_actor("clusterrole-aggregation-controller"),
                "update",
                "clusterroles",
                None,
                name,
            )

    def eks_components(self, at_us: int) -> None:
        f, rnd = self.factory, self.rnd
        x = rnd.random()
        if x < 0.25:
            a = EKS_ACTORS["eks:cloud-controller-manager"]
            n = self._node(at_us)
            if rnd.random() < 0.7:
                f.req(at_us, a, "get", "nodes", None, n.name)
            else:
                f.req(at_us, a, "patch", "nodes", None, n.name, "status")
        elif x < 0.45:
            a = EKS_ACTORS["eks:node-manager"]
            if rnd.random() < 0.5:
                f.req(at_us, a, "get", "configmaps", "kube-system", "aws-auth")
            else:
                f.req(at_us, a, "list", "nodes", query="?limit=500")
        elif x < 0.6:
            a = EKS_ACTORS["eks:certificate-controller"]
            secs = 300 + int(rnd.random() * 300)
            f.req(at_us, a, "watch", "csrs", query=f.watch_q(at_us, secs), dur=secs * US)
        elif x < 0.75:
            a = EKS_ACTORS["eks:authenticator"]
            f.req(at_us, a, "get", "configmaps", "kube-system", "aws-auth")
        elif x < 0.85:
            f.req(at_us, EKS_ACTORS["eks:k8s-metrics"], "get", uri="/metrics", level="Metadata")
        elif x < 0.97:
            a = EKS_ACTORS["eks:addon-manager"]
            ds = ("aws-node", "kube-proxy", "coredns")[int(rnd.random() * 3)]
            res = "deployments" if ds == "coredns" else "daemonsets"
            f.req(at_us, a, "get", res, "kube-system", ds)
        else:
            # Rare but benign: the add-on manager reconciles the CoreDNS ConfigMap.
            a = EKS_ACTORS["eks:addon-manager"]
            body = {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": COREFILE},
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
    def _pod_of(self, namespace: str, app: str) -> Pod:
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
                dur=secs * US,
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
                dur=secs * US,
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
            f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * US)
        elif x < 0.95:
            a = w.pod_actor[self._pod_of("monitoring", "kube-state-metrics").name]
            res = ("pods", "deployments", "nodes", "jobs", "secrets", "configmaps", "pvcs")[
                int(rnd.random() * 7)
            ]
            secs = 300 + int(rnd.random() * 300)
            f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * US)
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
            f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * US)
        elif x < 0.65:
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            f.req(at_us, a, "patch", "applications", "argocd", ns, query="")
        elif x < 0.85:
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            app = APPS[ns][0][0]
            res = ("deployments", "services", "configmaps")[int(rnd.random() * 3)]
            name = f"{app}-config" if res == "configmaps" else app
            f.req(at_us, a, "get", res, ns, name)
        elif x < 0.97:
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            app = APPS[ns][0][0]
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
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            body = rolebinding_body(
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
            talkers = TALKERS
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
                f.req(at_us, a, "watch", res, query=f.watch_q(at_us, secs), dur=secs * US)
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
                ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
                name = f"{APPS[ns][0][0]}-tls"
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
        local = at_us - 5 * HOUR_US
        day, rem = divmod(local, DAY_US)
        hour = rem // HOUR_US
        if (day + 3) % 7 >= 5:
            return 0.05 / CI_MEAN
        return (1.0 if 8 <= hour < 19 else 0.05) / CI_MEAN

    def ci_deploy(self, at_us: int) -> None:
        """One pipeline run: a fresh STS session applies an app's manifests and waits."""
        f, rnd = self.factory, self.rnd
        self.ci_run += 1 + int(rnd.random() * 3)
        key = "ASIA" + "".join(rnd.choices(BASE32_ALPHABET, k=16))
        a = ci_actor(
            self.world, f"gha-{self.ci_run}", CI_POOL[int(rnd.random() * len(CI_POOL))], key
        )
        ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
        app = APPS[ns][int(rnd.random() * len(APPS[ns]))][0]
        sha = "".join(rnd.choices(HEX_DIGITS, k=12))
        at_us += int(rnd.random() * 2 * US)
        f.req(
            at_us, a, "get", uri="/api", level="Metadata", ann=allow_annotations(DISCOVERY_REASON)
        )
        at_us += 300_000
        f.req(
            at_us, a, "get", uri="/apis", level="Metadata", ann=allow_annotations(DISCOVERY_REASON)
        )
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
        wait = int((20 + rnd.random() * 70) * US)
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
    def _human_fn(self, human: Human) -> Callable[[int], None]:
        cmds = ADMIN_COMMANDS if human.kind in ("admin", "platform") else DEVELOPER_COMMANDS
        cum = list(np.cumsum([c[0] for c in cmds]))
        total = cum[-1]

        def fn(at_us: int) -> None:
            local_day = (at_us + human.tz * HOUR_US) // DAY_US
            _, a = self.world.human_actor(human, local_day)
            if self.rnd.random() < 0.08:
                a = Actor(a.user, a.ips, human.secondary_ua, a.allow)
            if self.rnd.random() < 0.8:
                ns = human.namespaces[int(self.rnd.random() * len(human.namespaces))]
            else:
                ns = APP_NAMESPACES[int(self.rnd.random() * len(APP_NAMESPACES))]
            i = bisect(cum, self.rnd.random() * total)
            cmds[min(i, len(cmds) - 1)][2](self, human, a, at_us, ns)

        return fn


def ci_actor(world: World, session: str, ip: str, key: str) -> Actor:
    """The CI deployer: one IAM role, a new STS session (``gha-<run>``) per pipeline run."""
    user = iam_user("ci-deployer", "gha-deployer", session, ["ci-deployers"], key, world.ci_role_id)
    allow = allow_annotations(
        'RBAC: allowed by ClusterRoleBinding "ci-deployers" of ClusterRole "ci-deployer" to '
        'Group "ci-deployers"'
    )
    return Actor(user, [ip], f"kubectl/v1.30.4 (linux/amd64) kubernetes/{CI_GIT}", allow)


TALKERS = tuple((ns, app) for ns, apps in APPS.items() for app, _, talks in apps if talks)
CI_GIT = "a51b3b7"
CI_MEAN = (5 * (11 * 1.0 + 13 * 0.05) + 2 * 24 * 0.05) / (7 * 24)
COREFILE = (
    ".:53 {\n    errors\n    health {\n        lameduck 5s\n      }\n    ready\n    kubernetes "
    "cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa "
    "ip6.arpa\n    }\n    prometheus :9153\n    forward . /etc/resolv.conf\n    cache 30\n    "
    "loop\n    reload\n    loadbalance\n}\n"
)
