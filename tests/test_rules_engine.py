"""The rules engine: condition language, exceptions, grouping, thresholds and baselines,
the findings contract, and rule files rejected at load time with file, rule and reason."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from test_rules_helpers import T0, denials, ev, frame

from detector.lake.findings_schema import FINDINGS_COLUMNS, SEVERITIES
from detector.rules import RuleError, evaluate_rules, load_ruleset, read_history
from detector.rules.condition import Compiler, ConditionError, glob_to_regex, parse
from detector.rules.engine import LINK_COLUMNS


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def rule_yaml(rid: str = "test-rule", condition: str = "verb = delete", **extra: str) -> str:
    lines = [
        f"- rule: {rid}",
        "  title: Test rule",
        "  severity: medium",
        "  tactic: Impact",
        "  technique: T1485",
        "  description: A rule for the tests.",
        f"  condition: {condition}",
    ]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def only_site_rules(tmp_path: Path, text: str):
    """A ruleset whose only enabled rules are the ones in ``text``."""
    path = write(tmp_path, text)
    full = load_ruleset([path])
    new_ids = [r.id for r in full.rules if r.source == path]
    return full.only(*new_ids)


# --------------------------------------------------------------------------- condition language
DATA = pl.DataFrame(
    {
        "verb": ["create", "get", "delete", None],
        "user_name": ["eks:node-manager", "alice", "system:node:ip-1", None],
        "namespace": ["kube-system", None, "default", "kube-system"],
        "response_code": [201, 403, 200, None],
        "user_groups": [["system:masters"], [], None, ["eng", "ops"]],
        "request_object": [
            '{"spec": {"containers": [{"image": "nginx:1", "securityContext": '
            '{"privileged": false}}], "initContainers": [{"image": "busybox", '
            '"securityContext": {"privileged": true}}]}}',
            None,
            "not json at all",
            '[{"op": "replace", "path": "/spec/replicas", "value": 3}]',
        ],
    }
)


def matches(condition: str, lists: dict | None = None, macros: dict | None = None) -> list[bool]:
    _, full, _ = Compiler(macros=macros or {}, lists=lists or {}).compile(condition)
    return DATA.with_columns(full.alias("m"))["m"].to_list()


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("verb = create", [True, False, False, False]),
        ("verb != create", [False, True, True, True]),  # null verb: "not create" holds
        ("verb in (get, delete)", [False, True, True, False]),
        ("response_code >= 400", [False, True, False, False]),
        ("response_code startswith 2", [True, False, True, False]),
        ("user_name glob ('eks:*', 'system:node:*')", [True, False, True, False]),
        ("user_name startswith system:", [False, False, True, False]),
        ("user_name endswith manager", [True, False, False, False]),
        ("user_name matches '^a.i'", [False, True, False, False]),
        ("user_name icontains ALI", [False, True, False, False]),
        ("namespace exists", [True, False, True, True]),
        ("not namespace = kube-system", [False, True, True, False]),
        ("user_groups intersects (ops)", [False, False, False, True]),
        ("user_groups exists", [True, False, False, True]),
        ("request_object..privileged intersects (true)", [True, False, False, False]),
        ("all(request_object..privileged) in (true)", [False, False, False, False]),
        ("request_object..image in (busybox)", [True, False, False, False]),
        ("request_object.spec.containers exists", [True, False, False, False]),
        ("verb = create or verb = get and user_name = nobody", [True, False, False, False]),
        ("(verb = create or verb = get) and not user_name = alice", [True, False, False, False]),
        ("always_true and not never_true", [True, True, True, True]),
    ],
)
def test_operators_and_precedence(condition, expected):
    assert matches(condition) == expected


BINDING = pl.DataFrame(
    {
        "request_object": [
            '{"subjects": [{"kind": "Group", "name": "eng"}, {"kind": "User", "name": "alice"},'
            ' {"kind": "User", "name": "mallory"}], "roleRef": {"name": "admin"}}',
            '{"subjects": [{"kind": "User", "name": "alice"}], "roleRef": {"name": "view"}}',
            "not json at all",
            None,
        ]
    }
)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        # A filter, a wildcard, a recursive descent: every match counts, not the first only.
        ("""request_object["$.subjects[?(@.kind == 'User')].name"] = mallory""", [1, 0, 0, 0]),
        ("""request_object["$.subjects[*].name"] in (mallory)""", [1, 0, 0, 0]),
        ("""request_object["$..name"] = admin""", [1, 0, 0, 0]),
        ("""all(request_object["$.subjects[*].kind"]) = User""", [0, 1, 0, 0]),
        ("""request_object["$.subjects[0:2].name"] = mallory""", [0, 0, 0, 0]),
        ("""request_object["$.subjects[*]"] exists""", [1, 1, 0, 0]),
        # One value: as before.
        ("""request_object["$.roleRef.name"] = view""", [0, 1, 0, 0]),
    ],
)
def test_a_jsonpath_that_can_match_several_values_holds_if_any_does(condition, expected):
    _, full, _ = Compiler().compile(condition)
    got = BINDING.with_columns(full.alias("m"))["m"].to_list()
    assert got == [bool(x) for x in expected]


@pytest.mark.parametrize(
    "path",
    [
        "$.subjects[?(@.kind ==",  # several values: jsonpath-ng's parser refuses it
        "$.[[[bad",  # one value: polars compiles it only when a query runs it
        "$.spec[",
        "$.a.b[*",
    ],
)
def test_an_invalid_jsonpath_is_refused_when_the_rule_loads(path):
    with pytest.raises(ConditionError, match="invalid JSONPath") as err:
        Compiler().compile(f"""request_object["{path}"] = x""")
    assert "\n" not in err.value.message and "This error occurred" not in err.value.message


def test_lists_expand_and_nest_and_quoted_values_stay_literal():
    lists = {"a": ["get", "b"], "b": ["delete"]}
    assert matches("verb in (a)", lists) == [False, True, True, False]
    assert matches("verb in ('a')", lists) == [False, False, False, False]


def test_macros_expand_and_cycles_are_reported():
    assert matches("is_write", macros={"is_write": "verb in (create, delete)"}) == [
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ConditionError, match="refers to itself"):
        matches("a", macros={"a": "b and verb = get", "b": "a"})


def test_glob_translation():
    assert glob_to_regex("system:node:*") == r"system:node:.*"
    assert glob_to_regex("a?c[!x]d.e") == r"a.c[^x]d\.e"


def test_prefilter_keeps_only_column_terms():
    pre, full, _ = Compiler().compile("verb = create and request_object..image in (alpine)")
    assert DATA.with_columns(pre.alias("p"))["p"].to_list() == [True, False, False, False]
    assert DATA.with_columns(full.alias("p"))["p"].to_list() == [False] * 4
    pre_all_json, _, _ = Compiler().compile("request_object.kind = Pod")
    assert DATA.with_columns(pre_all_json.alias("p"))["p"].to_list() == [True] * 4


@pytest.mark.parametrize(
    ("condition", "message", "column"),
    [
        ("verb = ", "expected a value", 7),
        ("verb in (get, list", "expected ',' or ')'", 18),
        ("verb = get user_name = x", "unexpected 'user_name'", 11),
        ("(verb = get", "expected ')'", 11),
        ("no_such_macro", "unknown macro 'no_such_macro'", 0),
        ("verbb = get", "unknown field 'verbb'", 0),
        ("response_code = ok", "compares with numbers", 0),
        ("user_name matches '('", "invalid regex", 0),
        ("verb = get and", "expected a field, macro or '('", 14),
        ("verb = 'open", "unexpected character", 7),
    ],
)
def test_condition_errors_say_what_and_where(condition, message, column):
    with pytest.raises(ConditionError) as err:
        Compiler().compile(condition)
    assert message in err.value.message
    assert err.value.pos == column


def test_parse_builds_a_tree_not_code():
    tree = parse("a and not (b or c)")
    assert type(tree).__name__ == "And"


def test_rule_without_column_terms_still_runs(tmp_path):
    rs = only_site_rules(tmp_path, rule_yaml(condition="request_object.kind = Pod"))
    assert not rs.get("test-rule").has_prefilter
    events = frame(
        ev("create", "pods", ns="a", code=201, body={"kind": "Pod", "spec": {}}),
        ev("create", "services", ns="a", code=201, body={"kind": "Service"}),
        ev("get", "pods", ns="a"),
    )
    assert evaluate_rules(events, rs).findings["event_count"].to_list() == [1]


# --------------------------------------------------------------------------- exceptions
def test_single_and_multi_field_exceptions(tmp_path):
    rs = only_site_rules(
        tmp_path,
        rule_yaml(condition="verb = delete")
        + textwrap.dedent(
            """\
              exceptions:
                - name: ci
                  field: user_name
                  comp: glob
                  values: ["ci-*", robots]
                - name: alice_in_sandbox
                  fields: [user_name, namespace]
                  comps: ["=", in]
                  values: [[alice, [sandbox, scratch]]]
            - list: robots
              items: [renovate]
            """
        ),
    )
    events = frame(
        ev("delete", "configmaps", ns="prod", name="a", user="ci-deployer"),
        ev("delete", "configmaps", ns="prod", name="a", user="renovate"),
        ev("delete", "configmaps", ns="scratch", name="a", user="alice"),
        ev("delete", "configmaps", ns="prod", name="a", user="alice"),
    )
    result = evaluate_rules(events, rs, explain=True)
    assert result.findings["principal"].to_list() == ["alice"]
    assert result.findings["event_count"].to_list() == [1]
    stats = result.stats["test-rule"]
    assert (stats.condition, stats.excluded, stats.requests) == (
        4,
        {"ci": 2, "alice_in_sandbox": 1},
        1,
    )


def test_override_file_appends_exceptions_and_lists(tmp_path):
    site = write(
        tmp_path,
        """\
        - rule: pod-exec
          override: {exceptions: append}
          exceptions:
            - name: known_exec_users
              field: principal
              comp: glob
              values: [oncall-*]
        - list: user_known_rbac_editors
          append: true
          items: [helm-ci]
        """,
    )
    rs = load_ruleset([site])
    exec_rule = rs.get("pod-exec")
    assert exec_rule.exceptions[0].rows == ((("user_known_exec_users", "oncall-*"),),)
    assert rs.lists["user_known_rbac_editors"] == ["helm-ci"]
    exec_ev = ev(
        "create",
        "pods",
        ns="default",
        name="p",
        sub="exec",
        code=101,
        stage="ResponseStarted",
        user="oncall-bob",
    )
    assert evaluate_rules(frame(exec_ev), rs.only("pod-exec")).findings.is_empty()
    rb = ev(
        "create",
        "roles",
        ns="default",
        name="r",
        code=201,
        user="helm-ci",
        group="rbac.authorization.k8s.io",
    )
    assert evaluate_rules(frame(rb), rs.only("rbac-changed")).findings.is_empty()
    assert load_ruleset().fingerprint != rs.fingerprint


def test_override_condition_append_and_enable_disable(tmp_path):
    site = write(
        tmp_path,
        """\
        - rule: exec-kube-system-pod
          override: {condition: append}
          condition: and not name startswith debug-
        - rule: pod-exec
          enabled: false
        - rule: namespace-created
          enabled: true
        """,
    )
    rs = load_ruleset([site])
    assert not rs.get("pod-exec").enabled
    assert rs.get("namespace-created").enabled
    assert rs.get("exec-kube-system-pod").condition.endswith("and not name startswith debug-")
    debug = ev(
        "create",
        "pods",
        ns="kube-system",
        name="debug-1",
        sub="exec",
        code=101,
        stage="ResponseStarted",
    )
    assert evaluate_rules(frame(debug), rs.only("exec-kube-system-pod")).findings.is_empty()
    rs2 = load_ruleset(disabled=["rbac-changed"], enabled=["secret-created"])
    assert not rs2.get("rbac-changed").enabled and rs2.get("secret-created").enabled


# --------------------------------------------------------------------------- grouping & windows
def test_one_finding_per_principal_per_window(tmp_path):
    rs = only_site_rules(tmp_path, rule_yaml())
    events = frame(
        ev("delete", "configmaps", ns="a", name="x", at=T0),  # window 10:00
        ev("delete", "configmaps", ns="a", name="y", at=T0 + timedelta(minutes=5)),  # 10:00
        ev("delete", "configmaps", ns="a", name="z", at=T0 + timedelta(minutes=9)),  # 10:10
        ev("delete", "configmaps", ns="a", name="x", at=T0, user="bob"),
    )
    found = evaluate_rules(events, rs).findings.sort("principal", "window_start")
    assert found.select("principal", "event_count").rows() == [
        ("alice", 2),
        ("alice", 1),
        ("bob", 1),
    ]
    starts = found["window_start"].dt.strftime("%H:%M").to_list()
    assert starts == ["10:00", "10:10", "10:00"]
    assert (found["window_end"] - found["window_start"]).to_list() == [timedelta(minutes=10)] * 3
    hourly = evaluate_rules(events, rs, window=timedelta(hours=1)).findings
    assert sorted(hourly["event_count"].to_list()) == [1, 3]


def test_threshold_counts_per_window_not_per_range(tmp_path):
    rs = only_site_rules(
        tmp_path,
        rule_yaml(
            condition="response_code = 403", threshold="{by: principal, count: requests, value: 5}"
        ),
    )
    split = [
        ev("get", "pods", ns="a", code=403, at=T0 + timedelta(minutes=2 * i)) for i in range(8)
    ]  # 10:01..10:15: 5 in 10:00-10:10? no: 10:01,03,05,07,09 = 5
    found = evaluate_rules(frame(*split), rs).findings
    assert found.select("score", "threshold", "event_count").rows() == [(5.0, 5.0, 5)]
    assert found["reasons"][0][0] == ("alice: 5 matching requests within 10 minutes (threshold 5)")
    fewer = evaluate_rules(frame(*split[1:]), rs).findings
    assert fewer.is_empty()


def test_distinct_count_threshold_by_source_ip(tmp_path):
    rs = only_site_rules(
        tmp_path,
        rule_yaml(
            condition="resource = secrets",
            threshold="{by: source_ip, distinct: user_name, value: 3, label: users}",
        ),
    )
    events = frame(
        *[
            ev(
                "get",
                "secrets",
                ns="a",
                name="s",
                user=f"u{i % 3}",
                ip="198.51.100.1",
                at=T0 + timedelta(seconds=i),
            )
            for i in range(9)
        ]
    )
    found = evaluate_rules(events, rs).findings
    assert found.select("principal", "principal_kind", "score", "event_count").rows() == [
        ("198.51.100.1", "source_ip", 3.0, 9)
    ]
    assert found["reasons"][0][0].startswith("source IP 198.51.100.1: 3 users within 10 minutes")


def test_baseline_from_history_raises_the_bar_for_a_noisy_principal():
    rs = load_ruleset().only("auth-failure-spike-principal")

    now_events = frame(*denials("noisy-ci", 40, T0), *denials("alice", 12, T0))
    # history: noisy-ci had 30 denials in each of the 150 windows of the 25 hours before
    # (a baseline range holds at least a day of its cluster: MIN_BASELINE)
    hist_start = T0 - timedelta(hours=25)
    history = frame(
        *[
            e
            for w in range(150)
            for e in denials("noisy-ci", 30, hist_start + timedelta(minutes=10 * w))
        ]
    )
    without = evaluate_rules(now_events, rs).findings
    assert without["principal"].to_list() == ["noisy-ci"]  # absolute 20: alice's 12 stays below
    with_history = evaluate_rules(now_events, rs, history=history).findings
    # noisy-ci: usual 30/window -> threshold 90 > 40; alice: no history -> min 10 <= 12
    assert with_history.select("principal", "score", "threshold").rows() == [("alice", 12.0, 10.0)]
    assert "none in the baseline range" in with_history["reasons"][0][0]
    assert rs.needs_history
    # read ahead (what `detect score` does while it reads the range): the same findings
    read = read_history(history, rs, window=timedelta(minutes=10))
    assert read.candidates is not None and read.n_windows == 150
    ahead = evaluate_rules(now_events, rs, history=read).findings
    assert ahead.drop("created_at").equals(with_history.drop("created_at"))


def test_denied_watch_logged_at_two_stages_counts_once():
    rs = load_ruleset().only("auth-failure-spike-principal")
    events = []
    for i in range(20):
        first = ev(
            "watch",
            "secrets",
            ns="a",
            code=403,
            stage="ResponseStarted",
            at=T0 + timedelta(seconds=i),
            decision="forbid",
        )
        events += [first, dict(first, stage="ResponseComplete")]
    result = evaluate_rules(frame(*events), rs)
    assert result.findings["event_count"].to_list() == [20]
    assert result.events.height == 20
    assert set(result.events["stage"]) == {"ResponseComplete"}


# --------------------------------------------------------------------------- findings contract
def test_findings_follow_the_contract_and_ids_are_stable(tmp_path):
    rs = load_ruleset()
    events = frame(
        ev("patch", "configmaps", ns="kube-system", name="aws-auth", body={"data": {}}),
        ev(
            "create",
            "pods",
            ns="kube-system",
            name="x",
            sub="exec",
            code=101,
            stage="ResponseStarted",
        ),
    )
    first = evaluate_rules(events.lazy(), rs)
    again = evaluate_rules(events, rs)
    f = first.findings
    assert f.schema == pl.Schema(FINDINGS_COLUMNS)
    assert first.events.schema == pl.Schema(LINK_COLUMNS)
    assert sorted(f["detector"]) == [
        "rule:aws-auth-changed",
        "rule:exec-kube-system-pod",
        "rule:pod-exec",
    ]
    assert f["finding_id"].to_list() == again.findings["finding_id"].to_list()
    assert f["severity_rank"].to_list() == [SEVERITIES.index(s) for s in f["severity"]]
    assert f["severity_rank"].to_list() == sorted(f["severity_rank"].to_list(), reverse=True)
    assert set(f["model_version"]) == {rs.fingerprint}
    assert not any(f["cold_start"]) and all(t == [] for t in f["top_features"].to_list())
    assert set(f["tactic"]) == {"Persistence", "Execution"}
    links = first.events.join(f.select("finding_id", "audit_ids"), on="finding_id")
    assert all(a in ids for a, ids in links.select("audit_id", "audit_ids").iter_rows())
    assert links.height == f["event_count"].sum()


def test_frames_missing_columns_and_empty_input_are_fine():
    rs = load_ruleset()
    minimal = pl.DataFrame(
        {
            "event_time": [T0],
            "audit_id": ["a"],
            "stage": ["ResponseComplete"],
            "verb": ["deletecollection"],
            "resource": ["events"],
            "namespace": ["prod"],
            "user_name": ["mallory"],
        },
        schema_overrides={"event_time": pl.Datetime("us", "UTC")},
    )
    found = evaluate_rules(minimal, rs).findings
    assert found["detector"].to_list() == ["rule:events-deleted"]
    assert found["cluster"].to_list() == ["default"]
    empty = evaluate_rules(frame(), rs)
    assert empty.findings.is_empty() and empty.findings.schema == pl.Schema(FINDINGS_COLUMNS)


# --------------------------------------------------------------------------- rule files
BAD_FILES = [
    ("- rule: x\n  title: [unclosed\n", None, "not valid YAML at line"),
    ("rule: x\n", None, "a rules file is a YAML list"),
    (rule_yaml("Bad_Id"), "Bad_Id", "lower-case letters"),
    (rule_yaml() + "  priority: WARNING\n", "test-rule", "unknown key(s) priority"),
    ("- rule: test-rule\n  title: t\n", "test-rule", "missing required key(s): severity"),
    (rule_yaml().replace("medium", "urgent"), "test-rule", "severity must be one of"),
    (rule_yaml().replace("Impact", "Havoc"), "test-rule", "not a MITRE ATT&CK tactic"),
    (rule_yaml().replace("T1485", "1485"), "test-rule", "technique must look like T1234"),
    (rule_yaml(condition="verb = get and"), "test-rule", "condition at column 15"),
    (rule_yaml(condition="verbb = get"), "test-rule", "unknown field 'verbb'"),
    (rule_yaml(condition="user_is_admin"), "test-rule", "unknown macro 'user_is_admin'"),
    (rule_yaml(condition="user_name matches '(x'"), "test-rule", "invalid regex"),
    (rule_yaml(stages="[ResponseDone]"), "test-rule", "unknown stage(s)"),
    (rule_yaml() + rule_yaml(), "test-rule", "defined twice in this file"),
    # A built-in macro broken by a user's file: the user's file is named, not the
    # built-in rule that uses the macro.
    ("- macro: not_failed\n  condition: not_failed\n", None, "refers to itself"),
    ("- macro: not_failed\n  condition: verbb = get\n", None, "unknown field 'verbb'"),
    (
        rule_yaml(threshold="{by: namespace, count: requests, value: 3}"),
        "test-rule",
        "threshold.by is principal or source_ip",
    ),
    (rule_yaml(threshold="{count: requests, value: 0}"), "test-rule", "threshold.value"),
    (
        rule_yaml(exceptions="[{name: a, fields: [verb, namespace], values: [[get]]}]"),
        "test-rule",
        "each values row has 2 item(s)",
    ),
    (
        rule_yaml(exceptions="[{name: a, field: verb, comp: like, values: [x]}]"),
        "test-rule",
        "unknown comp 'like'",
    ),
    (rule_yaml(output="'{no_such_field}'"), "test-rule", "output: unknown field"),
    ("- rule: no-such-rule\n  enabled: false\n", "no-such-rule", "no such rule"),
    (
        "- rule: pod-exec\n  override: {condition: append}\n",
        "pod-exec",
        "override must name exactly the keys given",
    ),
    (
        "- macro: loop\n  condition: loop\n" + rule_yaml(condition="loop"),
        None,  # the macro itself is named, before any rule that uses it
        "refers to itself",
    ),
    ("- required_engine_version: 99\n", None, "needs rule engine version 99"),
]


@pytest.mark.parametrize(("text", "rule_id", "message"), BAD_FILES)
def test_malformed_rule_files_are_rejected_with_file_rule_and_reason(
    tmp_path, text, rule_id, message
):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(RuleError) as err:
        load_ruleset([path])
    assert err.value.file == path
    assert err.value.rule_id == rule_id
    assert message in err.value.reason
    assert str(err.value).startswith(path)


def test_unknown_ids_in_disable_are_an_error():
    with pytest.raises(RuleError, match="no such rule") as err:
        load_ruleset(disabled=["pod-exce"])
    assert err.value.rule_id == "pod-exce"
    assert "did you mean" not in err.value.reason or "pod-exec" in err.value.reason


def test_missing_rules_file():
    with pytest.raises(RuleError, match="no such file"):
        load_ruleset(["/nonexistent/rules.yaml"])


#: How a rule's references name the peer rule it follows (issue 13).
PEERS = ("Stratus Red Team:", "Sigma:", "Elastic:", "Datadog:", "Panther:", "GuardDuty:")


def test_builtin_catalogue_shape():
    rs = load_ruleset()
    assert len(rs.rules) >= 40 and len(rs.enabled_rules) >= 25
    assert len(set(rs.ids)) == len(rs.ids)
    for r in rs.rules:
        assert r.references or "activity" in r.tags, r.id
        peer_reference = any(ref.startswith(PEERS) for ref in r.references)
        assert (
            r.falco
            or r.guardduty
            or "eks_guide" in r.tags
            or peer_reference
            or r.id
            in {
                "kube-system-token-requested",
                "events-deleted",
                "auth-failure-spike-source-ip",
                # no peer catalogue has these; docs/coverage.md says why we keep them
                "pod-copy-out",
                "exec-escaped-parameters",
                "root-with-privilege-escalation",
                "daemonset-created-by-person",
                "ingress-without-tls",
                # the info record beside the Elastic rule impersonation-of-privileged-identity
                "impersonation-by-person",
            }
        ), r.id
    assert rs.fingerprint.startswith("rules-") and rs.fingerprint == load_ruleset().fingerprint


def test_sentences_stay_true_for_cluster_scoped_lists_and_new_keys(tmp_path):
    ruleset = only_site_rules(
        tmp_path,
        rule_yaml("lists", "verb = list")
        + rule_yaml(
            "burst",
            "verb = delete",
            threshold="{by: principal, count: requests, value: 1, baseline: {factor: 3, min: 1}}",
        ),
    )
    events = frame(ev("list", "nodes"), ev("list", "pods"))
    found = evaluate_rules(events, ruleset.only("lists")).findings
    lines = {line for reasons in found["reasons"].to_list() for line in reasons}
    assert {"alice listed nodes", "alice listed pods in all namespaces"} <= lines
    history = frame(
        *[
            ev("delete", "pods", ns="a", name="x", user="bob", at=T0 - timedelta(hours=h))
            for h in (1, 48)
        ]
    )
    found = evaluate_rules(
        frame(ev("delete", "pods", ns="a", name="p")), ruleset.only("burst"), history=history
    ).findings
    first = found["reasons"][0][0]
    assert "none in the baseline range" in first and "usual" not in first


def _chain(kind: str, n: int) -> str:
    """``n`` macros (or lists) each naming the next, the last a plain one."""
    if kind == "macro":
        links = "".join(f"- macro: m{i}\n  condition: m{i + 1}\n" for i in range(n))
        return links + f"- macro: m{n}\n  condition: verb = get\n"
    links = "".join(f"- list: l{i}\n  items: [l{i + 1}]\n" for i in range(n))
    return links + f"- list: l{n}\n  items: [get]\n"


@pytest.mark.parametrize(
    ("text", "rule_id", "message"),
    [
        (rule_yaml(condition="(" * 400 + "verb = get" + ")" * 400), "test-rule", "too deeply"),
        (rule_yaml(condition="not " * 990 + "verb = get"), "test-rule", "too deeply"),
        (_chain("macro", 3000) + rule_yaml(condition="m0"), None, "too deeply"),
        (_chain("list", 3000) + rule_yaml(condition="verb in (l0)"), None, "too deeply"),
    ],
)
def test_conditions_nested_past_pythons_stack_are_one_line_errors(tmp_path, text, rule_id, message):
    # Each raised RecursionError: "unexpected RecursionError" (exit 3), naming nothing.
    path = write(tmp_path, text, "deep.yaml")
    with pytest.raises(RuleError) as err:
        load_ruleset([path])
    assert err.value.rule_id == rule_id and message in err.value.reason
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


def test_a_change_to_one_loaded_rule_set_does_not_reach_the_next_load():
    """Rule sets are compiled once per process for the same files; each load must still
    be the caller's own. A list tuned in memory, a macro tried or a definition edited by
    one caller (the rule set is public API) reached every later load, and its
    fingerprint: the findings' model_version."""
    first = load_ruleset()
    fingerprint = first.fingerprint
    name = next(iter(first.lists))
    macro = next(iter(first.macros))
    first.lists[name].append("added-by-first-caller")
    first.macros[macro] = "never_true"
    first.rules[0].definition["title"] = "edited by first caller"
    first.rules[0].exception_exprs["mine"] = pl.lit(True)
    first.rules[0].compiler.lists[name].append("added-by-first-caller")

    second = load_ruleset()
    assert "added-by-first-caller" not in second.lists[name]
    assert second.macros[macro] != "never_true"
    assert second.rules[0].definition.get("title") != "edited by first caller"
    assert "mine" not in second.rules[0].exception_exprs
    assert "added-by-first-caller" not in second.rules[0].compiler.lists[name]
    assert second.fingerprint == fingerprint
