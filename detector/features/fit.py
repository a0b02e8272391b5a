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

from detector.features.baseline import Baseline, build_baseline, seen_values
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


class _FoldHistory:
    """Per fold, what :func:`build_baseline` reads, computed in one pass over the rows.

    The baseline of "every fold but k" is then a union (values seen), a sum (windows,
    hour-of-day histograms, action counts) or a group-by over a few numeric columns
    (medians), equal to ``build_baseline`` of those rows. Rebuilding it from the rows for
    each of 14 folds exploded every window's value lists 14 times: a 25-cluster, 14-day
    retrain took 231 s and 14.6 GB on the Ray head, where this takes a fraction of both.
    """

    _PKEYS = ("cluster", "principal")

    def __init__(self, w: pl.DataFrame) -> None:
        pkeys = list(self._PKEYS)
        self.seen = seen_values(w, by=("_fold",))
        hours = pl.col("window_start").dt.hour().cast(pl.Int64)
        self.windows = w.group_by(*pkeys, "_fold").agg(
            pl.len().alias("windows"),
            *[(hours == h).sum().alias(f"_h{h}") for h in range(24)],
        )
        self.numeric = w.select(*pkeys, "_fold", *RELATIVE_BASES)
        acts = (
            w.select("principal_kind", "_fold", pl.col("_actions").alias("value"))
            .explode("value")
            .drop_nulls("value")
        )
        self.actions = pl.concat(
            [
                acts.group_by("principal_kind", pl.col("value").alias("action"), "_fold").agg(
                    pl.len().alias("windows")
                ),
                w.group_by("principal_kind", "_fold").agg(
                    pl.lit("*").alias("action"), pl.len().alias("windows")
                ),
            ],
            how="diagonal",
        )

    def excluding(self, fold: object) -> Baseline:
        """``build_baseline`` of the rows outside ``fold``, without touching the rows."""
        pkeys = list(self._PKEYS)
        others = pl.col("_fold") != fold
        seen = (
            self.seen.filter(others)
            .drop("_fold")
            .unique()
            .sort("cluster", "principal", "dimension", "value")
        )
        numeric = self.numeric.filter(others)
        counts = (
            self.windows.filter(others)
            .group_by(pkeys)
            .agg(pl.col("windows").sum(), *[pl.col(f"_h{h}").sum() for h in range(24)])
            .select(
                *pkeys,
                pl.col("windows").cast(pl.UInt32),
                pl.concat_list([pl.col(f"_h{h}").cast(pl.UInt32) for h in range(24)]).alias(
                    "hour_counts"
                ),
            )
        )
        medians = numeric.group_by(pkeys).agg(
            *[pl.col(c).median().cast(pl.Float64).alias(f"median_{c}") for c in RELATIVE_BASES]
        )
        principals = counts.join(medians, on=pkeys, how="inner").sort(pkeys)
        actions = (
            self.actions.filter(others)
            .group_by("principal_kind", "action")
            .agg(pl.col("windows").sum().cast(pl.UInt32))
            .sort("principal_kind", "action")
        )
        population = pl.DataFrame(
            {
                "feature": list(RELATIVE_BASES),
                "median": [float(numeric[c].median() or 0.0) for c in RELATIVE_BASES],
                "p99": [float(numeric[c].quantile(0.99, "nearest") or 0.0) for c in RELATIVE_BASES],
            }
        )
        return Baseline(seen=seen, principals=principals, actions=actions, population=population)


def cross_fit_features(windows: pl.DataFrame, *, fold: timedelta) -> pl.DataFrame:
    """Features of training rows, each fold scored against a baseline of the other folds.

    This is exactly what scoring does (a new day against the days before), through the same
    :func:`finish_features`, so the forest learns the distribution it will score. With a
    single fold the rows are featurized against their own range. The baselines of the
    other folds come from :class:`_FoldHistory`, built once.
    """
    w = _with_fold(windows, fold)
    folds = w["_fold"].unique().sort().to_list()
    if len(folds) < 2:
        return finish_features(windows, build_baseline(windows))
    history = _FoldHistory(w)
    parts = []
    for k in folds:
        inside = w.filter(pl.col("_fold") == k).drop("_fold")
        parts.append(finish_features(inside, history.excluding(k)))
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
