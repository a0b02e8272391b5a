"""Gaps a QA review of the rules found, each on real-shaped events: Falco's own fixtures
(tests/data/falco) changed the way an attacker (or a benign cluster) would change them.

Each case once slipped past its rule (a patch instead of a create, ``*/exec`` instead of
``pods/exec``, ``%2f`` instead of ``%2F``, a look-alike registry...) or fired where it
should not (a denied exec, a label named ``privileged``, an empty baseline week).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_rules_helpers import T0, denials, ev, iam, sa

from detector.events.normalize import events_from_dicts
from detector.rules import evaluate_rules, load_ruleset
from detector.rules.condition import DERIVED_FIELDS

FALCO = Path(__file__).resolve().parent / "data" / "falco"
RBAC = "rbac.authorization.k8s.io"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def ruleset():
    return load_ruleset()


def fixture(name: str) -> dict[str, Any]:
    """One of Falco's k8s_audit fixtures (one event per file), with a fresh audit ID."""
    with (FALCO / f"{name}.json").open() as fh:
        event = json.loads(fh.readline())
    event["auditID"] = f"gap-{next(_ids):04d}-{event['auditID'][10:]}"
    return event


def fired(ruleset, rule_id: str, *events: dict[str, Any], **kw: Any) -> int:
    frame = events_from_dicts(list(events), cluster="test")
    return evaluate_rules(frame, ruleset.only(rule_id), **kw).findings.height


# --------------------------------------------------------------------------- 1. bindings


def binding_patch(name: str, role: str, request: Any, subjects: list[dict]) -> dict[str, Any]:
    """A patch of the existing ClusterRoleBinding ``name`` (to ``role``), logged at
    RequestResponse: the patch body as sent, the whole binding as it is afterwards."""
    event = fixture("attach_cluster_admin_role")
    event["verb"] = "patch"
    event["requestURI"] = f"/apis/{RBAC}/v1/clusterrolebindings/{name}"
    event["objectRef"]["name"] = name
    event["responseStatus"]["code"] = 200
    event["requestObject"] = request
    response = event["responseObject"]
    response["metadata"]["name"] = name
    response["roleRef"]["name"] = role
    response["subjects"] = subjects
    return event


EVE = {"apiGroup": RBAC, "kind": "User", "name": "eve"}
MASTERS = {"apiGroup": RBAC, "kind": "Group", "name": "system:masters"}
DEFAULT_SA = {"kind": "ServiceAccount", "name": "default", "namespace": "prod"}


def test_patch_adding_a_subject_to_an_existing_cluster_admin_binding_fires(ruleset):
    merge = binding_patch(
        "cluster-admin", "cluster-admin", {"subjects": [MASTERS, EVE]}, [MASTERS, EVE]
    )
    json_patch = binding_patch(
        "cluster-admin",
        "cluster-admin",
        [{"op": "add", "path": "/subjects/-", "value": EVE}],
        [MASTERS, EVE],
    )
    assert fired(ruleset, "cluster-admin-binding", merge) == 1
    assert fired(ruleset, "cluster-admin-binding", json_patch) == 1
    found = evaluate_rules(
        events_from_dicts([json_patch], cluster="test"), ruleset.only("cluster-admin-binding")
    ).findings
    assert "subjects system:masters, eve" in found["reasons"][0][0]  # from the response body
    view = binding_patch("viewers", "view", {"subjects": [EVE]}, [EVE])
    assert fired(ruleset, "cluster-admin-binding", view) == 0


def test_patch_giving_an_admin_binding_to_the_default_service_account_fires(ruleset):
    merge = binding_patch("ops-admins", "admin", {"subjects": [DEFAULT_SA]}, [DEFAULT_SA])
    json_patch = binding_patch(
        "ops-admins",
        "cluster-admin",
        [{"op": "add", "path": "/subjects/-", "value": DEFAULT_SA}],
        [EVE, DEFAULT_SA],
    )
    assert fired(ruleset, "default-service-account-admin", merge) == 1
    assert fired(ruleset, "default-service-account-admin", json_patch) == 1
    app_sa = {"kind": "ServiceAccount", "name": "app", "namespace": "prod"}
    other = binding_patch("ops-admins", "admin", {"subjects": [app_sa]}, [app_sa])
    assert fired(ruleset, "default-service-account-admin", other) == 0


# --------------------------------------------------------------------------- 2. anonymous


def anonymous_binding(role_kind: str) -> dict[str, Any]:
    """A RoleBinding of system:unauthenticated to a role named system:public-info-viewer."""
    event = fixture("attach_cluster_admin_role")
    event["objectRef"] = {
        "apiGroup": RBAC,
        "apiVersion": "v1",
        "name": "public",
        "namespace": "prod",
        "resource": "rolebindings",
    }
    event["requestURI"] = f"/apis/{RBAC}/v1/namespaces/prod/rolebindings"
    body = {
        "apiVersion": f"{RBAC}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "public", "namespace": "prod"},
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": "system:public-info-viewer"},
        "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": "system:unauthenticated"}],
    }
    event["requestObject"], event["responseObject"] = body, copy.deepcopy(body)
    return event


def test_public_info_viewer_exception_needs_the_built_in_cluster_role(ruleset):
    # A namespaced Role can be given any name, this one included: what it grants is unknown.
    assert fired(ruleset, "anonymous-binding", anonymous_binding("Role")) == 1
    assert fired(ruleset, "anonymous-binding", anonymous_binding("ClusterRole")) == 0


# --------------------------------------------------------------------------- 3. */exec


def cluster_role(resources: list[str]) -> dict[str, Any]:
    event = fixture("create_cluster_role_pod_exec")
    for key in ("requestObject", "responseObject"):
        event[key]["rules"][0] = {"apiGroups": [""], "resources": resources, "verbs": ["get"]}
    return event


@pytest.mark.parametrize(
    ("resource", "rules"),
    [
        ("*/exec", {"clusterrole-pod-exec", "clusterrole-wildcard"}),
        ("*/attach", {"clusterrole-pod-exec", "clusterrole-wildcard"}),
        ("*/proxy", {"role-grants-nodes-proxy", "clusterrole-wildcard"}),
        ("nodes/proxy", {"role-grants-nodes-proxy"}),
        ("pods/log", set()),
    ],
)
def test_star_subresource_grants_are_grants_of_that_subresource(ruleset, resource, rules):
    checked = ("clusterrole-pod-exec", "role-grants-nodes-proxy", "clusterrole-wildcard")
    got = {r for r in checked if fired(ruleset, r, cluster_role([resource]))}
    assert got == rules


# --------------------------------------------------------------------------- 4. host paths


def mount(path: str) -> dict[str, Any]:
    event = fixture("create_nginx_pod_sensitive_mount")
    for key in ("requestObject", "responseObject"):
        event[key]["spec"]["volumes"][0]["hostPath"]["path"] = path
    return event


@pytest.mark.parametrize(
    "path",
    [
        "/var",
        "/var/lib/docker",
        "/var/lib/containerd",
        "/var/lib/kubelet/pods",
        "/var/lib/kubelet/pods/6b1d/volumes",
        "/dev",
        "/sys",
        "/home",
        "/home/ec2-user",
        # found by review: the node's state, disks, memory, cgroups and units
        "/var/lib",
        "/var/lib/etcd",
        "/dev/sda",
        "/dev/nvme0n1",
        "/dev/xvda1",
        "/dev/mem",
        "/sys/fs/cgroup",
        "/sys/kernel/security",
        "/lib/systemd/system",
        "/usr/lib/x86_64-linux-gnu",
        # not normalised: the kubelet mounts what the path names
        "//",
        "/./",
        "/.",
        "/etc/.",
        "/etc//kubernetes/",
        "/proc/",
        "/var/./run/containerd/",
    ],
)
def test_sensitive_host_paths_in_any_spelling(ruleset, path):
    assert fired(ruleset, "sensitive-host-mount", mount(path)) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/var/log",
        "/var/log/pods",
        "/var/lib/docker/containers",
        "/data",
        "/etc/ssl/certs",
        "/dev/fuse",
        "/dev/net/tun",
        "/var/lib/mysql",
    ],
)
def test_routine_host_paths_stay_quiet(ruleset, path):
    # log agents mount /var/log and the runtime's container logs on every node
    assert fired(ruleset, "sensitive-host-mount", mount(path)) == 0


def test_host_paths_are_normalised():
    frame = events_from_dicts([mount(p) for p in ("//", "/etc/./", "/var//lib/./kubelet/.")])
    paths = frame.select(DERIVED_FIELDS["host_paths"].build().alias("p"))["p"].to_list()
    assert paths == [["/"], ["/etc"], ["/var/lib/kubelet"]]


def test_hostpath_persistent_volume_is_a_sensitive_mount(ruleset):
    pv = fixture("create_configmap")
    pv["objectRef"] = {"resource": "persistentvolumes", "name": "host-root", "apiVersion": "v1"}
    pv["requestURI"] = "/api/v1/persistentvolumes"
    pv["requestObject"] = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "host-root"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual",
            "hostPath": {"path": "/"},
        },
    }
    assert fired(ruleset, "sensitive-host-mount", pv) == 1
    local = copy.deepcopy(pv)
    local["requestObject"]["spec"]["hostPath"]["path"] = "/mnt/disks/ssd1"
    assert fired(ruleset, "sensitive-host-mount", local) == 0


# --------------------------------------------------------------------------- 5. registries

FORGED = "602401143452.dkr.ecr.evil.example/x.amazonaws.com/pwn:1"


def with_image(name: str, image: str) -> dict[str, Any]:
    text = re.sub(r'"image": ?"[^"]*"', f'"image": "{image}"', json.dumps(fixture(name)))
    return json.loads(text)


@pytest.mark.parametrize(
    "image",
    [
        FORGED,
        "602401143452.dkr.ecr.us-west-2.amazonaws.com.evil.example/amazon-k8s-cni:v1.19.0",
        "602401143452.dkr.ecr.us-west-2.amazonaws.com@evil.example/amazon-k8s-cni:v1.19.0",
    ],
)
def test_look_alike_eks_registry_is_not_trusted(ruleset, image):
    assert fired(ruleset, "privileged-container", with_image("create_nginx_pod_privileged", image))
    kube_system = with_image("create_pod_kube_system_namespace", image)
    assert fired(ruleset, "pod-in-kube-namespace", kube_system) == 1


@pytest.mark.parametrize(
    "image",
    [
        "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.0",
        "602401143452.dkr.ecr.eu-central-1.amazonaws.com/eks/kube-proxy:v1.31.2-eksbuild.3",
        "602401143452.dkr.ecr.ap-northeast-3.amazonaws.com/eks/coredns:v1.11.3-eksbuild.1",
        "877085696533.dkr.ecr.af-south-1.amazonaws.com/amazon-k8s-cni:v1.19.0",
        "918309763551.dkr.ecr.cn-north-1.amazonaws.com.cn/amazon-k8s-cni:v1.19.0",
        "013241004608.dkr.ecr.us-gov-west-1.amazonaws.com/eks/kube-proxy:v1.31.2",
        "public.ecr.aws/eks/aws-load-balancer-controller:v2.8.1",
    ],
)
def test_real_eks_add_on_images_stay_trusted(ruleset, image):
    assert (
        fired(ruleset, "privileged-container", with_image("create_nginx_pod_privileged", image))
        == 0
    )
    kube_system = with_image("create_pod_kube_system_namespace", image)
    assert fired(ruleset, "pod-in-kube-namespace", kube_system) == 0


# --------------------------------------------------------------------------- 6. exec URI


def exec_reading(arg: str) -> dict[str, Any]:
    event = fixture("exec_pod")
    event["requestURI"] = (
        "/api/v1/namespaces/default/pods/nginx-deployment-7998647bdf-phvq7/exec"
        f"?command=cat&command={arg}&container=nginx1&stdin=false&stdout=true&stderr=true"
    )
    return event


@pytest.mark.parametrize(
    "arg",
    [
        "%2fvar%2frun%2fsecrets%2fkubernetes.io%2fserviceaccount%2ftoken",
        "%2Fvar%2Frun%2F%73ecrets%2Fkubernetes.io%2F%73erviceaccount%2Ftoken",
        "%2F%65tc%2F%6b%75%62ernetes%2Fadmin.conf",
        "~%2F%2E%61ws%2Fcredentials",
    ],
)
def test_percent_encoding_does_not_hide_a_credential_read(ruleset, arg):
    assert fired(ruleset, "exec-credential-read", exec_reading(arg)) == 1


def test_exec_command_decodes_every_escape_once():
    event = exec_reading("a%2fb%2Fc+d%20e%2b%41%252F")
    frame = events_from_dicts([event])
    command = frame.select(DERIVED_FIELDS["exec_command"].build().alias("c"))["c"][0]
    # "+" is a space, "%2b" a plus; "%252F" decodes once, to the literal "%2F"
    assert command == "cat a/b/c d e+A%2F"


# --------------------------------------------------------------------------- 7. impersonation


def impersonating(
    user: dict[str, Any], as_user: str, groups: tuple[str, ...] = ("system:authenticated",)
) -> dict[str, Any]:
    event = fixture("some-user_creates_namespace_foo")
    event["user"] = user
    event["impersonatedUser"] = {"username": as_user, "groups": list(groups)}
    return event


CI = {"username": "system:serviceaccount:ci:deployer", "groups": ["system:serviceaccounts"]}
GC = {"username": "system:serviceaccount:kube-system:generic-garbage-collector"}
PERSON = {"username": "some-user", "groups": ["system:authenticated"]}


def test_impersonating_a_privileged_identity_fires_whoever_does_it(ruleset):
    rule = "impersonation-of-privileged-identity"
    assert fired(ruleset, rule, impersonating(CI, "system:admin")) == 1
    assert fired(ruleset, rule, impersonating(PERSON, "system:anonymous")) == 1
    # the control plane's own impersonation is not reported
    assert fired(ruleset, rule, impersonating(GC, "system:admin")) == 0
    # a workload acting as an ordinary user is neither the alert nor the person's record
    assert fired(ruleset, rule, impersonating(CI, "grace")) == 0
    assert fired(ruleset, "impersonation-by-person", impersonating(CI, "grace")) == 0
    assert fired(ruleset, "impersonation-by-person", impersonating(PERSON, "system:anonymous")) == 0


def test_impersonating_a_privileged_group_fires_whatever_the_user_name(ruleset):
    """``kubectl --as=nobody --as-group=system:masters`` is cluster-admin: the name is
    ordinary, the group is not."""
    masters = impersonating(PERSON, "nobody", ("system:masters", "system:authenticated"))
    assert fired(ruleset, "impersonation-of-privileged-identity", masters) == 1
    assert fired(ruleset, "impersonation-by-person", masters) == 0
    frame = events_from_dicts([masters], cluster="test")
    found = evaluate_rules(frame, ruleset.only("impersonation-of-privileged-identity")).findings
    assert "groups system:masters, system:authenticated" in found["reasons"][0][0]
    # an ordinary name with ordinary groups stays the person's record
    plain = impersonating(PERSON, "nobody", ("developers", "system:authenticated"))
    assert fired(ruleset, "impersonation-of-privileged-identity", plain) == 0
    assert fired(ruleset, "impersonation-by-person", plain) == 1


def test_a_reason_names_the_identity_a_request_was_sent_as(ruleset):
    """Any rule's sentence: the person who sent it, and whose rights it used."""
    created = impersonating(PERSON, "grace")
    frame = events_from_dicts([created], cluster="test")
    found = evaluate_rules(frame, ruleset.only("impersonation-by-person")).findings
    reason = found["reasons"][0][0]
    assert "some-user as grace created Namespace foo" in reason, reason
    alone = events_from_dicts([fixture("some-user_creates_namespace_foo")], cluster="test")
    found = evaluate_rules(alone, ruleset.only("namespace-created")).findings
    assert " as " not in found["reasons"][0][0]


# --------------------------------------------------------------------------- 8. deletes


def delete(resource: str, *, ns: str | None, name: str | None, group: str | None = None) -> dict:
    event = fixture("delete_configmap")
    ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
    prefix = f"/apis/{group}/v1" if group else "/api/v1"
    path = prefix + (f"/namespaces/{ns}" if ns else "") + f"/{resource}"
    if group:
        ref["apiGroup"] = group
    if ns:
        ref["namespace"] = ns
    if name:
        ref["name"] = name
        path += f"/{name}"
    else:
        event["verb"] = "deletecollection"
    event["objectRef"], event["requestURI"] = ref, path
    return event


def test_deleting_a_webhook_configuration_fires(ruleset):
    adm = "admissionregistration.k8s.io"
    one = delete(
        "validatingwebhookconfigurations",
        ns=None,
        name="gatekeeper-validating-webhook-configuration",
        group=adm,
    )
    every = delete("mutatingwebhookconfigurations", ns=None, name=None, group=adm)
    assert fired(ruleset, "admission-webhook-changed", one) == 1
    assert fired(ruleset, "admission-webhook-changed", every) == 1


def test_deleting_one_event_fires(ruleset):
    assert fired(ruleset, "events-deleted", delete("events", ns="default", name="nginx.17f0a")) == 1
    by_gc = delete("events", ns="default", name="nginx.17f0a")
    by_gc["user"] = GC
    assert fired(ruleset, "events-deleted", by_gc) == 0


def test_aws_auth_deleted_with_every_kube_system_configmap_fires(ruleset):
    every = delete("configmaps", ns="kube-system", name=None)
    assert fired(ruleset, "aws-auth-changed", every) == 1
    assert fired(ruleset, "aws-auth-changed", delete("configmaps", ns="shop", name=None)) == 0
    assert fired(ruleset, "aws-auth-changed", delete("configmaps", ns="kube-system", name="x")) == 0


# --------------------------------------------------------------------------- 9. baselines


def test_an_empty_baseline_range_keeps_the_absolute_threshold(ruleset):
    """No baseline, no usual: the absolute threshold (20), not the baseline minimum (10).
    An empty week (a new lake, the benign hkerma capture's scheduler start-up 403s), a week
    of another cluster only, or less than a day of this cluster (MIN_BASELINE: `detect
    watch` sees the minutes before each batch, `detect score` of the same range may see
    nothing) are no baseline; a day of this cluster in which alice was never denied is."""
    rule = "auth-failure-spike-principal"
    now = denials("alice", 12)  # above the baseline minimum (10), below the absolute threshold (20)

    def week(cluster: str, *hours_before: float):
        quiet = [ev("get", "pods", ns="a", at=T0 - timedelta(hours=h)) for h in hours_before]
        return events_from_dicts(quiet, cluster=cluster)

    assert fired(ruleset, rule, *now) == 0
    assert fired(ruleset, rule, *now, history=week("test")) == 0
    assert fired(ruleset, rule, *now, history=week("b", 1, 48)) == 0
    assert fired(ruleset, rule, *now, history=week("test", 0.1, 0.9)) == 0
    assert fired(ruleset, rule, *now, history=week("test", 1, 48)) == 1


# --------------------------------------------------------------------------- 10. denied exec


def denied_exec_into_kube_system() -> dict[str, Any]:
    event = exec_reading("%2Fvar%2Frun%2Fsecrets%2Fkubernetes.io%2Fserviceaccount%2Ftoken")
    event["objectRef"].update(namespace="kube-system", name="coredns-abc")
    event["requestURI"] = event["requestURI"].replace(
        "namespaces/default/pods/nginx-deployment-7998647bdf-phvq7",
        "namespaces/kube-system/pods/coredns-abc",
    )
    event["user"] = {"username": "dev-alice", "groups": ["system:authenticated"]}
    event["stage"] = "ResponseComplete"
    event["responseStatus"] = {
        "metadata": {},
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
    }
    event["annotations"] = {
        "authorization.k8s.io/decision": "forbid",
        "authorization.k8s.io/reason": "",
    }
    return event


def test_a_denied_exec_opens_no_session(ruleset):
    denied = denied_exec_into_kube_system()
    assert fired(ruleset, "exec-kube-system-pod", denied) == 0
    assert fired(ruleset, "exec-credential-read", denied) == 0
    # the attempt stays on record (info), as a denied exec
    assert fired(ruleset, "pod-exec", denied) == 1
    allowed = denied_exec_into_kube_system()
    allowed["stage"], allowed["responseStatus"] = "ResponseStarted", {"metadata": {}, "code": 101}
    allowed["annotations"]["authorization.k8s.io/decision"] = "allow"
    assert fired(ruleset, "exec-kube-system-pod", allowed) == 1
    assert fired(ruleset, "exec-credential-read", allowed) == 1


# --------------------------------------------------------------------------- 11. labels


def test_labels_and_annotations_named_like_pod_settings_are_not_the_settings(ruleset):
    pod = fixture("create_nginx_pod_unprivileged")
    for key in ("requestObject", "responseObject"):
        meta = pod[key]["metadata"]
        meta.setdefault("labels", {})["privileged"] = "true"
        meta.setdefault("annotations", {}).update(hostNetwork="true", hostPID="true")
    assert fired(ruleset, "privileged-container", pod) == 0
    assert fired(ruleset, "host-namespace-pod", pod) == 0
    frame = events_from_dicts([pod])
    flags = frame.select(DERIVED_FIELDS["host_namespaces"].build().alias("h"))["h"].to_list()
    assert flags == [[]]
    # the settings themselves still count
    assert fired(ruleset, "privileged-container", fixture("create_nginx_pod_privileged")) == 1
    assert fired(ruleset, "host-namespace-pod", fixture("create_nginx_pod_hostnetwork")) == 1


def test_deep_values_keep_booleans_apart_from_strings():
    from detector.rules.condition import deep_values

    body = {"metadata": {"labels": {"k": "true"}}, "spec": {"k": True, "n": 0, "s": "x"}}
    frame = pl.DataFrame({"request_object": [json.dumps(body)]})
    got = frame.select(deep_values("request_object", "k").alias("v"))["v"].to_list()
    assert got == [['"true"', "true"]]


# --------------------------------------------------------------------------- 12. JSON patches

SPEC = "/spec/template/spec"
PRIVILEGED = f"{SPEC}/containers/0/securityContext/privileged"


def json_patch(resource: str, *operations: dict[str, Any], group: str = "apps") -> dict[str, Any]:
    """``kubectl patch --type=json``: the body logged is the list of operations."""
    return ev("patch", resource, ns="prod", name="w", group=group, body=list(operations))


def op(kind: str, path: str, *value: Any, order: str = "op path value") -> dict[str, Any]:
    """One JSON-patch operation, its members in ``order`` (JSON objects keep it)."""
    members = {"op": kind, "path": path, **({"value": value[0]} if value else {})}
    return {key: members[key] for key in order.split() if key in members}


@pytest.mark.parametrize(
    ("rule_id", "operation"),
    [
        ("privileged-container", op("replace", PRIVILEGED, True)),
        ("privileged-container", op("add", PRIVILEGED, True, order="value path op")),
        ("host-namespace-pod", op("add", f"{SPEC}/hostNetwork", True)),
        ("host-namespace-pod", op("add", f"{SPEC}/hostPID", True, order="path op value")),
        ("sensitive-host-mount", op("add", f"{SPEC}/volumes/0/hostPath/path", "/etc/")),
        ("sensitive-host-mount", op("add", f"{SPEC}/volumes/2/hostPath", {"path": "/"})),
    ],
)
def test_a_json_patch_setting_a_pod_setting_is_that_setting(ruleset, rule_id, operation):
    harmless = op("replace", f"{SPEC}/containers/0/image", "nginx:1.27")
    assert fired(ruleset, rule_id, json_patch("deployments", harmless, operation)) == 1
    assert fired(ruleset, rule_id, json_patch("deployments", harmless)) == 0


@pytest.mark.parametrize(
    "operation",
    [
        op("add", "/rules/0/verbs/-", "*"),
        op("replace", "/rules/0/resources", ["pods", "*"]),
        op("add", "/rules/-", {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}),
    ],
)
def test_a_json_patch_widening_a_cluster_role_to_a_wildcard_fires(ruleset, operation):
    patch = json_patch("clusterroles", operation, group=RBAC)
    patch["objectRef"].pop("namespace")
    assert fired(ruleset, "clusterrole-wildcard", patch) == 1


@pytest.mark.parametrize(
    "operation",
    [
        op("test", PRIVILEGED, True),
        op("test", PRIVILEGED, True, order="path value op"),
        op("remove", PRIVILEGED),
        op("replace", PRIVILEGED, False),
        op("add", f"{SPEC}/template/metadata/labels/privileged", "true"),
    ],
)
def test_a_json_patch_that_only_tests_removes_or_labels_is_not_privileged(ruleset, operation):
    assert fired(ruleset, "privileged-container", json_patch("deployments", operation)) == 0


# --------------------------------------------------------------------------- 13. QA round 3
# Each case below is the event a QA review reproduced (add-on tokens taken for the control
# plane, JSON patches, suffix globs, upper-case keys, missing host paths...), with the
# closest benign request beside it.

KS = "system:serviceaccount:kube-system:"


def cluster_admin_binding(user: dict[str, Any] | str) -> dict[str, Any]:
    body = {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "pwn"},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "mallory"}],
    }
    return ev("create", "clusterrolebindings", group=RBAC, user=user, code=201, body=body)


def node_proxy(path: str, user: dict[str, Any] | str = "alice", verb: str = "create") -> dict:
    node = "ip-10-0-1-23.us-west-2.compute.internal"
    uri = f"/api/v1/nodes/{node.split('/')[0]}{path}"
    return ev(verb, "nodes", name=node, sub="proxy", user=user, uri=uri)


def webhook_created(user: dict[str, Any] | str) -> dict[str, Any]:
    body = {
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "x"},
        "webhooks": [{"name": "x.evil.io", "clientConfig": {"url": "https://203.0.113.9/m"}}],
    }
    group = "admissionregistration.k8s.io"
    return ev("create", "mutatingwebhookconfigurations", group=group, user=user, body=body)


@pytest.mark.parametrize(
    "addon",
    ["aws-load-balancer-controller", "ebs-csi-controller-sa", "karpenter", "cluster-autoscaler"],
)
def test_a_kube_system_add_on_token_is_not_the_control_plane(ruleset, addon):
    """Add-ons in kube-system run in ordinary pods: a stolen token of one is an attacker."""
    who = sa("kube-system", addon)
    assert fired(ruleset, "cluster-admin-binding", cluster_admin_binding(who)) == 1
    assert fired(ruleset, "rbac-changed", cluster_admin_binding(who)) == 1
    assert fired(ruleset, "nodes-proxy-access", node_proxy("/proxy/run/prod/api/app?cmd=id", who))
    assert fired(ruleset, "admission-webhook-changed", webhook_created(who)) == 1


@pytest.mark.parametrize(
    "controller",
    ["clusterrole-aggregation-controller", "generic-garbage-collector", "namespace-controller"],
)
def test_kube_controller_manager_controllers_stay_the_control_plane(ruleset, controller):
    who = sa("kube-system", controller)
    assert fired(ruleset, "rbac-changed", cluster_admin_binding(who)) == 0
    assert fired(ruleset, "admission-webhook-changed", webhook_created(who)) == 0
    assert fired(ruleset, "cluster-admin-binding", cluster_admin_binding("system:apiserver")) == 0


@pytest.mark.parametrize("verb", ["create", "patch"])
def test_a_gitops_controller_syncing_a_charts_webhook_is_not_reported(ruleset, verb):
    """Argo CD re-applies a chart's webhook on every sync whose caBundle an injector
    rewrote: a high alert each time would be a flood. The same write by a person, or by an
    account that only borrows the controller's name in another namespace, is reported."""
    argo = sa("argocd", "argocd-application-controller")
    flux = sa("flux-system", "kustomize-controller")
    for who in (argo, flux):
        event = webhook_created(who)
        event["verb"] = verb
        assert fired(ruleset, "admission-webhook-changed", event) == 0
    for who in (iam("alice", "platform-admin"), sa("default", "argocd-application-controller")):
        event = webhook_created(who)
        event["verb"] = verb
        assert fired(ruleset, "admission-webhook-changed", event) == 1


def test_impersonating_a_kube_system_add_on_is_still_privileged(ruleset):
    event = ev("get", "secrets", ns="kube-system", name="x")
    event["impersonatedUser"] = {"username": f"{KS}aws-load-balancer-controller"}
    assert fired(ruleset, "impersonation-of-privileged-identity", event) == 1


UNAUTH = {"apiGroup": RBAC, "kind": "Group", "name": "system:unauthenticated"}
ANON = {"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"}
READERS = {"apiGroup": RBAC, "kind": "Group", "name": "readers"}


@pytest.mark.parametrize("subject", [UNAUTH, ANON])
def test_a_json_patch_adding_anonymous_to_a_binding_fires(ruleset, subject):
    patch = [{"op": "add", "path": "/subjects/-", "value": subject}]
    binding = binding_patch("view-all", "view", patch, [READERS, subject])
    assert fired(ruleset, "anonymous-binding", binding) == 1
    # the same in a namespace's RoleBinding
    role_binding = copy.deepcopy(binding)
    role_binding["objectRef"].update(resource="rolebindings", namespace="prod", name="ops")
    role_binding["requestURI"] = f"/apis/{RBAC}/v1/namespaces/prod/rolebindings/ops"
    assert fired(ruleset, "anonymous-binding", role_binding) == 1


def test_a_json_patch_adding_a_person_to_a_binding_is_not_anonymous(ruleset):
    patch = [{"op": "add", "path": "/subjects/-", "value": EVE}]
    assert fired(ruleset, "anonymous-binding", binding_patch("v", "view", patch, [EVE])) == 0
    public = binding_patch(
        "system:public-info-viewer", "system:public-info-viewer", patch, [UNAUTH]
    )
    assert fired(ruleset, "anonymous-binding", public) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/run/monitoring/kube-state-metrics-6d4b9/proxy/metrics?cmd=cat+/etc/passwd",
        "/proxy/exec/monitoring/ksm-6d4b9/proxy/metrics?command=id&output=1",
        "/proxy/run/prod/api/0b9c6f5e-1111-4222-8333-444455556666/metrics?cmd=id",
        "/proxy/exec/prod/api-7d9f/x/healthz?command=sh",
        "/proxy/metrics/../run/prod/api/app?cmd=id",
        "/proxy/containerLogs/prod/api/app",
    ],
)
def test_a_kubelet_command_ending_in_a_metrics_path_fires(ruleset, path):
    assert fired(ruleset, "nodes-proxy-access", node_proxy(path)) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/proxy/metrics",
        "/proxy/metrics/cadvisor",
        "/proxy/metrics/resource",
        "/proxy/metrics/probes",
        "/proxy/stats/summary",
        "/proxy/healthz",
    ],
)
def test_kubelet_metrics_scrapes_through_the_proxy_stay_quiet(ruleset, path):
    prometheus = sa("monitoring", "prometheus-k8s")
    assert fired(ruleset, "nodes-proxy-access", node_proxy(path, prometheus, "get")) == 0
    port = node_proxy(path, prometheus, "get")
    port["requestURI"] = port["requestURI"].replace(".internal/", ".internal:10250/")
    assert fired(ruleset, "nodes-proxy-access", port) == 0


COREFILE = ".:53 {\n    errors\n    kubernetes cluster.local in-addr.arpa ip6.arpa\n}\n"


def dns_config(verb: str, name: str = "coredns", user: Any = "alice", **kw: Any) -> dict:
    body = {"kind": "ConfigMap", "metadata": {"name": name}, "data": {"Corefile": COREFILE}}
    return ev(verb, "configmaps", ns="kube-system", name=name, user=user, body=body, **kw)


@pytest.mark.parametrize(
    ("verb", "name"), [("update", "coredns"), ("patch", "coredns"), ("delete", "kube-dns")]
)
def test_coredns_configuration_changed_by_a_person_fires(ruleset, verb, name):
    rewrite = dns_config(verb, name)
    rewrite["requestObject"]["data"]["Corefile"] = COREFILE.replace(
        "errors", "rewrite name exact kubernetes.default.svc.cluster.local evil.example"
    )
    assert fired(ruleset, "cluster-dns-config-changed", rewrite) == 1


def test_coredns_reconciled_by_eks_or_another_configmap_stays_quiet(ruleset):
    eks = dns_config("patch", user={"username": "eks:addon-manager"})
    assert fired(ruleset, "cluster-dns-config-changed", eks) == 0
    assert fired(ruleset, "cluster-dns-config-changed", dns_config("update", "kube-proxy")) == 0
    assert fired(ruleset, "cluster-dns-config-changed", dns_config("get")) == 0


def service(verb: str, body: Any, *, ns: str = "default", name: str = "web") -> dict:
    return ev(verb, "services", ns=ns, name=name, body=body)


def test_a_json_patch_making_a_service_a_node_port_fires(ruleset):
    to_node_port = [{"op": "replace", "path": "/spec/type", "value": "NodePort"}]
    assert fired(ruleset, "nodeport-service", service("patch", to_node_port)) == 1
    back = [{"op": "replace", "path": "/spec/type", "value": "ClusterIP"}]
    assert fired(ruleset, "nodeport-service", service("patch", back)) == 0
    probe = [{"op": "test", "path": "/spec/type", "value": "NodePort"}]
    assert fired(ruleset, "nodeport-service", service("patch", probe)) == 0


DASHBOARD = {
    "kind": "Service",
    "metadata": {"name": "kubernetes-dashboard", "namespace": "kubernetes-dashboard"},
    "spec": {"type": "LoadBalancer", "selector": {"k8s-app": "kubernetes-dashboard"}},
}


def test_the_dashboard_behind_a_load_balancer_fires(ruleset):
    ns = "kubernetes-dashboard"
    created = service("create", DASHBOARD, ns=ns, name="")  # a create names no object
    assert fired(ruleset, "dashboard-exposed", created) == 1
    to_lb = {"spec": {"type": "LoadBalancer"}}
    assert fired(ruleset, "dashboard-exposed", service("patch", to_lb, ns=ns, name=ns)) == 1
    json_patch = [{"op": "replace", "path": "/spec/type", "value": "LoadBalancer"}]
    renamed = service("patch", json_patch, ns="tools", name="kubernetes-dashboard-kong-proxy")
    assert fired(ruleset, "dashboard-exposed", renamed) == 1


def test_kubeflows_dashboard_behind_a_load_balancer_fires(ruleset):
    """GuardDuty's KubeflowDashboardExposed: Kubeflow's central dashboard or pipelines UI
    given a load balancer (its notebooks and pipelines run code); other kubeflow Services
    and the same UIs kept internal do not."""
    central = {
        "kind": "Service",
        "metadata": {"name": "centraldashboard", "namespace": "kubeflow"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "centraldashboard"}},
    }
    created = service("create", central, ns="kubeflow", name="")
    assert fired(ruleset, "dashboard-exposed", created) == 1
    to_lb = [{"op": "replace", "path": "/spec/type", "value": "LoadBalancer"}]
    patched = service("patch", to_lb, ns="kubeflow", name="ml-pipeline-ui")
    assert fired(ruleset, "dashboard-exposed", patched) == 1
    other = copy.deepcopy(central)
    other["metadata"]["name"], other["spec"]["selector"] = "katib-ui", {"app": "katib-ui"}
    assert fired(ruleset, "dashboard-exposed", service("create", other, ns="kubeflow")) == 0
    internal = copy.deepcopy(central)
    internal["metadata"]["annotations"] = {
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"
    }
    assert fired(ruleset, "dashboard-exposed", service("create", internal, ns="kubeflow")) == 0


def test_other_load_balancers_and_an_internal_dashboard_stay_quiet(ruleset):
    shop = copy.deepcopy(DASHBOARD)
    shop["metadata"] = {"name": "shop", "namespace": "shop"}
    shop["spec"]["selector"] = {"app": "shop"}
    assert fired(ruleset, "dashboard-exposed", service("create", shop, ns="shop", name="shop")) == 0
    internal = copy.deepcopy(DASHBOARD)
    internal["metadata"]["annotations"] = {
        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"
    }
    ns = "kubernetes-dashboard"
    assert fired(ruleset, "dashboard-exposed", service("create", internal, ns=ns)) == 0
    cluster_ip = copy.deepcopy(DASHBOARD)
    cluster_ip["spec"]["type"] = "ClusterIP"
    assert fired(ruleset, "dashboard-exposed", service("create", cluster_ip, ns=ns)) == 0


def test_upper_case_aws_keys_in_a_configmap_fire(ruleset):
    data = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalr"}
    body = {"kind": "ConfigMap", "metadata": {"name": "app"}, "data": data}
    created = ev("create", "configmaps", ns="default", code=201, body=body)
    assert fired(ruleset, "configmap-credentials", created) == 1
    plain = copy.deepcopy(created)
    plain["requestObject"]["data"] = {"AWS_REGION": "us-west-2", "LOG_LEVEL": "INFO"}
    assert fired(ruleset, "configmap-credentials", plain) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/var/lib/docker/overlay2",
        "/var/lib/kubelet/kubeconfig",
        "/var/lib/kubelet/config.json",
        "/var/lib/kubelet/plugins",
        "/etc/cron.d",
        "/etc/shadow",
        "/etc/eks",
        "/boot",
        "/boot/grub",
        "/root/.ssh",
        "/var/lib/containerd/io.containerd.runtime.v2.task",
    ],
)
def test_sensitive_subpaths_fire(ruleset, path):
    assert fired(ruleset, "sensitive-host-mount", mount(path)) == 1


def mounts(*paths: str) -> dict[str, Any]:
    event = mount(paths[0])
    for key in ("requestObject", "responseObject"):
        event[key]["spec"]["volumes"] = [
            {"name": f"h{i}", "hostPath": {"path": p}} for i, p in enumerate(paths)
        ]
    return event


def test_routine_subpaths_stay_quiet_unless_beside_a_sensitive_one(ruleset):
    agent = ("/var/log", "/var/lib/docker/containers", "/etc/machine-id", "/etc/localtime")
    assert fired(ruleset, "sensitive-host-mount", mounts(*agent)) == 0
    assert fired(ruleset, "sensitive-host-mount", mounts("/etc/ssl/certs/ca-bundle.crt")) == 0
    assert fired(ruleset, "sensitive-host-mount", mounts("/etc/localtime", "/etc/shadow")) == 1


def helm_list(user_agent: str, selector: str | None) -> dict[str, Any]:
    query = f"?labelSelector={selector}" if selector else ""
    event = ev("list", "secrets", uri=f"/api/v1/secrets{query}", user=iam())
    event["userAgent"] = user_agent
    return event


def test_helm_listing_its_releases_is_not_a_secrets_dump(ruleset):
    rule = "secrets-listed-cluster-wide"
    assert fired(ruleset, rule, helm_list("Helm/3.16.2", "owner%3Dhelm")) == 0
    assert fired(ruleset, rule, helm_list("Helm/3.16.2", "name%3Dweb%2Cowner%3Dhelm")) == 0
    assert fired(ruleset, rule, helm_list("Helm/3.16.2", None)) == 1
    assert fired(ruleset, rule, helm_list("Helm/3.16.2", "owner%3Dhelmet")) == 1
    assert fired(ruleset, rule, helm_list("kubectl/v1.31.2", "owner%3Dhelm")) == 1
    # The API server applies the first selector: an empty one, then Helm's, lists every
    # secret (found by review).
    assert fired(ruleset, rule, helm_list("Helm/3.16.2", "&labelSelector=owner%3Dhelm")) == 1
    assert fired(ruleset, rule, helm_list("Helm/3.16.2", "owner%3Dhelm&labelSelector=")) == 0


def test_another_api_group_s_secrets_are_not_kubernetes_secrets(ruleset):
    """AWS Controllers for Kubernetes name Secrets Manager entries ``secrets`` in their own
    group: listing them all was a cluster-wide secrets dump (found by review)."""
    group = "secretsmanager.services.k8s.aws"
    ack = ev("list", "secrets", uri=f"/apis/{group}/v1alpha1/secrets", user=iam(), group=group)
    core = ev("list", "secrets", uri="/api/v1/secrets", user=iam())
    assert fired(ruleset, "secrets-listed-cluster-wide", ack) == 0
    assert fired(ruleset, "secrets-listed-cluster-wide", core) == 1


@pytest.mark.parametrize(
    ("ns", "who", "fires"),
    [
        ("kube-system", iam(), 1),  # kubectl get secrets -n kube-system -o yaml
        ("shop", iam(), 0),  # one team's namespace: secret-enumeration counts reads there
        ("kube-system", sa("monitoring", "prometheus"), 0),  # a controller: the model's
    ],
)
def test_a_person_listing_kube_systems_secrets_is_reported(ruleset, ns, who, fires):
    listed = ev("list", "secrets", ns=ns, uri=f"/api/v1/namespaces/{ns}/secrets", user=who)
    assert fired(ruleset, "secrets-listed-cluster-wide", listed) == fires
    helm = ev(
        "list",
        "secrets",
        ns=ns,
        uri=f"/api/v1/namespaces/{ns}/secrets?labelSelector=owner%3Dhelm",
        user=who,
    )
    helm["userAgent"] = "Helm/3.16.2"
    assert fired(ruleset, "secrets-listed-cluster-wide", helm) == 0  # helm list -n kube-system


def kube_system_pod(image: str) -> dict[str, Any]:
    body = {
        "kind": "Pod",
        "metadata": {"generateName": "karpenter-6c9f8d7b9-", "namespace": "kube-system"},
        "spec": {"serviceAccountName": "karpenter", "containers": [{"image": image}]},
    }
    who = sa("kube-system", "replicaset-controller")
    return ev("create", "pods", ns="kube-system", user=who, code=201, body=body)


def test_karpenter_in_kube_system_is_a_cluster_image(ruleset):
    karpenter = "public.ecr.aws/karpenter/controller:1.0.6@sha256:" + "1e" * 32
    assert fired(ruleset, "pod-in-kube-namespace", kube_system_pod(karpenter)) == 0
    look_alike = "public.ecr.aws/karpenter/controller-x:1.0.6"
    assert fired(ruleset, "pod-in-kube-namespace", kube_system_pod(look_alike)) == 1
    assert fired(ruleset, "pod-in-kube-namespace", kube_system_pod("busybox:1.36")) == 1
