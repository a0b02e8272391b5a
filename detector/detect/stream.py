"""Streaming detection: the batch detectors, run per batch as events land in the lake.

Why it reuses :func:`detector.detect.score.score_range` instead of keeping counters in
memory: a finding is defined by what the lake holds for its window, so re-evaluating the
touched windows from the lake gives *the* answer a batch ``detect score`` gives over the
same range (the equality is tested), survives restarts without any detector state of its
own, and needs no second implementation of any rule.

- **Rules** (single-event and threshold) run on every batch over the windows the batch
  touched. A window's finding id is fixed by (rule, principal, window), so the first event
  opens the finding and later ones rewrite the same finding (count, audit IDs); a
  threshold rule's finding appears in the batch that crosses its threshold.
- **Model**: a principal's window is scored once the stream clock passes its end plus the
  lateness ``grace`` (default 2 minutes). A batch that brings events into a window already
  scored (later than the grace) re-scores that window once, so the lake converges to what
  a batch run over the range says.

State kept between batches (:class:`StreamState`, JSON in the export checkpoint): the
windows seen but not yet model-scored. Nothing else: everything else is in the lake.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from detector.detect.history import HistoryCache
from detector.detect.score import (
    NOVELTY_MEMORY,
    ScoreOptions,
    ScoreResult,
    ScoringError,
    load_rules,
    score_range,
)
from detector.features.windows import DEFAULT_WINDOW
from detector.lake import findings as findings_store
from detector.lake.events import Lake
from detector.lake.findings import Rescored
from detector.lake.findings_schema import FINDINGS_EVENTS_COLUMNS, empty_findings
from detector.model.storage import Model
from detector.userfiles import read_user_bytes

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(minutes=2)
#: Open windows kept in the state at most (oldest scored first when exceeded): bounds the
#: checkpoint however far the stream falls behind.
MAX_OPEN_WINDOWS = 10_000
#: The latest a session's start may arrive after its close and still be counted once
#: (see ``_reaches``); the export's default lateness (latency plus overlap) is 4 minutes.
START_LATENESS = timedelta(minutes=15)
#: How often site rule files are looked at for edits (see ``StreamDetector._rules``).
RULES_CHECK_SECONDS = 30.0


@dataclass
class StreamState:
    """Windows (start, epoch ms) with events whose model scoring is still due, and the
    latest event time the stream has brought (epoch ms; see :func:`_reaches`)."""

    open_windows: set[int] = field(default_factory=set)
    latest_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "open_windows": sorted(self.open_windows),
            "latest_ms": self.latest_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StreamState:
        """The state in a checkpoint payload; what is not of the expected shape reads as
        unset (a payload edited by hand, or written by a build that kept more)."""
        if not isinstance(data, dict):
            return cls()
        latest = data.get("latest_ms")
        windows = data.get("open_windows")
        return cls(
            open_windows={x for x in windows if _whole(x)} if isinstance(windows, list) else set(),
            latest_ms=latest if _whole(latest) else None,
        )


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class StreamResult:
    """What one batch produced: findings (rules and model) and their events."""

    findings: pl.DataFrame
    events: pl.DataFrame
    rule_windows: int = 0
    model_windows: int = 0
    late_windows: int = 0
    #: the spans whose findings this batch wrote anew (incidents withdraw what they lost)
    rescored: list[Rescored] = field(default_factory=list)

    @classmethod
    def empty(cls) -> StreamResult:
        return cls(empty_findings(), pl.DataFrame(schema=FINDINGS_EVENTS_COLUMNS))


ModelSource = Callable[[], "Model | None"]


class StreamDetector:
    """Rules on every batch, the model on windows as they close (see the module doc)."""

    def __init__(
        self,
        lake: Lake,
        *,
        model: ModelSource | None = None,
        use_rules: bool = True,
        rule_files: list[str] | None = None,
        disabled_rules: list[str] | None = None,
        grace: timedelta = DEFAULT_GRACE,
        window: timedelta | None = None,
        cluster: str | None = None,
        rules_check: float = RULES_CHECK_SECONDS,
    ) -> None:
        self.lake = lake
        self.model = model or (lambda: None)
        self.use_rules = use_rules
        self.rule_files = rule_files
        self.disabled_rules = disabled_rules
        self.grace = grace
        self._window = window
        self.cluster = cluster
        self.rules_check = rules_check
        self._ruleset: Any = None
        self._rules_stamp: tuple[tuple[str, str], ...] | None = None
        self._rules_checked = float("-inf")
        #: the threshold rules' week of history, hour by hour, kept from batch to batch
        self.history = HistoryCache()

    def window(self) -> timedelta:
        m = self.model()
        return m.window if m is not None else (self._window or DEFAULT_WINDOW)

    def process(self, events: pl.DataFrame, now: datetime, state: StreamState) -> StreamResult:
        """Findings due now for a batch durable in the lake (``events`` may be empty: a tick).

        ``now`` is the stream clock: every event stamped before it that will ever arrive
        in time has arrived (the export watermark, the tail's wall clock, the replay clock).
        """
        result = StreamResult.empty()
        w = self.window()
        w_ms = int(w.total_seconds() * 1000)
        touched = _reaches(events, w_ms, state)
        frames: list[ScoreResult] = []
        if self.use_rules and touched:
            for lo, hi in _spans(touched, w_ms):
                frames.append(self._score(lo, hi, use_model=False))
                result.rescored += frames[-1].rescored
                result.rule_windows += (hi - lo) // w_ms
        model = self.model()
        if model is not None:
            close_ms = _ms(now) - int(self.grace.total_seconds() * 1000)
            late = {ws for ws in touched if ws + w_ms <= close_ms}
            state.open_windows |= set(touched) - late
            due = {ws for ws in state.open_windows if ws + w_ms <= close_ms} | late
            if len(state.open_windows) > MAX_OPEN_WINDOWS:
                due |= set(sorted(state.open_windows)[: -MAX_OPEN_WINDOWS // 2])
            if due:
                lo = min(due)
                hi = max(due) + w_ms
                if late:  # later windows' novelty may change too: rewrite up to the close
                    hi = max(hi, close_ms // w_ms * w_ms)
                frames.append(self._score_model(model, lo, hi))
                result.rescored.append(Rescored("model", _dt(lo), _dt(hi), self.cluster))
            result.model_windows = len(due)
            result.late_windows = len(late)
            state.open_windows -= due
        if frames:
            result.findings = pl.concat([f.findings for f in frames], how="vertical")
            result.events = pl.concat([f.events for f in frames], how="vertical")
        return result

    def _score_model(self, model: Model, lo: int, hi: int) -> ScoreResult:
        """Model findings of the windows in ``[lo, hi)``, computed as a batch run would.

        A batch ``detect score`` counts a value as new in the first window of its range that
        uses it, and looks before the range only for values used since the model's training
        (at most 24 hours back). Scoring ``[start, hi)`` with that same start and writing
        only ``[lo, hi)`` gives exactly the batch's answer for a range starting at ``start``:
        the model's training end, within the last 24 hours (the nightly training keeps it so).
        """
        w_ms = int(model.window.total_seconds() * 1000)
        start = lo - int(NOVELTY_MEMORY.total_seconds() * 1000)
        if model.trained_until is not None:
            start = max(start, _ms(model.trained_until))
        start = min(lo, -(-start // w_ms) * w_ms)
        # Read a few hours at a time, as on Ray (the same findings): the range reaches back
        # up to a day, whose events held at once were the peak of a watch process (at 1M
        # events a day, 630 MB against 450 MB for the same 7 hours, in the same time).
        opts = ScoreOptions(use_rules=False, write=False, cluster=self.cluster, by_partition=True)
        res = score_range(self.lake, _dt(start), _dt(hi), model=model, options=opts)
        keep = pl.col("window_start") >= _dt(lo)
        res.findings = res.findings.filter(keep)
        res.events = res.events.filter(
            pl.col("finding_id").is_in(res.findings["finding_id"].implode())
        )
        findings_store.write_range(
            self.lake, "model", _dt(lo), _dt(hi), res.findings, res.events, cluster=self.cluster
        )
        return res

    def _score(self, lo: int, hi: int, *, use_model: bool) -> ScoreResult:
        opts = ScoreOptions(
            use_model=use_model,
            use_rules=not use_model,
            rule_files=tuple(self.rule_files or ()),
            disabled_rules=tuple(self.disabled_rules or ()),
            window=self.window(),
            cluster=self.cluster,
            history_cache=self.history,
        )
        opts = replace(opts, ruleset=self._rules(opts))
        return score_range(self.lake, _dt(lo), _dt(hi), model=None, options=opts)

    def check_rules(self) -> None:
        """Compile the rules now: a rule file that does not load or an unknown --disable
        is an error at start. Compiled lazily, the first batch was written to the lake and
        checkpointed before the error, and the rules never read it (found by review)."""
        self._rules(
            ScoreOptions(
                rule_files=tuple(self.rule_files or ()),
                disabled_rules=tuple(self.disabled_rules or ()),
            )
        )

    def _rules(self, opts: ScoreOptions) -> Any:
        """The compiled rules, recompiled when a site rule file changes (an operator edits a
        rule; no restart). Compiling is most of a small batch's cost, so the files are only
        looked at every ``rules_check`` seconds. Files that no longer load (a typo mid-edit)
        keep the rules in use, with a warning, until they change again."""
        now = time.monotonic()
        if self._ruleset is not None and (
            not self.rule_files or now - self._rules_checked < self.rules_check
        ):
            return self._ruleset
        self._rules_checked = now
        stamp = _files_stamp(self.rule_files or [])
        if self._ruleset is not None and stamp == self._rules_stamp:
            return self._ruleset
        try:
            ruleset = load_rules(opts)
        except ScoringError as exc:
            if self._ruleset is None:
                raise
            log.warning("rule files changed but do not load (%s); keeping the rules in use", exc)
            self._rules_stamp = stamp
            return self._ruleset
        if self._ruleset is not None:
            log.warning(
                "rule files changed: %d rules reloaded (%s)",
                len(ruleset.enabled_rules),
                ", ".join(self.rule_files or []),
            )
        self._ruleset, self._rules_stamp = ruleset, stamp
        return ruleset


def _files_stamp(paths: list[str]) -> tuple[tuple[str, str], ...]:
    """(path, sha256 of its bytes, or why it cannot be read) per file, to notice any edit.

    Read as the loader reads them (:func:`read_user_bytes`): a rules path pointed at a
    log or ``/dev/zero`` is "unreadable" here too, checked without reading it whole.
    """
    out = []
    for path in paths:
        try:
            digest = hashlib.sha256(read_user_bytes(path)).hexdigest()
        except OSError as exc:
            digest = f"unreadable: {exc.strerror}"
        out.append((path, digest))
    return tuple(out)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _window_starts(events: pl.DataFrame, w_ms: int) -> list[int]:
    """Distinct window starts (epoch ms) of the events' times, in one columnar pass."""
    if events.is_empty():
        return []
    ms = events.select(pl.col("event_time").dt.epoch("ms").alias("t"))["t"]
    starts = ((ms // w_ms) * w_ms).unique().sort()
    return [int(x) for x in starts.to_list() if x is not None]


def _reaches(events: pl.DataFrame, w_ms: int, state: StreamState) -> list[int]:
    """The windows a batch changes: those of its events, and for a session start read after
    its end, every window from the start's to the latest the stream has seen.

    A long-running request (exec, port-forward, watch) is logged when it opens and when it
    closes, and is counted once, where it opened. Read from several CloudWatch streams, its
    close can arrive first: that batch counts it in the close's window, having no start to
    prefer. The batch that brings the start must score that window again too, or the count
    stays there as well. Where the close is, only the lake knows; it arrived before, so it
    is no later than the latest event time the stream had brought before this batch (kept
    in ``state``), nor more than :data:`START_LATENESS` after the start (a source that
    delivers a start later than that loses it anyway), which bounds the extra windows of a
    catch-up far behind the stream's head.
    """
    touched = _window_starts(events, w_ms)
    if events.is_empty():
        return touched
    times = events.select(
        pl.col("event_time").max().dt.epoch("ms").alias("latest"),
        pl.col("event_time")
        .filter(pl.col("stage") == "ResponseStarted")
        .min()
        .dt.epoch("ms")
        .alias("first_start"),
    ).row(0, named=True)
    before, first = state.latest_ms, times["first_start"]
    if before is not None and first is not None and first < before:
        last = min(before, first + int(START_LATENESS.total_seconds() * 1000))
        reach = range(first // w_ms * w_ms, last // w_ms * w_ms + 1, w_ms)
        touched = sorted(set(touched) | set(reach))
    if times["latest"] is not None:
        state.latest_ms = max(times["latest"], before or times["latest"])
    return touched


def _spans(starts: set[int] | list[int], w_ms: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` ranges covering the given window starts."""
    spans: list[tuple[int, int]] = []
    for s in sorted(starts):
        if spans and spans[-1][1] == s:
            spans[-1] = (spans[-1][0], s + w_ms)
        else:
            spans.append((s, s + w_ms))
    return spans


__all__ = ["DEFAULT_GRACE", "StreamDetector", "StreamResult", "StreamState"]


class ModelReloader:
    """The model in ``model_dir``, reloaded when its card changes (a nightly ``detect train``).

    Checked at most every ``every`` seconds: the card is small (one GET on S3). A card that
    fails to load (half-written, corrupt, edited by hand) keeps the model in use and is
    tried again at each check; the warning is given once per card.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        every: float = 30.0,
        on_change: Callable[[Model | None], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.every = every
        self.on_change = on_change
        self.clock = clock or time.monotonic
        self.model: Model | None = None
        self._card: bytes | None = None
        self._refused: bytes | None = None  # the last card that did not load
        self._checked = float("-inf")

    @property
    def refused(self) -> bool:
        """A card is there that did not load (damaged, edited by hand)."""
        return self._refused is not None

    def __call__(self) -> Model | None:
        if self.clock() - self._checked >= self.every:
            self.check()
        return self.model

    def check(self) -> bool:
        """Reload if the card changed; True when a different model is now in use."""
        from detector.model.storage import CARD_NAME, ModelError
        from detector.storage import Location

        self._checked = self.clock()
        loc = Location.of(self.model_dir)
        try:
            with loc.fs.open(loc.path(CARD_NAME), "rb") as fh:
                card = fh.read()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning(
                "model card in %s unreadable: %s; keeping the model in use", self.model_dir, exc
            )
            return False
        if card == self._card:
            return False
        try:
            model = Model.load(self.model_dir)
        except (ModelError, OSError) as exc:
            # Tried again at each check (its files may still be arriving), said once per
            # card: a card edited by hand would otherwise warn twice a minute for days.
            level = logging.DEBUG if card == self._refused else logging.WARNING
            self._refused = card
            # With none in use yet, say so: "keeping the one in use", then "no model
            # yet", read as two contradicting lines (found by review).
            then = "keeping the one in use" if self.model else "rules only until one loads"
            log.log(level, "model in %s not loaded: %s; %s", self.model_dir, exc, then)
            return False
        self._card = card
        old = self.model.version if self.model is not None else None
        self.model = model
        if old is not None:
            log.warning("model %s replaced by %s (card changed)", old, model.version)
        if self.on_change is not None:
            self.on_change(model)
        return True
