"""The baseline: what a model knows about each principal from its training range.

:func:`build_baseline` learns, from window rows, what :func:`~detector.features.compare.
finish_features` compares new windows with (values seen, hour-of-day histograms, median
volumes, how common each action is per kind of principal). It is built in one step and
never changed afterwards: :func:`detector.features.fit.fit_baseline` makes the saved,
richer baseline as a new object.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from detector.features.catalogue import DIMENSIONS, KEYS, RELATIVE_BASES


@dataclass(frozen=True)
class Baseline:
    """What the model knows from its training range (saved with it as Parquet).

    Attributes
    ----------
    seen
        (cluster, principal, dimension, value): every source IP, user agent, namespace,
        resource and action each principal used.
    principals
        One row per (cluster, principal): windows active, a 24-bin hour-of-day histogram of
        active windows, and the median and 99th percentile of every feature over the
        principal's windows.
    actions
        (principal_kind, action, windows): in how many windows principals of each kind made
        each kind of request; ``action = "*"`` holds the kind's total windows.
    population
        (feature, median, p99) over all principals' windows.
    tails
        (level, key, feature, bin, n_ge): in how many windows of each principal
        (``level="own"``), IAM role or principal kind (``"parent"``) and of everyone (``"pop"``)
        each feature reached each value bin or more; ``bin = -1`` rows hold window totals.
        See :func:`feature_surprises`.
    """

    seen: pl.DataFrame
    principals: pl.DataFrame
    actions: pl.DataFrame
    population: pl.DataFrame
    tails: pl.DataFrame | None = None

    def population_stat(self, feature: str, stat: str = "median") -> float:
        row = self.population.filter(pl.col("feature") == feature)
        return float(row[stat][0]) if row.height else 0.0


def exploded(windows: pl.DataFrame, col: str, extra: tuple[str, ...] = ()) -> pl.DataFrame:
    """One row per (window, value) of the list column ``col``, as ``value``."""
    return (
        windows.select(*KEYS, *extra, pl.col(col).alias("value"))
        .explode("value")
        .drop_nulls("value")
    )


def hour_histogram(name: str = "hour_counts") -> pl.Expr:
    hours = pl.col("window_start").dt.hour().cast(pl.Int64)
    return pl.concat_list([(hours == h).sum().cast(pl.UInt32) for h in range(24)]).alias(name)


def seen_values(windows: pl.DataFrame, by: tuple[str, ...] = ()) -> pl.DataFrame:
    """(cluster, principal, dimension, value) for every distinct value the windows used
    (and ``by`` columns, e.g. a training fold, to tell values per group apart).

    Values are gathered per principal before they are exploded: exploding each window's
    lists copied the key strings to every value of every window (the peak of a training
    over millions of windows).
    """
    keys = ["cluster", "principal", *by]
    lists = [col for col, _, _ in DIMENSIONS]
    per_key = windows.group_by(keys).agg(
        pl.col(c).list.explode(keep_nulls=False, empty_as_null=False).unique() for c in lists
    )
    return pl.concat(
        [
            per_key.select(
                "cluster",
                "principal",
                pl.lit(c.lstrip("_")).alias("dimension"),
                pl.col(c).alias("value"),
                *by,
            )
            .explode("value")
            .drop_nulls("value")
            for c in lists
        ]
    ).sort("cluster", "principal", "dimension", "value", *by)


def unseen_principals(windows: pl.DataFrame, baseline: Baseline) -> list[str]:
    """Principals of ``windows`` that used some value their baseline does not hold."""
    fresh = seen_values(windows).join(
        baseline.seen, on=["cluster", "principal", "dimension", "value"], how="anti"
    )
    return sorted(fresh["principal"].unique().to_list())


def build_baseline(windows: pl.DataFrame) -> Baseline:
    """The history :func:`finish_features` compares windows with, from training window rows.

    Only what novelty, rarity and relative volume need; ``features.fit.fit_baseline``
    builds the saved baseline from it, with the per-feature statistics explanations use.
    """
    pkeys = ["cluster", "principal"]
    seen = seen_values(windows)
    principals = (
        windows.group_by(pkeys)
        .agg(
            pl.len().cast(pl.UInt32).alias("windows"),
            hour_histogram(),
            *[pl.col(c).median().cast(pl.Float64).alias(f"median_{c}") for c in RELATIVE_BASES],
        )
        .sort(pkeys)
    )
    acts = (
        windows.select("principal_kind", pl.col("_actions").alias("value"))
        .explode("value")
        .drop_nulls("value")
    )
    actions = pl.concat(
        [
            acts.group_by("principal_kind", pl.col("value").alias("action")).agg(
                pl.len().cast(pl.UInt32).alias("windows")
            ),
            windows.group_by("principal_kind").agg(
                pl.lit("*").alias("action"), pl.len().cast(pl.UInt32).alias("windows")
            ),
        ]
    ).sort("principal_kind", "action")
    population = pl.DataFrame(
        {
            "feature": list(RELATIVE_BASES),
            "median": [float(windows[c].median() or 0.0) for c in RELATIVE_BASES],
            "p99": [float(windows[c].quantile(0.99, "nearest") or 0.0) for c in RELATIVE_BASES],
        }
    )
    return Baseline(seen=seen, principals=principals, actions=actions, population=population)
