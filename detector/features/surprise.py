"""The surprise model: how rarely a principal, its role and everyone reached a value.

An isolation forest isolates a point by random splits on random features; with ~40 features
an anomaly in one of them is rarely split on. So each feature value becomes a *surprise*
(``-log10 P(X >= x)`` for the principal, smoothed towards its IAM role or kind and the
population, see :func:`feature_surprises`) and the forest gets, per family of features, the
largest surprise (:func:`model_inputs`). docs/features.md explains the method.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from detector.features.baseline import Baseline
from detector.features.catalogue import FAMILY_OF, FEATURES, MODEL_INPUTS

#: Weight (in windows) of the parent's and the population's distribution in a principal's.
PRIOR_WEIGHT = 5.0
_LEVELS = ("own", "parent", "pop")


def value_bin(x: pl.Expr) -> pl.Expr:
    """Eighth-of-an-octave bins of a non-negative value: 0 only for 0, then 1, 2, ..."""
    return (
        pl.when(x > 0)
        .then(pl.max_horizontal(pl.lit(1), (8.0 * (x.clip(0.0) + 1.0).log(2)).floor()))
        .otherwise(0)
        .cast(pl.Int32)
    )


def _level_keys() -> dict[str, pl.Expr]:
    return {
        "own": pl.concat_str([pl.col("cluster"), pl.col("principal")], separator="\x1f"),
        "parent": pl.col("parent").fill_null("-"),
        "pop": pl.lit("*"),
    }


def _long(features: pl.DataFrame, fold: timedelta | None = None) -> pl.DataFrame:
    """One row per (window row, feature) with a non-zero value, keyed for every level."""
    keys = _level_keys()
    extra = []
    if fold is not None:
        every = f"{int(fold.total_seconds())}s"
        extra = [pl.col("window_start").dt.truncate(every).alias("_fold")]
    per_row = features.select(*[e.alias(f"key_{lvl}") for lvl, e in keys.items()], *extra)
    # Unpivot the numbers alone and attach the row's keys to the non-zero values only:
    # unpivoting with the key strings copied them to every (row, feature), most of them
    # zeros dropped right after (~500 MB at the peak of a 14-day training for 100k rows).
    long = (
        features.select(*FEATURES)
        .with_row_index("row")
        .unpivot(index=["row"], on=list(FEATURES), variable_name="feature", value_name="x")
        .filter(pl.col("x") > 0)
    )
    at = long["row"]
    return long.select(
        "row",
        *[per_row[c].gather(at) for c in per_row.columns],
        "feature",
        "x",
        value_bin(pl.col("x")).alias("bin"),
    )


def tail_counts(features: pl.DataFrame, *, fold: timedelta | None = None) -> pl.DataFrame:
    """The ``tails`` table of :class:`Baseline` (per ``_fold`` too when ``fold`` is given)."""
    long = _long(features, fold)
    keys = _level_keys()
    by_fold = ["_fold"] if fold is not None else []
    rows = features.select(
        *[e.alias(f"key_{lvl}") for lvl, e in keys.items()],
        *(
            [pl.col("window_start").dt.truncate(f"{int(fold.total_seconds())}s").alias("_fold")]
            if fold is not None
            else []
        ),
    )
    parts = []
    for lvl in _LEVELS:
        k = f"key_{lvl}"
        hist = (
            long.group_by(k, *by_fold, "feature", "bin")
            .agg(pl.len().alias("n"))
            .sort(k, *by_fold, "feature", "bin", descending=[False] * (2 + len(by_fold)) + [True])
            .with_columns(pl.col("n").cum_sum().over(k, *by_fold, "feature").alias("n_ge"))
            .drop("n")
        )
        totals = rows.group_by(k, *by_fold).agg(
            pl.lit("*").alias("feature"), pl.lit(-1, pl.Int32).alias("bin"), pl.len().alias("n_ge")
        )
        parts.append(
            pl.concat([hist, totals.select(hist.columns)]).select(
                pl.lit(lvl).alias("level"),
                pl.col(k).alias("key"),
                *by_fold,
                "feature",
                "bin",
                pl.col("n_ge").cast(pl.UInt32),
            )
        )
    return pl.concat(parts).sort("level", "key", *by_fold, "feature", "bin")


def _lookup(query: pl.DataFrame, tails: pl.DataFrame, lvl: str, name: str, by_fold: list[str]):
    """Attach ``n_ge`` (windows with a value in the query's bin or above) and the total."""
    k = f"key_{lvl}"
    table = tails.filter(pl.col("level") == lvl).rename({"key": k})
    counts = (
        table.filter(pl.col("bin") >= 0)
        .select(k, *by_fold, "feature", "bin", pl.col("n_ge").alias(name))
        .sort("bin")
    )
    totals = table.filter(pl.col("bin") < 0).select(k, *by_fold, pl.col("n_ge").alias(f"{name}_n"))
    return (
        query.sort("bin")
        .join_asof(
            counts,
            on="bin",
            by=[k, *by_fold, "feature"],
            strategy="forward",
            check_sortedness=False,
        )
        .join(totals, on=[k, *by_fold], how="left")
        .with_columns(pl.col(name).fill_null(0), pl.col(f"{name}_n").fill_null(0))
    )


def feature_surprises(
    features: pl.DataFrame,
    baseline: Baseline,
    *,
    loo_fold: timedelta | None = None,
    fold_tails: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per (row, feature) with a non-zero value: how surprising the value is for the principal.

    ``surprise = -log10 P(X >= x)``, where P is the principal's own share of baseline windows
    at that value or above, smoothed towards its parent's (IAM role, else principal kind), itself
    smoothed towards the population's, each prior weighing :data:`PRIOR_WEIGHT` windows::

        p_pop = (n_pop + 1) / (N_pop + 1)
        p_parent = (n_parent + w * p_pop) / (N_parent + w)
        p_own = (n_own + w * p_parent) / (N_own + w)

    A principal never seen falls back on its role and then everyone; a value nobody reached
    scores about log10 of the number of baseline windows. With ``loo_fold`` (training), each
    row's own fold is left out of the counts, as :func:`cross_fit_features` does for novelty;
    ``fold_tails`` (``tail_counts(all_training_rows, fold=loo_fold)``) must then be given when
    ``features`` are only some of the training rows.
    """
    if baseline.tails is None:
        raise ValueError("baseline has no tail counts (fit it with fit_baseline)")
    query = _long(features, loo_fold)
    w = PRIOR_WEIGHT
    by_fold = ["_fold"] if loo_fold is not None else []
    if loo_fold is not None and fold_tails is None:
        fold_tails = tail_counts(features, fold=loo_fold)
    for lvl in _LEVELS:
        query = _lookup(query, baseline.tails, lvl, f"n_{lvl}", [])
        if fold_tails is not None:
            query = _lookup(query, fold_tails, lvl, f"f_{lvl}", by_fold).with_columns(
                (pl.col(f"n_{lvl}") - pl.col(f"f_{lvl}")).alias(f"n_{lvl}"),
                (pl.col(f"n_{lvl}_n") - pl.col(f"f_{lvl}_n")).alias(f"n_{lvl}_n"),
            )
    n = lambda c: pl.col(c).cast(pl.Float64)  # noqa: E731
    p_pop = (n("n_pop") + 1.0) / (n("n_pop_n") + 1.0)
    p_parent = (n("n_parent") + w * p_pop) / (n("n_parent_n") + w)
    p_own = (n("n_own") + w * p_parent) / (n("n_own_n") + w)
    return query.select("row", "feature", "x", (-p_own.log10()).clip(0.0).alias("surprise")).sort(
        "row", "feature"
    )


#: Feature rows turned into forest inputs at once. The long (row, feature) frame and its
#: lookups take ~2.7 KB per row at their peak, so a many-cluster retrain (millions of
#: window rows on the Ray head) works through them a slice at a time; rows are independent
#: once the fold counts of all of them are known, so the inputs are the same.
INPUT_CHUNK_ROWS = 250_000


def model_inputs(
    features: pl.DataFrame, baseline: Baseline, *, loo_fold: timedelta | None = None
) -> pl.DataFrame:
    """The forest's input: per row, the largest feature surprise of each family."""
    fold_tails = tail_counts(features, fold=loo_fold) if loo_fold is not None else None
    return pl.concat(
        [
            _chunk_inputs(features.slice(i, INPUT_CHUNK_ROWS), baseline, loo_fold, fold_tails)
            for i in range(0, max(features.height, 1), INPUT_CHUNK_ROWS)
        ]
    )


def _chunk_inputs(
    features: pl.DataFrame,
    baseline: Baseline,
    loo_fold: timedelta | None,
    fold_tails: pl.DataFrame | None,
) -> pl.DataFrame:
    surprises = feature_surprises(
        features, baseline, loo_fold=loo_fold, fold_tails=fold_tails
    ).with_columns(pl.col("feature").replace_strict(FAMILY_OF, default=None).alias("family"))
    per_row = surprises.group_by("row").agg(
        pl.col("surprise").filter(pl.col("family") == fam).max().alias(fam) for fam in MODEL_INPUTS
    )
    rows = pl.DataFrame({"row": pl.arange(0, features.height, eager=True, dtype=pl.UInt32)})
    return (
        rows.join(per_row, on="row", how="left")
        .sort("row")
        .select(pl.col(fam).fill_null(0.0).cast(pl.Float64) for fam in MODEL_INPUTS)
    )
