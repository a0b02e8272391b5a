"""`detect report`: one self-contained HTML page, checked in a real headless Chromium.

The page is opened from disk by Debian's chromium (driven by Playwright; no browser is
downloaded): it must load with no console error and no network request, draw every chart,
and its links between incidents, findings and raw events must bring the target into view.
Hostile strings from the lake (principal names, user agents, object names) must show as
text and never run. A screenshot of the run is saved in pytest's tmp_path (outside the
repository) and its path printed.
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from detector.lake.events import Lake
from detector.report import charts
from detector.report.data import usual_level
from tests.lakefill import GRACE, GRACE_KEY, event, finding, write_events, write_findings

CHROMIUM = "/usr/bin/chromium"
START = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)
END = START + timedelta(hours=6)
XSS_AGENT = "<script>alert('agent')</script>"
XSS_NAME = '"><img src=x onerror=alert(1)>'
XSS_PRINCIPAL = "system:serviceaccount:web:<svg onload=alert(2)>"
RANGE = ("--since", START.isoformat(), "--until", END.isoformat())


def _build(root: Path, *, incidents: bool) -> tuple[Lake, pl.DataFrame]:
    lake = Lake(str(root / "lake"))
    rows = []
    # baseline: two days before the range, ~1% denied, two clusters
    for h in range(48):
        at = START - timedelta(hours=48 - h)
        for i in range(40):
            denied = i == 0 and h % 2 == 0
            rows.append(
                event(
                    "system:serviceaccount:default:app",
                    at + timedelta(seconds=60 * i),
                    cluster="prod" if i % 4 else "staging",
                    response_code=403 if denied else 200,
                    decision="forbid" if denied else "allow",
                )
            )
    # the range: steady traffic, a hostile principal, and at 20:00 a burst of denials
    for h in range(6):
        at = START + timedelta(hours=h)
        rows += [
            event(
                "system:serviceaccount:default:app",
                at + timedelta(seconds=60 * i),
                cluster="prod" if i % 4 else "staging",
            )
            for i in range(40)
        ]
        rows += [
            event(XSS_PRINCIPAL, at + timedelta(seconds=30 * i), user_agent=XSS_AGENT)
            for i in range(10)
        ]
    denials = [
        event(
            GRACE,
            START + timedelta(hours=2, seconds=5 * i),
            verb="list",
            resource="secrets",
            namespace=f"ns-{i}",
            name=None,
            response_code=403,
            decision="forbid",
            source_ip="91.219.236.55",
            user_agent=XSS_AGENT,
        )
        for i in range(30)
    ]
    denials += [
        event(
            "system:anonymous",
            START + timedelta(hours=2, seconds=7 * i),
            verb="get",
            resource=None,
            request_uri="/version",
            response_code=401,
            source_ip="45.155.205.249",
        )
        for i in range(12)
    ]
    binding = [
        event(
            GRACE,
            START + timedelta(hours=3, minutes=5),
            verb="create",
            resource="clusterrolebindings",
            namespace=None,
            name=XSS_NAME,
            response_code=201,
            source_ip="91.219.236.55",
        )
    ]
    # the prober sent two of its requests under one Audit-ID (the API server takes the
    # client's): two rows, one audit ID
    denials[1]["audit_id"] = denials[0]["audit_id"]
    all_rows = write_events(lake, rows + denials + binding)
    schema = all_rows.schema
    grace_denied = pl.DataFrame(denials[:30], schema=schema, orient="row")
    bind_df = pl.DataFrame(binding, schema=schema, orient="row")
    hostile = pl.DataFrame(rows[-10:], schema=schema, orient="row")
    found = write_findings(
        lake,
        START,
        END,
        [
            (
                finding(
                    GRACE,
                    START + timedelta(hours=2),
                    grace_denied,
                    severity="medium",
                    title="Spike of denied requests from one identity",
                    detector="rule:auth-failure-spike-principal",
                ),
                grace_denied,
            ),
            (finding(GRACE, START + timedelta(hours=3), bind_df), bind_df),
            (
                finding(
                    XSS_PRINCIPAL,
                    START + timedelta(hours=5),
                    hostile,
                    severity="low",
                    title=f"Unusual activity by {XSS_PRINCIPAL}",
                    detector="model:iforest",
                ),
                hostile,
            ),
        ],
    )
    if incidents:
        grace_ids = found.filter(pl.col("principal") == GRACE)["finding_id"].to_list()
        table = pl.DataFrame(
            {
                "incident_id": ["inc-0001"],
                "first_seen": [START + timedelta(hours=2)],
                "last_seen": [START + timedelta(hours=3, minutes=10)],
                "severity": ["high"],
                "title": ["developer (session grace) escalated to cluster-admin"],
                "principal": [GRACE],
                "status": ["new"],
                "finding_ids": [grace_ids],
            }
        )
        path = root / "lake" / "incidents" / "date=2026-11-29"
        path.mkdir(parents=True)
        table.write_parquet(path / "incidents.parquet")
    return lake, found


@pytest.fixture(scope="module")
def lake_with_incidents(tmp_path_factory) -> tuple[Lake, pl.DataFrame]:
    return _build(tmp_path_factory.mktemp("report"), incidents=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "install Debian's chromium (see .ci/run)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path: Path):  # type: ignore[no-untyped-def]
    """The page, and what went wrong while it loaded: console errors, page errors,
    dialogs (an alert() from injected markup) and any request that left the file."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on(
        "request",
        lambda r: problems.append(f"request: {r.url}") if not r.url.startswith("file://") else None,
    )
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, problems


def test_report_loads_offline_draws_every_chart_and_links_work(
    lake_with_incidents, browser, detect, tmp_path
):
    from playwright.sync_api import expect

    lake, _ = lake_with_incidents
    out = tmp_path / "report.html"
    run = detect("report", "--lake", lake.uri, *RANGE, "--baseline", "2d", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert str(out) in run.stdout and "3 finding(s)" in run.stdout

    page, problems = _open(browser, out)
    # every chart drawn: inline SVG with marks, one per expected chart
    names = page.eval_on_selector_all("[data-chart]", "els => els.map(e => e.dataset.chart)")
    assert sorted(names) == sorted(
        ["events", "denied-rate", "unauthenticated-rate", "findings", "incidents", "principals"]
    )
    for name in names:
        marks = page.locator(f'[data-chart="{name}"] svg g[class*="mark-"] path')
        assert marks.count() > 0, f"chart {name} has no marks"
    # the denial burst is drawn above the alarm line: red points on the 403 chart
    assert page.locator('[data-chart="denied-rate"] svg g.mark-symbol path').count() >= 1

    # incident -> finding: the finding's section is brought into view
    incident = page.locator("article.incident#incident-inc-0001")
    expect(incident).to_be_visible()
    link = incident.locator("a.to-finding", has_text="cluster-admin")
    target = link.get_attribute("href")
    link.click()
    article = page.locator(f"article{target}")
    expect(article).to_be_in_viewport()
    assert page.evaluate("location.hash") == target
    # finding timeline -> its raw event: the collapsed block opens and the row shows
    raw = article.locator("table.timeline a.to-event").first
    row_id = raw.get_attribute("href")
    expect(page.locator(f"tr{row_id}")).to_be_hidden()
    raw.click()
    expect(page.locator(f"tr{row_id}")).to_be_in_viewport()
    expect(page.locator(f"tr{row_id}")).to_contain_text(XSS_NAME)  # shown as text
    # finding -> back to its incident
    article.locator("a.to-incident").click()
    expect(incident).to_be_in_viewport()
    # the incident's own timeline links to raw events too
    inc_raw = incident.locator("a.to-event").first
    inc_row = inc_raw.get_attribute("href")
    inc_raw.click()
    expect(page.locator(f"tr{inc_row}")).to_be_in_viewport()

    # every id once: a link to one that appears twice has no single target (a request's
    # stages, and requests reusing a client's Audit-ID, share an audit ID; review)
    ids = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    # hostile strings are text: no injected element exists, nothing ran
    assert page.locator("img[src=x]").count() == 0
    assert page.locator("script").count() == 1  # ours
    assert page.locator("svg[onload]").count() == 0
    expect(page.get_by_text(XSS_AGENT).first).to_be_attached()
    expect(page.locator("#principals table")).to_contain_text(XSS_PRINCIPAL)
    # identity: readable, full ARN kept, CloudTrail lookup of the key printed
    expect(article).to_contain_text("developer (session grace)")
    expect(article).to_contain_text(GRACE)
    expect(article).to_contain_text(f"AttributeValue={GRACE_KEY}")

    shot = tmp_path / "report.png"
    page.goto(out.as_uri())
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    page.close()
    assert problems == []


def test_without_an_incidents_table_the_chart_is_skipped_and_the_rest_drawn(
    tmp_path, browser, detect
):
    lake, _ = _build(tmp_path, incidents=False)
    out = tmp_path / "r.html"
    run = detect("report", "--lake", lake.uri, *RANGE, "-o", str(out))
    assert run.returncode == 0, run.stderr
    page, problems = _open(browser, out)
    names = page.eval_on_selector_all("[data-chart]", "els => els.map(e => e.dataset.chart)")
    assert "incidents" not in names and "findings" in names
    assert page.locator("#incidents").count() == 0
    assert "No incidents table in this lake." in page.inner_text("#over-time")
    page.close()
    assert problems == []


def test_an_empty_range_still_writes_a_page_that_says_so(tmp_path, detect):
    """Into folders that are not there yet, as a nightly job names them by date."""
    out = tmp_path / "reports" / "2026-12-02" / "empty.html"
    (tmp_path / "lake").mkdir()  # a lake nothing was written to yet
    run = detect("report", "--lake", str(tmp_path / "lake"), "--since", "1h", "-o", str(out))
    assert run.returncode == 0, run.stderr
    page = out.read_text()
    assert "No events in this range." in page and "<svg" not in page


def test_control_characters_in_lake_names_are_shown_and_the_page_is_written(tmp_path, detect):
    """A NUL or ESC in a user name (an attacker's client certificate or OIDC name): the
    chart renderer aborted the process (exit 134, a Rust panic) and no report of any range
    holding that one event was written."""
    lake = Lake(str(tmp_path / "lake"))
    names = ["al\x00ice", "b\x1b[31mob", "car\x07ol", "dave\ufffe", "eve\nFORGED", "fr\u2028ed"]
    write_events(lake, [event(n, START + timedelta(minutes=i)) for i, n in enumerate(names)])
    out = tmp_path / "r.html"
    since, until = START.isoformat(), (START + timedelta(hours=1)).isoformat()
    run = detect("report", "--lake", lake.uri, "--since", since, "--until", until, "-o", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    page = out.read_text()
    # A line break is shown as the terminal shows it: HTML drew it as a space (review).
    shown = ("al\\x00ice", "b\\x1b[31mob", "car\\x07ol", "dave\\ufffe", "eve\\nFORGED")
    for text in (*shown, "fr\\u2028ed"):
        assert text in page, text
    assert "\x00" not in page and "\x1b" not in page and "eve\nFORGED" not in page


def test_the_page_goes_where_a_shell_user_sends_it_and_never_replaces_what_is_there(
    tmp_path, detect
):
    """``-o -`` and a FIFO (``/dev/null``, ``/dev/stdout`` and a pipe alike) are written
    into, the summary line to stderr; a symlink's file is written through the link. The
    page used to be renamed over the path: as root, ``-o /dev/null`` replaced the device
    with a regular file, and a FIFO or a link became a file. A ``cat`` child reads the
    FIFO; if the FIFO was replaced instead, nothing ever opens it for writing, and the
    reader is killed before the test fails."""
    lake = tmp_path / "lake"
    lake.mkdir()
    args = ("report", "--lake", str(lake), *RANGE)  # a fixed range: the same page each run

    piped = detect(*args, "-o", "-")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("<!doctype html") and piped.stdout.rstrip().endswith("</html>")
    assert "-> standard output" in piped.stderr

    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    run = detect(*args, "-o", str(fifo))
    still_a_fifo = stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if not still_a_fifo:
        reader.kill()
    page = reader.communicate()[0].decode()
    assert still_a_fifo and run.returncode == 0, run.stderr
    assert page.startswith("<!doctype html") and page.rstrip().endswith("</html>")
    assert run.stdout == "" and f"-> {fifo}" in run.stderr

    (tmp_path / "reports").mkdir()
    link = tmp_path / "latest.html"
    link.symlink_to(tmp_path / "reports" / "today.html")
    run = detect(*args, "-o", str(link))
    assert run.returncode == 0, run.stderr
    through = (tmp_path / "reports" / "today.html").read_text()
    assert link.is_symlink() and through.startswith("<!doctype html") and len(through) == len(page)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lake",
        "latest.html",
        "pipe.html",
        "reports",
    ]


def test_temporary_files_a_killed_write_left_are_removed_by_the_next_write(tmp_path):
    """A run killed between writing its temporary file and renaming it (SIGKILL, the OOM
    killer) left ``.report.html.<hex>.tmp`` beside the page for good. The next write of
    that page removes such files once an hour old; a younger one may be another run's,
    still being written, and stays, as do files of other names."""
    from detector.userfiles import STALE_TEMP_SECONDS, write_user_file

    page = tmp_path / "report.html"
    stale = tmp_path / ".report.html.0123abcd.tmp"
    fresh = tmp_path / ".report.html.4567cdef.tmp"
    other = tmp_path / ".other.html.0123abcd.tmp"
    for path in (stale, fresh, other):
        path.write_text("half a page")
    old = time.time() - STALE_TEMP_SECONDS - 60
    for path in (stale, other):
        os.utime(path, (old, old))
    write_user_file(page, "<html></html>")
    assert page.read_text() == "<html></html>"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([page.name, fresh.name, other.name])


def test_bad_arguments_are_usage_errors(tmp_path, detect):
    run = detect("report", "--lake", str(tmp_path), "--baseline", "a week")
    assert run.returncode == 2 and "invalid duration" in run.stderr


def test_usual_level_is_the_median_and_a_quiet_baseline_does_not_alarm_on_one_denial():
    level = usual_level(pl.Series([0.01, 0.012, 0.011, 0.2, 0.01]), "denied", baseline_hours=5)
    assert level.usual == pytest.approx(0.011)
    assert 0.011 < level.alarm < 0.2
    quiet = usual_level(pl.Series([0.0] * 24), "denied", baseline_hours=24)
    assert (quiet.usual, quiet.alarm) == (0.0, 0.001)
    assert 1 / 2000 < quiet.alarm < 3 / 1000  # one stray denial is not marked, three are


def test_a_rendered_chart_with_script_like_markup_is_refused(monkeypatch):
    import vl_convert

    monkeypatch.setattr(vl_convert, "vegalite_to_svg", lambda spec: "<svg onload=alert(1)></svg>")
    hourly = pl.DataFrame(
        {"cluster": ["a"], "hour": [START], "events": [1]},
        schema={"cluster": pl.String, "hour": pl.Datetime("us", "UTC"), "events": pl.UInt32},
    )
    with pytest.raises(charts.UnsafeChart):
        charts.events_per_hour(hourly)


def test_lake_text_in_chart_labels_is_escaped_by_the_renderer():
    top = pl.DataFrame({"label": [XSS_PRINCIPAL], "events": [5], "denied": [1]})
    svg = charts.top_principals(top)
    assert "<svg onload" not in svg and re.search(r"&lt;svg onload=alert\(2\)&gt;", svg)


def test_chart_labels_are_cut_and_stay_distinct():
    """One event of a 100,000-character username (an OIDC claim says what it likes) made
    the principals chart take 67 s to draw (found by review); labels are cut to what the
    chart shows, and principals that read alike keep labels of their own."""
    from detector.report.html import LABEL_CHARS, principal_labels

    long_role = "arn:aws:iam::111122223333:role/" + "r" * 120
    principals = [
        "U" * 100_000,
        long_role + "/a",
        long_role + "/b",  # cut alike: told apart by a hash
        "arn:aws:iam::111122223333:role/dev/grace",
        "arn:aws:iam::222233334444:role/dev/grace",  # reads alike: its stored form
        "ops\nadmin",
        "ops\\nadmin",  # reads alike once the line break is shown as \n (review)
    ]
    top = pl.DataFrame(
        {"principal": principals, "events": [5] * 7, "denied": [1] * 7},
        schema={"principal": pl.String, "events": pl.UInt32, "denied": pl.UInt32},
    )
    labels = principal_labels(top)["label"].to_list()
    shown = {label.translate(charts.LABEL_TEXT) for label in labels}  # as the chart draws
    assert len(shown) == 7 and max(map(len, labels)) <= LABEL_CHARS
    assert labels[3].endswith("111122223333:role/dev/grace") and "222233334444" in labels[4]
    svg = charts.top_principals(principal_labels(top))
    assert "U" * 100 not in svg and "U" * 50 in svg


def test_incidents_active_in_the_range_are_read_and_a_bad_file_is_skipped(tmp_path, caplog):
    """The report shows the incidents open at any time in its range, the ones that began
    days before it too, through the incidents table's own reader: a damaged file is skipped
    with a warning, and a lake that never grouped findings has no incidents section."""
    from detector.lake.incidents import write_incidents
    from detector.report.data import read_incidents

    lake = Lake(str(tmp_path / "lake"))
    assert read_incidents(lake, START, END) is None  # no table: the report skips the chart

    def incident(name: str, first: datetime, last: datetime, severity: str = "high") -> dict:
        return {"incident_id": name, "first_seen": first, "last_seen": last, "severity": severity}

    h = timedelta(hours=1)
    write_incidents(
        lake,
        [
            incident("low-first", START + h / 2, START + h, "low"),  # listed last (review)
            incident("inside", START + h, START + 2 * h),
            incident("began-before", START - timedelta(days=6), START + h),
            incident("over-before", START - timedelta(days=3), START - h),
            incident("after", END, END + h),
        ],
    )
    damaged = tmp_path / "lake" / "incidents" / "date=2026-11-28" / "incidents.parquet"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"PAR1 not really parquet")
    df = read_incidents(lake, START, END)
    # most severe first, as `detect incidents` lists them; then by first seen
    assert df is not None and df["incident_id"].to_list() == ["began-before", "inside", "low-first"]
    assert df["time"].to_list() == [START - timedelta(days=6), START + h, START + h / 2]
    assert df["severity"].to_list() == ["high", "high", "low"]
    assert "incidents.parquet" in caplog.text  # the damaged file, named


def test_alerts_get_their_sections_before_the_records_of_an_incident(tmp_path):
    """The sections went first to an incident's findings in incident order, info records
    included, then to the alerts, cut at --max-findings: 8 high alerts of a demo day had
    none, and an incident's in-range finding without one read "(not in this range)"."""
    from detector.lake.incidents import write_incidents
    from detector.report.data import collect
    from detector.report.html import build_context

    lake = Lake(str(tmp_path / "lake"))
    at = START + timedelta(hours=1)
    rows = [event(GRACE, at + timedelta(minutes=10 * i)) for i in range(6)]
    evs = write_events(lake, rows)
    one = [evs[i : i + 1] for i in range(6)]
    items = [
        (finding(GRACE, at + timedelta(minutes=10 * i), one[i], severity="info",
                 title=f"record {i}", detector="rule:exec-pod"), one[i])
        for i in range(4)
    ] + [
        (finding(GRACE, at + timedelta(minutes=40), one[4], severity="medium", title="mid"),
         one[4]),
        (finding(GRACE, at + timedelta(minutes=50), one[5], severity="high", title="top"),
         one[5]),
    ]  # fmt: skip
    found = write_findings(lake, START, END, items)
    records = found.filter(pl.col("severity") == "info")["finding_id"].to_list()
    write_incidents(
        lake,
        [
            {"incident_id": "inc-1", "cluster": "prod", "first_seen": at, "last_seen": at,
             "severity": "medium", "principal": GRACE, "finding_ids": records},
            {"incident_id": "inc-2", "cluster": "staging", "first_seen": at, "last_seen": at,
             "severity": "low", "principal": GRACE, "finding_ids": []},
        ],
    )  # fmt: skip
    data = collect(lake, START, END, max_findings=3, cluster="prod")
    assert data.detailed["title"].to_list() == ["top", "mid", "record 0"]
    assert data.incidents is not None and data.incidents["incident_id"].to_list() == ["inc-1"]
    listed = build_context(data)["incidents"][0]["findings"]
    assert [f["in_range"] for f in listed] == [True] * 4
    assert [bool(f["anchor"]) for f in listed] == [True, False, False, False]
    assert any("6 findings qualify" in n for n in data.notes)


def test_an_incident_grouped_by_address_is_named_by_it(tmp_path):
    """`detect incidents` names an incident grouped by source address by the address; the
    page named it after one of its principals (system:anonymous; found by review)."""
    from detector.lake.incidents import write_incidents
    from detector.report.data import collect
    from detector.report.html import build_context

    lake = Lake(str(tmp_path / "lake"))
    at = START + timedelta(hours=1)
    write_events(lake, [event(GRACE, at)])
    write_incidents(
        lake,
        [
            {"incident_id": "by-ip", "first_seen": at, "last_seen": at + timedelta(minutes=10),
             "severity": "low", "principal": "system:anonymous", "key": "45.155.205.249",
             "key_kind": "source_ip", "finding_ids": []},
            {"incident_id": "by-who", "first_seen": at, "last_seen": at + timedelta(minutes=10),
             "severity": "low", "principal": GRACE, "key": GRACE, "key_kind": "principal",
             "finding_ids": []},
        ],
    )  # fmt: skip
    shown = {i["incident_id"]: i["display"] for i in build_context(collect(lake, START, END))[
        "incidents"]}  # fmt: skip
    from detector.events.identity import display_principal

    assert shown == {"by-ip": "45.155.205.249", "by-who": display_principal(GRACE)}


def test_an_incident_begun_before_the_range_is_drawn_in_its_first_hour(tmp_path):
    """Binned at its first_seen, it stretched the incidents chart to 7,578 px with the
    range squeezed into a corner."""
    from detector.lake.incidents import write_incidents
    from detector.report.data import collect
    from detector.report.html import build_context

    lake = Lake(str(tmp_path / "lake"))
    write_events(lake, [event(GRACE, START + timedelta(hours=1))])
    write_incidents(
        lake,
        [
            {"incident_id": "old", "cluster": "prod", "first_seen": START - timedelta(days=3),
             "last_seen": START + timedelta(hours=1), "severity": "high"},
        ],
    )  # fmt: skip
    svg = build_context(collect(lake, START, END))["charts"]["incidents"]
    events_svg = build_context(collect(lake, START, END))["charts"]["events"]
    width = re.compile(r'<svg[^>]* width="([0-9.]+)"')
    drawn, usual = (float(width.search(x).group(1)) for x in (svg, events_svg))
    assert drawn < 1.1 * usual  # (legends differ by a few pixels)


def test_long_lake_text_is_cut_in_table_cells():
    """A 5,000-character object name ran out of its table and pushed the source and raw
    columns off the page (found by review): cells show at most CELL_CHARS characters."""
    from detector.events.schema import events_polars_schema
    from detector.report.html import CELL_CHARS, _events_rows

    schema = events_polars_schema(with_cluster=True)
    row = {c: None for c in schema} | {
        "audit_id": "a1", "event_time": START, "verb": "get", "resource": "pods",
        "namespace": "app", "name": "B" * 5000, "response_code": 200, "user_agent": "U" * 5000,
    }  # fmt: skip
    (shown,) = _events_rows(pl.DataFrame([row], schema=schema), "f1")
    assert shown["where"].startswith("app/BBB") and len(shown["where"]) == CELL_CHARS
    assert len(shown["user_agent"]) <= CELL_CHARS


def test_damaged_files_the_report_skipped_are_named_on_the_page(tmp_path):
    """A damaged events file was skipped with a warning on stderr only: the page showed
    fewer events with no word of it (found by review)."""
    from detector.report.data import collect

    lake = Lake(str(tmp_path / "lake"))
    write_events(lake, [event(GRACE, START + timedelta(minutes=i)) for i in range(3)])
    assert not [n for n in collect(lake, START, END).notes if "damaged" in n]
    (good,) = (tmp_path / "lake" / "events").rglob("*.parquet")
    (good.parent / "damaged.parquet").write_bytes(b"PAR1 not really parquet")
    notes = [n for n in collect(lake, START, END).notes if "damaged" in n]
    assert notes == [
        f"1 damaged lake file(s) skipped: what they hold is not counted here "
        f"(`detect lake check --lake {lake.uri}` lists them)"
    ]


@pytest.mark.parametrize("hours", [1, 6, 24 * 7])
def test_time_axis_labels_never_overlap(hours):
    """A 6-hour range labelled every 15 minutes, 31 px apart, the labels printed over each
    other (found by review): whatever the range, labels stay a label's width apart."""
    lo = datetime(2026, 12, 1, 12, tzinfo=UTC)
    hi = lo + timedelta(hours=hours)
    times = [lo + (hi - lo) * i / 12 for i in range(12)]
    df = pl.DataFrame({"time": times, "severity": ["high"] * 12})
    domain = (lo.isoformat().replace("+00:00", "Z"), hi.isoformat().replace("+00:00", "Z"))
    svg = charts.by_severity(df, "time", "t", domain)
    axis = re.search(r'role-axis-label".*?</g>', svg, re.S).group(0)
    xs = [float(x) for x in re.findall(r"translate\(([0-9.]+),[0-9.]+\)", axis)]
    assert len(xs) >= 2 and min(b - a for a, b in itertools.pairwise(xs)) >= 60, xs
