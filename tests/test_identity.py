"""IAM identities: shown as role and session, typed in either ARN form, with next steps."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime

import pytest

from detector.cli.render import short_principal
from detector.events.identity import (
    canonical_principal,
    display_principal,
    identity_summary,
    investigation_links,
    parse_principal,
)

STORED = "arn:aws:iam::111122223333:role/developer/grace"
STS = "arn:aws:sts::111122223333:assumed-role/developer/grace"


def test_a_role_session_reads_as_role_and_session_not_as_a_role_named_after_the_session():
    assert display_principal(STORED) == "developer (session grace)"
    assert display_principal(STS) == "developer (session grace)"
    p = parse_principal(STORED)
    assert (p.account, p.name, p.session) == ("111122223333", "developer", "grace")
    assert p.role_arn == "arn:aws:iam::111122223333:role/developer"
    assert p.sts_arn == STS


def test_the_findings_table_uses_the_readable_form():
    assert short_principal(STORED) == "developer (session grace)"


@pytest.mark.parametrize(
    ("principal", "shown"),
    [
        ("arn:aws:iam::111122223333:role/eng-admin", "eng-admin"),
        ("arn:aws:iam::111122223333:user/ci/alice", "user alice"),
        ("arn:aws-cn:iam::111122223333:role/ops/bob", "ops (session bob)"),
        ("system:serviceaccount:kube-system:coredns", "system:serviceaccount:kube-system:coredns"),
        ("system:anonymous", "system:anonymous"),
        (None, "-"),
        ("arn:aws:iam::12:role/x/y", "arn:aws:iam::12:role/x/y"),  # not an account id: as is
    ],
)
def test_other_identities_are_shown_as_they_are_stored_or_by_their_iam_name(principal, shown):
    assert display_principal(principal) == shown


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        (STS, STORED),
        (STORED, STORED),
        (f"  {STS}\n", STORED),
        (
            "arn:aws-us-gov:sts::111122223333:assumed-role/r/s@x.example",
            "arn:aws-us-gov:iam::111122223333:role/r/s@x.example",
        ),
        ("system:anonymous", "system:anonymous"),
        ("arn:aws:iam::111122223333:role/developer", "arn:aws:iam::111122223333:role/developer"),
    ],
)
def test_either_arn_form_typed_by_a_user_becomes_the_stored_form(typed, stored):
    assert canonical_principal(typed) == stored


def test_links_give_the_cloudtrail_lookup_of_the_access_key_and_the_console_pages():
    start = datetime(2026, 11, 29, 23, 20, tzinfo=UTC)
    end = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    links = investigation_links(
        STORED,
        ["ASIAEXAMPLEKEY000001", "ASIAEXAMPLEKEY000001"],
        start=start,
        end=end,
        region="eu-west-1",
    )
    commands = [link.target for link in links if link.kind == "command"]
    assert len(commands) == 1  # one per key, not per event
    assert shlex.split(commands[0]) == [
        "aws",
        "cloudtrail",
        "lookup-events",
        "--lookup-attributes",
        "AttributeKey=AccessKeyId,AttributeValue=ASIAEXAMPLEKEY000001",
        "--start-time",
        "2026-11-29T23:20:00Z",
        "--end-time",
        "2026-11-29T23:30:00Z",
        "--region",
        "eu-west-1",
    ]
    urls = [link.target for link in links if link.kind == "url"]
    assert (
        "https://eu-west-1.console.aws.amazon.com/cloudtrail/home?region=eu-west-1"
        "#/events?AccessKeyId=ASIAEXAMPLEKEY000001"
    ) in urls
    assert "https://console.aws.amazon.com/iam/home#/roles/details/developer" in urls


def test_a_hostile_key_id_cannot_break_out_of_the_printed_command():
    (cmd, url, _) = investigation_links(STORED, ["AKIA'; rm -rf / #"])
    assert shlex.split(cmd.target)[4] == "AttributeKey=AccessKeyId,AttributeValue=AKIA'; rm -rf / #"
    assert "'" not in url.target.split("#", 1)[1] and " " not in url.target


def test_the_summary_keeps_both_arn_forms_and_the_keys():
    s = identity_summary(STORED, ["ASIAEXAMPLEKEY000001", None])  # type: ignore[list-item]
    assert s["principal"] == STORED and s["sts_arn"] == STS
    assert s["account"] == "111122223333" and s["access_key_ids"] == ["ASIAEXAMPLEKEY000001"]
    assert identity_summary("system:anonymous")["links"] == []


def test_findings_show_and_list_speak_both_forms(tmp_path, detect):
    from datetime import timedelta

    import polars as pl

    from detector.lake.events import Lake
    from tests.lakefill import GRACE, GRACE_KEY, event, finding, write_events, write_findings

    lake = Lake(str(tmp_path / "lake"))
    at = datetime(2026, 11, 29, 23, 20, tzinfo=UTC)
    ev = write_events(lake, [event(GRACE, at + timedelta(minutes=1), verb="create")])
    found = write_findings(lake, at, at + timedelta(hours=1), [(finding(GRACE, at, ev), ev)])
    fid = found["finding_id"][0]

    run = detect("findings", "show", fid, "--lake", lake.uri, env={"AWS_REGION": "eu-west-1"})
    assert run.returncode == 0, run.stderr
    assert "identity developer (session grace)  account 111122223333" in run.stdout
    assert f"stored as {GRACE}" in run.stdout and f"STS ARN   {STS}" in run.stdout
    assert f"AttributeValue={GRACE_KEY} --start-time 2026-11-29T22:20:00Z" in run.stdout

    run = detect("findings", "show", fid, "--lake", lake.uri, "--format", "json")
    doc = json.loads(run.stdout)
    assert doc["identity"]["access_key_ids"] == [GRACE_KEY]
    assert pl.DataFrame(doc["events"])["access_key_id"].to_list() == [GRACE_KEY]

    listed = detect(
        "findings",
        "--lake",
        lake.uri,
        "--since",
        "2026-11-29T00:00:00Z",
        "--principal",
        STS,
        "--format",
        "json",
    )
    assert [f["finding_id"] for f in json.loads(listed.stdout)] == [fid]
    # and as every table shows it (typed back, it matched nothing, silently; review)
    shown = detect("findings", "--lake", lake.uri, "--since", "2026-11-29T00:00:00Z",
                   "--principal", "developer (session grace)", "--format", "json")  # fmt: skip
    assert [f["finding_id"] for f in json.loads(shown.stdout)] == [fid]


def test_the_displayed_form_is_taken_back_in_any_account():
    assert canonical_principal("developer (session grace)") == ("arn:*:iam::*:role/developer/grace")
    assert canonical_principal("user bob") == "arn:*:iam::*:user/bob"
    for other in ("developer (session grace) x", "dev ops (session grace)", "user "):
        assert canonical_principal(other) == other.strip()


def test_a_username_that_only_looks_like_an_iam_session_is_never_that_session():
    """A username is whatever its OIDC claim, certificate CN or static token says. One
    spelled like alice's stored principal, without the IAM identity EKS logs in
    ``user.extra``, was stored as alice: it joined her incidents and timeline, fed her
    baseline, matched her suppressions and linked to her CloudTrail (found by review)."""
    import pyarrow as pa
    from factories import make_event

    from detector.events.identity import UNVERIFIED
    from detector.events.normalize import normalize_lines

    alice = "arn:aws:iam::111122223333:role/eng-admin/alice"
    users = [
        None,  # alice herself, through IAM (make_event's user)
        {"username": alice, "groups": []},
        {"username": STS, "groups": []},
        {"username": UNVERIFIED + alice, "groups": []},
        {"username": "arn:aws:iam::111122223333:user/bob", "groups": []},
        # spelled so a display that strips or ignores case read them as alice (review)
        {"username": " " + alice, "groups": []},
        {"username": "ARN" + alice[3:], "groups": []},
    ]
    lines = [
        json.dumps(make_event(i, **({"user": u} if u else {}))).encode()
        for i, u in enumerate(users)
    ]
    events = normalize_lines(
        pa.array(lines, pa.binary()), positions=pa.array([str(i) for i in range(7)]),
        source="t", cluster="c",
    ).events.sort("audit_id")  # fmt: skip
    principals = events["principal"].to_list()
    assert principals == [
        alice,
        UNVERIFIED + alice,
        UNVERIFIED + STS,
        UNVERIFIED + UNVERIFIED + alice,
        UNVERIFIED + "arn:aws:iam::111122223333:user/bob",
        UNVERIFIED + " " + alice,
        UNVERIFIED + "ARN" + alice[3:],
    ]
    assert events["principal_kind"].to_list() == ["iam_role"] + ["other"] * 6
    for claimed in principals[1:]:  # shown as stored, never as a session, with no links
        summary = identity_summary(claimed, ["ASIAEXAMPLE"])
        assert summary["display"] == claimed and summary["kind"] == "other"
        assert summary["role_arn"] is None and summary["sts_arn"] is None
        assert "alice" not in json.dumps(summary["links"])
    for spelled in (
        " " + alice,
        "\t" + alice,
        alice + " ",
        alice + "\n",
    ):  # as stored, whatever stored it
        assert display_principal(spelled) == spelled
