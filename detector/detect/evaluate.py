"""How well do the model (and the rules) find labeled attacks? Precision, recall, alert volume.

``evaluate`` trains on everything in the lake before ``train_until``, scores the rest
without writing anything, and compares the findings with the simulator's labels
(``labels.json``: scenarios with ``id``, ``scenario``, ``principal``, ``tactic``,
``technique``, ``start``, ``end``, ``audit_ids``).

Matching: a finding *hits* a scenario when it contains one of the scenario's audit IDs, or
is about the scenario's principal in a window overlapping the scenario's time span. A
scenario is *detected* when at least one finding hits it. Precision is the share of
findings that hit some scenario; recall the share of scenarios (in the scored range)
detected. False alerts are findings that hit nothing; "on benign principals" counts only
those about principals that never act in any scenario, per day scored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from detector.detect.executor import Executor
from detector.detect.score import ScoreOptions, score_range
from detector.detect.train import fit_model, training_windows
from detector.errors import UsageError
from detector.features import DEFAULT_WINDOW, align
from detector.lake.events import Lake, partition_start
from detector.lake.findings_schema import SEVERITIES
from detector.model.storage import DEFAULT_ALERT_RATE
from detector.timeparse import parse_instant
from detector.userfiles import read_user_file

#: The lowest severity that is an alert: what evaluation counts as detected or false.
ALERT_SEVERITY = "low"


class LabelsError(UsageError):
    """The labels file is missing, not JSON, or not a list of scenarios."""


@dataclass(frozen=True)
class Scenario:
    id: str
    scenario: str
    principal: str | None
    tactic: str | None
    technique: str | None
    start: datetime
    end: datetime
    audit_ids: frozenset[str]


def load_labels(path: str | Path) -> list[Scenario]:
    """Scenarios from a labels file: a list, or an object with a ``scenarios`` list."""
    try:
        data = json.loads(read_user_file(path))
    except FileNotFoundError:
        raise LabelsError(f"labels file {path} does not exist") from None
    except OSError as exc:
        raise LabelsError(f"labels file {path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise LabelsError(f"labels file {path} is not JSON: {exc}") from None
    except RecursionError:
        raise LabelsError(f"labels file {path} is not JSON: nested too deeply") from None
    items = data.get("scenarios") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise LabelsError(f"labels file {path} has no list of scenarios")
    return [_scenario(item, i, path) for i, item in enumerate(items)]


def _scenario(item: Any, i: int, path: str | Path) -> Scenario:
    """One labelled scenario, each problem said by key (a labels file is hand-edited)."""
    where = f"scenario {i} in {path}"
    if not isinstance(item, dict):
        raise LabelsError(f"{where}: expected an object with start, end and principal")
    for key in ("principal", "tactic", "technique"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise LabelsError(f"{where}: {key} must be a string")
    ids = item.get("audit_ids") or []
    if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
        raise LabelsError(f"{where}: audit_ids must be a list of strings")
    times = {}
    for key in ("start", "end"):
        if not isinstance(item.get(key), str):
            raise LabelsError(f"{where}: {key} is required, an ISO-8601 instant")
        try:
            times[key] = parse_instant(item[key])
        except ValueError as exc:
            raise LabelsError(f"{where}: {key}: {exc}") from None
    if times["end"] < times["start"]:
        raise LabelsError(f"{where}: end is before start")
    return Scenario(
        id=str(item.get("id", i)),
        scenario=str(item.get("scenario") or item.get("name") or item.get("id", i)),
        principal=item.get("principal"),
        tactic=item.get("tactic"),
        technique=item.get("technique"),
        start=times["start"],
        end=times["end"],
        audit_ids=frozenset(ids),
    )


@dataclass
class DetectorStats:
    """Metrics for one set of detectors (model alone, model + rules)."""

    name: str
    findings: int = 0
    true_findings: int = 0
    scenarios: int = 0
    detected: int = 0
    false_alerts: int = 0
    false_alerts_benign: int = 0
    days: float = 1.0

    @property
    def precision(self) -> float | None:
        return self.true_findings / self.findings if self.findings else None

    @property
    def recall(self) -> float | None:
        return self.detected / self.scenarios if self.scenarios else None

    @property
    def false_per_day_benign(self) -> float:
        return self.false_alerts_benign / self.days

    @property
    def false_per_day(self) -> float:
        return self.false_alerts / self.days

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "findings": self.findings,
            "true_findings": self.true_findings,
            "scenarios": self.scenarios,
            "detected": self.detected,
            "precision": self.precision,
            "recall": self.recall,
            "false_alerts": self.false_alerts,
            "false_alerts_per_day": self.false_per_day,
            "false_alerts_benign": self.false_alerts_benign,
            "false_alerts_per_day_benign": self.false_per_day_benign,
        }


@dataclass
class EvalReport:
    train: tuple[datetime, datetime]
    test: tuple[datetime, datetime]
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    detectors: list[DetectorStats] = field(default_factory=list)
    model_threshold: float | None = None
    skipped_scenarios: int = 0
    #: what was scored (not serialised): the incident figures are computed from these
    findings: pl.DataFrame | None = None
    events: pl.DataFrame | None = None
    in_test: list[Scenario] = field(default_factory=list)
    attackers: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": {"since": self.train[0], "until": self.train[1]},
            "test": {"since": self.test[0], "until": self.test[1]},
            "model_threshold": self.model_threshold,
            "scenarios_outside_test_range": self.skipped_scenarios,
            "scenarios": self.scenarios,
            "detectors": [d.to_dict() for d in self.detectors],
        }


def lake_span(lake: Lake) -> tuple[datetime, datetime]:
    """First and last hour (exclusive) holding events in the lake."""
    parts = lake.partitions()
    if not parts:
        raise LabelsError(f"the lake {lake.uri} holds no events")
    return partition_start(parts[0]), partition_start(parts[-1]) + timedelta(hours=1)


def _hits(findings: pl.DataFrame, scenarios: list[Scenario]) -> list[set[str]]:
    """For each finding, the ids of the scenarios it hits."""
    out: list[set[str]] = []
    for row in findings.select("principal", "window_start", "window_end", "audit_ids").iter_rows(
        named=True
    ):
        ids = set(row["audit_ids"] or ())
        hit = set()
        for s in scenarios:
            if ids & s.audit_ids or (
                s.principal is not None
                and row["principal"] == s.principal
                and row["window_start"] < s.end
                and row["window_end"] > s.start
            ):
                hit.add(s.id)
        out.append(hit)
    return out


def scenario_principals(
    lake: Lake, scenarios: list[Scenario], start: datetime, end: datetime
) -> set[str]:
    """Every principal acting in a scenario: the labelled ones and those of labelled events."""
    names = {s.principal for s in scenarios if s.principal}
    ids = sorted(set().union(*(s.audit_ids for s in scenarios))) if scenarios else []
    if ids:
        found = (
            lake.scan_events(start, end)
            .filter(pl.col("audit_id").is_in(ids))
            .select("principal")
            .unique()
            .collect()
        )
        names |= set(found["principal"].drop_nulls().to_list())
    return names


def evaluate(
    lake: Lake,
    scenarios: list[Scenario],
    *,
    train_until: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
    window: timedelta = DEFAULT_WINDOW,
    alert_rate: float = DEFAULT_ALERT_RATE,
    seed: int = 0,
    rules: bool = True,
    executor: Executor | None = None,
) -> EvalReport:
    """Train before ``train_until``, score after, compare with ``scenarios``.

    ``executor``: where the per-partition reads run (see :mod:`detector.detect.executor`).
    """
    first, last = lake_span(lake)
    # Split at the start of the window holding train_until: widened each way, a time in a
    # window's middle put that window in both the training and the scored range.
    split = align(train_until, train_until, window)[0]
    end = until or last
    # Nothing to score (or nothing to train on) is an error, not empty tables and exit 0,
    # and a range read backwards (found by review).
    if split >= end:
        raise LabelsError(
            f"nothing to score: --train-until {train_until:%Y-%m-%dT%H:%MZ} is not before "
            f"the end of the scored range ({end:%Y-%m-%dT%H:%MZ}, --until or the lake's last "
            "event)"
        )
    if split <= (since or first):
        raise LabelsError(
            f"nothing to train on: --train-until {train_until:%Y-%m-%dT%H:%MZ} is not after "
            f"the lake's first event ({(since or first):%Y-%m-%dT%H:%MZ})"
        )
    train_start, train_end = align(since or first, split, window)
    test_start, test_end = align(split, end, window)
    windows = training_windows(lake, train_start, train_end, window=window, executor=executor)
    model = fit_model(
        windows, window=window, start=train_start, end=train_end, alert_rate=alert_rate, seed=seed
    ).named("evaluate")
    result = score_range(
        lake,
        test_start,
        test_end,
        model=model,
        options=ScoreOptions(use_rules=rules, write=False),
        executor=executor,
    )
    in_test = [s for s in scenarios if s.start < test_end and s.end > test_start]
    report = EvalReport(
        train=(train_start, train_end),
        test=(test_start, test_end),
        model_threshold=model.threshold,
        skipped_scenarios=len(scenarios) - len(in_test),
    )
    attackers = scenario_principals(lake, in_test, test_start, test_end)
    report.findings, report.events = result.findings, result.events
    report.in_test, report.attackers = in_test, attackers
    days = (test_end - test_start).total_seconds() / 86_400
    # Info findings (routine exec, port-forward) are records for the analyst, not alerts:
    # they neither detect a scenario nor count as false alerts.
    findings = result.findings.filter(pl.col("severity_rank") >= SEVERITIES.index(ALERT_SEVERITY))
    sets = [("model", findings.filter(pl.col("detector").str.starts_with("model")))]
    if result.rules != "not run":
        sets.append(("model+rules", findings))
    per_scenario: dict[str, dict[str, Any]] = {
        s.id: {
            "id": s.id,
            "scenario": s.scenario,
            "principal": s.principal,
            "tactic": s.tactic,
            "start": s.start,
        }
        for s in in_test
    }
    for name, df in sets:
        hits = _hits(df, in_test)
        stats = DetectorStats(name=name, findings=df.height, scenarios=len(in_test), days=days)
        detected: dict[str, dict[str, Any]] = {}
        for row, hit in zip(df.iter_rows(named=True), hits, strict=True):
            if hit:
                stats.true_findings += 1
                for sid in hit:
                    best = detected.get(sid)
                    if best is None or row["severity_rank"] > best["severity_rank"]:
                        detected[sid] = row
            else:
                stats.false_alerts += 1
                if row["principal"] not in attackers:
                    stats.false_alerts_benign += 1
        stats.detected = len(detected)
        for sid, entry in per_scenario.items():
            row = detected.get(sid)
            entry[name] = (
                {"severity": row["severity"], "detector": row["detector"], "title": row["title"]}
                if row
                else None
            )
        report.detectors.append(stats)
    report.scenarios = list(per_scenario.values())
    return report
