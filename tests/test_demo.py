"""`detect demo`: the whole loop on generated data, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from detector.model.storage import CARD_NAME


def test_demo_runs_the_loop_and_catches_the_planted_attacks(tmp_path: Path, detect):
    """Run as a user runs it, with its default folders; then `detect --help`'s example
    lines as written (`detect score --lake ./lake --since 1h` after the demo failed: its
    model is in .demo/models; found by review)."""
    lake, work = tmp_path / "lake", tmp_path / ".demo"
    (work / "sub").mkdir(parents=True)  # a folder in use: --workdir . or ~ once emptied it
    (work / "notes.txt").write_text("precious")
    (work / "sub" / "keep.txt").write_text("kept")
    args = ("demo", "--format", "json")
    run = detect(*args, "--days", "2", "--rate", "0.3", cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ingest"]["events_written"] == report["simulation"]["events"] > 10_000
    assert report["lake"]["events"] == report["simulation"]["events"]
    labels = json.loads((work / "labels.json").read_text())
    attackers = {s["principal"] for s in labels["scenarios"]}
    alerts = [f for f in report["findings"] if f["severity"] != "info"]
    assert {f["principal"] for f in alerts} & attackers
    page = Path(report["report"])
    if not page.is_absolute():
        page = tmp_path / page
    assert page.is_file() and "<svg" in page.read_text() and report["report"] in run.stderr
    card = json.loads((work / "models" / CARD_NAME).read_text())
    assert card["model_version"] == report["model_version"]

    lines = detect("--help").stdout.split("Example:")[1].splitlines()
    examples = [line.split() for line in lines if line.strip().startswith("detect ")]
    assert examples[0] == ["detect", "demo"]
    for words in examples[1:]:
        if "--help" not in words:
            ran = detect(*words[1:], cwd=str(tmp_path))
            assert ran.returncode == 0, (words, ran.stderr)

    # The second run is about the lake and workdir it finds, not about detection: the least
    # traffic the demo takes (a sixth of the events, 3 s less) shows as well that its own
    # lake is replaced (a lake added to would hold the first run's events too).
    again = detect(*args, "--days", "1.5", "--rate", "0.05", cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr  # its own lake: replaced, not refused
    second = json.loads(again.stdout)
    assert second["simulation"]["events"] < report["simulation"]["events"]
    assert second["lake"]["events"] == second["simulation"]["events"]  # not added to the first
    assert (work / "notes.txt").read_text() == "precious"
    assert (work / "sub" / "keep.txt").read_text() == "kept"
    assert lake.is_dir()


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


def test_demo_never_replaces_files_it_did_not_write(tmp_path: Path, detect):
    """The demo's model went to `models`, production's default model folder, and replaced a
    trained model there; `--workdir /var/log/kubernetes` deleted the API server's
    audit.log; `--lake s3://b/x` made a local folder `s3:/b/x` (found by review). Each is
    refused before anything is written."""
    prod = tmp_path / "models"
    prod.mkdir()
    (prod / CARD_NAME).write_text('{"model_version": "production"}')
    logs = tmp_path / "kubernetes"
    logs.mkdir()
    (logs / "audit.log").write_text('{"kind":"Event"}\n')
    lake = str(tmp_path / "lake")
    cases = [
        (("--workdir", str(logs)), "--workdir", "holds audit.log that the demo did not write"),
        (("--model-dir", str(prod)), "--model-dir", "holds model.json that the demo did not"),
        (("--model-dir", ""), "--model-dir", "must name a folder"),
    ]
    for extra, flag, said in cases:
        run = detect("demo", "--lake", lake, "--workdir", str(tmp_path / "w"), *extra)
        assert run.returncode == 2 and flag in run.stderr and said in run.stderr, run.stderr
    # a labels.json that is no file of the simulator (here endless) makes no folder its own
    (logs / "labels.json").symlink_to("/dev/zero")
    run = detect("demo", "--lake", lake, "--workdir", str(logs))
    assert run.returncode == 2 and "did not write" in run.stderr, run.stderr
    # the output of `detect simulate`, kept for `detect evaluate`, is no folder of the demo's
    sim = tmp_path / "sim"
    simulated = detect("simulate", "--out", str(sim), "--days", "0.05", "--rate", "0.2")
    assert simulated.returncode == 0, simulated.stderr
    kept = (sim / "audit.log").read_bytes()
    run = detect("demo", "--lake", lake, "--workdir", str(sim))
    assert run.returncode == 2 and "holds audit.log, labels.json" in run.stderr, run.stderr
    assert (sim / "audit.log").read_bytes() == kept
    run = detect("demo", "--lake", "s3://bucket/x", "--workdir", str(tmp_path / "w"))
    assert run.returncode == 2 and "not a URI" in run.stderr
    assert (prod / CARD_NAME).read_text() == '{"model_version": "production"}'
    assert (logs / "audit.log").read_text() == '{"kind":"Event"}\n'
    assert not (tmp_path / "lake").exists() and not (tmp_path / "w").exists()
    assert not Path("s3:").exists()
