"""Train and score on a small simulated lake; the commands as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.detect.score import ScoreOptions, score_range
from detector.detect.train import train_model
from detector.events.normalize import normalize_lines
from detector.lake import findings as store
from detector.lake.events import Lake
from detector.lake.findings_schema import SEVERITIES
from detector.model.storage import Model
from detector.simulate.traffic import simulate

END = datetime(2026, 11, 20, tzinfo=UTC)
START = END - timedelta(days=2)
CUT = END - timedelta(days=1)  # the simulator puts its attacks in the last day
ISO = "%Y-%m-%dT%H:%M:%SZ"
NO_RULES = ScoreOptions(use_rules=False)


@pytest.fixture(scope="module")
def sim_lake(tmp_path_factory) -> tuple[str, list[dict]]:
    root = tmp_path_factory.mktemp("sim")
    sim = simulate(start=START, end=END, rate=0.25, seed=5, cluster="demo")
    lines = list(sim.iter_lines())
    result = normalize_lines(
        pa.array(lines, pa.binary()),
        positions=pa.array([str(i) for i in range(len(lines))]),
        source="sim",
        cluster="demo",
    )
    lake = Lake(str(root / "lake"))
    lake.write_events(result.events)
    return lake.uri, sim.labels


@pytest.fixture(scope="module")
def model_dir(sim_lake, tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("models"))
    train_model(Lake(sim_lake[0]), START, CUT, model_dir=d)
    return d


def _scenario_found(findings: pl.DataFrame, label: dict) -> bool:
    ids = set(label["audit_ids"])
    return any(ids & set(a or ()) for a in findings["audit_ids"].to_list())


def test_score_finds_the_stolen_token_and_files_findings_with_their_events(sim_lake, model_dir):
    lake_uri, labels = sim_lake
    lake = Lake(lake_uri)
    model = Model.load(model_dir)
    result = score_range(lake, CUT, END, model=model, options=NO_RULES)
    found = result.findings
    assert found.height > 0
    assert found["detector"].unique().to_list() == ["model:iforest"]
    stolen = next(x for x in labels if x["scenario"] == "stolen_sa_token")
    assert _scenario_found(found, stolen)
    # every finding has reasons, and its events are in findings_events with its id
    assert all(1 <= len(r) <= 5 for r in found["reasons"].to_list())
    listed = store.list_findings(lake, since=CUT)
    assert sorted(listed["finding_id"]) == sorted(found["finding_id"])
    row, events = store.get_finding(lake, found["finding_id"][0])
    assert events.height == row["event_count"] > 0
    assert set(events["audit_id"]) == set(row["audit_ids"])
    assert (events["principal"] == row["principal"]).all()
    assert events["event_time"].min() >= row["window_start"]
    assert events["event_time"].max() < row["window_end"]


def test_scoring_the_same_range_twice_replaces_its_findings(sim_lake, model_dir):
    lake = Lake(sim_lake[0])
    model = Model.load(model_dir)
    since, until = CUT + timedelta(hours=6), CUT + timedelta(hours=12)
    first = score_range(lake, since, until, model=model, options=NO_RULES)
    files = sorted(lake.loc.glob(lake.loc.path("findings*", "*", "*.parquet")))
    again = score_range(lake, since, until, model=model, options=NO_RULES)
    assert sorted(again.findings["finding_id"]) == sorted(first.findings["finding_id"])
    assert sorted(lake.loc.glob(lake.loc.path("findings*", "*", "*.parquet"))) == files
    listed = store.list_findings(lake, since=since, until=until)
    assert listed["finding_id"].n_unique() == listed.height


def test_cold_start_fits_on_the_window_and_says_so(sim_lake):
    lake = Lake(sim_lake[0])
    result = score_range(
        lake,
        CUT,
        END,
        model=None,
        options=ScoreOptions(fit_on_window=True, use_rules=False, write=False),
    )
    assert result.cold_start
    assert result.findings.height > 0
    assert result.findings["cold_start"].all()


def run_cli(*args: str, detect) -> tuple[int, str, str]:
    proc = detect(*args)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_train_score_json_fail_on_and_show(sim_lake, tmp_path, detect):
    lake_uri, _ = sim_lake
    models = str(tmp_path / "models")
    code, out, err = run_cli(
        "train",
        "--lake",
        lake_uri,
        "--since",
        START.strftime(ISO),
        "--until",
        CUT.strftime(ISO),
        "--model-dir",
        models,
        "--format",
        "json",
        detect=detect,
    )
    assert code == 0, err
    card = json.loads(out)
    assert card["training"]["since"] == START.strftime(ISO)
    assert Path(models, "model.json").exists()

    code, out, err = run_cli(
        "score",
        "--lake",
        lake_uri,
        "--since",
        CUT.strftime(ISO),
        "--until",
        END.strftime(ISO),
        "--model-dir",
        models,
        "--format",
        "json",
        "--fail-on",
        "low",
        detect=detect,
    )
    doc = json.loads(out)
    assert doc["model_version"] == card["model_version"]
    ranks = [(SEVERITIES.index(f["severity"]), f["score"]) for f in doc["findings"]]
    assert doc["findings"] and ranks == sorted(ranks, reverse=True)
    assert code == 1, err  # findings at or above --fail-on
    assert err.strip() == ""  # no progress noise when not on a terminal

    fid = doc["findings"][0]["finding_id"]
    code, out, err = run_cli("findings", "show", fid, "--lake", lake_uri, detect=detect)
    assert code == 0, err
    assert fid in out and "why:" in out and "events (" in out


def test_cli_score_without_a_model_says_how_to_train(sim_lake, tmp_path, detect):
    code, out, err = run_cli(
        "score",
        "--lake",
        sim_lake[0],
        "--since",
        "1h",
        "--model-dir",
        str(tmp_path / "empty"),
        detect=detect,
    )
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no model" in lines[0] and "detect train" in lines[0]
    assert "Traceback" not in err


def test_cli_findings_list_json_and_table(sim_lake, model_dir):
    lake_uri, _ = sim_lake
    score_range(Lake(lake_uri), CUT, END, model=Model.load(model_dir), options=NO_RULES)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "findings",
            "--lake",
            lake_uri,
            "--since",
            CUT.strftime(ISO),
            "--min-severity",
            "medium",
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows and all(SEVERITIES.index(r["severity"]) >= 2 for r in rows)
    table = runner.invoke(app, ["findings", "--lake", lake_uri, "--since", CUT.strftime(ISO)])
    assert rows[0]["finding_id"] in table.stdout
    bad = runner.invoke(app, ["findings", "--lake", lake_uri, "--min-severity", "urgent"])
    assert bad.exit_code == 2


@pytest.mark.parametrize(
    "command", [["train"], ["score"], ["findings"], ["findings", "show"], ["evaluate"]]
)
def test_help_ends_with_a_runnable_example(command):
    res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = res.stdout
    assert "Example" in text
    example = text[text.rindex("Example") :]
    assert f"detect {command[0]}" in example
