"""`detect rules list | test | docs`, and rule findings through score and findings.

One test runs the real console script in a subprocess, as a user or cron would; the rest
invoke the same typer app in-process (same exit codes and stderr), because starting
`detect` costs seconds of imports (scikit-learn) per call.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from factories import ndjson
from test_rules_helpers import ev, iam
from typer.testing import CliRunner

from detector.cli import app

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str) -> Any:
    """``detect ARGS`` in-process: result with exit_code, stdout, stderr."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def write_log(path: Path, *events: dict) -> str:
    path.write_bytes(ndjson(list(events)))
    return str(path)


@pytest.fixture
def audit_log(tmp_path) -> str:
    return write_log(
        tmp_path / "audit.log",
        ev(
            "patch",
            "configmaps",
            ns="kube-system",
            name="aws-auth",
            user=iam(),
            body={"data": {"mapRoles": "..."}},
        ),
        ev(
            "patch",
            "configmaps",
            ns="kube-system",
            name="aws-auth",
            user="eks:node-manager",
            body={"data": {}},
        ),
        ev("get", "pods", ns="default"),
    )


def test_list_table_and_json():
    table = cli("rules", "list")
    assert table.exit_code == 0, table.stderr
    assert "aws-auth-changed" in table.stdout and "rules enabled" in table.stdout
    listed = cli(
        "rules", "list", "--format", "json", "--disable", "pod-exec", "--enable", "secret-created"
    )
    assert listed.exit_code == 0, listed.stderr
    data = json.loads(listed.stdout)
    by_id = {r["id"]: r for r in data["rules"]}
    assert not by_id["pod-exec"]["enabled"] and by_id["secret-created"]["enabled"]
    assert by_id["privileged-container"]["falco"] == ["Create Privileged Pod"]
    assert data["fingerprint"].startswith("rules-")


def test_unknown_id_and_bad_file_are_one_line_exit_2(tmp_path):
    unknown = cli("rules", "list", "--disable", "pod-exce")
    assert unknown.exit_code == 2
    assert unknown.stderr.count("\n") == 1
    assert "'pod-exce': no such rule; did you mean pod-exec?" in unknown.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("- rule: mine\n  title: t\n  severity: urgent\n")
    broken = cli("rules", "list", "--rules", str(bad))
    assert broken.exit_code == 2
    assert broken.stderr.strip() == (
        f"error: {bad}: rule 'mine': missing required key(s): tactic, technique, "
        "description, condition"
    )


def test_subprocess_rule_test_shows_what_fired_and_why(detect, audit_log):
    result = detect("rules", "test", "aws-auth-changed", audit_log)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "matching the condition: 2" in out
    assert "removed by exception eks_identities: 1" in out
    assert "FIRED: 1 finding(s)" in out
    assert "eng-admin (session alice) patched ConfigMap kube-system/aws-auth" in out
    as_json = json.loads(
        cli("rules", "test", "aws-auth-changed", audit_log, "--format", "json").stdout
    )
    assert as_json["stats"]["excluded"] == {"eks_identities": 1, "known_aws_auth_editors": 0}
    assert len(as_json["findings"]) == 1


def test_rule_test_explains_silence_and_can_fail_ci(audit_log, tmp_path):
    started_only = tmp_path / "stage.yaml"
    started_only.write_text(
        "- rule: aws-auth-changed\n  override: {stages: replace}\n  stages: [ResponseStarted]\n"
    )
    silent = cli("rules", "test", "events-deleted", audit_log, "--expect-fire")
    assert silent.exit_code == 1
    assert "did not fire: no event matches the condition" in silent.stdout
    stage = cli("rules", "test", "aws-auth-changed", audit_log, "--rules", str(started_only))
    assert stage.exit_code == 0
    assert "did not fire: no event is at stage ResponseStarted" in stage.stdout
    disabled = cli("rules", "test", "namespace-created", audit_log)
    assert disabled.exit_code == 0 and "(ships disabled)" in disabled.stdout


def test_rule_test_names_the_term_that_stopped_each_event(audit_log):
    # pod-exec over a configmap patch and a plain pod read: each stops at the first term
    # of the condition it fails, as written in the rule, and the events are named.
    out = cli("rules", "test", "pod-exec", audit_log)
    assert out.exit_code == 0, out.stderr
    assert "what stopped each event (first failing term):" in out.stdout
    assert "2 x condition: resource = pods" in out.stdout
    assert "1 x condition: subresource in (exec, attach)" in out.stdout
    data = json.loads(cli("rules", "test", "pod-exec", audit_log, "--format", "json").stdout)
    stopped = {e["verb"] + " " + e["resource"]: e["stopped_by"] for e in data["stopped"]}
    assert stopped["get pods"] == "condition: subresource in (exec, attach)"


def test_rule_test_usage_errors(audit_log, tmp_path):
    typo = cli("rules", "test", "aws-auth-change", audit_log)
    assert typo.exit_code == 2 and "did you mean aws-auth-changed" in typo.stderr
    missing = cli("rules", "test", "pod-exec", str(tmp_path / "nope.log"))
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    window = cli("rules", "test", "pod-exec", audit_log, "--window", "ten")
    assert window.exit_code == 2 and "--window" in window.stderr


def test_override_file_changes_what_fires(audit_log, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(
        "- list: user_known_aws_auth_editors\n  append: true\n"
        "  items: ['arn:aws:iam::111122223333:role/eng-admin/*']\n"
    )
    result = cli("rules", "test", "aws-auth-changed", audit_log, "--rules", str(site))
    assert result.exit_code == 0
    assert "removed by exception known_aws_auth_editors: 1" in result.stdout
    assert "did not fire: every matching event is covered by an exception" in result.stdout


def test_docs_check_and_stdout(tmp_path):
    current = cli("rules", "docs", "--check", "--output", str(ROOT / "docs" / "rules.md"))
    assert current.exit_code == 0, current.stderr
    stale = tmp_path / "rules.md"
    stale.write_text("old\n")
    check = cli("rules", "docs", "--check", "--output", str(stale))
    assert check.exit_code == 1 and "out of date" in check.stderr
    missing = cli("rules", "docs", "--check", "--output", str(tmp_path / "none.md"))
    assert missing.exit_code == 1 and "none.md does not exist" in missing.stderr
    assert cli("rules", "docs", "--output", "-").stdout.startswith("# Detection rules")
    written = cli("rules", "docs", "--output", str(stale))
    assert written.exit_code == 0 and stale.read_text().startswith("# Detection rules")
    # what is not the docs page is out of date, read no further than the docs could be:
    # /dev/zero was read until the kernel killed the process, a binary file was "unexpected
    # UnicodeDecodeError", and a line break in the name printed three lines (found by review)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    for path in ("/dev/zero", str(binary), str(tmp_path / "a\nb")):
        check = cli("rules", "docs", "--check", "--output", path)
        assert check.exit_code == 1 and len(check.stderr.strip().splitlines()) == 1, path


@pytest.mark.parametrize("sub", ["list", "test", "docs"])
def test_help_has_an_example(sub):
    result = cli("rules", sub, "--help")
    assert result.exit_code == 0 and "Example" in result.stdout


def test_rule_findings_are_filed_and_listed_through_detect_findings(tmp_path):
    lake = str(tmp_path / "lake")
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    log = write_log(
        tmp_path / "audit.log",
        ev(
            "patch",
            "configmaps",
            ns="kube-system",
            name="aws-auth",
            user=iam(),
            at=at,
            body={"data": {"mapRoles": "..."}},
        ),
        ev("deletecollection", "events", ns="prod", user="mallory", at=at),
    )
    ingested = cli("ingest", log, "--lake", lake, "--cluster", "prod")
    assert ingested.exit_code == 0, ingested.stderr
    scored = cli("score", "--lake", lake, "--since", "2h", "--rules-only", "--format", "json")
    assert scored.exit_code == 0, scored.stderr
    detectors = {f["detector"] for f in json.loads(scored.stdout)["findings"]}
    assert detectors == {"rule:aws-auth-changed", "rule:events-deleted"}
    listed = cli("findings", "--lake", lake, "--since", "2h", "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    rows = rows["findings"] if isinstance(rows, dict) else rows
    aws = next(r for r in rows if r["detector"] == "rule:aws-auth-changed")
    assert aws["reasons"] == ["eng-admin (session alice) patched ConfigMap kube-system/aws-auth"]
    shown = cli("findings", "show", aws["finding_id"], "--lake", lake)
    assert shown.exit_code == 0, shown.stderr
    assert "aws-auth" in shown.stdout


def test_aws_ranges_refresh_from_a_supplied_file(tmp_path):
    source = tmp_path / "ip-ranges.json"
    source.write_text(
        '{"syncToken": "9", "createDate": "2026-11-01-00-00-00", "prefixes": ['
        '{"ip_prefix": "3.5.140.0/23", "service": "AMAZON"}]}'
    )
    out = tmp_path / "aws.txt"
    done = cli("rules", "aws-ranges", str(source), "--output", str(out))
    assert done.exit_code == 0, done.stderr
    assert out.read_text().splitlines()[2:] == ["3.5.140.0/23"]
    assert "createDate 2026-11-01-00-00-00" in done.stdout
    source.write_text('{"prefixes": "nope"}')
    bad = cli("rules", "aws-ranges", str(source), "--output", str(out))
    assert bad.exit_code == 2 and "not AWS's ip-ranges.json" in bad.stderr


def test_refreshed_aws_ranges_go_to_a_file_of_yours_and_reach_the_rules(tmp_path, monkeypatch):
    """The refresh never rewrites the installed package (read-only in an image, replaced on
    upgrade): it writes ./aws-ip-ranges.txt, or the file detect.toml's aws_ranges names,
    and the rules read that file instead of the shipped snapshot."""
    from detector.rules.iplists import shipped_aws_ranges

    monkeypatch.delenv("DETECT_AWS_RANGES", raising=False)
    monkeypatch.chdir(tmp_path)
    shipped = shipped_aws_ranges().read_bytes()
    source = tmp_path / "ip-ranges.json"
    source.write_text(
        '{"syncToken": "9", "createDate": "2026-11-01-00-00-00", "prefixes": ['
        '{"ip_prefix": "198.51.100.0/24", "service": "AMAZON"}]}'
    )
    done = cli("rules", "aws-ranges", str(source))
    assert done.exit_code == 0, done.stderr
    written = tmp_path / "aws-ip-ranges.txt"
    assert written.read_text().splitlines()[2:] == ["198.51.100.0/24"]
    assert 'aws_ranges = "' in done.stdout  # what to add to use it
    assert shipped_aws_ranges().read_bytes() == shipped
    # A kubelet calling from 198.51.100.9: outside AWS for the shipped snapshot, inside
    # the ranges of the file detect.toml names.
    node = "system:node:ip-10-0-1-7.ec2.internal"
    log = write_log(tmp_path / "audit.log", ev("get", "pods", ns="a", user=node, ip="198.51.100.9"))
    rule = "system-identity-outside-aws"
    assert "FIRED" in cli("rules", "test", rule, log).stdout
    config = tmp_path / "detect.toml"
    config.write_text('aws_ranges = "aws-ip-ranges.txt"\n')
    quiet = cli("--config", str(config), "rules", "test", rule, log)
    assert quiet.exit_code == 0, quiet.stderr
    assert "did not fire" in quiet.stdout
    shown = cli("--config", str(config), "config", "show", "--format", "json")
    rows = {r["setting"]: r for r in json.loads(shown.stdout)["settings"]}
    assert rows["aws_ranges"] == {
        "setting": "aws_ranges",
        "value": str(written),
        "source": "detect.toml",
    }
    # A refresh with the setting in place writes where it points, and says nothing more.
    elsewhere = tmp_path / "feeds"
    elsewhere.mkdir()
    config.write_text('aws_ranges = "feeds/aws.txt"\n')
    again = cli("--config", str(config), "rules", "aws-ranges", str(source))
    assert again.exit_code == 0, again.stderr
    assert (elsewhere / "aws.txt").read_text() == written.read_text()
    assert "aws_ranges =" not in again.stdout
    (elsewhere / "aws.txt").unlink()
    missing = cli("--config", str(config), "rules", "test", rule, log)
    assert missing.exit_code == 2 and "aws.txt" in missing.stderr
    config.write_text("aws_ranges = 3\n")
    bad = cli("--config", str(config), "rules", "list")
    assert bad.exit_code == 2 and "aws_ranges" in bad.stderr and "file path" in bad.stderr


def test_ip_lists_named_in_detect_toml_reach_the_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("DETECT_IP_LISTS", raising=False)
    (tmp_path / "feeds").mkdir()
    (tmp_path / "feeds" / "tor.txt").write_text("185.220.101.0/24\n")
    config = tmp_path / "detect.toml"
    config.write_text('ip_lists = ["feeds/tor.txt"]\n')
    log = write_log(tmp_path / "audit.log", ev("get", "pods", ns="a", ip="185.220.101.9"))
    fired = cli("--config", str(config), "rules", "test", "denied-ip-caller", log)
    assert fired.exit_code == 0, fired.stderr
    shown = cli("--config", str(config), "config", "show", "--format", "json")
    rows = {r["setting"]: r for r in json.loads(shown.stdout)["settings"]}
    assert rows["ip_lists"]["value"] == [str(tmp_path / "feeds" / "tor.txt")]
    assert rows["ip_lists"]["source"] == "detect.toml"
    assert "FIRED: 1 finding(s)" in fired.stdout and "from 185.220.101.9" in fired.stdout
    silent = cli("rules", "test", "denied-ip-caller", log)
    assert "did not fire" in silent.stdout
    config.write_text('ip_lists = "feeds/tor.txt"\n')
    bad = cli("--config", str(config), "rules", "list")
    assert bad.exit_code == 2 and "ip_lists" in bad.stderr and "list of file paths" in bad.stderr
