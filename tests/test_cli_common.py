"""Shared CLI suites: every command gets the same edge cases (csvkit's mixins, as pytest).

Commands are found by walking the typer app, so a new command is covered the day it is
registered: its --help needs an Example, a broken detect.toml must stop it with one line
naming the file and key, and bad time, duration, choice and log-level values are a usage
error (exit 2) on one ``error:`` line, never a traceback or a rich box.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import typer.main
from typer.testing import CliRunner

from detector.cli import app
from tests.conftest import ROOT, built_once, detect_cmd, free_port
from tests.factories import make_event

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


def _walk(group, prefix: tuple[str, ...] = ()):
    """(path, command) for the root, every group and every command under it."""
    yield prefix, group
    for name, cmd in sorted(group.commands.items()):
        if getattr(cmd, "hidden", False):
            continue
        if hasattr(cmd, "commands"):
            yield from _walk(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


ROOT_COMMAND = typer.main.get_command(app)
EVERY = [path for path, _ in _walk(ROOT_COMMAND)]
LEAVES = [path for path, cmd in _walk(ROOT_COMMAND) if not hasattr(cmd, "commands")]


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no detect.toml) and no DETECT_* settings."""
    monkeypatch.chdir(tmp_path)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def invoke(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def assert_one_error_line(result, *needles: str, code: int = 2) -> str:
    """Exit ``code`` with exactly one ``error:`` line on stderr: no traceback, no box."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "╭" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------ help
@pytest.mark.parametrize("path", EVERY, ids=lambda p: " ".join(("detect", *p)))
def test_every_help_has_an_example(cwd, path):
    result = invoke(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout, f"`detect {' '.join(path)} --help` has no Example"
    # one blank line between the heading and the commands, as in every other help
    after = result.stdout.split("Example", 1)[1].split("\n")[1:3]
    assert not after[0].strip() and after[1].strip(), after


def _prose(help_text: str) -> list[list[str]]:
    """The paragraphs of a rendered help between its usage line and its examples (the
    lines of each, right padding off), leaving out indented blocks."""
    body = help_text.split("Usage:", 1)[1].split("\n", 1)[1]
    body = body.split("╭", 1)[0].split(" Example", 1)[0]
    paragraphs = []
    for block in re.split(r"\n\s*\n", body):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if lines and not any(line.startswith("     ") for line in lines):
            paragraphs.append(lines)
    return paragraphs


#: Every command's help as an 80-column terminal shows it. A child process: typer reads
#: the width once, at import, and this suite's is fixed at 120 (conftest).
_HELP_AT_80 = """
import json, sys
from typer.testing import CliRunner
from detector.cli import app
paths = json.loads(sys.argv[1])
print(json.dumps([CliRunner().invoke(app, [*p, "--help"]).stdout for p in paths]))
"""


@pytest.fixture(scope="module")
def helps_at_80(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], str]:
    """Every help at 80 columns, rendered once per run (conftest.built_once: 2-4 s of a
    child process that xdist workers sharing this module's tests each paid)."""

    def build(folder: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TERMINAL_WIDTH"} | {"COLUMNS": "80"}
        done = subprocess.run(
            [sys.executable, "-c", _HELP_AT_80, json.dumps(EVERY)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        (folder / "helps.json").write_text(done.stdout)

    helps = json.loads(
        (built_once(tmp_path_factory, "helps-at-80", build) / "helps.json").read_text()
    )
    return dict(zip(EVERY, helps, strict=True))


@pytest.mark.parametrize("path", EVERY, ids=lambda p: " ".join(("detect", *p)))
def test_every_help_is_wrapped_to_an_80_column_terminal(helps_at_80, path):
    """The docstrings are wrapped at 88 columns in the source; typer keeps those breaks,
    so an 80-column terminal showed a word or two alone on every other line. Each line of
    prose now holds as many words as fit: the next line's first word would not."""
    paragraphs = _prose(helps_at_80[path])
    assert paragraphs
    for lines in paragraphs:
        for line, after in itertools.pairwise(lines):
            word = after.split()[0]
            assert len(line) + 1 + len(word) >= 80, f"{line!r} then {word!r}"


def test_square_brackets_in_help_are_shown_not_taken_for_markup(cwd):
    assert "[[sinks]]" in invoke("incidents", "--help", env={"COLUMNS": "200"}).stdout
    assert "[command] tables" in invoke("config", "show", "--help", env={"COLUMNS": "200"}).stdout


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: " ".join(("detect", *p)))
def test_square_brackets_in_option_help_are_shown(cwd, path):
    """An option's help naming a detect.toml table (``[[sinks]]``, ``[watch]``) showed
    ``[]`` or nothing: rich reads ``[word]`` as markup unless it is escaped."""
    command = ROOT_COMMAND
    for name in path:
        command = command.commands[name]
    shown = invoke(*path, "--help").stdout
    for param in command.params:
        text = (getattr(param, "help", None) or "").replace("\\[", "[")
        for table in re.findall(r"\[\[?[a-z_]+\]\]?", text):
            assert table in shown, f"{param.name}: {table} not shown"


# ------------------------------------------------------------------ bad values: exit 2
BAD_VALUES = [
    (["score", "--since", "99999999999d"], "--since"),
    (["train", "--since", "99999999999d"], "--since"),
    (["findings", "--since", "99999999999d"], "--since"),
    (["score", "--since", "yesterday"], "invalid time"),
    (["score", "--since", "1h", "--until", "0001-01-01"], "out of range"),
    # the bound itself is refused, and said so: "between ... and 2200-01-01" read as allowed
    (["timeline", "x", "--until", "2200-01-01T00:00:00Z"], "up to, not including, 2200-01-01"),
    (["score", "--since", "2h", "--until", "3h"], "empty time range"),
    (["evaluate", "--train-until", "99999999999d"], "--train-until"),
    (["simulate", "--out", "x", "--end", "99999999999d"], "--end"),
    (["export", "--log-group", "/aws/eks/x/cluster", "--since", "99999999999d"], "--since"),
    (["export", "--log-group", "/aws/eks/x/cluster", "--latency", "99999999999d"], "--latency"),
    (["export", "--log-group", "/aws/eks/x/cluster", "--chunk", "0s"], "--chunk"),
    (["export", "--log-group", "/aws/eks/x/cluster", "--interval", "-1m"], "--interval"),
    (["export", "--log-group", "/aws/eks/x/cluster", "--rate", "-1"], "--rate"),
    (["train", "--window", "99999999999d"], "--window"),
    (["train", "--window", "30s"], "--window"),
    (["train", "--alert-rate", "2"], "--alert-rate"),
    (["train", "--seed", "-1"], "--seed"),  # numpy and scikit-learn take 0 to 2**32 - 1
    (["score", "--seed", str(2**32)], "--seed"),
    (["evaluate", "--seed", "99999999999999999999999"], "--seed"),
    (["simulate", "--out", "x", "--seed", "-1"], "--seed"),
    (["simulate", "--out", "x", "--days", "1e308"], "--days"),  # was an OverflowError
    (["simulate", "--out", "x", "--rate", "inf"], "--rate"),  # was numpy's "lam too large"
    (["watch", "--replay", "x.log", "--speed", "inf"], "--speed"),  # failed and restarted forever
    (["watch", "--tail", ".", "--cluster", "c"], "it is a folder"),  # failed under the lease
    (["watch", "--tail", "/dev/zero", "--cluster", "c"], "not a regular file"),  # read forever
    (["demo", "--seed", str(2**32)], "--seed"),
    (["demo", "--days", "1e308"], "--days"),
    (["demo", "--rate", "inf"], "--rate"),
    (["rules", "test", "pod-exec", "x.log", "--window", "2d"], "--window"),
    (["--log-level", "loud", "config", "show"], "--log-level"),
    (["--log-format", "xml", "config", "show"], "--log-format"),
    (["--region", "us east", "config", "show"], "not an AWS region name"),  # was taken as is
    (["export", "--log-group", "/aws/eks/x/cluster", "--region", "a\x00"], "--region"),
    (["score", "--format", "xml"], "--format"),
    # an empty range: "no findings", and score scored a whole window (review)
    (["findings", "--since", "0h"], "empty time range"),
    (["score", "--since", "0h", "--dry-run", "--no-model"], "empty time range"),
    (["report", "--since", "2099-01-01"], "empty time range"),
    # blank values said something else (review): "pass --cluster NAME" to one who had
    (["ingest", "x.log", "--cluster", ""], "is empty"),
    (["ingest", "x.log", "--cluster", "a,b"], "not allowed"),
    (["score", "--cluster", " "], "is empty"),
    (["export", "--log-group", ""], "is empty"),  # "cannot tell the cluster from log group ''"
    (["watch", "--log-group", " "], "is empty"),
    (["suppressions", ""], "is empty"),  # "Is a directory: '.'"
    (["score", "--fail-on", "hihg"], "--fail-on"),
    (["findings", "--min-severity", "loud"], "--min-severity"),
    (["findings", "show", "abcd", "--limit", "0"], "--limit"),
    (["findings", "show", "abcd", "--limit", "99999999999999999999"], "--limit"),  # was exit 3
    (["report", "--max-findings", "99999999999999999999"], "--max-findings"),  # was exit 3
    (["export", "--log-group", "/aws/eks/x/cluster", "--max-attempts", "0"], "--max-attempts"),
    (["ingest", "x.log", "--input-format", "xml"], "--input-format"),
    (["rules", "test", "pod-exec", "x.log", "--from", "xml"], "--input-format"),
    (["simulate", "--out", "x", "--as", "xml"], "--as"),
    (["score", "--bogus"], "--bogus"),
    (["score", "--lake", " "], "--lake"),  # resolved to the filesystem root
    (["score", "--lake", "s3://"], "--lake"),
    (["score", "--lake", "s3://Bad_Bucket!/x"], "not an S3 bucket name"),  # was botocore's text
    (["score", "--lake", "S3://bucket/x"], "lower case"),  # was a local folder named "S3:"
    (["ingest", "s3://", "--cluster", "c"], "names no bucket"),  # was "cannot traverse all of S3"
    (["ingest", "s3:///x", "--cluster", "c"], "names no bucket"),
    (["ingest", "s3://Bad_Bucket!/x", "--cluster", "c"], "not an S3 bucket name"),
    (["findings", "--lake", "a\nb"], "--lake"),
    # a folder that is not there: an error, not "no alerts" from a mistyped --lake
    (["score", "--lake", "no-such-lake", "--no-model"], "no lake at no-such-lake"),
    (["train", "--lake", "no-such-lake"], "no lake at"),
    (["report", "--lake", "no-such-lake"], "no lake at"),
    (["timeline", "x", "--lake", "no-such-lake"], "no lake at"),
    (["findings", "--lake", "no-such-lake"], "no lake at"),  # was "no findings"
    (["findings", "show", "abcd", "--lake", "no-such-lake"], "no lake at"),
    (["findings", "ack", "abcd", "--lake", "no-such-lake"], "no lake at"),
    (["incidents", "--lake", "no-such-lake"], "no lake at"),  # was "no incidents"
    (["incidents", "show", "abcd", "--lake", "no-such-lake"], "no lake at"),
    (["incidents", "resolve", "abcd", "--lake", "no-such-lake"], "no lake at"),
    (["lake", "check", "--lake", "no-such-lake"], "no lake at"),  # was "0 problem(s)"
    (["compact", "--lake", "no-such-lake"], "no lake at"),  # was "compacted 0 partition(s)"
    (["score", "--no-model", "--no-rules"], "nothing to score"),
    (["report", "--since", "99999999999d"], "--since"),
    (["report", "--since", "1h", "--until", "2h"], "empty time range"),
    (["report", "--baseline", "a week"], "--baseline"),
    (["report", "-o", ""], "--output"),  # was "Is a directory: ." after reading the lake
    (["rules", "docs", "-o", " "], "--output"),
    (["timeline", "x", "--since", "yesterday"], "--since"),
    (["timeline", "x", "--every", "-1m"], "--every"),
    (["timeline", " "], "PRINCIPAL is empty"),
    # an empty path (an unset variable) read or wrote the working folder
    (["ingest", "", "--cluster", "c"], "an input path is empty"),
    (["rules", "test", "pod-exec", ""], "an input path is empty"),
    (["simulate", "--out", ""], "--out"),
    (["train", "--model-dir", ""], "--model-dir"),
    (["train", "--model-dir", "/etc/passwd"], "is a file, not a folder"),  # was after training
    (["demo", "--days", "1"], "--days"),  # too short to train on: failed after the work
    (["findings", "--since", "1h", "--until", "2h"], "empty time range"),  # was "no findings"
    (["score", "--since", "1h", "--until", "1h"], "empty time range"),  # was 10 minutes long
    (["athena-ddl", "--lake", "s3://b/l", "--first-date", "2999-01-01"], "--first-date"),
    (["athena-ddl", "--lake", "s3://b/l", "--first-date", "1960-01-01"], "--first-date"),
    (["incidents", "--since", "99999999999d"], "--since"),
    (["incidents", "--status", "closed"], "--status"),
    (["incidents", "--min-severity", "loud"], "--min-severity"),
    (["suppressions", "--since", "yesterday"], "--since"),
    (["compact", "--grace", "1y"], "--grace"),
    (["compact", "--min-files", "1"], "--min-files"),
    (["lake", "check", "--format", "xml"], "--format"),
    # other schemes were local folders named `file:`; S3 prefixes with `..` or `//` were
    # written as those literal keys: one lake spelled two ways (found by review)
    (["ingest", "x.log", "--lake", "file:///tmp/l", "--cluster", "c"], "file:// is not read"),
    (["train", "--model-dir", "file:///tmp/m"], "file:// is not read"),
    (["ingest", "file:///tmp/x.log", "--cluster", "c"], "file:// is not read"),
    # 432M events asked for ran a minute and 1.5 GB before writing one; a cluster name the
    # ingest refuses became a file name (../..) after labels.json was written (review)
    (["simulate", "--out", "o", "--days", "0.05", "--rate", "100000"], "at most 50,000,000"),
    (["demo", "--days", "300", "--rate", "10000"], "at most 50,000,000"),
    (["simulate", "--out", "o", "--end", "1970-01-01T00:30:00"], "starts before 1970"),
    (["ingest", "x.log", "--cluster", "c", "--earliest", "2099-01-01"], "is in the future"),
    (["simulate", "--out", "o", "--cluster", "../../x"], "--cluster"),
    (["simulate", "--out", "o", "--cluster", "a\nb"], "--cluster"),
    (["watch", "--replay", "x.log", "--step", "0.001s"], "--step"),  # 7 events a minute
    (["export", "--log-group", "/aws/eks/c/cluster", "--max-attempts", "1000"], "--max-attempts"),
    # a file as the lake: exit 3 and a path inside it, where every other command said 2
    (["export", "--log-group", "/aws/eks/c/cluster", "--lake", "/etc/passwd"], "is a file"),
    (
        ["watch", "--replay", "/etc/passwd", "--lake", "/etc/passwd", "--cluster", "c"],
        "is a file",
    ),
    (["incidents", "--since", "2100-01-01"], "empty time range"),  # was "no incidents"
    (["incidents", "--since", "0s"], "empty time range"),
    (["findings", "--since", "\u0661h"], "--since"),  # an Arabic-Indic 1: was one hour
    (["score", "--no-rules", "--rules", "bad.yaml"], "exclude each other"),  # never read
    (["score", "--enable", "pod-exec", "--disable", "pod-exec"], "both name pod-exec"),
    (["rules", "docs", "-o", "."], "is a folder"),  # was exit 3 after the work (review)
    (["rules", "docs", "--check", "-o", "."], "is a folder"),
    (["report", "-o", "."], "is a folder"),
    (["score", "--lake", "s3://b/../x"], "'.' or '..' part"),
    (["score", "--lake", "s3://b//y"], "'.' or '..' part"),
    (["findings", "--lake", "s3://b/a/./b"], "'.' or '..' part"),
    # an end after now was recorded as the model's training end, or scored early (review)
    (["train", "--since", "2d", "--until", "2099-01-01"], "is in the future"),
    (["score", "--since", "1h", "--until", "2099-01-01", "--no-model"], "is in the future"),
    (["score", "--dry-run", "--deliver", "--no-model"], "exclude each other"),  # was taken
    (["--config", "c" * 300, "config", "show"], "cannot be read: File name too long"),  # 3
]


@pytest.mark.parametrize(("args", "needle"), BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_bad_values_are_one_usage_error_line(cwd, args, needle):
    assert_one_error_line(invoke(*args), needle)


@pytest.mark.parametrize(
    "args",
    [
        ["score", "--lake", "lake", "--no-model", "--suppressions", "/dev/zero"],
        ["evaluate", "--lake", "lake", "--labels", "/dev/zero", "--train-until", "1d"],
        ["rules", "list", "--rules", "/dev/zero"],
        ["rules", "aws-ranges", "/dev/zero", "-o", "ranges.txt"],  # was read until killed
        ["--config", "big.toml", "config", "show"],
    ],
    ids=["suppressions", "labels", "rules", "aws-ranges", "config"],
)
def test_an_endless_or_huge_file_where_a_small_one_is_due_is_one_line(cwd, args):
    """Rules, suppressions, labels, AWS's ip-ranges.json and detect.toml are read whole:
    /dev/zero or a log given by mistake is refused at 16 MB, not read until memory runs
    out."""
    (cwd / "lake").mkdir()
    (cwd / "big.toml").write_bytes(b"# " + b"x" * (17 * 2**20) + b"\n")
    assert_one_error_line(invoke(*args), "larger than 16 MB")


@pytest.mark.parametrize(
    ("name", "text", "args"),
    [
        ("labels.json", "[" * 100_000 + "]" * 100_000, ("evaluate", "--labels", "labels.json")),
        ("detect.toml", "x = " + "[" * 5000 + "]" * 5000, ("config", "show")),
        ("s.yaml", "- " + "[" * 5000 + "]" * 5000, ("suppressions", "s.yaml")),
        ("r.yaml", "- " + "[" * 5000 + "]" * 5000, ("rules", "list", "--rules", "r.yaml")),
    ],
    ids=["labels", "config", "suppressions", "rules"],
)
def test_a_file_nested_too_deeply_is_one_line(cwd, name, text, args):
    """JSON, TOML and pure-Python YAML parsers recurse: a small file of nested brackets
    ended a command with "unexpected RecursionError" (labels, detect.toml, suppressions)."""
    (cwd / "lake").mkdir()
    (cwd / name).write_text(text)
    extra = ("--lake", "lake", "--train-until", "1d") if args[0] == "evaluate" else ()
    extra = ("--lake", "lake") if args[0] == "suppressions" else extra
    assert_one_error_line(invoke(*args, *extra), "nest")


def test_bad_log_level_from_the_environment(cwd):
    result = invoke("config", "show", env={"DETECT_LOG_LEVEL": "loud"})
    assert_one_error_line(result, "loud")


def test_usage_error_is_a_json_record_with_log_format_json(cwd):
    result = invoke("--log-format", "json", "score", "--since", "99999999999d")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and record["command"] == "score"
    assert "--since" in record["message"] and "out of range" in record["message"]


@pytest.mark.parametrize(
    "args",
    [
        ("--config", "x\ny\x1b[31m.toml", "config", "show"),
        ("ingest", "audit\n.log", "--cluster", "c"),
        ("rules", "list", "--rules", "rules\r.yaml"),
    ],
    ids=["config", "input", "rules"],
)
def test_an_error_quoting_what_was_typed_stays_one_line_whatever_it_holds(cwd, args):
    """A path holding a line break or a terminal escape was echoed as is: two lines, or a
    terminal recoloured. Control characters are shown escaped."""
    line = assert_one_error_line(invoke(*args))
    assert "\x1b" not in line and "\r" not in line
    assert "\\n" in line or "\\r" in line or "\\x1b" in line


# ------------------------------------------------------------------ detect.toml, every command
@pytest.mark.parametrize("path", [*LEAVES, ("findings",)], ids=lambda p: " ".join(p))
def test_config_typo_stops_every_command_naming_file_and_key(cwd, path):
    (cwd / "detect.toml").write_text('lake = "./lake"\n[score]\nfail_on = "hihg"\n')
    result = invoke(*path)
    assert_one_error_line(result, "detect.toml [score]", "fail_on = 'hihg'")


@pytest.mark.parametrize(
    "path", [("config", "show"), ("findings",), ("rules", "list")], ids=" ".join
)
def test_config_that_is_not_utf8_is_one_line(cwd, path):
    (cwd / "detect.toml").write_bytes(b'lake = "caf\xe9"\n')
    assert_one_error_line(invoke(*path), "detect.toml", "not UTF-8")


def test_config_durations_and_times_use_the_same_bounds_as_flags(cwd):
    (cwd / "detect.toml").write_text('[export]\nlatency = "99999999999d"\n')
    assert_one_error_line(invoke("config", "show"), "[export]: latency", "out of range")
    (cwd / "detect.toml").write_text('[train]\nsince = "99999999999d"\n')
    assert_one_error_line(invoke("findings"), "[train]: since", "out of range")


# ------------------------------------------------------------------ AWS_REGION
AWS_ONLY = {"AWS_DEFAULT_REGION": None, "AWS_REGION": "eu-west-3"}


def test_aws_region_alone_shows_in_config_show(cwd):
    result = invoke("config", "show", "--format", "json", env=AWS_ONLY)
    assert result.exit_code == 0, result.stderr
    rows = {r["setting"]: r for r in json.loads(result.stdout)["settings"]}
    assert (rows["region"]["value"], rows["region"]["source"]) == ("eu-west-3", "env AWS_REGION")
    assert sum(1 for r in json.loads(result.stdout)["settings"] if r["setting"] == "region") == 1


#: No region anywhere: no variable, no profile file to read one from.
NO_REGION = {
    "AWS_DEFAULT_REGION": None,
    "AWS_REGION": None,
    "AWS_PROFILE": None,
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_ACCESS_KEY_ID": "x",
    "AWS_SECRET_ACCESS_KEY": "x",
}


def test_no_region_anywhere_is_said_so(cwd):
    """`detect watch --log-group` with no region retried for ever (1, 2, 4... s) where
    `detect export` exits 2; `config show` named the AWS profile as the source of a
    region there was none of (found by review)."""
    lake = str(cwd / "lake")
    group = "/aws/eks/x/cluster"
    result = invoke("watch", "--log-group", group, "--lake", lake, "--no-model", env=NO_REGION)
    assert_one_error_line(result, "no AWS region", "set AWS_REGION")
    shown = invoke("config", "show", "--format", "json", env=NO_REGION)
    rows = {r["setting"]: r for r in json.loads(shown.stdout)["settings"]}
    assert rows["region"]["value"] is None and rows["region"]["source"].startswith("none")


def _group_in(region: str, name: str) -> str:
    """An EKS audit log group with one event, in ``region`` only (moto keeps regions apart)."""
    import time

    import boto3

    logs = boto3.client("logs", region_name=region)
    group = f"/aws/eks/{name}/cluster"
    logs.create_log_group(logGroupName=group)
    stream = "kube-apiserver-audit-0123456789abcdef"
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    at = int(time.time() * 1000) - 5 * 60_000
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"{name}-1",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces",
        "verb": "list",
        "user": {"username": "alice"},
        "objectRef": {"resource": "namespaces", "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-01-01T00:00:00.000000Z",
        "stageTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(at / 1000)),
    }
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": at, "message": json.dumps(event)}],
    )
    return group


def test_export_honours_aws_region_alone(cwd, moto_endpoint):
    group = _group_in("eu-west-3", "regioncli")
    args = ("export", "--log-group", group, "--lake", str(cwd / "lake"), "--since", "10m")
    result = invoke(*args, "--format", "json", env=AWS_ONLY)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["region"], summary["events_written"]) == ("eu-west-3", 1)


def test_export_region_flag(cwd, moto_endpoint):
    group = _group_in("ap-south-1", "regionflag")
    args = ("export", "--log-group", group, "--lake", str(cwd / "lake"), "--since", "10m")
    result = invoke(*args, "--region", "ap-south-1", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["region"] == "ap-south-1"
    assert os.environ["AWS_REGION"] == "us-east-1"  # restored when the command ended


# ------------------------------------------------------------------ Ctrl-C at start-up
def test_ctrl_c_during_start_up_is_exit_130_without_traceback():
    """SIGINT arrives while the app's modules are being imported (typer first).

    The child first takes Ctrl-C as a process started from a shell does (Python's default
    handler, the signal unblocked): it inherits the test worker's disposition otherwise,
    and a worker that ignores SIGINT at that moment made this test pass a signal nobody
    received (exit 0, once in a full run)."""
    code = (
        "import builtins, os, signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'typer':\n"
        "        builtins.__import__ = real\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from detector.cli import main\n"
        "main()\n"
    )
    proc = _child([sys.executable, "-c", code, "config", "show"])
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "interrupted"


def _child(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (a Python snippet, or ``sh -c``) as its own process, output captured."""
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=120, check=False
    )


# ------------------------------------------------------------------ the process's end
_ENDING = (
    "import atexit, sys, threading\n"
    "from detector.cli import main\n"
    "marker = sys.argv.pop(1)\n"
    "atexit.register(lambda: open(marker, 'w').write('ran'))\n"
    "atexit.register(print, 'last words')  # buffered: stdout is a pipe\n"
    "if sys.argv.pop(1) == 'busy':  # a thread still writing when the command is done\n"
    "    out = sys.argv.pop(1)\n"
    "    gate = threading.Event()\n"
    "    def finish():\n"
    "        gate.wait(); open(out, 'w').write('finished')\n"
    "    threading.Thread(target=finish).start()\n"
    "    threading._register_atexit(gate.set)  # as thread pools do: once the process ends\n"
    "main()\n"
)


def _ending(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``_ENDING`` with stdout a buffered pipe, as under cron (whatever this shell set)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return _child([sys.executable, "-c", _ENDING, *args], env=env)


def test_a_command_ends_with_its_code_its_whole_output_and_its_exit_handlers(tmp_path):
    """The CLI skips interpreter teardown at its end (detector.cli._leave): what a user or
    cron relies on at exit must survive that. The output is larger than stdout's buffer,
    so its tail is still buffered when the command returns."""
    marker = tmp_path / "atexit"
    proc = _ending(str(marker), "idle", "rules", "list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 16_384
    document, last = proc.stdout.rsplit("\n", 2)[:2]
    assert len(json.loads(document)["rules"]) >= 40
    assert last == "last words"
    assert marker.read_text() == "ran"

    proc = _ending(str(marker), "idle", "score", "--since", "yesterday-ish")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")


def test_a_thread_still_working_at_the_end_is_waited_for(tmp_path):
    marker, out = tmp_path / "atexit", tmp_path / "thread"
    proc = _ending(str(marker), "busy", str(out), "rules", "list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "finished"
    assert marker.read_text() == "ran"


def _started_without(redirect: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``detect ARGS`` under ``sh`` with ``redirect`` (``>&-``: Python starts with that
    stream None, as under a cron line that closes it)."""
    command = " ".join([shlex.join([sys.executable, "-m", "detector", *args]), redirect])
    return _child(["sh", "-c", command])


def test_a_command_started_without_stdout_says_so_in_one_line(tmp_path):
    """Writing to a stdout the process was started without is one clear line and exit 3
    (as ``ls >&-`` fails), not an AttributeError from inside a library; the work before
    the write is done. A usage error is still a usage error."""
    out = tmp_path / "rules.md"
    proc = _started_without(">&-", "rules", "docs", "--output", str(out))
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr == "error: cannot write: standard output is closed\n"
    assert out.read_text().startswith("#")

    proc = _started_without(">&-", "rules", "list", "--format", "json")
    assert (proc.returncode, proc.stderr) == (3, "error: cannot write: standard output is closed\n")

    proc = _started_without(">&-", "score", "--since", "yesterday-ish")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_a_cluster_the_lake_holds_nothing_of_is_named_in_a_warning(tmp_path, detect):
    """``--cluster prdo`` in a cron job: every run said "no alerts", exit 0, for ever."""
    from datetime import UTC, datetime, timedelta

    from detector.lake.events import Lake
    from tests.lakefill import event, write_events

    lake = Lake(str(tmp_path / "lake"))
    write_events(lake, [event("alice", datetime.now(UTC) - timedelta(minutes=30))])
    common = ("--lake", lake.uri, "--since", "2h")
    for args in (
        ("score", *common, "--rules-only", "--cluster", "prdo"),
        ("timeline", "alice", *common, "--cluster", "prdo"),
        ("report", *common, "--cluster", "prdo", "-o", str(tmp_path / "r.html")),
    ):
        run = detect(*args)
        assert run.returncode == 0, run.stderr
        assert "holds no events of cluster 'prdo' (it holds prod)" in run.stderr, args
        assert "'prod'" not in run.stderr
    quiet = detect("score", *common, "--rules-only", "--cluster", "prod")
    assert "holds no events" not in quiet.stderr


def test_a_reader_that_leaves_ends_the_run_with_141_not_the_code_of_a_finding():
    """``detect ... | head``: the run ended with exit 1, what ``score --fail-on`` returns
    when it found something, so a pipeline under ``pipefail`` read it as a finding."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    try:
        proc = subprocess.run(
            [*detect_cmd(), "rules", "list"],  # rich's table: its own broken-pipe exit
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_reader_that_stops_part_way_ends_the_run_with_141_not_0():
    """A reader that takes the first bytes and leaves (a script reading a header): the
    pipe took 64 KiB of the document, Python's buffered stdout dropped the rest without
    an error, and the run exited 0 with half a document sent."""
    read, write = os.pipe()
    with subprocess.Popen(
        [*detect_cmd(), "rules", "list", "--format", "json"],  # ~90 KB: more than a pipe holds
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        os.close(write)
        head = os.read(read, 10)  # the writer is blocked on a full pipe until we leave
        os.close(read)
        _, err = proc.communicate(timeout=60)
    assert head.startswith(b"{")
    assert proc.returncode == 141, err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_a_command_started_without_stderr_keeps_its_exit_code():
    """Nothing can be said on a closed stderr; the exit code still tells, and stdout
    still gets the output."""
    proc = _started_without("2>&-", "score", "--since", "yesterday-ish")
    assert (proc.returncode, proc.stderr) == (2, "")
    proc = _started_without("2>&-", "rules", "list", "--format", "json")
    assert proc.returncode == 0
    assert len(json.loads(proc.stdout)["rules"]) >= 40


# ------------------------------------------------------------------ the machine, not the code
def test_paths_that_are_files_where_folders_are_due(cwd):
    (cwd / "afile").write_text("x")
    assert_one_error_line(invoke("simulate", "--out", "afile"), "--out", "is a file")
    assert_one_error_line(invoke("demo", "--lake", "afile"), "--lake afile: a file, not a folder")


def test_unwritable_output_is_one_line_exit_3(cwd):
    (cwd / "afile").write_text("x")
    result = invoke("rules", "docs", "--output", "afile/rules.md")
    assert_one_error_line(result, "afile", code=3)


@pytest.mark.parametrize(
    "args",
    [
        ("score", "--lake", "s3://no-such-bucket-for-cli-test/lake", "--no-model", "--since", "1h"),
        # The writer lock is an ingest's first S3 call: it said "cannot read:
        # NoCredentialsError", exit 3, where every other command says what to set.
        ("ingest", "x.log", "--lake", "s3://no-such-bucket-for-cli-test/lake", "--cluster", "c"),
    ],
    ids=["score", "ingest-lock"],
)
def test_no_aws_credentials_is_a_configuration_error(cwd, detect, args):
    """A real process with the whole AWS chain empty (env, files, instance metadata)."""
    (cwd / "x.log").write_bytes(orjson.dumps(make_event(1)) + b"\n")
    env = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(cwd / "none"),
        "AWS_CONFIG_FILE": str(cwd / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": "us-east-1",
    }
    proc = detect(*args, env=env, cwd=str(cwd))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: no AWS credentials found")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("score", "--lake", "s3://bucket/lake", "--no-model", "--since", "1h"),
        ("ingest", "s3://bucket/exports/", "--lake", "lake", "--cluster", "c"),
    ],
    ids=["lake", "input"],
)
def test_an_aws_endpoint_that_cannot_be_reached_is_one_runtime_error_line(cwd, detect, args):
    """A real process against a loopback port nobody listens on: the connection is refused,
    which is a failure of the world (exit 3) said in one line naming the endpoint, not an
    "unexpected" error that looks like a bug."""
    (cwd / "x.log").write_bytes(orjson.dumps(make_event(1)) + b"\n")
    endpoint = f"http://127.0.0.1:{free_port()}"
    env = {
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_MAX_ATTEMPTS": "1",
    }
    proc = detect(*args, env=env, cwd=str(cwd))
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert endpoint in lines[0] and "unexpected" not in lines[0], lines[0]


def test_root_usage_error_is_a_json_record_too(cwd):
    result = invoke("--config", "x.toml", "--log-format", "json", "--log-level", "loud", "findings")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--log-level" in json.loads(line)["message"]


# ------------------------------------------------------------------ commands imported on demand
def _entry_point(args: list[str], *, lazy: bool, cwd: Path) -> tuple[str, list[str]]:
    """Run ``detect args`` in a fresh interpreter: (stdout, detector and pyarrow modules).

    ``lazy``: through the console entry point (``detector.cli.main``, commands imported
    on demand) rather than the app module (every command registered at import).
    """
    entry = "from detector.cli import main" if lazy else "from detector.cli.app import main"
    code = (
        "import atexit, json, sys\n"
        f"{entry}\n"
        f"sys.argv = ['detect', *{args!r}]\n"
        "def modules():\n"
        "    mods = sorted(m for m in sys.modules if m.startswith(('detector.', 'pyarrow')))\n"
        "    sys.stderr.write('MODULES ' + json.dumps(mods))\n"
        "atexit.register(modules)  # the entry point ends the process itself\n"
        "main()\n"
    )
    env = {**os.environ, "TERMINAL_WIDTH": "100", "COLUMNS": "100"}
    proc = _child([sys.executable, "-c", code], env=env, cwd=cwd)
    modules = json.loads(proc.stderr.rsplit("MODULES ", 1)[1])
    return proc.stdout, modules


def test_the_entry_point_imports_only_the_command_it_runs(tmp_path):
    """`detect score` does not import the ingest readers or CloudWatch/boto (start-up time)."""
    out, modules = _entry_point(["score", "--help"], lazy=True, cwd=tmp_path)
    assert "Usage: detect score" in out
    assert "detector.cli.commands.score" in modules
    for unused in ("detector.cli.commands.ingest", "detector.pipeline.export"):
        assert unused not in modules


def test_scoring_with_rules_imports_neither_the_ingest_code_nor_pyarrow(tmp_path):
    """Rules compile without events.normalize; score reads and writes with polars alone."""
    (tmp_path / "lake").mkdir()  # a lake nothing was written to yet
    args = ["score", "--lake", str(tmp_path / "lake"), "--no-model", "--since", "1h"]
    out, modules = _entry_point([*args, "--format", "json"], lazy=True, cwd=tmp_path)
    assert json.loads(out)["rules"].endswith(" rules")
    assert "detector.events.normalize" not in modules
    assert "pyarrow" not in modules


@pytest.mark.parametrize("args", [["--help"], ["config", "show"]])
def test_the_entry_point_knows_every_command_when_it_lists_them(tmp_path, args):
    lazy, _ = _entry_point(args, lazy=True, cwd=tmp_path)
    eager, _ = _entry_point(args, lazy=False, cwd=tmp_path)
    assert lazy == eager
    assert lazy.strip()


def test_the_entry_point_checks_a_config_file_against_every_command(tmp_path):
    (tmp_path / "detect.toml").write_text('[ingest]\ncluster = "prod"\n')
    out, modules = _entry_point(["config", "show"], lazy=True, cwd=tmp_path)
    assert any(line.split()[:2] == ["ingest.cluster", "prod"] for line in out.splitlines())
    assert "detector.cli.commands.ingest" in modules


# ------------------------------------------------------------------ a full disk
def _file_size_capped(limit: int) -> None:
    """In the child: files may not grow past ``limit`` bytes, and a write past it fails
    with EFBIG instead of killing the process: a full disk, without root or a mount."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_write_that_fails_for_space_names_the_file(tmp_path):
    """A full disk said only 'error: No space left on device': not which file, nor
    whether it was the lake or the output. The lake file and the output are named now,
    and nothing half-written stays beside either."""
    log = tmp_path / "audit.log"
    log.write_text(
        "".join(orjson.dumps(make_event(i)).decode() + "\n" for i in range(2000)),
    )
    lake, page = tmp_path / "lake", tmp_path / "out" / "rules.md"

    def capped(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*detect_cmd(), *args],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=lambda: _file_size_capped(20_000),
        )

    run = capped("ingest", str(log), "--lake", str(lake), "--cluster", "c1")
    assert run.returncode == 3, run.stderr
    line = run.stderr.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(f"error: File too large: {lake}/events/")
    assert not list((lake / "_tmp").iterdir())

    run = capped("rules", "docs", "--output", str(page))
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip() == f"error: File too large: {page}"
    assert not list(page.parent.iterdir())


def test_a_text_log_record_is_one_line_with_control_characters_shown(capsys):
    """A warning may quote a lake string or what a server answered: an escape sequence or
    a line break in it went to stderr raw (a forged second record, or a terminal driven
    by the input). The text format shows them, as the error line does."""
    import logging

    from detector import logging_setup

    logging_setup.configure("text", "warning")
    try:
        logging.getLogger("detector.test").warning("sink said %s", "nope\x1b[2J\nERROR forged")
    finally:
        logging_setup.reset()
    err = capsys.readouterr().err
    assert err == "WARNING detector.test: sink said nope\\x1b[2J\\nERROR forged\n"


def test_an_unexpected_error_is_still_one_line(monkeypatch, capsys):
    """A bug's message is shown, escaped: polars' errors run over several lines, and the
    README promises an error is always one line."""
    import importlib

    import detector.rules

    cli_app = importlib.import_module("detector.cli.app")

    def broken(*args, **kwargs):
        raise RuntimeError("first line\n\nThis error occurred in the following expression")

    monkeypatch.setattr(detector.rules, "load_ruleset", broken)
    monkeypatch.setattr(sys, "argv", ["detect", "rules", "list"])
    monkeypatch.delenv("DETECT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as done:
        cli_app.main()
    assert done.value.code == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unexpected RuntimeError: first line")
