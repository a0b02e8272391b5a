"""What the commands print: counts that add up, whole identities, hints that can be run.

Scoring runs in-process on the committed six-hour sample (``data/samples/audit.log.gz``,
4,761 events) ingested once per session; the rest renders small hand-made frames.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.cli.render import render_findings
from detector.events.identity import display_principal
from tests.conftest import ROOT

SAMPLE = ROOT / "data" / "samples" / "audit.log.gz"
RANGE = ("--since", "2026-11-27T12:00:00Z", "--until", "2026-11-27T18:00:00Z")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="session")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    lake = str(tmp_path_factory.mktemp("cli-output") / "lake")
    result = invoke("ingest", str(SAMPLE), "--lake", lake, "--cluster", "demo")
    assert result.exit_code == 0, result.stderr
    return lake


# ------------------------------------------------------------------ score
def test_no_model_reports_no_windows_and_names_the_lake_in_its_hint(sample_lake):
    result = invoke("score", "--lake", sample_lake, *RANGE, "--no-model")
    assert result.exit_code == 0, result.stderr
    assert "principal windows" not in result.stdout
    assert "model not used" in result.stdout
    hint = next(x for x in result.stdout.splitlines() if "info record(s) not shown" in x)
    assert f"detect findings --lake {sample_lake}" in hint
    assert "--min-severity info" not in hint  # findings lists info already


def test_rules_only_is_a_hidden_alias_of_no_model(sample_lake):
    def ids(*flags: str) -> list[str]:
        out = invoke("score", "--lake", sample_lake, *RANGE, *flags, "--format", "json")
        assert out.exit_code == 0, out.stderr
        return sorted(f["finding_id"] for f in json.loads(out.stdout)["findings"])

    assert ids("--rules-only") == ids("--no-model") != []
    assert "--rules-only" not in invoke("score", "--help").stdout


def test_choices_are_read_in_any_case_as_each_other_choice_is(sample_lake):
    # --fail-on HIGH and --from CloudWatch were taken; --format JSON was refused.
    for fmt in ("JSON", "Json"):
        out = invoke("score", "--lake", sample_lake, *RANGE, "--no-model", "--format", fmt)
        assert out.exit_code == 0, out.stderr
        assert json.loads(out.stdout)["written"] is True
    bad = CliRunner().invoke(app, ["findings", "--lake", sample_lake, "--format", "xml"])
    assert bad.exit_code == 2 and "'xml' is not one of" in bad.stderr


def test_score_enable_switches_on_a_rule_that_ships_disabled(sample_lake):
    def run(*flags: str) -> dict:
        out = invoke(
            "score", "--lake", sample_lake, *RANGE, "--no-model", *flags, "--format", "json"
        )
        assert out.exit_code == 0, out.stderr
        return json.loads(out.stdout)

    plain, enabled = run(), run("--enable", "namespace-created")
    count = re.compile(r"(\d+) rules")
    assert int(count.search(enabled["rules"])[1]) == int(count.search(plain["rules"])[1]) + 1
    unknown = CliRunner().invoke(
        app, ["score", "--lake", sample_lake, *RANGE, "--no-model", "--enable", "nope"]
    )
    assert unknown.exit_code == 2 and "nope" in unknown.stderr


# ------------------------------------------------------------------ ingest
def test_missing_input_is_exit_2_before_anything_is_ingested(tmp_path):
    lake = tmp_path / "lake"
    result = CliRunner().invoke(
        app,
        ["ingest", str(SAMPLE), str(tmp_path / "nope.log"), "--lake", str(lake), "--cluster", "x"],
    )
    assert result.exit_code == 2
    assert result.stdout == ""  # no "ingested 0 lines" summary before the error
    assert (
        result.stderr.strip() == f"error: {tmp_path / 'nope.log'}: no such file, folder or object"
    )
    assert not (lake / "events").exists()  # the good input was not half-ingested either


# ------------------------------------------------------------------ findings table
def _findings(principal: str, detector: str) -> pl.DataFrame:
    start = datetime(2026, 11, 27, 14, 40, tzinfo=UTC)
    rows = [
        ("model:iforest", "arn:aws:iam::111122223333:role/eng-admin/frank", 0.8721, "high"),
        (detector, principal, 36.0, "medium"),
        ("rule:pod-exec", "role/developer/grace", 1.0, "low"),
        ("rule:pod-exec", "role/developer/grace", 1.0, "info"),
    ]
    return pl.DataFrame(
        {
            "finding_id": [f"{i:020x}" for i in range(len(rows))],
            "severity": [r[3] for r in rows],
            "score": [r[2] for r in rows],
            "window_start": [start + timedelta(minutes=10 * i) for i in range(len(rows))],
            "detector": [r[0] for r in rows],
            "principal": [r[1] for r in rows],
            "title": ["Spike of denied requests from one identity, " * 4] * len(rows),
        }
    )


def test_findings_table_keeps_detector_and_principal_whole_and_one_score_format(capsys):
    principal = "system:serviceaccount:very-long-namespace-name:a-long-service-account"
    detector = "rule:auth-failure-spike-principal-long"
    render_findings(
        _findings(principal, detector), alerts_only=True, hint="detect findings --lake s3://l/p"
    )
    out = capsys.readouterr().out
    rows = [x for x in out.splitlines() if re.match(r"^[0-9a-f]{20} ", x)]
    assert len(rows) == 3 and all(len(x) <= 200 for x in rows)
    assert principal in out and detector.removeprefix("rule:") in out
    # An IAM role session is shown in its readable form (display_principal), never cut.
    assert display_principal("arn:aws:iam::111122223333:role/eng-admin/frank") == (
        "eng-admin (session frank)"
    )
    assert "eng-admin (session frank)" in out
    scores = [x.split()[2] for x in rows]
    assert scores == ["0.87", "36.00", "1.00"]
    assert "1 info record(s) not shown" in out and "detect findings --lake s3://l/p" in out


def test_a_long_principal_hides_no_column_of_any_row(capsys):
    """One principal of 200 characters (a role and session name can reach 140) hid the
    severity, score and window of every row, in pipes too (found by review): it is cut
    at PRINCIPAL_MAX, and every column stays."""
    from detector.cli.render import PRINCIPAL_MAX

    render_findings(_findings("P" * 200, "rule:pod-exec"))
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:5] == ["id", "severity", "score", "window", "(UTC)"], header
    rows = [x for x in out.splitlines() if re.match(r"^[0-9a-f]{20} ", x)]
    assert [r.split()[1] for r in rows] == ["high", "medium", "low", "info"]
    assert "P" * (PRINCIPAL_MAX - 1) + "…" in out and "P" * PRINCIPAL_MAX not in out


def test_emoji_codes_in_lake_names_are_printed_as_stored(capsys):
    """A principal named ``:warning: boss :smile:`` showed as emoji in tables, not as the
    name a command takes (found by review)."""
    render_findings(_findings(":warning: boss :smile:", "rule:pod-exec"))
    assert ":warning: boss :smile:" in capsys.readouterr().out


def test_escaped_and_wide_characters_are_measured_as_shown(capsys):
    """Columns were sized by the raw text's length: a principal with an escape character
    (shown as four, ``\\x1b``) or CJK letters (two cells each) was cut with an ellipsis
    though the column was sized for it (found by review)."""
    who = "\x1b[31m管理者\nops"
    render_findings(_findings(who, "rule:pod-exec"))
    out = capsys.readouterr().out
    assert "\\x1b[31m管理者\\nops" in out, out


def _incidents() -> pl.DataFrame:
    rows = [
        ("critical", "new", None, "eng-admin (session bob)", "Exec into a kube-system pod"),
        ("high", "suppressed", "ci", "system:serviceaccount:payments:payments-api", "Spike"),
    ]
    return pl.DataFrame(
        {
            "incident_id": [f"{i:020x}ab" for i in range(len(rows))],
            "severity": [r[0] for r in rows],
            "status": [r[1] for r in rows],
            "suppression": [r[2] for r in rows],
            "first_seen": [datetime(2026, 11, 27, 14, i, tzinfo=UTC) for i in range(len(rows))],
            "finding_ids": [["f"] * 46, ["f"] * 7],
            "key": [r[3] for r in rows],
            "key_kind": ["principal"] * len(rows),
            "principal": [r[3] for r in rows],
            "title": [r[4] + " (+3 more alert(s) and 42 record(s))" for r in rows],
        }
    )


@pytest.mark.parametrize("columns", [100, 120, 150])
def test_the_incidents_table_on_a_terminal_keeps_every_identifying_column(monkeypatch, columns):
    """At 120 columns `detect incidents` dropped the severity, status and findings columns
    and cut the id to 10 characters; at 150 they read `se… …` (found by review)."""
    import io

    from rich.console import Console

    from detector.cli import render

    screen = io.StringIO()
    console = Console(file=screen, width=columns, force_terminal=True, color_system=None)
    monkeypatch.setattr(render, "stdout", console)
    render.render_incidents(_incidents())
    lines = screen.getvalue().splitlines()
    assert lines[0].split()[:5] == ["id", "severity", "status", "first", "seen"], lines[0]
    assert all(len(x) <= columns for x in lines), [len(x) for x in lines]
    first, second = (x.split() for x in lines[1:3])
    assert first[:5] == ["0" * 20 + "ab", "critical", "new", "11-27", "14:00"]
    assert first[5] == "46" and second[:3] == ["0" * 19 + "1ab", "high", "suppressed"]


# ------------------------------------------------------------------ export summary
def test_export_summary_counts_add_up(capsys):
    from detector.cli.commands.export import render_summary
    from detector.pipeline.export import ExportSummary

    summary = ExportSummary(log_group="/aws/eks/prod/cluster", cluster="prod", lake="./lake")
    summary.events_read, summary.overlap_skipped = 121, 96
    summary.ingest.events_written, summary.ingest.duplicates = 26, 95
    render_summary(summary)
    line = capsys.readouterr().out.splitlines()[0]
    numbers = re.search(
        r"exported ([\d,]+) events .*: ([\d,]+) new, ([\d,]+) already in the lake"
        r" \(([\d,]+) re-read in the overlap\), ([\d,]+) quarantined",
        line,
    )
    assert numbers, line
    total, new, already, _, quarantined = (int(n.replace(",", "")) for n in numbers.groups())
    assert (total, new, already, quarantined) == (217, 26, 191, 0)
    assert new + already + quarantined == total


# ------------------------------------------------------------------ demo overview
def test_demo_overview_says_how_many_hours_its_histogram_shows(capsys):
    from detector.cli.commands.demo import render_overview

    start = datetime(2026, 11, 25, tzinfo=UTC)
    hours = [{"hour": start + timedelta(hours=i), "events": 100 + i} for i in range(49)]
    render_overview(
        {"events": 5_000, "events_per_hour": hours, "top_principals": [], "quarantined": []}
    )
    out = capsys.readouterr().out
    head = next(x for x in out.splitlines() if x.startswith("lake:"))
    assert "49 hours" in head and "the last 12" in head
    assert sum(1 for x in out.splitlines() if x.rstrip().endswith("#")) == 12
