"""Fitting a baseline on training window rows, and their cross-fitted features.

Training rows are *cross-fitted*: the training range is cut into folds (a UTC day for
ranges of three days or more) and each fold is featurized against a baseline of the other
folds, through the same :func:`~detector.features.compare.finish_features`, exactly as
scoring judges a new day against the days before. (Against the whole training range
novelty would be constant zero on the training rows, and a constant feature is invisible
to an isolation forest.)
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from detector.features.baseline import Baseline, build_baseline
from detector.features.catalogue import FEATURES, KEYS, RELATIVE_BASES
from detector.features.compare import finish_features
from detector.features.surprise import tail_counts


def fold_length(start: datetime, end: datetime) -> timedelta:
    """Fold of the cross-fitting of training rows: a day, or a third of ranges under 3 days."""
    span = end - start
    if span >= timedelta(days=3):
        return timedelta(days=1)
    return max(timedelta(hours=1), timedelta(hours=int(span.total_seconds() // 3 // 3600)))


def _with_fold(windows: pl.DataFrame, fold: timedelta) -> pl.DataFrame:
    every = f"{int(fold.total_seconds())}s"
    return windows.with_columns(pl.col("window_start").dt.truncate(every).alias("_fold"))


def cross_fit_features(windows: pl.DataFrame, *, fold: timedelta) -> pl.DataFrame:
    """Features of training rows, each fold scored against a baseline of the other folds.

    This is exactly what scoring does (a new day against the days before), through the same
    :func:`finish_features`, so the forest learns the distribution it will score. With a
    single fold the rows are featurized against their own range.
    """
    w = _with_fold(windows, fold)
    folds = w["_fold"].unique().sort().to_list()
    if len(folds) < 2:
        return finish_features(windows, build_baseline(windows))
    parts = []
    for k in folds:
        inside = w.filter(pl.col("_fold") == k).drop("_fold")
        outside = w.filter(pl.col("_fold") != k).drop("_fold")
        parts.append(finish_features(inside, build_baseline(outside)))
    return pl.concat(parts).sort(KEYS)


def fit_baseline(
    windows: pl.DataFrame, *, fold: timedelta = timedelta(days=1)
) -> tuple[Baseline, pl.DataFrame]:
    """Learn the :class:`Baseline` from training window rows; also return their features.

    The features are cross-fitted (:func:`cross_fit_features`); the baseline saved for
    scoring is built from all rows and carries each principal's median and 99th percentile
    of every feature (what explanations call "usual") and the population's.
    """
    pkeys = ["cluster", "principal"]
    features = cross_fit_features(windows, fold=fold)
    history = build_baseline(windows)
    stats = features.group_by(pkeys).agg(
        *[pl.col(f).median().alias(f"median_{f}") for f in FEATURES],
        *[pl.col(f).quantile(0.99, "nearest").alias(f"p99_{f}") for f in FEATURES],
    )
    own = [f"median_{c}" for c in RELATIVE_BASES if c not in FEATURES]
    principals = (
        history.principals.select(*pkeys, "windows", "hour_counts", *own)
        .join(stats, on=pkeys, how="left")
        .sort(pkeys)
    )
    population = pl.concat(
        [
            pl.DataFrame(
                {
                    "feature": list(FEATURES),
                    "median": [float(features[f].median() or 0.0) for f in FEATURES],
                    "p99": [float(features[f].quantile(0.99, "nearest") or 0.0) for f in FEATURES],
                }
            ),
            history.population.filter(~pl.col("feature").is_in(FEATURES)),
        ]
    )
    baseline = Baseline(
        seen=history.seen,
        principals=principals,
        actions=history.actions,
        population=population,
        tails=tail_counts(features),
    )
    return baseline, features
