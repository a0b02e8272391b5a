"""`detect score` delivers incidents once; `detect incidents`, `findings ack|resolve` and
`detect suppressions` through the CLI (in-process, like test_rules_cli)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from alerts_data import Receiver
from test_rules_helpers import ev, iam
from typer.testing import CliRunner

from detector.cli import app


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env=env)


@pytest.fixture
def scored(tmp_path):
    """A lake with two rule findings (two principals) and a webhook sink on loopback."""
    receiver = Receiver()
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    log = tmp_path / "audit.log"
    events = [
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
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    lake = str(tmp_path / "lake")
    config = tmp_path / "detect.toml"
    config.write_text(
        f'lake = "{lake}"\n[[sinks]]\nname = "hook"\ntype = "webhook"\n'
        'url_env = "TEST_ALERT_URL"\nsecret_env = "TEST_ALERT_KEY"\n'
    )
    env = {"TEST_ALERT_URL": receiver.url, "TEST_ALERT_KEY": "hush-hush"}
    assert cli("ingest", str(log), "--lake", lake, "--cluster", "prod").exit_code == 0
    yield {"lake": lake, "config": str(config), "env": env, "receiver": receiver, "tmp": tmp_path}
    receiver.close()


def score(s: dict, *extra: str) -> Any:
    out = cli(
        "--config",
        s["config"],
        "score",
        "--since",
        "2h",
        "--rules-only",
        "--format",
        "json",
        *extra,
        env=s["env"],
    )
    assert out.exit_code == 0, out.stderr
    return json.loads(out.stdout)


def test_score_delivers_each_incident_once_across_runs(scored):
    first = score(scored)
    assert first["incidents"]["delivery"]["new"] == 2
    again = score(scored)  # the same range re-scored: same incidents, nothing new to send
    assert again["incidents"]["delivery"]["sent"] == 0
    users = sorted(b["output_fields"]["ka.user.name"] for b in scored["receiver"].delivered)
    assert len(users) == 2 and "mallory" in users


def _files(root: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in Path(root).rglob("*") if p.is_file()}


def test_a_dry_run_shows_the_findings_and_changes_nothing(scored):
    """`--dry-run` is for trying rules on a shared lake (or scoring with read access only):
    a run with other rules otherwise replaces the range's findings for everyone and alerts.
    It shows what a real run finds, writes no file and sends nothing."""
    before = _files(scored["lake"])
    dry = score(scored, "--dry-run")
    assert dry["written"] is False and dry["incidents"] is None
    assert _files(scored["lake"]) == before
    assert scored["receiver"].delivered == []
    real = score(scored)
    assert real["written"] is True and real["incidents"]["delivery"]["new"] == 2
    ids = sorted(f["finding_id"] for f in dry["findings"])
    assert ids and ids == sorted(f["finding_id"] for f in real["findings"])
    table = cli(
        "--config",
        scored["config"],
        "score",
        "--since",
        "2h",
        "--rules-only",
        "--dry-run",
        env=scored["env"],
    )
    assert "not written (--dry-run)" in table.stdout
    assert "incidents not updated, nothing delivered (--dry-run)" in table.stdout


def test_incidents_list_show_ack_by_prefix(scored):
    score(scored)
    lake = scored["lake"]
    listed = json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)
    assert len(listed) == 2 and {i["status"] for i in listed} == {"new"}
    iid = listed[0]["incident_id"]
    shown = cli("incidents", "show", iid[:6], "--lake", lake)
    assert shown.exit_code == 0 and "why this severity" in shown.stdout
    acked = cli("incidents", "ack", iid[:6], "--lake", lake, "--reason", "on it")
    assert acked.exit_code == 0, acked.stderr
    statuses = {
        i["incident_id"]: i["status"]
        for i in json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)
    }
    assert statuses[iid] == "acknowledged"
    unknown = cli("incidents", "show", "ffffffff", "--lake", lake)
    assert unknown.exit_code == 2 and "no incident" in unknown.stderr


def test_findings_ack_and_resolve_by_prefix(scored):
    out = score(scored)
    fid = out["findings"][0]["finding_id"]
    lake = scored["lake"]
    assert cli("findings", "ack", fid[:8], "--lake", lake).exit_code == 0
    why = "benign: backup job SEC-1"
    done = cli("findings", "resolve", fid[:8], "--lake", lake, "--reason", why)
    assert done.exit_code == 0 and f"finding {fid}: resolved" in done.stdout
    shown = json.loads(cli("findings", "show", fid[:7], "--lake", lake, "--format", "json").stdout)
    assert shown["status"] == "resolved" and shown["incident_id"]
    # the reason typed is read back (it was kept, never shown; review)
    assert shown["status_reason"] == why
    assert f"status resolved: {why}" in cli("findings", "show", fid[:7], "--lake", lake).stdout


def test_suppressed_findings_are_not_delivered_and_stay_in_the_lake(scored):
    sup = scored["tmp"] / "suppressions.yaml"
    sup.write_text(
        "suppressions:\n  - name: mallory-cleanup\n    reason: nightly events cleanup job\n"
        "    expires: 2099-12-31\n    match:\n      principal: mallory\n      namespace: prod\n"
    )
    checked = cli("suppressions", str(sup), "--lake", scored["lake"], "--since", "2h")
    assert checked.exit_code == 0 and "mallory-cleanup: active" in checked.stdout
    old = scored["tmp"] / "old.yaml"
    old.write_text(
        "suppressions:\n  - name: old\n    reason: r\n    expires: 2020-01-01\n"
        "    match:\n      principal: mallory\n"
    )
    listed = cli("suppressions", str(old)).stdout
    assert "old: expired on 2020-01-01" in listed  # "expired until" read as still on (review)
    out = score(scored, "--suppressions", str(sup))
    assert out["incidents"]["suppressed_findings"] == 1
    assert out["incidents"]["delivery"]["new"] == 1
    users = [b["output_fields"]["ka.user.name"] for b in scored["receiver"].delivered]
    assert "mallory" not in users
    listed = json.loads(
        cli(
            "incidents", "--lake", scored["lake"], "--status", "suppressed", "--format", "json"
        ).stdout
    )
    assert [i["suppression"] for i in listed] == ["mallory-cleanup"]


def test_a_bad_suppressions_file_stops_the_score_before_anything_is_written(scored):
    first = score(scored)
    assert first["incidents"]["delivery"]["new"] == 2
    before = _files(scored["lake"])
    bad = scored["tmp"] / "bad.yaml"
    bad.write_text(
        "suppressions:\n  - name: typo\n    reason: r\n    expires: 2099-12-31\n"
        "    match:\n      principal_regex: '(((('\n"
    )
    for extra in ((), ("--dry-run",)):
        out = cli(
            "--config", scored["config"], "score", "--since", "2h", "--rules-only",
            "--suppressions", str(bad), *extra, env=scored["env"],
        )  # fmt: skip
        assert out.exit_code == 2, out.stdout + out.stderr
        assert "principal_regex: invalid regex" in out.stderr
        # Findings were replaced before the file was read: findings and incidents disagreed.
        assert _files(scored["lake"]) == before


def test_a_sink_the_environment_does_not_set_stops_the_score_before_anything_is_written(
    scored,
):
    # The URL variable was only looked up at delivery: the findings were written, the
    # incidents not, and the run then stopped with exit 2.
    before = _files(scored["lake"])
    env = {k: v for k, v in scored["env"].items() if k != "TEST_ALERT_URL"}
    out = cli(
        "--config", scored["config"], "score", "--since", "2h", "--rules-only", env=env
    )  # fmt: skip
    assert out.exit_code == 2 and "TEST_ALERT_URL" in out.stderr
    assert _files(scored["lake"]) == before
    # Not delivering, or trying rules: the sinks are not needed, and not asked for.
    for extra in ("--no-deliver", "--dry-run"):
        assert cli(
            "--config", scored["config"], "score", "--since", "2h", "--rules-only", extra,
            env=env,
        ).exit_code == 0  # fmt: skip


def test_config_show_never_prints_a_sink_secret(scored):
    shown = cli(
        "--config", scored["config"], "config", "show", "--format", "json", env=scored["env"]
    )
    assert shown.exit_code == 0, shown.stderr
    assert "hush-hush" not in shown.stdout and scored["receiver"].url not in shown.stdout
    row = next(r for r in json.loads(shown.stdout)["settings"] if r["setting"] == "sinks.hook")
    assert "url_env=TEST_ALERT_URL (set)" in row["value"]


def test_a_bad_sink_is_a_one_line_config_error(tmp_path):
    bad = tmp_path / "detect.toml"
    bad.write_text('[[sinks]]\nname = "x"\ntype = "pager"\n')
    out = cli("--config", str(bad), "config", "show")
    assert out.exit_code == 2 and "type must be one of" in out.stderr
    assert out.stderr.count("\n") == 1


def test_resolving_an_incident_tells_the_sinks_that_heard_of_it_once(scored):
    """An analyst resolves in the tool; the next delivery closes the alert where it was
    raised (an update saying resolved), once, and tells no sink that never had it."""
    score(scored)
    lake, receiver = scored["lake"], scored["receiver"]
    listed = json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)
    iid = listed[0]["incident_id"]
    assert len(receiver.delivered) == 2
    done = cli("incidents", "resolve", iid[:8], "--lake", lake, "--reason", "rotated the key")
    assert done.exit_code == 0, done.stderr

    def deliver() -> dict:
        out = cli(
            "--config", scored["config"], "incidents", "deliver", "--lake", lake,
            "--format", "json", env=scored["env"],
        )  # fmt: skip
        assert out.exit_code == 0, out.stderr
        return json.loads(out.stdout)

    assert deliver()["updates"] == 1
    closing = receiver.delivered[-1]["output_fields"]
    assert closing["detect.incident.id"] == iid and closing["detect.status"] == "resolved"
    assert closing["detect.incident.kind"] == "update"
    assert deliver()["sent"] == 0  # once
    assert score(scored)["incidents"]["delivery"]["sent"] == 0  # re-scoring reopens nothing


def test_a_delivery_that_fails_ends_with_exit_3_and_the_next_run_sends_it(scored):
    """`incidents deliver` is a retry job's command: it exited 0 with every alert failed,
    so cron saw success through a whole outage."""
    from conftest import free_port

    score(scored)
    down = scored["tmp"] / "down.toml"
    down.write_text(
        f'[[sinks]]\nname = "pager"\ntype = "webhook"\nretries = 0\n'
        f'url = "http://127.0.0.1:{free_port()}/hook"\n'
    )
    args = ("incidents", "deliver", "--lake", scored["lake"], "--format", "json")
    out = cli("--config", str(down), *args)
    assert out.exit_code == 3, out.stdout
    summary = json.loads(out.stdout)
    # the first failed (a dead letter); the sink is then down and the second waits
    assert (summary["failed"], summary["waiting"], summary["sent"]) == (1, 1, 0)
    assert "2 alert(s) could not be delivered (1 failed" in out.stderr
    # a one-shot run does not promise a retry "in 30s" (watch's clock): the next run does
    assert "the next delivery run" in out.stderr and "tried again in" not in out.stderr
    # back up: the next run sends both, and exits 0
    up = scored["tmp"] / "up.toml"
    up.write_text(
        f'[[sinks]]\nname = "pager"\ntype = "webhook"\nurl = "{scored["receiver"].url}"\n'
    )
    again = cli("--config", str(up), *args)
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["sent"] == 2


def test_a_delivery_kept_from_the_lock_sends_nothing_and_exits_3(scored, monkeypatch):
    """Another run (here on another host) held the delivery lock for longer than
    `incidents deliver` waits: it sent nothing and exited 0, so a retry job saw success
    while what it owed was left to the other run. Run in-process: how long a run waits is
    a constant (two minutes) no option sets, and it is set to nothing here."""
    from detector.delivery import run
    from detector.lake import lock
    from detector.lake.events import Lake
    from detector.lake.state import Lease, Owner, StateObject

    score(scored)
    lake, receiver = scored["lake"], scored["receiver"]
    iid = json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)[0]
    assert cli("incidents", "resolve", iid["incident_id"][:8], "--lake", lake).exit_code == 0
    held = Lease(StateObject(Lake(lake), *lock.DELIVERY_LOCK_PARTS), owner=Owner(host="elsewhere"))
    held.acquire()
    monkeypatch.setattr(run, "DELIVERY_WAIT", 0.0)
    args = ("--config", scored["config"], "incidents", "deliver", "--lake", lake)
    before = len(receiver.delivered)
    busy = cli(*args, "--format", "json", env=scored["env"])
    assert busy.exit_code == 3, busy.stdout
    assert "another run was delivering alerts" in busy.stderr
    assert json.loads(busy.stdout)["sent"] == 0 and len(receiver.delivered) == before
    held.release()
    freed = cli(*args, "--format", "json", env=scored["env"])
    assert freed.exit_code == 0, freed.stderr
    assert json.loads(freed.stdout)["updates"] == 1  # what was owed, sent by the next run


def test_findings_list_shows_and_filters_by_workflow_status(scored):
    score(scored)
    lake = scored["lake"]

    def listed(*extra: str) -> list[dict]:
        out = cli("findings", "--lake", lake, "--since", "2h", "--format", "json", *extra)
        assert out.exit_code == 0, out.stderr
        return json.loads(out.stdout)

    every = listed()
    assert {f["status"] for f in every} == {"new"} and all(f["incident_id"] for f in every)
    fid = every[0]["finding_id"]
    assert cli("findings", "resolve", fid[:8], "--lake", lake).exit_code == 0
    assert [f["finding_id"] for f in listed("--status", "resolved")] == [fid]
    assert fid not in [f["finding_id"] for f in listed("--status", "new")]
    table = cli("findings", "--lake", lake, "--since", "2h")
    assert "status" in table.stdout and "resolved" in table.stdout
    bad = cli("findings", "--lake", lake, "--status", "closed")
    assert bad.exit_code == 2 and "--status must be one of" in bad.stderr


def test_a_damaged_file_in_any_findings_table_is_skipped_not_fatal(scored):
    """A findings, findings_events, incidents or finding_status file readers cannot use
    (disk damage, another tool's file under the same name) made `findings`, `incidents`,
    `report` and `score` end with "unexpected ComputeError"; those tables were read
    without the check every other lake read makes. Now each command runs on, with a
    warning, `detect lake check` lists the files, and re-scoring the range writes each of
    them again (the incidents regrouped from the findings)."""
    from pathlib import Path

    first = score(scored)
    lake = Path(scored["lake"])
    damaged = {}

    def damage(table: str) -> None:
        path = sorted((lake / table).rglob("*.parquet"))[0]
        path.write_bytes(b"not parquet at all")
        damaged[table] = path

    for table in ("findings_events", "incidents", "finding_status"):
        damage(table)  # the findings stay readable, so their status and events are looked up
    for args in (
        ("findings", "--since", "2h"),
        ("incidents", "--since", "2h"),
        ("report", "--since", "2h", "-o", str(scored["tmp"] / "r.html")),
    ):
        out = cli("--config", scored["config"], *args, env=scored["env"])
        assert out.exit_code == 0, (args, out.stderr)
        assert "unexpected" not in out.stderr
    damage("findings")
    check = cli("lake", "check", "--lake", str(lake), "--format", "json")
    listed = {p["table"] for p in json.loads(check.stdout)["problems"]}
    assert check.exit_code == 1 and listed == set(damaged)
    again = score(scored)  # the same range: each damaged file is written again, whole
    assert again["incidents"]["incidents"] == first["incidents"]["incidents"]
    # the damaged incidents and status day files were kept aside, not overwritten: lake
    # check lists those, and nothing else
    check = cli("lake", "check", "--lake", str(lake), "--format", "json")
    left = {(p["table"], ".damaged-" in p["path"]) for p in json.loads(check.stdout)["problems"]}
    assert left == {("incidents", True), ("finding_status", True)}


def test_a_token_quoted_in_an_ack_reason_is_redacted_before_the_lake(scored):
    """An analyst's reason is stored with the incident and each finding's status; one that
    quotes what was rotated ("revoked Bearer ...") reached the lake as typed."""
    import polars as pl

    score(scored)
    lake = scored["lake"]
    iid = json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)[0]["incident_id"]
    reason = "revoked Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.abc and password=hunter2"
    assert cli("incidents", "ack", iid, "--lake", lake, "--reason", reason).exit_code == 0
    stored = pl.concat(
        [
            pl.read_parquet(f"{lake}/{table}/**/*.parquet").select("status_reason")
            for table in ("incidents", "finding_status")
        ]
    )["status_reason"].drop_nulls()
    assert stored.len() and stored.str.contains("revoked Bearer <redacted>").any()
    assert not stored.str.contains("eyJhbGci|hunter2").any()


def test_rescoring_without_a_finding_withdraws_it_from_its_incident(scored):
    """A range scored again without a rule (or after late events changed a window) no
    longer holds that rule's finding; its incident named it all the same, so an analyst
    opened an incident pointing at nothing. It is withdrawn now, and an incident left with
    no finding is resolved: the sink that had it hears so, once."""
    first = score(scored)
    lake, receiver = scored["lake"], scored["receiver"]
    gone = next(f for f in first["findings"] if f["principal"] == "mallory")
    again = score(scored, "--disable", gone["detector"].removeprefix("rule:"))
    assert again["incidents"]["delivery"]["updates"] == 1
    closing = receiver.delivered[-1]["output_fields"]
    assert closing["ka.user.name"] == "mallory" and closing["detect.status"] == "resolved"
    incidents = json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)
    mallory = next(i for i in incidents if i["principal"] == "mallory")
    assert mallory["finding_ids"] == [] and mallory["status"] == "resolved"
    shown = cli("incidents", "show", mallory["incident_id"], "--lake", lake).stdout
    assert "status reason: resolved: its findings were withdrawn" in shown
    assert "no finding left, all withdrawn" in shown
    other = next(i for i in incidents if i["principal"] != "mallory")
    assert other["status"] == "new" and other["finding_ids"]
    rule = gone["detector"].removeprefix("rule:")
    assert score(scored, "--disable", rule)["incidents"]["delivery"]["sent"] == 0  # once
    # The rule on again: the same incident, open again, a version the sink will hear of
    # (held back by the sink's 15-minute throttle, as any update right after another).
    back = score(scored)
    assert back["incidents"]["changed"] == 1 and back["incidents"]["delivery"]["throttled"] == 1
    incidents = json.loads(cli("incidents", "--lake", lake, "--format", "json").stdout)
    reopened = next(i for i in incidents if i["incident_id"] == mallory["incident_id"])
    assert reopened["status"] == "new" and reopened["finding_ids"] == [gone["finding_id"]]
    assert reopened["version"] > mallory["version"]


def test_a_watch_whose_sink_cannot_start_stops_before_reading(tmp_path, monkeypatch):
    """A sink whose URL variable is unset passed `detect watch`'s start: it ran ready
    until the first alert, then exited 2, and on every restart at once (found by a soak).
    It is a usage error at start, as for `detect score` and `incidents deliver`."""
    monkeypatch.delenv("UNSET_HOOK_URL", raising=False)
    config = tmp_path / "detect.toml"
    config.write_text('[[sinks]]\nname = "unset"\ntype = "slack"\nurl_env = "UNSET_HOOK_URL"\n')
    log = tmp_path / "audit.log"
    log.write_text("")
    (tmp_path / "lake").mkdir()
    out = cli(
        "--config", str(config), "watch", "--tail", str(log), "--cluster", "c",
        "--lake", str(tmp_path / "lake"), "--no-model", "--once",
    )  # fmt: skip
    assert out.exit_code == 2, out.stderr
    assert out.stderr.strip() == (
        "error: sink 'unset': environment variable UNSET_HOOK_URL (url) is not set"
    )
    assert not (tmp_path / "lake" / "_state").exists()  # nothing read or checkpointed


@pytest.mark.parametrize(
    ("flag", "value", "said"),
    [("--rules", "bad.yaml", "bad.yaml"), ("--disable", "no-such-rule", "no-such-rule")],
)
def test_a_watch_with_rules_that_do_not_load_stops_before_reading(tmp_path, flag, value, said):
    """Rules compiled at the first batch: a watch with a broken rule file or an unknown
    --disable wrote its first batch to the lake and checkpointed it, then exited 2, and that
    batch never went through the rules (found by review). Now it stops at start."""
    (tmp_path / "bad.yaml").write_text("- rule: x\n  condition: verb ==\n")
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(orjson.dumps(ev("get", "pods", ns="a")) + b"\n" for _ in range(3)))
    lake = tmp_path / "lake"
    lake.mkdir()
    target = str(tmp_path / value) if flag == "--rules" else value
    out = cli(
        "watch", "--replay", str(log), "--cluster", "c", "--lake", str(lake), "--no-model",
        "--once", "--speed", "0", flag, target,
    )  # fmt: skip
    assert out.exit_code == 2, out.stderr
    assert said in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (lake / "events").exists() and not (lake / "_state" / "watch").exists()


def test_a_watch_starts_while_a_sink_s_aws_endpoint_is_down(tmp_path):
    """What the start checks is the secrets only: a Security Hub sink asks STS for its
    account when built, and an STS outage at start ended the long-running watch (exit 3)
    instead of being retried at delivery like any outage (found by review)."""
    config = tmp_path / "detect.toml"
    config.write_text('[[sinks]]\nname = "hub"\ntype = "securityhub"\nregion = "us-east-1"\n')
    log = tmp_path / "audit.log"
    log.write_text("")
    (tmp_path / "lake").mkdir()
    from conftest import free_port

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_ENDPOINT_URL": down}
    out = cli(
        "--config", str(config), "watch", "--tail", str(log), "--cluster", "c",
        "--lake", str(tmp_path / "lake"), "--no-model", "--once", env=env,
    )  # fmt: skip
    assert out.exit_code == 0, out.stderr


def test_a_one_shot_delivery_stops_at_start_when_sts_cannot_be_reached(tmp_path):
    """`detect incidents deliver` (a cron job) asks STS for a Security Hub sink's account
    before anything is sent, and says which sink could not start (exit 3); the watch
    leaves the question to the send (above)."""
    config = tmp_path / "detect.toml"
    config.write_text('[[sinks]]\nname = "hub"\ntype = "securityhub"\nregion = "us-east-1"\n')
    (tmp_path / "lake").mkdir()
    from conftest import free_port

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_ENDPOINT_URL": down,
        "AWS_MAX_ATTEMPTS": "1",
    }
    out = cli(
        "--config", str(config), "incidents", "deliver", "--lake", str(tmp_path / "lake"), env=env
    )  # fmt: skip
    assert out.exit_code == 3, out.stdout
    assert "sink 'hub' (securityhub) cannot start: EndpointConnectionError" in out.stderr


def test_ocsf_to_stdout_and_a_json_summary_are_refused_together(tmp_path):
    """An OCSF sink writing to stdout put its lines before `--format json`'s summary: the
    output was no JSON document, exit 0 (found by review). It is refused before anything
    is scored or sent; the table summary goes to stdout with the OCSF lines as before."""
    config = tmp_path / "detect.toml"
    config.write_text('[[sinks]]\nname = "o"\ntype = "ocsf"\npath = "-"\n')
    (tmp_path / "lake").mkdir()
    lake = str(tmp_path / "lake")
    for command in (("incidents", "deliver"), ("score", "--since", "1h", "--no-model")):
        out = cli("--config", str(config), *command, "--lake", lake, "--format", "json")
        assert out.exit_code == 2, (command, out.stdout)
        assert out.stderr.strip() == (
            "error: sink 'o' writes OCSF to stdout (path \"-\"), where --format json "
            "writes its summary: give the sink a path, or use --format table"
        )
    assert cli("--config", str(config), "incidents", "deliver", "--lake", lake).exit_code == 0


def test_a_misspelt_sink_key_lists_every_key_the_sink_takes(tmp_path):
    """`throtle` on a webhook listed only the webhook's own keys as known, leaving out
    `throttle`, `retries` and `min_severity` (found by a soak)."""
    config = tmp_path / "detect.toml"
    config.write_text(
        '[[sinks]]\nname = "hook"\ntype = "webhook"\nurl = "https://h.example/x"\nthrotle = "0s"\n'
    )
    out = cli("--config", str(config), "config", "show")
    assert out.exit_code == 2 and "unknown key(s) throtle for a webhook sink" in out.stderr
    known = out.stderr.split("(known: ")[1].rstrip(")\n").split(", ")
    assert {"throttle", "retries", "min_severity", "url", "secret_env"} <= set(known)
