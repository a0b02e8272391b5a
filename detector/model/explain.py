"""Why a window was flagged: its most surprising features, as sentences an analyst can check.

Method: the forest scores, per family of features, the family's most *surprising* feature
(:func:`detector.features.feature_surprises`: ``-log10`` of the probability that this
principal's window reaches that value, from its own baseline smoothed towards its IAM role
or kind and the population). The explanation lists the 3 to 5 features with the
highest surprise, most surprising first, so what is shown is what the model was given, and
each sentence carries the numbers behind it: the value, the principal's own usual (median
of its baseline windows) and the 99th percentile over all principals.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from detector.features.windows import BY_NAME, FEATURES, RELATIVE, Baseline, feature_surprises

MIN_FEATURES, MAX_FEATURES = 3, 5
#: Surprise (-log10 p) from which a feature is worth a sentence on its own: p <= 10%.
NOTABLE = 1.0

_PAIRS = {feat: base for feat, base in RELATIVE} | {base: feat for feat, base in RELATIVE}


def explain(
    rows: pl.DataFrame,
    baseline: Baseline,
    *,
    loo_fold: timedelta | None = None,
    fold_tails: pl.DataFrame | None = None,
) -> list[list[dict[str, Any]]]:
    """For each feature row, its 3 to 5 most surprising features, most surprising first.

    Each item is ``{name, value, baseline, population, surprise, known, detail}``; fewer
    than 3 items only when fewer features are above zero. ``loo_fold``/``fold_tails``
    explain cross-fitted training rows (cold start), see :func:`feature_surprises`.
    """
    if rows.height == 0:
        return []
    surprises = feature_surprises(rows, baseline, loo_fold=loo_fold, fold_tails=fold_tails)
    stats = [c for f in FEATURES for c in (f"median_{f}",)]
    joined = rows.with_row_index("row").join(
        baseline.principals.select("cluster", "principal", "windows", *stats),
        on=["cluster", "principal"],
        how="left",
    )
    pop = {r["feature"]: r for r in baseline.population.iter_rows(named=True)}
    ranked = surprises.sort(["row", "surprise", "feature"], descending=[False, True, False])
    out: list[list[dict[str, Any]]] = [[] for _ in range(rows.height)]
    for (row,), group in ranked.group_by("row", maintain_order=True):
        ctx = joined.row(int(row), named=True)
        known = ctx["windows"] is not None
        chosen: list[dict[str, Any]] = []
        for item in group.iter_rows(named=True):
            if len(chosen) >= MAX_FEATURES:
                break
            if item["surprise"] < NOTABLE and len(chosen) >= MIN_FEATURES:
                break
            name = item["feature"]
            if _PAIRS.get(name) in {c["name"] for c in chosen}:
                continue  # "made 12x its usual requests" next to "made 600 requests"
            p = pop.get(name, {"median": 0.0, "p99": 0.0})
            usual = ctx.get(f"median_{name}") if known else None
            chosen.append(
                {
                    "name": name,
                    "value": item["x"],
                    "baseline": float(usual) if usual is not None else float(p["median"]),
                    "population": float(p["p99"]),
                    "surprise": item["surprise"],
                    "known": known,
                    "detail": _detail(name, ctx),
                }
            )
        out[int(row)] = chosen
    return out


def _detail(name: str, ctx: dict[str, Any]) -> str | None:
    if name == "rare_action":
        return ctx.get("rare_action_name")
    if name == "hour_rarity":
        start: datetime = ctx["window_start"]
        return f"{start:%H}:00 UTC"
    return None


def fmt(feature: str, value: float | None) -> str:
    """A feature value as an analyst reads it (counts as integers, ratios as %/x)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if feature == "error_ratio":
        return f"{value:.0%}"
    if not BY_NAME[feature].integer:
        return f"{value:.1f}"
    return f"{round(value):d}" if float(value).is_integer() else f"{value:.1f}"


def phrase(item: dict[str, Any]) -> str:
    """What the principal did, e.g. "read or listed secrets in 9 namespaces"."""
    name = item["name"]
    detail = item.get("detail")
    if name == "rare_action" and detail:
        return f"made a kind of request rare for principals like it ({detail})"
    if name == "hour_rarity" and detail:
        return f"was active at {detail}, an hour of day it is rarely active"
    return render_phrase(name, item["value"])


def render_phrase(name: str, value: float) -> str:
    """A catalogue phrase with its value, in singular or plural."""
    text = fmt(name, value)
    one = text == "1"
    return BY_NAME[name].phrase.format(
        v=text, s="" if one else "s", times="once" if one else f"{text} times"
    )


def sentence(item: dict[str, Any]) -> str:
    """One reason: "read or listed secrets in 9 namespaces; usual for this principal: 0; ..."."""
    name = item["name"]
    usual = (
        f"usual for this principal: {fmt(name, item['baseline'])}"
        if item.get("known", True)
        else f"no history for this principal (median of all principals: "
        f"{fmt(name, item['baseline'])})"
    )
    if name == "rare_action":
        return f"{phrase(item)}; rarity {item['value']:.1f} (-log10 of its share of windows)"
    if name == "hour_rarity":
        return f"{phrase(item)} (rarity {item['value']:.2f}; usual: {fmt(name, item['baseline'])})"
    return (
        f"{phrase(item)}; {usual}; "
        f"99th percentile of all principals: {fmt(name, item['population'])}"
    )


def title(items: list[dict[str, Any]]) -> str:
    """Finding title from its top reason: "Unusual activity: read or listed secrets ..."."""
    if not items:
        return "Unusual activity"
    return "Unusual activity: " + phrase(items[0])
