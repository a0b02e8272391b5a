"""Train and score: a lake time range -> features -> model (+ rules) -> findings.

``train_model`` fits the model on a baseline range and saves it; ``score_range`` turns a
range into findings (model and rules) and, unless asked not to, files them in the lake,
replacing what an earlier run wrote for the same windows (see :mod:`detector.lake.findings`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from detector.errors import UsageError
from detector.events.schema import CANONICAL_COLUMNS
from detector.features.windows import (
    DEFAULT_WINDOW,
    align,
    check_window,
    finish_features,
    fit_baseline,
    fold_length,
    lake_windows,
    model_inputs,
    recent_values,
    request_rows,
    tail_counts,
    unseen_principals,
)
from detector.lake import findings as findings_store
from detector.lake.events import Lake, Partition
from detector.lake.findings_schema import (
    FINDINGS_COLUMNS,
    FINDINGS_EVENTS_COLUMNS,
    SEVERITIES,
    empty_findings,
    with_finding_ids,
)
from detector.model import estimator as model_module
from detector.model import explain as explain_mod
from detector.model.estimator import DEFAULT_ALERT_RATE, Model, fingerprint

#: Training needs at least this many windows (principal x 10 minutes) to mean anything.
MIN_TRAIN_WINDOWS = 50
#: The flagged events kept per finding (the first ones in time); ``event_count`` is exact.
MAX_EVENTS_PER_FINDING = 10_000
#: How far before a scored range (but after the training range) a value counts as already
#: seen for novelty: a new address used all afternoon is new once, not once per hourly run.
NOVELTY_MEMORY = timedelta(hours=24)
#: History handed to rules that compare with the past (``RuleSet.needs_history``).
RULES_HISTORY = timedelta(days=7)

Progress = Callable[[int, int], None] | None


class ScoringError(UsageError):
    """Training or scoring cannot proceed; the message says why in one line."""


# --------------------------------------------------------------------------- training
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
    """Baseline + estimator from window rows (not saved)."""
    return _fit(
        windows,
        window=window,
        start=start,
        end=end,
        alert_rate=alert_rate,
        seed=seed,
        threshold_method=threshold_method,
    ).model


@dataclass
class _Fitted:
    model: Model
    rows: pl.DataFrame  # the cross-fitted training feature rows
    scores: np.ndarray  # their anomaly scores
    fold: timedelta


def _fit(
    windows: pl.DataFrame,
    *,
    window: timedelta,
    start: datetime,
    end: datetime,
    alert_rate: float,
    seed: int | None,
    threshold_method: str = "budget",
) -> _Fitted:
    if windows.height < MIN_TRAIN_WINDOWS:
        raise ScoringError(
            f"only {windows.height} principal windows in the training range (need at least "
            f"{MIN_TRAIN_WINDOWS}): widen --since/--until or ingest more events"
        )
    fold = fold_length(start, end)
    baseline, rows = fit_baseline(windows, fold=fold)
    X = model_inputs(rows, baseline, loo_fold=fold).to_numpy()
    est = model_module.AuditIsolationForest(  # imports scikit-learn: training only
        alert_rate=alert_rate,
        threshold_method=threshold_method,
        log_transform=False,  # the inputs are already log-probabilities
        random_state=seed,
    ).fit(X)
    training = {
        "since": _iso(start),
        "until": _iso(end),
        "windows": windows.height,
        "rows_fit": rows.height,
        "novelty_fold_seconds": int(fold.total_seconds()),
        "requests": int(windows["requests"].sum()),
        "principals": baseline.principals.height,
        "clusters": sorted(windows["cluster"].unique().to_list()),
        "seed": seed,
    }
    model = Model.from_estimator(
        est, baseline=baseline, window=window, training=training, fingerprint=fingerprint(X)
    )
    return _Fitted(model=model, rows=rows, scores=est.anomaly_score(X), fold=fold)


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
    progress: Progress = None,
) -> Model:
    """Fit on ``[start, end)`` of the lake and save to ``model_dir`` (unless ``None``)."""
    check_window(window)
    start, end = align(start, end, window)
    windows = lake_windows(lake, start, end, window=window, cluster=cluster, progress=progress)
    model = fit_model(
        windows,
        window=window,
        start=start,
        end=end,
        alert_rate=alert_rate,
        seed=seed,
        threshold_method=threshold_method,
    )
    if model_dir is not None:
        model.save(model_dir)
    return model


# --------------------------------------------------------------------------- scoring
@dataclass
class ScoreResult:
    """What a scoring run found (and wrote)."""

    start: datetime
    end: datetime
    findings: pl.DataFrame
    events: pl.DataFrame
    windows: int = 0
    requests: int = 0
    model_version: str | None = None
    cold_start: bool = False
    rules: str = "not run"  # "not run", "not available", or "<n> rules"
    written: dict[str, Any] = field(default_factory=dict)


def rules_available() -> bool:
    """Whether this installation has the rules engine (``detector.rules`` with its API)."""
    if importlib.util.find_spec("detector.rules") is None:
        return False
    rules = importlib.import_module("detector.rules")
    return all(hasattr(rules, n) for n in ("load_ruleset", "evaluate_rules", "RuleError"))


def score_range(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    model: Model | None,
    fit_on_window: bool = False,
    use_model: bool = True,
    use_rules: bool = True,
    rule_files: list[str] | None = None,
    disabled_rules: list[str] | None = None,
    enabled_rules: list[str] | None = None,
    window: timedelta | None = None,
    seed: int | None = 0,
    alert_rate: float = DEFAULT_ALERT_RATE,
    cluster: str | None = None,
    write: bool = True,
    now: datetime | None = None,
    progress: Progress = None,
) -> ScoreResult:
    """Findings for ``[start, end)`` widened to whole windows.

    With ``fit_on_window`` a model is fitted on the range itself (cold start, no saved
    model needed) and its findings are marked ``cold_start``.
    """
    now = now or datetime.now(UTC)
    window = check_window(
        model.window if model is not None and not fit_on_window else (window or DEFAULT_WINDOW)
    )
    start, end = align(start, end, window)
    result = ScoreResult(
        start=start,
        end=end,
        findings=empty_findings(),
        events=pl.DataFrame(schema=FINDINGS_EVENTS_COLUMNS),
    )
    parts = lake.partitions(start, end, cluster=cluster)
    frames: list[tuple[str, pl.DataFrame, pl.DataFrame]] = []

    if use_model:
        windows = lake_windows(lake, start, end, window=window, cluster=cluster, progress=progress)
        result.windows = windows.height
        result.requests = int(windows["requests"].sum() or 0)
        if fit_on_window:
            if windows.height < MIN_TRAIN_WINDOWS:
                raise ScoringError(
                    f"--fit-on-window needs at least {MIN_TRAIN_WINDOWS} principal windows in "
                    f"the range, found {windows.height}: widen --since"
                )
            # Each part of the range is judged against the rest of it (cross-fitting), which
            # is exactly how the model's own training rows were scored.
            fitted = _fit(
                windows, window=window, start=start, end=end, alert_rate=alert_rate, seed=seed
            )
            model = fitted.model
            model.card = {"model_version": "cold-start"}
            result.cold_start = True
            result.model_version = model.version
            found = findings_from_scores(
                fitted.rows, fitted.scores, model, now=now, cold_start=True, loo_fold=fitted.fold
            )
        else:
            if model is None:
                raise ScoringError("no model given")
            result.model_version = model.version
            recent = None
            if windows.height:
                memory_start = start - NOVELTY_MEMORY
                lookback = max(memory_start, model.trained_until or memory_start)
                recent = recent_values(
                    lake,
                    lookback,
                    start,
                    principals=unseen_principals(windows, model.baseline),
                    window=window,
                    cluster=cluster,
                )
            found = model_findings(windows, model, now=now, recent=recent)
        events = flagged_events(lake, parts, found) if found.height else _no_events()
        found = _attach_events(found, events)
        frames.append(("model", found, events))

    if use_rules:
        if rules_available():
            rfound, revents, result.rules = rule_findings(
                lake,
                start,
                end,
                window=window,
                rule_files=rule_files,
                disabled=disabled_rules,
                enabled=enabled_rules,
                parts=parts,
                cluster=cluster,
                now=now,
            )
            frames.append(("rules", rfound, revents))
        else:
            if rule_files:
                raise ScoringError("--rules given but this installation has no rules engine yet")
            result.rules = "not available"

    for kind, found, events in frames:
        if write:
            result.written[kind] = findings_store.write_range(lake, kind, start, end, found, events)
    if frames:
        result.findings = findings_store.sort_findings(
            pl.concat([f for _, f, _ in frames], how="vertical")
        )
        result.events = pl.concat([e for _, _, e in frames], how="vertical")
    return result


def model_findings(
    windows: pl.DataFrame,
    model: Model,
    *,
    now: datetime,
    recent: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One finding per window scoring at or above the model's threshold (no events yet)."""
    if windows.is_empty():
        return empty_findings()
    feats = finish_features(windows, model.baseline, recent=recent)
    return findings_from_scores(feats, model.score(feats), model, now=now)


def findings_from_scores(
    feats: pl.DataFrame,
    scores: np.ndarray,
    model: Model,
    *,
    now: datetime,
    cold_start: bool = False,
    loo_fold: timedelta | None = None,
) -> pl.DataFrame:
    """Findings for the feature rows whose score reaches the threshold, with reasons."""
    flagged_idx = np.flatnonzero(scores >= model.threshold)
    if flagged_idx.size == 0:
        return empty_findings()
    rows = feats[flagged_idx]
    flagged_scores = scores[flagged_idx]
    severities = model.severity(flagged_scores)
    fold_tails = tail_counts(feats, fold=loo_fold) if loo_fold is not None else None
    explanations = explain_mod.explain(
        rows, model.baseline, loo_fold=loo_fold, fold_tails=fold_tails
    )
    reasons = [[explain_mod.sentence(i) for i in items] for items in explanations]
    titles = [explain_mod.title(items) for items in explanations]
    top = [
        [{k: i[k] for k in ("name", "value", "baseline", "population")} for i in items]
        for items in explanations
    ]
    df = rows.select("cluster", "principal", "principal_kind", "window_start", "window_end")
    df = df.with_columns(
        pl.lit(f"model:{model.backend}").alias("detector"),
        pl.Series("severity", severities, dtype=pl.String),
        pl.Series("severity_rank", [SEVERITIES.index(s) for s in severities], dtype=pl.Int8),
        pl.Series("score", flagged_scores, dtype=pl.Float64),
        pl.lit(model.threshold, pl.Float64).alias("threshold"),
        pl.Series("title", titles, dtype=pl.String),
        pl.Series("reasons", reasons, dtype=pl.List(pl.String)),
        pl.Series("top_features", top, dtype=FINDINGS_COLUMNS["top_features"]),
        pl.lit(None, pl.String).alias("tactic"),
        pl.lit(None, pl.String).alias("technique"),
        pl.lit(0, pl.Int64).alias("event_count"),
        pl.lit(None, pl.List(pl.String)).alias("audit_ids"),
        pl.lit(now, FINDINGS_COLUMNS["created_at"]).alias("created_at"),
        pl.lit(model.version).alias("model_version"),
        pl.lit(cold_start).alias("cold_start"),
        pl.lit(None, pl.String).alias("finding_id"),
    )
    return with_finding_ids(df.select(list(FINDINGS_COLUMNS)))


def _no_events() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDINGS_EVENTS_COLUMNS)


def _parts_for(parts: list[Partition], found: pl.DataFrame) -> list[Partition]:
    """The hour partitions that overlap any finding's window (and cluster)."""
    spans = found.select("cluster", "window_start", "window_end").unique().rows()
    keep = []
    for part in parts:
        c, date, hour = part
        h0 = datetime.strptime(f"{date} {hour}", "%Y-%m-%d %H").replace(tzinfo=UTC)
        h1 = h0 + timedelta(hours=1)
        if any(c == fc and ws < h1 and we > h0 for fc, ws, we in spans):
            keep.append(part)
    return keep


def flagged_events(lake: Lake, parts: list[Partition], found: pl.DataFrame) -> pl.DataFrame:
    """The counted events (one per request) of each flagged window, with ``finding_id``."""
    keys = found.select("finding_id", "cluster", "principal", "window_start", "window_end")
    lf = lake.scan_partitions(_parts_for(parts, found)).filter(
        pl.col("principal").is_in(keys["principal"].unique().implode())
    )
    events = (
        request_rows(lf, columns=list(CANONICAL_COLUMNS))
        .join(keys.lazy(), on=["cluster", "principal"], how="inner")
        .filter(
            (pl.col("event_time") >= pl.col("window_start"))
            & (pl.col("event_time") < pl.col("window_end"))
        )
        .sort("finding_id", "event_time", "audit_id")
        .collect()
    )
    return events.select(list(FINDINGS_EVENTS_COLUMNS))


def _attach_events(found: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Fill ``event_count``/``audit_ids`` and cap stored events per finding."""
    if found.is_empty():
        return found
    per = events.group_by("finding_id").agg(
        pl.len().cast(pl.Int64).alias("_n"),
        pl.col("audit_id").head(MAX_EVENTS_PER_FINDING).alias("_ids"),
    )
    return (
        found.join(per, on="finding_id", how="left")
        .with_columns(
            pl.col("_n").fill_null(0).alias("event_count"),
            pl.col("_ids").fill_null(pl.lit([], pl.List(pl.String))).alias("audit_ids"),
        )
        .select(list(FINDINGS_COLUMNS))
    )


def rule_findings(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    window: timedelta,
    rule_files: list[str] | None,
    disabled: list[str] | None,
    parts: list[Partition],
    enabled: list[str] | None = None,
    cluster: str | None,
    now: datetime,
) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """Run the rules engine over the range; findings and their events (canonical rows)."""
    from detector import rules

    try:
        ruleset = rules.load_ruleset(
            extra_files=rule_files or None, disabled=disabled or None, enabled=enabled or None
        )
    except rules.RuleError as exc:
        raise ScoringError(str(exc)) from None
    history = (
        lake.scan_events(start - RULES_HISTORY, start, cluster=cluster)
        if ruleset.needs_history
        else None
    )
    result = rules.evaluate_rules(
        lake.scan_events(start, end, cluster=cluster),
        ruleset,
        window=window,
        history=history,
        now=now,
    )
    found = result.findings.select(list(FINDINGS_COLUMNS)).filter(
        (pl.col("window_start") >= start) & (pl.col("window_start") < end)
    )
    if found.is_empty():
        return empty_findings(), _no_events(), _rule_count(ruleset)
    found = found.with_columns(pl.col("created_at").fill_null(now))
    links = result.events.select("finding_id", "audit_id", "stage").filter(
        pl.col("finding_id").is_in(found["finding_id"].implode())
    )
    events = (
        lake.scan_partitions(_parts_for(parts, found))
        .filter(pl.col("audit_id").is_in(links["audit_id"].unique().implode()))
        .join(links.lazy(), on=["audit_id", "stage"], how="inner")
        .unique(["finding_id", "audit_id", "stage"], keep="first")
        .sort("finding_id", "event_time", "audit_id")
        .collect()
        .select(list(FINDINGS_EVENTS_COLUMNS))
    )
    found = found.with_columns(
        pl.col("event_count").fill_null(pl.col("audit_ids").list.len().cast(pl.Int64))
    )
    return found, events, _rule_count(ruleset)


def _rule_count(ruleset: Any) -> str:
    return f"{len(ruleset.enabled_rules)} rules"


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")
