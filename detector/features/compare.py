"""Window rows -> feature rows: counts, ratios, and comparisons with a baseline.

:func:`finish_features` is the one path from window rows to the features the model sees, for
training (cross-fitted, see :mod:`detector.features.fit`) and scoring alike: novelty against
the principal's own history, the rarity of its actions among principals of its kind, its
usual hours, and volume relative to its typical window.
"""

from __future__ import annotations

import polars as pl

from detector.features.baseline import Baseline, exploded
from detector.features.catalogue import (
    DETAIL_COLUMNS,
    DIMENSIONS,
    FEATURES,
    ID_COLUMNS,
    KEYS,
    NAMED_NOVELTY,
    RELATIVE,
    RELATIVE_BASES,
)


def _rarity(n: pl.Expr, total: pl.Expr) -> pl.Expr:
    """-log10 of the smoothed share of windows: 0 = every window, ~log10(total) = never."""
    return -(((n.cast(pl.Float64) + 1.0) / (total.cast(pl.Float64) + 1.0)).log10())


def _rarest(rare: pl.DataFrame) -> pl.DataFrame:
    """Per window: the rarity of its rarest action, and that action."""
    return (
        rare.sort([*KEYS, "_r", "value"], descending=[False, False, False, True, False])
        .group_by(KEYS, maintain_order=True)
        .agg(
            pl.col("_r").first().alias("rare_action"),
            pl.col("value").first().alias("rare_action_name"),
            pl.col("_at").fill_null(0).first().cast(pl.UInt32).alias("rare_action_seen"),
        )
    )


def finish_features(
    windows: pl.DataFrame, baseline: Baseline, *, recent: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Window rows -> feature rows, with novelty, rarity and relative volume vs ``baseline``.

    ``recent`` holds values seen shortly before the windows (same columns as
    ``baseline.seen``; see :func:`detector.detect.scan.recent_values`): they are not new
    either.
    """
    keys = list(KEYS)
    pkeys = ["cluster", "principal"]
    out = windows.with_columns(
        (pl.col("errors").cast(pl.Float64) / pl.col("requests").cast(pl.Float64))
        .fill_nan(0.0)
        .alias("error_ratio"),
        *[
            pl.col(col).list.len().cast(pl.UInt32).alias(dist)
            for col, _, dist in DIMENSIONS
            if dist
        ],
    )
    # Novelty: values the principal used in neither the baseline nor recently, counted in
    # the first window that uses them (a new address used all day is one new address).
    seen = baseline.seen if recent is None else pl.concat([baseline.seen, recent])
    for col, new_name, _ in DIMENSIONS:
        known = seen.filter(pl.col("dimension") == col.lstrip("_")).select(*pkeys, "value")
        named = [pl.col("value").sort().alias(f"_{new_name}")] if new_name in NAMED_NOVELTY else []
        new = (
            exploded(windows, col)
            .join(known, on=[*pkeys, "value"], how="anti")
            .filter(pl.col("window_start") == pl.col("window_start").min().over(*pkeys, "value"))
            .group_by(keys)
            .agg(pl.len().cast(pl.UInt32).alias(new_name), *named)
        )
        out = out.join(new, on=keys, how="left").with_columns(pl.col(new_name).fill_null(0))
    # Rarity of the window's rarest action among baseline windows of the same principal kind.
    totals = baseline.actions.filter(pl.col("action") == "*").select(
        "principal_kind", pl.col("windows").alias("_kt")
    )
    counts = baseline.actions.filter(pl.col("action") != "*").select(
        "principal_kind", pl.col("action").alias("value"), pl.col("windows").alias("_at")
    )
    rare = _rarest(
        exploded(windows, "_actions", ("principal_kind",))
        .join(counts, on=["principal_kind", "value"], how="left")
        .join(totals, on="principal_kind", how="left")
        .with_columns(_rarity(pl.col("_at").fill_null(0), pl.col("_kt").fill_null(0)).alias("_r"))
    )
    medians = [f"median_{c}" for c in RELATIVE_BASES]
    out = out.join(rare, on=keys, how="left").join(
        baseline.principals.select(*pkeys, "windows", "hour_counts", *medians),
        on=pkeys,
        how="left",
    )
    # Share of the principal's baseline windows at this hour of day, against an even spread.
    hour = pl.col("window_start").dt.hour().cast(pl.Int64)
    share = (
        pl.col("hour_counts").list.get(hour).cast(pl.Float64)
        * 24.0
        / pl.col("windows").cast(pl.Float64)
    )
    known = pl.col("windows").is_not_null()
    if recent is not None:
        known = known | pl.struct(pkeys).is_in(
            recent.select(pl.struct(pkeys)).to_series().implode()
        )
    first = (~known) & (pl.col("window_start") == pl.col("window_start").min().over(pkeys))
    relative = [
        (
            (pl.col(base).cast(pl.Float64) + 1.0)
            / (pl.col(f"median_{base}").fill_null(baseline.population_stat(base)) + 1.0)
        ).alias(feat)
        for feat, base in RELATIVE
    ]
    out = out.with_columns(
        first.cast(pl.UInt32).alias("first_seen_principal"),
        # by the baseline's hours alone: a principal known only from the recent memory has
        # none, and its null share made the feature 0 in one cut of a range and 1 in
        # another (found by review)
        pl.when(pl.col("windows").is_not_null())
        .then((1.0 - share).clip(0.0, 1.0))
        .otherwise(1.0)
        .alias("hour_rarity"),
        pl.col("rare_action").fill_null(0.0),
        *relative,
    )
    return out.select(
        *ID_COLUMNS, *[pl.col(f).cast(pl.Float64) for f in FEATURES], *DETAIL_COLUMNS
    ).sort(keys)
