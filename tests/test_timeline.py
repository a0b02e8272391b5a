"""`detect timeline`: a principal's requests, denials, findings and addresses in time order."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from detector.controls import LINE_CHARS, TEXT_CHARS
from detector.lake.events import Lake
from detector.report.timeline import build_timeline, collapse_runs, merge_runs
from tests.lakefill import (
    GRACE,
    GRACE_KEY,
    GRACE_STS,
    HEIDI,
    event,
    finding,
    write_events,
    write_findings,
)


def ingested(tmp_path, events: list[dict]) -> str:  # type: ignore[no-untyped-def]
    """A lake holding ``events`` (audit events as dicts) in cluster c1, as `detect ingest`
    writes it (the command, run in this process: the lake is what the tests read, not
    the ingest process); returns its path."""
    import orjson

    from tests.conftest import run_detect_in_process

    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    lake = str(tmp_path / "lake")
    done = run_detect_in_process("ingest", str(log), "--lake", lake, "--cluster", "c1")
    assert done.returncode == 0, done.stderr
    return lake


def scored_finding(tmp_path, events: list[dict]) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A lake holding ``events``, scored with the rules: (its path, its first finding id).
    Scoring and listing only make the finding to show: run in this process. What the
    analyst's terminal gets is what the tests' `detect` processes print."""
    from tests.conftest import run_detect_in_process

    lake = ingested(tmp_path, events)
    scored = run_detect_in_process("score", "--lake", lake, "--since", "2h", "--no-model")
    assert scored.returncode == 0, scored.stderr
    listed = run_detect_in_process("findings", "--lake", lake, "--since", "2h", "--format", "json")
    return lake, json.loads(listed.stdout)[0]["finding_id"]


T0 = datetime(2026, 11, 29, 22, 50, tzinfo=UTC)
S = timedelta(seconds=1)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    """grace: routine gets across an hour boundary, denied secret lists, a new address, a
    cluster-admin binding (a finding); heidi (same role) and a service account as noise."""
    lake = Lake(str(tmp_path_factory.mktemp("timeline") / "lake"))
    rows = [event(GRACE, T0 + i * 60 * S, name=f"web-{i}") for i in range(15)]  # 22:50-23:04
    rows += [
        event(
            GRACE,
            T0 + (20 * 60 + i) * S,
            verb="list",
            resource="secrets",
            namespace=ns,
            name=None,
            response_code=403,
            decision="forbid",
        )
        for i, ns in enumerate(["kube-system", "payments", "default"])
    ]
    rows.append(
        event(
            GRACE,
            T0 + 25 * 60 * S,
            verb="list",
            resource="secrets",
            namespace="default",
            name=None,
            response_code=200,
        )
    )
    attack = [
        event(
            GRACE,
            T0 + 30 * 60 * S,
            verb="create",
            resource="clusterrolebindings",
            namespace=None,
            name="grace-cluster-admin",
            response_code=201,
            source_ip="91.219.236.55",
        ),
    ]
    rows += attack
    rows += [event(HEIDI, T0 + i * 90 * S) for i in range(5)]
    rows += [event("system:serviceaccount:default:app", T0 + i * S) for i in range(20)]
    write_events(lake, rows)
    attack_df = pl.DataFrame(attack, schema=pl.DataFrame(rows).schema, orient="row")
    write_findings(
        lake,
        T0.replace(minute=0),
        T0 + timedelta(hours=2),
        [(finding(GRACE, T0.replace(minute=0) + timedelta(minutes=80), attack_df), attack_df)],
    )
    return lake


def test_routine_is_collapsed_denials_stand_apart_and_the_order_is_kept(lake):
    tl = build_timeline(lake, GRACE, T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    assert tl.requests == 20 and tl.denied == 3
    runs = tl.runs.to_dicts()
    # 15 gets of pods across 22:50-23:04 (two hour partitions) are one entry, not 15 or 2
    assert (runs[0]["verb"], runs[0]["target"], runs[0]["count"]) == ("get", "pods", 15)
    assert runs[0]["name_count"] == 15 and runs[0]["names"] == ["web-0", "web-1", "web-2"]
    # denied lists of secrets swept across three namespaces: one denied entry naming them
    denied = [r for r in runs if r["denied"]]
    assert len(denied) == 1
    assert denied[0]["namespaces"] == ["kube-system", "payments", "default"]
    assert (denied[0]["count"], denied[0]["response_codes"]) == (3, [403])
    # the allowed list after them is not merged into the denied one
    assert runs[2]["denied"] is False and runs[2]["namespaces"] == ["default"]
    kinds = [e["kind"] for e in tl.entries()]
    assert kinds == [
        "source",
        "requests",
        "denied",
        "requests",
        "source",
        "finding",  # its window starts with the request that raised it: listed first
        "requests",
    ]
    times = [e["time"] for e in tl.entries()]
    assert times == sorted(times)


def test_new_source_addresses_and_access_keys_are_reported(lake):
    tl = build_timeline(lake, GRACE, T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    assert tl.sources["source"].to_list() == ["10.0.1.5", "91.219.236.55"]
    assert tl.sources["requests"].to_list() == [19, 1]
    assert tl.access_key_ids == [GRACE_KEY]


def test_the_sts_form_finds_the_same_principal_and_a_role_finds_all_its_sessions(lake):
    window = (T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    by_sts = build_timeline(lake, GRACE_STS, *window)
    assert by_sts.requests == 20 and by_sts.findings.height == 1
    shown = build_timeline(lake, "developer (session grace)", *window)  # as tables show it
    assert shown.principals == [GRACE] and shown.requests == 20
    role = build_timeline(lake, "arn:aws:iam::111122223333:role/developer", *window)
    assert role.principals == [GRACE, HEIDI] and role.requests == 25
    # a prefix of another principal is not a match
    assert build_timeline(lake, GRACE[:-1], *window).requests == 0


def test_the_form_a_table_shows_gives_the_identity_of_the_one_principal_it_matched(lake, detect):
    """`detect timeline "developer (session grace)"` found grace's requests, but its identity
    block was the pattern's: no account, no ARNs, kind "other" (found by review). One
    principal matched: its identity is shown, with both ARN forms."""
    run = detect("timeline", "developer (session grace)", "--lake", lake.uri,
                 "--since", "2026-11-29T22:00:00Z", "--until", "2026-11-30T01:00:00Z",
                 "--format", "json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    identity = json.loads(run.stdout)["identity"]
    assert identity["sts_arn"] == GRACE_STS and identity["account"] == "111122223333"
    assert identity["kind"] != "other"


def test_a_long_running_request_is_one_request_wherever_its_end_falls(tmp_path):
    """An exec logs a start and an end: the timeline counted both ("2 create pods/exec"),
    unlike scoring and the rules, which count a request where it opened. Its end in the
    next hour (a session across 23:00) is not a request either."""
    lake = Lake(str(tmp_path / "lake"))
    opened = T0 + 50 * 60 * S
    rows = []
    for audit_id, closed in (("short", opened + 60 * S), ("long", opened + 20 * 60 * S)):
        for stage, at in (("ResponseStarted", opened), ("ResponseComplete", closed)):
            rows.append(
                event(
                    GRACE, at, audit_id=audit_id, stage=stage, received_time=opened,
                    verb="create", resource="pods", subresource="exec", response_code=101,
                )
            )  # fmt: skip
    # the next hour's log records starts (a kubelet's watch), so an end there without its
    # start was counted where it opened, in the hour before
    kubelet = "system:node:ip-10-0-1-5.ec2.internal"
    rows.append(event(kubelet, T0 + 75 * 60 * S, verb="watch", stage="ResponseStarted"))
    write_events(lake, rows)
    tl = build_timeline(lake, GRACE, T0, T0 + timedelta(hours=2))
    assert tl.requests == 2
    assert [r["count"] for r in tl.runs.to_dicts()] == [2]
    assert tl.sources["requests"].to_list() == [2]


def test_runs_split_at_an_hour_boundary_are_merged():
    at = datetime(2026, 1, 1, 10, 59, 58, tzinfo=UTC)
    rows = [event("u", at + i * S) for i in range(4)]
    df = pl.DataFrame(rows)
    split = pl.concat([collapse_runs(df.head(2)), collapse_runs(df.tail(2))])
    assert split.height == 2
    merged = merge_runs(split)
    assert merged["count"].to_list() == [4]
    assert merged["last_time"][0] == at + 3 * S


def test_cli_prints_the_timeline_and_json(lake, detect):
    args = (
        "--lake",
        lake.uri,
        "--since",
        "2026-11-29T22:00:00Z",
        "--until",
        "2026-11-30T01:00:00Z",
    )
    run = detect("timeline", GRACE_STS, *args, env={"AWS_REGION": "eu-west-1"})
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "timeline of developer (session grace)  account 111122223333" in out
    assert "2026-11-29 22:00Z to 2026-11-30 01:00Z: 20 requests (3 denied)" in out
    assert "DENIED list secrets in kube-system, payments, default -> 403" in out
    # a range not to the minute shows its seconds: it read "22:00Z to 22:00Z" (review)
    run = detect("timeline", GRACE_STS, "--lake", lake.uri, "--since", "2026-11-29T22:00:00Z",
                 "--until", "2026-11-29T22:00:41Z")  # fmt: skip
    assert "2026-11-29 22:00:00Z to 2026-11-29 22:00:41Z" in run.stdout, run.stderr
    assert "first request from 91.219.236.55" in out
    assert "HIGH Binding to the cluster-admin role" in out
    assert f"AttributeValue={GRACE_KEY}" in out and "--region eu-west-1" in out

    run = detect("timeline", GRACE, *args, "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["principal"] == GRACE and doc["summary"]["requests"] == 20
    assert doc["identity"]["sts_arn"] == GRACE_STS
    assert doc["identity"]["access_key_ids"] == [GRACE_KEY]
    first = doc["entries"][1]
    assert (first["kind"], first["count"], first["time"]) == (
        "requests",
        15,
        "2026-11-29T22:50:00.000000Z",
    )
    # one form for every time, whole seconds or not: two forms sorted wrong as text (review)
    times = re.findall(r'"(\d{4}-\d\d-\d\dT[^"]*)"', run.stdout)
    assert times and all(re.fullmatch(r"[-\dT:]{19}\.\d{6}Z", t) for t in times), times


def test_cli_says_so_when_the_principal_did_nothing_and_refuses_a_bad_range(lake, detect):
    run = detect("timeline", "nobody", "--lake", lake.uri, "--since", "2026-11-29T22:00:00Z")
    assert run.returncode == 0 and "no activity for nobody" in run.stdout
    run = detect("timeline", GRACE, "--lake", lake.uri, "--since", "yesterday")
    assert run.returncode == 2 and "invalid time" in run.stderr
    # A line break in the principal typed stays on the line it heads, shown.
    run = detect("timeline", "nobody\nFAKE: 3 findings", "--lake", lake.uri, "--since", "2d")
    assert run.returncode == 0
    assert not any(line.startswith("FAKE") for line in run.stdout.splitlines())
    assert "timeline of nobody\\nFAKE: 3 findings" in run.stdout


def test_timeline_and_report_read_an_s3_lake(s3_bucket):
    """The same reads against S3 (moto's server on loopback), as on a production lake."""
    from detector.report.data import collect
    from detector.report.html import render

    lake = Lake(f"s3://{s3_bucket}/lake")
    rows = [event(GRACE, T0 + i * 60 * S) for i in range(3)]
    ev = write_events(lake, rows)
    write_findings(
        lake, T0.replace(minute=0), T0 + timedelta(hours=1), [(finding(GRACE, T0, ev), ev)]
    )
    tl = build_timeline(lake, GRACE_STS, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert tl.requests == 3 and tl.findings.height == 1 and tl.access_key_ids == [GRACE_KEY]
    data = collect(lake, T0 - timedelta(hours=1), T0 + timedelta(hours=1), max_findings=5)
    assert data.events.height == 3
    assert "developer (session grace)" in render(data)


def test_interleaved_routine_collapses_within_a_window_but_not_across_outcomes():
    at = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    rows = []
    for i in range(6):  # a controller: watch, lease update, watch, lease update...
        rows.append(event("c", at + 20 * i * S, verb="watch", resource="pods", name=None))
        rows.append(
            event(
                "c",
                at + (20 * i + 5) * S,
                verb="update",
                resource="leases",
                namespace="kube-system",
                name="c",
            )
        )
    rows.append(
        event(
            "c",
            at + 200 * S,
            verb="watch",
            resource="pods",
            name=None,
            response_code=403,
            decision="forbid",
        )
    )
    rows.append(event("c", at + 11 * 60 * S, verb="watch", resource="pods", name=None))
    df = pl.DataFrame(rows)
    assert collapse_runs(df).height == 14  # consecutive runs only: nothing to collapse
    runs = merge_runs(collapse_runs(df, every=timedelta(minutes=10)), every=timedelta(minutes=10))
    got = [(r["verb"], r["target"], r["denied"], r["count"]) for r in runs.iter_rows(named=True)]
    assert got == [
        ("watch", "pods", False, 6),
        ("update", "leases", False, 6),
        ("watch", "pods", True, 1),
        ("watch", "pods", False, 1),  # the next window: a new entry
    ]


def test_escape_sequences_in_lake_strings_are_shown_not_sent_to_the_terminal(tmp_path, detect):
    """A user agent or a name is whatever a client sent: an escape sequence in one (here
    one that retitles the window, one that clears the screen, a one-byte CSI; and a
    right-to-left override that shows a name reversed) reached the
    analyst's terminal raw through the findings table and the timeline. Every console
    now shows them as text, as errors already did."""
    import io

    from rich.table import Table

    from detector.cli.terminal import SafeConsole
    from tests.test_rules_helpers import ev

    # and a name shown reversed, an Arabic letter mark, a line separator (review)
    hostile = "\x1b]0;pwned\x07 \x1b[2J \x9b31m \u202etxt.exe\u200b \u061cx\u2028y"
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    event = ev(
        "get",
        "secrets",
        ns="kube-system",
        name="db",
        user="mallory",
        code=403,
        decision="forbid",
        at=at,
    )
    event["userAgent"] = f"curl/8 {hostile}"
    event["objectRef"]["name"] = f"db{hostile}"
    lake, finding = scored_finding(tmp_path, [event])
    why = detect("findings", "show", finding, "--lake", lake)
    assert why.returncode == 0, why.stderr
    assert "\x1b" not in why.stdout and "db\\x1b]0;pwned" in why.stdout
    shown = detect("timeline", "mallory", "--lake", lake, "--since", "2h")
    assert shown.returncode == 0, shown.stderr
    assert not {"\x1b", "\x9b", "\u202e", "\u200b", "\u061c", "\u2028"} & set(shown.stdout)
    assert "curl/8 \\x1b]0;pwned\\x07 \\x1b[2J \\x9b31m \\u202etxt.exe\\u200b" in shown.stdout
    assert "\\u061cx\\u2028y" in shown.stdout

    terminal = SafeConsole(file=io.StringIO(), force_terminal=True, width=200, highlight=False)
    table = Table()
    table.add_row(f"[red]{hostile}[/]")  # a styled cell, as the timeline's denied entries
    terminal.print(table)
    terminal.print(hostile, markup=False)
    out = terminal.file.getvalue()
    assert "\x1b]0;" not in out and "\x1b[2J" not in out and "\x9b" not in out
    assert out.count("\\x1b]0;pwned\\x07") == 2 and "\x1b[31m" in out  # the style still works


def test_a_huge_user_agent_is_cut_where_a_line_quotes_it(tmp_path, detect):
    """A user agent of 300,000 characters printed a line of that length under `detect
    timeline` and `findings show` (found by review); --format json keeps it whole."""
    from tests.conftest import run_detect_in_process
    from tests.test_rules_helpers import ev

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    event = ev("get", "secrets", ns="kube-system", name="n" * 5000, user="mallory", code=403, at=at)
    event["userAgent"] = "A" * 300_000
    lake, finding = scored_finding(tmp_path, [event])
    cut = "A" * (TEXT_CHARS - 1) + "…"
    for args in (("timeline", "mallory", "--since", "2h"), ("findings", "show", finding)):
        shown = run_detect_in_process(*args, "--lake", lake)
        assert shown.returncode == 0, shown.stderr
        assert cut in shown.stdout and max(map(len, shown.stdout.splitlines())) <= LINE_CHARS, args
    whole = run_detect_in_process("findings", "show", finding, "--lake", lake, "--format", "json")
    assert "A" * 300_000 in whole.stdout


def test_a_line_break_in_a_lake_string_draws_no_line_of_its_own(tmp_path, detect):
    """`findings show` and `incidents show` print one line per event and per finding: a
    user agent holding a line break printed a second, forged event line under the real
    one, lined up with it (found by review). The line break is shown as ``\\n``."""
    from tests.conftest import run_detect_in_process
    from tests.test_rules_helpers import ev

    forged = "  18:00:09 delete   secrets                default/all-of-them"
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    user = f"mallory\n{forged}"
    event = ev("get", "secrets", ns="kube-system", name="db", user=user, code=403, at=at)
    event["userAgent"] = f"kubectl/v1.31\n{forged}"
    event["objectRef"]["name"] = f"db\n{forged}"
    lake, finding = scored_finding(tmp_path, [event])
    shown = detect("findings", "show", finding, "--lake", lake)
    assert shown.returncode == 0, shown.stderr
    assert not any(line.startswith(forged) for line in shown.stdout.splitlines())
    assert f"kubectl/v1.31\\n{forged}" in shown.stdout
    incidents = run_detect_in_process("incidents", "--lake", lake, "--format", "json")
    incident = json.loads(incidents.stdout)[0]["incident_id"]
    shown = detect("incidents", "show", incident, "--lake", lake)
    assert shown.returncode == 0, shown.stderr
    assert not any(line.startswith(forged) for line in shown.stdout.splitlines())
    assert f"principal mallory\\n{forged}" in shown.stdout


def test_one_huge_entry_does_not_pad_every_line_of_a_plain_timeline(tmp_path, detect):
    """Plain output pads the "what" column to its longest entry: a request for a path of
    100 KB would have padded every line to 100 KB (a busy principal's week, gigabytes)."""

    from tests.test_rules_helpers import ev

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    events = [ev("get", "configmaps", ns="app", name="x" * 100_000, user="mallory", at=at)]
    events += [
        ev("delete", f"r{i}", ns="app", name="n", user="mallory", at=at + timedelta(minutes=i))
        for i in range(1, 21)
    ]
    lake = ingested(tmp_path, events)
    shown = detect("timeline", "mallory", "--lake", lake, "--since", "2h", "--every", "0s")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    # The long name is cut where it is quoted (--format json has it whole): a line of 100 KB
    # is no line to read (found by review: a 300 KB user agent printed one).
    (long,) = [line for line in lines if "x" * 100 in line]
    assert "x" * (TEXT_CHARS - 1) + "…" in long and "x" * TEXT_CHARS not in long
    assert max(len(line) for line in lines) < 400


def run_on_terminal(*args: str, columns: int = 100) -> str:
    """``detect *args`` with stdout on a pseudo-terminal (a real one, as an analyst's): what
    it printed there, with the colour codes."""
    from tests.conftest import on_terminal

    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    code, shown, err = on_terminal(list(args), env=env)
    assert code == 0, err
    return shown.replace("\r\n", "\n")


def test_a_timeline_at_a_terminal_is_one_coloured_line_per_entry(tmp_path, detect):
    """At a terminal: denied requests in red, each entry on one line however long (a rich
    table folded long entries over several lines and took minutes for a busy week), and
    control characters from the lake shown escaped, not sent."""

    from tests.test_rules_helpers import ev

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=50)
    events = [
        ev(
            "get",
            "secrets",
            ns="app",
            name="db",
            user="mallory",
            code=403,
            decision="forbid",
            at=at,
        )
    ]
    events[0]["userAgent"] = "curl/8 \x1b]0;pwned\x07"
    events += [
        ev(
            "list",
            f"r{i}",
            ns=f"team-{'n' * 150}-{i}",
            user="mallory",
            at=at + timedelta(minutes=i),
        )
        for i in range(1, 31)
    ]
    lake = ingested(tmp_path, events)
    shown = run_on_terminal("timeline", "mallory", "--lake", lake, "--since", "2h", "--every", "0")
    lines = shown.splitlines()
    entries = [line for line in lines if re.match(r"(\x1b\[[0-9;]*m)?\d\d-\d\d \d\d:", line)]
    assert len(entries) == 32  # 31 requests and the first address, the long ones too
    denied = [line for line in entries if "secrets" in line]
    assert len(denied) == 1 and "\x1b[31m" in denied[0]  # red
    assert "\x1b]0;" not in shown and "curl/8 \\x1b]0;pwned\\x07" in shown
    assert all(f"team-{'n' * 150}-{i}" in shown for i in range(1, 31))


def test_a_principal_typed_as_the_screen_shows_it_is_found(tmp_path):
    """A name holding control characters is shown escaped (``\\x1b``); typed back that way
    it found nothing, and only the raw bytes worked (found by review)."""
    from tests.conftest import run_detect_in_process
    from tests.test_rules_helpers import ev

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    lake = ingested(
        tmp_path, [ev("get", "pods", ns="app", name="x", user="mal\x1b[2Jl\nory", at=at)]
    )
    for typed in ("mal\x1b[2Jl\nory", "mal\\x1b[2Jl\\nory"):
        shown = run_detect_in_process("timeline", typed, "--lake", lake, "--since", "2h")
        assert shown.returncode == 0, shown.stderr
        assert "1 requests" in shown.stdout and "no activity" not in shown.stdout, typed


def test_a_forwarded_for_claim_is_never_shown_as_where_a_request_came_from(tmp_path, detect):
    """Every address in ``sourceIPs`` but the last is what the client wrote in a header. The
    timeline, `findings show` and the report's event table showed only the first, so a caller
    forging ``X-Forwarded-For: 8.8.4.4`` appeared to come from 8.8.4.4 (found by review).
    They now name the connection's address, with the claim beside it as a claim."""
    from tests.conftest import run_detect_in_process
    from tests.test_rules_helpers import ev

    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    event = ev("get", "secrets", ns="kube-system", name="db", user="mallory", code=403, at=at)
    event["sourceIPs"] = ["8.8.4.4", "192.0.2.9", "10.0.5.5"]
    lake, finding = scored_finding(tmp_path, [event])
    shown = "10.0.5.5 (says it forwards for 8.8.4.4, 192.0.2.9)"

    why = detect("findings", "show", finding, "--lake", lake)
    assert why.returncode == 0, why.stderr
    assert shown in why.stdout
    timeline = run_detect_in_process("timeline", "mallory", "--lake", lake, "--since", "2h")
    assert timeline.returncode == 0, timeline.stderr
    assert f"first request from {shown}" in timeline.stdout
    assert timeline.stdout.count(shown) == 3  # and beside the requests and the denied entry
    as_json = run_detect_in_process(
        "timeline", "mallory", "--lake", lake, "--since", "2h", "--format", "json"
    )
    assert [s["source"] for s in json.loads(as_json.stdout)["sources"]] == [shown]

    page = tmp_path / "report.html"
    report = run_detect_in_process("report", "--lake", lake, "--since", "2h", "-o", str(page))
    assert report.returncode == 0, report.stderr
    assert f"<td>{shown}</td>" in page.read_text()


def test_a_source_is_shown_whatever_the_address_list_holds():
    """A null entry in sourceIPs read "10.0.0.1 (says it forwards for )" (found by review);
    a list of one address, none, or no list at all shows the one there is."""
    from detector.events.addresses import shown_source

    df = pl.DataFrame(
        {
            "source_ip": [None, "1.1.1.1", "8.8.8.8", None, "9.9.9.9"],
            "source_ips": [[None, "1.2.3.4"], ["1.1.1.1", None, "10.0.0.1"], None, [], ["9.9.9.9"]],
        }
    )
    assert df.select(shown_source())["source"].to_list() == [
        "1.2.3.4",
        "10.0.0.1 (says it forwards for 1.1.1.1)",
        "8.8.8.8",
        None,
        "9.9.9.9",
    ]
