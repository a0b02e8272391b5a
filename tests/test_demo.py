"""`detect demo`: the whole loop on generated data, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from detector.model.storage import CARD_NAME


def test_demo_runs_the_loop_and_catches_the_planted_attacks(tmp_path: Path, detect):
    lake, work = tmp_path / "lake", tmp_path / "demo"
    (work / "sub").mkdir(parents=True)  # a folder in use: --workdir . or ~ once emptied it
    (work / "notes.txt").write_text("precious")
    (work / "sub" / "keep.txt").write_text("kept")
    args = ("demo", "--lake", str(lake), "--workdir", str(work))
    args += ("--model-dir", str(tmp_path / "models"), "--format", "json")
    run = detect(*args, "--days", "2", "--rate", "0.3")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ingest"]["events_written"] == report["simulation"]["events"] > 10_000
    assert report["lake"]["events"] == report["simulation"]["events"]
    labels = json.loads((work / "labels.json").read_text())
    attackers = {s["principal"] for s in labels["scenarios"]}
    alerts = [f for f in report["findings"] if f["severity"] != "info"]
    assert {f["principal"] for f in alerts} & attackers
    page = Path(report["report"])
    assert page.is_file() and "<svg" in page.read_text() and str(page) in run.stderr
    card = json.loads((tmp_path / "models" / CARD_NAME).read_text())
    assert card["model_version"] == report["model_version"]

    # The second run is about the lake and workdir it finds, not about detection: the least
    # traffic the demo takes (a sixth of the events, 3 s less) shows as well that its own
    # lake is replaced (a lake added to would hold the first run's events too).
    again = detect(*args, "--days", "1.5", "--rate", "0.05")
    assert again.returncode == 0, again.stderr  # its own lake: replaced, not refused
    second = json.loads(again.stdout)
    assert second["simulation"]["events"] < report["simulation"]["events"]
    assert second["lake"]["events"] == second["simulation"]["events"]  # not added to the first
    assert (work / "notes.txt").read_text() == "precious"
    assert (work / "sub" / "keep.txt").read_text() == "kept"


def test_demo_refuses_a_lake_it_did_not_make(tmp_path: Path, detect):
    lake = tmp_path / "lake"
    (lake / "events").mkdir(parents=True)
    run = detect("demo", "--lake", str(lake), "--workdir", str(tmp_path / "d"))
    assert run.returncode == 2
    assert "did not make" in run.stderr
    assert (lake / "events").exists()


def test_demo_refuses_too_few_days_to_train_on(tmp_path: Path, detect):
    run = detect("demo", "--lake", str(tmp_path / "lake"), "--days", "1")
    assert run.returncode == 2 and "--days" in run.stderr
