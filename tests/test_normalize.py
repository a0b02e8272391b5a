"""Normalize: which events are refused (with a reason) before they can poison the lake.

An event stamped in year 9999 or 0001 used to be accepted, after which every ``score`` and
``train`` over the lake failed with an OverflowError; an event with no ``user`` was taken
for an anonymous request and raised anonymous-access alerts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import orjson
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.events.auditid import MAX_AUDIT_ID_BYTES
from detector.events.normalize import TimeBounds, normalize_lines

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FIXED = TimeBounds(clock=lambda: NOW)


def event(i: int, at: datetime | str, **kw) -> dict:
    stamp = at if isinstance(at, str) else at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ev = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"bbbbbbbb-0000-0000-0000-{i:012d}",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/app/pods",
        "verb": "list",
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "sourceIPs": ["203.0.113.9"],
        "objectRef": {"resource": "pods", "namespace": "app", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
    }
    ev.update(kw)
    return ev


def normalize(events: list[dict], bounds: TimeBounds = FIXED):
    lines = pa.array([orjson.dumps(e) for e in events], pa.binary())
    positions = pa.array([str(i + 1) for i in range(len(events))])
    return normalize_lines(lines, positions=positions, source="t", cluster="c", bounds=bounds)


def reasons(result) -> dict[str, str]:
    return dict(zip(result.quarantine["source_position"], result.quarantine["reason"], strict=True))


def test_events_outside_the_sane_time_range_are_quarantined_with_a_reason():
    result = normalize(
        [
            event(1, NOW - timedelta(hours=1)),
            event(2, "9999-12-31T23:59:59.999999Z"),
            event(3, "0001-01-01T00:00:00Z"),
            event(4, "2013-12-31T23:59:59Z"),
            event(5, NOW + timedelta(hours=25)),
            event(6, NOW + timedelta(hours=23)),  # a fast clock, within a day: kept
            event(7, "2014-01-01T00:00:00Z"),
            # a sane stage time with an absurd receive time poisons received_time
            {**event(8, NOW), "requestReceivedTimestamp": "9999-01-01T00:00:00Z"},
        ]
    )
    assert sorted(result.events["audit_id"].str.slice(-1).to_list()) == ["1", "6", "7"]
    got = reasons(result)
    assert set(got) == {"2", "3", "4", "5", "8"}
    assert got["3"] == got["4"] == "timestamp out of range: before 2014-01-01 00:00:00Z"
    assert got["2"] == got["5"] == got["8"]
    assert got["2"] == (
        "timestamp out of range: more than 1d after the clock (2026-11-27 12:00:00Z)"
    )


def test_the_time_range_is_configurable():
    bounds = TimeBounds(
        earliest=datetime(2026, 1, 1, tzinfo=UTC), max_future=timedelta(0), clock=lambda: NOW
    )
    result = normalize(
        [event(1, "2025-06-01T00:00:00Z"), event(2, NOW + timedelta(minutes=5)), event(3, NOW)],
        bounds,
    )
    assert result.events["audit_id"].to_list() == ["bbbbbbbb-0000-0000-0000-000000000003"]
    assert reasons(result)["1"] == "timestamp out of range: before 2026-01-01 00:00:00Z"
    assert reasons(result)["2"].startswith("timestamp out of range: more than 0s after")


def test_a_response_code_the_column_cannot_hold_is_quarantined_not_nulled():
    """``code: 99999999999`` was stored as a null code: an event that said something was
    changed in silence. It goes to quarantine with its reason; real codes stay."""
    result = normalize(
        [
            event(1, NOW, responseStatus={"code": 99_999_999_999}),
            event(2, NOW, responseStatus={"code": -(2**40)}),
            event(3, NOW, responseStatus={"code": 403}),
            event(4, NOW, responseStatus={}),
        ]
    )
    assert reasons(result) == dict.fromkeys(
        ("1", "2"), "responseStatus.code out of range (not an HTTP status)"
    )
    assert result.events["response_code"].to_list() == [403, None]


def test_an_event_without_user_is_quarantined_and_an_empty_user_is_anonymous():
    no_user = event(1, NOW)
    del no_user["user"]
    failed_login = event(2, NOW, user={}, responseStatus={"code": 401})  # what a 401 logs
    # a blank name is no name: principal "" could not be named to `detect timeline` (review)
    blank = event(4, NOW, user={"username": " "}, responseStatus={"code": 401})
    result = normalize([no_user, failed_login, event(3, NOW), blank])
    assert reasons(result) == {"1": "missing user"}
    assert result.events["principal"].to_list() == ["system:anonymous", "alice", "system:anonymous"]
    assert result.events["principal_kind"].to_list() == ["anonymous", "other", "anonymous"]


def test_a_huge_or_control_character_audit_id_is_kept_bounded_and_still_unique():
    """The client picks ``auditID`` (its Audit-ID header, up to 1 MB): a megabyte id was
    stored as the lake's key, and a NUL-led one reached terminals (review). The event is
    kept, not quarantined, so the header cannot hide a request from the detectors; its id
    is bounded, the same on every run, and two long ids sharing a head stay apart."""
    head = "a" * 200
    ids = [head + "1", head + "2", "\x00\x1b[31mred", "\x85\u202egnp.exe", "日" * 48 + "x"]
    ids += ["c" * 128, "é" * 64, "ok-id"]
    result = normalize([event(i, NOW, auditID=audit_id) for i, audit_id in enumerate(ids)])
    assert result.quarantine.height == 0
    got = result.events["audit_id"].to_list()
    assert got[5:] == ids[5:]  # at the limit in bytes, and a plain id: as written
    assert len(set(got)) == len(ids)
    # bytes, not characters: 48 characters of 3 bytes made a "bounded" id of 170 (review)
    assert all(len(i.encode()) <= MAX_AUDIT_ID_BYTES for i in got)
    assert got[0].startswith("a" * 48 + "…sha256:")
    assert got[2].startswith("??[31mred…sha256:")
    assert got[3].startswith("??gnp.exe…sha256:")  # C1 and bidi, as the consoles see them
    assert got[4].startswith("日" * 16 + "…sha256:")
    # the same on every run, and a bounded id read again (an old lake, a copy) unchanged
    again = normalize([event(i, NOW, auditID=a) for i, a in enumerate([ids[0], *got])])
    assert again.events["audit_id"].to_list() == [got[0], *got]


def test_a_value_of_the_wrong_type_is_named_by_its_field_and_never_quoted():
    """An operator reads which field broke the schema; the value itself, which may be a
    secret no redaction pattern knows (polars' own message quoted it), stays out."""
    secret = "hunter2-correct-horse"
    result = normalize(
        [
            event(1, NOW, user=secret),
            event(2, NOW, responseStatus={"code": secret}),
            event(3, NOW, user={"username": "bob", "groups": [secret, 7, {"a": secret}]}),
            event(4, NOW),
            event(5, NOW, sourceIPs=secret),
            event(6, NOW, responseStatus={"code": 200.5}),
            event(7, NOW, user={"username": "bob", "extra": {"arn": secret}}),
        ]
    )
    assert reasons(result) == {
        "1": "wrong type: user: an object expected, got a string",
        "2": "wrong type: responseStatus.code: an integer expected, got a string",
        "5": "wrong type: sourceIPs: an array expected, got a string",
        "6": "wrong type: responseStatus.code: an integer expected, got a number",
        "7": "wrong type: user.extra.arn: an array expected, got a string",
    }
    assert result.events["audit_id"].to_list() == [event(i, NOW)["auditID"] for i in (3, 4)]


def test_a_list_or_an_object_where_a_name_belongs_is_quarantined_not_stored_as_text():
    """polars reads a list or an object in a string member as its JSON text: the id
    ``["x"]`` or the verb ``{"a":1}`` went into the lake, and rules read them as names. A
    string that only begins like JSON is a string, and stays."""
    secret = "hunter2-correct-horse"
    odd_name = event(5, NOW)
    odd_name["objectRef"]["name"] = "[not-a-list]"
    result = normalize(
        [
            event(1, NOW, auditID=[secret]),
            event(2, NOW, verb={"a": secret}),
            event(3, NOW, user={"username": [secret]}),
            event(4, NOW, objectRef={"resource": "pods", "namespace": ["a", "b"]}),
            odd_name,
            event(6, NOW),
            event(7, NOW, userAgent=[secret]),  # stored as '["..."]' (review)
            event(8, NOW, stage=" "),  # a blank stage was a key (review)
            event(9, NOW, sourceIPs=["10.0.0.1", {"a": 1}]),  # an address '{"a": 1}'
            event(10, NOW, annotations="x"),  # stored as the JSON string "x"
        ]
    )
    assert reasons(result) == {
        "1": "wrong type: auditID: a string expected, got an array",
        "2": "wrong type: verb: a string expected, got an object",
        "3": "wrong type: user.username: a string expected, got an array",
        "4": "wrong type: objectRef.namespace: a string expected, got an array",
        "7": "wrong type: userAgent: a string expected, got an array",
        "8": "missing stage",
        "9": "wrong type: sourceIPs: addresses expected, got an array or an object",
        "10": "wrong type: annotations: an object expected",
    }
    assert result.events["audit_id"].to_list() == [event(i, NOW)["auditID"] for i in (5, 6)]
    assert result.events["name"].to_list()[0] == "[not-a-list]"


def test_a_far_future_event_no_longer_breaks_score(tmp_path):
    """The commands, run in this process (what broke was `score` over the lake, an
    OverflowError, which is raised here as it was there; not the process)."""
    from tests.conftest import run_detect_in_process as detect

    now = datetime.now(UTC).replace(microsecond=0)
    log = tmp_path / "audit.log"
    events = [event(1, now - timedelta(minutes=10)), event(2, "9999-12-31T23:59:59Z")]
    log.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    lake = str(tmp_path / "lake")
    ingested = detect("ingest", str(log), "--lake", lake, "--cluster", "prod", "--format", "json")
    assert ingested.returncode == 0, ingested.stderr
    summary = json.loads(ingested.stdout)
    assert summary["events_written"] == 1
    assert summary["quarantine_reasons"] == {"timestamp out of range": 1}
    scored = detect("score", "--lake", lake, "--since", "1h", "--rules-only", "--format", "json")
    assert scored.returncode == 0, scored.stderr


def test_the_time_range_is_read_from_detect_toml(tmp_path, detect):
    now = datetime.now(UTC).replace(microsecond=0)
    log = tmp_path / "audit.log"
    events = [event(1, now - timedelta(days=3)), event(2, now - timedelta(minutes=1))]
    log.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    config = tmp_path / "detect.toml"
    config.write_text('[ingest]\nearliest = "2d"\nmax_future = "1h"\n')
    lake = str(tmp_path / "lake")
    ingested = detect(
        "--config",
        str(config),
        "ingest",
        str(log),
        "--lake",
        lake,
        "--cluster",
        "prod",
        "--format",
        "json",
    )
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["events_written"] == 1
    config.write_text('[ingest]\nmax_future = "soon"\n')
    refused = detect(
        "--config", str(config), "ingest", str(log), "--lake", lake, "--cluster", "prod"
    )
    assert refused.returncode == 2
    assert "max_future" in refused.stderr


def _fast(lines: list[bytes]):  # type: ignore[no-untyped-def]
    from detector.events.normalize import _read_fast

    return _read_fast(
        pa.array([line + b"\n" for line in lines], pa.large_binary()), terminated=True
    )


def _careful(lines: list[bytes]):  # type: ignore[no-untyped-def]
    """The careful path's reading of ``lines``, the reference the fast path must equal."""
    from detector.events.normalize import _read_objects
    from detector.events.schema import RAW_EVENT_SCHEMA

    terminated = [line + b"\n" for line in lines]
    arr = pa.array(terminated, pa.large_binary())
    return _read_objects(b"".join(terminated), arr, RAW_EVENT_SCHEMA)


def test_the_decision_is_read_whatever_text_comes_before_it_in_the_annotations() -> None:
    """Non-ASCII text earlier in the map (another annotation, the reason) must not hide the
    decision: rules on allowed and forbidden requests read it, and an attacker who could
    blank it by naming a binding "café" would slip past them."""
    at = NOW - timedelta(hours=1)
    maps = [
        {"authorization.k8s.io/reason": 'RBAC: allowed by RoleBinding "café-été"'},
        {"example.com/note": "日本語のメモ", "x": "ü" * 50},
        {},
    ]
    events = [
        event(i, at, annotations={**m, "authorization.k8s.io/decision": d})
        for i, (m, d) in enumerate(zip(maps, ["allow", "forbid", "allow"], strict=True))
    ]
    got = normalize(events).events
    assert got["decision"].to_list() == ["allow", "forbid", "allow"]
    assert got["reason"].to_list()[0] == 'RBAC: allowed by RoleBinding "café-été"'


def test_fast_parse_gives_the_careful_parse_columns_byte_for_byte() -> None:
    """The pyarrow fast path takes annotations from the line text and sends doubtful lines
    to polars: every layout below must come out exactly as polars alone reads it, or the
    lake would hold two spellings of one annotation map (and rules see different text)."""
    at = NOW - timedelta(hours=1)
    compact = orjson.dumps  # the API server's layout: no spaces, annotations last
    ann = {
        "authorization.k8s.io/decision": "allow",
        "authorization.k8s.io/reason": 'RBAC: allowed by ClusterRoleBinding "x" of "y"',
        "note": "é, <>&",
    }
    lines = [
        compact(event(1, at, annotations=ann)),
        compact(event(2, at, annotations={})),
        compact(event(3, at)),  # no annotations at all
        json.dumps(event(4, at, annotations=ann)).encode(),  # spaced: polars decides
        compact({"annotations": ann, **event(5, at)}),  # annotations first
        compact(event(6, at, annotations={"a": "back\\slash", "b": "x/y"})),
        compact(event(7, at, annotations={"n": 1, "l": ["v"], "o": {"k": "v"}})),
        compact(event(8, at, requestObject={"metadata": {"annotations": {"a": "b"}}})),
        compact(event(9, at, annotations=ann)).replace(b'"annotations"', b'"annot\\u0061tions"'),
        compact(event(10, at, responseObject={"kind": "Status", "code": 403}, annotations=ann)),
        compact(event(11, at, annotations=ann))[:-1] + b',"annotations":{"dup":"last"}}',
        # non-ASCII before the map: str.find counts bytes where str.slice counts characters
        compact(event(12, at, annotations=ann, user={"username": "josé", "groups": ["é"]})),
        compact(event(13, at, annotations={"n": "ü"}, userAgent='"annotations":{"a":"b"}}')),
    ]
    fast, careful = _fast(lines), _careful(lines)
    assert fast is not None
    assert fast.to_dicts() == careful.to_dicts()
    assert fast.schema == careful.schema


def test_fast_parse_steps_aside_for_a_block_it_cannot_vouch_for() -> None:
    """A bad line, a blank line or invalid UTF-8 anywhere in the block: the careful path
    (which isolates and explains bad lines) must run instead."""
    good = orjson.dumps(event(1, NOW))
    for bad in (b'{"auditID": ', b"   ", b'{"verb": "\xff"}', b'{"verb": 5}', b"[1]"):
        assert _fast([good, bad, good]) is None, bad
    # a skipped blank line and a line holding two events: the count matches, rows would not
    assert _fast([good, b"    ", good + b"\r" + good]) is None


_BARE_VALUES = """
import json, sys
import pyarrow as pa
from detector.events.normalize import normalize_lines
good = sys.argv[1].encode()
lines = [b"null", b"  null", good, b"null", b"true", b"[]", good.replace(b"-0000000", b"-1111111")]
got = normalize_lines(pa.array(lines, pa.binary()), positions=pa.array([str(i) for i in range(7)]),
                      source="t", cluster="c")
q = got.quarantine
print(json.dumps({"events": got.events.height,
                  "reasons": dict(zip(q["source_position"], q["reason"]))}))
"""


def test_a_bare_json_value_line_is_set_aside_and_never_reaches_pyarrow() -> None:
    """pyarrow 26 crashes the process (apache/arrow#47409) on a block whose first line is
    a bare ``null``, and read one further down as an event with every field null. Such
    lines are refused before pyarrow sees them. Run in a child process, so that a crash
    fails this test instead of ending the test run."""
    good = orjson.dumps(event(1, NOW - timedelta(hours=1)))
    proc = subprocess.run(
        [sys.executable, "-c", _BARE_VALUES, good.decode()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["events"] == 2
    assert got["reasons"] == {p: "not a JSON object" for p in ["0", "1", "3", "4", "5"]}


#: Lines real input holds besides events: cut short (anywhere, just after a nested
#: object's "}" included), binary, another program's log, JSON that is no object, an
#: object with a mistyped field, blank space. Good lines hold braces inside strings,
#: and some values of another type that polars reads as text.
_GOOD = orjson.dumps(event(0, NOW - timedelta(hours=1), requestObject={"a": {"b": "{x}"}}))
_BAD_LINES = st.one_of(
    st.integers(1, len(_GOOD) - 1).map(lambda cut: _GOOD[:cut]),
    st.just(_GOOD[: _GOOD.index(b"}") + 1]),
    st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.sampled_from(
        [b"I1127 12:00:00 kubelet started", b"[1, 2]", b'"text"', b"5", b"null", b"     "]
    ),
    st.sampled_from(  # objects polars' schema refuses: a value of the wrong type
        [
            orjson.dumps(event(0, NOW, user="alice")),
            orjson.dumps(event(0, NOW, sourceIPs="203.0.113.9")),
            orjson.dumps(event(0, NOW, responseStatus={"code": "200"})),
            orjson.dumps(event(0, NOW, objectRef={"resource": "pods"}, user={"groups": "g"})),
            _GOOD[:-1] + b',"requestObject":' + b"[" * 5000 + b"]" * 5000 + b"}",  # too deep
        ]
    ),
)


@settings(max_examples=80, derandomize=True, deadline=None)
@given(
    bad=st.lists(st.tuples(st.integers(0, 30), _BAD_LINES), min_size=1, max_size=6),
    good=st.integers(1, 30),
)
def test_bad_lines_among_good_ones_leave_the_good_ones_read_as_if_alone(bad, good) -> None:
    """Property: whatever bad lines a block holds, its good lines come out exactly as they
    do without them, and each bad line is set aside once, at its position, with the
    careful path's reason. (A block the fast path refuses is retried fast without the lines
    that cannot be objects; the reference is the careful path alone, which the test gets
    by switching that retry off: the one substitution, of our own code, not of a service.)"""
    from detector.events import normalize as module

    events = [
        orjson.dumps(
            event(i, NOW - timedelta(minutes=i), requestObject={"n": "{" * (i % 3)}, verb=i)
            if i % 4 == 0
            else event(i, NOW - timedelta(minutes=i), requestObject={"n": "{" * (i % 3)})
        )
        for i in range(1, good + 1)
    ]
    lines = list(events)
    for at, line in sorted(bad, key=lambda b: -b[0]):
        lines.insert(min(at, len(lines)), line)
    positions = pa.array([str(i + 1) for i in range(len(lines))])

    def run(block: list[bytes], where: pa.Array):  # type: ignore[no-untyped-def]
        got = normalize_lines(
            pa.array(block, pa.binary()), positions=where, source="t", cluster="c", bounds=FIXED
        )
        return got.events.drop("ingested_at", strict=False), got.quarantine

    mixed, quarantined = run(lines, positions)
    alone_at = pa.array(
        [p for p, line in zip(positions.to_pylist(), lines, strict=True) if line in events]
    )
    alone, _ = run(events, alone_at)
    assert mixed.to_dicts() == alone.to_dicts()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "_without_misshapen", lambda *a, **k: None)
        careful_events, careful_quarantine = run(lines, positions)
    assert careful_events.to_dicts() == alone.to_dicts()
    assert reasons_of(quarantined) == reasons_of(careful_quarantine)
    blank = {str(i + 1) for i, line in enumerate(lines) if not line.strip()}
    assert (
        set(reasons_of(quarantined))
        == {str(i + 1) for i, line in enumerate(lines) if line not in events} - blank
    )


def reasons_of(quarantine: pl.DataFrame) -> dict[str, str]:
    """Position -> reason, each position once."""
    pairs = list(zip(quarantine["source_position"], quarantine["reason"], strict=True))
    assert len({p for p, _ in pairs}) == len(pairs)
    return dict(pairs)


#: Annotation text as clients and webhooks can make it: any character, quotes, backslashes,
#: control characters, non-ASCII, and the keys the fast path looks for.
_ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
_DECISIONS = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_KEYS = st.sampled_from(
    ["authorization.k8s.io/reason", "annotations", "example.com/note", "x\\u0061"]
)
_MAPS = st.dictionaries(
    st.one_of(_KEYS, _ANY_TEXT),
    st.one_of(_ANY_TEXT, st.integers(-(2**63), 2**63 - 1), st.lists(_ANY_TEXT, max_size=2)),
    max_size=4,
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    maps=st.lists(
        st.tuples(
            _MAPS,
            _DECISIONS,
            st.sampled_from(["last", "first", "spaced"]),
            st.one_of(st.none(), _MAPS),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_annotations_and_body_read_the_same_on_both_paths_and_back_as_written(maps) -> None:
    """Property: whatever the annotations and the body hold and however the line is laid
    out, the fast path gives the careful path's reading of the block or steps aside; the
    stored annotations and body are JSON that reads back as what was logged; the decision
    and the reason are read back as they were written, escapes decoded."""
    at = NOW - timedelta(hours=1)
    lines = []
    for i, (ann, decision, layout, body) in enumerate(maps):
        ann = {**ann, "authorization.k8s.io/decision": decision}
        ev = event(i, at, annotations=ann, requestObject=body)
        if layout == "first":
            ev = {"annotations": ann, **ev}
        lines.append(json.dumps(ev).encode() if layout == "spaced" else orjson.dumps(ev))
    fast, careful = _fast(lines), _careful(lines)
    assert fast is None or fast.to_dicts() == careful.to_dicts()
    got = normalize([orjson.loads(line) for line in lines]).events
    assert got["decision"].to_list() == [d for _, d, _, _ in maps]
    reasons = [m.get("authorization.k8s.io/reason") for m, _, _, _ in maps]
    assert got["reason"].to_list() == [r if isinstance(r, str) else None for r in reasons]
    for row, (m, d, _, body) in zip(got.iter_rows(named=True), maps, strict=True):
        stored = json.loads(row["annotations"])  # valid JSON, always
        stored_body = None if row["request_object"] is None else json.loads(row["request_object"])
        if not row["redacted"]:  # the same, unless a credential was taken out
            assert stored == {**m, "authorization.k8s.io/decision": d}
            assert stored_body == body


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    pool=st.lists(st.tuples(_MAPS, _DECISIONS), min_size=1, max_size=3),
    picks=st.lists(st.integers(0, 3), min_size=2, max_size=30),
)
def test_maps_that_repeat_across_a_block_are_read_for_each_line(pool, picks) -> None:
    """Property: a block repeats a few maps (real traffic: a few dozen among 200k lines),
    and the fast path reads each distinct map once and joins it back to its lines; each
    line still gets its own map, decision and reason, in order, lines without
    annotations included (pick 3 beyond the pool: no annotations at all)."""
    at = NOW - timedelta(hours=1)
    events, expected = [], []
    for i, pick in enumerate(picks):
        if pick >= len(pool):
            events.append(event(i, at))
            expected.append((None, None))
            continue
        ann, decision = pool[pick]
        ann = {**ann, "authorization.k8s.io/decision": decision}
        events.append(event(i, at, annotations=ann))
        reason = ann.get("authorization.k8s.io/reason")
        expected.append((decision, reason if isinstance(reason, str) else None))
    lines = [orjson.dumps(ev) for ev in events]
    fast, careful = _fast(lines), _careful(lines)
    assert fast is None or fast.to_dicts() == careful.to_dicts()
    got = normalize(events).events
    assert list(zip(got["decision"], got["reason"], strict=True)) == expected


_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=1)
#: The API server's shape with any digits (months 13, leap seconds, February 30...).
_SHAPED = st.builds(
    lambda d: "{}{}{}{}-{}{}-{}{}T{}{}:{}{}:{}{}.{}{}{}{}{}{}Z".format(*d),
    st.lists(_DIGITS, min_size=20, max_size=20),
)
_VALID = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda d: f"{d.year:04d}-{d:%m-%dT%H:%M:%S.%f}Z"
)
_NEAR = st.sampled_from(
    [
        "2026-11-27 10:00:00Z",
        "2026-11-27T10:00Z",
        "2026-11-27T10:00:00.1234567Z",
        "2026-11-27T10:00:00+02:00",
        "2026-11-27T10:00:00.5Z",
        "2026-11-27",
        "",
    ]
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.one_of(
        st.lists(st.one_of(_VALID, st.none()), min_size=1, max_size=8),  # arrow reads these
        st.lists(st.one_of(_VALID, _SHAPED, _NEAR, st.none(), _ANY_TEXT), min_size=1, max_size=8),
    )
)
def test_event_times_read_by_arrow_are_what_polars_reads(values) -> None:
    """Property: the fast timestamp parse (arrow's cast, for columns in the API server's
    shape) gives exactly polars' reading, null where polars finds no time."""
    from detector.events.normalize import _times, _timestamp

    text = pl.Series("t", values, dtype=pl.String)
    expected = text.to_frame().select(_timestamp(pl.col("t"))).to_series()
    got = _times(text)
    assert got.dtype == expected.dtype
    assert got.to_list() == expected.to_list()


def test_bodies_with_any_escape_are_stored_as_json_that_reads_back() -> None:
    """polars writes a sub-object's backslashes and tabs decoded (``C:\\temp`` for
    ``C:\\\\temp``), which no JSON reader accepts: Athena's ``json_extract``, DuckDB and
    analysts' scripts would fail on those rows, and the structured redaction could not read
    a Secret holding one. Every body must read back as the object that was logged."""
    at = NOW - timedelta(hours=1)
    body = {
        "kind": "ConfigMap",
        "metadata": {"name": "win", "annotations": {"note": 'say "hi"\n'}},
        "data": {"path": "C:\\temp\\new", "tab": "a\tb", "ctl": "\u0001\b\f", "u": "é/€"},
    }
    events = [
        event(1, at, requestObject=body, responseObject={**body, "kind": "Status"}),
        event(2, at, requestObject={"plain": "text"}),
    ]
    got = normalize(events).events
    assert [json.loads(t) for t in got["request_object"]] == [body, {"plain": "text"}]
    assert json.loads(got["response_object"][0]) == {**body, "kind": "Status"}
