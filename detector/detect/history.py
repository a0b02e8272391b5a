"""The rules' history: the days before a scored range, as threshold rules compare with them.

A threshold rule with a ``baseline`` (many denied requests *for this identity*) compares
each window with the 7 days before the scored range (:data:`RULES_HISTORY`), and a rule
that counts a session once, where it opened, asks whether those days hold session starts
(a range of a window or two may hold none, although the log records them). A batch run
reads them once. ``detect watch`` scores every batch that brings events, each time with
the week before it: read afresh, that is ~0.3 s at 1M events a day, every few seconds,
for hours that did not change since the last batch. :class:`HistoryCache` keeps what each
whole hour gave (its candidate rows, first and last event times and stages: a few hundred
rows a day) and reads again only the hours whose files changed (a late event adds a file,
``detect compact`` replaces them) or when the rules change. The history it returns is the
one a fresh read gives: only the two hours cut by the range's edges are read each time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl

from detector import rules
from detector.lake.events import Lake, Partition, partition_start

#: History handed to rules that look at the past (``RuleSet.needs_history``).
RULES_HISTORY = timedelta(days=7)
HOUR = timedelta(hours=1)
#: Hours read in one polars pass at most. A watch's first batch reads the whole week, each
#: hour a dozen small files or more (one per batch written): in one pass polars opened a
#: blocking thread per file up to its cap and warned "POLARS_MAX_BLOCKING_THREAD_COUNT
#: reached (512), this may indicate a deadlock".
HOURS_PER_PASS = 24

#: An hour's entry: (its files, the rules' fingerprint) and what it gave.
_Key = tuple[tuple[str, ...], str]
_Entry = tuple[_Key, rules.HistorySlice]


def rules_history(
    lake: Lake,
    ruleset: Any,
    start: datetime,
    window: timedelta,
    cluster: str | None,
    cache: HistoryCache | None = None,
) -> Any:
    """The :data:`RULES_HISTORY` before ``start`` as ``ruleset``'s rules read it.

    None when no enabled rule looks at the past (``RuleSet.needs_history``). With
    ``cache``, unchanged hours come from it.
    """
    if not ruleset.needs_history:
        return None
    if cache is not None:
        return cache.read(lake, ruleset, start, window, cluster)
    events = lake.scan_events(start - RULES_HISTORY, start, cluster=cluster)
    return rules.read_history(events, ruleset, window=window)


class HistoryCache:
    """What each whole hour of the history gave, kept between the runs of one process.

    An hour is keyed by its partition; its entry holds the hour's file list and the rule
    set's fingerprint it was read with, and is read again when either differs. Hours that
    leave the history are dropped, so it holds a week of candidates at most.
    """

    def __init__(self) -> None:
        self._hours: dict[Partition, _Entry] = {}
        #: hours read from the lake (not from the cache) since this cache was made
        self.hours_read = 0

    def read(
        self, lake: Lake, ruleset: Any, start: datetime, window: timedelta, cluster: str | None
    ) -> rules.History:
        lo = start - RULES_HISTORY
        parts = lake.partitions(lo, start, cluster=cluster)
        whole = {p for p in parts if lo <= partition_start(p) <= start - HOUR}
        kept: dict[Partition, _Entry] = {}
        missing: list[tuple[Partition, _Key]] = []
        rules_key = ruleset.fingerprint  # a hash of every rule's definition: once, not per hour
        for part in parts:
            if part not in whole:
                continue
            key = (tuple(lake.partition_files(part)), rules_key)
            entry = self._hours.get(part)
            if entry is not None and entry[0] == key:
                kept[part] = entry
            else:
                missing.append((part, key))
        # What is not kept, a day of hours a pass: the hours to (re)read, then the two edges.
        pieces = [lake.scan_files(part[0], list(files)) for part, (files, _) in missing]
        pieces.append(lake.scan_partitions([p for p in parts if p not in whole]))
        clusters = [part[0] for part, _ in missing] + [None]  # edges: maybe several clusters
        fresh: list[rules.HistorySlice] = []
        for i in range(0, len(pieces), HOURS_PER_PASS):
            fresh += rules.read_history_slices(
                [_within(p, lo, start) for p in pieces[i : i + HOURS_PER_PASS]],
                ruleset,
                clusters[i : i + HOURS_PER_PASS],
            )
        for (part, key), piece in zip(missing, fresh, strict=False):
            kept[part] = (key, piece)
        self.hours_read += len(missing)
        self._hours = kept
        slices = [kept[p][1] for p in parts if p in kept]
        return rules.join_history([*slices, fresh[-1]], window)


def _within(events: pl.LazyFrame, lo: datetime, hi: datetime) -> pl.LazyFrame:
    return events.filter((pl.col("event_time") >= lo) & (pl.col("event_time") < hi))
