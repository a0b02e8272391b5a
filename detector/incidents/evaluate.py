"""Incident figures for ``detect evaluate``: do planted attacks reach a sink, in how many
incidents, and how many incidents does benign traffic raise a day?

The targets (issue 12): every planted attack reaches a sink as at most 2 incidents, and
benign traffic yields at most 2 incidents a day, at the default minimum severity of a sink
(``low``; ``info`` is never delivered). Computed from the findings ``evaluate`` scored,
grouped exactly as ``detect score`` groups them, without writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from detector.detect.evaluate import EvalReport, _hits
from detector.incidents.group import DEFAULT_HORIZON, group
from detector.lake.findings_schema import SEVERITIES

DEFAULT_MIN_SEVERITY = "low"
MAX_INCIDENTS_PER_ATTACK = 2
MAX_BENIGN_PER_DAY = 2.0


@dataclass
class IncidentFigures:
    min_severity: str
    incidents: int = 0
    scenarios: int = 0
    reached: int = 0
    per_scenario: dict[str, int] = field(default_factory=dict)
    benign: int = 0  # about principals that act in no scenario
    unmatched: int = 0  # hit no scenario, whoever the principal
    days: float = 1.0

    @property
    def max_per_attack(self) -> int:
        return max(self.per_scenario.values(), default=0)

    @property
    def benign_per_day(self) -> float:
        return self.benign / self.days if self.days else 0.0

    @property
    def targets_met(self) -> bool:
        return (
            self.reached == self.scenarios
            and self.max_per_attack <= MAX_INCIDENTS_PER_ATTACK
            and self.benign_per_day <= MAX_BENIGN_PER_DAY
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_severity": self.min_severity,
            "incidents_delivered": self.incidents,
            "scenarios": self.scenarios,
            "scenarios_reaching_a_sink": self.reached,
            "max_incidents_per_attack": self.max_per_attack,
            "incidents_per_scenario": self.per_scenario,
            "benign_incidents": self.benign,
            "benign_incidents_per_day": self.benign_per_day,
            "incidents_matching_no_attack": self.unmatched,
            "targets_met": self.targets_met,
        }


def incident_figures(
    report: EvalReport,
    *,
    min_severity: str = DEFAULT_MIN_SEVERITY,
    horizon: timedelta = DEFAULT_HORIZON,
) -> IncidentFigures:
    """Group the scored findings into incidents and score them against the labels."""
    out = IncidentFigures(min_severity=min_severity, scenarios=len(report.in_test))
    t0, t1 = report.test
    out.days = (t1 - t0).total_seconds() / 86_400
    out.per_scenario = {s.id: 0 for s in report.in_test}
    findings = report.findings
    if findings is None or findings.is_empty():
        return out
    incidents, _ = group(findings, [], events=report.events, horizon=horizon, now=t1)
    rank = SEVERITIES.index(min_severity)
    delivered = [i for i in incidents if i.severity_rank >= rank]
    out.incidents = len(delivered)
    hits = dict(zip(findings["finding_id"], _hits(findings, report.in_test), strict=True))
    for inc in delivered:
        hit: set[str] = set().union(*(hits.get(f, set()) for f in inc.finding_ids))
        for sid in hit:
            out.per_scenario[sid] += 1
        if not hit:
            out.unmatched += 1
            if inc.principal not in report.attackers:
                out.benign += 1
    out.reached = sum(1 for n in out.per_scenario.values() if n > 0)
    return out
