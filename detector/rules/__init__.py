"""Deterministic detections: YAML rules compiled to polars expressions.

The model finds the unusual; rules name the known-bad with no training and no baseline,
so they work on the first day (``detect score --rules-only``) and analysts trust them
first. The catalogue covers the EKS best-practices guide's CloudWatch Logs Insights
queries, Falco's k8saudit rules and GuardDuty's EKS audit-log findings; docs/rules.md is
generated from it (``detect rules docs``).

Public API (what ``detect score`` uses)::

    ruleset = load_ruleset(extra_files=["site.yaml"], disabled=["pod-exec"])
    result = evaluate_rules(events_lf, ruleset, window=timedelta(minutes=10), history=None)
    result.findings   # FINDINGS_COLUMNS, detector = "rule:<id>"
    result.events     # finding_id, audit_id, stage
"""

from detector.rules.condition import ConditionError
from detector.rules.engine import (
    LINK_COLUMNS,
    History,
    HistorySlice,
    RuleResult,
    RuleStats,
    evaluate_rules,
    join_history,
    prepare_events,
    read_history,
    read_history_slices,
    why_not,
)
from detector.rules.loader import (
    ENGINE_VERSION,
    ExceptionSpec,
    Rule,
    RuleError,
    RuleSet,
    Threshold,
    builtin_files,
    load_ruleset,
)

__all__ = [
    "ENGINE_VERSION",
    "LINK_COLUMNS",
    "ConditionError",
    "ExceptionSpec",
    "History",
    "HistorySlice",
    "Rule",
    "RuleError",
    "RuleResult",
    "RuleSet",
    "RuleStats",
    "Threshold",
    "builtin_files",
    "evaluate_rules",
    "join_history",
    "load_ruleset",
    "prepare_events",
    "read_history",
    "read_history_slices",
    "why_not",
]
