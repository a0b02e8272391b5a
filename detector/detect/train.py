"""Training: a baseline range of the lake -> window rows -> baseline + forest -> saved model.

The range is streamed a few hours at a time into window rows (:func:`detector.detect.scan.
iter_windows`), so memory is bounded by windows (principals x windows), not events. The
window rows are then cross-fitted (:func:`detector.features.fit_baseline`), turned into the
forest's inputs and fitted. :func:`baseline_warnings` says when the baseline is too thin to
mean much (issue: a model trained on two days of a fourteen-day request says nothing).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from detector.detect.executor import Executor, is_local
from detector.detect.scan import Progress, lake_windows
from detector.errors import UsageError
from detector.features import DEFAULT_WINDOW, align, check_window, fit_baseline, fold_length
from detector.features import model_inputs as inputs_of
from detector.lake.events import Lake
from detector.model.storage import DEFAULT_ALERT_RATE, Model, fingerprint
from detector.timeparse import iso_utc
from detector.warmup import import_in_background

#: Training needs at least this many windows (principal x 10 minutes) to mean anything.
MIN_TRAIN_WINDOWS = 50
#: A baseline shorter than this misses daily rhythms and weekly jobs: warned about.
MIN_BASELINE = timedelta(days=1)
#: Share of the requested range that must hold events before the baseline counts as covered.
MIN_COVERAGE = 0.5


class ScoringError(UsageError):
    """Training or scoring cannot proceed; the message says why in one line."""


class ThinBaseline(ScoringError):
    """The baseline is too thin to trust (raised instead of a warning with ``strict``)."""


@dataclass
class Fitted:
    """A fitted model with its cross-fitted training rows (and their scores, on demand)."""

    model: Model
    rows: pl.DataFrame  # the cross-fitted training feature rows
    inputs: np.ndarray  # those rows as the forest sees them
    fold: timedelta

    @functools.cached_property
    def scores(self) -> np.ndarray:
        """Anomaly scores of the training rows: computed when asked (a cold-start score
        reports them), never by `detect train`, which only saves the model."""
        return self.model.scorer.anomaly_score(self.inputs)


def fit(
    windows: pl.DataFrame,
    *,
    window: timedelta,
    start: datetime,
    end: datetime,
    alert_rate: float = DEFAULT_ALERT_RATE,
    seed: int | None = 0,
    threshold_method: str = "budget",
) -> Fitted:
    """Baseline + estimator from window rows (not saved)."""
    from detector.model.estimator import AuditIsolationForest  # scikit-learn: training only

    if windows.height < MIN_TRAIN_WINDOWS:
        raise ScoringError(
            f"only {windows.height} principal windows in the training range "
            f"{start:%Y-%m-%d %H:%M}Z to {end:%Y-%m-%d %H:%M}Z (need at least "
            f"{MIN_TRAIN_WINDOWS}): train over a longer range (detect train --since, "
            "detect evaluate --train-until) or ingest more events"
        )
    # The folds follow the events, not the range asked for: the first training of a lake
    # holding one day, over the default 14 days, had day-long folds with nothing beside
    # them, and every window looked new against the others (all alike, all flagged).
    first, last = windows["window_start"].min(), windows["window_end"].max()
    fold = fold_length(max(start, first), min(end, last))  # type: ignore[type-var]
    baseline, rows = fit_baseline(windows, fold=fold)
    X = inputs_of(rows, baseline, loo_fold=fold).to_numpy()
    est = AuditIsolationForest(
        alert_rate=alert_rate,
        threshold_method=threshold_method,
        log_transform=False,  # the inputs are already log-probabilities
        random_state=seed,
    ).fit(X)
    if not est.scorer_.score_std > 1e-9:  # (floating-point noise is not spread)
        # Every training window looks the same to the model (each principal one window:
        # a --window as long as the range): its threshold is that one score, and every
        # window scored later would reach it and be flagged.
        raise ScoringError(
            f"the {windows.height} training windows all score alike, so the model could not "
            "tell an unusual window from a usual one: train on events spanning several "
            "windows of each principal (a range longer than --window)"
        )
    training = {
        "since": iso_utc(start),
        "until": iso_utc(end),
        "first_window": iso_utc(first) if first else None,
        "last_window_end": iso_utc(last) if last else None,
        "windows": windows.height,
        "rows_fit": rows.height,
        "novelty_fold_seconds": int(fold.total_seconds()),
        "requests": int(windows["requests"].sum()),
        "principals": baseline.principals.height,
        "clusters": sorted(windows["cluster"].unique().to_list()),
        "seed": seed,
    }
    model = Model(
        scorer=est.scorer_,
        baseline=baseline,
        window=window,
        params=est.get_params(),
        training=training,
        fingerprint=fingerprint(X),
    )
    return Fitted(model=model, rows=rows, inputs=X, fold=fold)


def fit_model(
    windows: pl.DataFrame,
    *,
    window: timedelta,
    start: datetime,
    end: datetime,
    alert_rate: float = DEFAULT_ALERT_RATE,
    seed: int | None = 0,
    threshold_method: str = "budget",
) -> Model:
    """:func:`fit`, the model alone."""
    return fit(
        windows,
        window=window,
        start=start,
        end=end,
        alert_rate=alert_rate,
        seed=seed,
        threshold_method=threshold_method,
    ).model


def baseline_warnings(
    windows: pl.DataFrame, start: datetime, end: datetime, *, window: timedelta
) -> list[str]:
    """Why a baseline is too thin to trust, one sentence each (empty when it is fine).

    Thin: shorter than :data:`MIN_BASELINE`, or events covering less than
    :data:`MIN_COVERAGE` of the requested range (``--since 14d`` on a lake holding 2 days).
    """
    out = []
    span = end - start
    if span < MIN_BASELINE:
        out.append(
            f"the baseline is only {_human(span)} long (at least {_human(MIN_BASELINE)} is "
            "needed to learn daily rhythms): widen --since"
        )
    if windows.height:
        first = windows["window_start"].min()
        last = windows["window_end"].max()
        covered = last - first  # type: ignore[operator]
        if span > window and covered < span * MIN_COVERAGE:
            out.append(
                f"the lake holds events for only {_human(covered)} of the {_human(span)} "
                f"baseline requested ({first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC): "
                "the model learns from that alone"
            )
    return out


def _human(d: timedelta) -> str:
    hours = d.total_seconds() / 3600
    if hours >= 48:
        return f"{hours / 24:.0f} days"
    return f"{hours:.0f} hours" if hours >= 1 else f"{d.total_seconds() / 60:.0f} minutes"


def training_windows(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta = DEFAULT_WINDOW,
    cluster: str | None = None,
    progress: Progress = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Window rows of a training range: streamed here, or per partition on ``executor``."""
    if is_local(executor):
        return lake_windows(lake, start, end, window=window, cluster=cluster, progress=progress)
    assert executor is not None
    from detector.detect import partitioned

    rows, _, _ = partitioned.windows(
        lake, start, end, window=window, cluster=cluster, executor=executor
    )
    return rows


#: A finding's status that says "reviewed: this was expected": its windows may be learnt.
BENIGN_PREFIX = "benign"


def alerted_windows(lake: Lake, start: datetime, end: datetime) -> pl.DataFrame:
    """(cluster, principal, window_start, window_end) of alerts not judged benign.

    An alert (severity low or more) in the training range stays out of the baseline unless
    an analyst said it was expected: its finding is ``suppressed`` (a suppression is that
    statement, kept in git), or ``resolved`` with a reason starting ``benign``
    (``detect findings resolve ID --benign``). Otherwise the nightly retrain would learn
    last night's attack as normal.
    """
    from detector.lake.findings import list_findings
    from detector.lake.incidents import read_status

    found = list_findings(lake, since=start, until=end, min_severity="low")
    if found.is_empty():
        return found.select("cluster", "principal", "window_start", "window_end")
    status = read_status(lake, since=start)
    judged = status.filter(
        (pl.col("status") == "suppressed")
        | (
            (pl.col("status") == "resolved")
            & pl.col("status_reason")
            .fill_null("")
            .str.to_lowercase()
            .str.starts_with(BENIGN_PREFIX)
        )
    ).select("finding_id")
    return (
        found.join(judged, on="finding_id", how="anti")
        .select("cluster", "principal", "window_start", "window_end")
        .unique()
    )


def without_alerted(windows: pl.DataFrame, alerted: pl.DataFrame) -> pl.DataFrame:
    """Training window rows minus those overlapping an alert of the same principal."""
    if alerted.is_empty() or windows.is_empty():
        return windows
    keys = ["cluster", "principal"]
    hit = (
        windows.select(*keys, "window_start", "window_end")
        .join(alerted.rename({"window_start": "_as", "window_end": "_ae"}), on=keys, how="inner")
        .filter((pl.col("window_start") < pl.col("_ae")) & (pl.col("window_end") > pl.col("_as")))
        .select(*keys, "window_start")
        .unique()
    )
    return windows.join(hit, on=[*keys, "window_start"], how="anti")


@dataclass
class TrainResult:
    model: Model
    warnings: list[str]


def train_model(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    model_dir: str | None,
    window: timedelta = DEFAULT_WINDOW,
    alert_rate: float = DEFAULT_ALERT_RATE,
    seed: int | None = 0,
    threshold_method: str = "budget",
    cluster: str | None = None,
    strict: bool = False,
    progress: Progress = None,
    warnings: list[str] | None = None,
    executor: Executor | None = None,
) -> Model:
    """Fit on ``[start, end)`` of the lake and save to ``model_dir`` (unless ``None``).

    Thin-baseline warnings are appended to ``warnings`` (when given) and logged; with
    ``strict`` they raise :class:`ThinBaseline` before anything is saved. A non-local
    ``executor`` computes the window rows per (cluster, day) partition where it runs; the
    baseline and the forest are fitted here on all of them, so the model is the same.
    """
    check_window(window)
    start, end = align(start, end, window)
    import_in_background("detector.model.estimator")  # scikit-learn, while windows compute
    windows = training_windows(
        lake, start, end, window=window, cluster=cluster, progress=progress, executor=executor
    )
    kept = without_alerted(windows, alerted_windows(lake, start, end))
    if kept.height < windows.height:
        logging.getLogger(__name__).info(
            "left out %d window(s) alerted on and not judged benign", windows.height - kept.height
        )
        windows = kept
    thin = baseline_warnings(windows, start, end, window=window)
    if thin and strict:
        raise ThinBaseline(f"{thin[0]} (--strict)")
    for text in thin:
        logging.getLogger(__name__).warning(text)
    if warnings is not None:
        warnings.extend(thin)
    model = fit_model(
        windows,
        window=window,
        start=start,
        end=end,
        alert_rate=alert_rate,
        seed=seed,
        threshold_method=threshold_method,
    )
    return model.save(model_dir) if model_dir is not None else model
