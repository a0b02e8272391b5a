"""The anomaly model: an Isolation Forest over window features, saved without pickle.

Three layers:

- :class:`Backend` is the small scorer seam: ``fit(X)``, ``score(X)`` (higher = more
  unusual), ``to_bytes()`` / ``from_bytes()``. :class:`IForestBackend` is the local
  implementation; a SageMaker Random Cut Forest backend (training job + endpoint) can slot in
  behind the same four calls.
- :class:`AuditIsolationForest` is a scikit-learn estimator around a backend: an optional
  feature transform (``log1p``), the alert threshold calibrated on the training scores, and
  the severity bands.
- :class:`Model` is what ``detect train`` writes and ``detect score`` reads: the fitted
  scorer, threshold and bands, the principals' :class:`~detector.features.Baseline` and the
  model card, in a model directory (local or ``s3://``)::

      MODEL_DIR/model.json                    model card; written last, names the files below
      MODEL_DIR/model-<version>.npz           the forest's trees as plain arrays
      MODEL_DIR/baseline-<version>-*.parquet  per-principal baseline statistics

  ``model.json`` is the commit point: a crash while training leaves the previous card and
  its files in place. Every file's sha256 is in the card and checked on load, so a modified
  file is refused rather than silently used.

Why arrays rather than a serialized estimator: the trees are saved as numeric arrays
(``numpy.savez``, read back with ``allow_pickle=False``), so loading a model instantiates no
object at all, not even from an allow-list of types, and :class:`ArrayForest` scores them
with numpy alone: ``detect score`` never imports scikit-learn (2 s of a run on this machine).
Training still fits scikit-learn's ``IsolationForest``; the conversion is tested to give
the same scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import polars as pl

from detector import __version__
from detector.errors import UsageError
from detector.features.windows import (
    FEATURES,
    FEATURES_VERSION,
    MODEL_INPUTS,
    Baseline,
    model_inputs,
)
from detector.storage import Location

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

CARD_NAME = "model.json"
CARD_FORMAT = 2
DEFAULT_MODEL_DIR = "models"

#: Share of training windows above the threshold. A quiet cluster (30 principals active
#: around the clock: ~4,300 windows a day) then gets about 4 model alerts a day.
DEFAULT_ALERT_RATE = 0.001

#: Baseline tables saved as Parquet next to the model (population stats live in the card).
BASELINE_TABLES = ("principals", "seen", "actions", "tails")

#: Severity bands from least to most severe (all but "info", which the model never uses).
BANDS = ("low", "medium", "high", "critical")


class ModelError(UsageError):
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


def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the average depth of an unsuccessful search in a binary tree of n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


@dataclass
class ArrayForest:
    """A fitted isolation forest as flat arrays, scored with numpy.

    Nodes of all trees are concatenated; ``left``/``right`` are node indices (-1 at leaves),
    ``feature`` the column tested (-1 at leaves), ``leaf_value`` the path length credited to
    a row ending at that node (its depth plus the average depth of the points left in it),
    ``roots`` the first node of each tree. Scores follow scikit-learn's IsolationForest:
    ``2 ** (-mean path length / c(max_samples))``.
    """

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    leaf_value: np.ndarray
    roots: np.ndarray
    max_samples: int
    n_features: int
    depth: int

    @classmethod
    def from_sklearn(cls, forest: IsolationForest) -> ArrayForest:
        parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("left", "right", "feature", "threshold", "leaf_value")
        }
        roots, offset, depth = [], 0, 0
        for est, cols in zip(forest.estimators_, forest.estimators_features_, strict=True):
            t = est.tree_
            internal = t.children_left >= 0
            node_depth = np.zeros(t.node_count, dtype=np.int64)
            for node in range(t.node_count):  # parents come before children
                if internal[node]:
                    node_depth[t.children_left[node]] = node_depth[node] + 1
                    node_depth[t.children_right[node]] = node_depth[node] + 1
            parts["left"].append(np.where(internal, t.children_left + offset, -1))
            parts["right"].append(np.where(internal, t.children_right + offset, -1))
            parts["feature"].append(
                np.where(internal, np.asarray(cols)[np.maximum(t.feature, 0)], -1)
            )
            parts["threshold"].append(t.threshold.astype(np.float64))
            parts["leaf_value"].append(node_depth + average_path_length(t.n_node_samples))
            roots.append(offset)
            offset += t.node_count
            depth = max(depth, int(node_depth.max()))
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        return cls(
            **arrays,
            roots=np.asarray(roots, dtype=np.int64),
            max_samples=int(forest.max_samples_),
            n_features=int(forest.n_features_in_),
            depth=depth,
        )

    def score(self, X: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
        """Anomaly score per row of ``X`` (higher = more unusual)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} columns, got {X.shape}")
        # Trees compare float32 features with float64 thresholds, as scikit-learn does.
        X = X.astype(np.float32).astype(np.float64)
        out = np.empty(X.shape[0])
        denominator = len(self.roots) * float(average_path_length(np.array([self.max_samples]))[0])
        for lo in range(0, X.shape[0], chunk):
            rows = X[lo : lo + chunk]
            node = np.broadcast_to(self.roots[:, None], (len(self.roots), rows.shape[0])).copy()
            index = np.arange(rows.shape[0])[None, :]
            for _ in range(self.depth):
                feat = self.feature[node]
                internal = feat >= 0
                if not internal.any():
                    break
                value = rows[index, np.maximum(feat, 0)]
                step = np.where(value <= self.threshold[node], self.left[node], self.right[node])
                node = np.where(internal, step, node)
            paths = self.leaf_value[node].sum(axis=0)
            out[lo : lo + chunk] = 2.0 ** (-paths / denominator) if denominator else 1.0
        return out

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = np.array([self.max_samples, self.n_features, self.depth], dtype=np.int64)
        np.savez(
            buf,
            left=self.left,
            right=self.right,
            feature=self.feature,
            threshold=self.threshold,
            leaf_value=self.leaf_value,
            roots=self.roots,
            meta=meta,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ArrayForest:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (ValueError, OSError, KeyError) as exc:
            raise ModelError(f"model file is not a forest of arrays ({exc})") from None
        expected = {"left", "right", "feature", "threshold", "leaf_value", "roots", "meta"}
        if set(arrays) != expected:
            raise ModelError(f"model file holds {sorted(arrays)}, not a forest's arrays")
        max_samples, n_features, depth = (int(v) for v in arrays.pop("meta"))
        forest = cls(**arrays, max_samples=max_samples, n_features=n_features, depth=depth)
        n = len(forest.left)
        sizes = {
            len(a) for a in (forest.right, forest.feature, forest.threshold, forest.leaf_value)
        }
        bad = (
            sizes != {n}
            or forest.left.max(initial=-1) >= n
            or forest.right.max(initial=-1) >= n
            or forest.roots.max(initial=-1) >= n
            or forest.feature.max(initial=-1) >= n_features
        )
        if bad:
            raise ModelError("model file's trees are inconsistent; retrain with `detect train`")
        return forest


class IForestBackend:
    """scikit-learn's IsolationForest for fitting, :class:`ArrayForest` for scoring.

    Scores are in (0, 1]; 0.5 is an average row.
    """

    name: ClassVar[str] = "iforest"

    def __init__(
        self, *, n_estimators: int, max_samples: int | float | str, random_state: Any
    ) -> None:
        self.params = {
            "n_estimators": n_estimators,
            "max_samples": max_samples,
            "random_state": random_state,
        }
        self.forest: ArrayForest | None = None

    def fit(self, X: np.ndarray) -> IForestBackend:
        from sklearn.ensemble import IsolationForest

        self.forest = ArrayForest.from_sklearn(IsolationForest(**self.params).fit(X))
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        if self.forest is None:
            raise RuntimeError("backend is not fitted")
        return self.forest.score(X)

    def to_bytes(self) -> bytes:
        if self.forest is None:
            raise RuntimeError("backend is not fitted")
        return self.forest.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> IForestBackend:
        self = cls.__new__(cls)
        self.params = {}
        self.forest = ArrayForest.from_bytes(data)
        return self


BACKENDS: dict[str, type] = {IForestBackend.name: IForestBackend}


def severity_of(scores: np.ndarray, cutoffs: dict[str, float]) -> list[str | None]:
    """Severity band of each anomaly score (``None`` below the lowest band)."""
    bands = [(cutoffs[name], name) for name in reversed(BANDS)]
    return [
        next((name for cut, name in bands if s >= cut), None)
        for s in np.asarray(scores, dtype=float)
    ]


def _offset(threshold: float) -> float:
    return -float(np.nextafter(threshold, -np.inf))


# --------------------------------------------------------------------------- estimator
def transform(X: Any, *, log: bool) -> np.ndarray:
    """The estimator's input transform: ``sign(x) * log1p(|x|)`` when ``log``."""
    X = np.asarray(X, dtype=np.float64)
    return np.sign(X) * np.log1p(np.abs(X)) if log else X


def __getattr__(name: str) -> Any:
    """``AuditIsolationForest`` is defined on first use, so that importing this module (to
    score a saved model) does not import scikit-learn."""
    if name == "AuditIsolationForest":
        return _estimator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_ESTIMATOR: list[type] = []


def _estimator_class() -> type:
    if not _ESTIMATOR:
        _ESTIMATOR.append(_define_estimator())
    return _ESTIMATOR[0]


def _define_estimator() -> type:
    from numbers import Integral, Real

    from sklearn.base import BaseEstimator, OutlierMixin
    from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
    from sklearn.utils.validation import check_is_fitted, validate_data

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

        def fit(self, X: Any, y: Any = None) -> Any:
            """Fit the scorer on ``X`` (rows = windows) and calibrate the threshold."""
            self._validate_params()
            X = validate_data(self, X, dtype=np.float64)
            Xt = transform(X, log=self.log_transform)
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
            return self.scorer_.score(transform(X, log=self.log_transform))

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
            return severity_of(scores, self.severity_cutoffs_)

        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.input_tags.allow_nan = False
            return tags

    AuditIsolationForest.__qualname__ = "AuditIsolationForest"
    AuditIsolationForest.__module__ = __name__
    return AuditIsolationForest


# --------------------------------------------------------------------------- the saved model
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parquet(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd", statistics=False)
    return buf.getvalue()


def library_versions() -> dict[str, str]:
    """Versions of what trained the model (scikit-learn only if it is loaded)."""
    import sys

    import pyarrow

    versions = {
        "python": platform.python_version(),
        "audit-detector": __version__,
        "numpy": np.__version__,
        "polars": pl.__version__,
        "pyarrow": pyarrow.__version__,
    }
    if "sklearn" in sys.modules:
        versions["scikit-learn"] = sys.modules["sklearn"].__version__
    return versions


def fingerprint(X: np.ndarray) -> str:
    """sha256 of the training matrix: two models trained on the same rows share it."""
    return _sha256(np.ascontiguousarray(X, dtype=np.float64).tobytes())


@dataclass
class Model:
    """A fitted scorer with its threshold and bands, baseline and card (see module docstring).

    Scoring needs only these; the scikit-learn estimator that produced them is kept in
    ``estimator`` when the model was trained in this process (``None`` after :meth:`load`).
    """

    scorer: Backend
    backend: str
    params: dict[str, Any]
    threshold: float
    severity_cutoffs: dict[str, float]
    score_stats: dict[str, float]
    baseline: Baseline
    window: timedelta
    #: What it was trained on: range, windows, principals... (``training`` in the card).
    training: dict[str, Any] = field(default_factory=dict)
    #: sha256 of the training matrix (``data_fingerprint`` in the card).
    fingerprint: str = ""
    card: dict[str, Any] = field(default_factory=dict)
    estimator: Any = None

    @classmethod
    def from_estimator(
        cls,
        est: Any,
        *,
        baseline: Baseline,
        window: timedelta,
        training: dict[str, Any],
        fingerprint: str,
    ) -> Model:
        """Wrap a fitted :class:`AuditIsolationForest` and its baseline."""
        return cls(
            scorer=est.scorer_,
            backend=est.backend,
            params=est.get_params(),
            threshold=float(est.threshold_),
            severity_cutoffs={k: float(v) for k, v in est.severity_cutoffs_.items()},
            score_stats={"mean": est.score_mean_, "std": est.score_std_},
            baseline=baseline,
            window=window,
            training=training,
            fingerprint=fingerprint,
            estimator=est,
        )

    @property
    def version(self) -> str:
        return str(self.card.get("model_version", "unsaved"))

    @property
    def trained_until(self) -> datetime | None:
        until = self.training.get("until")
        return datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None

    def matrix(self, features: pl.DataFrame) -> np.ndarray:
        """The estimator's input for feature rows (see :func:`detector.features.model_inputs`)."""
        return model_inputs(features, self.baseline).to_numpy()

    def score(self, features: pl.DataFrame) -> np.ndarray:
        """Anomaly scores of feature rows (higher = more unusual)."""
        if features.height == 0:
            return np.zeros(0)
        X = transform(self.matrix(features), log=bool(self.params.get("log_transform")))
        return self.scorer.score(X)

    def severity(self, scores: np.ndarray) -> list[str | None]:
        """Severity band of each anomaly score (``None`` below the threshold)."""
        return severity_of(scores, self.severity_cutoffs)

    # ----------------------------------------------------------------- save
    def save(self, model_dir: str) -> dict[str, Any]:
        """Write the model files, then the card; returns the card.

        Files of models older than the one this replaces are removed afterwards (the
        replaced one stays, for a reader that loaded its card just before).
        """
        loc = Location.of(model_dir)
        previous = _current_version(loc)
        blob = self.scorer.to_bytes()
        tables = {name: _parquet(getattr(self.baseline, name)) for name in BASELINE_TABLES}
        version = _sha256(blob + b"".join(tables.values()))[:16]
        files = {f"model-{version}.npz": blob}
        files.update({f"baseline-{version}-{name}.parquet": data for name, data in tables.items()})
        for name, data in files.items():
            loc.put_atomic(loc.path(name), data)
        card = {
            "card_format": CARD_FORMAT,
            "model_version": version,
            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "backend": self.backend,
            "params": self.params,
            "features": list(FEATURES),
            "model_inputs": list(MODEL_INPUTS),
            "features_version": FEATURES_VERSION,
            "window_seconds": int(self.window.total_seconds()),
            "threshold": self.threshold,
            "threshold_method": self.params.get("threshold_method"),
            "alert_rate": self.params.get("alert_rate"),
            "severity_cutoffs": self.severity_cutoffs,
            "training_scores": self.score_stats,
            "baseline": {
                "files": {name: f"baseline-{version}-{name}.parquet" for name in BASELINE_TABLES},
                "principals": self.baseline.principals.height,
                "population": self.baseline.population.to_dicts(),
            },
            "files": {name: _sha256(data) for name, data in files.items()},
            "training": self.training,
            "data_fingerprint": self.fingerprint,
            "libraries": library_versions(),
        }
        loc.put_atomic(loc.path(CARD_NAME), (json.dumps(card, indent=2) + "\n").encode())
        self.card = card
        keep = {version, previous}
        for pattern in ("model-*.*", "baseline-*-*.parquet"):
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
        scorer = BACKENDS[card["backend"]].from_bytes(blobs[f"model-{card['model_version']}.npz"])
        if scorer.forest.n_features != len(MODEL_INPUTS):
            raise ModelError(
                f"model in {model_dir} scores {scorer.forest.n_features} inputs, this version "
                f"computes {len(MODEL_INPUTS)}; retrain with `detect train`"
            )
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
            scorer=scorer,
            backend=card["backend"],
            params=dict(card["params"]),
            threshold=float(card["threshold"]),
            severity_cutoffs={k: float(v) for k, v in card["severity_cutoffs"].items()},
            score_stats=dict(card.get("training_scores") or {}),
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
