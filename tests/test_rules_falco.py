"""Agreement with Falco on Falco's own k8s_audit test fixtures (tests/data/falco, Apache-2.0).

For every case of Falco's test matrix (expected_detections.csv):
- positive, and we map the expected Falco rule: our mapped rule(s) fire on the fixture,
  with Falco's event count;
- negative, run with Falco's default rules file only: none of our rules mapped to a Falco
  rule active in that run fires (``disallow_kactivity.yaml`` switches Falco's informational
  rules off, so ours tagged ``falco_activity`` are not held to silence there);
- negative, run with one of Falco's site files (trust or allow-list the nginx image, a
  user, a namespace): the same, with that file translated into our tuning hooks
  (:data:`SITE_FILES`); it shows the hooks can say what Falco's site files say;
- an unmapped Falco rule is reported, not judged (docs/rules.md says why).

``pytest -s tests/test_rules_falco.py`` prints the agreement table.
"""

from __future__ import annotations

import atexit
import csv
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from detector.pipeline.ingest import read_events
from detector.rules import evaluate_rules, load_ruleset
from detector.rules.docs import FALCO_NOT_MAPPED

FALCO = Path(__file__).resolve().parent / "data" / "falco"
DEFAULT_FILES = {"k8s_audit_rules.yaml", "engine_v4_k8s_audit_rules.yaml"}
ACTIVITY_OFF = "disallow_kactivity.yaml"


@dataclass(frozen=True)
class Case:
    name: str
    fixture: str
    detect: bool
    falco_rule: str | None
    count: int | None
    files: frozenset[str]


def _cases() -> list[Case]:
    with (FALCO / "expected_detections.csv").open(newline="") as fh:
        out = []
        for row in csv.DictReader(fh):
            rule, count = None, None
            if row["expected_rule_counts"]:
                rule, _, n = row["expected_rule_counts"].rpartition("=")
                count = int(n)
            out.append(
                Case(
                    row["test_case"],
                    row["fixture"],
                    row["detect"] == "True",
                    rule,
                    count,
                    frozenset(row["rules_files_used"].split(";")),
                )
            )
    return out


CASES = _cases()


#: Falco's site files, in our terms. None: the file only tunes Falco rules we do not map
#: (Create Disallowed Pod, Disallowed K8s User, Create Disallowed Namespace).
SITE_FILES: dict[str, str | None] = {
    "trust_nginx_container.yaml": """
- list: user_known_privileged_images
  append: true
  items: [nginx]
- list: user_known_kube_namespace_images
  append: true
  items: [nginx]
""",
    "allow_nginx_container.yaml": None,
    "allow_only_apache_container.yaml": None,
    "allow_namespace_foo.yaml": None,
    "allow_user_some-user.yaml": None,
}


@functools.cache
def _ruleset(sites: frozenset[str] = frozenset()):
    """Every rule enabled (disabled-by-default mappings are checked too), plus site files."""
    extra = []
    for name in sorted(sites):
        text = SITE_FILES[name]
        if text is not None:
            path = _SITE_DIR / name
            path.write_text(text)
            extra.append(str(path))
    base = load_ruleset()
    return load_ruleset(extra, enabled=base.ids)


_SITE_DIR = Path(tempfile.mkdtemp(prefix="falco-site-"))
atexit.register(shutil.rmtree, _SITE_DIR, ignore_errors=True)


def _all_rules():
    return _ruleset()


@functools.cache
def _mapping() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for r in _all_rules().rules:
        for name in r.falco:
            out.setdefault(name, []).append(r.id)
    return {k: tuple(v) for k, v in out.items()}


@functools.cache
def _events(fixture: str) -> pl.DataFrame:
    return read_events([str(FALCO / fixture)], cluster="falco")[0]


@functools.cache
def _findings(fixture: str, sites: frozenset[str] = frozenset()) -> pl.DataFrame:
    return evaluate_rules(_events(fixture), _ruleset(sites)).findings


def _sites(case: Case) -> frozenset[str]:
    return frozenset(case.files - DEFAULT_FILES - {ACTIVITY_OFF})


def _counts(fixture: str, sites: frozenset[str] = frozenset()) -> dict[str, int]:
    found = _findings(fixture, sites)
    by_rule = found.group_by("detector").agg(pl.col("event_count").sum())
    return {d.removeprefix("rule:"): int(n) for d, n in by_rule.iter_rows()}


@dataclass(frozen=True)
class Outcome:
    case: Case
    ours: tuple[str, ...]
    verdict: str  # agree | DISAGREE | not mapped | not comparable
    detail: str


def judge(case: Case) -> Outcome:
    """Compare our rules with Falco's expectation for one case."""
    mapping = _mapping()
    if case.detect:
        assert case.falco_rule is not None
        if not mapping.get(case.falco_rule):
            why = FALCO_NOT_MAPPED.get(case.falco_rule, "no rule maps it")
            return Outcome(case, (), "not mapped", why)
    unknown = _sites(case) - set(SITE_FILES)
    if unknown:
        return Outcome(case, (), "not comparable", f"site file(s) {', '.join(sorted(unknown))}")
    counts = _counts(case.fixture, _sites(case))
    if case.detect:
        assert case.falco_rule is not None
        ours = mapping[case.falco_rule]
        got = {r: counts.get(r, 0) for r in ours}
        ok = all(n == case.count for n in got.values())
        detail = ", ".join(f"{r}={n}" for r, n in got.items()) + f" (Falco {case.count})"
        return Outcome(case, ours, "agree" if ok else "DISAGREE", detail)
    activity_off = ACTIVITY_OFF in case.files
    watched = {
        r.id
        for r in _all_rules().rules
        if r.falco and not (activity_off and "falco_activity" in r.tags)
    }
    fired = sorted(r for r in counts if r in watched)
    detail = "silent" if not fired else "fired: " + ", ".join(fired)
    if _sites(case):
        detail += f" (with {', '.join(sorted(_sites(case)))})"
    return Outcome(case, tuple(sorted(watched)), "agree" if not fired else "DISAGREE", detail)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_agrees_with_falco(case: Case):
    outcome = judge(case)
    if outcome.verdict in ("not mapped", "not comparable"):
        # Not judged (a site allow-list or an engine test): the reason must be written
        # down for users, in docs/rules.md, with the Falco rule it concerns.
        documented = (Path(__file__).resolve().parent.parent / "docs" / "rules.md").read_text()
        assert f"**{case.falco_rule}**" in documented, f"{case.name}: {outcome.detail}"
        return
    assert outcome.verdict == "agree", f"{case.name} on {case.fixture}: {outcome.detail}"


def test_malformed_fixture_is_quarantined_not_fatal():
    events, quarantine = read_events([str(FALCO / "fal_01_003.json")])
    assert events.is_empty() and quarantine.height == 1
    assert _findings("fal_01_003.json").is_empty()


def test_agreement_table():
    outcomes = [judge(c) for c in CASES]
    width = max(len(c.name) for c in CASES)
    print("\n\nFalco agreement (tests/data/falco/expected_detections.csv)")
    print(f"{'case'.ljust(width)}  {'falco rule':42}  {'verdict':15}  detail")
    for o in outcomes:
        falco = (o.case.falco_rule or "(none expected)")[:42]
        print(f"{o.case.name.ljust(width)}  {falco:42}  {o.verdict:15}  {o.detail}")
    judged = [o for o in outcomes if o.verdict in ("agree", "DISAGREE")]
    agree = sum(o.verdict == "agree" for o in judged)
    positives = [o for o in judged if o.case.detect]
    negatives = [o for o in judged if not o.case.detect]
    print(
        f"\nagree {agree}/{len(judged)} judged cases "
        f"({sum(o.verdict == 'agree' for o in positives)}/{len(positives)} positive, "
        f"{sum(o.verdict == 'agree' for o in negatives)}/{len(negatives)} negative); "
        f"{sum(o.verdict == 'not mapped' for o in outcomes)} not mapped, "
        f"{sum(o.verdict == 'not comparable' for o in outcomes)} not comparable, "
        f"of {len(outcomes)} cases"
    )
    assert agree == len(judged)
    # the bulk of Falco's matrix is judged, not skipped
    assert len(positives) >= 40 and len(negatives) >= 20
    unmapped = {o.case.falco_rule for o in outcomes if o.verdict == "not mapped"}
    assert unmapped <= set(FALCO_NOT_MAPPED), "document every unmapped Falco rule in docs"
