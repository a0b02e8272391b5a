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
        world = self.world
        nodes = world.nodes
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
        humans = [h for h in world.humans if h.join_us <= world.start_us]
        per_human = 0.06 / len(humans)
        for h in world.humans:
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
        node = nodes[int(self.rnd.random() * 7)]
        if node.join_us > at_us:
            node = nodes[int(self.rnd.random() * 6)]
        return node

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
        node = self._node(at_us)
        self.factory.req(
            at_us,
            node.actor,
            "get",
            "nodes",
            None,
            node.name,
            query="?resourceVersion=0&timeout=10s",
        )

    def kubelet_patch_node_status(self, at_us: int) -> None:
        node = self._node(at_us)
        self.factory.req(
            at_us, node.actor, "patch", "nodes", None, node.name, "status", query="?timeout=10s"
        )

    def _node_pod(self, node: Node) -> Pod | None:
        pods = node.pods or (self.world.new_node_pods if node is self.world.nodes[6] else [])
        return pods[int(self.rnd.random() * len(pods))] if pods else None

    def kubelet_watch_object(self, at_us: int) -> None:
        node = self._node(at_us)
        pod = self._node_pod(node)
        if pod is None:
            return
        factory = self.factory
        if pod.secrets and self.rnd.random() < 0.4:
            res, name = "secrets", pod.secrets[0]
        else:
            res, name = "configmaps", pod.configmaps[int(self.rnd.random() * len(pod.configmaps))]
        secs = 300 + int(self.rnd.random() * 300)
        q = factory.watch_q(at_us, secs, f"metadata.name%3D{name}")
        uri = factory.path(res, pod.ns) + q
        factory.req(at_us, node.actor, "watch", res, pod.ns, name, uri=uri, dur=secs * US)

    def kubelet_watch_pods(self, at_us: int) -> None:
        node = self._node(at_us)
        factory = self.factory
        secs = 300 + int(self.rnd.random() * 300)
        q = factory.watch_q(at_us, secs, f"spec.nodeName%3D{node.name}")
        factory.req(at_us, node.actor, "watch", "pods", query=q, dur=secs * US)

    def kubelet_patch_pod_status(self, at_us: int) -> None:
        node = self._node(at_us)
        pod = self._node_pod(node)
        if pod is not None:
            self.factory.req(at_us, node.actor, "patch", "pods", pod.ns, pod.name, "status")

    def kubelet_token(self, at_us: int) -> None:
        node = self._node(at_us)
        pod = self._node_pod(node)
        if pod is None:
            return
        factory = self.factory
        rq, rs = factory.token_request(at_us, pod.ns, pod.sa, 3607, pod)
        factory.req(
            at_us,
            node.actor,
            "create",
            "serviceaccounts",
            pod.ns,
            pod.sa,
            "token",
            code=201,
            request_object=rq,
            response_object=rs,
        )

    def kubelet_misc(self, at_us: int) -> None:
        node = self._node(at_us)
        factory = self.factory
        x = self.rnd.random()
        if x < 0.35:
            factory.req(at_us, node.actor, "get", "csinodes", None, node.name)
        elif x < 0.6:
            secs = 300 + int(self.rnd.random() * 300)
            factory.req(
                at_us,
                node.actor,
                "watch",
                "services",
                query=factory.watch_q(at_us, secs),
                dur=secs * US,
            )
        elif x < 0.8:
            pod = self._node_pod(node)
            if pod is not None:
                factory.req(at_us, node.actor, "get", "pods", pod.ns, pod.name)
        else:
            factory.req(
                at_us,
                node.actor,
                "get",
                "leases",
                "kube-node-lease",
                node.name,
                query="?timeout=10s",
            )

    def node_join(self, at_us: int) -> None:
        """A node joins: CSR approval and privileged daemonset pods (rare but benign)."""
        world, factory = self.world, self.factory
        node = world.nodes[6]
        csr = f"csr-{factory.suffix()}"
        factory.req(at_us, node.actor, "create", "csrs", None, csr, code=201)
        factory.req(
            at_us + 2 * US,
            EKS_ACTORS["eks:certificate-controller"],
            "update",
            "csrs",
            None,
            csr,
            "approval",
        )
        ctrl = controller_actor("daemon-set-controller")
        for i, pod in enumerate(world.new_node_pods):
            body = pod_body(
                pod,
                f"602401143452.dkr.ecr.{REGION}.amazonaws.com/eks/{pod.app}:v1",
                privileged=pod.app in ("aws-node", "kube-proxy", "ebs-csi-node"),
                host=pod.app != "node-exporter",
            )
            resp = pod_body(
                pod,
                body["spec"]["containers"][0]["image"],
                privileged=pod.app in ("aws-node", "kube-proxy", "ebs-csi-node"),
                host=pod.app != "node-exporter",
                uid=pod.uid,
            )
            factory.req(
                at_us + (5 + i) * US,
                ctrl,
                "create",
                "pods",
                pod.ns,
                pod.name,
                code=201,
                request_object=body,
                response_object=resp,
            )
            factory.req(
                at_us + (6 + i) * US,
                SCHEDULER,
                "create",
                "pods",
                pod.ns,
                pod.name,
                "binding",
                code=201,
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
        pod = self._any_pod()
        self.factory.req(at_us, SCHEDULER, "create", "pods", pod.ns, pod.name, "binding", code=201)

    def kcm_controllers(self, at_us: int) -> None:
        factory, rnd = self.factory, self.rnd
        x = rnd.random()
        ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
        if x < 0.3:
            app = APPS[ns][0][0]
            factory.req(
                at_us,
                controller_actor("endpointslice-controller"),
                "update",
                "endpointslices",
                ns,
                f"{app}-{factory.suffix()}",
            )
        elif x < 0.45:
            app = APPS[ns][0][0]
            factory.req(
                at_us,
                controller_actor("deployment-controller"),
                "update",
                "deployments",
                ns,
                app,
                "status",
            )
        elif x < 0.55:
            pod = self.world.deploy_pods[int(rnd.random() * len(self.world.deploy_pods))]
            factory.req(
                at_us,
                controller_actor("replicaset-controller"),
                "update",
                "replicasets",
                pod.ns,
                pod.name.rsplit("-", 1)[0],
                "status",
            )
        elif x < 0.75:
            secs = 300 + int(rnd.random() * 300)
            res = ("pods", "replicasets", "deployments", "endpointslices", "jobs", "leases")[
                int(rnd.random() * 6)
            ]
            factory.req(
                at_us,
                CONTROLLER_MANAGER,
                "watch",
                res,
                query=factory.watch_q(at_us, secs),
                dur=secs * US,
            )
        elif x < 0.83:
            factory.req(
                at_us,
                controller_actor("generic-garbage-collector"),
                "list",
                "replicasets",
                query="?limit=500&resourceVersion=0",
            )
        elif x < 0.9:
            app = APPS[ns][0][0]
            actor = controller_actor("horizontal-pod-autoscaler")
            factory.req(at_us, actor, "get", "deployments", ns, app, "scale")
            factory.req(
                at_us + 3000, actor, "list", "podmetrics", ns, query=f"?labelSelector=app%3D{app}"
            )
        elif x < 0.95:
            factory.req(
                at_us,
                controller_actor("node-controller"),
                "get",
                "nodes",
                None,
                self._node(at_us).name,
            )
        elif x < 0.985:
            factory.req(
                at_us,
                controller_actor("resourcequota-controller"),
                "list",
                "pods",
                ns,
                query="?limit=500&resourceVersion=0",
            )
        else:
            name = ("admin", "edit", "view")[int(rnd.random() * 3)]
            factory.req(
                at_us,
                controller_actor("clusterrole-aggregation-controller"),
                "update",
                "clusterroles",
                None,
                name,
            )

    def eks_components(self, at_us: int) -> None:
        factory, rnd = self.factory, self.rnd
        x = rnd.random()
        if x < 0.25:
            actor = EKS_ACTORS["eks:cloud-controller-manager"]
            node = self._node(at_us)
            if rnd.random() < 0.7:
                factory.req(at_us, actor, "get", "nodes", None, node.name)
            else:
                factory.req(at_us, actor, "patch", "nodes", None, node.name, "status")
        elif x < 0.45:
            actor = EKS_ACTORS["eks:node-manager"]
            if rnd.random() < 0.5:
                factory.req(at_us, actor, "get", "configmaps", "kube-system", "aws-auth")
            else:
                factory.req(at_us, actor, "list", "nodes", query="?limit=500")
        elif x < 0.6:
            actor = EKS_ACTORS["eks:certificate-controller"]
            secs = 300 + int(rnd.random() * 300)
            factory.req(
                at_us, actor, "watch", "csrs", query=factory.watch_q(at_us, secs), dur=secs * US
            )
        elif x < 0.75:
            actor = EKS_ACTORS["eks:authenticator"]
            factory.req(at_us, actor, "get", "configmaps", "kube-system", "aws-auth")
        elif x < 0.85:
            factory.req(
                at_us, EKS_ACTORS["eks:k8s-metrics"], "get", uri="/metrics", level="Metadata"
            )
        elif x < 0.97:
            actor = EKS_ACTORS["eks:addon-manager"]
            ds = ("aws-node", "kube-proxy", "coredns")[int(rnd.random() * 3)]
            res = "deployments" if ds == "coredns" else "daemonsets"
            factory.req(at_us, actor, "get", res, "kube-system", ds)
        else:
            # Rare but benign: the add-on manager reconciles the CoreDNS ConfigMap.
            actor = EKS_ACTORS["eks:addon-manager"]
            body = {
                "kind": "ConfigMap",
                "apiVersion": "v1",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": COREFILE},
            }
            factory.req(
                at_us,
                actor,
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
        factory, rnd, world = self.factory, self.rnd, self.world
        x = rnd.random()
        secs = 300 + int(rnd.random() * 300)
        if x < 0.25:
            pod = self._pod_of("kube-system", "coredns")
            res = ("endpointslices", "services", "namespaces")[int(rnd.random() * 3)]
            factory.req(
                at_us,
                world.pod_actor[pod.name],
                "watch",
                res,
                query=factory.watch_q(at_us, secs),
                dur=secs * US,
            )
        elif x < 0.45:
            node = self._node(at_us)
            pod = next(pod for pod in (node.pods or world.new_node_pods) if pod.app == "aws-node")
            actor = world.pod_actor[pod.name]
            y = rnd.random()
            if y < 0.5:
                factory.req(at_us, actor, "get", "nodes", None, node.name)
            elif y < 0.8:
                q = f"?fieldSelector=spec.nodeName%3D{node.name}&limit=500"
                factory.req(at_us, actor, "list", "pods", query=q)
            else:
                factory.req(at_us, actor, "list", "eniconfigs", query="?limit=500")
        elif x < 0.65:
            node = self._node(at_us)
            pod = next(pod for pod in (node.pods or world.new_node_pods) if pod.app == "kube-proxy")
            res = ("services", "endpointslices", "nodes")[int(rnd.random() * 3)]
            factory.req(
                at_us,
                world.pod_actor[pod.name],
                "watch",
                res,
                query=factory.watch_q(at_us, secs),
                dur=secs * US,
            )
        elif x < 0.8:
            pod = self._pod_of("kube-system", "ebs-csi-controller")
            actor = world.pod_actor[pod.name]
            if rnd.random() < 0.6:
                factory.req(
                    at_us,
                    actor,
                    "update",
                    "leases",
                    "kube-system",
                    "ebs-csi-aws-com",
                    query="?timeout=10s",
                )
            else:
                factory.req(
                    at_us, actor, "list", "volumeattachments", query="?limit=500&resourceVersion=0"
                )
        elif x < 0.92:
            pod = self._pod_of("kube-system", "cluster-autoscaler")
            actor = world.pod_actor[pod.name]
            if rnd.random() < 0.5:
                factory.req(
                    at_us,
                    actor,
                    "update",
                    "leases",
                    "kube-system",
                    "cluster-autoscaler",
                    query="?timeout=10s",
                )
            else:
                factory.req(at_us, actor, "list", "pods", query="?limit=500&resourceVersion=0")
        else:
            pod = self._pod_of("kube-system", "metrics-server")
            factory.req(
                at_us, world.pod_actor[pod.name], "get", "nodes", None, self._node(at_us).name
            )

    def monitoring(self, at_us: int) -> None:
        factory, rnd, world = self.factory, self.rnd, self.world
        x = rnd.random()
        if x < 0.45:
            actor = world.pod_actor["prometheus-k8s-0"]
            node = self._node(at_us)
            sub = "proxy/metrics/cadvisor" if rnd.random() < 0.5 else "proxy/metrics"
            factory.req(at_us, actor, "get", "nodes", None, node.name, sub)
        elif x < 0.7:
            actor = world.pod_actor["prometheus-k8s-0"]
            res = ("pods", "endpoints", "services", "nodes")[int(rnd.random() * 4)]
            secs = 300 + int(rnd.random() * 300)
            factory.req(
                at_us, actor, "watch", res, query=factory.watch_q(at_us, secs), dur=secs * US
            )
        elif x < 0.95:
            actor = world.pod_actor[self._pod_of("monitoring", "kube-state-metrics").name]
            res = ("pods", "deployments", "nodes", "jobs", "secrets", "configmaps", "pvcs")[
                int(rnd.random() * 7)
            ]
            secs = 300 + int(rnd.random() * 300)
            factory.req(
                at_us, actor, "watch", res, query=factory.watch_q(at_us, secs), dur=secs * US
            )
        else:
            actor = world.pod_actor[self._pod_of("monitoring", "grafana").name]
            factory.req(
                at_us,
                actor,
                "list",
                "configmaps",
                "monitoring",
                query="?labelSelector=grafana_dashboard%3D1",
            )

    def argocd(self, at_us: int) -> None:
        factory, rnd, world = self.factory, self.rnd, self.world
        actor = world.pod_actor["argocd-application-controller-0"]
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
            factory.req(
                at_us, actor, "watch", res, query=factory.watch_q(at_us, secs), dur=secs * US
            )
        elif x < 0.65:
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            factory.req(at_us, actor, "patch", "applications", "argocd", ns, query="")
        elif x < 0.85:
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            app = APPS[ns][0][0]
            res = ("deployments", "services", "configmaps")[int(rnd.random() * 3)]
            name = f"{app}-config" if res == "configmaps" else app
            factory.req(at_us, actor, "get", res, ns, name)
        elif x < 0.97:
            ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
            app = APPS[ns][0][0]
            factory.req(
                at_us,
                actor,
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
            factory.req(
                at_us,
                actor,
                "create",
                "rolebindings",
                ns,
                f"{ns}-readers",
                code=code,
                request_object=body,
                response_object=body if code == 201 else None,
            )
        if rnd.random() < 0.1:
            s = world.pod_actor[self._pod_of("argocd", "argocd-server").name]
            factory.req(at_us + 50_000, s, "list", "applications", "argocd", query="?limit=500")

    def app_sas(self, at_us: int) -> None:
        factory, rnd, world = self.factory, self.rnd, self.world
        x = rnd.random()
        if x < 0.75:
            talkers = TALKERS
            ns, app = talkers[int(rnd.random() * len(talkers))]
            pod = self._pod_of(ns, app)
            actor = world.pod_actor[pod.name]
            y = rnd.random()
            if y < 0.45:
                factory.req(at_us, actor, "get", "configmaps", ns, f"{app}-config")
            elif y < 0.75:
                factory.req(at_us, actor, "get", "secrets", ns, f"{app}-secrets")
            else:
                factory.req(
                    at_us, actor, "update", "leases", ns, f"{app}-leader", query="?timeout=10s"
                )
        elif x < 0.9:
            pod = self._pod_of("ingress-nginx", "ingress-nginx-controller")
            actor = world.pod_actor[pod.name]
            if rnd.random() < 0.6:
                factory.req(
                    at_us,
                    actor,
                    "update",
                    "leases",
                    "ingress-nginx",
                    "ingress-nginx-leader",
                    query="?timeout=10s",
                )
            else:
                res = ("ingresses", "services", "endpointslices", "secrets")[int(rnd.random() * 4)]
                secs = 300 + int(rnd.random() * 300)
                factory.req(
                    at_us, actor, "watch", res, query=factory.watch_q(at_us, secs), dur=secs * US
                )
        else:
            pod = self._pod_of("cert-manager", "cert-manager")
            actor = world.pod_actor[pod.name]
            if rnd.random() < 0.9:
                factory.req(
                    at_us,
                    actor,
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
                    "data": {
                        "tls.crt": factory.b64(90),
                        "tls.key": factory.b64(60),
                        "ca.crt": factory.b64(60),
                    },
                }
                factory.req(
                    at_us,
                    actor,
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
        factory, rnd = self.factory, self.rnd
        self.ci_run += 1 + int(rnd.random() * 3)
        key = "ASIA" + "".join(rnd.choices(BASE32_ALPHABET, k=16))
        actor = ci_actor(
            self.world, f"gha-{self.ci_run}", CI_POOL[int(rnd.random() * len(CI_POOL))], key
        )
        ns = APP_NAMESPACES[int(rnd.random() * len(APP_NAMESPACES))]
        app = APPS[ns][int(rnd.random() * len(APPS[ns]))][0]
        sha = "".join(rnd.choices(HEX_DIGITS, k=12))
        at_us += int(rnd.random() * 2 * US)
        factory.req(
            at_us,
            actor,
            "get",
            uri="/api",
            level="Metadata",
            ann=allow_annotations(DISCOVERY_REASON),
        )
        at_us += 300_000
        factory.req(
            at_us,
            actor,
            "get",
            uri="/apis",
            level="Metadata",
            ann=allow_annotations(DISCOVERY_REASON),
        )
        at_us += 500_000
        factory.req(at_us, actor, "get", "configmaps", ns, f"{app}-config")
        cm = {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {"name": f"{app}-config", "namespace": ns},
            "data": {"LOG_LEVEL": "info", "RELEASE": sha},
        }
        at_us += 200_000
        factory.req(
            at_us,
            actor,
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
                "data": {"DB_PASSWORD": factory.b64(18), "API_KEY": factory.b64(24)},
            }
            at_us += 200_000
            factory.req(at_us, actor, "get", "secrets", ns, f"{app}-secrets")
            at_us += 200_000
            factory.req(
                at_us,
                actor,
                "patch",
                "secrets",
                ns,
                f"{app}-secrets",
                request_object=sec,
                response_object=sec,
                query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
            )
        at_us += 300_000
        factory.req(at_us, actor, "get", "services", ns, app)
        at_us += 200_000
        factory.req(
            at_us,
            actor,
            "patch",
            "services",
            ns,
            app,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        at_us += 300_000
        factory.req(at_us, actor, "get", "deployments", ns, app)
        image = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/{app}:{sha}"
        patch = {"spec": {"template": {"spec": {"containers": [{"name": app, "image": image}]}}}}
        at_us += 200_000
        factory.req(
            at_us,
            actor,
            "patch",
            "deployments",
            ns,
            app,
            request_object=patch,
            query="?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
        )
        at_us += 1_000_000
        wait = int((20 + rnd.random() * 70) * US)
        q = f"?fieldSelector=metadata.name%3D{app}&resourceVersion={factory.rv(at_us)}&watch=true"
        factory.req(
            at_us,
            actor,
            "watch",
            "deployments",
            ns,
            app,
            uri=factory.path("deployments", ns) + q,
            dur=wait,
        )
        at_us += wait + 200_000
        factory.req(
            at_us, actor, "list", "replicasets", ns, query=f"?labelSelector=app%3D{app}&limit=500"
        )
        at_us += 200_000
        factory.req(at_us, actor, "list", "pods", ns, query=f"?labelSelector=app%3D{app}&limit=500")

    # -- humans -----------------------------------------------------------------------------------
    def _human_fn(self, human: Human) -> Callable[[int], None]:
        cmds = ADMIN_COMMANDS if human.kind in ("admin", "platform") else DEVELOPER_COMMANDS
        cum = list(np.cumsum([c[0] for c in cmds]))
        total = cum[-1]

        def fn(at_us: int) -> None:
            local_day = (at_us + human.tz * HOUR_US) // DAY_US
            _, actor = self.world.human_actor(human, local_day)
            if self.rnd.random() < 0.08:
                actor = Actor(actor.user, actor.ips, human.secondary_ua, actor.allow)
            if self.rnd.random() < 0.8:
                ns = human.namespaces[int(self.rnd.random() * len(human.namespaces))]
            else:
                ns = APP_NAMESPACES[int(self.rnd.random() * len(APP_NAMESPACES))]
            i = bisect(cum, self.rnd.random() * total)
            cmds[min(i, len(cmds) - 1)][2](self, human, actor, at_us, ns)

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
