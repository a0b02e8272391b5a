"""The fitted scorer: trees, input transform, threshold and severity bands, numpy only.

One scoring path for everyone: the scikit-learn estimator (training) keeps a
:class:`Scorer` as ``scorer_`` and delegates to it, and a loaded model
(:class:`detector.model.storage.Model`) holds the same object rebuilt from its files, so
training-time and scoring-time scores cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.model.forest import ArrayForest

#: Severity bands from least to most severe (all but "info", which the model never uses).
BANDS = ("low", "medium", "high", "critical")

#: Width given to the bands when training scores leave no room between threshold and top
#: (a tiny or constant training set): bands stay distinct rather than collapse.
MIN_BAND_SPAN = 0.01


def transform(X: Any, *, log: bool) -> np.ndarray:
    """The estimator's input transform: ``sign(x) * log1p(|x|)`` when ``log``."""
    X = np.asarray(X, dtype=np.float64)
    return np.sign(X) * np.log1p(np.abs(X)) if log else X


def calibrate(
    scores: np.ndarray, *, alert_rate: float, method: str = "budget"
) -> tuple[float, dict[str, float]]:
    """Threshold and severity cut-offs from training anomaly scores.

    ``budget``: the ``1 - alert_rate`` quantile; ``sigma``: mean + 3 standard deviations.
    Bands, by how rare a score was in training: ``low`` from the threshold, ``medium`` from
    the score only one in ``10 / alert_rate`` training windows reached (or, when the
    training set is too small to hold such a score, halfway from the threshold to the top
    training score), ``high`` above every training window, ``critical`` as far again above.
    The four cut-offs are always strictly increasing, so every band can occur.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if method == "sigma":
        threshold = float(scores.mean() + 3.0 * scores.std())
    else:
        threshold = float(np.quantile(scores, 1.0 - alert_rate, method="higher"))
    top = float(scores.max())
    span = top - threshold
    if span < MIN_BAND_SPAN:
        span = MIN_BAND_SPAN
        top = threshold + span
    high = float(np.nextafter(top, np.inf))
    medium = float(np.quantile(scores, 1.0 - alert_rate / 10.0, method="higher"))
    if not threshold < medium < top or scores.size * alert_rate / 10.0 < 1.0:
        medium = threshold + span / 2.0
    cutoffs = {"low": threshold, "medium": medium, "high": high, "critical": high + span}
    return threshold, cutoffs


def severity_of(scores: np.ndarray, cutoffs: dict[str, float]) -> list[str | None]:
    """Severity band of each anomaly score (``None`` below the lowest band)."""
    edges = np.array([cutoffs[b] for b in BANDS])
    idx = np.searchsorted(edges, np.asarray(scores, dtype=np.float64), side="right") - 1
    return [BANDS[i] if i >= 0 else None for i in idx]


@dataclass(frozen=True)
class Scorer:
    """A fitted forest with what turns its scores into alerts.

    ``anomaly_score`` is higher for more unusual rows (about 0.5 for an average one); rows
    at or above ``threshold`` are alerts, in the band of ``severity_cutoffs`` they reach.
    """

    forest: ArrayForest
    log_transform: bool
    threshold: float
    severity_cutoffs: dict[str, float]
    score_mean: float
    score_std: float

    @property
    def n_features(self) -> int:
        return self.forest.n_features

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly score per row (higher = more unusual)."""
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return np.zeros(0)
        return self.forest.score(transform(X, log=self.log_transform))

    def severity(self, scores: np.ndarray) -> list[str | None]:
        """Severity band of each anomaly score (``None`` below the threshold)."""
        return severity_of(scores, self.severity_cutoffs)

    def trees_bytes(self, *, record: bytes | None = None) -> bytes:
        """The trees as a ``.npz`` file (the rest of the scorer goes in the model card,
        and ``record``, the card's own record, beside the trees)."""
        return self.forest.to_bytes(record=record)

    @classmethod
    def fit(
        cls,
        forest: ArrayForest,
        X: np.ndarray,
        *,
        log_transform: bool,
        alert_rate: float,
        method: str = "budget",
    ) -> Scorer:
        """Calibrate ``forest`` on its (untransformed) training rows ``X``."""
        scores = forest.score(transform(X, log=log_transform))
        threshold, cutoffs = calibrate(scores, alert_rate=alert_rate, method=method)
        return cls(
            forest=forest,
            log_transform=log_transform,
            threshold=threshold,
            severity_cutoffs=cutoffs,
            score_mean=float(scores.mean()),
            score_std=float(scores.std()),
        )
