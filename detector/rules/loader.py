"""Rule files -> a validated, compiled :class:`RuleSet`.

Rule files are flat YAML lists in the Falco style (STYLE.md section 4): ``list`` items
(named values), ``macro`` items (named condition fragments) and ``rule`` items. The
built-in files in this package are loaded first, one per theme, then any ``--rules`` files
in the order given; a later file can replace a list, macro or rule of the same name, append
to it (``append: true`` for lists and macros, ``override: {exceptions: append}`` for rules),
or just switch a rule off (``- rule: ID`` + ``enabled: false``).

Everything is checked here, at load time, so a typo never surfaces halfway through a
nightly scoring run: a malformed file raises :class:`RuleError` naming the file, the rule
and the reason. Conditions are compiled into polars expressions once, here.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from detector.errors import UsageError
from detector.lake.findings_schema import SEVERITIES
from detector.rules.condition import (
    WORD_OPS,
    Compiler,
    ConditionError,
    Node,
    cheap_conjuncts,
    predicate,
    resolve_field,
)
from detector.userfiles import read_user_file

#: Bumped when the rule format changes incompatibly; files may require a minimum.
ENGINE_VERSION = 1

#: MITRE ATT&CK Enterprise tactics, as rule files must spell them.
TACTICS = (
    "Reconnaissance",
    "Resource Development",
    "Initial Access",
    "Execution",
    "Persistence",
    "Privilege Escalation",
    "Defense Evasion",
    "Credential Access",
    "Discovery",
    "Lateral Movement",
    "Collection",
    "Command and Control",
    "Exfiltration",
    "Impact",
)
STAGES = ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic")
DEFAULT_STAGES = ("ResponseComplete",)

_ID = re.compile(r"^[a-z0-9][a-z0-9-]*\Z")
_TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?\Z")
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")

_RULE_REQUIRED = ("title", "severity", "tactic", "technique", "description", "condition")
_RULE_OPTIONAL = (
    "exceptions",
    "stages",
    "output",
    "threshold",
    "references",
    "falco",
    "guardduty",
    "tags",
    "enabled",
)
_RULE_KEYS = {"rule", *_RULE_REQUIRED, *_RULE_OPTIONAL, "override"}
_LIST_FIELDS = ("references", "falco", "guardduty", "tags")
_THRESHOLD_KEYS = {"by", "count", "distinct", "value", "baseline", "label"}
#: Columns the engine reads for every rule: request identity, stage de-duplication,
#: windows, grouping keys and the finding's principal.
ENGINE_COLUMNS = (
    "cluster",
    "audit_id",
    "stage",
    "event_time",
    "received_time",
    "principal",
    "principal_kind",
    "user_name",
    "source_ip",
    "request_uri",  # a dry run's findings are records (engine._dry_run)
    "verb",
    "subresource",
)
_ITEM_KINDS = ("rule", "macro", "list", "exception_set", "required_engine_version")
_EXCEPTION_KEYS = {"name", "field", "fields", "comp", "comps", "values", "reason"}


class RuleError(UsageError, ValueError):
    """A rule file that cannot be used: which file, which rule, and why."""

    def __init__(self, file: str | None, rule_id: str | None, reason: str) -> None:
        self.file = file
        self.rule_id = rule_id
        self.reason = reason
        where = ": ".join(p for p in (file, f"rule {rule_id!r}" if rule_id else None) if p)
        super().__init__(f"{where}: {reason}" if where else reason)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Threshold:
    """Fire when a count per principal (or source IP) per window reaches a threshold.

    Without history the absolute ``value`` applies; with a baseline range the threshold is
    ``max(baseline_min, baseline_factor * usual)``, where ``usual`` is the key's own mean per
    window over the baseline range, so a chatty-but-normal client does not alarm every day.
    """

    by: str = "principal"  # principal | source_ip
    distinct: str | None = None  # count distinct values of this field; None = requests
    value: int = 1
    baseline_factor: float | None = None
    baseline_min: int | None = None
    label: str = "matching requests"

    @property
    def uses_baseline(self) -> bool:
        return self.baseline_factor is not None


@dataclass(frozen=True)
class ExceptionSpec:
    """Rows to leave out: any of ``rows`` matching all of ``fields`` by ``comps``."""

    name: str
    fields: tuple[str, ...]
    comps: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    reason: str = ""


@dataclass(eq=False)  # identity: compiled polars expressions do not compare with ==
class Rule:
    """One rule, validated and compiled (``match`` is the full boolean expression)."""

    id: str
    title: str
    severity: str
    tactic: str
    technique: str
    description: str
    condition: str
    exceptions: tuple[ExceptionSpec, ...] = ()
    stages: tuple[str, ...] = DEFAULT_STAGES
    output: str | None = None
    threshold: Threshold | None = None
    references: tuple[str, ...] = ()
    falco: tuple[str, ...] = ()
    guardduty: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    enabled: bool = True
    source: str = ""
    definition: dict[str, Any] = field(default_factory=dict, repr=False)
    # compiled
    prefilter: pl.Expr = field(default_factory=lambda: pl.lit(True), repr=False)
    condition_expr: pl.Expr = field(default_factory=lambda: pl.lit(True), repr=False)
    exception_exprs: dict[str, pl.Expr] = field(default_factory=dict, repr=False)
    stage_expr: pl.Expr = field(default_factory=lambda: pl.lit(True), repr=False)
    tree: Node | None = field(default=None, repr=False)
    #: False when every term of the condition reads a JSON body (no cheap first pass).
    has_prefilter: bool = True
    #: Equality/membership terms only (no regex): the first pass over every event.
    gate: pl.Expr | None = field(default=None, repr=False)
    #: The compiler the rule was built with (lists and macros), for explanations.
    compiler: Compiler | None = field(default=None, repr=False)

    @property
    def detector(self) -> str:
        return f"rule:{self.id}"

    @property
    def severity_rank(self) -> int:
        return SEVERITIES.index(self.severity)

    @property
    def mapping(self) -> dict[str, list[str]]:
        """The Falco rules and GuardDuty finding types this rule corresponds to."""
        return {"falco": list(self.falco), "guardduty": list(self.guardduty)}

    @property
    def excluded(self) -> pl.Expr:
        exprs = list(self.exception_exprs.values())
        return pl.any_horizontal(exprs) if exprs else pl.lit(False)

    @property
    def match(self) -> pl.Expr:
        """Stage, condition and exceptions: the rows this rule counts."""
        return self.stage_expr & self.condition_expr & ~self.excluded

    @property
    def prefilter_expr(self) -> pl.Expr:
        return self.stage_expr & self.prefilter

    @property
    def gate_expr(self) -> pl.Expr:
        """Stage and the regex-free terms: what every event of a range is tested with."""
        return self.stage_expr & self.gate if self.gate is not None else self.prefilter_expr

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``rules list --format json`` and the docs."""
        t = self.threshold
        return {
            "id": self.id,
            "title": self.title,
            "severity": self.severity,
            "tactic": self.tactic,
            "technique": self.technique,
            "enabled": self.enabled,
            "description": self.description,
            "condition": self.condition,
            "exceptions": [
                {
                    "name": e.name,
                    "fields": list(e.fields),
                    "comps": list(e.comps),
                    "values": [list(r) for r in e.rows],
                    "reason": e.reason,
                }
                for e in self.exceptions
            ],
            "stages": list(self.stages),
            "output": self.output,
            "threshold": None
            if t is None
            else {
                "by": t.by,
                "distinct": t.distinct,
                "value": t.value,
                "baseline_factor": t.baseline_factor,
                "baseline_min": t.baseline_min,
                "label": t.label,
            },
            "references": list(self.references),
            "falco": list(self.falco),
            "guardduty": list(self.guardduty),
            "tags": list(self.tags),
            "source": self.source,
        }


@dataclass
class RuleSet:
    """All rules (enabled or not) plus the lists and macros they were compiled with."""

    rules: list[Rule]
    lists: dict[str, list[str]]
    macros: dict[str, str]
    files: list[str]
    exception_sets: dict[str, list[Any]] = field(default_factory=dict)

    def get(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rules]

    @property
    def enabled_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.enabled]

    @property
    def needs_history(self) -> bool:
        """True when an enabled rule compares with a baseline, or counts a request at the
        first of several stages (the history tells which stages the log records): pass
        ``history=``."""
        return any(
            (r.threshold and r.threshold.uses_baseline) or len(r.stages) > 1
            for r in self.enabled_rules
        )

    @property
    def fingerprint(self) -> str:
        """``rules-<hash>`` of the effective enabled rules, lists and macros (model_version)."""
        payload = {
            "engine": ENGINE_VERSION,
            "rules": [r.definition for r in self.enabled_rules],
            "lists": self.lists,
            "macros": self.macros,
            **({"exception_sets": self.exception_sets} if self.exception_sets else {}),
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
        return "rules-" + digest.hexdigest()[:12]

    def only(self, *rule_ids: str) -> RuleSet:
        """A copy in which exactly these rules are enabled (for ``rules test``)."""
        for rid in rule_ids:
            self.get(rid)
        rules = [replace(r, enabled=r.id in rule_ids) for r in self.rules]
        return RuleSet(rules, self.lists, self.macros, self.files, self.exception_sets)

    def columns_needed(self) -> set[str]:
        """The canonical columns the enabled rules read, narration and grouping included.

        Scoring reads a range once for every detector; it asks each for its columns so the
        one scan reads only those. Derived from the compiled expressions themselves, so a
        user rule naming any column is covered.
        """
        from detector.events.schema import CANONICAL_COLUMNS
        from detector.rules.narrate import line_columns

        exprs: list[pl.Expr] = []
        names: set[str] = set(ENGINE_COLUMNS)
        for r in self.enabled_rules:
            exprs += [r.stage_expr, r.prefilter, r.condition_expr]
            exprs += list(r.exception_exprs.values())
            if r.threshold is not None and r.threshold.distinct:
                exprs.append(resolve_field(r.threshold.distinct).expr)
            names |= line_columns(r)
        for e in exprs:
            names.update(e.meta.root_names())
        return {n for n in names if n in CANONICAL_COLUMNS}


# --------------------------------------------------------------------------- reading


def builtin_files() -> list[Path]:
    """The packaged rule files, one per theme, in name order (``base.yaml`` first)."""
    root = resources.files("detector.rules")
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".yaml"))
    names.sort(key=lambda n: n != "base.yaml")
    return [Path(str(root / n)) for n in names]


#: libyaml's parser when PyYAML was built with it: ten times faster on the built-in files,
#: and it refuses deep nesting itself (the pure-Python loader recurses until Python stops
#: it: callers catch ``RecursionError`` too). For every YAML file a user gives.
class YAML_LOADER(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (nothing in a file is executed), with dates and times left as the
    text they are: PyYAML's own reading fails outside Python's range (``0000-01-01``,
    ``2030-02-30``) with a ValueError that is not a YAML error, and the fields that hold a
    date parse it themselves, with a message naming the entry."""


YAML_LOADER.add_constructor(
    "tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node)
)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: ``not valid YAML at line 3, column 7: <problem>``."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"not valid YAML{where}: {problem}"


@functools.lru_cache(maxsize=64)
def _parse_cached(text: str, label: str) -> list[dict[str, Any]]:
    return _parse(text, label)


def _read_text(path: Path, label: str) -> str:
    """A rule file's text, or a :class:`RuleError` naming it."""
    try:
        return read_user_file(path)
    except FileNotFoundError:
        raise RuleError(label, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(label, None, f"cannot read: {exc}") from None


def _parse(text: str, label: str) -> list[dict[str, Any]]:
    try:
        data = yaml.load(text, Loader=YAML_LOADER)
    except RecursionError:
        raise RuleError(label, None, "not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise RuleError(label, None, yaml_problem(exc)) from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise RuleError(label, None, "a rules file is a YAML list of list/macro/rule items")
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise RuleError(label, None, f"item {i + 1} is not a mapping: {item!r:.60}")
    return data


def _kind(item: dict[str, Any], label: str, index: int) -> str:
    kinds = [k for k in _ITEM_KINDS if k in item]
    if len(kinds) != 1:
        raise RuleError(
            label,
            item.get("rule") if isinstance(item.get("rule"), str) else None,
            f"item {index + 1} must have exactly one of rule, macro, list, exception_set or "
            f"required_engine_version (has {sorted(item)})",
        )
    return kinds[0]


def _str_list(value: Any, what: str, label: str, rid: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise RuleError(label, rid, f"{what} must be a list of strings")
    return tuple(str(v) for v in value)


@dataclass
class _Pending:
    """A rule definition (raw mapping) and the file it last came from."""

    data: dict[str, Any]
    source: str


@dataclass
class _Registry:
    lists: dict[str, list[str]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    rules: dict[str, _Pending] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    #: Named exception sets: exception mappings a rule pulls in by naming the set.
    exception_sets: dict[str, list[Any]] = field(default_factory=dict)
    #: (file, rule id) of each whole definition: a file may replace a rule of another
    #: file, but a second one in the same file silently replaced the first.
    defined: set[tuple[str, str]] = field(default_factory=set)
    #: Macros a user's file defined or appended to, and the file: checked on their own at
    #: load, so a broken one is reported against that file, not a built-in rule using it.
    user_macros: dict[str, str] = field(default_factory=dict)

    def add_file(self, text: str, label: str, *, builtin: bool) -> None:
        """The items of one file's ``text`` (parsed once per process and content; the
        registry changes its own copy as later files override and append)."""
        self.files.append(label)
        for index, item in enumerate(copy.deepcopy(_parse_cached(text, label))):
            kind = _kind(item, label, index)
            if kind == "required_engine_version":
                need = item["required_engine_version"]
                if not isinstance(need, int) or need > ENGINE_VERSION:
                    raise RuleError(
                        label, None, f"needs rule engine version {need}; this is {ENGINE_VERSION}"
                    )
            elif kind == "list":
                self._add_list(item, label, builtin=builtin)
            elif kind == "macro":
                self._add_macro(item, label, builtin=builtin)
            elif kind == "exception_set":
                self._add_exception_set(item, label, builtin=builtin)
            else:
                self._add_rule(item, label, builtin=builtin)

    def _add_list(self, item: dict[str, Any], label: str, *, builtin: bool) -> None:
        name = item["list"]
        extra = set(item) - {"list", "items", "append"}
        if not isinstance(name, str) or extra or "items" not in item:
            raise RuleError(label, None, f"list {name!r}: needs list and items only ({extra})")
        items = list(_str_list(item["items"], f"list {name!r} items", label, None))
        if name in self.lists and builtin:
            raise RuleError(label, None, f"list {name!r} is defined twice")
        if item.get("append"):
            if name not in self.lists:
                raise RuleError(label, None, f"list {name!r}: nothing to append to")
            self.lists[name] = [*self.lists[name], *items]
        else:
            self.lists[name] = items

    def _add_exception_set(self, item: dict[str, Any], label: str, *, builtin: bool) -> None:
        """``- exception_set: NAME`` with ``items:`` (exceptions as in a rule), reusable.

        A rule names the set as one entry of its ``exceptions`` list; a later file can
        replace the set or append to it (``append: true``), which every rule using it sees.
        """
        name = item["exception_set"]
        extra = set(item) - {"exception_set", "items", "append"}
        items = item.get("items")
        if not isinstance(name, str) or extra or not isinstance(items, list):
            raise RuleError(
                label, None, f"exception_set {name!r}: needs exception_set and items (a list)"
            )
        if not all(isinstance(e, dict) for e in items):
            raise RuleError(label, None, f"exception_set {name!r}: each item is an exception")
        if name in self.exception_sets and builtin:
            raise RuleError(label, None, f"exception_set {name!r} is defined twice")
        if item.get("append"):
            if name not in self.exception_sets:
                raise RuleError(label, None, f"exception_set {name!r}: nothing to append to")
            self.exception_sets[name] = [*self.exception_sets[name], *items]
        else:
            self.exception_sets[name] = list(items)

    def _add_macro(self, item: dict[str, Any], label: str, *, builtin: bool) -> None:
        name = item["macro"]
        extra = set(item) - {"macro", "condition", "append"}
        cond = item.get("condition")
        if not isinstance(name, str) or extra or not isinstance(cond, str):
            raise RuleError(label, None, f"macro {name!r}: needs macro and condition only")
        if name in self.macros and builtin:
            raise RuleError(label, None, f"macro {name!r} is defined twice")
        if item.get("append"):
            if name not in self.macros:
                raise RuleError(label, None, f"macro {name!r}: nothing to append to")
            self.macros[name] = f"({self.macros[name]}) or ({cond})"
        else:
            self.macros[name] = cond
        if not builtin:
            self.user_macros[name] = label

    def _add_rule(self, item: dict[str, Any], label: str, *, builtin: bool) -> None:
        rid = item["rule"]
        if not isinstance(rid, str) or not _ID.match(rid):
            raise RuleError(label, str(rid), "a rule id is lower-case letters, digits and dashes")
        unknown = set(item) - _RULE_KEYS
        if unknown:
            raise RuleError(
                label,
                rid,
                f"unknown key(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(sorted(_RULE_KEYS))}",
            )
        exists = rid in self.rules
        if builtin and exists:
            raise RuleError(label, rid, "rule id is defined twice")
        if "override" in item:
            self._override_rule(item, label)
            return
        if exists and set(item) <= {"rule", "enabled"}:
            if not isinstance(item.get("enabled", True), bool):
                raise RuleError(label, rid, "enabled must be true or false")
            self.rules[rid].data = {**self.rules[rid].data, **item}
            return
        if not exists and set(item) <= {"rule", "enabled"}:
            raise RuleError(label, rid, "no such rule to enable or disable")
        missing = [k for k in _RULE_REQUIRED if k not in item]
        if missing:
            raise RuleError(label, rid, f"missing required key(s): {', '.join(missing)}")
        if (label, rid) in self.defined:
            raise RuleError(label, rid, "rule id is defined twice in this file")
        self.defined.add((label, rid))
        self.rules[rid] = _Pending(dict(item), label)

    def _override_rule(self, item: dict[str, Any], label: str) -> None:
        rid = item["rule"]
        if rid not in self.rules:
            raise RuleError(label, rid, "override of a rule that does not exist")
        override = item["override"]
        if not isinstance(override, dict) or not all(
            v in ("append", "replace") for v in override.values()
        ):
            raise RuleError(label, rid, "override maps keys to 'append' or 'replace'")
        given = set(item) - {"rule", "override", "enabled"}
        if given != set(override):
            raise RuleError(
                label,
                rid,
                "override must name exactly the keys given "
                f"(given {sorted(given)}, override {sorted(override)})",
            )
        data = dict(self.rules[rid].data)
        for key, how in override.items():
            if key in ("rule", "override") or key not in _RULE_KEYS:
                raise RuleError(label, rid, f"cannot override {key!r}")
            new = item[key]
            if how == "replace" or key not in data:
                data[key] = new
            elif key == "condition":
                data[key] = f"({data[key]}) {new}"
            elif key == "exceptions":
                data[key] = _merge_exceptions(data[key], new, label, rid)
            elif key in _LIST_FIELDS or key == "stages":
                data[key] = [*(data[key] or []), *(new or [])]
            else:
                raise RuleError(label, rid, f"{key!r} can only be replaced, not appended")
        if "enabled" in item:
            data["enabled"] = item["enabled"]
        self.rules[rid] = _Pending(data, label)


def _merge_exceptions(old: Any, new: Any, label: str, rid: str) -> list[dict[str, Any]]:
    """Falco's rule: appending an exception with an existing name appends its values."""
    if not isinstance(old, list) or not isinstance(new, list):
        raise RuleError(label, rid, "exceptions must be a list")
    merged: list[Any] = [dict(e) if isinstance(e, dict) else e for e in old]
    for exc in new:
        if isinstance(exc, str):
            if exc not in merged:
                merged.append(exc)
            continue
        if not isinstance(exc, dict):
            raise RuleError(label, rid, "each exception is a mapping or an exception_set name")
        same = next(
            (e for e in merged if isinstance(e, dict) and e.get("name") == exc.get("name")), None
        )
        if same is None:
            merged.append(dict(exc))
        else:
            same["values"] = [*(same.get("values") or []), *(exc.get("values") or [])]
    return merged


# --------------------------------------------------------------------------- validation


def _parse_threshold(raw: Any, label: str, rid: str) -> Threshold:
    if not isinstance(raw, dict):
        raise RuleError(label, rid, "threshold must be a mapping")
    unknown = set(raw) - _THRESHOLD_KEYS
    if unknown:
        raise RuleError(label, rid, f"threshold: unknown key(s) {', '.join(sorted(unknown))}")
    by = raw.get("by", "principal")
    if by not in ("principal", "source_ip"):
        raise RuleError(label, rid, f"threshold.by is principal or source_ip, not {by!r}")
    if ("count" in raw) == ("distinct" in raw):
        raise RuleError(label, rid, "threshold needs one of count: requests or distinct: FIELD")
    if "count" in raw and raw["count"] != "requests":
        raise RuleError(label, rid, "threshold.count can only be 'requests'")
    distinct = raw.get("distinct")
    if distinct is not None:
        try:
            resolve_field(str(distinct))
        except ConditionError as exc:
            raise RuleError(label, rid, f"threshold.distinct: {exc.message}") from None
    value = raw.get("value")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise RuleError(label, rid, "threshold.value must be a whole number >= 1")
    factor = minimum = None
    if "baseline" in raw:
        base = raw["baseline"]
        if not isinstance(base, dict) or set(base) - {"factor", "min"}:
            raise RuleError(label, rid, "threshold.baseline has factor and min")
        factor, minimum = base.get("factor"), base.get("min", 1)
        if not isinstance(factor, int | float) or isinstance(factor, bool) or factor <= 0:
            raise RuleError(label, rid, "threshold.baseline.factor must be a number > 0")
        if not isinstance(minimum, int) or minimum < 1:
            raise RuleError(label, rid, "threshold.baseline.min must be a whole number >= 1")
        factor = float(factor)
    label_text = raw.get("label", "distinct values" if distinct else "matching requests")
    return Threshold(by, distinct, value, factor, minimum, str(label_text))


def _expand_sets(raw: list[Any], sets: dict[str, list[Any]], label: str, rid: str) -> list[Any]:
    """Replace each exception_set name in a rule's exceptions by the set's exceptions."""
    out: list[Any] = []
    for exc in raw:
        if isinstance(exc, str):
            if exc not in sets:
                close = difflib.get_close_matches(exc, list(sets), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise RuleError(label, rid, f"no exception_set named {exc!r}{hint}")
            out.extend(dict(e) for e in sets[exc])
        elif isinstance(exc, dict) and (
            same := next((e for e in out if e.get("name") == exc.get("name")), None)
        ):
            # An override appending to an exception that came from a set (Falco's rule:
            # an exception of the same name adds its values).
            if set(exc) - {"name", "values"}:
                raise RuleError(
                    label, rid, f"exception {exc.get('name')!r} is given twice with fields"
                )
            same["values"] = [*(same.get("values") or []), *(exc.get("values") or [])]
        else:
            out.append(exc)
    return out


def _parse_exceptions(
    raw: Any, label: str, rid: str, sets: dict[str, list[Any]] | None = None
) -> tuple[ExceptionSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RuleError(label, rid, "exceptions must be a list")
    raw = _expand_sets(raw, sets or {}, label, rid)
    out: list[ExceptionSpec] = []
    for exc in raw:
        if not isinstance(exc, dict) or "name" not in exc:
            raise RuleError(label, rid, "each exception is a mapping with a name")
        name = str(exc["name"])
        unknown = set(exc) - _EXCEPTION_KEYS
        if unknown:
            raise RuleError(
                label, rid, f"exception {name!r}: unknown key(s) {', '.join(sorted(unknown))}"
            )
        values = exc.get("values")
        if not isinstance(values, list):
            raise RuleError(label, rid, f"exception {name!r}: values must be a list")
        if "field" in exc:
            if "fields" in exc or "comps" in exc:
                raise RuleError(label, rid, f"exception {name!r}: use field/comp or fields/comps")
            fields = (str(exc["field"]),)
            comps = (str(exc.get("comp", "in")),)
            rows: tuple[tuple[Any, ...], ...] = ((tuple(values),),)
        elif "fields" in exc:
            if not isinstance(exc["fields"], list) or not exc["fields"]:
                raise RuleError(label, rid, f"exception {name!r}: fields must be a list")
            fields = tuple(str(f) for f in exc["fields"])
            comps_raw = exc.get("comps", ["in"] * len(fields))
            if not isinstance(comps_raw, list) or len(comps_raw) != len(fields):
                raise RuleError(
                    label, rid, f"exception {name!r}: comps must list one operator per field"
                )
            comps = tuple(str(c) for c in comps_raw)
            rows_list = []
            for row in values:
                if not isinstance(row, list) or len(row) != len(fields):
                    raise RuleError(
                        label,
                        rid,
                        f"exception {name!r}: each values row has {len(fields)} item(s), "
                        f"one per field (got {row!r})",
                    )
                rows_list.append(tuple(tuple(c) if isinstance(c, list) else c for c in row))
            rows = tuple(rows_list)
        else:
            raise RuleError(label, rid, f"exception {name!r}: needs field or fields")
        for comp in comps:
            if comp not in (*WORD_OPS, "=", "!=", "<", "<=", ">", ">="):
                raise RuleError(label, rid, f"exception {name!r}: unknown comp {comp!r}")
        out.append(ExceptionSpec(name, fields, comps, rows, str(exc.get("reason", ""))))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise RuleError(label, rid, "exception names must be unique within a rule")
    return tuple(out)


def _exception_expr(spec: ExceptionSpec, compiler: Compiler) -> pl.Expr:
    row_exprs = []
    for row in spec.rows:
        parts = []
        for fname, comp, cell in zip(spec.fields, spec.comps, row, strict=True):
            cells = list(cell) if isinstance(cell, tuple | list) else [cell]
            values = compiler.values([str(c) for c in cells])
            if comp in ("=", "!=", "<", "<=", ">", ">=") and len(values) != 1:
                raise ConditionError(f"comp {comp!r} takes one value, got {values}")
            parts.append(predicate(fname, comp, values))
        row_exprs.append(pl.all_horizontal(parts))
    return pl.any_horizontal(row_exprs) if row_exprs else pl.lit(False)


def _build_rule(
    pending: _Pending, compiler: Compiler, sets: dict[str, list[Any]] | None = None
) -> Rule:
    d, label = pending.data, pending.source
    rid = d["rule"]

    def text(key: str) -> str:
        value = d.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # e.g. an unquoted technique "1485": say what is wrong with it
        if not isinstance(value, str) or not value.strip():
            raise RuleError(label, rid, f"{key} must be a non-empty string")
        return " ".join(value.split()) if key != "description" else value.strip()

    severity = text("severity").lower()
    if severity not in SEVERITIES:
        raise RuleError(label, rid, f"severity must be one of {', '.join(SEVERITIES)}")
    tactic = text("tactic")
    if tactic not in TACTICS:
        raise RuleError(label, rid, f"tactic {tactic!r} is not a MITRE ATT&CK tactic name")
    technique = text("technique")
    if not _TECHNIQUE.match(technique):
        raise RuleError(label, rid, f"technique must look like T1234 or T1234.001: {technique!r}")
    stages = _str_list(d.get("stages"), "stages", label, rid) or DEFAULT_STAGES
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise RuleError(label, rid, f"unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(label, rid, "enabled must be true or false")
    threshold = _parse_threshold(d["threshold"], label, rid) if "threshold" in d else None
    exceptions = _parse_exceptions(d.get("exceptions"), label, rid, sets)
    output = d.get("output")
    if output is not None and not isinstance(output, str):
        raise RuleError(label, rid, "output must be a string")
    condition = text("condition")
    try:
        prefilter, full, tree = compiler.compile(condition)
    except ConditionError as exc:
        at = f" at column {exc.pos + 1}" if exc.pos >= 0 else ""
        raise RuleError(label, rid, f"condition{at}: {exc.message}") from None
    except RecursionError:
        raise RuleError(
            label, rid, "condition: nested too deeply (parentheses, not, or macros naming macros)"
        ) from None
    exception_exprs = {}
    for spec in exceptions:
        try:
            exception_exprs[spec.name] = _exception_expr(spec, compiler)
        except ConditionError as exc:
            raise RuleError(label, rid, f"exception {spec.name!r}: {exc.message}") from None
    for name in _PLACEHOLDER.findall(output or ""):
        try:
            resolve_field(name.strip())
        except ConditionError as exc:
            raise RuleError(label, rid, f"output: {exc.message}") from None
    definition = {k: v for k, v in d.items() if k != "override"}
    return Rule(
        id=rid,
        title=text("title"),
        severity=severity,
        tactic=tactic,
        technique=technique,
        description=text("description"),
        condition=condition,
        exceptions=exceptions,
        stages=stages,
        output=" ".join(output.split()) if output else None,
        threshold=threshold,
        references=_str_list(d.get("references"), "references", label, rid),
        falco=_str_list(d.get("falco"), "falco", label, rid),
        guardduty=_str_list(d.get("guardduty"), "guardduty", label, rid),
        tags=_str_list(d.get("tags"), "tags", label, rid),
        enabled=enabled,
        source=label,
        definition=definition,
        prefilter=prefilter,
        condition_expr=full,
        exception_exprs=exception_exprs,
        stage_expr=pl.col("stage").fill_null("ResponseComplete").is_in(list(stages)),
        tree=tree,
        has_prefilter=bool(cheap_conjuncts(tree)),
        gate=compiler.gate(tree),
        compiler=compiler,
    )


def _check_ids(ids: Iterable[str], known: Sequence[str], what: str) -> None:
    for rid in ids:
        if rid not in known:
            close = difflib.get_close_matches(rid, list(known), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RuleError(what, rid, f"no such rule{hint} (`detect rules list` shows the ids)")


def load_ruleset(
    extra_files: list[str] | None = None,
    disabled: list[str] | None = None,
    *,
    enabled: list[str] | None = None,
    builtin: bool = True,
) -> RuleSet:
    """The built-in rules plus ``extra_files`` (added or overriding), compiled.

    ``disabled`` switches rules off and ``enabled`` switches on rules that ship disabled;
    an unknown id in either is an error, as is any malformed file (:class:`RuleError`
    names the file, the rule and the reason).
    """
    sources: list[tuple[str, str, bool]] = []
    if builtin:
        for path in builtin_files():
            label = f"detector/rules/{path.name}"
            sources.append((label, _read_text(path, label), True))
    for extra in extra_files or []:
        sources.append((extra, _read_text(Path(extra), extra), False))
    from detector.rules.iplists import lists_stamp  # iplists imports the condition module

    compiled, shared = _compiled(tuple(sources), lists_stamp())
    # The compiled expressions are shared (nothing changes them); everything a caller may
    # change is this load's own: the on/off switches below, the lists, macros and
    # definitions (the rule set is public API: an allow-list tuned in memory must not
    # reach the next load, nor its fingerprint), and the compiler, whose caches
    # `rules test` fills while it explains.
    compiler = replace(
        shared,
        macros=dict(shared.macros),
        lists=copy.deepcopy(shared.lists),
        _macro_ast=dict(shared._macro_ast),
        _list_cache=copy.deepcopy(shared._list_cache),
        _nodes=0,
    )
    rules = [
        replace(
            r,
            definition=copy.deepcopy(r.definition),
            exception_exprs=dict(r.exception_exprs),
            compiler=compiler,
        )
        for r in compiled.rules
    ]
    ids = [r.id for r in rules]
    _check_ids(disabled or [], ids, "--disable")
    _check_ids(enabled or [], ids, "--enable")
    for r in rules:
        if r.id in (disabled or []):
            r.enabled = False
        elif r.id in (enabled or []):
            r.enabled = True
    return RuleSet(
        rules,
        copy.deepcopy(compiled.lists),
        dict(compiled.macros),
        list(compiled.files),
        copy.deepcopy(compiled.exception_sets),
    )


@functools.lru_cache(maxsize=16)
def _compiled(
    sources: tuple[tuple[str, str, bool], ...], lists: tuple[Any, ...]
) -> tuple[RuleSet, Compiler]:
    """The rules of ``sources`` ((label, text, built-in) in load order), compiled once per
    process and content: a load costs ~45 ms, most of it compiling conditions, and one
    process may load the same files many times (a library caller scoring range after
    range, the commands a test suite runs in-process: 20 s of the suite's CPU). Keyed by
    the texts and the IP lists' files and versions (``lists``, which the IP terms compile
    from), so an edited file compiles anew; an error is raised again at every load
    (lru_cache keeps no exception)."""
    reg = _Registry()
    for label, text, builtin in sources:
        reg.add_file(text, label, builtin=builtin)
    compiler = Compiler(macros=dict(reg.macros), lists=dict(reg.lists))
    for name in reg.lists:
        try:
            compiler.expand_list(name)
        except ConditionError as exc:
            raise RuleError(None, None, exc.message) from None
        except RecursionError:
            raise RuleError(None, None, f"list {name!r}: lists name lists too deeply") from None
    for name, label in reg.user_macros.items():
        try:
            compiler.compile(name)
        except ConditionError as exc:
            raise RuleError(label, None, f"macro {name!r}: {exc.message}") from None
        except RecursionError:
            raise RuleError(
                label, None, f"macro {name!r}: macros name each other too deeply"
            ) from None
    rules = [_build_rule(p, compiler, reg.exception_sets) for p in reg.rules.values()]
    return RuleSet(rules, reg.lists, reg.macros, reg.files, reg.exception_sets), compiler
