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

from detector.features import ATTACK, BY_NAME, FEATURES, RELATIVE, Baseline, feature_surprises
from detector.features.catalogue import NAMED_NOVELTY, NEVER_SEEN

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
    fitted: pl.DataFrame | None = None,
) -> list[list[dict[str, Any]]]:
    """For each feature row, its 3 to 5 most surprising features, most surprising first.

    Each item is ``{name, value, baseline, population, surprise, known, detail}``; fewer
    than 3 items only when fewer features are above zero. ``loo_fold``/``fold_tails``
    explain cross-fitted training rows (cold start), see :func:`feature_surprises`; the
    principal's usual is then the median of its ``fitted`` rows in the other folds (the
    baseline's holds the row itself: "denied 36 times; usual: 36", found by review).
    """
    if rows.height == 0:
        return []
    surprises = feature_surprises(rows, baseline, loo_fold=loo_fold, fold_tails=fold_tails)
    stats = [c for f in FEATURES for c in (f"median_{f}",)]
    own = (
        _other_folds(rows, fitted, loo_fold)
        if loo_fold is not None and fitted is not None
        else baseline.principals.select("cluster", "principal", "windows", *stats)
    )
    keys = ["row"] if "row" in own.columns else ["cluster", "principal"]
    joined = rows.with_row_index("row").join(own, on=keys, how="left").sort("row")
    pop = {r["feature"]: r for r in baseline.population.iter_rows(named=True)}
    usual_values = _usual_values(rows, baseline)
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
                    "detail": _detail(name, ctx, usual_values),
                    "seen": ctx.get("rare_action_seen") if name == "rare_action" else None,
                }
            )
        out[int(row)] = chosen
    return out


#: Novelty features whose evidence is a value an analyst can look up: (window list column,
#: baseline dimension). A stolen token shows as a new address or client next to usual ones.
#: How many new and usual values a reason names (the rest are in the finding's events),
#: and how much of each (a user agent is client-chosen text of any length).
_MAX_NAMED = 3
_MAX_VALUE_CHARS = 120


def _short(value: str) -> str:
    return value if len(value) <= _MAX_VALUE_CHARS else value[: _MAX_VALUE_CHARS - 3] + "..."


def _other_folds(rows: pl.DataFrame, fitted: pl.DataFrame, fold: timedelta) -> pl.DataFrame:
    """Per row: how many windows the same principal has in the other folds of ``fitted``,
    and the median of each feature over them (``windows`` null when it has none)."""
    every = f"{int(fold.total_seconds())}s"
    pkeys = ["cluster", "principal"]
    flagged = rows.select(*pkeys, pl.col("window_start").dt.truncate(every).alias("_fold"))
    pool = fitted.select(
        *pkeys, pl.col("window_start").dt.truncate(every).alias("_other"), *FEATURES
    )
    return (
        flagged.with_row_index("row")
        .join(pool, on=pkeys)
        .filter(pl.col("_fold") != pl.col("_other"))
        .group_by("row")
        .agg(
            pl.len().cast(pl.UInt32).alias("windows"),
            *[pl.col(f).median().alias(f"median_{f}") for f in FEATURES],
        )
    )


def _usual_values(rows: pl.DataFrame, baseline: Baseline) -> dict[tuple[str, str, str], list]:
    """Baseline values of the flagged principals, per (cluster, principal, dimension).

    Read only for the rows being explained (a few flagged windows), never the whole seen
    table, so the cost follows the findings, not the baseline.
    """
    dims = [column.lstrip("_") for column in NAMED_NOVELTY.values()]  # as baseline.seen names
    if rows.is_empty():
        return {}
    seen = baseline.seen.filter(pl.col("dimension").is_in(dims)).join(
        rows.select("cluster", "principal").unique(), on=["cluster", "principal"], how="semi"
    )
    grouped = seen.group_by("cluster", "principal", "dimension").agg(pl.col("value").sort())
    return {(r[0], r[1], r[2]): r[3] for r in grouped.iter_rows()}


#: Before the values a novelty feature counted, in a reason.
_NEW = "new: "


def _detail(
    name: str, ctx: dict[str, Any], usual_values: dict[tuple[str, str, str], list]
) -> str | None:
    if name == "rare_action":
        return ctx.get("rare_action_name")
    if name == "hour_rarity":
        start: datetime = ctx["window_start"]
        return f"{start:%H}:00 UTC"
    if name in NAMED_NOVELTY:
        dimension = NAMED_NOVELTY[name].lstrip("_")
        usual = usual_values.get((ctx["cluster"], ctx["principal"], dimension), [])
        # the values the feature counted (sorted where counted): the baseline's dimension
        # was looked up under another name, so every value of the window was shown as new
        # and none as usual, and values seen earlier in the range were listed too (found
        # by review)
        new = [v for v in (ctx.get(f"_{name}") or []) if v is not None]
        if not new:
            return None
        text = _NEW + ", ".join(map(_short, new[:_MAX_NAMED]))
        text += " ..." if len(new) > _MAX_NAMED else ""
        if usual:
            more = " ..." if len(usual) > _MAX_NAMED else ""
            # "seen before", not "usual": the sentence's "usual for this principal" is the
            # usual count, and the word meant two things in one line (found by review)
            text += "; seen before: " + ", ".join(map(_short, usual[:_MAX_NAMED])) + more
        return text
    return None


def attack(items: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """ATT&CK (tactic, technique) of a finding: that of its most surprising mapped feature.

    A rare action names its own kind of request, so it borrows the mapping of the sensitive
    feature the same window shows, if any; features that only say "unusual" map to nothing.
    """
    for item in items:
        mapped = ATTACK.get(item["name"])
        if mapped:
            return mapped
    return None, None


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
    known = item.get("known", True)
    if name == "rare_action" and detail:
        return f"made a kind of request rare for principals like it ({detail})"
    if name == "hour_rarity" and detail:
        if not known:
            return f"was active at {detail}, with no history of its usual hours"
        return f"was active at {detail}, an hour of day it is rarely active"
    if name in _RELATIVE and not known:
        return _new_relative(name, item["value"])
    text = render_phrase(name, item["value"])
    if name in NAMED_NOVELTY and not known:
        # with no history every value is new: "never seen for this principal" beside "no
        # history for this principal" said one thing twice (found by review)
        text = text.removesuffix(NEVER_SEEN)
        detail = detail and detail.removeprefix(_NEW)
    if name in NAMED_NOVELTY and detail:
        return f"{text} ({detail})"
    return text


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
    known = item.get("known", True)
    if name == "rare_action":
        if item.get("seen") == 0:  # not "1 in 1,066": that is the smoothing's (found by review)
            return f"{phrase(item)}; no principal of its kind made it in the baseline"
        share = 10 ** -float(item["value"])
        return f"{phrase(item)}; principals of its kind make it in {_share(share)} of their windows"
    if name == "hour_rarity":
        return phrase(item)
    if name in _RELATIVE and not known:
        return f"{phrase(item)}; no history for this principal"
    usual = (
        f"usual for this principal: {fmt(name, item['baseline'])}"
        if known
        else f"no history for this principal (median of all principals: "
        f"{fmt(name, item['baseline'])})"
    )
    return (
        f"{phrase(item)}; {usual}; "
        f"99th percentile of all principals: {fmt(name, item['population'])}"
    )


_RELATIVE = dict(RELATIVE)


def _new_relative(name: str, value: float) -> str:
    """A relative feature for a principal with no history: compared with the median one."""
    what = {
        "requests_vs_usual": "requests",
        "writes_vs_usual": "writes",
        "secret_reads_vs_usual": "secret reads",
        "errors_vs_usual": "failed requests",
    }[name]
    return f"made {fmt(name, value)}x as many {what} as the median principal"


def _share(p: float) -> str:
    """A probability as an analyst reads it: "1 in 40", "12%"."""
    if p >= 0.1:
        return f"{p:.0%}"
    return f"about 1 in {round(1 / p):,}"


def title(items: list[dict[str, Any]]) -> str:
    """Finding title from its top reason: "Unusual activity: read or listed secrets ..."."""
    if not items:
        return "Unusual activity"
    return "Unusual activity: " + phrase(items[0])
