"""What is pending delivery, asked every minute by `detect watch` for months: the answer of a
full read of the incidents and dead letters, at the cost of a listing when nothing changed.

Real parts only: lakes on disk and on moto's S3 server on loopback (conftest), a loopback
webhook receiver, other writers as other `Lake` objects and as the real `detect` console
script in a subprocess. S3 requests are counted from the moto server's request log.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from alerts_data import Receiver, W, finding, frames
from conftest import free_port, run_detect

from detector.delivery import config as sink_config
from detector.delivery.records import RETENTION, read_dead_letters, write_dead_letters
from detector.delivery.run import PENDING_LOOKBACK, pending, send
from detector.delivery.stream import StreamAlerter
from detector.detect.stream import StreamDetector
from detector.incidents import workflow
from detector.incidents.group import Incident
from detector.lake import incidents as table
from detector.lake.events import Lake

ROLE = "arn:aws:iam::111122223333:role/r{}"
#: the pending checks' clock in the lake tests (the stream clock in a watch)
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def fill(lake: Lake, end: datetime, days: int, per_day: int = 2) -> dict[int, list[Incident]]:
    """``per_day`` incidents first seen on each of the ``days`` days before ``end``, filed
    by the library as a scoring run files them (days ago -> incidents)."""
    out = {}
    for ago in range(days, 0, -1):
        day = end - timedelta(days=ago)
        rows = [finding(ROLE.format(i), day + i * W, severity="high") for i in range(per_day)]
        df, ev = frames(rows)
        out[ago] = workflow.update(lake, df, ev, now=day + timedelta(hours=1)).incidents
    return out


def dead_letter(lake: Lake, inc: Incident, at: datetime) -> None:
    row = {
        "incident_id": inc.incident_id,
        "version": inc.version,
        "sink": "pager",
        "sink_type": "webhook",
        "kind": "new",
        "idempotency_key": f"{inc.incident_id}:v{inc.version}",
        "attempts": 3,
        "error": "HTTP 503",
        "failed_at": at,
        "payload": {},
    }
    write_dead_letters(lake, [row], at)


def reference(lake: Lake, now: datetime) -> list[str]:
    """What is pending, read whole as `pending` read it before it kept anything: every
    incident file of the dates in range, every dead-letter file (read without the code
    under test)."""
    df = table.read_incidents(lake, since=now - RETENTION - table.MAX_INCIDENT_SPAN)
    first = f"date={now - RETENTION:%Y-%m-%d}"
    root = Path(lake.uri) / "dead_letters"
    failed = {
        i
        for f in sorted(root.glob("date=*/*.parquet"))
        if f.parent.name >= first
        for i in pl.read_parquet(f)["incident_id"]
    }
    df = df.filter(
        (pl.col("updated_at") >= now - PENDING_LOOKBACK) | pl.col("incident_id").is_in(failed)
    )
    return sorted(df["incident_id"])


def test_the_watchs_pending_check_reads_only_what_changed_and_misses_nothing(tmp_path, caplog):
    """The watch's check re-read 37 days of incident files and every dead letter each
    minute. Kept between calls, it gives the full read's answer at every step (other
    writers, a rewrite of the same size and time, a damaged file, the clock moving on),
    reading only the files written since."""
    from detector.delivery.run import PendingIncidents

    lake = Lake(str(tmp_path / "lake"))
    by_age = fill(lake, NOW, days=45)
    dead_letter(lake, by_age[25][0], NOW - timedelta(days=25))  # an outage 25 days ago
    dead_letter(lake, by_age[40][0], NOW - timedelta(days=40))  # beyond the records' reach
    index = PendingIncidents(lake)
    read = index.files_read

    def step(now: datetime) -> tuple[set[str], int]:
        nonlocal read
        got = [i.incident_id for i in index(now)]
        assert len(got) == len(set(got))
        assert sorted(got) == reference(lake, now)
        fresh = sorted(i.incident_id for i in pending(lake, now))  # a restarted process
        assert fresh == sorted(got)
        done, read = index.files_read - read, index.files_read
        return set(got), done

    got, done = step(NOW)
    assert by_age[25][0].incident_id in got and by_age[1][0].incident_id in got
    assert done == 37 + 1  # the incident files of the 37 days in reach, one dead letter
    assert step(NOW + timedelta(minutes=1))[1] == 0  # nothing changed: nothing read

    # another writer resolves a 20-day-old incident: that day's file alone is read again
    other = Lake(lake.uri)
    old = by_age[20][1]
    workflow.set_incident_status(other, old.incident_id, "resolved", "rotated", now=NOW)
    got, done = step(NOW + timedelta(minutes=2))
    assert old.incident_id in got and done == 1

    # a rewrite of the same size, its modification time set back: still seen
    ten = by_age[10][0]
    day_file = Path(table.incidents_table(lake).files((f"{NOW - timedelta(days=10):%Y-%m-%d}",))[0])
    before = day_file.stat()
    rows = pl.read_parquet(day_file)
    shift = NOW - rows["updated_at"].max()  # both incidents updated now, by a late run
    rows = rows.with_columns(pl.col("updated_at") + shift, pl.col("version") + 1)
    table.write_incidents(other, rows.to_dicts())
    assert day_file.stat().st_size == before.st_size  # the same size...
    os.utime(day_file, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...and time
    got, done = step(NOW + timedelta(minutes=3))
    assert ten.incident_id in got and done == 1

    # a sink fails today for a month-old incident: its dead letter makes it pending
    month = by_age[30][1]
    dead_letter(other, month, NOW + timedelta(minutes=4))
    got, done = step(NOW + timedelta(minutes=4))
    assert month.incident_id in got and done == 1

    # a damaged file is skipped as every reader skips it, and read once repaired
    hit = Path(table.incidents_table(lake).files((f"{NOW - timedelta(days=5):%Y-%m-%d}",))[0])
    good = hit.read_bytes()
    hit.write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING):
        got, _ = step(NOW + timedelta(minutes=5))
    assert "skipping" in caplog.text
    hit.write_bytes(good)
    assert step(NOW + timedelta(minutes=6))[1] == 1

    # the clock moves on: what leaves the lookback and the retention drops out, unread
    later = NOW + timedelta(days=2)
    got, done = step(later)
    assert done == 0 and old.incident_id not in got
    assert by_age[25][0].incident_id in got  # its dead letter is 25 days old: still owed


# --------------------------------------------------------------------------- S3, the watch
class S3Requests(logging.Handler):
    """Requests to the moto server (its request log), by kind, for keys under a prefix."""

    LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')

    def __init__(self, *folders: str) -> None:
        super().__init__()
        self.folders = folders
        self.kinds: Counter[str] = Counter()
        self.objects: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        found = self.LINE.search(record.getMessage())
        if not found:
            return
        method, target = found.groups()
        path, _, query = target.partition("?")
        listing = method == "GET" and "list-type=" in query
        if not any(f"/{f}/" in path or f"prefix=lake%2F{f}" in query for f in self.folders):
            return
        self.kinds["LIST" if listing else method] += 1
        if method == "GET" and not listing:
            self.objects.add(path)


@pytest.fixture
def s3_requests(moto_endpoint) -> Iterator[S3Requests]:
    counter = S3Requests("incidents", "dead_letters")
    log = logging.getLogger("werkzeug")
    level, propagate = log.level, log.propagate
    log.addHandler(counter)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield counter
    finally:
        log.removeHandler(counter)
        log.setLevel(level)
        log.propagate = propagate


def test_a_watch_on_s3_reads_no_incident_file_while_none_changes(s3_bucket, s3_requests):
    """On an S3 lake the watch's check each minute was 50-odd GETs and as many LISTs for a
    month of incidents. Now the steady state is a listing of each table; a resolve by
    another process (`detect incidents resolve`) costs one GET and is delivered, and a
    restarted watch finds what was resolved while it was down."""
    now = datetime.now(UTC).replace(microsecond=0)
    lake = Lake(f"s3://{s3_bucket}/lake")
    by_age = fill(lake, now, days=10)
    receiver = Receiver()
    try:
        hook = sink_config.parse_sink(
            {"name": "hook", "type": "webhook", "url": receiver.url, "retries": 0}, "test"
        )
        # two week-old incidents reached the sink when they were new
        week = by_age[7]
        send(lake, week, [hook], now=now - timedelta(days=7))
        assert len(receiver.delivered) == 2
        nothing = lake.scan_events(now, now).collect()
        alerter = StreamAlerter(lake, StreamDetector(lake), [hook])
        payload = alerter.consume(nothing, now, None)  # the first check reads everything
        s3_requests.kinds.clear()
        s3_requests.objects.clear()
        payload = alerter.consume(nothing, now + timedelta(minutes=1), payload)
        assert s3_requests.kinds["GET"] == 0 and s3_requests.kinds["HEAD"] == 0
        assert s3_requests.kinds["LIST"] <= 2, s3_requests.kinds

        res = run_detect("incidents", "resolve", week[0].incident_id, "--lake", lake.uri)
        assert res.returncode == 0, res.stderr
        s3_requests.kinds.clear()
        s3_requests.objects.clear()
        sent_before = len(receiver.delivered)
        payload = alerter.consume(nothing, now + timedelta(minutes=2), payload)
        assert len(s3_requests.objects) == 1  # the resolved incident's day
        (update,) = receiver.delivered[sent_before:]
        assert update["output_fields"]["detect.incident.id"] == week[0].incident_id
        assert update["output_fields"]["detect.status"] == "resolved"

        # the watch is down; the other week-old incident is resolved; a new watch sends it
        res = run_detect("incidents", "resolve", week[1].incident_id, "--lake", lake.uri)
        assert res.returncode == 0, res.stderr
        restarted = StreamAlerter(lake, StreamDetector(lake), [hook])
        restarted.consume(nothing, now + timedelta(minutes=3), payload)
        (update,) = receiver.delivered[sent_before + 1 :]
        assert update["output_fields"]["detect.incident.id"] == week[1].incident_id
    finally:
        receiver.close()


@pytest.mark.parametrize(
    "broken",
    [
        # asks STS for its account; STS cannot be reached (found by review)
        {"name": "down", "type": "securityhub", "region": "us-east-1", "retries": 0},
        # cannot be built at all: no region anywhere (a watch's start refuses this one;
        # the alerter, given it, still delivers to the others)
        {"name": "down", "type": "sns", "topic_arn": "arn:aws:sns:::t", "retries": 0},
        # its secret file gone after the start's check (rotated, rewritten): review
        {"name": "down", "type": "webhook", "url_file": "/nonexistent/url", "retries": 0},
    ],
    ids=["sts-unreachable", "cannot-start", "secret-gone"],
)
def test_a_sink_that_cannot_start_delays_only_its_own_alerts(tmp_path, monkeypatch, broken):
    """Every batch of `detect watch` builds its sinks. A Security Hub sink asking STS for
    its account when built raised out of the batch while STS was down: no sink was sent
    anything, and the stream itself stopped at that batch (found by review). The failing
    sink's alerts now wait as in any outage, filed so a later delivery finds them."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # refused at once: no retries to wait out
    now = datetime.now(UTC).replace(microsecond=0)
    lake = Lake(str(tmp_path / "lake"))
    wanted = {i.incident_id for i in fill(lake, now, days=1)[1]}
    receiver = Receiver()
    try:
        hook = sink_config.parse_sink(
            {"name": "hook", "type": "webhook", "url": receiver.url, "retries": 0}, "test"
        )
        down = sink_config.parse_sink(broken, "test")
        alerter = StreamAlerter(lake, StreamDetector(lake), [hook, down])
        alerter.consume(lake.scan_events(now, now).collect(), now, None)
        sent = {r["output_fields"]["detect.incident.id"] for r in receiver.delivered}
        assert sent == wanted
    finally:
        receiver.close()
    letters = read_dead_letters(lake)
    assert set(letters.filter(pl.col("sink") == "down")["incident_id"]) == wanted
    assert not letters.filter(pl.col("sink") == "hook").height
