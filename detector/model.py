"""The anomaly model: an Isolation Forest over window features, saved without pickle.

Three layers:

- :class:`Backend` is the small scorer seam: ``fit(X)``, ``score(X)`` (higher = more
  unusual), ``to_bytes()`` / ``from_bytes()``. :class:`IForestBackend` is the local
  implementation; a SageMaker Random Cut Forest backend (training job + endpoint) can slot in
  behind the same four calls.
- :class:`AuditIsolationForest` is a scikit-learn estimator around a backend: the feature
  transform (``log1p``), the alert threshold calibrated on the training scores, and the
  severity bands.
- :class:`Model` is what ``detect train`` writes and ``detect score`` reads: the estimator,
  the principals' :class:`~detector.features.Baseline` and the model card, in a model
  directory (local or ``s3://``)::

      MODEL_DIR/model.json                    model card; written last, names the files below
      MODEL_DIR/model-<version>.skops         the forest (skops, loaded with trusted types only)
      MODEL_DIR/baseline-<version>-*.parquet  per-principal baseline statistics

  ``model.json`` is the commit point: a crash while training leaves the previous card and
  its files in place. Every file's sha256 is in the card and checked on load, so a modified
  file is refused rather than unpickled or silently used.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from numbers import Integral, Real
from typing import Any, ClassVar, Protocol

import numpy as np
import polars as pl
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from detector import __version__
from detector.features import FEATURES, FEATURES_VERSION, MODEL_INPUTS, Baseline, model_inputs
from detector.findings_schema import SEVERITIES
from detector.storage import Location

CARD_NAME = "model.json"
CARD_FORMAT = 1
DEFAULT_MODEL_DIR = "models"

#: Share of training windows above the threshold. A quiet cluster (30 principals active
#: around the clock: ~4,300 windows a day) then gets about 4 model alerts a day.
DEFAULT_ALERT_RATE = 0.001

#: The only non-default types a model file may contain. skops refuses anything else, so a
#: crafted file cannot make ``load`` instantiate arbitrary classes.
TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)

#: Baseline tables saved as Parquet next to the model (population stats live in the card).
BASELINE_TABLES = ("principals", "seen", "actions", "tails")


class ModelError(Exception):
    """A model cannot be used; the message says why in one line and what to do."""


class ModelNotFound(ModelError):
    pass


# --------------------------------------------------------------------------- backends
class Backend(Protocol):
    """What the estimator needs from an anomaly scorer."""

    name: ClassVar[str]

    def fit(self, X: np.ndarray) -> Backend: ...

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row, higher = more unusual."""
        ...

    def to_bytes(self) -> bytes: ...


class IForestBackend:
    """scikit-learn's IsolationForest; scores are in (0, 1], 0.5 is an average point."""

    name: ClassVar[str] = "iforest"

    def __init__(
        self, *, n_estimators: int, max_samples: int | float | str, random_state: Any
    ) -> None:
        self.forest = IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, random_state=random_state
        )

    def fit(self, X: np.ndarray) -> IForestBackend:
        self.forest.fit(X)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(X)

    def to_bytes(self) -> bytes:
        import skops.io as sio

        return sio.dumps(self.forest)

    @classmethod
    def from_bytes(cls, data: bytes) -> IForestBackend:
        import skops.io as sio

        untrusted = set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ModelError(
                f"model file contains types outside the allow-list ({', '.join(sorted(untrusted))})"
                "; refusing to load it"
            )
        forest = sio.loads(data, trusted=list(TRUSTED_TYPES))
        if not isinstance(forest, IsolationForest):
            raise ModelError(f"model file holds a {type(forest).__name__}, not an IsolationForest")
        self = cls.__new__(cls)
        self.forest = forest
        return self


BACKENDS: dict[str, type] = {IForestBackend.name: IForestBackend}


# --------------------------------------------------------------------------- estimator
class AuditIsolationForest(OutlierMixin, BaseEstimator):
    """Isolation-forest scorer for per-principal window features.

    Parameters
    ----------
    n_estimators : int, default=200
        Number of trees.
    max_samples : "auto", int or float, default=1024
        Rows drawn to build each tree (at most the number of rows; ``"auto"``: 256). More
        than scikit-learn's 256 because benign traffic has many mid-sized clusters (one
        per kind of principal and activity) that a small sample leaves looking isolated.
    alert_rate : float, default=0.001
        Share of training rows whose score is above ``threshold_`` (the alert budget).
    threshold_method : {"budget", "sigma"}, default="budget"
        ``"budget"``: the ``1 - alert_rate`` quantile of the training scores.
        ``"sigma"``: mean + 3 standard deviations of the training scores (the Random Cut
        Forest convention); ``alert_rate`` is then unused.
    log_transform : bool, default=True
        Fit and score on ``sign(x) * log1p(|x|)``: counts span orders of magnitude and the
        forest splits uniformly between a feature's min and max.
    backend : {"iforest"}, default="iforest"
        The scorer behind the estimator (see :class:`Backend`).
    random_state : int, RandomState instance or None, default=None
        Seed of the forest; the same seed and data give the same model.

    Attributes
    ----------
    scorer_ : Backend
        The fitted scorer.
    threshold_ : float
        Anomaly score at and above which a row is an alert.
    offset_ : float
        Just above ``-threshold_``, so that ``decision_function = score_samples - offset_`` is
        negative exactly for alerts (``anomaly_score >= threshold_``), as scikit-learn's
        outlier convention wants.
    score_mean_, score_std_ : float
        Mean and standard deviation of the training anomaly scores.
    severity_cutoffs_ : dict of str to float
        Lowest anomaly score of each severity band (low = ``threshold_``).
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    sklearn.ensemble.IsolationForest : the default backend.

    Notes
    -----
    ``score_samples`` follows scikit-learn (lower = more abnormal); :meth:`anomaly_score` is
    its negation (higher = more unusual), which is what findings report. Severity bands come
    from the training scores: ``low`` from the threshold, ``medium`` from the score only one
    in ``10 / alert_rate`` training windows reached, ``high`` above every training window and
    ``critical`` as far again above it as the highest training window was above the
    threshold.

    Examples
    --------
    >>> X = np.r_[np.zeros((50, 2)), [[9.0, 9.0]]]
    >>> est = AuditIsolationForest(alert_rate=0.02, random_state=0).fit(X)
    >>> est.predict([[0.0, 0.0], [9.0, 9.0]])
    array([ 1, -1])
    """

    _parameter_constraints: ClassVar[dict] = {
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "max_samples": [
            StrOptions({"auto"}),
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="right"),
        ],
        "alert_rate": [Interval(Real, 0, 0.5, closed="neither")],
        "threshold_method": [StrOptions({"budget", "sigma"})],
        "log_transform": ["boolean"],
        "backend": [StrOptions(set(BACKENDS))],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        n_estimators: int = 200,
        max_samples: int | float | str = 1024,
        alert_rate: float = DEFAULT_ALERT_RATE,
        threshold_method: str = "budget",
        log_transform: bool = True,
        backend: str = "iforest",
        random_state: Any = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.alert_rate = alert_rate
        self.threshold_method = threshold_method
        self.log_transform = log_transform
        self.backend = backend
        self.random_state = random_state

    def _transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return np.sign(X) * np.log1p(np.abs(X)) if self.log_transform else X

    def fit(self, X: Any, y: Any = None) -> AuditIsolationForest:
        """Fit the scorer on ``X`` (rows = windows) and calibrate the threshold."""
        self._validate_params()
        X = validate_data(self, X, dtype=np.float64)
        Xt = self._transform(X)
        max_samples = self.max_samples
        if isinstance(max_samples, Integral):
            max_samples = min(int(max_samples), X.shape[0])
        self.scorer_ = BACKENDS[self.backend](
            n_estimators=self.n_estimators,
            max_samples=max_samples,
            random_state=self.random_state,
        ).fit(Xt)
        self._calibrate(self.scorer_.score(Xt))
        return self

    def _calibrate(self, scores: np.ndarray) -> None:
        self.score_mean_ = float(scores.mean())
        self.score_std_ = float(scores.std())
        if self.threshold_method == "sigma":
            threshold = self.score_mean_ + 3.0 * self.score_std_
        else:
            threshold = float(np.quantile(scores, 1.0 - self.alert_rate, method="higher"))
        self.threshold_ = threshold
        self.offset_ = _offset(threshold)
        # Bands by how rare a score was in training: low = the alert budget, medium = ten
        # times rarer, high = above every training window, critical = as far again above.
        top = max(float(scores.max()), threshold)
        medium = float(np.quantile(scores, 1.0 - self.alert_rate / 10.0, method="higher"))
        medium = min(max(medium, threshold), top)
        self.severity_cutoffs_ = {
            "low": threshold,
            "medium": medium,
            "high": np.nextafter(top, np.inf),
            "critical": top + max(top - threshold, 0.01),
        }

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Anomaly score per row: higher = more unusual."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.scorer_.score(self._transform(X))

    def score_samples(self, X: Any) -> np.ndarray:
        """Opposite of the anomaly score (scikit-learn convention: lower = more abnormal)."""
        return -self.anomaly_score(X)

    def decision_function(self, X: Any) -> np.ndarray:
        """Negative for alerts: ``score_samples(X) - offset_``."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """-1 for alerts (score at or above the threshold), 1 otherwise."""
        return np.where(self.anomaly_score(X) >= self.threshold_, -1, 1)

    def severity(self, scores: np.ndarray) -> list[str | None]:
        """Severity band of each anomaly score; ``None`` below the threshold."""
        check_is_fitted(self)
        bands = [(self.severity_cutoffs_[s], s) for s in ("critical", "high", "medium", "low")]
        out: list[str | None] = []
        for s in np.asarray(scores, dtype=float):
            out.append(next((name for cut, name in bands if s >= cut), None))
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _offset(threshold: float) -> float:
    return -float(np.nextafter(threshold, -np.inf))


# --------------------------------------------------------------------------- the saved model
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    return buf.getvalue()


def library_versions() -> dict[str, str]:
    import numpy
    import pyarrow
    import sklearn
    import skops

    return {
        "python": platform.python_version(),
        "audit-detector": __version__,
        "scikit-learn": sklearn.__version__,
        "skops": skops.__version__,
        "numpy": numpy.__version__,
        "polars": pl.__version__,
        "pyarrow": pyarrow.__version__,
    }


def fingerprint(X: np.ndarray) -> str:
    """sha256 of the training matrix: two models trained on the same rows share it."""
    return _sha256(np.ascontiguousarray(X, dtype=np.float64).tobytes())


@dataclass
class Model:
    """A fitted estimator, its baseline and its card (see the module docstring)."""

    estimator: AuditIsolationForest
    baseline: Baseline
    window: timedelta
    #: What it was trained on: range, windows, principals... (``training`` in the card).
    training: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the training matrix (``data_fingerprint`` in the card).
    fingerprint: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.card.get("model_version", "unsaved"))

    @property
    def trained_until(self) -> datetime | None:
        until = self.training.get("until")
        return datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None

    @property
    def threshold(self) -> float:
        return float(self.estimator.threshold_)

    def matrix(self, features: pl.DataFrame) -> np.ndarray:
        """The estimator's input for feature rows (see :func:`detector.features.model_inputs`)."""
        return model_inputs(features, self.baseline).to_numpy()

    def score(self, features: pl.DataFrame) -> np.ndarray:
        """Anomaly scores of feature rows (higher = more unusual)."""
        if features.height == 0:
            return np.zeros(0)
        return self.estimator.anomaly_score(self.matrix(features))

    # ----------------------------------------------------------------- save
    def save(self, model_dir: str) -> dict[str, Any]:
        """Write the model files, then the card; returns the card.

        Files of models older than the one this replaces are removed afterwards (the
        replaced one stays, for a reader that loaded its card just before).
        """
        loc = Location.of(model_dir)
        previous = _current_version(loc)
        blob = self.estimator.scorer_.to_bytes()
        tables = {name: _parquet(getattr(self.baseline, name)) for name in BASELINE_TABLES}
        version = _sha256(blob + b"".join(tables.values()))[:16]
        files = {f"model-{version}.skops": blob}
        files.update({f"baseline-{version}-{name}.parquet": data for name, data in tables.items()})
        for name, data in files.items():
            loc.put_atomic(loc.path(name), data)
        est = self.estimator
        card = {
            "card_format": CARD_FORMAT,
            "model_version": version,
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "backend": est.backend,
            "params": est.get_params(),
            "features": list(FEATURES),
            "model_inputs": list(MODEL_INPUTS),
            "features_version": FEATURES_VERSION,
            "window_seconds": int(self.window.total_seconds()),
            "threshold": est.threshold_,
            "threshold_method": est.threshold_method,
            "alert_rate": est.alert_rate,
            "severity_cutoffs": est.severity_cutoffs_,
            "training_scores": {"mean": est.score_mean_, "std": est.score_std_},
            "baseline": {
                "files": {name: f"baseline-{version}-{name}.parquet" for name in BASELINE_TABLES},
                "principals": self.baseline.principals.height,
                "population": self.baseline.population.to_dicts(),
            },
            "files": {name: _sha256(data) for name, data in files.items()},
            "trusted_types": list(TRUSTED_TYPES),
            "training": self.training,
            "data_fingerprint": self.fingerprint,
            "libraries": library_versions(),
        }
        loc.put_atomic(loc.path(CARD_NAME), (json.dumps(card, indent=2) + "\n").encode())
        self.card = card
        keep = {version, previous}
        for pattern in ("model-*.skops", "baseline-*-*.parquet"):
            for path in loc.glob(loc.path(pattern)):
                if path.rsplit("/", 1)[1].split("-")[1].split(".")[0] not in keep:
                    loc.fs.rm(path)
        return card

    # ----------------------------------------------------------------- load
    @classmethod
    def load(cls, model_dir: str) -> Model:
        """Read and verify a saved model; raises :class:`ModelError` with a one-line reason."""
        loc = Location.of(model_dir)
        card_path = loc.path(CARD_NAME)
        if not loc.exists(card_path):
            raise ModelNotFound(f"no model in {model_dir}")
        try:
            card = json.loads(_read(loc, card_path))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelError(f"model card {card_path} is not valid JSON: {exc}") from None
        _check_card(card, model_dir)
        blobs: dict[str, bytes] = {}
        for name, digest in card["files"].items():
            path = loc.path(name)
            if not loc.exists(path):
                raise ModelError(
                    f"model file {name} named by {CARD_NAME} is missing in {model_dir}"
                )
            data = _read(loc, path)
            if _sha256(data) != digest:
                raise ModelError(
                    f"model file {name} does not match the sha256 in {CARD_NAME} (modified or "
                    "corrupt); refusing to load it: retrain with `detect train`"
                )
            blobs[name] = data
        version = card["model_version"]
        scorer = BACKENDS[card["backend"]].from_bytes(blobs[f"model-{version}.skops"])
        params = card["params"]
        est = AuditIsolationForest(**params)
        est.scorer_ = scorer
        est.n_features_in_ = len(card["model_inputs"])
        est.threshold_ = float(card["threshold"])
        est.offset_ = _offset(est.threshold_)
        est.score_mean_ = float(card["training_scores"]["mean"])
        est.score_std_ = float(card["training_scores"]["std"])
        est.severity_cutoffs_ = {k: float(v) for k, v in card["severity_cutoffs"].items()}
        base = card["baseline"]
        baseline = Baseline(
            **{
                name: pl.read_parquet(io.BytesIO(blobs[base["files"][name]]))
                for name in BASELINE_TABLES
            },
            population=pl.DataFrame(
                base["population"],
                schema={"feature": pl.String, "median": pl.Float64, "p99": pl.Float64},
            ),
        )
        return cls(
            estimator=est,
            baseline=baseline,
            window=timedelta(seconds=int(card["window_seconds"])),
            training=dict(card.get("training") or {}),
            fingerprint=str(card.get("data_fingerprint", "")),
            card=card,
        )


def _current_version(loc: Location) -> str | None:
    try:
        return json.loads(_read(loc, loc.path(CARD_NAME))).get("model_version")
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def _read(loc: Location, path: str) -> bytes:
    with loc.fs.open(path, "rb") as fh:
        return fh.read()


def _check_card(card: dict[str, Any], model_dir: str) -> None:
    required = ("card_format", "model_version", "features", "files", "params", "backend")
    missing = [k for k in required if k not in card]
    if missing:
        raise ModelError(f"model card in {model_dir} lacks {', '.join(missing)}; retrain")
    if card["card_format"] != CARD_FORMAT:
        raise ModelError(
            f"model card format {card['card_format']} is not the supported {CARD_FORMAT}; retrain"
        )
    if card["backend"] not in BACKENDS:
        raise ModelError(f"model backend {card['backend']!r} is not available here")
    same = (
        list(card["features"]) == list(FEATURES)
        and list(card.get("model_inputs") or ()) == list(MODEL_INPUTS)
        and card.get("features_version") == FEATURES_VERSION
    )
    if not same:
        theirs = set(card["features"]) | set(card.get("model_inputs") or ())
        ours = set(FEATURES) | set(MODEL_INPUTS)
        detail = []
        if ours - theirs:
            detail.append(f"missing {', '.join(sorted(ours - theirs)[:3])}")
        if theirs - ours:
            detail.append(f"unknown {', '.join(sorted(theirs - ours)[:3])}")
        if not detail:
            detail.append(
                f"features version {card.get('features_version')} vs {FEATURES_VERSION}"
                if card.get("features_version") != FEATURES_VERSION
                else "different order"
            )
        raise ModelError(
            f"model in {model_dir} was trained on other features than this version computes "
            f"({'; '.join(detail)}); retrain with `detect train`"
        )


def severity_rank(name: str) -> int:
    return SEVERITIES.index(name)
