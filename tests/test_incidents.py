"""Incidents: grouping, tactic chaining, suppressions as code, statuses by id prefix."""

from __future__ import annotations

import logging
from datetime import timedelta

import polars as pl
import pytest
from alerts_data import T0, W, finding, frames

from detector.incidents import suppress, workflow
from detector.incidents.group import Incident, group
from detector.incidents.status import AmbiguousId, UnknownId, resolve_prefix
from detector.lake import findings as findings_store
from detector.lake import incidents as table
from detector.lake.events import Lake

ROLE = "arn:aws:iam::111122223333:role/dev"


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def test_stolen_token_across_two_windows_is_one_incident():
    df, ev = frames([finding(ROLE, T0, severity="medium"), finding(ROLE, T0 + W)])
    incs, changed = group(df, [], events=ev)
    assert len(incs) == 1 and changed == {incs[0].incident_id}
    assert incs[0].finding_ids == df.sort("window_start")["finding_id"].to_list()
    assert incs[0].severity == "medium"


def test_findings_further_apart_than_the_horizon_are_two_incidents():
    df, ev = frames([finding(ROLE, T0), finding(ROLE, T0 + timedelta(hours=7))])
    incs, _ = group(df, [], events=ev, horizon=timedelta(hours=6))
    assert len(incs) == 2


def test_anonymous_probing_is_grouped_by_source_ip():
    rows = [
        finding("system:anonymous", T0, detector=f"rule:r{i}", kind="anonymous") for i in range(5)
    ]
    df, ev = frames(rows, source_ip="203.0.113.9")
    other, ev2 = frames(
        [finding("system:anonymous", T0, detector="rule:r9", kind="anonymous")],
        source_ip="198.51.100.1",
    )
    incs, _ = group(pl.concat([df, other]), [], events=pl.concat([ev, ev2]))
    keys = sorted((i.key_kind, i.key, len(i.finding_ids)) for i in incs)
    assert keys == [("source_ip", "198.51.100.1", 1), ("source_ip", "203.0.113.9", 5)]


def test_a_spike_from_a_source_ip_joins_the_anonymous_probing_from_it():
    """A rule counting by source IP files its finding with the address as principal (kind
    ``source_ip``): it belongs to that address's incident, not to one of its own."""
    probes, ev = frames(
        [
            finding(
                "system:anonymous", T0, detector="rule:anonymous-request-denied", kind="anonymous"
            )
        ],
        source_ip="45.155.205.223",
    )
    spike, ev2 = frames(
        [
            finding(
                "45.155.205.223", T0, detector="rule:auth-failure-spike-source-ip", kind="source_ip"
            )
        ],
        source_ip="45.155.205.223",
    )
    incs, _ = group(pl.concat([probes, spike]), [], events=pl.concat([ev, ev2]))
    assert [(i.key_kind, i.key, len(i.finding_ids)) for i in incs] == [
        ("source_ip", "45.155.205.223", 2)
    ]


def test_findings_a_rescored_span_lost_are_withdrawn_and_an_emptied_incident_resolved():
    """Windows scored again (late events, a rule disabled) replace their findings in the
    lake; the incidents holding the ones that are gone lose them too (they named findings
    nobody could open), and an incident left with none is resolved, which its sinks hear."""
    from detector.lake.findings import Rescored

    exec_, enum = (
        finding(ROLE, T0, severity="high", detector="rule:exec"),
        finding(ROLE, T0 + W, severity="medium", detector="rule:enum"),
    )
    df, ev = frames([exec_, enum])
    (inc,), _ = group(df, [], events=ev)
    v1, span = inc.version, Rescored("rules", T0, T0 + 2 * W, "prod")
    kept = df.filter(pl.col("detector") == "rule:enum")
    (inc,), changed = group(kept, [inc], events=ev, rescored=[span])
    assert inc.finding_ids == kept["finding_id"].to_list() and inc.severity == "medium"
    assert changed == {inc.incident_id} and inc.version == v1 + 1 and inc.status == "new"

    untouched = [Rescored("rules", T0, T0 + 2 * W, "staging"), Rescored("model", T0, T0 + 2 * W)]
    assert group(kept[:0], [inc], events=ev, rescored=untouched)[1] == set()
    (inc,), changed = group(kept[:0], [inc], events=ev, rescored=[span])
    assert inc.finding_ids == [] and inc.status == "resolved" and "withdrawn" in inc.status_reason
    assert changed == {inc.incident_id} and inc.version == v1 + 2
    (back,), changed = group(df, [inc], events=ev, rescored=[span])  # found again (rule back on)
    assert back.incident_id == inc.incident_id and back.status == "new"
    assert back.finding_ids == df.sort("window_start")["finding_id"].to_list()
    assert changed == {back.incident_id} and back.version == v1 + 3  # sinks hear of it


def test_an_incident_that_lost_findings_spans_the_findings_it_holds():
    """first_seen and last_seen are what an analyst reads and what the grouping horizon
    counts from: after a withdrawal they span the findings left, not the ones gone."""
    from detector.lake.findings import Rescored

    df, ev = frames([finding(ROLE, T0), finding(ROLE, T0 + W), finding(ROLE, T0 + 3 * W)])
    (inc,), _ = group(df, [], events=ev)
    assert (inc.first_seen, inc.last_seen) == (T0, T0 + 4 * W)
    middle = df.filter(pl.col("window_start") == T0 + W)
    (inc,), _ = group(middle, [inc], events=ev, rescored=[Rescored("model", T0, T0 + 4 * W)])
    assert inc.finding_ids == middle["finding_id"].to_list()
    assert (inc.first_seen, inc.last_seen) == (T0 + W, T0 + 2 * W)


def test_an_incident_whose_first_day_changes_is_stored_once(lake):
    """Incidents are filed under their first_seen date. A late finding before midnight
    joining an incident first seen after it, or a withdrawal leaving only findings of the
    next day, moves that date: the incident must move with it, not be kept under both."""
    from detector.lake.findings import Rescored

    midnight = T0.replace(hour=0) + timedelta(days=1)
    after = frames([finding(ROLE, midnight + W)])[0]
    late, ev = frames([finding(ROLE, midnight - W), finding(ROLE, midnight + W)])
    workflow.update(lake, after, ev, now=T0)
    (inc,) = workflow.update(lake, late, ev, now=T0).incidents
    stored = table.read_incidents(lake)
    assert stored["incident_id"].to_list() == [inc.incident_id]
    assert stored["first_seen"].to_list() == [midnight - W]

    span = Rescored("model", midnight - W, midnight, "prod")
    workflow.update(lake, late[:0], ev, now=T0, rescored=[span])
    stored = table.read_incidents(lake)
    assert stored["incident_id"].to_list() == [inc.incident_id]
    assert stored["first_seen"].to_list() == [midnight + W]
    assert stored["finding_ids"].to_list() == [after["finding_id"].to_list()]


def test_chained_tactics_raise_severity_and_say_why():
    rows = [
        finding(ROLE, T0, severity="low", detector="rule:list-secrets", tactic="Discovery"),
        finding(
            ROLE, T0 + W, severity="medium", detector="rule:read-token", tactic="Credential Access"
        ),
        finding(
            ROLE,
            T0 + 2 * W,
            severity="medium",
            detector="rule:bind-admin",
            tactic="Privilege Escalation",
        ),
    ]
    df, ev = frames(rows[:2])
    (two,), _ = group(df, [], events=ev)
    assert (two.base_severity, two.severity) == ("medium", "high")
    assert "Discovery -> Credential Access" in two.severity_reason
    df, ev = frames(rows)
    (three,), _ = group(df, [], events=ev)
    assert three.severity == "critical"
    assert three.tactics == ["Discovery", "Credential Access", "Privilege Escalation"]


def test_model_and_rule_disagreeing_is_explained():
    rows = [
        finding(ROLE, T0, severity="medium"),
        finding(ROLE, T0, severity="high", detector="rule:exec"),
    ]
    df, ev = frames(rows)
    (inc,), _ = group(df, [], events=ev)
    assert inc.severity == "high"
    assert "model:iforest said medium" in inc.severity_reason


def test_info_findings_never_raise_and_never_alert():
    rows = [
        finding(ROLE, T0, severity="info", detector="rule:a", tactic="Execution"),
        finding(ROLE, T0, severity="info", detector="rule:b", tactic="Discovery"),
    ]
    df, ev = frames(rows)
    (inc,), _ = group(df, [], events=ev)
    assert inc.severity == "info"


def test_the_title_counts_alerts_apart_from_records():
    """A developer's routine execs are info records that join the incident of their
    cluster-admin binding: the title an analyst reads in Slack said "+82 more finding(s)"
    for two alerts and eighty records."""

    def title(*severities: str) -> str:
        rows = [
            finding(ROLE, T0 + i * W, severity=s, detector=f"rule:{s}{i}", title=f"{s} {i}")
            for i, s in enumerate(severities)
        ]
        df, ev = frames(rows)
        (inc,), _ = group(df, [], events=ev)
        return inc.title

    assert title("high") == "high 0"
    assert (
        title("high", "low", "info", "info")
        == f"high 0 (+1 more alert(s) and 2 record(s) for {ROLE})"
    )
    assert title("medium", "high") == f"high 1 (+1 more alert(s) for {ROLE})"
    assert title("low", "info") == f"low 0 (+1 record(s) for {ROLE})"
    assert title("info", "info", "info") == f"info 0 (+2 more record(s) for {ROLE})"


def test_a_new_finding_is_a_new_version_a_rescore_is_not():
    df, ev = frames([finding(ROLE, T0)])
    (inc,), _ = group(df, [], events=ev)
    assert inc.version == 1
    again, changed = group(df, [inc], events=ev)
    assert changed == set() and again[0].version == 1
    df2, ev2 = frames([finding(ROLE, T0 + W, severity="high")])
    (grown,), changed = group(df2, [Incident.from_row(inc.to_row())], events=ev2)
    assert changed == {inc.incident_id} and grown.version == 2 and grown.severity == "high"


SUPPRESSIONS = """
suppressions:
  - name: lb-health
    reason: the load balancer's health check (TICKET-42)
    expires: 2099-01-01
    match:
      principal: system:anonymous
      user_agent: "kube-probe/*"
      source_ip: 10.0.0.0/8
  - name: old-ci
    reason: CI runner before the migration
    expires: 2020-01-01
    match:
      principal_regex: "^arn:aws:iam::\\\\d+:role/ci-.*"
"""


def test_suppressions_match_on_every_event_and_expired_ones_are_logged(tmp_path, caplog):
    path = tmp_path / "suppressions.yaml"
    path.write_text(SUPPRESSIONS)
    sups = suppress.load(path)
    probe, probe_ev = frames(
        [finding("system:anonymous", T0, kind="anonymous")],
        source_ip="10.1.2.3",
        user_agent="kube-probe/1.30",
    )
    hostile, hostile_ev = frames(
        [finding("system:anonymous", T0 + W, detector="rule:x", kind="anonymous")],
        source_ip="10.1.2.3",
        user_agent="curl/8.0",
    )
    ci, ci_ev = frames([finding("arn:aws:iam::111122223333:role/ci-runner", T0)])
    df = pl.concat([probe, hostile, ci])
    ev = pl.concat([probe_ev, hostile_ev, ci_ev])
    with caplog.at_level(logging.WARNING):
        hits = dict(suppress.apply(df, ev, sups, T0).iter_rows())
    assert hits[probe["finding_id"][0]] == "lb-health"
    assert hits[hostile["finding_id"][0]] is None  # one curl request is not a health check
    assert hits[ci["finding_id"][0]] is None  # expired
    assert "suppression old-ci expired on 2020-01-01" in caplog.text


def test_among_hundreds_of_suppressions_the_first_that_holds_wins():
    """All suppressions are tested at once (one after another, a file of 50,000 took 48 s
    and 500 ~1 s of every scoring run). What each finding gets is still the first in file
    order that holds, an event condition holding only when every event of the finding
    matches, and never without events to look at."""

    def entry(name: str, **match: str) -> dict:
        return {"name": name, "reason": "r", "expires": "2099-01-01", "match": match}

    entries = [entry(f"person-{i}", principal=f"person-{i}") for i in range(400)]
    entries += [
        entry("expired-first", principal="*"),
        entry("system-pods", detector="rule:*", namespace="kube-system"),
        entry("probes", user_agent="kube-probe/*", source_ip="10.0.0.0/8"),
        entry("anyone", principal="*"),
    ]
    entries[400]["expires"] = "2020-01-01"
    sups = suppress.parse({"suppressions": entries})
    system, system_ev = frames(
        [finding("alice", T0, detector="rule:exec")], namespace="kube-system"
    )
    mixed, mixed_ev = frames([finding("alice", T0 + W, detector="rule:exec")])
    mixed_ev = pl.concat([mixed_ev, system_ev.with_columns(finding_id=mixed["finding_id"])])
    probe, probe_ev = frames([finding("lb", T0)], user_agent="kube-probe/1.30")
    person, person_ev = frames([finding("person-7", T0, detector="rule:exec")])
    lonely, _ = frames([finding("bob", T0 + 2 * W, detector="rule:exec")])  # no events
    df = pl.concat([system, mixed, probe, person, lonely])
    ev = pl.concat([system_ev, mixed_ev, probe_ev, person_ev])
    got = dict(suppress.apply(df, ev, sups, T0).iter_rows())
    assert got == {
        system["finding_id"][0]: "system-pods",
        mixed["finding_id"][0]: "anyone",  # one of its two events is outside kube-system
        probe["finding_id"][0]: "probes",
        person["finding_id"][0]: "person-7",
        lonely["finding_id"][0]: "anyone",
    }
    without_events = dict(suppress.apply(df, None, sups, T0).iter_rows())
    assert set(without_events.values()) == {"anyone", "person-7"}
    assert dict(suppress.apply(df.clear(), ev, sups, T0).iter_rows()) == {}


def test_source_ip_suppressions_compare_addresses_of_either_version():
    """Addresses are compared as numbers, each distinct one parsed once (a Python call
    per event and per suppression made 500 such suppressions over 20,000 events take
    45 s): IPv4 and IPv6 kept apart, an address that does not parse matching nothing."""

    def entry(name: str, net: str) -> dict:
        return {"name": name, "reason": "r", "expires": "2099-01-01", "match": {"source_ip": net}}

    sups = suppress.parse(
        {"suppressions": [entry("v6", "fd00::/8"), entry("v4", "10.0.0.0/8"), entry("all", "::/0")]}
    )
    rows = [finding(f"p{i}", T0 + i * W) for i in range(4)]
    cases = ["10.1.2.3", "fd00::1", "2001:db8::1", "not-an-address"]
    pairs = [frames([r], source_ip=ip) for r, ip in zip(rows, cases, strict=True)]
    df = pl.concat([f for f, _ in pairs])
    ev = pl.concat([e for _, e in pairs])
    got = dict(suppress.apply(df, ev, sups, T0).iter_rows())
    assert [got[f["finding_id"][0]] for f, _ in pairs] == ["v4", "v6", "all", None]


def test_rows_of_one_finding_share_its_suppression_and_a_null_id_gets_none():
    sups = suppress.parse(
        {
            "suppressions": [
                {"name": n, "reason": "r", "expires": "2099-01-01", "match": {"principal": p}}
                for n, p in (("q", "q"), ("p", "p"))
            ]
        }
    )
    df = pl.DataFrame(
        {"finding_id": ["a", "a", None], "principal": ["p", "q", "p"], "detector": "d"},
        schema_overrides={"finding_id": pl.String},
    ).with_columns(cluster=pl.lit("c"))
    assert suppress.apply(df, None, sups, T0).rows() == [("a", "q"), ("a", "q"), (None, None)]


def test_a_glob_with_several_stars_applies_as_it_reads():
    """``*kube-probe*`` was translated by fnmatch into a Python-only atomic group: the file
    loaded, then applying it to a finding failed inside polars."""
    sups = suppress.parse(
        {
            "suppressions": [
                {
                    "name": "probes",
                    "reason": "health checks from any agent build (TICKET-7)",
                    "expires": "2099-01-01",
                    "match": {"detector": "rule:*-*", "user_agent": "*kube-probe*"},
                }
            ]
        }
    )
    rule = "rule:anonymous-access"
    probe, probe_ev = frames(
        [finding("system:anonymous", T0, detector=rule)], user_agent="x kube-probe/1.3"
    )
    other, other_ev = frames(
        [finding("system:anonymous", T0 + W, detector=rule)], user_agent="curl/8.0"
    )
    hits = dict(
        suppress.apply(
            pl.concat([probe, other]), pl.concat([probe_ev, other_ev]), sups, T0
        ).iter_rows()
    )
    assert hits == {probe["finding_id"][0]: "probes", other["finding_id"][0]: None}


@pytest.mark.parametrize(
    "typed",
    [
        "arn:aws:sts::111122223333:assumed-role/developer/grace",  # pasted from CloudTrail
        "arn:aws:sts::*:assumed-role/developer/*",
        "arn:aws:iam::111122223333:role/developer/grace",  # the stored form, as before
    ],
)
def test_a_suppression_names_a_session_as_cloudtrail_shows_it(typed):
    """The README says the STS ARN is accepted wherever an identity is named; a
    suppression written that way matched nothing and silenced nothing."""
    sups = suppress.parse(
        {
            "suppressions": [
                {
                    "name": "grace-migration",
                    "reason": "the migration grace runs this week (TICKET-9)",
                    "expires": "2099-01-01",
                    "match": {"principal": typed},
                }
            ]
        }
    )
    grace, grace_ev = frames([finding("arn:aws:iam::111122223333:role/developer/grace", T0)])
    other, other_ev = frames([finding("arn:aws:iam::111122223333:role/developer/hal", T0)])
    hits = dict(
        suppress.apply(
            pl.concat([grace, other]), pl.concat([grace_ev, other_ev]), sups, T0
        ).iter_rows()
    )
    assert hits[grace["finding_id"][0]] == "grace-migration"
    # the glob over every developer session takes hal's too; the exact names do not
    assert hits[other["finding_id"][0]] == ("grace-migration" if "*" in typed else None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("suppressions: [{name: a, reason: r, expires: 2030-01-01, match: {}}]", "match needs"),
        ("suppressions: [{name: a, reason: r, match: {principal: x}}]", "expires is required"),
        ("suppressions: [{name: a, expires: 2030-01-01, match: {principal: x}}]", "reason"),
        (
            "suppressions: [{name: a, reason: r, expires: 2030-01-01, match: {source_ip: x}}]",
            "not an address or CIDR",
        ),
        (
            "suppressions: [{name: a, reason: r, expires: 2030-01-01, match: {pod: x}}]",
            "unknown match key",
        ),
        # dates YAML itself cannot hold: a ValueError from the YAML reader before
        (
            "suppressions: [{name: a, reason: r, expires: 0000-01-01, match: {principal: x}}]",
            "expires '0000-01-01' is not a date",
        ),
        (
            "suppressions: [{name: a, reason: r, expires: 2030-02-30, match: {principal: x}}]",
            "expires '2030-02-30' is not a date",
        ),
        (
            "suppressions: [{name: '../x', reason: r, expires: 2030-01-01, match: {principal: x}}]",
            "name must be",
        ),
        ("!!python/object/apply:os.system ['true']", "not valid YAML"),
        # Python's regex engine takes these; polars', which applies them, does not:
        (
            "suppressions: [{name: a, reason: r, expires: 2030-01-01, "
            "match: {principal_regex: '^(?!ci-).*'}}]",
            "principal_regex: invalid regex",
        ),
        (
            "suppressions: [{name: a, reason: r, expires: 2030-01-01, "
            "match: {user_agent: 'kube[z-a]*'}}]",
            "user_agent: invalid regex",
        ),
    ],
)
def test_bad_suppressions_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(suppress.SuppressionError, match=message):
        suppress.load(path)


def test_suppressed_findings_stay_in_the_lake_with_the_suppression_name(lake, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUPPRESSIONS)
    df, ev = frames(
        [finding("system:anonymous", T0, kind="anonymous")],
        source_ip="10.9.9.9",
        user_agent="kube-probe/1.30",
    )
    findings_store.write_range(lake, "model", T0, T0 + W, df, ev)
    res = workflow.update(lake, df, ev, suppressions=suppress.load(path), now=T0)
    assert res.suppressed_findings == 1
    (inc,) = res.incidents
    assert (inc.status, inc.suppression) == ("suppressed", "lb-health")
    listed = workflow.findings_with_status(lake, findings_store.list_findings(lake))
    assert listed.select("status", "suppression").row(0) == ("suppressed", "lb-health")
    assert table.read_incidents(lake)["status"].to_list() == ["suppressed"]


def test_ack_and_resolve_by_unique_prefix(lake):
    df, ev = frames([finding(ROLE, T0), finding(ROLE, T0 + W, detector="rule:y")])
    findings_store.write_range(lake, "model", T0, T0 + 2 * W, df, ev)
    (inc,) = workflow.update(lake, df, ev, now=T0).incidents
    acked = workflow.set_incident_status(lake, inc.incident_id[:6], "acknowledged", "on it")
    assert acked.status == "acknowledged"
    assert table.read_incidents(lake)["status"].to_list() == ["acknowledged"]
    for fid in df["finding_id"]:
        workflow.set_finding_status(lake, fid[:8], "resolved")
    # every finding resolved: the incident is resolved too
    assert table.read_incidents(lake)["status"].to_list() == ["resolved"]
    # a new finding after the incident was resolved opens a new incident
    df3, ev3 = frames([finding(ROLE, T0 + 3 * W)])
    res = workflow.update(lake, df3, ev3, now=T0)
    assert res.incidents[0].incident_id != inc.incident_id


def test_a_resolved_incident_is_reopened_before_it_is_acknowledged(lake):
    """``ack`` of a resolved incident quietly moved it back to acknowledged: a closed
    incident in someone's queue again, from a mistyped id as often as not."""
    df, ev = frames([finding(ROLE, T0)])
    findings_store.write_range(lake, "model", T0, T0 + W, df, ev)
    (inc,) = workflow.update(lake, df, ev, now=T0).incidents
    workflow.set_incident_status(lake, inc.incident_id, "resolved", "rotated")
    with pytest.raises(UnknownId, match="is resolved: `detect incidents reopen"):
        workflow.set_incident_status(lake, inc.incident_id, "acknowledged")
    assert table.read_incidents(lake)["status"].to_list() == ["resolved"]
    # nor is one of its findings worked on while it is resolved (review: the incident stayed
    # resolved holding an acknowledged finding)
    fid = df["finding_id"][0]
    with pytest.raises(UnknownId, match="which is resolved: `detect incidents reopen"):
        workflow.set_finding_status(lake, fid[:8], "acknowledged")
    workflow.set_incident_status(lake, inc.incident_id, "new", "it came back")
    acked = workflow.set_incident_status(lake, inc.incident_id, "acknowledged")
    assert acked.status == "acknowledged"
    assert workflow.set_finding_status(lake, fid[:8], "acknowledged")["status"] == "acknowledged"


def test_resolving_the_findings_left_resolves_an_incident_that_lost_one(lake):
    """A finding withdrawn from its incident (its window scored again without it) keeps its
    old status row, which still names the incident. Resolving every finding the incident
    still holds resolves it: the row of the one it lost does not hold it open."""
    from detector.lake.findings import Rescored

    df, ev = frames([finding(ROLE, T0), finding(ROLE, T0 + W)])
    findings_store.write_range(lake, "model", T0, T0 + 2 * W, df, ev)
    (inc,) = workflow.update(lake, df, ev, now=T0).incidents
    kept = df.filter(pl.col("window_start") == T0)
    findings_store.write_range(lake, "model", T0, T0 + 2 * W, kept, ev)
    span = Rescored("model", T0, T0 + 2 * W, "prod")
    (inc,) = workflow.update(lake, kept, ev, now=T0, rescored=[span]).incidents
    assert inc.finding_ids == kept["finding_id"].to_list() and inc.status == "new"
    workflow.set_finding_status(lake, kept["finding_id"][0][:8], "resolved")
    assert table.read_incidents(lake)["status"].to_list() == ["resolved"]


def test_prefixes_must_be_unique_and_long_enough():
    ids = ["abcdef01", "abcdef02", "12345678"]
    assert resolve_prefix("1234", ids, "finding") == "12345678"
    with pytest.raises(AmbiguousId, match="matches 2"):
        resolve_prefix("abcdef", ids, "finding")
    with pytest.raises(UnknownId, match="too short"):
        resolve_prefix("ab", ids, "finding")
    with pytest.raises(UnknownId, match="no finding"):
        resolve_prefix("ffff", ids, "finding")


def test_incidents_round_trip_through_the_lake(lake):
    df, ev = frames(
        [
            finding(ROLE, T0, tactic="Discovery", detector="rule:a"),
            finding(ROLE, T0 + W, tactic="Execution", detector="rule:b"),
        ]
    )
    res = workflow.update(lake, df, ev, now=T0)
    back = [Incident.from_row(r) for r in table.read_incidents(lake).iter_rows(named=True)]
    assert [b.to_row() for b in back] == [i.to_row() for i in res.incidents]
    # the next batch joins the stored incident rather than opening another
    df2, ev2 = frames([finding(ROLE, T0 + 2 * W)])
    res2 = workflow.update(lake, df2, ev2, now=T0)
    assert [i.incident_id for i in res2.incidents] == [res.incidents[0].incident_id]
    assert res2.incidents[0].version == 2


def test_an_incident_filed_under_two_days_reads_as_its_latest_version(lake):
    """A run killed between filing a moved incident under its new day and taking it out of
    the old one (or a lake written before moves were handled) holds two rows of it: readers
    see one, the latest (two rows made every list show it twice, and which one the next
    run grouped into was a matter of order)."""
    midnight = T0.replace(hour=0) + timedelta(days=1)
    df, ev = frames([finding(ROLE, midnight + W)])
    (inc,) = workflow.update(lake, df, ev, now=T0).incidents
    old = inc.to_row() | {"first_seen": midnight - W, "version": inc.version - 1}
    table.incidents_table(lake).write(
        ((midnight - W).date().isoformat(),),
        table._frame([old], table.INCIDENT_COLUMNS),
        "incidents.parquet",
    )
    for read in (
        table.read_incidents(lake),
        table.incidents_overlapping(lake, midnight - 2 * W, midnight + 2 * W),
    ):
        assert read["incident_id"].to_list() == [inc.incident_id]
        assert read["version"].to_list() == [inc.version]


def test_the_list_shows_an_incident_active_since_then_that_began_before(lake):
    """`detect incidents --since 1d` read only the days from --since on, by first finding:
    an incident begun two days ago and still growing (a finding an hour ago) was missing
    from the list an analyst checks each morning."""
    import json
    from datetime import UTC, datetime

    from typer.testing import CliRunner

    from detector.cli import app

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    steady = [finding(ROLE, now - timedelta(hours=h)) for h in range(55, 0, -5)]
    old_news = [finding("bob", now - timedelta(days=3))]
    df, ev = frames(steady + old_news)
    workflow.update(lake, df, ev, now=now)
    out = CliRunner().invoke(
        app, ["incidents", "--lake", lake.uri, "--since", "1d", "--format", "json"]
    )
    assert out.exit_code == 0, out.stderr
    (listed,) = json.loads(out.stdout)
    assert listed["principal"] == ROLE and len(listed["finding_ids"]) == len(steady)


def test_an_incident_whose_findings_ended_at_the_range_start_is_not_in_the_range(lake):
    """``last_seen`` is its last finding's window end (exclusive): compared as inclusive,
    `detect incidents --since` and the report listed an incident whose findings all
    ended at --since, and the report drew it with none of them in range (found by
    review)."""
    df, ev = frames([finding(ROLE, T0)])
    (inc,) = workflow.update(lake, df, ev, now=T0).incidents
    end = inc.last_seen
    assert table.incidents_overlapping(lake, end, end + W).is_empty()
    in_range = table.incidents_overlapping(lake, end - timedelta(seconds=1), end + W)
    assert in_range["incident_id"].to_list() == [inc.incident_id]


def test_a_damaged_day_file_is_kept_aside_not_overwritten(lake, caplog):
    """A day's incidents file that could not be read was overwritten by the next write while
    the warning said it was skipped: what it held was gone, and `lake check` then said the
    lake was clean (found by review). It is moved aside, named in the warning."""
    from pathlib import Path

    from detector.lake.maintenance import check_lake

    df, ev = frames([finding(ROLE, T0)])
    (inc,) = workflow.update(lake, df, ev, now=T0).incidents
    (day_file,) = Path(lake.uri, "incidents").rglob("incidents.parquet")
    held = day_file.read_bytes()
    day_file.write_bytes(held[: len(held) // 2])  # cut short
    with caplog.at_level("WARNING"):
        table.write_incidents(lake, [inc.to_row()])
    (aside,) = day_file.parent.glob("incidents.parquet.damaged-*")
    assert aside.read_bytes() == held[: len(held) // 2] and "kept aside as" in caplog.text
    assert table.read_incidents(lake)["incident_id"].to_list() == [inc.incident_id]
    assert [Path(p.path).name for p in check_lake(lake).problems] == [aside.name]
