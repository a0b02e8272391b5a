"""docs/rules.md is generated from the rule files; it must match what the YAML says now."""

from __future__ import annotations

from pathlib import Path

from detector.rules import load_ruleset
from detector.rules.docs import render_docs

DOC = Path(__file__).resolve().parent.parent / "docs" / "rules.md"


def test_docs_rules_md_is_current():
    assert DOC.read_text(encoding="utf-8") == render_docs(), (
        "docs/rules.md is out of date: run `detect rules docs`"
    )


def test_every_rule_and_its_mapping_is_on_the_page():
    text = DOC.read_text(encoding="utf-8")
    for rule in load_ruleset().rules:
        assert f'<a id="{rule.id}"></a>' in text
        for name in (*rule.falco, *rule.guardduty):
            assert name in text


def test_the_readme_counts_the_rules_there_are():
    """The README's summary said 60 rules, 47 on by default, two rules after both were
    added: the figure a newcomer reads first is checked against the rule files."""
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    rules = load_ruleset()
    assert f"{len(rules.rules)} declarative rules, {len(rules.enabled_rules)} on by default" in (
        readme
    )
