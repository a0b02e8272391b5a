"""The anomaly estimator: a scikit-learn ``OutlierMixin`` around an isolation forest.

Training only: this module imports scikit-learn (seconds), so scoring code never imports it.
What the estimator learns is a :class:`~detector.model.scorer.Scorer` (``scorer_``): the
trees as numpy arrays, the input transform, the threshold and the severity bands. Every
scoring method delegates to it, and a saved model holds the same object, so there is one
scoring path.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.ensemble import IsolationForest
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from detector.model.forest import ArrayForest
from detector.model.scorer import Scorer, transform
from detector.model.storage import DEFAULT_ALERT_RATE


def _offset(threshold: float) -> float:
    return -float(np.nextafter(threshold, -np.inf))


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
    random_state : int, RandomState instance or None, default=None
        Seed of the forest; the same seed and data give the same model.

    Attributes
    ----------
    scorer_ : Scorer
        The fitted trees (as arrays), transform, threshold and bands; what a model saves.
    threshold_ : float
        Anomaly score at and above which a row is an alert.
    offset_ : float
        Just above ``-threshold_``, so that ``decision_function = score_samples - offset_`` is
        negative exactly for alerts (``anomaly_score >= threshold_``), as scikit-learn's
        outlier convention wants.
    score_mean_, score_std_ : float
        Mean and standard deviation of the training anomaly scores.
    severity_cutoffs_ : dict of str to float
        Lowest anomaly score of each severity band (low = ``threshold_``), strictly
        increasing (see :func:`detector.model.scorer.calibrate`).
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    sklearn.ensemble.IsolationForest : fits the trees.

    Notes
    -----
    ``score_samples`` follows scikit-learn (lower = more abnormal); :meth:`anomaly_score` is
    its negation (higher = more unusual), which is what findings report.

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
        random_state: Any = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.alert_rate = alert_rate
        self.threshold_method = threshold_method
        self.log_transform = log_transform
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> AuditIsolationForest:
        """Fit the trees on ``X`` (rows = windows) and calibrate the threshold."""
        self._validate_params()
        X = validate_data(self, X, dtype=np.float64)
        max_samples = self.max_samples
        if isinstance(max_samples, Integral):
            max_samples = min(int(max_samples), X.shape[0])
        # Trees are built on every core (threads; the tree builder releases the GIL).
        # Each tree's seed is drawn before the work is split, so the forest is the same.
        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=max_samples,
            random_state=self.random_state,
            n_jobs=-1,
        ).fit(transform(X, log=self.log_transform))
        self.scorer_ = Scorer.fit(
            ArrayForest.from_sklearn(forest),
            X,
            log_transform=self.log_transform,
            alert_rate=self.alert_rate,
            method=self.threshold_method,
        )
        self.threshold_ = self.scorer_.threshold
        self.offset_ = _offset(self.threshold_)
        self.score_mean_ = self.scorer_.score_mean
        self.score_std_ = self.scorer_.score_std
        self.severity_cutoffs_ = dict(self.scorer_.severity_cutoffs)
        return self

    def anomaly_score(self, X: Any) -> np.ndarray:
        """Anomaly score per row: higher = more unusual."""
        check_is_fitted(self)
        return self.scorer_.anomaly_score(validate_data(self, X, dtype=np.float64, reset=False))

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
        return self.scorer_.severity(scores)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
