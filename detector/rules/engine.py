"""Evaluate a :class:`RuleSet` over canonical events and group the hits into findings.

Evaluation is staged so a day of events costs one cheap pass: every event is tested
against each rule's gate, the regex-free terms of its condition (verb, resource, stage,
codes, principal kind, source-address class), with the string columns as categoricals;
only the candidates (typically a few percent) go further, and for each rule only the rows
its own gate let through get its column prefilter (name and path regexes), its full
condition (JSON-body regexes) and its exceptions. All of it is polars expressions.

Findings are grouped: one per rule, per principal (or source IP for rules that count per
IP), per window (``floor(event_time, window)``), carrying the count and the exact audit IDs,
so a burst of 200 denied requests is one finding an analyst reads, not 200. Each request
counts once: an event is logged once per stage, and a rule lists the stages it counts in
order of preference (exec sessions at ResponseStarted, most writes at ResponseComplete).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import polars as pl

from detector.events.schema import CANONICAL_COLUMNS
from detector.lake.findings_schema import (
    FINDINGS_COLUMNS,
    SEVERITIES,
    TOP_FEATURE,
    empty_findings,
    with_finding_ids,
)
from detector.rules.condition import DERIVED_FIELDS, resolve_field
from detector.rules.loader import ENGINE_COLUMNS, STAGES, Rule, RuleSet
from detector.rules.narrate import KEYS as _KEYS
from detector.rules.narrate import reasons, threshold_sentence, who

#: A frame, eager or lazy: helpers that only add columns work on both.
_F = TypeVar("_F", pl.DataFrame, pl.LazyFrame)

LINK_COLUMNS: dict[str, pl.DataType] = {
    "finding_id": pl.String(),
    "audit_id": pl.String(),
    "stage": pl.String(),
}


@dataclass
class RuleStats:
    """How far one rule's events got, for ``detect rules test``'s "why (not)"."""

    events: int = 0
    in_stages: int = 0
    condition: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # distinct requests left after exceptions and stage de-duplication
    findings: int = 0
    best_value: float | None = None  # highest per-window value (threshold rules)
    best_threshold: float | None = None


@dataclass
class RuleResult:
    """Findings (FINDINGS_COLUMNS) and the events behind them (finding_id, audit_id, stage)."""

    findings: pl.DataFrame
    events: pl.DataFrame
    stats: dict[str, RuleStats] = field(default_factory=dict)


def empty_links() -> pl.DataFrame:
    return pl.DataFrame(schema=LINK_COLUMNS)


# --------------------------------------------------------------------------- helpers


def prepare_events(events: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """Canonical columns in any order; missing ones are added as typed nulls.

    Hand-built frames in tests and older lake files may lack a column a rule names; a
    missing column then simply never matches instead of failing the whole run.
    """
    lf = events.lazy() if isinstance(events, pl.DataFrame) else events
    schema = lf.collect_schema()
    missing = [
        pl.lit(None, dtype).alias(c) for c, dtype in CANONICAL_COLUMNS.items() if c not in schema
    ]
    if "cluster" not in schema:
        missing = [m for m in missing if m.meta.output_name() != "cluster"]
        missing.append(pl.lit("default", pl.String).alias("cluster"))
    return lf.with_columns(missing) if missing else lf


def _every(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds <= 0:
        raise ValueError(f"window must be positive, not {window}")
    return f"{seconds}s"


#: Which of the four audit stages a frame holds, as flags named after them: one row per
#: cluster, since each cluster's audit policy says what its log records. (A flag per
#: stage, not the column's distinct values: they are 5x cheaper over a week read an hour
#: at a time, and the column holds whatever text a log wrote there.)
_STAGES = tuple((pl.col("stage") == s).any().alias(s) for s in STAGES)
#: The cluster a row is of ("" for none), as the stages are keyed.
_CLUSTER = pl.col("cluster").fill_null("")

#: Per cluster, the audit stages its log was seen to record.
Stages = Mapping[str, frozenset[str]]


def _stages_of(rows: pl.DataFrame) -> dict[str, frozenset[str]]:
    """The stages flagged in rows of (``cluster``, :data:`_STAGES`)."""
    return {
        row["cluster"]: frozenset(s for s in STAGES if row[s]) for row in rows.iter_rows(named=True)
    }


def _merged(*maps: Stages) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for m in maps:
        for cluster, stages in m.items():
            out[cluster] = out.get(cluster, frozenset()) | stages
    return out


#: Per cluster, the first and last event of a baseline range.
Spans = Mapping[str, tuple[datetime, datetime]]

#: The least a baseline range must hold of a cluster, first event to last, to be that
#: cluster's baseline: a day (``detect train`` calls a shorter baseline thin). With less,
#: a new lake or cluster ("the first day"), threshold rules keep their absolute
#: threshold: an empty or minutes-long week is no one's usual, and ``detect watch``
#: (whose batches see the minutes before them) and ``detect score`` (whose range starts
#: where the lake does) must not judge the same window against different thresholds.
MIN_BASELINE = timedelta(days=1)


def _spans_of(rows: pl.DataFrame) -> dict[str, tuple[datetime, datetime]]:
    """The spans in rows of (``cluster``, ``lo``, ``hi``); clusters without events left out."""
    return {
        row["cluster"]: (row["lo"], row["hi"])
        for row in rows.iter_rows(named=True)
        if row["lo"] is not None and row["hi"] is not None
    }


def _joined(*maps: Spans) -> dict[str, tuple[datetime, datetime]]:
    out: dict[str, tuple[datetime, datetime]] = {}
    for m in maps:
        for cluster, (lo, hi) in m.items():
            old = out.get(cluster)
            out[cluster] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
    return out


def _baselined(history: History | None) -> frozenset[str]:
    """The clusters ``history`` is a baseline of (:data:`MIN_BASELINE`)."""
    if history is None:
        return frozenset()
    return frozenset(c for c, (lo, hi) in history.spans.items() if hi - lo >= MIN_BASELINE)


@dataclass(frozen=True)
class _Frame:
    """What a frame says about itself: where it starts and, per cluster, which stages its
    log records."""

    start: datetime | None
    stages: Stages


def _frame_facts(lf: pl.LazyFrame, recorded: Stages | None = None) -> _Frame:
    """Where ``lf`` starts, and the stages each cluster's log records: those in it, and
    ``recorded`` (those its history holds, the week before it)."""
    rows = (
        lf.group_by(_CLUSTER.alias("cluster"))
        .agg(pl.col("event_time").min().alias("start"), *_STAGES)
        .collect()
    )
    return _Frame(rows["start"].min(), _merged(_stages_of(rows), recorded or {}))  # type: ignore[arg-type]


def _carried_over(matched: pl.LazyFrame, stages: tuple[str, ...], facts: _Frame) -> pl.Expr:
    """Rows of requests already counted in an earlier range: leave them out.

    A long-running request (exec, port-forward) is logged when it opens and again when it
    closes, maybe in a later scoring range. When its cluster's log records the preferred
    stage at all, a later-stage row of a request received before the range began was
    counted with its first stage then. A log that never records that stage (filtered by
    the audit policy) counts the later stage instead, so the request is still found once.
    """
    clusters = sorted(c for c, seen in facts.stages.items() if stages[0] in seen)
    if facts.start is None or not clusters or "received_time" not in matched.collect_schema():
        return pl.lit(False)
    return (
        (pl.col("stage") != stages[0]).fill_null(True)
        & (pl.col("received_time") < facts.start).fill_null(False)
        & _CLUSTER.is_in(clusters)
    )


def _dedupe(
    matched: pl.LazyFrame, stages: tuple[str, ...], facts: _Frame | None = None
) -> pl.LazyFrame:
    """One row per request: the first of the rule's stages, in its order of preference.

    A request is its audit ID and the time it was received, which its stages share: the
    API server takes the ID from the client's ``Audit-ID`` header when one is sent, so
    by the ID alone 50 denied requests sent under one ID counted as one, under every
    threshold (found by review). Lazy, so that every rule's query runs in one
    :func:`polars.collect_all`.
    """
    if facts is not None and len(stages) > 1:
        matched = matched.filter(~_carried_over(matched, stages, facts))
    request = ["cluster", "_req"]
    if "received_time" in matched.collect_schema():
        request.append("received_time")
    rank = (
        pl.col("stage")
        .fill_null("ResponseComplete")
        .replace_strict({s: i for i, s in enumerate(stages)}, default=len(stages))
    )
    return (
        matched.with_row_index("_row")
        .with_columns(
            _rank=rank,
            _req=pl.coalesce(pl.col("audit_id"), pl.col("_row").cast(pl.String)),
        )
        .sort(["_rank", "event_time"])
        .unique(subset=request, keep="first", maintain_order=True)
        .drop("_row", "_rank", "_req")
    )


def _without_stand_ins(matched: pl.DataFrame, rule: Rule, facts: _Frame | None) -> pl.DataFrame:
    """A rule's matched rows without RequestReceived rows of clusters whose log records a
    later stage the rule counts.

    A RequestReceived row has no response: ``not_failed`` holds on it, so an exec refused
    with 403 (or of a pod that does not exist) matched at that stage while its
    ResponseComplete row, which says 403, did not, and was reported as a session that
    opened (found by review). Where the log records a later stage of the rule's, that row
    says how each request ended and is judged on its own, in this range or the next (a
    row-by-row look-up of the request missed a later row past the range's end, and
    ``detect watch``'s next batch). RequestReceived stands in only where the log records
    nothing later, and always for a rule that counts that stage alone.
    """
    later = set(rule.stages) - {"RequestReceived"}
    if facts is None or len(later) == len(rule.stages) or not later or matched.is_empty():
        return matched
    clusters = sorted(c for c, seen in facts.stages.items() if seen & later)
    if not clusters:
        return matched
    return matched.filter(~((pl.col("stage") == "RequestReceived") & _CLUSTER.is_in(clusters)))


def _group_key(rule: Rule) -> pl.Expr:
    t = rule.threshold
    if t is not None and t.by == "source_ip":
        return pl.col("source_ip").fill_null("unknown")
    return pl.coalesce(pl.col("principal"), pl.col("user_name"), pl.lit("system:anonymous"))


def _value(rule: Rule) -> pl.Expr:
    """What a rule's threshold counts in a group of keyed rows (:func:`_keyed`): distinct
    values, or requests (rows are requests already, :func:`_dedupe`; not distinct audit
    IDs, which a client can reuse)."""
    t = rule.threshold
    if t is not None and t.distinct:
        return pl.col("_distinct").drop_nulls().n_unique()
    return pl.len()


def _keyed(matched: _F, rule: Rule, every: str) -> _F:
    """Matched rows with their group key, window and (for distinct counts) the value."""
    extra = []
    t = rule.threshold
    if t is not None and t.distinct:
        extra.append(resolve_field(t.distinct).expr.alias("_distinct"))
    return matched.with_columns(
        _group_key(rule).alias("_key"),
        pl.col("event_time").dt.truncate(every).alias("window_start"),
        *extra,
    )


#: A request the API server checked and did not carry out (``kubectl ... --dry-run=server``,
#: Argo CD's server-side diff): the query's ``dryRun=All`` exactly, as the server takes it.
#: An escaped or misspelt one the server may read differently is not matched: such a
#: request is judged as a change, which errs towards an alert.
DRY_RUN = r"[?&]dryRun=All(?:&|$)"
#: What the server carries out as a dry run: a write to an object (or its status, scale or
#: ephemeral containers), through the registry that reads ``dryRun``. Reads ignore the
#: parameter, and a TokenRequest (``serviceaccounts/token``) mints its token whatever it
#: says: a finding on those stayed at info with ``?dryRun=All`` added (found by review).
DRY_RUN_VERBS = ("create", "update", "patch", "delete", "deletecollection")
DRY_RUN_SUBRESOURCES = ("status", "scale", "ephemeralcontainers")


def _dry_run() -> pl.Expr:
    """Whether a request was a dry run the server did not carry out."""
    sub = pl.col("subresource")
    return (
        pl.col("request_uri").str.contains(DRY_RUN)
        & pl.col("verb").is_in(DRY_RUN_VERBS)
        & (sub.is_null() | sub.is_in(DRY_RUN_SUBRESOURCES))
    ).fill_null(False)


#: The first reason of a finding made only of dry runs.
DRY_RUN_REASON = (
    "every request was a dry run (dryRun=All): the API server checked it and changed "
    "nothing, so this is a record, not an alert (a probe of what the caller may do)"
)


def _aggregate(keyed: pl.LazyFrame, rule: Rule) -> pl.LazyFrame:
    return keyed.group_by(_KEYS).agg(
        pl.len().cast(pl.Int64).alias("event_count"),  # requests (_dedupe), not distinct IDs
        pl.col("audit_id").sort_by("event_time").unique(maintain_order=True).alias("audit_ids"),
        pl.col("principal_kind").drop_nulls().first().alias("principal_kind"),
        who().drop_nulls().first().alias("_who"),
        _value(rule).cast(pl.Float64).alias("_value"),
        pl.col("principal").drop_nulls().unique().sort().alias("_principals"),
        _dry_run().all().alias("_dry_run"),
    )


def _usual(
    history: pl.DataFrame | None, rule: Rule, every: str, n_windows: int
) -> pl.DataFrame | None:
    """Each key's mean value per window over the baseline range (windows without hits = 0)."""
    if history is None:
        return None
    t = rule.threshold
    assert t is not None
    if history.is_empty():
        return pl.DataFrame(schema={"cluster": pl.String, "_key": pl.String, "_usual": pl.Float64})
    keyed = _keyed(history, rule, every)
    per_window = keyed.group_by(_KEYS).agg(_value(rule).cast(pl.Float64).alias("_v"))
    return per_window.group_by(["cluster", "_key"]).agg(
        (pl.col("_v").sum() / max(n_windows, 1)).alias("_usual")
    )


def _groups(
    keyed: pl.DataFrame,
    rule: Rule,
    usual: pl.DataFrame | None,
    baselined: frozenset[str] = frozenset(),
) -> pl.LazyFrame:
    """Every (key, window) group of one rule with its value and threshold (a lazy query).

    ``keyed``: the rule's counted requests with their group key and window (:func:`_keyed`).
    ``baselined``: the clusters the baseline range is a baseline of (:func:`_baselined`);
    the groups of the others (a new lake or cluster: an empty week) keep the absolute
    threshold.
    """
    groups = _aggregate(keyed.lazy(), rule)
    t = rule.threshold
    if t is None:
        return groups.with_columns(pl.lit(1.0).alias("threshold"))
    if _with_usual(rule, usual):
        assert usual is not None and t.baseline_factor is not None
        groups = groups.join(usual.lazy(), on=["cluster", "_key"], how="left").with_columns(
            pl.col("_usual").fill_null(0.0)
        )
        return groups.with_columns(
            pl.when(_CLUSTER.is_in(sorted(baselined)))
            .then(
                pl.max_horizontal(
                    pl.lit(float(t.baseline_min or 1)), pl.col("_usual") * t.baseline_factor
                )
            )
            .otherwise(pl.lit(float(t.value)))
            .alias("threshold")
        )
    return groups.with_columns(pl.lit(float(t.value)).alias("threshold"))


def _with_usual(rule: Rule, usual: pl.DataFrame | None) -> bool:
    t = rule.threshold
    return usual is not None and t is not None and t.uses_baseline


def _findings_for_rule(
    fired: pl.DataFrame,
    lines_by_key: pl.DataFrame,
    rule: Rule,
    window: timedelta,
    with_usual: bool,
    fingerprint: str,
    created: datetime,
) -> pl.LazyFrame:
    """The findings of one rule's groups that reached their threshold (a lazy query).

    ``lines_by_key``: the sentences of each fired group (:func:`narrate.reasons`). Lazy so
    that the queries of every rule run together (:func:`polars.collect_all`).
    """
    t = rule.threshold
    joined = fired.lazy().join(lines_by_key.lazy(), on=_KEYS, how="left")
    lines = pl.col("_lines")
    if t is not None:
        lines = pl.concat_list(threshold_sentence(rule, window, with_usual), pl.col("_lines"))
    kind = (
        pl.lit("source_ip") if t is not None and t.by == "source_ip" else pl.col("principal_kind")
    )
    # Only dry runs: a record at info (in the lake, never alerted), saying why.
    dry = pl.col("_dry_run")
    lines = pl.when(dry).then(pl.concat_list(pl.lit([DRY_RUN_REASON]), lines)).otherwise(lines)
    severity = pl.when(dry).then(pl.lit(SEVERITIES[0])).otherwise(pl.lit(rule.severity))
    rank = pl.when(dry).then(pl.lit(0, pl.Int8)).otherwise(pl.lit(rule.severity_rank, pl.Int8))
    findings = joined.select(
        pl.lit(None, pl.String).alias("finding_id"),
        pl.lit(rule.detector).alias("detector"),
        severity.alias("severity"),
        rank.alias("severity_rank"),
        pl.col("_value").alias("score"),
        pl.col("threshold").cast(pl.Float64),
        pl.col("cluster"),
        pl.col("_key").alias("principal"),
        kind.alias("principal_kind"),
        pl.col("window_start"),
        (pl.col("window_start") + window).alias("window_end"),
        pl.lit(rule.title).alias("title"),
        lines.alias("reasons"),
        pl.lit([], dtype=pl.List(TOP_FEATURE)).alias("top_features"),
        pl.lit(rule.tactic).alias("tactic"),
        pl.lit(rule.technique).alias("technique"),
        pl.col("event_count"),
        pl.col("audit_ids"),
        pl.lit(created).alias("created_at"),
        pl.lit(fingerprint).alias("model_version"),
        pl.lit(False).alias("cold_start"),
    )
    return findings.cast(FINDINGS_COLUMNS)  # type: ignore[arg-type]


#: A frame's first and last event times, as one row (``lo``, ``hi``).
_TIME_SPAN = (pl.col("event_time").min().alias("lo"), pl.col("event_time").max().alias("hi"))


def _span_windows(first: datetime | None, last: datetime | None, window: timedelta) -> int:
    if first is None or last is None:
        return 1
    return max(1, math.ceil((last - first) / window))


# --------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class History:
    """A baseline range as threshold rules use it: its candidate rows and its length.

    ``candidates``: the range's events that pass any baseline rule's prefilter (None when
    no enabled rule compares with a baseline); ``n_windows``: the range's span in windows.
    Read apart from the evaluation (:func:`read_history`) so a caller can read it while it
    reads the events themselves.
    """

    candidates: pl.DataFrame | None
    n_windows: int = 1
    #: per cluster, the audit stages the range holds: a log that records session starts
    #: there records them in the scored range too, even when that range holds none (see
    #: :func:`_carried_over`)
    stages: Stages = field(default_factory=dict)
    #: per cluster, its first and last event in the range: a cluster with less than
    #: :data:`MIN_BASELINE` there has no baseline
    spans: Spans = field(default_factory=dict)


def _baseline_rules(ruleset: RuleSet) -> list[Rule]:
    return [r for r in ruleset.enabled_rules if r.threshold and r.threshold.uses_baseline]


def _candidates_plan(hist_lf: pl.LazyFrame, baseline_rules: list[Rule]) -> pl.LazyFrame:
    """The rows of ``hist_lf`` any baseline rule's prefilter lets through.

    Only the columns those rules and the engine read: a week of events is scanned for a
    few hundred rows, and every other column would be decoded for nothing.
    """
    names = set(ENGINE_COLUMNS)
    for r in baseline_rules:
        names.update(r.prefilter_expr.meta.root_names())
        names.update(r.match.meta.root_names())
        if r.threshold is not None and r.threshold.distinct:
            names.update(resolve_field(r.threshold.distinct).expr.meta.root_names())
    columns = [c for c in hist_lf.collect_schema() if c in names]
    # prefilters are column-only: cheap even over 7 days
    candidates = hist_lf.filter(pl.any_horizontal([r.prefilter_expr for r in baseline_rules]))
    return candidates.select(columns)


@dataclass(frozen=True)
class HistorySlice:
    """A piece of a baseline range (an hour of the lake): its candidates and time span.

    Slices of the pieces of a range join into that range's :class:`History`
    (:func:`join_history`), so a caller that keeps them between runs (``detect watch``,
    batch after batch over a sliding week) reads again only the pieces that changed.
    """

    candidates: pl.DataFrame | None
    first: datetime | None
    last: datetime | None
    stages: Stages = field(default_factory=dict)
    spans: Spans = field(default_factory=dict)


def read_history_slices(
    pieces: Sequence[pl.LazyFrame | pl.DataFrame],
    ruleset: RuleSet,
    clusters: Sequence[str | None] | None = None,
) -> list[HistorySlice]:
    """Each piece of a baseline range read for ``ruleset``'s baseline rules.

    Time spans (and stages) and candidates are two passes: in one, polars would share each
    piece's scan between them and hold all of its rows (a week: 380 MB instead of 120 MB).
    Without baseline rules, only the first. ``clusters``: the one cluster each piece
    holds, when known (a lake partition), None for a piece that may hold several: its
    stages are then read per cluster, which costs 4x more over a week read an hour at a
    time.
    """
    baseline_rules = _baseline_rules(ruleset)
    frames = [prepare_events(piece) for piece in pieces]
    spans = pl.collect_all(
        [
            lf.group_by(_CLUSTER.alias("cluster")).agg(*_TIME_SPAN, *_STAGES)
            if one is None
            else lf.select(pl.lit(one).alias("cluster"), *_TIME_SPAN, *_STAGES)
            for lf, one in zip(frames, clusters or [None] * len(frames), strict=True)
        ]
    )
    if baseline_rules:
        candidates = pl.collect_all([_candidates_plan(lf, baseline_rules) for lf in frames])
    else:
        candidates = [None] * len(frames)
    return [
        HistorySlice(
            rows,
            span["lo"].min(),  # type: ignore[arg-type]
            span["hi"].max(),  # type: ignore[arg-type]
            _stages_of(span),
            _spans_of(span),
        )
        for rows, span in zip(candidates, spans, strict=True)
    ]


def join_history(slices: Sequence[HistorySlice], window: timedelta) -> History:
    """The :class:`History` of a range from the slices of its pieces (at least one)."""
    firsts = [s.first for s in slices if s.first is not None]
    lasts = [s.last for s in slices if s.last is not None]
    n_windows = _span_windows(min(firsts, default=None), max(lasts, default=None), window)
    rows = [s.candidates for s in slices if s.candidates is not None]
    return History(
        pl.concat(rows, how="vertical") if rows else None,
        n_windows,
        _merged(*(s.stages for s in slices)),
        _joined(*(s.spans for s in slices)),
    )


def read_history(
    history: pl.LazyFrame | pl.DataFrame, ruleset: RuleSet, *, window: timedelta
) -> History:
    """``history`` (a baseline range's events) read for ``ruleset`` (see :class:`History`)."""
    return join_history(read_history_slices([history], ruleset), window)


def evaluate_rules(
    events: pl.LazyFrame | pl.DataFrame,
    ruleset: RuleSet,
    *,
    window: timedelta = timedelta(minutes=10),
    history: pl.LazyFrame | pl.DataFrame | History | None = None,
    now: datetime | None = None,
    explain: bool = False,
) -> RuleResult:
    """Run every enabled rule over ``events``; findings in the findings schema.

    ``history`` is the canonical events of a baseline range before ``events`` (e.g. the
    previous 7 days): threshold rules with a ``baseline`` compare each key with its own
    usual there (read already when a :class:`History`). Without it they use their
    absolute threshold. ``explain`` adds per-rule
    counts (:class:`RuleStats`) for ``detect rules test``. The stages the history holds
    count as recorded by the log: a range of a window or two (``detect watch``, a cron
    run every ten minutes) may hold no session start although the log records them, and a
    session's close must not be counted again there.
    """
    created = now or datetime.now(UTC)
    rules = ruleset.enabled_rules
    every = _every(window)
    fingerprint = ruleset.fingerprint
    lf = prepare_events(events)
    stats: dict[str, RuleStats] = {}
    if explain:
        stats = _explain(lf, rules)
    if not rules:
        return RuleResult(empty_findings(), empty_links(), stats)
    # Rules with a cheap prefilter share one pass and one small in-memory candidate set; a
    # (user) rule made only of body tests gets its own streaming filter instead, so it never
    # pulls the whole range into memory.
    shared = [r for r in rules if r.has_prefilter]
    if shared:
        candidates, gmasks = _gate(lf, shared, in_memory=isinstance(events, pl.DataFrame))
    else:
        candidates = prepare_events(pl.DataFrame(schema=CANONICAL_COLUMNS)).collect()
        gmasks = pl.DataFrame()
    # Second pass on the candidates: for each rule, the rows its own gate let through
    # (masks kept from the first pass), then its prefilter (regexes on names and paths)
    # and full condition only on those.
    gate_of = {id(r): f"_g{i}" for i, r in enumerate(shared)}

    baseline_rules = _baseline_rules(ruleset)
    if history is not None and not isinstance(history, History):  # a baseline's events
        history = read_history(history, ruleset, window=window)
    hist_candidates = history.candidates if history is not None else None
    n_windows = history.n_windows if history is not None else 1
    # The clusters with a baseline (a day of events in the range, MIN_BASELINE): the
    # others, every one when the range is empty, keep the absolute thresholds.
    baselined = _baselined(history)

    multi = any(len(r.stages) > 1 for r in rules)
    facts = _frame_facts(lf, history.stages if history is not None else None) if multi else None
    # Each stage is one lazy query per rule, run together:
    # polars plans them once and spreads them over the cores. First the rows matching each
    # rule's condition; then, only for the rules that matched something (on most days
    # most match nothing, and each query costs milliseconds even on no rows), one row
    # per request with its group key.
    plans: list[pl.LazyFrame] = []
    planned: list[Rule] = []
    for rule in rules:
        if rule.has_prefilter:
            mask = gmasks[gate_of[id(rule)]]
            if not mask.any():
                # Nothing passed its gate: no query. Planning one costs milliseconds even
                # on no rows, and in a `detect watch` batch most rules' gates are empty
                # (that planning was two fifths of a day's replay).
                continue
            # The gate's mask is applied eagerly: left to the optimiser it would be merged
            # with the regexes below, which would then run on every candidate.
            own = candidates.filter(mask).lazy()
            plans.append(own.filter(rule.prefilter_expr & rule.match))
        else:
            plans.append(lf.filter(rule.match))
        planned.append(rule)
    matched = pl.collect_all(plans) if plans else []
    matched = [_without_stand_ins(m, r, facts) for r, m in zip(planned, matched, strict=True)]
    hit = [(rule, m) for rule, m in zip(planned, matched, strict=True) if not m.is_empty()]
    done = pl.collect_all(
        [_keyed(_dedupe(m.lazy(), rule.stages, facts), rule, every) for rule, m in hit]
    )

    counted: list[tuple[Rule, pl.DataFrame, bool]] = []  # (rule, keyed, with_usual)
    group_plans: list[pl.LazyFrame] = []
    for (rule, _), keyed in zip(hit, done, strict=True):
        if keyed.is_empty():
            continue
        usual = None
        if hist_candidates is not None and baselined and rule in baseline_rules:
            hist_matched = _dedupe(hist_candidates.lazy().filter(rule.match), rule.stages)
            usual = _usual(hist_matched.collect(), rule, every, n_windows)
        counted.append((rule, keyed, _with_usual(rule, usual)))
        group_plans.append(_groups(keyed, rule, usual, baselined))
    all_groups = pl.collect_all(group_plans)

    fired_rules: list[tuple[Rule, pl.DataFrame]] = []
    fired_groups: list[tuple[pl.DataFrame, bool]] = []
    for (rule, keyed, with_usual), groups in zip(counted, all_groups, strict=True):
        fired = groups.filter(pl.col("_value") >= pl.col("threshold"))
        if rule.id in stats:
            s = stats[rule.id]
            s.requests = keyed.height
            s.findings = fired.height
            if rule.threshold is not None and not groups.is_empty():
                best = groups.sort("_value", descending=True).row(0, named=True)
                s.best_value, s.best_threshold = best["_value"], best["threshold"]
        if not fired.is_empty():
            fired_rules.append((rule, keyed))
            fired_groups.append((fired, with_usual))
    # The sentences only for the requests of groups that fired, every rule in one pass.
    lines = reasons(
        [
            (rule, keyed.join(fired.select(_KEYS), on=_KEYS, how="semi"))
            for (rule, keyed), (fired, _) in zip(fired_rules, fired_groups, strict=True)
        ]
    )
    finding_frames = pl.collect_all(
        [
            _findings_for_rule(fired, lines_by_key, rule, window, with_usual, fingerprint, created)
            for (rule, _), (fired, with_usual), lines_by_key in zip(
                fired_rules, fired_groups, lines, strict=True
            )
        ]
    )
    if not finding_frames:
        return RuleResult(empty_findings(), empty_links(), stats)
    findings = with_finding_ids(pl.concat(finding_frames, how="vertical"))
    ids = findings.select(
        "finding_id", "detector", "cluster", pl.col("principal").alias("_key"), "window_start"
    )
    links = (
        pl.concat(
            [
                keyed.lazy()
                .with_columns(pl.lit(rule.detector).alias("detector"))
                .join(ids.lazy(), on=["detector", *_KEYS], how="inner")
                .select("finding_id", "audit_id", "stage")
                for rule, keyed in fired_rules
            ],
            how="vertical",
        )
        .cast(LINK_COLUMNS)  # type: ignore[arg-type]
        .collect()
    )
    findings = findings.sort(
        ["severity_rank", "window_start", "detector", "principal"],
        descending=[True, False, False, False],
    )
    return RuleResult(findings.select(list(FINDINGS_COLUMNS)), links, stats)


#: Columns ``why_not`` returns besides ``stopped_by``: enough to recognise each event.
WHY_COLUMNS = ("audit_id", "stage", "event_time", "verb", "resource", "subresource", "target")


def why_not(events: pl.LazyFrame | pl.DataFrame, rule: Rule) -> pl.DataFrame:
    """For each event, what stopped it: the rule's stages, the first ``and`` term of the
    condition it fails (as the author wrote it, macros by name), or the exception that
    removed it; ``counted`` when it passed all of them.

    ``detect rules test`` prints this for a rule that did not fire, so an author sees
    which term to fix instead of a count of events that "did not match".
    """
    lf = prepare_events(events)
    terms = rule.compiler.conjuncts(rule.condition) if rule.compiler else []
    stopped = pl.when(~rule.stage_expr).then(pl.lit(f"stage: not one of {', '.join(rule.stages)}"))
    for text, expr in terms:
        stopped = stopped.when(~expr).then(pl.lit(f"condition: {text}"))
    if not terms:
        stopped = stopped.when(~rule.condition_expr).then(pl.lit("condition"))
    for name, expr in rule.exception_exprs.items():
        stopped = stopped.when(expr).then(pl.lit(f"exception: {name}"))
    target = DERIVED_FIELDS["target"].build()
    return lf.select(
        *[c for c in WHY_COLUMNS if c != "target"],
        target.alias("target"),
        stopped.otherwise(pl.lit("counted")).alias("stopped_by"),
    ).collect()


#: Columns with a handful of distinct values, tested by many rules: worth a categorical.
#: (A name or user name is tested by one or two rules; one string compare beats a hash.)
_LOW_CARDINALITY = frozenset(
    {"verb", "resource", "subresource", "stage", "namespace", "principal_kind", "decision"}
)


def _gate(
    lf: pl.LazyFrame, rules: list[Rule], *, in_memory: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The events that pass any rule's gate (regex-free column tests), in one pass, and
    each rule's gate mask over them (``_g<i>``, in the order of ``rules``).

    ``in_memory``: ``lf`` is a frame already read. Otherwise it is a scan (a partition
    task's range, days or months of one cluster): it is read a day at a time, and only the
    candidates and their masks are kept, so memory follows a day and the candidates, not
    the range. (polars' streaming engine would materialise the whole range for the masks.)

    The string columns the gates read are low-cardinality (verb, resource, stage...):
    as categoricals, each membership test compares small integers instead of hashing a
    string per row and per rule, which halves the cost of this, the only pass over all
    events. The casts live only in the masks' computation; candidates keep their types.
    A rule without a gate term is tested with its whole prefilter, whose columns (string
    functions may read them) are left as strings.
    """
    gates = [r.gate_expr.alias(f"_g{i}") for i, r in enumerate(rules)]
    if not in_memory:
        parts = [_compact(_gate(day.collect().lazy(), rules)) for day in _days(lf)]
        return (
            pl.concat([c for c, _ in parts], how="vertical"),
            pl.concat([m for _, m in parts], how="vertical"),
        )
    schema = lf.collect_schema()
    loose = {c for r in rules if r.gate is None for c in r.prefilter_expr.meta.root_names()}
    loose.add("source_ip")  # classified per distinct address as a string (iplists)
    used = {c for g in gates for c in g.meta.root_names()}
    strings = [
        c
        for c in sorted(used)
        if c in _LOW_CARDINALITY and schema.get(c) == pl.String and c not in loose
    ]
    casts = [pl.col(c).cast(pl.Categorical) for c in strings]
    df = lf.collect()
    masks = df.lazy().with_columns(casts).select(gates).collect()
    keep = masks.select(pl.any_horizontal(pl.all()).alias("_any")).to_series()
    return df.filter(keep), masks.filter(keep)


def _compact(frames: tuple[pl.DataFrame, pl.DataFrame]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The frames with their own copy of their strings: a filtered frame's strings still
    point into the whole day's buffers, which would stay alive with them."""
    out = []
    for df in frames:
        buffer = io.BytesIO()
        df.write_ipc(buffer)
        buffer.seek(0)
        out.append(pl.read_ipc(buffer))
    return out[0], out[1]


def _days(lf: pl.LazyFrame) -> list[pl.LazyFrame]:
    """``lf`` cut into UTC days of ``event_time`` (rows without one last), each a filter a
    Parquet scan applies as it reads."""
    time = pl.col("event_time")
    lo, hi = lf.select(_TIME_SPAN).collect().row(0)
    out = []
    if lo is not None and hi is not None:
        day = lo.replace(hour=0, minute=0, second=0, microsecond=0)
        while day <= hi:
            out.append(lf.filter((time >= day) & (time < day + timedelta(days=1))))
            day += timedelta(days=1)
    return [*out, lf.filter(time.is_null())]


def _explain(lf: pl.LazyFrame, rules: list[Rule]) -> dict[str, RuleStats]:
    """Per rule: events in its stages, matching the condition, removed by each exception."""
    exprs: list[pl.Expr] = [pl.len().alias("_total")]
    for i, r in enumerate(rules):
        hit = r.stage_expr & r.condition_expr
        exprs.append(r.stage_expr.sum().alias(f"{i}:stages"))
        exprs.append(hit.sum().alias(f"{i}:condition"))
        for j, e in enumerate(r.exception_exprs.values()):
            exprs.append((hit & e).sum().alias(f"{i}:exc{j}"))
    row = lf.select(exprs).collect().row(0, named=True)
    out: dict[str, RuleStats] = {}
    for i, r in enumerate(rules):
        out[r.id] = RuleStats(
            events=row["_total"],
            in_stages=row[f"{i}:stages"],
            condition=row[f"{i}:condition"],
            excluded={name: row[f"{i}:exc{j}"] for j, name in enumerate(r.exception_exprs)},
        )
    return out
