"""The KubeRay RayJob (pipelines/kubernetes/ray/rayjob.yaml), checked offline.

A RayJob is a custom resource: the Kubernetes schemas that kubernetes-validate ships do not
know it. So what can be validated is: the YAML and the RayJob fields KubeRay requires, the
pod templates inside it (each checked against the Kubernetes Pod schema, wrapped as a Pod,
and locked down like the other manifests' pods), and the entrypoint, which must be a
`detect` command line that the real CLI parses, on the Ray executor.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from detector.cli import app
from tests.venvs import tools_venv

ROOT = Path(__file__).resolve().parent.parent
RAYJOB = ROOT / "pipelines" / "kubernetes" / "ray" / "rayjob.yaml"


@pytest.fixture(scope="module")
def job() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    return doc


def templates(job: dict) -> list[tuple[str, dict]]:
    cluster = job["spec"]["rayClusterSpec"]
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in cluster["workerGroupSpecs"]]
    return out


def test_rayjob_has_the_fields_kuberay_requires(job):
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["namespace"] == "audit-detector"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True  # the cluster goes away with the job
    assert spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    assert isinstance(cluster["headGroupSpec"]["rayStartParams"], dict)
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 < group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    lock = (ROOT / "uv.lock").read_text()
    ray = re.search(r'name = "ray"\nversion = "([^"]+)"', lock)
    assert ray and cluster["rayVersion"] == ray[1], "rayVersion must be the locked Ray"


def test_entrypoint_is_a_detect_command_on_the_ray_executor(job):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "detect" and argv[1] in {"train", "score", "evaluate"}
    command = typer.main.get_command(app)
    sub = command.get_command(None, argv[1])  # type: ignore[attr-defined]
    assert sub is not None
    ctx = sub.make_context(argv[1], argv[2:])  # the real option parser: unknown flags fail
    assert ctx.params["executor"].value == "ray"
    assert ctx.params["address"] is None  # joins the job's cluster through RAY_ADDRESS


def test_pod_templates_pass_the_pod_schema(job, tmp_path):
    pods = []
    for name, template in templates(job):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"ray-{name}", **template.get("metadata", {})},
            "spec": template["spec"],
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(pod))
        pods.append(str(path))
    validator = str(tools_venv() / "bin" / "kubernetes-validate")
    proc = subprocess.run(
        [validator, "--strict", "--quiet", "-k", "1.29", *pods], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ray_pods_are_locked_down_and_get_config_shm_and_tmp(job):
    for _, template in templates(job):
        spec = template["spec"]
        assert spec["serviceAccountName"] == "audit-detector"
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        volumes = {v["name"]: v for v in spec["volumes"]}
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
        assert "-ray:" in c["image"] and not c["image"].endswith(":latest")
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["DETECT_CONFIG"] == "/etc/detect/detect.toml"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]  # Ray's session files, HOME
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"  # object store
        assert volumes[mounts["/etc/detect"]]["configMap"]["name"] == "audit-detector-config"


def test_the_submitter_pod_is_locked_down_too(job):
    """KubeRay makes a pod to submit the job (`ray job submit`); its default has no
    securityContext, and the namespace's restricted policy refused it (found by review)."""
    spec = job["spec"]["submitterPodTemplate"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "-ray:" in c["image"]


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels and In expressions) selects ``labels``."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_only_the_jobs_own_pods_reach_its_ray_pods(job):
    """Ray has no authentication and sends tasks pickled, and the driver holds the lake's
    and the sinks' secrets (found by review): a NetworkPolicy admits only the job's pods.
    Checked offline against the RayJob's labels, so a label renamed in one file fails."""
    (policy,) = [d for d in yaml.safe_load_all((RAYJOB.parent / "networkpolicy.yaml").read_text())]
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["namespace"] == "audit-detector"
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    rule, operator = spec["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector, no ipBlock: this namespace
    assert "ports" not in rule  # Ray's own ports are many
    # The KubeRay operator polls the head's dashboard for the job's status (K8sJobMode):
    # blocked, the job never finished (found by review). That port only, its pods only.
    (op,) = operator["from"]
    assert op["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    assert operator["ports"] == [{"port": 8265, "protocol": "TCP"}]
    assert job["spec"]["submissionMode"] == "K8sJobMode"
    ray_pods = [t["metadata"]["labels"] for _, t in templates(job)]
    submitter = job["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    assert all(_selects(spec["podSelector"], labels) for labels in ray_pods)
    assert all(_selects(source["podSelector"], labels) for labels in [*ray_pods, submitter])
    other = {"app.kubernetes.io/name": "audit-detector", "app.kubernetes.io/component": "watch"}
    assert not _selects(source["podSelector"], other)  # the long-running watch Deployment
    assert "networkpolicy.yaml" in RAYJOB.read_text()


def test_the_image_it_names_can_be_built_with_ray():
    dockerfile = (ROOT / "pipelines" / "kubernetes" / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile and dockerfile.count("$EXTRAS") == 2
    assert '--build-arg EXTRAS="--extra ray"' in RAYJOB.read_text()
    extras = (ROOT / "pyproject.toml").read_text()
    # with the dashboard's Jobs API, through which K8sJobMode submits the entrypoint: plain
    # `ray` and include-dashboard "false" left the job unsubmittable (found by review)
    assert re.search(r'^ray = \[\n\s+"ray\[default\][>=]', extras, re.M)
    assert "include-dashboard" not in RAYJOB.read_text()
    # KubeRay starts pods with `bash -lc`: the venv on PATH for login shells too (review)
    assert "/etc/profile.d/" in dockerfile
