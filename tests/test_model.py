"""The estimator, saving without pickle, refusing bad model files, and explanations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from sklearn.utils.estimator_checks import check_estimator

from detector.detect.train import fit_model
from detector.events.normalize import normalize_lines
from detector import features as F
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
from detector.simulate.traffic import simulate

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
    d = tmp_path / "models"
    X = np.random.default_rng(0).random((64, len(F.MODEL_INPUTS)))
    versions = []
    for seed in (1, 2, 3):
        est = AuditIsolationForest(n_estimators=5, random_state=seed, log_transform=False)
        model = Model(scorer=est.fit(X).scorer_, baseline=trained.baseline, window=trained.window)
        versions.append(model.save(str(d)).version)
    left = {p.name.split("-")[1].split(".")[0] for p in d.glob("*-*")}
    assert left == set(versions[1:])
    assert Model.load(str(d)).version == versions[-1]
