"""The estimator, saving without pickle, refusing bad model files, and explanations."""

from __future__ import annotations

import io
import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from sklearn.utils.estimator_checks import check_estimator

from detector import features as F
from detector.detect.train import fit_model
from detector.events.normalize import normalize_lines
from detector.model import explain
from detector.model.estimator import AuditIsolationForest
from detector.model.forest import ArrayForest
from detector.model.storage import (
    CARD_NAME,
    DEFAULT_ALERT_RATE,
    DEFAULT_MODEL_DIR,
    Model,
    ModelError,
    ModelNotFound,
)
from detector.simulate import simulate

START = datetime(2026, 11, 1, tzinfo=UTC)
CUT = START + timedelta(days=2)
END = CUT + timedelta(hours=4)


@pytest.fixture(scope="module")
def windows() -> pl.DataFrame:
    """Two days and six hours of simulated benign traffic, as window rows."""
    sim = simulate(start=START, end=END, rate=0.2, seed=11, scenarios=())
    lines = list(sim.iter_lines())
    result = normalize_lines(
        pa.array(lines, pa.binary()),
        positions=pa.array([str(i) for i in range(len(lines))]),
        source="sim",
        cluster="demo",
    )
    return F.window_counts(result.events.lazy()).collect()


@pytest.fixture(scope="module")
def trained(windows) -> Model:
    train = windows.filter(pl.col("window_start") < CUT)
    return fit_model(train, window=F.DEFAULT_WINDOW, start=START, end=CUT, seed=0)


@pytest.fixture(scope="module")
def scored(windows, trained) -> pl.DataFrame:
    return F.finish_features(windows.filter(pl.col("window_start") >= CUT), trained.baseline)


#: scikit-learn checks that need things we do not install (pandas, the array API flag).
OPTIONAL_CHECKS = {"check_array_api_input", "check_classifier_data_not_an_array"}


def test_scikit_learn_estimator_checks():
    results = check_estimator(AuditIsolationForest(n_estimators=10, random_state=0), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed
    assert skipped <= OPTIONAL_CHECKS
    assert sum(r["status"] == "passed" for r in results) >= 40


def test_threshold_follows_the_alert_budget_and_predict_agrees():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    est = AuditIsolationForest(alert_rate=0.01, random_state=0).fit(X)
    scores = est.anomaly_score(X)
    assert 0.005 <= (scores >= est.threshold_).mean() <= 0.015
    assert ((est.predict(X) == -1) == (scores >= est.threshold_)).all()
    assert ((est.decision_function(X) < 0) == (est.predict(X) == -1)).all()
    cut = est.severity_cutoffs_
    assert cut["low"] < cut["medium"] < cut["high"] < cut["critical"]
    probes = [cut["low"] - 1e-6, cut["low"], cut["medium"], cut["high"], cut["critical"] + 1]
    assert est.severity(probes) == [None, "low", "medium", "high", "critical"]
    sigma = AuditIsolationForest(threshold_method="sigma", random_state=0).fit(X)
    assert sigma.threshold_ == pytest.approx(sigma.score_mean_ + 3 * sigma.score_std_)


def test_same_seed_same_model_other_seed_other_model(windows, trained, scored):
    train = windows.filter(pl.col("window_start") < CUT)
    again = fit_model(train, window=F.DEFAULT_WINDOW, start=START, end=CUT, seed=0)
    other = fit_model(train, window=F.DEFAULT_WINDOW, start=START, end=CUT, seed=8)
    assert again.fingerprint == trained.fingerprint == other.fingerprint  # same rows
    assert np.array_equal(again.score(scored), trained.score(scored))
    assert again.threshold == trained.threshold
    assert not np.array_equal(other.score(scored), trained.score(scored))


def test_save_load_round_trip(tmp_path, trained, scored):
    card = trained.save(str(tmp_path / "models")).card
    loaded = Model.load(str(tmp_path / "models"))
    assert np.array_equal(loaded.score(scored), trained.score(scored))
    assert loaded.threshold == trained.threshold
    assert loaded.window == F.DEFAULT_WINDOW
    assert loaded.version == card["model_version"]
    for key in (
        "features",
        "model_inputs",
        "window_seconds",
        "training",
        "libraries",
        "threshold",
        "files",
        "baseline",
        "created_at",
        "data_fingerprint",
    ):
        assert key in card, key
    on_disk = json.loads((tmp_path / "models" / CARD_NAME).read_text())
    assert on_disk["files"] == card["files"]
    assert [p.suffix for p in (tmp_path / "models").glob("model-*")] == [".npz"]


def test_missing_model_is_its_own_error(tmp_path):
    with pytest.raises(ModelNotFound):
        Model.load(str(tmp_path / "nothing-here"))


def _saved(tmp_path: Path, model: Model) -> Path:
    d = tmp_path / "models"
    model.save(str(d))
    return d


def test_a_modified_model_file_is_refused(tmp_path, trained):
    d = _saved(tmp_path, trained)
    blob = next(d.glob("model-*.npz"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256") as err:
        Model.load(str(d))
    assert "\n" not in str(err.value)


def _resigned(d: Path, name: str, data: bytes) -> None:
    """Replace a model file and fix its sha256 in the card: a writer of the model store
    (the checksum guards against accidents, not against who can write the folder)."""
    import hashlib

    (d / name).write_bytes(data)
    card = json.loads((d / CARD_NAME).read_text())
    card["files"][name] = hashlib.sha256(data).hexdigest()
    (d / CARD_NAME).write_text(json.dumps(card))


def _bytes_entry(blob: bytes) -> bytes:
    """The forest with its ``left`` array replaced by an entry numpy reads as raw bytes."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(blob)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            if item.filename == "left.npy":
                dst.writestr("left", b"hello")
            else:
                dst.writestr(item, src.read(item))
    return out.getvalue()


def _huge_entry() -> bytes:
    """An npz whose one array's header declares 74 GiB."""
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (10_000_000_000,)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("left.npy", npy.getvalue() + b"\0" * 64)
    return out.getvalue()


@pytest.mark.parametrize(
    "forest",
    [
        pytest.param(lambda blob: blob[: len(blob) // 2], id="cut zip"),
        pytest.param(_bytes_entry, id="an entry of bytes"),
        pytest.param(lambda blob: _huge_entry(), id="74 GiB declared"),
    ],
)
def test_a_forest_file_that_is_no_forest_is_a_model_error_not_a_crash(tmp_path, trained, forest):
    """BadZipFile, an entry that is not an array and a header declaring 74 GiB got past
    the model's checks as unexpected errors (exit 3), and killed a running `detect watch`,
    whose reload keeps the model in use only on a ModelError."""
    d = _saved(tmp_path, trained)
    blob = next(d.glob("model-*.npz"))
    _resigned(d, blob.name, forest(blob.read_bytes()))
    with pytest.raises(ModelError, match="retrain") as err:
        Model.load(str(d))
    assert "\n" not in str(err.value)


def test_a_baseline_column_of_the_wrong_type_is_refused(tmp_path, trained):
    """Only the columns' names were checked: an action column of numbers failed deep in
    scoring with a multi-line polars error."""
    actions = trained.baseline.actions
    bad = actions.with_columns(pl.col("action").cast(pl.Categorical).to_physical())
    d = _saved(tmp_path, _with_table(trained, actions=bad))  # saved so: its digests agree
    with pytest.raises(ModelError, match="action of the wrong type"):
        Model.load(str(d))


def test_a_modified_baseline_is_refused(tmp_path, trained):
    d = _saved(tmp_path, trained)
    table = next(d.glob("baseline-*-seen.parquet"))
    table.write_bytes(table.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="does not match the sha256"):
        Model.load(str(d))


def test_a_model_for_other_features_is_refused(tmp_path, trained):
    d = _saved(tmp_path, trained)
    card = json.loads((d / CARD_NAME).read_text())
    card["features"] = [f for f in card["features"] if f != "secret_reads"] + ["old_feature"]
    (d / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="other features") as err:
        Model.load(str(d))
    assert "secret_reads" in str(err.value) and "old_feature" in str(err.value)


def test_a_pickled_object_in_the_model_file_is_refused_even_with_a_matching_hash(tmp_path, trained):
    import hashlib
    import io

    d = _saved(tmp_path, trained)
    blob = next(d.glob("model-*.npz"))
    buf = io.BytesIO()
    np.savez(buf, left=np.array([print], dtype=object))  # loading it would need pickle
    blob.write_bytes(buf.getvalue())
    card = json.loads((d / CARD_NAME).read_text())
    card["files"][blob.name] = hashlib.sha256(buf.getvalue()).hexdigest()
    (d / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="not a forest of arrays"):
        Model.load(str(d))


def test_array_forest_scores_exactly_like_scikit_learn():
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(3)
    X = np.r_[rng.normal(size=(3000, 4)), rng.normal(6, 1, size=(20, 4))]
    forest = IsolationForest(
        n_estimators=50, max_samples=512, max_features=0.75, random_state=0
    ).fit(X)
    arrays = ArrayForest.from_sklearn(forest)
    Y = np.r_[X[:500], rng.normal(3, 3, size=(500, 4))]
    assert np.allclose(arrays.score(Y), -forest.score_samples(Y), rtol=0, atol=1e-12)
    again = ArrayForest.from_bytes(arrays.to_bytes())
    assert np.array_equal(again.score(Y), arrays.score(Y))


def test_trees_built_on_every_core_are_the_trees_built_on_one():
    """Training builds trees on all cores; a model must not depend on the machine."""
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(5)
    X = np.r_[rng.normal(size=(2000, 3)), rng.normal(5, 1, size=(10, 3))]
    ours = AuditIsolationForest(n_estimators=40, log_transform=False, random_state=7).fit(X)
    one_core = IsolationForest(n_estimators=40, max_samples=1024, random_state=7, n_jobs=1)
    expected = ArrayForest.from_sklearn(one_core.fit(X))
    assert ours.scorer_.forest.to_bytes() == expected.to_bytes()


def test_scoring_a_saved_model_does_not_import_scikit_learn(tmp_path, trained, scored):
    import subprocess
    import sys

    d = _saved(tmp_path, trained)
    code = (
        "import sys, polars as pl; from detector.model.storage import Model; "
        f"m = Model.load({str(d)!r}); print(m.score(pl.read_parquet(sys.argv[1])).size); "
        "print('sklearn' in sys.modules)"
    )
    scored.write_parquet(tmp_path / "rows.parquet")
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "rows.parquet")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(scored.height), "False"]


def test_model_store_on_s3(s3_bucket, trained, scored):
    uri = f"s3://{s3_bucket}/models/prod"
    trained.save(uri)
    loaded = Model.load(uri)
    assert np.array_equal(loaded.score(scored), trained.score(scored))


def test_explanation_puts_the_planted_feature_first(windows, trained):
    test = windows.filter(pl.col("window_start") >= CUT)
    stats = trained.baseline.principals
    quiet = stats.filter((pl.col("median_secret_reads") == 0) & (pl.col("windows") > 100)).sort(
        "windows", descending=True
    )["principal"][0]
    row = test.filter(pl.col("principal") == quiet).head(1)
    planted = row.with_columns(
        pl.lit(9, pl.UInt32).alias("secret_namespaces"), pl.lit(9, pl.UInt32).alias("secret_reads")
    )
    feats = F.finish_features(planted, trained.baseline)
    items = explain.explain(feats, trained.baseline)[0]
    assert items[0]["name"] in ("secret_namespaces", "secret_reads")
    assert {"secret_namespaces", "secret_reads"} <= {i["name"] for i in items}
    assert 3 <= len(items) <= 5 or all(i["surprise"] > 0 for i in items)
    text = [explain.sentence(i) for i in items]
    assert any(
        t.startswith("read or listed secrets in 9 namespaces; usual for this principal: 0;")
        and "99th percentile of all principals:" in t
        for t in text
    ), text
    # the untouched window scores lower than the planted one
    normal = F.finish_features(row, trained.baseline)
    assert trained.score(feats)[0] > trained.score(normal)[0]


def test_command_defaults_match_the_library():
    from detector.cli.commands import train

    assert train.DEFAULT_ALERT_RATE == DEFAULT_ALERT_RATE
    assert train.DEFAULT_MODEL_DIR == DEFAULT_MODEL_DIR


def test_retraining_keeps_the_current_and_previous_model_files_only(tmp_path, trained):
    """Files of older models go, once they are older than PRUNE_AFTER: a younger one may
    be another training's, still writing its files before its card (two trainings into
    one folder left a card naming files the other had removed)."""
    import os
    import time

    from detector.model.storage import PRUNE_AFTER

    d = tmp_path / "models"
    X = np.random.default_rng(0).random((64, len(F.MODEL_INPUTS)))

    def model(seed: int) -> Model:
        est = AuditIsolationForest(n_estimators=5, random_state=seed, log_transform=False)
        return Model(scorer=est.fit(X).scorer_, baseline=trained.baseline, window=trained.window)

    def versions_left() -> set[str]:
        return {p.name.split("-")[1].split(".")[0] for p in d.glob("*-*")}

    versions = [model(seed).save(str(d)).version for seed in (1, 2, 3)]
    assert versions_left() == set(versions)  # the first one's files are too young to go
    old = time.time() - PRUNE_AFTER.total_seconds() - 60
    for path in d.glob("*-*"):
        os.utime(path, (old, old))
    # another training's files, written but not yet named by its card: kept
    other = model(9)
    blob = other.scorer.trees_bytes()
    (d / "model-00000000000000ff.npz").write_bytes(blob)
    versions.append(model(4).save(str(d)).version)
    assert versions_left() == {*versions[2:], "00000000000000ff"}
    assert Model.load(str(d)).version == versions[-1]


def test_a_folder_named_like_a_pattern_prunes_only_itself(tmp_path, trained):
    """``--model-dir 'models-[ab]'`` was a glob: saving there pruned the model files of
    the sibling folder models-a, whose card then named files that were gone."""
    import os
    import time

    from detector.model.storage import PRUNE_AFTER

    X = np.random.default_rng(0).random((64, len(F.MODEL_INPUTS)))

    def model(seed: int) -> Model:
        est = AuditIsolationForest(n_estimators=5, random_state=seed, log_transform=False)
        return Model(scorer=est.fit(X).scorer_, baseline=trained.baseline, window=trained.window)

    sibling, odd = tmp_path / "models-a", tmp_path / "models-[ab]"
    saved = model(1).save(str(sibling))
    old = time.time() - PRUNE_AFTER.total_seconds() - 60
    for path in sibling.iterdir():
        os.utime(path, (old, old))
    for seed in (2, 3, 4):
        model(seed).save(str(odd))
    assert Model.load(str(sibling)).version == saved.version
    assert Model.load(str(odd)).version != saved.version


# --------------------------------------------------------------------------- files we do not own
def test_saving_never_touches_files_it_did_not_write(tmp_path, trained):
    d = tmp_path / "models"
    d.mkdir()
    theirs = {
        "notes.txt": b"keep me",
        "model-notes.md": b"ours? no",
        "baseline-2024-report.parquet": b"someone else's",
        "model-0123456789abcdef.npz.bak": b"a backup",
    }
    for name, data in theirs.items():
        (d / name).write_bytes(data)
    (d / "sub").mkdir()
    (d / "sub" / "model-x.npz").write_bytes(b"nested")
    for seed in (1, 2, 3):
        replace_seed = dict(trained.training, seed=seed)
        Model(
            scorer=trained.scorer,
            baseline=trained.baseline,
            window=trained.window,
            training=replace_seed,
            fingerprint=str(seed),
        ).save(str(d))
    for name, data in theirs.items():
        assert (d / name).read_bytes() == data, name
    assert (d / "sub" / "model-x.npz").read_bytes() == b"nested"
    assert not list(d.glob(".tmp-*"))


def test_a_temporary_file_a_killed_save_left_is_removed_once_an_hour_old(tmp_path, trained):
    """A `detect train` killed mid-write (SIGKILL, an evicted pod) leaves its temporary
    file in the model folder: the next save removes it once it is an hour old, and leaves a
    younger one (another save may be writing it) and files named otherwise alone."""
    import os
    import time

    from detector.userfiles import STALE_TEMP_SECONDS

    d = tmp_path / "models"
    d.mkdir()
    stale, fresh = d / f".tmp-{'a' * 32}", d / f".tmp-{'b' * 32}"
    theirs = d / ".tmp-notes"
    for path in (stale, fresh, theirs):
        path.write_bytes(b"half a model")
    old = time.time() - STALE_TEMP_SECONDS - 60
    for path in (stale, theirs):
        os.utime(path, (old, old))
    trained.save(str(d))
    assert not stale.exists() and fresh.exists() and theirs.exists()
    assert Model.load(str(d)).version == trained.save(str(d)).version


def _card(d: Path) -> dict:
    return json.loads((d / CARD_NAME).read_text())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda c: c.update(threshold=1e9), "threshold"),
        (lambda c: c.update(threshold="high"), "threshold"),
        (lambda c: c.update(threshold=None), "threshold"),
        (lambda c: c.pop("threshold"), "lacks threshold"),
        (lambda c: c.pop("severity_cutoffs"), "lacks severity_cutoffs"),
        (lambda c: c["severity_cutoffs"].pop("medium"), "severity_cutoffs"),
        (lambda c: c["severity_cutoffs"].update(medium=c["severity_cutoffs"]["high"]), "rise"),
        (lambda c: c["severity_cutoffs"].update(high="x"), "not a number"),
        (lambda c: c.update(window_seconds="600"), "window_seconds"),
        (lambda c: c.update(window_seconds=True), "window_seconds"),
        (lambda c: c.update(files=["model.npz"]), "files"),
        (lambda c: c.update(model_version="../../etc/passwd"), "model_version"),
        (lambda c: c.update(params=[1, 2]), "params"),
        (lambda c: c["baseline"].update(population="all"), "population"),
        (lambda c: c["files"].update({"../outside.npz": "0" * 64}), "not one of this model's"),
        (lambda c: c.update(training="yesterday"), "training"),
        (lambda c: c.update(log_transform="false"), "log_transform"),  # bool("false") is True
    ],
)
def test_a_malformed_card_is_refused_with_one_line(tmp_path, trained, change, why):
    d = _saved(tmp_path, trained)
    card = _card(d)
    change(card)
    (d / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=why) as err:
        Model.load(str(d))
    assert "\n" not in str(err.value)


def test_a_card_that_is_not_an_object_is_refused(tmp_path, trained):
    d = _saved(tmp_path, trained)
    (d / CARD_NAME).write_text("[1, 2, 3]")
    with pytest.raises(ModelError, match="not a JSON object"):
        Model.load(str(d))


def test_cli_score_with_a_malformed_card_exits_2_with_a_clear_error(tmp_path, trained):
    from typer.testing import CliRunner

    from detector.cli import app

    d = _saved(tmp_path, trained)
    card = _card(d)
    card["severity_cutoffs"] = "everything is critical"
    (d / CARD_NAME).write_text(json.dumps(card))
    res = CliRunner().invoke(
        app, ["score", "--lake", str(tmp_path / "lake"), "--since", "1h", "--model-dir", str(d)]
    )
    assert res.exit_code == 2, res.output
    assert "severity_cutoffs" in res.stderr and "unexpected" not in res.stderr


# --------------------------------------------------------------------------- card integrity
def _raised(c: dict, to: float) -> None:
    """A threshold of ``to`` with bands rising from it: a card ``check_card`` accepts."""
    c["threshold"] = to
    c["severity_cutoffs"] = {"low": to, "medium": to + 0.01, "high": to + 0.02, "critical": 1.0}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda c: _raised(c, 0.95), "severity_cutoffs.low, severity_cutoffs.medium"),
        (lambda c: c["severity_cutoffs"].update(critical=0.999), "severity_cutoffs.critical"),
        (lambda c: c.update(window_seconds=3600), "(window_seconds changed"),
        (lambda c: c.update(log_transform=not c["log_transform"]), "(log_transform changed"),
        (lambda c: c.update(alert_rate=0.5), "(alert_rate changed"),
        (lambda c: c.update(threshold_method="sigma"), "(threshold_method changed"),
        (lambda c: c["params"].update(log_transform=True), "(params.log_transform changed"),
        (lambda c: c["training"].update(until="2030-01-01T00:00:00Z"), "(training.until"),
        (lambda c: c["training"].update(clusters=["prod"]), "(training.clusters changed"),
        (lambda c: c["training_scores"].update(std=1.0), "(training_scores.std changed"),
        (lambda c: c["baseline"]["population"][0].update(p99=1e6), "(baseline.population"),
        (lambda c: c.update(features_version=c["features_version"]), None),  # no change
        (lambda c: c.pop("alert_rate"), "(alert_rate changed"),
        (lambda c: c.update(extra_rule="flag nothing"), "(extra_rule changed"),
        (lambda c: c.update(card_format=2), "(card_format changed"),  # a claim to be old
    ],
)
def test_a_card_edited_by_hand_is_refused(tmp_path, trained, scored, change, why):
    """Every key but the files' names is recorded inside the forest file: a card that a
    person or a tool edited (a threshold raised so nothing is flagged, another window) was
    loaded and used as is; now it is refused with one line naming what changed."""
    d = _saved(tmp_path, trained)
    card = _card(d)
    change(card)
    (d / CARD_NAME).write_text(json.dumps(card, indent=4))  # layout is not content
    if why is None:
        assert np.array_equal(Model.load(str(d)).score(scored), trained.score(scored))
        return
    with pytest.raises(ModelError, match="edited by hand or tampered") as err:
        Model.load(str(d))
    assert why in str(err.value) and "\n" not in str(err.value)
    assert "retrain with `detect train`" in str(err.value)


def test_a_card_pointing_a_baseline_table_at_another_tables_file_is_refused(tmp_path, trained):
    d = _saved(tmp_path, trained)
    card = _card(d)
    files = card["baseline"]["files"]
    files["seen"], files["actions"] = files["actions"], files["seen"]
    (d / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="another table's file"):
        Model.load(str(d))


def test_cli_score_with_an_edited_card_exits_2_naming_the_key(tmp_path, trained):
    from typer.testing import CliRunner

    from detector.cli import app

    d = _saved(tmp_path, trained)
    card = _card(d)
    _raised(card, 0.9)
    (d / CARD_NAME).write_text(json.dumps(card))
    res = CliRunner().invoke(
        app, ["score", "--lake", str(tmp_path / "lake"), "--since", "1h", "--model-dir", str(d)]
    )
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert "threshold changed" in err and "edited by hand" in err and "\n" not in err


def _as_format_2(d: Path) -> None:
    """Turn a saved model into what versions before the card record wrote: the forest file
    without its ``card`` entry, its sha256 in a card of format 2."""
    import hashlib

    blob = next(d.glob("model-*.npz"))
    with np.load(blob, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "card"}
    assert set(arrays) == {"left", "right", "feature", "threshold", "leaf_value", "roots", "meta"}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob.write_bytes(buf.getvalue())
    card = _card(d)
    card["card_format"] = 2
    card["files"][blob.name] = hashlib.sha256(buf.getvalue()).hexdigest()
    (d / CARD_NAME).write_text(json.dumps(card, indent=2))


def test_a_model_saved_before_the_card_record_loads_with_a_warning(
    tmp_path, trained, scored, caplog
):
    import logging

    d = _saved(tmp_path, trained)
    _as_format_2(d)
    with caplog.at_level(logging.WARNING, logger="detector.model.storage"):
        loaded = Model.load(str(d))
    assert np.array_equal(loaded.score(scored), trained.score(scored))
    assert loaded.threshold == trained.threshold
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "card format 2" in warning and "unchecked" in warning and "threshold" in warning


def test_a_current_card_whose_forest_file_lost_its_record_is_refused(tmp_path, trained):
    """Stripping the record (and re-signing the file) does not turn the check off: the
    card says format 3, which has one."""
    d = _saved(tmp_path, trained)
    _as_format_2(d)
    card = _card(d)
    card["card_format"] = 3
    (d / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="holds no record of it"):
        Model.load(str(d))


def test_the_card_record_is_plain_bytes_in_the_forest_file(tmp_path, trained):
    """The record is a uint8 array read with allow_pickle=False, and it is the card."""
    d = _saved(tmp_path, trained)
    with np.load(next(d.glob("model-*.npz")), allow_pickle=False) as z:
        record = z["card"]
    assert record.dtype == np.uint8 and record.ndim == 1
    saved = json.loads(record.tobytes())
    card = _card(d)
    assert saved["threshold"] == card["threshold"] == trained.threshold
    assert saved["window_seconds"] == card["window_seconds"]
    assert "files" not in saved and "model_version" not in saved


def _tamper_trees(d: Path, edit) -> None:
    """Edit the forest's arrays and re-sign them in the card (an attacker who can write
    the model directory can do both)."""
    import hashlib
    import io

    blob = next(d.glob("model-*.npz"))
    with np.load(blob, allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob.write_bytes(buf.getvalue())
    card = _card(d)
    card["files"][blob.name] = hashlib.sha256(buf.getvalue()).hexdigest()
    (d / CARD_NAME).write_text(json.dumps(card))


def _first_split(a: dict) -> int:
    return int(np.flatnonzero(a["left"] >= 0)[1])  # an internal node below the root


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        # a child pointing back at its tree's root: a cycle
        (lambda a: a["left"].__setitem__(_first_split(a), 0), "before its parent"),
        (lambda a: a["right"].__setitem__(0, len(a["left"]) + 5), "outside its tree"),
        (lambda a: a["left"].__setitem__(0, a["roots"][1]), "outside its tree"),
        (lambda a: a["feature"].__setitem__(0, 99), "feature out of range"),
        (lambda a: a["threshold"].__setitem__(0, np.nan), "non-finite"),
        (lambda a: a["meta"].__setitem__(2, 10**12), None),
        (lambda a: a.__setitem__("roots", a["roots"][::-1].copy()), "roots"),
    ],
)
def test_broken_trees_are_refused_on_load(tmp_path, trained, scored, edit, why):
    d = _saved(tmp_path, trained)
    _tamper_trees(d, edit)
    if why is None:  # a declared depth is not trusted: the real one is computed
        loaded = Model.load(str(d))
        assert np.array_equal(loaded.score(scored), trained.score(scored))
        return
    with pytest.raises(ModelError, match=why) as err:
        Model.load(str(d))
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- reasons and bands
def test_severity_bands_are_distinct_even_when_training_is_small():
    from detector.model.scorer import BANDS, calibrate

    rng = np.random.default_rng(1)
    for n in (60, 2000, 50_000):
        scores = rng.uniform(0.3, 0.7, size=n)
        threshold, cuts = calibrate(scores, alert_rate=0.001)
        values = [cuts[b] for b in BANDS]
        assert values[0] == threshold
        assert all(a < b for a, b in itertools.pairwise(values)), (n, cuts)
    same = np.full(100, 0.5)  # nothing to tell apart: the bands still differ
    _, cuts = calibrate(same, alert_rate=0.01)
    assert len({cuts[b] for b in BANDS}) == 4


def test_sentences_for_a_principal_with_no_history_do_not_claim_a_usual():
    item = {
        "name": "requests_vs_usual",
        "value": 37.0,
        "baseline": 3.0,
        "population": 80.0,
        "surprise": 2.0,
        "known": False,
        "detail": None,
    }
    text = explain.sentence(item)
    assert "its usual" not in text and "37" in text and "median principal" in text
    assert "its usual" not in explain.title([item])
    rare = {**item, "name": "rare_action", "value": 2.0, "detail": "create serviceaccounts/token"}
    assert "log10" not in explain.sentence(rare) and "1 in 100" in explain.sentence(rare)
    hour = {**item, "name": "hour_rarity", "value": 1.0, "detail": "03:00 UTC"}
    assert "rarely" not in explain.sentence(hour)  # no history of its hours: say so
    wide = {**item, "name": "cluster_list_watch", "value": 2.0, "known": True}
    assert "all namespaces" not in explain.sentence(wide)


def test_a_novelty_reason_says_each_thing_once():
    """ "came from 2 source IPs never seen for this principal (new: a; usual: b); usual for
    this principal: 0": "usual" meant the addresses and the count in one line; and with no
    history, "never seen for this principal" sat beside "no history for this principal"
    (found by review)."""
    known = {
        "name": "new_source_ips",
        "value": 1.0,
        "baseline": 0.0,
        "population": 1.0,
        "surprise": 2.0,
        "known": True,
        "detail": "new: 203.0.113.9; seen before: 10.0.1.5",
    }
    assert explain.sentence(known) == (
        "came from 1 source IP never seen for this principal (new: 203.0.113.9; seen before: "
        "10.0.1.5); usual for this principal: 0; 99th percentile of all principals: 1"
    )
    cold = {**known, "value": 2.0, "known": False, "detail": "new: 203.0.113.9, 10.0.1.5"}
    assert explain.sentence(cold) == (
        "came from 2 source IPs (203.0.113.9, 10.0.1.5); no history for this principal "
        "(median of all principals: 0); 99th percentile of all principals: 1"
    )


def test_attack_mapping_comes_from_the_strongest_mapped_feature():
    items = [
        {"name": "requests", "surprise": 3.0},
        {"name": "secret_namespaces", "surprise": 2.0},
    ]
    assert explain.attack(items) == ("Discovery", "T1613")
    assert explain.attack(items[1:]) == ("Credential Access", "T1552.007")
    assert explain.attack([{"name": "status_5xx"}]) == (None, None)
    assert set(F.ATTACK) <= set(F.FEATURES)


def test_a_baseline_table_without_its_columns_is_refused(tmp_path, trained):
    d = _saved(tmp_path, _with_table(trained, seen=pl.DataFrame({"x": [1]})))
    with pytest.raises(ModelError, match=r"seen .* lacks cluster"):
        Model.load(str(d))


def test_a_baseline_table_rewritten_with_its_digest_in_the_card_is_refused(tmp_path, trained):
    """A table edited (a principal's counts raised until its findings vanish) and its new
    sha256 put in the card loaded silently, under the same version (found by review): the
    tables' digests are recorded inside the forest file, which the card cannot change."""
    d = _saved(tmp_path, trained)
    table = next(d.glob("baseline-*-seen.parquet"))
    edited = pl.concat([pl.read_parquet(table), pl.read_parquet(table).head(1)])
    buf = io.BytesIO()
    edited.write_parquet(buf)
    _resigned(d, table.name, buf.getvalue())
    with pytest.raises(ModelError, match=r"seen .* is not the one the model was trained with"):
        Model.load(str(d))
    card = _card(d)
    card["baseline"]["sha256"]["seen"] = card["files"][table.name]  # the record says otherwise
    (d / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"baseline\.sha256\.seen changed"):
        Model.load(str(d))


def _with_table(model: Model, **tables: pl.DataFrame) -> Model:
    """``model`` with some baseline tables replaced, as a training that made them would."""
    import dataclasses

    return dataclasses.replace(model, baseline=dataclasses.replace(model.baseline, **tables))


def test_named_new_values_are_capped_in_count_and_length():
    """A client-chosen user agent of any length cannot blow up a stored reason."""
    from detector.model.explain import _detail

    huge = "a" + "x" * 10_000
    ctx = {"cluster": "c", "principal": "p", "_new_user_agents": [huge, "b", "c", "d"]}
    text = _detail("new_user_agents", ctx, {("c", "p", "user_agents"): ["usual/1"]})
    assert text is not None and len(text) < 400
    assert text.startswith("new: axxx") and ", b, c ...; seen before: usual/1" in text


def test_fold_baselines_from_one_pass_equal_rebuilding_them_from_the_rows(windows):
    """Cross-fitting builds each fold's "other folds" baseline from per-fold sums and
    unions; it must be exactly ``build_baseline`` of those rows, on realistic traffic."""
    from polars.testing import assert_frame_equal

    from detector.features.fit import _FoldHistory, _with_fold

    w = _with_fold(windows, timedelta(hours=6))
    history = _FoldHistory(w)
    folds = w["_fold"].unique().sort().to_list()
    assert len(folds) >= 8
    for k in folds:
        rebuilt = F.build_baseline(w.filter(pl.col("_fold") != k).drop("_fold"))
        summed = history.excluding(k)
        for part in ("seen", "principals", "actions", "population"):
            assert_frame_equal(getattr(summed, part), getattr(rebuilt, part))


def test_forest_inputs_computed_a_slice_at_a_time_are_the_inputs_of_all_rows(windows, monkeypatch):
    from polars.testing import assert_frame_equal

    from detector.features import surprise
    from detector.features.fit import fit_baseline

    fold = timedelta(hours=6)
    baseline, rows = fit_baseline(windows, fold=fold)
    whole = surprise.model_inputs(rows, baseline, loo_fold=fold)
    # A prime chunk size, so the slices fall anywhere: nine whole ones and a part. (It was
    # 97, a hundred slices: 1.5 s of per-slice cost for no boundary of another kind.)
    monkeypatch.setattr(surprise, "INPUT_CHUNK_ROWS", 997)
    assert rows.height > 3 * 997 and rows.height % 997
    assert_frame_equal(surprise.model_inputs(rows, baseline, loo_fold=fold), whole)
