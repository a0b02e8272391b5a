"""The volume guard: a request flood is a finding whatever the forest scores it.

An isolation forest isolates a window by splitting one feature at a time, chosen at random
among ~40. A window extreme in one feature alone (a principal making 50,000 requests in ten
minutes, everything else ordinary) is isolated early only on the few paths that split
that feature, so its score saturates: one such window scored 0.748 against a threshold of
0.758 (found by review), while the same count would stop any on-call engineer. A rule that
counted every request of every principal would pull every event through the rules' first
pass, which keeps only the few rows any rule can match. The feature frame has the count
already: the guard reads it there.

A window is flagged when its requests are at least :data:`FACTOR` times the principal's
usual (median per window in the baseline) *and* at least :data:`P99_FACTOR` times the 99th
percentile of all principals' windows, and at least :data:`FLOOR`. Both, so that neither
a quiet principal's ordinary burst nor a busy controller's ordinary load is a flood. A
principal with no baseline (each new IAM role session is one) has no usual: its window
must reach :data:`FACTOR` times that 99th percentile. Compared with the median principal
instead, a new session of a busy CI role was a "flood" at its role's ordinary load (found
by review).
"""

from __future__ import annotations

import polars as pl

from detector.features import Baseline

#: Times the principal's usual requests per window.
FACTOR = 20.0
#: Times the 99th percentile of all principals' windows in the baseline.
P99_FACTOR = 2.0
#: Requests in one window below which nothing is a flood.
FLOOR = 1_000
#: The least severity of a flood the guard flags.
SEVERITY = "medium"


def flooded(feats: pl.DataFrame, baseline: Baseline) -> pl.Series:
    """Whether each window of ``feats`` is a request flood (see the module doc)."""
    if "requests" not in feats.columns or "requests_vs_usual" not in feats.columns:
        return pl.Series("flood", [False] * feats.height, dtype=pl.Boolean)
    busiest = baseline.population_stat("requests", "p99")
    floor = max(float(FLOOR), P99_FACTOR * busiest)
    requests = pl.col("requests").cast(pl.Float64)
    with_usual = (requests >= floor) & (pl.col("requests_vs_usual") >= FACTOR)
    without = requests >= max(float(FLOOR), FACTOR * busiest)
    flood = pl.when(pl.col("_known")).then(with_usual).otherwise(without).fill_null(False)
    return (
        feats.select("requests", "requests_vs_usual")
        .with_columns(known(feats, baseline).alias("_known"))
        .select(flood.alias("flood"))
        .to_series()
    )


def reason(requests: float, vs_usual: float | None, baseline: Baseline) -> str:
    """The sentence that says why a flood was flagged whatever its score; ``vs_usual`` None
    for a principal with no baseline."""
    busiest = baseline.population_stat("requests", "p99")
    usual = f"{vs_usual:,.0f}x its usual" if vs_usual is not None else "no history"
    return (
        f"made {requests:,.0f} requests in one window, {usual} and "
        f"{requests / max(busiest, 1.0):,.0f}x the busiest 1% of all principals' windows: "
        "a request flood, flagged whatever the model's score"
    )


def known(feats: pl.DataFrame, baseline: Baseline) -> pl.Series:
    """Whether each window's principal has a baseline."""
    keys = ["cluster", "principal"]
    have = baseline.principals.select(*keys).unique().with_columns(_known=pl.lit(True))
    return (
        feats.select(*keys)
        .join(have, on=keys, how="left", maintain_order="left")["_known"]
        .fill_null(False)
    )
