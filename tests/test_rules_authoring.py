"""Rule authoring: named exception sets, hostile rule files, deep keys refused with a path,
identities accepted in either form, and the columns scoring must read for the rules."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_rules_engine import only_site_rules, rule_yaml, write
from test_rules_helpers import ev, frame, iam

from detector.errors import UsageError
from detector.events.identity import canonical_principal
from detector.rules import RuleError, evaluate_rules, load_ruleset

SETS = """
- exception_set: robots
  items:
    - name: robots
      field: user_name
      comp: glob
      values: ["robot-*"]
"""


def test_exception_set_is_named_once_and_used_by_several_rules(tmp_path):
    text = SETS + rule_yaml("one", "verb = delete", exceptions="[robots]")
    text += rule_yaml(
        "two", "verb = delete", exceptions="[robots, {name: bob, field: user_name, values: [bob]}]"
    )
    ruleset = only_site_rules(tmp_path, text)
    events = frame(
        ev("delete", "pods", ns="a", name="p", user="robot-1"),
        ev("delete", "pods", ns="a", name="p", user="bob"),
        ev("delete", "pods", ns="a", name="p", user="carol"),
    )
    found = evaluate_rules(events, ruleset).findings
    by_rule = {d: sorted(g["principal"]) for (d,), g in found.group_by("detector")}
    assert by_rule == {"rule:one": ["bob", "carol"], "rule:two": ["carol"]}


def test_appending_to_a_set_reaches_every_rule_using_it(tmp_path):
    base = write(
        tmp_path, SETS + rule_yaml("one", "verb = delete", exceptions="[robots]"), "a.yaml"
    )
    more = write(
        tmp_path,
        """
        - exception_set: robots
          append: true
          items:
            - name: ci
              field: user_name
              values: [ci-bot]
        - rule: one
          override: {exceptions: append}
          exceptions:
            - name: robots
              values: ["bot-*"]
        """,
        "b.yaml",
    )
    ruleset = load_ruleset([base, more]).only("one")
    events = frame(
        *(
            ev("delete", "pods", ns="a", name="p", user=u)
            for u in ("robot-1", "ci-bot", "bot-7", "eve")
        )
    )
    assert evaluate_rules(events, ruleset).findings["principal"].to_list() == ["eve"]


def test_unknown_exception_set_is_a_load_error(tmp_path):
    path = write(tmp_path, SETS + rule_yaml("one", exceptions="[robot]"))
    with pytest.raises(RuleError, match="no exception_set named 'robot'; did you mean robots"):
        load_ruleset([path])


def test_rbac_rules_share_their_exceptions():
    ruleset = load_ruleset()
    a, b = ruleset.get("rbac-changed"), ruleset.get("rbac-changed-in-namespace")
    assert (
        [e.name for e in a.exceptions]
        == [e.name for e in b.exceptions]
        == [
            "system_identities",
            "gitops_controllers",
            "known_editors",
        ]
    )


def test_lists_that_name_each_other_do_not_exhaust_memory(tmp_path):
    # The 602-byte file of the hardening issue: each list names the next ten times, so
    # naive expansion asks for 10^9 values. Each list is expanded once, values once.
    lines = ["- list: l0", "  items: [x, y]"]
    for i in range(1, 10):
        lines += [f"- list: l{i}", f"  items: [{', '.join([f'l{i - 1}'] * 10)}]"]
    text = "\n".join(lines) + "\n" + rule_yaml(condition="user_name in (l9)")
    assert len(text) < 1200
    ruleset = only_site_rules(tmp_path, text)  # before the fix: 2e9 values, out of memory
    events = frame(ev("delete", "pods", ns="a", name="p", user="y"))
    assert evaluate_rules(events, ruleset).findings.height == 1


def test_list_expansion_is_bounded_and_cycles_named(tmp_path):
    items = ", ".join(f"v{i}" for i in range(60_000))
    big = (
        "- list: a\n  items: ["
        + items
        + "]\n- list: b\n  items: ["
        + items.replace("v", "w")
        + "]\n"
    )
    big += "- list: c\n  items: [a, b]\n" + rule_yaml(condition="user_name in (c)")
    with pytest.raises(RuleError, match="list 'c' expands to more than 100,000 values"):
        load_ruleset([write(tmp_path, big)])
    cycle = "- list: a\n  items: [b]\n- list: b\n  items: [a]\n" + rule_yaml()
    with pytest.raises(RuleError, match=r"list 'a' includes itself \(a -> b -> a\)"):
        load_ruleset([write(tmp_path, cycle, "cycle.yaml")])


def test_macros_that_use_each_other_many_times_are_refused(tmp_path):
    lines = ["- macro: m0", "  condition: verb = get"]
    for i in range(1, 12):
        lines += [f"- macro: m{i}", f"  condition: m{i - 1} or m{i - 1} or m{i - 1}"]
    text = "\n".join(lines) + "\n" + rule_yaml(condition="m11")
    with pytest.raises(RuleError, match="condition expands to more than 20,000 terms"):
        load_ruleset([write(tmp_path, text)])


def test_deep_key_followed_by_a_path_is_refused_at_load(tmp_path):
    # ..securityContext.privileged used to be a regex over flat objects only: it silently
    # missed every securityContext holding capabilities. Now the rule does not load.
    text = rule_yaml(condition="request_object..securityContext.privileged = true")
    with pytest.raises(RuleError, match=r"write request_object\.\.privileged"):
        load_ruleset([write(tmp_path, text)])


def test_nested_path_and_deep_key_see_through_nested_objects(tmp_path):
    text = rule_yaml("full", "request_object.spec.securityContext.capabilities.add exists")
    text += rule_yaml("deep", "request_object..privileged = true")
    ruleset = only_site_rules(tmp_path, text)
    body = {
        "kind": "Pod",
        "spec": {
            "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
            "containers": [
                {
                    "name": "a",
                    "image": "x",
                    "securityContext": {"capabilities": {"add": []}, "privileged": True},
                }
            ],
        },
    }
    found = evaluate_rules(frame(ev("create", "pods", ns="a", body=body)), ruleset).findings
    assert sorted(found["detector"]) == ["rule:deep", "rule:full"]


def test_an_identity_in_its_sts_form_matches_the_stored_form(tmp_path):
    # docs/rules.md's tuning example: the ARN as CloudTrail shows it suppresses the session.
    assert (
        canonical_principal("arn:aws:sts::111122223333:assumed-role/eng-admin/alice")
        == "arn:aws:iam::111122223333:role/eng-admin/alice"
    )
    events = frame(
        ev("delete", "pods", ns="a", name="p", user=iam("alice")),
        ev("delete", "pods", ns="a", name="p", user=iam("bob")),
    )
    stored = evaluate_rules(events, only_site_rules(tmp_path, rule_yaml())).findings
    assert sorted(stored["principal"]) == [
        "arn:aws:iam::111122223333:role/eng-admin/alice",
        "arn:aws:iam::111122223333:role/eng-admin/bob",
    ]
    for form in ("arn:aws:sts::111122223333:assumed-role/eng-admin/alice", stored["principal"][0]):
        text = rule_yaml(
            exceptions=f'[{{name: me, field: principal, comp: glob, values: ["{form}"]}}]'
        )
        tuned = only_site_rules(tmp_path, text)
        found = evaluate_rules(events, tuned).findings
        assert found["principal"].to_list() == ["arn:aws:iam::111122223333:role/eng-admin/bob"]


def test_columns_needed_are_enough_to_score():
    ruleset = load_ruleset()
    cols = ruleset.columns_needed()
    assert {"verb", "resource", "request_object", "audit_id", "stage", "received_time"} <= cols
    assert "user_agent" in cols and "level" not in cols and "user_uid" not in cols
    events = frame(
        ev("patch", "configmaps", ns="kube-system", name="aws-auth", user=iam(), body={"data": {}})
    )
    full = evaluate_rules(events, ruleset).findings
    narrow = evaluate_rules(events.select([c for c in events.columns if c in cols]), ruleset)
    assert full.drop("created_at").equals(narrow.findings.drop("created_at"))


#: Pieces of the condition language, its fields, macros and operators, and stray characters.
_PIECES = [
    *("and", "or", "not", "(", ")", "in", "=", "!=", "exists", "glob", "contains"),
    *("startswith", "intersects", ">", "<", ">=", "verb", "resource", "request_object"),
    *("request_object.spec", 'request_object["$.a[?(@.b == 1)]"]', 'request_object["$..x"]'),
    *("user_name", "source_ip", "kmodify", "not_failed", "(a, b)", "'x'", '"y"', "1"),
    *("-1e999", "all(images)", "any(x)", "..", "[", "]", "\\", "'", '"', "*", "?"),
]


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    text=st.one_of(
        st.lists(st.sampled_from(_PIECES), min_size=1, max_size=12).map(" ".join),
        st.text(max_size=40),
    )
)
def test_any_condition_text_is_refused_in_one_line_or_runs(text):
    """Property: a site rule's condition, whatever its text, either fails to load with a
    usage error (exit 2, one line naming the problem) or evaluates over events without
    error: a rule file cannot load and then break scoring."""
    compiler, events = _default_compiler_and_events()
    try:
        prefilter, full, _ = compiler.compile(text)
    except UsageError as exc:
        assert "\n" not in str(exc).strip()
        return
    events.lazy().filter(prefilter & full).collect()


@functools.cache
def _default_compiler_and_events():  # type: ignore[no-untyped-def]
    """The shipped rules' compiler (macros and lists) and two events, built once."""
    compiler = next(r.compiler for r in load_ruleset().enabled_rules if r.compiler)
    body = {"kind": "Pod", "spec": {"a": [{"b": 1}], "x": "y"}}
    events = frame(ev("create", "pods", ns="app", body=body), ev("get", "secrets", code=403))
    return compiler, events
