"""Scoring: a lake time range -> one read -> model and rules -> findings and their events.

:func:`score_range` reads the range **once** (:func:`detector.detect.scan.read_range`) into
the columns the window features, the rules (``RuleSet.columns_needed()``, all canonical
columns when the rules engine does not say) and the flagged-event lookup need. The model's
windows, the rules and the events behind every finding come from that frame. Reads of other
ranges: the rules' history (the days before, when a rule compares with the past or counts
a session at the first stage its log records), the values principals used in the hours
before the range (novelty memory), and, when the frame lacks some canonical columns, those
columns for the flagged events only.

The model and the rules share nothing but that frame, so they run side by side: the rules
(and, before the frame is read, their history) on a second thread, the model on the
caller's; polars and numpy release the GIL, and their results are joined in a fixed order.

A range longer than a partition's slice (a day, with 10-minute windows) is read a
(cluster, day) partition at a time instead, as ``--executor ray`` reads it
(:mod:`detector.detect.partitioned`), so memory stays bounded however long the range; the
findings are the same either way.

Findings are filed in the lake unless asked not to, replacing what an earlier run wrote for
the same windows (see :mod:`detector.lake.findings`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from detector import rules
from detector.detect.executor import Executor, LocalExecutor, is_local, partition_span
from detector.detect.history import HistoryCache, rules_history
from detector.detect.scan import Progress, frame_windows, read_range, recent_values
from detector.detect.train import MIN_TRAIN_WINDOWS, ScoringError, fit
from detector.events.schema import CANONICAL_COLUMNS, COPY_KEY, EVENT_KEY
from detector.features import (
    DEFAULT_WINDOW,
    INPUT_COLUMNS,
    align,
    check_window,
    finish_features,
    request_rows,
    tail_counts,
    unseen_principals,
)
from detector.lake import findings as findings_store
from detector.lake.events import Lake, Partition
from detector.lake.findings import Rescored
from detector.lake.findings_schema import (
    FINDINGS_COLUMNS,
    FINDINGS_EVENTS_COLUMNS,
    MAX_EVENTS_PER_FINDING,
    SEVERITIES,
    empty_findings,
    with_finding_ids,
)
from detector.model import explain as explain_mod
from detector.model import volume
from detector.model.storage import DEFAULT_ALERT_RATE, Model

log = logging.getLogger(__name__)

#: How far before a scored range (but after the training range) a value counts as already
#: seen for novelty: a new address used all afternoon is new once, not once per hourly run.
NOVELTY_MEMORY = timedelta(hours=24)
#: A model older than this relative to the end of the scored range is stale: warned about.
MAX_MODEL_AGE = timedelta(days=7)
#: Columns the flagged-event lookup needs to find a finding's events in the frame.
LOOKUP_COLUMNS = (
    "cluster",
    "principal",
    "event_time",
    "received_time",
    "audit_id",
    "stage",
    "verb",
    "subresource",
)


@dataclass(frozen=True)
class ScoreOptions:
    """What a scoring run does (the flags of ``detect score``).

    ``fit_on_window``: fit a model on the range itself (cold start, findings marked so).
    ``rule_files``/``disabled_rules``/``enabled_rules``: passed to ``rules.load_ruleset``.
    ``window``: feature window when no saved model sets it. ``strict``: refuse to score
    with a stale model or one trained on other clusters instead of warning.
    """

    use_model: bool = True
    use_rules: bool = True
    fit_on_window: bool = False
    rule_files: tuple[str, ...] = ()
    disabled_rules: tuple[str, ...] = ()
    enabled_rules: tuple[str, ...] = ()
    window: timedelta | None = None
    seed: int | None = 0
    alert_rate: float = DEFAULT_ALERT_RATE
    cluster: str | None = None
    write: bool = True
    strict: bool = False
    now: datetime | None = None
    #: a rule set loaded once by the caller (``detect watch`` per batch); None: load it here
    ruleset: Any = None
    #: read the range a (cluster, day) partition at a time, as on Ray, rather than in one
    #: frame; None: when the range is longer than a partition's slice (see score_range)
    by_partition: bool | None = None
    #: the rules' history hours kept between runs (``detect watch``, batch after batch)
    history_cache: HistoryCache | None = None


@dataclass
class ScoreResult:
    """What a scoring run found (and wrote)."""

    start: datetime
    end: datetime
    findings: pl.DataFrame
    events: pl.DataFrame
    windows: int = 0
    requests: int = 0
    events_read: int = 0
    model_version: str | None = None
    cold_start: bool = False
    rules: str = "not run"  # "not run" or "<n> rules"
    warnings: list[str] = field(default_factory=list)
    written: dict[str, Any] = field(default_factory=dict)
    #: what the findings written replaced (incidents withdraw what is no longer found)
    rescored: list[Rescored] = field(default_factory=list)


def _no_events() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDINGS_EVENTS_COLUMNS)


def load_rules(options: ScoreOptions) -> Any:
    """The rule set of a run; a bad rules file is a :class:`ScoringError` (usage)."""
    try:
        return rules.load_ruleset(
            extra_files=list(options.rule_files) or None,
            disabled=list(options.disabled_rules) or None,
            enabled=list(options.enabled_rules) or None,
        )
    except rules.RuleError as exc:
        raise ScoringError(str(exc)) from None


def frame_columns(ruleset: Any | None, *, use_model: bool) -> set[str]:
    """The columns the run's one read must hold (see module docstring)."""
    cols = set(LOOKUP_COLUMNS)
    if use_model:
        cols |= set(INPUT_COLUMNS)
    if ruleset is not None:
        needed = getattr(ruleset, "columns_needed", None)
        cols |= set(needed()) if callable(needed) else set(CANONICAL_COLUMNS)
    return cols


def score_range(
    lake: Lake,
    start: datetime,
    end: datetime,
    *,
    model: Model | None,
    options: ScoreOptions | None = None,
    progress: Progress = None,
    executor: Executor | None = None,
) -> ScoreResult:
    """Findings for ``[start, end)`` widened to whole windows (see module docstring).

    With a non-local ``executor`` the events are read per partition where it runs
    (:mod:`detector.detect.partitioned`) and only window rows and findings come back; the
    findings are the same. A local run does the same, one partition after the other, for
    a range longer than a partition's slice (a day, with 10-minute windows): memory then
    follows a day of events (and the rules' candidates), not the range, at about a quarter
    more time than one read.
    """
    opts = options or ScoreOptions()
    now = opts.now or datetime.now(UTC)
    use_saved = opts.use_model and not opts.fit_on_window
    if use_saved and model is None:
        raise ScoringError("no model given")
    window = check_window(
        model.window if use_saved and model is not None else (opts.window or DEFAULT_WINDOW)
    )
    start, end = align(start, end, window)
    result = ScoreResult(start=start, end=end, findings=empty_findings(), events=_no_events())
    ruleset = (opts.ruleset or load_rules(opts)) if opts.use_rules else None

    columns = frame_columns(ruleset, use_model=opts.use_model)
    run = _Run(lake, start, end, window, columns, ruleset, model, opts, now, result, progress)
    by_partition = opts.by_partition
    if by_partition is None:
        by_partition = (end - start).total_seconds() > partition_span(window)
    if is_local(executor) and not by_partition:
        found, events = _local_findings(run)
    else:  # window rows per (cluster, day) on the executor; no frame on the driver
        found, events = _remote_findings(run, executor or LocalExecutor())
    if ruleset is not None:
        result.rules = f"{len(ruleset.enabled_rules)} rules"
    for kind, df, links in found:
        ids = links["finding_id"].unique().implode()
        kind_events = events.filter(pl.col("finding_id").is_in(ids))
        df = _attach_events(df, kind_events)
        if opts.write:
            result.written[kind] = findings_store.write_range(
                lake, kind, start, end, df, kind_events, cluster=opts.cluster
            )
            result.rescored.append(Rescored(kind, start, end, opts.cluster))
        found_df = df
        result.findings = (
            found_df if result.findings.is_empty() else pl.concat([result.findings, found_df])
        )
    if found:
        result.findings = findings_store.sort_findings(result.findings)
        result.events = events
    if progress:
        progress(2, 2)
    return result


@dataclass(frozen=True, eq=False)
class _Run:
    """One scoring run's inputs, fixed once the range is aligned, for the steps doing it."""

    lake: Lake
    start: datetime
    end: datetime
    window: timedelta
    columns: set[str]
    ruleset: Any
    model: Model | None
    opts: ScoreOptions
    now: datetime
    result: ScoreResult
    progress: Progress


def _local_findings(
    run: _Run,
) -> tuple[list[tuple[str, pl.DataFrame, pl.DataFrame]], pl.DataFrame]:
    """(kind, findings, links) per detector and the flagged events, from one read here.

    The model and the rules only read the frame: the rules run on a second thread while
    the model scores (polars and numpy release the GIL), and their results are joined in a
    fixed order, so the findings are the same as one after the other. That thread first
    reads the rules' history, while this one reads the range.
    """
    lake, start, end, window, opts = run.lake, run.start, run.end, run.window, run.opts
    ruleset, result, progress = run.ruleset, run.result, run.progress
    found: list[tuple[str, pl.DataFrame, pl.DataFrame]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rules") as pool:
        history = (
            pool.submit(
                rules_history, lake, ruleset, start, window, opts.cluster, opts.history_cache
            )
            if ruleset is not None
            else None
        )
        parts = lake.partitions(start, end, cluster=opts.cluster)
        frame = read_range(lake, parts, start, end, columns=run.columns)
        result.events_read = frame.height
        if progress:
            progress(1, 2)

        def rules_branch() -> tuple[pl.DataFrame, pl.DataFrame]:
            assert history is not None
            return rule_findings(
                frame,
                lake,
                ruleset,
                start,
                end,
                window=window,
                cluster=opts.cluster,
                now=run.now,
                history=history.result(),
            )

        pending = pool.submit(rules_branch) if ruleset is not None else None
        if opts.use_model:
            windows = frame_windows(frame, start, end, window=window)
            clusters = frame.select("cluster").unique()
            mfound = _model_branch(run, windows, clusters)
            found.append(("model", mfound, model_links(frame, mfound)))
        if pending is not None:
            rfound, rlinks = pending.result()
            found.append(("rules", rfound, rlinks))
    return found, flagged_events(lake, parts, frame, [links for _, _, links in found])


def _remote_findings(
    run: _Run, executor: Executor
) -> tuple[list[tuple[str, pl.DataFrame, pl.DataFrame]], pl.DataFrame]:
    """As :func:`_local_findings`, with the events read per partition on ``executor``."""
    from detector.detect import partitioned  # pyarrow: only for remote executors

    lake, start, end, window, opts = run.lake, run.start, run.end, run.window, run.opts
    ruleset, result, progress = run.ruleset, run.result, run.progress

    windows, result.events_read, names = partitioned.windows(
        lake, start, end, window=window, cluster=opts.cluster, executor=executor
    )
    clusters = pl.DataFrame({"cluster": names}, schema={"cluster": pl.String})
    if progress:
        progress(1, 2)
    found: list[tuple[str, pl.DataFrame, pl.DataFrame]] = []
    mfound = None
    if opts.use_model:
        mfound = _model_branch(run, windows, clusters)
    rfound, rlinks, mlinks, events = partitioned.findings_by_cluster(
        lake,
        start,
        end,
        clusters=clusters["cluster"].to_list(),
        cluster=opts.cluster,
        columns=run.columns,
        ruleset=ruleset,
        window=window,
        now=run.now,
        model_found=mfound,
        executor=executor,
    )
    if mfound is not None:
        found.append(("model", mfound, mlinks if mlinks is not None else _no_links()))
    if ruleset is not None:
        found.append(
            (
                "rules",
                rfound if rfound is not None else empty_findings(),
                rlinks if rlinks is not None else _no_links(),
            )
        )
    events = (
        _no_events() if events.is_empty() else events.sort("finding_id", "event_time", "audit_id")
    )
    return found, events


def _model_branch(run: _Run, windows: pl.DataFrame, clusters: pl.DataFrame) -> pl.DataFrame:
    """The model's findings over the range's window rows (no events yet).

    Fills the model's part of ``result``: windows, requests, version, warnings.
    """
    lake, model, window, start, end = run.lake, run.model, run.window, run.start, run.end
    opts, now, result = run.opts, run.now, run.result
    result.windows = windows.height
    result.requests = int(windows["requests"].sum() or 0)
    if opts.fit_on_window:
        result.cold_start = True
        result.model_version = "cold-start"
        return _cold_start(windows, window, start, end, opts, now)
    assert model is not None
    result.warnings += model_warnings(model, clusters, start, end)
    if result.warnings and opts.strict:
        raise ScoringError(f"{result.warnings[0]} (--strict)")
    for text in result.warnings:
        log.warning(text)
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
            cluster=opts.cluster,
        )
    return model_findings(windows, model, now=now, recent=recent)


def model_warnings(model: Model, frame: pl.DataFrame, start: datetime, end: datetime) -> list[str]:
    """Why a model may not fit the scored range: stale, or trained on other clusters.

    ``frame``: any frame with a ``cluster`` column naming the clusters scored.
    """
    out = []
    until = model.trained_until
    if until is not None and end - until > MAX_MODEL_AGE:
        age = (end - until).total_seconds() / 86_400
        out.append(
            f"model {model.version} was trained on data ending {until:%Y-%m-%d %H:%M} UTC, "
            f"{age:.0f} days before the end of the scored range: retrain with `detect train`"
        )
    trained = set(model.training.get("clusters") or ())
    scored = set(frame["cluster"].unique().drop_nulls().to_list()) if frame.height else set()
    other = sorted(scored - trained)
    if trained and other:
        out.append(
            f"model {model.version} was trained on cluster(s) {', '.join(sorted(trained))}, "
            f"not on {', '.join(other)} scored here: its baseline knows none of their principals"
        )
    return out


def _cold_start(
    windows: pl.DataFrame,
    window: timedelta,
    start: datetime,
    end: datetime,
    opts: ScoreOptions,
    now: datetime,
) -> pl.DataFrame:
    """Fit on the range itself; each part judged against the rest (cross-fitting)."""
    if windows.height < MIN_TRAIN_WINDOWS:
        raise ScoringError(
            f"--fit-on-window needs at least {MIN_TRAIN_WINDOWS} principal windows in "
            f"the range, found {windows.height}: widen --since"
        )
    fitted = fit(
        windows, window=window, start=start, end=end, alert_rate=opts.alert_rate, seed=opts.seed
    )
    model = fitted.model.named("cold-start")
    return findings_from_scores(
        fitted.rows, fitted.scores, model, now=now, cold_start=True, loo_fold=fitted.fold
    )


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
    """Findings for the feature rows whose score reaches the threshold, and the request
    floods the score ranks too low (:mod:`detector.model.volume`), with reasons."""
    flood = volume.flooded(feats, model.baseline).to_numpy()
    flagged_idx = np.flatnonzero((scores >= model.threshold) | flood)
    if flagged_idx.size == 0:
        return empty_findings()
    rows = feats[flagged_idx]
    flagged_scores = scores[flagged_idx]
    severities = model.severity(np.maximum(flagged_scores, model.threshold))
    floods = flood[flagged_idx]
    least = SEVERITIES.index(volume.SEVERITY)
    severities = [
        SEVERITIES[max(SEVERITIES.index(s), least)] if f else s
        for s, f in zip(severities, floods, strict=True)
    ]
    fold_tails = tail_counts(feats, fold=loo_fold) if loo_fold is not None else None
    explanations = explain_mod.explain(
        rows, model.baseline, loo_fold=loo_fold, fold_tails=fold_tails, fitted=feats
    )
    reasons = [[explain_mod.sentence(i) for i in items] for items in explanations]
    had_usual = volume.known(rows, model.baseline).to_list()
    for i in np.flatnonzero(floods):
        row = rows.row(int(i), named=True)
        vs_usual = row["requests_vs_usual"] if had_usual[i] else None
        said = volume.reason(row["requests"], vs_usual, model.baseline)
        reasons[i] = [said, *reasons[i]][:5]  # a finding says at most 5 things (explain)
    titles = [explain_mod.title(items) for items in explanations]
    attack = [explain_mod.attack(items) for items in explanations]
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
        pl.Series("tactic", [a[0] for a in attack], dtype=pl.String),
        pl.Series("technique", [a[1] for a in attack], dtype=pl.String),
        pl.lit(0, pl.Int64).alias("event_count"),
        pl.lit(None, pl.List(pl.String)).alias("audit_ids"),
        pl.lit(now, FINDINGS_COLUMNS["created_at"]).alias("created_at"),
        pl.lit(model.version).alias("model_version"),
        pl.lit(cold_start).alias("cold_start"),
        pl.lit(None, pl.String).alias("finding_id"),
    )
    return with_finding_ids(df.select(list(FINDINGS_COLUMNS)))


# --------------------------------------------------------------------------- rules
def rule_findings(
    frame: pl.DataFrame,
    lake: Lake,
    ruleset: Any,
    start: datetime,
    end: datetime,
    *,
    window: timedelta,
    cluster: str | None,
    now: datetime,
    history: Any = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rules over the run's frame: findings in the range and their (finding, event) links.

    ``history``: the rules' history read already (:func:`rules_history`); None: read here.
    """
    if history is None:
        history = rules_history(lake, ruleset, start, window, cluster)
    result = rules.evaluate_rules(frame, ruleset, window=window, history=history, now=now)
    found = result.findings.select(list(FINDINGS_COLUMNS)).filter(
        (pl.col("window_start") >= start) & (pl.col("window_start") < end)
    )
    if found.is_empty():
        return empty_findings(), _no_links()
    found = found.with_columns(
        pl.col("created_at").fill_null(now),
        pl.col("event_count").fill_null(pl.col("audit_ids").list.len().cast(pl.Int64)),
    )
    links = result.events.select("finding_id", "audit_id", "stage").filter(
        pl.col("finding_id").is_in(found["finding_id"].implode())
    )
    return found, links.unique()


# --------------------------------------------------------------------------- events
def _no_links() -> pl.DataFrame:
    return pl.DataFrame(schema={"finding_id": pl.String, "audit_id": pl.String, "stage": pl.String})


def model_links(frame: pl.DataFrame, found: pl.DataFrame) -> pl.DataFrame:
    """(finding_id, audit_id, stage) of the counted events (one per request) of each window."""
    if found.is_empty():
        return _no_links()
    keys = found.select("finding_id", "cluster", "principal", "window_start", "window_end")
    lf = frame.lazy().filter(pl.col("principal").is_in(keys["principal"].unique().implode()))
    return (
        request_rows(lf, columns=list(LOOKUP_COLUMNS), frame=frame)
        .join(keys.lazy(), on=["cluster", "principal"], how="inner")
        .filter(
            (pl.col("event_time") >= pl.col("window_start"))
            & (pl.col("event_time") < pl.col("window_end"))
        )
        .select("finding_id", "audit_id", "stage")
        .collect()
    )


def flagged_events(
    lake: Lake, parts: list[Partition], frame: pl.DataFrame, links: list[pl.DataFrame]
) -> pl.DataFrame:
    """The canonical rows behind every finding of the run, with ``finding_id``.

    Rows come from the run's frame; columns the frame does not hold (when the rules need
    only some) are read for the flagged events alone, from the hours that hold them.
    """
    all_links = pl.concat(links) if links else _no_links()
    if all_links.is_empty():
        return _no_events()
    key = list(EVENT_KEY)
    # A cheap membership test first: the join then hashes the flagged rows, not the range.
    ids = all_links["audit_id"].unique().implode()
    # Links name (audit_id, stage); a client that reused an audit ID has rows that differ
    # in stage time only (COPY_KEY), and each of them is shown: keeping the first showed
    # the harmless request the ID came from instead of the exec that fired (review).
    rows = (
        frame.lazy()
        .filter(pl.col("audit_id").is_in(ids))
        .join(all_links.lazy(), on=key, how="inner")
        .unique(["finding_id", *COPY_KEY], keep="first")
        .collect()
    )
    missing = [c for c in CANONICAL_COLUMNS if c not in rows.columns]
    if missing:
        rest = _read_columns_of(lake, parts, rows, missing)
        rows = rows.join(rest, on=["cluster", *COPY_KEY], how="left")
    return rows.select(list(FINDINGS_EVENTS_COLUMNS)).sort("finding_id", "event_time", "audit_id")


def _read_columns_of(
    lake: Lake, parts: list[Partition], rows: pl.DataFrame, columns: list[str]
) -> pl.DataFrame:
    """``columns`` of the events in ``rows`` (by cluster and copy key), from their hours."""
    hours = set(
        rows.select(
            "cluster",
            pl.col("event_time").dt.strftime("%Y-%m-%d").alias("d"),
            pl.col("event_time").dt.strftime("%H").alias("h"),
        )
        .unique()
        .rows()
    )
    wanted = [p for p in parts if p in hours]
    keys = rows.select("cluster", *COPY_KEY).unique()
    return (
        lake.scan_partitions(wanted)
        .filter(pl.col("audit_id").is_in(keys["audit_id"].unique().implode()))
        .select("cluster", *COPY_KEY, *columns)
        .join(keys.lazy(), on=["cluster", *COPY_KEY], how="semi")
        .unique(["cluster", *COPY_KEY], keep="first")
        .collect()
    )


def _attach_events(found: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Fill ``event_count``/``audit_ids`` and cap stored events per finding."""
    if found.is_empty():
        return found
    per = events.group_by("finding_id").agg(
        pl.len().cast(pl.Int64).alias("_n"),
        pl.col("audit_id").head(MAX_EVENTS_PER_FINDING).alias("_ids"),
    )
    model = pl.col("detector").str.starts_with("model:")
    return (
        found.join(per, on="finding_id", how="left")
        .with_columns(
            pl.when(model | pl.col("event_count").is_null())
            .then(pl.col("_n").fill_null(0))
            .otherwise(pl.col("event_count"))
            .alias("event_count"),
            pl.when(model | pl.col("audit_ids").is_null())
            .then(pl.col("_ids").fill_null(pl.lit([], pl.List(pl.String))))
            .otherwise(pl.col("audit_ids"))
            .alias("audit_ids"),
        )
        .select(list(FINDINGS_COLUMNS))
    )
