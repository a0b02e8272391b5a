"""Configuration: detect.toml < DETECT_* environment < flags; errors name the key; JSON logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.cli import app

ENV_NAMES = (
    "DETECT_LAKE",
    "DETECT_CLUSTER",
    "DETECT_MODEL_DIR",
    "DETECT_LOG_GROUP",
    "DETECT_CONFIG",
    "DETECT_LOG_FORMAT",
    "DETECT_LOG_LEVEL",
    "DETECT_REGION",
)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, DETECT_* unset, AWS region restored after the test."""
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def show(*args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    result = invoke(*args, "config", "show", "--format", "json", env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    return {row["setting"]: row for row in json.loads(result.stdout)["settings"]}


def ddl_location(*args: str, env: dict[str, str] | None = None) -> str:
    """What a real command (athena-ddl) did with --lake: the events table's LOCATION."""
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("LOCATION"))
    return line.split("'")[1]


# ------------------------------------------------------------------ precedence
def test_defaults_when_nothing_is_set(cwd):
    rows = show()
    assert rows["lake"] == {"setting": "lake", "value": "./lake", "source": "default"}
    assert rows["config"]["value"] is None
    assert rows["log_format"]["value"] == "text"
    assert rows["model_dir"]["source"] == "default"


def test_toml_then_env_then_flag(cwd):
    (cwd / "detect.toml").write_text('lake = "s3://from-toml/lake"\ncluster = "prod"\n')
    rows = show()
    assert rows["lake"]["value"] == "s3://from-toml/lake"
    assert rows["lake"]["source"] == "detect.toml"
    assert rows["config"]["value"] == "detect.toml"

    env = {"DETECT_LAKE": "s3://from-env/lake"}
    rows = show(env=env)
    assert (rows["lake"]["value"], rows["lake"]["source"]) == (
        "s3://from-env/lake",
        "env DETECT_LAKE",
    )
    assert rows["cluster"]["source"] == "detect.toml"

    rows = CliRunner().invoke(
        app, ["config", "show", "--format", "json", "--lake", "s3://from-flag/lake"], env=env
    )
    row = next(r for r in json.loads(rows.stdout)["settings"] if r["setting"] == "lake")
    assert (row["value"], row["source"]) == ("s3://from-flag/lake", "flag")


def test_precedence_holds_in_a_real_command(cwd):
    (cwd / "detect.toml").write_text(
        'lake = "s3://from-toml/lake"\ncluster = "prod"\n[athena-ddl]\ndatabase = "sec"\n'
    )
    args = ("athena-ddl", "--table", "events")
    assert ddl_location(*args) == "s3://from-toml/lake/events/"
    env = {"DETECT_LAKE": "s3://from-env/lake"}
    assert ddl_location(*args, env=env) == "s3://from-env/lake/events/"
    assert ddl_location(*args, "--lake", "s3://from-flag/lake", env=env) == (
        "s3://from-flag/lake/events/"
    )
    out = invoke(*args).stdout
    assert "`sec`.`events`" in out  # [athena-ddl] table
    # the shared cluster (set for the other commands) does not narrow the partitions: a DDL
    # listing one cluster hid the others from Athena (found by review); its own table does
    assert "'projection.cluster.type' = 'injected'" in out
    out = invoke(*args, env={"DETECT_CLUSTER": "a,b"}).stdout
    assert "'projection.cluster.type' = 'injected'" in out
    (cwd / "detect.toml").write_text('[athena-ddl]\ncluster = "a,b"\nlake = "s3://b/l"\n')
    out = invoke(*args).stdout
    assert "'projection.cluster.values' = 'a,b'" in out


def test_command_table_beats_top_level_and_env_beats_both(cwd):
    (cwd / "detect.toml").write_text('cluster = "a"\n[score]\ncluster = "b"\n')
    rows = show()
    assert rows["cluster"]["value"] == "a"
    assert rows["score.cluster"] == {
        "setting": "score.cluster",
        "value": "b",
        "source": "detect.toml [score]",
    }
    rows = show(env={"DETECT_CLUSTER": "c"})
    assert rows["cluster"]["value"] == "c" and "score.cluster" not in rows


def test_config_path_from_flag_and_env(cwd):
    other = cwd / "conf" / "prod.toml"
    other.parent.mkdir()
    other.write_text('model_dir = "s3://models/prod"\nlog_format = "json"\n[export]\nrate = 2\n')
    rows = show("--config", str(other))
    assert rows["config"] == {"setting": "config", "value": str(other), "source": "flag"}
    assert rows["model_dir"]["value"] == "s3://models/prod"
    assert rows["export.rate"]["value"] == 2
    rows = show(env={"DETECT_CONFIG": str(other)})
    assert rows["config"]["source"] == "env DETECT_CONFIG"
    assert rows["log_format"]["value"] == "json"
    assert rows["log_format"]["source"] == "prod.toml"


def test_root_settings_region_and_log_level(cwd):
    (cwd / "detect.toml").write_text('region = "eu-west-1"\nlog_level = "info"\n')
    rows = show()
    assert (rows["region"]["value"], rows["region"]["source"]) == ("eu-west-1", "detect.toml")
    rows = show("--region", "ap-south-1", env={"DETECT_LOG_LEVEL": "error"})
    assert (rows["region"]["value"], rows["region"]["source"]) == ("ap-south-1", "flag")
    assert rows["log_level"] == {
        "setting": "log_level",
        "value": "error",
        "source": "env DETECT_LOG_LEVEL",
    }


def test_a_region_that_is_no_region_name_is_refused_in_the_file_too(cwd):
    """A blank, spaced or control-character region was taken as is and failed at the first
    AWS call, deep inside botocore (a NUL byte: "unexpected ValueError")."""
    for value in (" ", "us east", "\\u0000"):
        (cwd / "detect.toml").write_text(f'region = "{value}"\n')
        result = invoke("config", "show")
        assert result.exit_code == 2, result.stdout + result.stderr
        assert "not an AWS region name" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_all_lists_every_option(cwd):
    result = invoke("config", "show", "--all", "--format", "json")
    names = {row["setting"] for row in json.loads(result.stdout)["settings"]}
    assert {"export.latency", "score.fail_on", "train.alert_rate", "athena-ddl.database"} <= names


def test_show_table_output(cwd):
    (cwd / "detect.toml").write_text('[export]\nlatency = "5m"\n')
    result = invoke("config", "show")
    assert result.exit_code == 0
    line = next(x for x in result.stdout.splitlines() if x.startswith("export.latency"))
    assert line.split() == ["export.latency", "5m", "detect.toml", "[export]"]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('lake = "s3://x"\nlaek = "y"\n', "unknown key 'laek'"),
        ('latency = "5m"\n', "'latency'; it is an option of export, watch: put it under [export]"),
        ('[exprt]\nlatency = "5m"\n', "unknown table [exprt]"),
        ('[export]\nlatncy = "5m"\n', "detect.toml [export]: unknown key 'latncy'"),
        ('[export]\nrate = "fast"\n', "[export]: rate = 'fast': Input should be a valid number"),
        ('[export]\nlatency = "5 minutes"\n', "latency = '5 minutes': invalid duration"),
        ('[score]\nformat = "xml"\n', "format = 'xml': 'xml' is not one of 'table', 'json'"),
        ('[score]\nrules = "extra.yaml"\n', "rules = 'extra.yaml': expected a list"),
        ("lake = 5\n", "lake = 5: expected a string"),
        ('[export]\nfollow = "yes"\n', "follow = 'yes': expected true or false"),
        ('log_format = "xml"\n', "log_format = 'xml': expected one of text, json"),
        ('[score]\nsince = "yesterday"\n', "since = 'yesterday': invalid time"),
        ('cluster = "../../x"\n', "cluster = '../../x': cluster name '../../x' is not allowed"),
        ("lake = \n", "not valid TOML"),
    ],
)  # fmt: skip
def test_bad_config_is_one_line_naming_the_key_exit_2(cwd, toml, message):
    (cwd / "detect.toml").write_text(toml)
    for args in (["config", "show"], ["athena-ddl", "--lake", "s3://b/l"]):
        result = invoke(*args)
        assert result.exit_code == 2, result.stdout
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("error: ")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DETECT_EXECUTOR", "spark", "'spark' is not one of 'local', 'ray'"),
        ("DETECT_WATCH_PORT", "abc", "Input should be a valid integer"),
    ],
)
def test_show_refuses_an_environment_value_the_commands_would_refuse(
    cwd, monkeypatch, name, value, message
):
    """It showed `executor spark` and exited 0; `detect score` then stopped with exit 2."""
    monkeypatch.setenv(name, value)
    result = invoke("config", "show")
    assert result.exit_code == 2, result.stdout
    assert result.stderr.startswith(f"error: env {name}: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_unknown_key_message_lists_each_top_level_key_once(cwd):
    (cwd / "detect.toml").write_text("bogus = 1\n")
    keys = invoke("config", "show").stderr.split("top-level keys: ")[1].strip().split(", ")
    assert len(keys) == len(set(keys)) and "region" in keys


def test_missing_config_file_is_an_error(cwd):
    result = invoke("--config", "nope.toml", "config", "show")
    assert result.exit_code == 2
    assert "config file nope.toml not found" in result.stderr
    result = invoke("config", "show", env={"DETECT_CONFIG": "gone.toml"})
    assert result.exit_code == 2 and "gone.toml" in result.stderr
    (cwd / "conf").mkdir()  # the folder the file is in, named instead of the file
    result = invoke("--config", "conf", "config", "show")
    assert result.exit_code == 2
    assert "config file conf is a folder" in result.stderr and "conf/detect.toml" in result.stderr


def test_a_setting_too_long_to_be_a_path_or_name_is_one_short_error(cwd):
    # 10 MB in one value took `config show` 51 s, and came back whole in error lines.
    (cwd / "detect.toml").write_text(f'lake = "{"x" * 100_000}"\n')
    result = invoke("config", "show")
    assert result.exit_code == 2
    assert "lake holds 100,000 characters (at most 4,096)" in result.stderr
    assert len(result.stderr) < 300
    (cwd / "detect.toml").write_text(f'[score]\nrules = ["a.yaml", "{"y" * 5000}"]\n')
    assert "score.rules.1 holds 5,000 characters" in invoke("config", "show").stderr


def test_bad_root_flag_value(cwd):
    result = invoke("--log-format", "xml", "config", "show")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: Invalid value for '--log-format'")
    assert "'xml' is not one of 'text', 'json'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# ------------------------------------------------------------------ JSON logs
def test_log_format_json_turns_stderr_into_json_lines(cwd):
    result = invoke("--log-format", "json", "athena-ddl", "--lake", "./not-s3")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "error"
    assert record["command"] == "athena-ddl"
    assert record["message"].startswith("Athena reads S3 only")
    assert record["time"].endswith("Z") and "pid" in record


def test_json_logs_from_the_real_console_script(cwd, detect):
    (cwd / "detect.toml").write_text('log_format = "json"\n[export]\nrate = "fast"\n')
    proc = detect("config", "show", cwd=str(cwd))
    assert proc.returncode == 2
    record = json.loads(proc.stderr)  # the config error itself is a JSON record
    assert record["level"] == "error" and "rate = 'fast'" in record["message"]
    (cwd / "detect.toml").write_text('log_format = "json"\n')
    proc = detect("athena-ddl", "--lake", "s3://b/l", "--table", "events", cwd=str(cwd))
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith("CREATE DATABASE")  # data on stdout is untouched


def test_the_listing_groups_take_the_files_lake_and_their_own_table(cwd):
    """`detect findings` and `detect incidents` list from the group itself, not a
    subcommand; the file's settings reached only their subcommands, so with `lake` in
    detect.toml they read ./lake and said "no findings"/"no incidents"."""
    from alerts_data import T0, W, finding, frames

    from detector.incidents import workflow
    from detector.lake import findings as findings_store
    from detector.lake.events import Lake

    lake = Lake(str(cwd / "elsewhere"))
    df, ev = frames([finding("alice", T0, severity="high"), finding("bob", T0 + W, severity="low")])
    findings_store.write_range(lake, "model", T0, T0 + 2 * W, df, ev)
    workflow.update(lake, df, ev, now=T0)
    (cwd / "detect.toml").write_text(
        f'lake = "{lake.uri}"\n[findings]\nmin_severity = "high"\nsince = "3650d"\n'
    )
    listed = invoke("findings", "--format", "json")
    assert listed.exit_code == 0, listed.stderr
    assert [f["principal"] for f in json.loads(listed.stdout)] == ["alice"]
    incidents = invoke("incidents", "--since", "3650d", "--format", "json")
    assert incidents.exit_code == 0, incidents.stderr
    assert sorted(i["principal"] for i in json.loads(incidents.stdout)) == ["alice", "bob"]
    assert show()["findings.min_severity"]["source"] == "detect.toml [findings]"


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ('ip_lists = ["/nonexistent/list.txt"]', "IP list /nonexistent/list.txt: no such file"),
        ('aws_ranges = "/etc/passwd"', "/etc/passwd, line 1: not an address or CIDR"),
    ],
)
def test_config_show_refuses_the_address_lists_the_rules_would_refuse(cwd, line, said):
    """`config show` showed these, exit 0, and every `detect score` then refused them
    (found by review): a check of the configuration checks what the rules will read."""
    (cwd / "detect.toml").write_text(line + "\n")
    out = invoke("config", "show")
    assert out.exit_code == 2 and said in out.stderr, out.stderr
