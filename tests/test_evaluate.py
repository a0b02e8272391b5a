"""Evaluation on labeled simulator data: labels, matching, metrics and the command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.detect.evaluate import (
    DetectorStats,
    LabelsError,
    Scenario,
    _hits,
    evaluate,
    load_labels,
)
from detector.lake.events import Lake
from detector.pipeline.ingest import ingest_paths
from detector.simulate import write_simulation

END = datetime(2026, 11, 20, tzinfo=UTC)
CUT = END - timedelta(days=1)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    write_simulation(out, days=2, rate=0.25, seed=9, end=END)
    ingest_paths([str(out / "audit.log")], str(out / "lake"), cluster="demo")
    return out


def test_labels_load_from_the_simulator_document(sim):
    scenarios = load_labels(sim / "labels.json")
    assert len(scenarios) == 10
    assert all(s.audit_ids and s.start < s.end for s in scenarios)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "not JSON"),
        ('{"x": 1}', "no list"),
        ('[{"id": "a"}]', "scenario 0 in .*: start is required"),
        # Each said by key; these were "'int' object has no attribute 'get'", or a
        # scenario silently never matched (a numeric principal, an end before its start):
        ("[5]", "scenario 0 in .*: expected an object"),
        (
            '[{"principal": 5, "start": "2026-11-19T08:00:00Z", "end": "2026-11-19T09:00:00Z"}]',
            "principal must be a string",
        ),
        (
            '[{"principal": "a", "start": "2026-11-19T09:00:00Z", "end": "2026-11-19T08:00:00Z"}]',
            "end is before start",
        ),
        (
            '[{"start": "2026-11-19T08:00:00Z", "end": "2026-11-19T09:00:00Z", "audit_ids": "x"}]',
            "audit_ids must be a list of strings",
        ),
    ],
)
def test_bad_labels_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "labels.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LabelsError, match=message):
        load_labels(path)


def test_matching_by_audit_id_or_principal_and_time():
    t = CUT
    scenario = Scenario(
        "01", "x", "eve", None, None, t, t + timedelta(minutes=3), frozenset({"id-1"})
    )
    findings = pl.DataFrame(
        {
            "principal": ["mallory", "eve", "eve", "bob"],
            "window_start": [t, t, t + timedelta(hours=1), t],
            "window_end": [t + timedelta(minutes=10)] * 2
            + [t + timedelta(hours=1, minutes=10)]
            + [t + timedelta(minutes=10)],
            "audit_ids": [["id-1"], [], [], ["id-9"]],
        }
    )
    assert _hits(findings, [scenario]) == [{"01"}, {"01"}, set(), set()]
    stats = DetectorStats(
        "model",
        findings=4,
        true_findings=2,
        scenarios=2,
        detected=1,
        false_alerts=2,
        false_alerts_benign=1,
        days=0.5,
    )
    assert (stats.precision, stats.recall, stats.false_per_day_benign) == (0.5, 0.5, 2.0)


@pytest.mark.parametrize("cut", [CUT, CUT + timedelta(minutes=4)])
def test_evaluate_trains_before_the_cut_and_scores_after(sim, cut):
    """A cut inside a window (what `detect demo` suggests: its time to the minute) put that
    window in both ranges, trained on and scored (found by review): both split at the
    start of the window holding the cut."""
    report = evaluate(
        Lake(str(sim / "lake")), load_labels(sim / "labels.json"), train_until=cut, rules=False
    )
    assert report.train[1] == CUT and report.test[0] == CUT
    (model,) = report.detectors
    assert model.name == "model" and model.scenarios == 10
    assert model.detected == sum(1 for s in report.scenarios if s["model"])
    assert model.true_findings + model.false_alerts == model.findings
    # the blatant ones: a stolen token reading secrets everywhere, a burst of denied requests
    found = {s["scenario"] for s in report.scenarios if s["model"]}
    assert {"stolen_sa_token", "permission_enumeration"} <= found
    assert model.recall >= 0.5


def test_cli_evaluate_prints_the_tables_and_json(sim):
    runner = CliRunner()
    args = [
        "evaluate",
        "--lake",
        str(sim / "lake"),
        "--labels",
        str(sim / "labels.json"),
        "--train-until",
        CUT.isoformat(),
        "--no-rules",
    ]
    table = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "stolen_sa_token" in table.stdout and "false alerts/day" in table.stdout
    doc = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert doc["detectors"][0]["name"] == "model"
    assert len(doc["scenarios"]) == 10
    bad = runner.invoke(
        app,
        [
            "evaluate",
            "--lake",
            str(sim / "lake"),
            "--labels",
            str(sim / "nope.json"),
            "--train-until",
            CUT.isoformat(),
        ],
    )
    assert bad.exit_code == 2


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--train-until", "2030-01-01T00:00:00Z"], "nothing to score"),
        (
            ["--train-until", CUT.isoformat(), "--until", (CUT - timedelta(hours=2)).isoformat()],
            "nothing to score",
        ),
        (["--train-until", "2000-01-01T00:00:00Z"], "nothing to train on"),
    ],
)
def test_a_split_that_leaves_nothing_to_score_or_train_on_is_a_usage_error(sim, extra, said):
    """A --train-until after every event, or an --until before it, printed empty tables
    with exit 0; one before every event printed a range read backwards (found by review)."""
    args = ["evaluate", "--lake", str(sim / "lake"), "--labels", str(sim / "labels.json")]
    run = CliRunner().invoke(app, [*args, *extra, "--no-rules"])
    assert run.exit_code == 2, run.output
    assert said in run.stderr and len(run.stderr.strip().splitlines()) == 1
