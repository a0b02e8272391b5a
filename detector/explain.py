"""Why a window was flagged: the features furthest above the principal's own normal range.

Method (robust deviations): in the model's ``log1p`` space, a feature's deviation is how far
the window's value sits above the principal's median, in units of the principal's own
spread (its 99th percentile minus its median, floored at ``log1p(1)`` so that going from
0 to 1 counts as one step)::

    deviation = (log1p(value) - log1p(median)) / max(log1p(p99) - log1p(median), log1p(1))

A principal never seen in training is compared with the population instead (median and
99th percentile over all principals' windows). The 3 to 5 features with the largest
deviations are the explanation. This ranks what is unusual *for this principal*, which is
what the forest was given through the novelty and relative-volume features; it is cheap
(only flagged windows are explained), deterministic, and each sentence carries the numbers
that justify it.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from detector.features import BY_NAME, FEATURES, RELATIVE, Baseline

#: A change of one unit from zero is one "step" of deviation.
FLOOR = math.log1p(1.0)
MIN_FEATURES, MAX_FEATURES = 3, 5
#: Features below this deviation are only listed to reach MIN_FEATURES.
NOTABLE = 0.5

_RELATIVE_BASE = dict(RELATIVE)


def deviations(rows: pl.DataFrame, baseline: Baseline) -> pl.DataFrame:
    """Long frame (row, feature, value, baseline, population, deviation) for feature rows."""
    stats_cols = [c for f in FEATURES for c in (f"median_{f}", f"p99_{f}")]
    pop = {r["feature"]: r for r in baseline.population.iter_rows(named=True)}
    joined = rows.with_row_index("row").join(
        baseline.principals.select("cluster", "principal", *stats_cols),
        on=["cluster", "principal"],
        how="left",
    )
    known = joined.select("row", pl.col(f"median_{FEATURES[0]}").is_not_null().alias("known"))
    long = []
    for f in FEATURES:
        p = pop.get(f, {"median": 0.0, "p99": 0.0})
        long.append(
            joined.select(
                "row",
                pl.lit(f).alias("feature"),
                pl.col(f).cast(pl.Float64).alias("value"),
                pl.col(f"median_{f}").fill_null(p["median"]).cast(pl.Float64).alias("baseline"),
                pl.col(f"p99_{f}").fill_null(p["p99"]).cast(pl.Float64).alias("spread_p99"),
                pl.lit(float(p["p99"])).alias("population"),
            )
        )
    frame = pl.concat(long).join(known, on="row")
    t = lambda c: pl.col(c).clip(0.0).log1p()  # noqa: E731
    spread = (t("spread_p99") - t("baseline")).clip(FLOOR)
    return frame.with_columns(((t("value") - t("baseline")) / spread).alias("deviation")).drop(
        "spread_p99"
    )


def explain(rows: pl.DataFrame, baseline: Baseline) -> list[list[dict[str, Any]]]:
    """For each feature row, its 3 to 5 most unusual features, most unusual first.

    Each item is ``{name, value, baseline, population, deviation, known}``.
    """
    if rows.height == 0:
        return []
    dev = deviations(rows, baseline).sort(
        ["row", "deviation", "feature"], descending=[False, True, False]
    )
    out: list[list[dict[str, Any]]] = [[] for _ in range(rows.height)]
    for (row,), group in dev.group_by("row", maintain_order=True):
        chosen: list[dict[str, Any]] = []
        names: set[str] = set()
        for item in group.iter_rows(named=True):
            if len(chosen) >= MAX_FEATURES:
                break
            base = _RELATIVE_BASE.get(item["feature"])
            if base in names:  # "Nx usual requests" adds nothing next to "made N requests"
                continue
            if item["deviation"] < NOTABLE and len(chosen) >= MIN_FEATURES:
                break
            if item["deviation"] <= 0 and chosen:
                break
            chosen.append(
                {
                    "name": item["feature"],
                    "value": item["value"],
                    "baseline": item["baseline"],
                    "population": item["population"],
                    "deviation": item["deviation"],
                    "known": item["known"],
                }
            )
            names.add(item["feature"])
        out[int(row)] = chosen
    return out


def fmt(feature: str, value: float | None) -> str:
    """A feature value as an analyst reads it (counts as integers, ratios as %/x)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if feature == "error_ratio":
        return f"{value:.0%}"
    if feature == "hour_rarity":
        return f"{value:.2f}"
    if not BY_NAME[feature].integer:
        return f"{value:.1f}"
    return f"{round(value):d}" if float(value).is_integer() else f"{value:.1f}"


def sentence(item: dict[str, Any]) -> str:
    """One reason: "read or listed secrets in 9 namespaces; usual for this principal: 0; ..."."""
    name = item["name"]
    what = BY_NAME[name].phrase.format(v=fmt(name, item["value"]))
    usual = (
        f"usual for this principal: {fmt(name, item['baseline'])}"
        if item.get("known", True)
        else f"no history for this principal (median of all principals: "
        f"{fmt(name, item['baseline'])})"
    )
    return f"{what}; {usual}; 99th percentile of all principals: {fmt(name, item['population'])}"


def title(items: list[dict[str, Any]]) -> str:
    """Finding title from its top reason: "Unusual activity: read or listed secrets ..."."""
    if not items:
        return "Unusual activity"
    first = items[0]
    return "Unusual activity: " + BY_NAME[first["name"]].phrase.format(
        v=fmt(first["name"], first["value"])
    )
