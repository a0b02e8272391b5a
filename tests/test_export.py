"""CloudWatch Logs export: windows, paging, resume after SIGKILL, lateness, leases, faults.

Everything runs against moto in server mode on loopback (the ``moto_endpoint`` fixture);
faults come from a real HTTP proxy in front of it (tests/throttle_proxy.py), and the
``detect`` CLI runs as a subprocess wherever a user or a scheduler would run it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import re
import shlex
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import orjson
import polars as pl
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError
from factories import audit_message
from throttle_proxy import FaultProxy

from detector.lake.events import Lake
from detector.pipeline.export import Exporter, ExportError, ExportOptions, iso_ms
from detector.ratelimit import (
    RateLimiter,
    Retrier,
    RetriesExhausted,
    RetryAborted,
    is_retryable,
)

AUDIT_STREAMS = [
    "kube-apiserver-audit-0a1b2c3d4e5f",
    "kube-apiserver-audit-1b2c3d4e5f6a",
    "kube-apiserver-audit-2c3d4e5f6a7b",
]
OTHER_STREAM = "authenticator-0a1b2c3d4e5f"
FAST = ["--rate", "0", "--backoff", "0.01s"]


def detect_cmd() -> list[str]:
    """The installed console script, as in conftest.run_detect."""
    import sys

    exe = Path(sys.executable).parent / "detect"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]


# ----------------------------------------------------------------------------- helpers
def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(autouse=True)
def _conftest_region(monkeypatch):
    """The region conftest sets, even if an earlier in-process CLI run changed it (the root
    callback exports --region / the config file's region into the environment)."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def logs(moto_endpoint):
    return boto3.client("logs", endpoint_url=moto_endpoint)


def new_group(logs, streams=AUDIT_STREAMS, *, other: bool = True) -> str:
    """A fresh EKS-like log group: the given audit streams plus a non-audit one."""
    group = f"/aws/eks/t{uuid.uuid4().hex[:10]}/cluster"
    logs.create_log_group(logGroupName=group)
    for s in [*streams, *([OTHER_STREAM] if other else [])]:
        logs.create_log_stream(logGroupName=group, logStreamName=s)
    return group


def put(logs, group: str, stream: str, items: list[tuple[int, str]]) -> None:
    """put_log_events in time order, 2,000 per call."""
    items = sorted(items, key=lambda x: x[0])
    for i in range(0, len(items), 2000):
        logs.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": t, "message": m} for t, m in items[i : i + 2000]],
        )


def fill(logs, group: str, *, per_stream: int, start: int, end: int, tag: str) -> dict:
    """Audit events spread evenly over [start, end) in every audit stream (same
    timestamps in each stream, so many events share a millisecond), plus audit-looking
    events in the non-audit stream that must never reach the lake. Returns id -> ts."""
    step = (end - start) / per_stream
    expected: dict[str, int] = {}
    for k, stream in enumerate(AUDIT_STREAMS):
        items = []
        for i in range(per_stream):
            ts = start + int(i * step)
            aid = f"{tag}-{k}-{i:06d}"
            expected[aid] = ts
            items.append((ts, audit_message(aid, ts, verb=("get", "list", "watch")[i % 3])))
        put(logs, group, stream, items)
    put(
        logs,
        group,
        OTHER_STREAM,
        [
            (start + i * 1000, audit_message(f"other-{tag}-{i}", start + i * 1000))
            for i in range(300)
        ],
    )
    return expected


def lake_events(lake: str) -> pl.DataFrame:
    return Lake(lake).scan_events().collect()


def checkpoint(lake: str) -> dict | None:
    files = sorted(Path(lake, "_state", "cloudwatch").glob("*/*.json"))
    return json.loads(files[0].read_text()) if files else None


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    """``detect ARGS`` in-process (the CLI's startup costs seconds; the code path is the
    same). Returns what ``run_detect`` returns. ``env`` values of None unset a variable."""
    from typer.testing import CliRunner

    from detector.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def run_json(cli, *args: str, env: dict | None = None) -> tuple[int, dict | None, str]:
    proc = cli(*args, "--format", "json", env=env)
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    except json.JSONDecodeError:
        doc = None
    return proc.returncode, doc, proc.stderr


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ----------------------------------------------------------------------------- units
def test_rate_limiter_paces_calls():
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    limiter = RateLimiter(5, clock=lambda: clock[0], sleep=sleep)
    for _ in range(11):
        limiter.acquire()
    assert clock[0] == pytest.approx(2.0)  # 11 calls at 5/s: the first is free
    assert RateLimiter(0).acquire() == 0.0


def test_retrier_backs_off_with_jitter_and_gives_up():
    throttled = ClientError(
        {
            "Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "FilterLogEvents",
    )
    denied = ClientError(
        {
            "Error": {"Code": "AccessDeniedException", "Message": "no"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        },
        "FilterLogEvents",
    )
    assert is_retryable(throttled) and not is_retryable(denied)
    assert is_retryable(ConnectionClosedError(endpoint_url="http://x"))
    sleeps: list[float] = []
    retrier = Retrier(max_attempts=5, base=1.0, cap=4.0, sleep=sleeps.append, rng=random.Random(1))
    outcomes = iter([throttled, throttled, "ok"])

    def call():
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    assert retrier.call("FilterLogEvents", call) == "ok"
    assert retrier.stats.retries == 2 and retrier.stats.throttled == 2
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0
    with pytest.raises(RetriesExhausted, match="failed 5 times; last: ThrottlingException"):
        Retrier(max_attempts=5, sleep=lambda s: None).call(
            "X", lambda: (_ for _ in ()).throw(throttled)
        )
    assert all(s <= 4.0 for s in [Retrier(cap=4.0).backoff(n) for n in range(20)])
    with pytest.raises(ClientError):
        Retrier(sleep=lambda s: None).call("X", lambda: (_ for _ in ()).throw(denied))
    # A shutdown during an outage does not sit through the backoff schedule.
    stopping = Retrier(max_attempts=8, sleep=sleeps.append, should_stop=lambda: True)
    with pytest.raises(RetryAborted):
        stopping.call("X", lambda: (_ for _ in ()).throw(throttled))
    assert stopping.stats.calls == 1


class _StubLogs:
    """Answers like AWS can and moto does not: empty pages with a token, stray streams."""

    def __init__(self, streams: list[str]) -> None:
        self.streams = streams
        self.filter_calls: list[dict] = []

    def describe_log_streams(self, **kw):
        names = [s for s in self.streams if s.startswith(kw["logStreamNamePrefix"])]
        start = int(kw.get("nextToken") or 0)
        page = names[start : start + kw["limit"]]
        more = start + kw["limit"] < len(names)
        return {
            "logStreams": [{"logStreamName": n} for n in page],
            **({"nextToken": str(start + kw["limit"])} if more else {}),
        }

    def filter_log_events(self, **kw):
        self.filter_calls.append(kw)
        token = kw.get("nextToken")
        first = kw["logStreamNames"][0]
        if token is None:
            return {"events": [], "nextToken": "t1"}
        if token == "t1":
            return {"events": [], "nextToken": "t2"}
        if token == "t2":
            return {
                "events": [
                    {
                        "logStreamName": OTHER_STREAM,
                        "timestamp": 5,
                        "eventId": "x",
                        "message": "{}",
                    },
                    {"logStreamName": first, "timestamp": 5, "eventId": "a", "message": "{}"},
                    {"logStreamName": first, "timestamp": 99, "eventId": "late", "message": "{}"},
                ],
                "nextToken": "t3",
            }
        return {
            "events": [{"logStreamName": first, "timestamp": 10, "eventId": "b", "message": "{}"}]
        }


def test_reader_batches_streams_follows_empty_pages_and_filters_client_side():
    from detector.sources.cloudwatch import LogsReader

    audit = [f"kube-apiserver-audit-{i:03d}" for i in range(250)]
    stub = _StubLogs([*audit, OTHER_STREAM, "kube-scheduler-1"])
    reader = LogsReader(stub, "/aws/eks/x/cluster", retrier=Retrier(), page_limit=50_000)
    assert reader.streams() == audit  # 6 DescribeLogStreams pages of 50
    pages = list(reader.pages(audit, 0, 50))
    assert [len(c["logStreamNames"]) for c in stub.filter_calls[::4]] == [100, 100, 50]
    assert all(c["limit"] == 10_000 for c in stub.filter_calls)  # capped at the API maximum
    events = [e["eventId"] for p in pages for e in p.events]
    assert events == ["a", "b"] * 3  # other streams and out-of-range stamps dropped
    assert sum(p.ignored for p in pages) == 2 * 3


def test_a_token_that_keeps_coming_back_empty_stops_the_run_instead_of_completing_it(
    tmp_path,
):
    """The same nextToken with no events three times ended the window quietly, as if read
    whole, and the checkpoint moved past what the token still held (found by review). It
    is now an error; the window stays unread. (A stub client: no server can be made to
    answer so.)"""
    from detector.sources.cloudwatch import LogsReader, PaginationStuck

    class Stuck:
        def filter_log_events(self, **kwargs):
            return {"events": [], "nextToken": "same"}

    reader = LogsReader(Stuck(), "/aws/eks/x/cluster", retrier=Retrier())
    with pytest.raises(PaginationStuck, match="same nextToken"):
        list(reader.pages(["kube-apiserver-audit-1"], 0, 50))

    # Following, the window is read again on the next pass; a batch run says so (exit 3).
    class StuckLogs(Stuck):
        meta = type("Meta", (), {"region_name": "us-east-1"})()

        def describe_log_streams(self, **kwargs):
            return {"logStreams": [{"logStreamName": "kube-apiserver-audit-1"}]}

    options = ExportOptions(log_group="/aws/eks/x/cluster", cluster="x", rate=0)
    since = datetime.now(UTC) - timedelta(hours=1)
    following = Exporter(str(tmp_path / "lake"), options, client=StuckLogs())
    following.start(since=since, follow=True)
    assert following.run_pass() is True  # still following
    following.finish()
    batch = Exporter(str(tmp_path / "lake2"), options, client=StuckLogs())
    with pytest.raises(ExportError, match="same nextToken"):
        batch.run(since=since)


# ----------------------------------------------------------------------------- batch export
def test_an_empty_stream_prefix_exports_every_stream_and_a_long_group_name_resumes(logs, lake_dir):
    """``--stream-prefix ''`` was sent to AWS, which refuses an empty prefix (a two-line
    "ParamValidationError"); it now means every stream. A group name may have 512
    characters: its checkpoint name was refused past 240 ("state name is 630 characters
    long"), and is now cut, the digest keeping it unique, so a second run resumes."""
    group = "/custom/" + "g" * 480 + f"/{uuid.uuid4().hex[:8]}"
    logs.create_log_group(logGroupName=group)
    end = now_ms() - 10 * 60_000
    for stream in ("apiserver-a", "other-b"):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        put(logs, group, stream, [(end - 60_000, audit_message(f"{stream}-1", end - 60_000))])
    args = ("export", "--log-group", group, "--cluster", "c", "--lake", lake_dir)
    code, _, err = run_json(cli, *args, "--stream-prefix", "", "--since", "1h")
    assert code == 0, err
    assert sorted(lake_events(lake_dir)["audit_id"]) == ["apiserver-a-1", "other-b-1"]
    code, _, err = run_json(cli, *args, "--stream-prefix", "")
    assert code == 0, err  # resumed from the checkpoint: no --since needed
    assert lake_events(lake_dir).height == 2


def test_a_run_that_reads_no_stream_leaves_the_checkpoint_and_other_streams_are_refused(
    logs, lake_dir
):
    """A mistyped ``--stream-prefix`` matched no stream: the run said so, exited 0 and moved
    the checkpoint to now, so the next run (the right prefix, resuming) never read the
    hours before. Now the checkpoint stays where the run was asked to start; and once
    it has moved, a run reading other streams is refused (it would move it past events of
    the streams it covers)."""
    group = new_group(logs)
    end = now_ms() - 10 * 60_000
    stamps = [end - i * 60_000 for i in range(5)]
    put(
        logs,
        group,
        AUDIT_STREAMS[0],
        [(t, audit_message(f"e{i}", t)) for i, t in enumerate(stamps)],
    )
    args = ("export", "--log-group", group, "--cluster", "c", "--lake", lake_dir)
    mistyped = ("--stream-prefix", "kube-apiserver-audit-x")
    code, doc, err = run_json(cli, *args, *mistyped, "--since", "1h")
    assert code == 0, err
    assert doc["events_written"] == 0 and "no log streams" in " ".join(doc["warnings"])
    assert checkpoint(lake_dir).get("watermark_ms") is None
    code, _, err = run_json(cli, *args)  # the right prefix, resuming: nothing skipped
    assert code == 0, err
    assert sorted(lake_events(lake_dir)["audit_id"]) == [f"e{i}" for i in range(5)]
    proc = cli(*args, "--stream-prefix", "authenticator")
    assert proc.returncode == 2
    assert "covers the streams starting with 'kube-apiserver-audit-'" in one_line_error(proc.stderr)


#: Events per audit stream: with ``--page-limit 300`` each window is read in ten pages or
#: more, and each page of the three streams holds many events sharing a millisecond. (It
#: was 8,000: moto filters the whole stream for every page, so four times the events
#: took four times the pages of four times the work, 10 s instead of 2.6 s, and covered
#: no other path.)
PAGED_PER_STREAM = 2_000


def test_three_streams_two_windows_paged_counts_and_content_exact(logs, lake_dir):
    group = new_group(logs)
    end = now_ms() - 10 * 60_000
    start = end - 90 * 60_000
    expected = fill(logs, group, per_stream=PAGED_PER_STREAM, start=start, end=end, tag="w")
    mid = start + 45 * 60_000 + 7  # not on a round millisecond count
    common = [
        "--log-group",
        group,
        "--lake",
        lake_dir,
        "--latency",
        "1m",
        "--page-limit",
        "300",
        "--chunk",
        "20m",
        *FAST,
    ]

    rc, first, err = run_json(cli, "export", *common, "--since", iso(start), "--until", iso(mid))
    assert rc == 0, err
    in_first = {a for a, t in expected.items() if t < mid}
    assert first["events_written"] == first["events_read"] == len(in_first)
    assert first["pages"] >= len(in_first) / 300 >= 10
    assert first["checkpoint"]["after"] == iso_ms(mid)
    assert set(lake_events(lake_dir)["audit_id"]) == in_first

    rc, second, err = run_json(cli, "export", *common)  # resume from the checkpoint
    assert rc == 0, err
    overlap = {a for a, t in expected.items() if mid - 60_000 <= t < mid}
    assert second["duplicates"] == len(overlap) > 0  # re-read, not re-written
    assert second["events_written"] == len(expected) - len(in_first)

    got = lake_events(lake_dir)
    assert got.height == len(expected) == 3 * PAGED_PER_STREAM
    assert set(got["audit_id"]) == set(expected)
    assert not any(a.startswith("other-") for a in got["audit_id"])
    assert set(got["cluster"]) == {group.split("/")[3]}
    # Content: every row's time, verb and origin match what was put, eventId included.
    truth = {}
    paginator = logs.get_paginator("filter_log_events")
    for page in paginator.paginate(logGroupName=group, logStreamNames=AUDIT_STREAMS):
        for e in page["events"]:
            truth[orjson.loads(e["message"])["auditID"]] = (e["eventId"], e["logStreamName"])
    rows = got.select("audit_id", "event_time", "verb", "source", "source_position").rows()
    for audit_id, event_time, verb, source, position in rows:
        ts = expected[audit_id]
        i = int(audit_id.rsplit("-", 1)[1])
        assert int(event_time.timestamp() * 1000) == ts
        assert verb == ("get", "list", "watch")[i % 3]
        assert position == truth[audit_id][0]
        assert source.endswith(f"{group}#{truth[audit_id][1]}")

    # The same arguments again: nothing changes in the lake.
    before = sorted(p.name for p in Path(lake_dir, "events").rglob("*.parquet"))
    rc, again, err = run_json(cli, "export", *common, "--since", iso(start), "--until", iso(mid))
    assert rc == 0, err
    assert again["events_written"] == 0 and again["duplicates"] == len(in_first)
    assert sorted(p.name for p in Path(lake_dir, "events").rglob("*.parquet")) == before
    assert checkpoint(lake_dir)["watermark_ms"] == second_watermark(second)


def second_watermark(summary: dict) -> int:
    after = datetime.fromisoformat(summary["checkpoint"]["after"].replace("Z", "+00:00"))
    return round(after.timestamp() * 1000)


def test_events_sharing_a_millisecond_at_boundaries_are_all_exported(logs, lake_dir):
    """No overlap at all here, so only exact inclusive/exclusive boundaries can save them."""
    group = new_group(logs)
    s = (now_ms() - 60_000) // 1000 * 1000
    expected = set()
    for k, stream in enumerate(AUDIT_STREAMS):
        items = []
        for b in range(10):  # chunk boundaries are s + b seconds
            for ts in (s + b * 1000 - 1, s + b * 1000, s + b * 1000, s + b * 1000 + 1):
                aid = f"b-{k}-{len(items)}"
                if ts >= s:  # s - 1 is before --since
                    expected.add(aid)
                items.append((ts, audit_message(aid, ts)))
        put(logs, group, stream, items)
    opts = dict(
        log_group=group,
        cluster="edge",
        chunk=timedelta(seconds=1),
        latency=timedelta(0),
        overlap=timedelta(0),
        rate=0,
        page_limit=5,
    )
    split = datetime.fromtimestamp((s + 5000) / 1000, UTC)  # a run boundary on a busy ms
    first = Exporter(lake_dir, ExportOptions(**opts)).run(
        since=datetime.fromtimestamp(s / 1000, UTC), until=split
    )
    end = datetime.fromtimestamp((s + 10_001) / 1000, UTC)
    second = Exporter(lake_dir, ExportOptions(**opts)).run(until=end)  # resume, overlap 0
    got = lake_events(lake_dir)
    assert got.height == len(expected) == 3 * 40 - 3
    assert set(got["audit_id"]) == expected
    assert first.ingest.duplicates == second.ingest.duplicates == 0
    assert checkpoint(lake_dir)["watermark_ms"] >= s + 10_000


def test_a_gap_in_the_checkpoint_is_remembered_and_closed_later(logs, lake_dir):
    """Hourly cron with a failed hour: later hours are recorded, the backfill closes the gap."""
    group = new_group(logs)
    t = (now_ms() - 70 * 60_000) // 60_000 * 60_000
    minute = 60_000
    put(
        logs,
        group,
        AUDIT_STREAMS[0],
        [(t + m * minute, audit_message(f"g-{m}", t + m * minute)) for m in (5, 25, 45)],
    )
    opts = ExportOptions(
        log_group=group, cluster="gap", rate=0, latency=timedelta(0), overlap=timedelta(0)
    )

    def at(m: int) -> datetime:
        return datetime.fromtimestamp((t + m * minute) / 1000, UTC)

    def run(a: int | None, b: int):
        return Exporter(lake_dir, opts).run(since=at(a) if a is not None else None, until=at(b))

    run(0, 10)
    gap = run(20, 30)  # 10..20 failed
    assert "recorded as exported" in gap.checkpoint_note
    run(40, 50)  # 30..40 failed too
    state = checkpoint(lake_dir)
    assert state["watermark_ms"] == t + 10 * minute
    assert state["islands"] == [
        [t + 20 * minute, t + 30 * minute],
        [t + 40 * minute, t + 50 * minute],
    ]
    run(10, 20)  # backfill: the watermark jumps over the first island
    state = checkpoint(lake_dir)
    assert state["watermark_ms"] == t + 30 * minute
    assert state["islands"] == [[t + 40 * minute, t + 50 * minute]]
    run(None, 60)  # resume: reads 30..60 and absorbs the second island
    state = checkpoint(lake_dir)
    assert (state["watermark_ms"], state["islands"]) == (t + 60 * minute, [])
    assert sorted(lake_events(lake_dir)["audit_id"]) == ["g-25", "g-45", "g-5"]


# ----------------------------------------------------------------------------- resume
def _popen_export(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*detect_cmd(), "export", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


#: An exporter that kills itself with SIGKILL at a chosen point: after its Nth batch is
#: durable in the lake but before the checkpoint moves ("after-write"), or while holding
#: the events of its Nth page in memory, not yet written ("page"). Real kills, chosen
#: moments: the test is the same on every run.
_KILLED_EXPORTER = """
import os, signal, sys
from datetime import UTC, datetime, timedelta
from detector.pipeline.export import Exporter, ExportOptions

lake, group, since_ms, point, n = sys.argv[1:]
n, seen = int(n), {"writes": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after_write(batch):
    seen["writes"] += 1
    if point == "after-write" and seen["writes"] == n:
        die()

def progress(summary, window):
    if point == "page" and summary.pages == n:
        die()

options = ExportOptions(
    log_group=group, cluster="kill", latency=timedelta(minutes=1), chunk=timedelta(minutes=3),
    flush_events=400, page_limit=200, rate=0, backoff_base=0.01,
)
since = datetime.fromtimestamp(int(since_ms) / 1000, UTC) if since_ms != "-" else None
Exporter(lake, options, after_write=after_write, progress=progress).run(since=since)
"""


def _killed_export(lake: str, group: str, since_ms: int | None, point: str, n: int) -> None:
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORTER, lake, group, str(since_ms or "-"), point, str(n)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_sigkill_at_chosen_moments_then_restart_exports_every_event_once(logs, lake_dir):
    group = new_group(logs)
    end = now_ms() - 5 * 60_000
    expected = fill(logs, group, per_stream=1500, start=end - 60 * 60_000, end=end, tag="k")

    # 1) killed with its 3rd batch in the lake but the checkpoint not yet moved past it.
    _killed_export(lake_dir, group, end - 61 * 60_000, "after-write", 3)
    partial = lake_events(lake_dir).height
    assert 0 < partial < len(expected)
    killed_at = checkpoint(lake_dir)["watermark_ms"]
    assert killed_at < end
    assert (
        lake_events(lake_dir)
        .filter(pl.col("event_time") >= datetime.fromtimestamp(killed_at / 1000, UTC))
        .height
        > 0
    )

    # 2) resumed from the checkpoint, killed holding its 12th page unwritten.
    _killed_export(lake_dir, group, None, "page", 12)
    assert checkpoint(lake_dir)["watermark_ms"] >= killed_at

    # 3) resumed to the end through the CLI.
    args = ["--log-group", group, "--lake", lake_dir, "--cluster", "kill", "--latency", "1m"]
    proc = _popen_export(*args, "--chunk", "3m", "--format", "json", *FAST)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["complete"] is True
    got = lake_events(lake_dir)
    assert got.height == len(expected)
    assert got.select("audit_id", "stage").n_unique() == got.height
    assert set(got["audit_id"]) == set(expected)
    assert checkpoint(lake_dir)["watermark_ms"] > killed_at


# ----------------------------------------------------------------------------- lateness
def test_late_event_behind_the_watermark_is_caught_on_the_next_pass(logs, lake_dir):
    group = new_group(logs)
    t0 = now_ms()
    expected = fill(
        logs, group, per_stream=50, start=t0 - 10 * 60_000, end=t0 - 2 * 60_000, tag="l"
    )
    now = [t0 / 1000]  # the exporter's clock: moved by the test, not by sleeping
    exp = Exporter(
        lake_dir,
        ExportOptions(log_group=group, cluster="late", rate=0, latency=timedelta(seconds=30)),
        clock=lambda: now[0],
    )
    exp.start(since=datetime.fromtimestamp((t0 - 11 * 60_000) / 1000, UTC), follow=True)
    assert exp.run_pass() is True
    exp.flush()
    watermark = exp.watermark
    assert watermark is not None and checkpoint(lake_dir)["watermark_ms"] == watermark
    assert lake_events(lake_dir).height == len(expected)

    # Arrives now, stamped 10 s behind the watermark (inside the 30 s latency/overlap) ...
    put(
        logs,
        group,
        AUDIT_STREAMS[1],
        [(watermark - 10_000, audit_message("late-1", watermark - 10_000))],
    )
    # ... and one stamped further back than latency + overlap: out of reach by design.
    put(
        logs,
        group,
        AUDIT_STREAMS[2],
        [(watermark - 45_000, audit_message("too-late", watermark - 45_000))],
    )
    now[0] += 1.0
    exp.run_pass()
    summary = exp.finish()
    ids = set(lake_events(lake_dir)["audit_id"])
    assert "late-1" in ids
    assert "too-late" not in ids
    assert len(ids) == len(expected) + 1
    assert summary.ingest.duplicates == 0  # re-read events are skipped by eventId first
    assert checkpoint(lake_dir)["watermark_ms"] > watermark


def test_a_batch_until_within_latency_of_now_waits_for_it_and_a_future_one_is_refused(
    logs, lake_dir
):
    """``--until`` the end of an hour that closed a minute ago was cut at now minus
    ``--latency`` and said complete, so an hourly job run early scored a partial hour; a
    ``--since`` in the future was stored and every resume exported nothing (found by
    review). A batch run now waits for its ``--until`` to close and reads the rest; an
    instant in the future is a usage error before anything is read or stored."""
    from detector.pipeline.export import ExportConfigError

    group = new_group(logs)
    t0 = now_ms()
    expected = fill(logs, group, per_stream=40, start=t0 - 10 * 60_000, end=t0 - 1000, tag="u")
    now = [t0 / 1000]  # the exporter's clock: moved by the test, not by sleeping
    options = ExportOptions(log_group=group, cluster="u", rate=0, latency=timedelta(minutes=2))
    exp = Exporter(lake_dir, options, clock=lambda: now[0])
    until = datetime.fromtimestamp(t0 / 1000, UTC)
    exp.start(since=until - timedelta(minutes=11), until=until)
    assert exp.run_pass() is True  # read up to now - 2 min; the rest is still owed
    assert lake_events(lake_dir).height < len(expected)
    now[0] += 121  # the window up to --until has closed
    assert exp.run_pass() is False
    summary = exp.finish()
    assert summary.end == until and lake_events(lake_dir).height == len(expected)

    future = datetime.fromtimestamp(t0 / 1000 + 3600, UTC)
    for flag, args in [
        ("--since", {"since": future}),
        ("--until", {"since": until - timedelta(minutes=5), "until": future}),
    ]:
        other = Exporter(str(Path(lake_dir) / "other"), options, clock=lambda: now[0])
        with pytest.raises(ExportConfigError, match=f"{flag} .* is in the future"):
            other.start(**args)
        assert not (Path(lake_dir) / "other" / "_state").exists()


def test_follow_exports_new_events_and_stops_cleanly_on_sigterm(logs, lake_dir):
    group = new_group(logs)
    proc = _popen_export(
        "--log-group",
        group,
        "--lake",
        lake_dir,
        "--since",
        "5m",
        "--follow",
        "--interval",
        "1s",
        "--latency",
        "1s",
        "--flush-interval",
        "1s",
        "--format",
        "json",
        *FAST,
    )
    deadline = time.monotonic() + 60
    while (checkpoint(lake_dir) or {}).get("watermark_ms") is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t = now_ms()
    put(logs, group, AUDIT_STREAMS[0], [(t + i, audit_message(f"f-{i}", t + i)) for i in range(50)])
    # the events read, and a pass past them (--latency after them) recorded: a busy machine
    # could stop it between the two, and the watermark then rightly stood before them
    while (
        not Path(lake_dir, "events").exists()
        or lake_events(lake_dir).height < 50
        or checkpoint(lake_dir)["watermark_ms"] <= t
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "follow mode did not pick up new events"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["mode"] == "follow" and summary["stopped_by"] == "SIGTERM"
    assert summary["events_written"] == 50 and summary["passes"] >= 2
    state = checkpoint(lake_dir)
    assert state["watermark_ms"] > t
    assert state["lease_until_ms"] <= now_ms() and "released_at" in state


# ----------------------------------------------------------------------------- two exporters
def test_second_exporter_on_the_same_group_stops_with_a_clear_message(
    logs, s3_bucket, moto_endpoint
):
    group = new_group(logs)
    t = now_ms()
    fill(logs, group, per_stream=20, start=t - 9 * 60_000, end=t - 2 * 60_000, tag="c")
    lake = f"s3://{s3_bucket}/lake"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    first = _popen_export(
        "--log-group",
        group,
        "--lake",
        lake,
        "--since",
        "10m",
        "--follow",
        "--interval",
        "1s",
        "--latency",
        "1s",
        *FAST,
    )

    def state() -> dict | None:
        listing = s3.list_objects_v2(Bucket=s3_bucket, Prefix="lake/_state/cloudwatch/")
        for obj in listing.get("Contents", []):
            return json.loads(s3.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read())
        return None

    deadline = time.monotonic() + 60
    while not (state() or {}).get("owner"):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = cli("export", "--log-group", group, "--lake", lake, "--since", "10m", *FAST)
    assert second.returncode == 3
    line = one_line_error(second.stderr)
    assert "another exporter holds" in line and f"pid {first.pid}" in line

    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    # Released on exit: the next exporter starts at once.
    third = cli("export", "--log-group", group, "--lake", lake, *FAST)
    assert third.returncode == 0, third.stderr
    got = Lake(lake).scan_events().collect()
    assert got.height == 60 == got.select("audit_id", "stage").n_unique()


# ----------------------------------------------------------------------------- faults
def test_throttling_resets_and_503s_are_retried_and_reported(logs, lake_dir, moto_endpoint):
    group = new_group(logs)
    t = now_ms()
    expected = fill(logs, group, per_stream=500, start=t - 20 * 60_000, end=t - 3 * 60_000, tag="r")
    faults = ["throttle"] * 4 + ["reset", "unavailable"]
    with FaultProxy(moto_endpoint, faults=faults) as proxy:
        rc, summary, err = run_json(
            cli,
            "export",
            "--log-group",
            group,
            "--lake",
            lake_dir,
            "--since",
            "30m",
            "--page-limit",
            "400",
            *FAST,
            env={"AWS_ENDPOINT_URL": proxy.url},
        )
    assert rc == 0, err
    assert proxy.injected == {"throttle": 4, "reset": 1, "unavailable": 1}
    assert summary["retries"] == 6 and summary["throttled"] == 4
    assert summary["retry_reasons"]["ThrottlingException"] == 4
    assert summary["retry_reasons"]["ServiceUnavailableException"] == 1
    assert summary["retry_reasons"]["ConnectionClosedError"] == 1  # the reset
    assert summary["events_written"] == len(expected) == lake_events(lake_dir).height


def test_persistent_throttling_exits_3_with_the_checkpoint_intact(logs, lake_dir, moto_endpoint):
    group = new_group(logs)
    t = now_ms()
    fill(logs, group, per_stream=30, start=t - 20 * 60_000, end=t - 3 * 60_000, tag="p")
    base = ["--log-group", group, "--lake", lake_dir, *FAST]
    ok = cli("export", *base, "--since", "30m", "--latency", "5m")
    assert ok.returncode == 0, ok.stderr
    before = checkpoint(lake_dir)["watermark_ms"]
    with FaultProxy(moto_endpoint, forever="throttle") as proxy:
        failed = cli("export", *base, "--max-attempts", "3", env={"AWS_ENDPOINT_URL": proxy.url})
    assert failed.returncode == 3
    line = one_line_error(failed.stderr)
    assert "FilterLogEvents failed 3 times" in line and "ThrottlingException" in line
    after = checkpoint(lake_dir)
    assert after["watermark_ms"] == before
    assert after["lease_until_ms"] <= now_ms()  # released on the way out


def test_bad_events_are_quarantined_with_their_event_id(logs, lake_dir):
    group = new_group(logs, AUDIT_STREAMS[:1])
    t = now_ms() - 10 * 60_000
    big = audit_message("big", t + 1).replace('"level"', '"pad":"' + "x" * 300_000 + '","level"')
    items = [
        (t, audit_message("good-0", t)),
        (t + 1, big[:262_144]),  # what CloudWatch keeps of an oversize entry
        (t + 2, '{"kind":"Event","auditID":'),
        (t + 3, audit_message("good-1", t + 3)),
    ]
    put(logs, group, AUDIT_STREAMS[0], items)
    ids = {
        e["timestamp"]: e["eventId"] for e in logs.filter_log_events(logGroupName=group)["events"]
    }
    rc, summary, err = run_json(
        cli, "export", "--log-group", group, "--lake", lake_dir, "--since", "1h", *FAST
    )
    assert rc == 0, err
    assert (summary["events_written"], summary["quarantined"]) == (2, 2)
    q = Lake(lake_dir).scan_quarantine().collect()
    assert sorted(q["source_position"]) == sorted([ids[t + 1], ids[t + 2]])
    assert all(r.startswith("invalid JSON") for r in q["reason"])
    assert all(s.endswith(f"{group}#{AUDIT_STREAMS[0]}") for s in q["source"])


def test_a_text_message_does_not_stick_the_log_group_and_resume_goes_on(logs, lake_dir):
    # "x^2 + y^2" starts like a zlib header: polars tried to inflate the batch, the export
    # failed, and every resume re-read the same message and failed again.
    group = new_group(logs, AUDIT_STREAMS[:1])
    t = now_ms() - 10 * 60_000
    pretty = json.dumps(json.loads(audit_message("pretty", t + 4)), indent=2)  # raw newlines
    items = [
        (t, audit_message("good-0", t)),
        (t + 1, "x^2 + y^2"),
        (t + 2, "\ufeff" + audit_message("bom", t + 2)[:20]),
        (t + 3, audit_message("good-1", t + 3)),
        (t + 4, pretty),
    ]
    put(logs, group, AUDIT_STREAMS[0], items)
    args = ["export", "--log-group", group, "--lake", lake_dir, *FAST]
    rc, first, err = run_json(cli, *args, "--since", "1h")
    assert rc == 0, err
    assert (first["events_written"], first["quarantined"]) == (3, 2)
    rc, resumed, err = run_json(cli, *args)  # from the checkpoint: nothing stuck
    assert rc == 0, err
    assert (
        resumed["checkpoint"]["after"] == first["checkpoint"]["after"]
        or resumed["checkpoint"]["advanced"]
    )
    assert sorted(lake_events(lake_dir)["audit_id"]) == ["good-0", "good-1", "pretty"]
    reasons = Lake(lake_dir).scan_quarantine().collect()["reason"].to_list()
    assert len(reasons) == 2 and all(r.startswith("invalid JSON") for r in reasons)


def test_the_after_write_hook_sees_each_batch_and_its_payload_rides_with_the_checkpoint(
    logs, lake_dir
):
    group = new_group(logs, AUDIT_STREAMS[:1])
    t = now_ms() - 30 * 60_000
    put(logs, group, AUDIT_STREAMS[0], [(t + i, audit_message(f"h-{i}", t + i)) for i in range(30)])
    seen: list[tuple[int, int | None, dict | None]] = []

    def after_write(batch):
        # The batch is in the lake already; the checkpoint has not moved yet.
        assert set(batch.events["audit_id"]) <= set(lake_events(lake_dir)["audit_id"])
        assert (checkpoint(lake_dir) or {}).get("watermark_ms") != batch.watermark_ms
        seen.append((batch.events.height, batch.watermark_ms, batch.payload))
        return {"sent": sorted(batch.events["audit_id"])}

    opts = ExportOptions(log_group=group, cluster="hook", rate=0, latency=timedelta(seconds=30))
    since = datetime.fromtimestamp((t - 60_000) / 1000, UTC)
    Exporter(lake_dir, opts, after_write=after_write).run(since=since)
    assert seen[0][0] == 30 and seen[0][2] is None
    state = checkpoint(lake_dir)
    assert state["payload"] == {"sent": [f"h-{i}" for i in sorted(range(30), key=str)]}
    assert state["watermark_ms"] == seen[0][1]

    # The next run starts with the payload as it was at the checkpoint.
    resumed = Exporter(lake_dir, opts, after_write=lambda batch: None)
    resumed.run()
    assert resumed.payload == state["payload"]
    assert checkpoint(lake_dir)["payload"] == state["payload"]

    # A plain export of the group would move the point the consumer resumes from, and
    # what it read would reach the lake but never the consumer (watch's detection and
    # alerts): refused, in one line, before anything is read.
    before = checkpoint(lake_dir)
    plain = cli("export", "--log-group", group, "--lake", lake_dir, "--cluster", "hook")
    assert plain.returncode == 2
    assert "followed by `detect watch`" in one_line_error(plain.stderr)
    assert checkpoint(lake_dir) == before


def test_configuration_errors_are_one_line_and_exit_2(logs, lake_dir, tmp_path):
    group = new_group(logs, AUDIT_STREAMS[:1])
    no_checkpoint = cli("export", "--log-group", group, "--lake", lake_dir)
    assert no_checkpoint.returncode == 2
    assert "pass --since" in one_line_error(no_checkpoint.stderr)

    unknown = cli(
        "export", "--log-group", "/aws/eks/no-such/cluster", "--lake", lake_dir, "--since", "1h"
    )
    assert unknown.returncode == 2
    assert "log group /aws/eks/no-such/cluster not found" in one_line_error(unknown.stderr)

    no_creds = {
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    creds = cli("export", "--log-group", group, "--lake", lake_dir, "--since", "1h", env=no_creds)
    assert creds.returncode == 2
    assert "no AWS credentials" in one_line_error(creds.stderr)

    both = cli(
        "export",
        "--log-group",
        group,
        "--lake",
        lake_dir,
        "--follow",
        "--until",
        "1h",
        "--since",
        "2h",
    )
    assert both.returncode == 2 and "--until" in both.stderr
    assert not Path(lake_dir, "_state").exists() or checkpoint(lake_dir) is None

    # A group without audit streams is not an error, but it says what to check.
    quiet = new_group(logs, [])
    rc, summary, err = run_json(
        cli, "export", "--log-group", quiet, "--lake", lake_dir, "--since", "1h", *FAST
    )
    assert rc == 0, err
    assert summary["events_read"] == 0 and "audit log type enabled" in summary["warnings"][0]


def test_help_example_runs_as_written(logs, tmp_path, request):
    group = "/aws/eks/prod/cluster"  # the name in the example, shared by the whole session
    created = False
    try:
        logs.create_log_group(logGroupName=group)
        created = True
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=group, logStreamName=AUDIT_STREAMS[0])
    if created:
        request.addfinalizer(lambda: logs.delete_log_group(logGroupName=group))
    t = now_ms() - 20 * 60_000
    put(logs, group, AUDIT_STREAMS[0], [(t, audit_message(f"ex-{uuid.uuid4()}", t))])
    helptext = cli("export", "--help").stdout
    assert "Example" in helptext
    example = next(
        line.strip()
        for line in helptext.splitlines()
        if line.strip().startswith("detect export --log-group")
    )
    argv = shlex.split(example)
    proc = subprocess.run(
        [*detect_cmd(), *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"exported [1-9][\d,]* events", proc.stdout)
    assert lake_events(str(tmp_path / "lake")).height >= 1


# ----------------------------------------------------------------------------- S3 objects
def _firehose_object(group: str, stream: str, events: list[tuple[str, int, str]]) -> bytes:
    """What Firehose writes for a CloudWatch subscription: gzip members of records."""
    control = {
        "messageType": "CONTROL_MESSAGE",
        "owner": "CloudwatchLogs",
        "logGroup": "",
        "logStream": "",
        "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": events[0][1], "message": "CWL CONTROL MESSAGE"}],
    }
    data = {
        "messageType": "DATA_MESSAGE",
        "owner": "111122223333",
        "logGroup": group,
        "logStream": stream,
        "subscriptionFilters": ["to-firehose"],
        "logEvents": [{"id": i, "timestamp": ts, "message": m} for i, ts, m in events],
    }
    return gzip.compress(orjson.dumps(control)) + gzip.compress(orjson.dumps(data))


def test_export_task_and_firehose_objects_ingest_once(logs, s3_bucket, moto_endpoint, lake_dir):
    group = new_group(logs, AUDIT_STREAMS[:2], other=False)
    t = now_ms() - 30 * 60_000
    from_task = fill_streams(logs, group, AUDIT_STREAMS[:2], 400, t, tag="x")
    task = logs.create_export_task(
        logGroupName=group,
        fromTime=t - 1,
        to=t + 3_600_000,
        destination=s3_bucket,
        destinationPrefix="exports/eks",
    )
    assert task["taskId"]
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    stream = "kube-apiserver-audit-9f9f9f9f9f9f"
    firehose_ids = []
    for n in range(3):
        events = [(f"{n}-{i}", t + i, audit_message(f"fh-{n}-{i}", t + i)) for i in range(50)]
        firehose_ids += [f"fh-{n}-{i}" for i in range(50)]
        s3.put_object(
            Bucket=s3_bucket,
            Key=f"firehose/2026/11/27/21/audit-{n}.gz",
            Body=_firehose_object("/aws/eks/fh/cluster", stream, events),
        )
    inputs = [f"s3://{s3_bucket}/exports/", f"s3://{s3_bucket}/firehose/"]
    rc, first, err = run_json(cli, "ingest", *inputs, "--lake", lake_dir, "--cluster", "objs")
    assert rc == 0, err
    assert first["inputs"] == 2 + 3 and first["quarantined"] == 0
    assert first["events_written"] == len(from_task) + len(firehose_ids)
    assert set(lake_events(lake_dir)["audit_id"]) == set(from_task) | set(firehose_ids)

    rc, second, err = run_json(cli, "ingest", *inputs, "--lake", lake_dir, "--cluster", "objs")
    assert rc == 0, err
    assert (second["inputs"], second["skipped_inputs"], second["lines"]) == (0, 5, 0)

    s3.put_object(
        Bucket=s3_bucket,
        Key="firehose/2026/11/27/22/audit-9.gz",
        Body=_firehose_object(
            "/aws/eks/fh/cluster", stream, [("z", t, audit_message("fh-new", t))]
        ),
    )
    rc, third, err = run_json(cli, "ingest", *inputs, "--lake", lake_dir, "--cluster", "objs")
    assert rc == 0, err
    assert (third["inputs"], third["skipped_inputs"], third["events_written"]) == (1, 5, 1)


def fill_streams(logs, group: str, streams: list[str], n: int, t: int, *, tag: str) -> set[str]:
    ids = set()
    for k, stream in enumerate(streams):
        items = [(t + i * 10, audit_message(f"{tag}-{k}-{i}", t + i * 10)) for i in range(n)]
        ids |= {f"{tag}-{k}-{i}" for i in range(n)}
        put(logs, group, stream, items)
    return ids


def test_real_subscription_filter_firehose_delivery_ingests(
    logs, s3_bucket, moto_endpoint, lake_dir
):
    from detector.pipeline.ingest import ingest_paths

    firehose = boto3.client("firehose", endpoint_url=moto_endpoint)
    name = f"audit-{uuid.uuid4().hex[:8]}"
    arn = firehose.create_delivery_stream(
        DeliveryStreamName=name,
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": f"arn:aws:s3:::{s3_bucket}",
            "Prefix": "subscription/",
        },
    )["DeliveryStreamARN"]
    group = new_group(logs, AUDIT_STREAMS[:1])
    logs.put_subscription_filter(
        logGroupName=group,
        filterName="to-firehose",
        filterPattern="",
        destinationArn=arn,
        roleArn="arn:aws:iam::123456789012:role/cwl-to-firehose",
    )
    ids = fill_streams(logs, group, AUDIT_STREAMS[:1], 20, now_ms() - 60_000, tag="sub")
    summary = ingest_paths([f"s3://{s3_bucket}/subscription/"], lake_dir)
    assert summary.quarantined == 0
    assert set(lake_events(lake_dir)["audit_id"]) == ids


def test_a_value_aws_can_never_take_is_a_usage_error_in_one_line():
    """botocore checks parameters before sending them (a group name over 512 characters):
    that is the user's input, exit 2, said in one line, not a two-line "AWS:" failure."""
    from botocore.exceptions import ParamValidationError

    from detector.pipeline.export import ExportConfigError, _translate

    report = "Invalid length for parameter logGroupName, value: 600, valid max length: 512"
    err = _translate(
        ParamValidationError(report=report), log_group="g", region="us-east-1", starting=True
    )
    assert isinstance(err, ExportConfigError) and err.exit_code == 2
    assert str(err) == f"AWS refuses a value given: {report}"


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("lease_until_ms", "soon", "lease_until_ms is not a number"),
        ("owner", "x", "owner is not an object"),
        ("islands", [[1, "x"]], "islands is not a list of [start, end] numbers"),
        ("payload", [1], "payload is not an object"),
    ],
)
def test_a_checkpoint_field_of_the_wrong_type_is_named(field, value, problem):
    from detector.lake.state import StateError
    from detector.pipeline.export import _check_checkpoint

    with pytest.raises(StateError, match="move it aside") as err:
        _check_checkpoint({"watermark_ms": 1, field: value}, "s3://b/lake/_state/x.json")
    assert problem in str(err.value) and "x.json" in str(err.value)


def test_a_checkpoint_with_a_field_of_the_wrong_type_is_one_line_naming_it(logs, lake_dir):
    """Valid JSON with a mistyped field stopped the run with a bare ValueError or
    AttributeError, naming no file."""
    group = new_group(logs, AUDIT_STREAMS[:1])
    t = now_ms() - 30 * 60_000
    put(logs, group, AUDIT_STREAMS[0], [(t, audit_message("a", t))])
    assert cli("export", "--log-group", group, "--lake", lake_dir, "--since", "1h").returncode == 0
    (path,) = Path(lake_dir, "_state", "cloudwatch").rglob("*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), "lease_until_ms": "soon"}))
    again = cli("export", "--log-group", group, "--lake", lake_dir)
    assert again.returncode == 3
    line = one_line_error(again.stderr)
    assert "lease_until_ms is not a number" in line and path.name in line


def test_sigterm_while_cloudwatch_is_retried_at_start_is_a_stop_not_a_failure(tmp_path):
    """CloudWatch unreachable when a batch export starts: its calls are retried with a
    backoff. A SIGTERM then (a deploy, a cron timeout) is a stop like any other: exit 143
    with the summary, the checkpoint unchanged; it was exit 3, "abandoned on shutdown", an
    error a scheduler would page on."""
    from conftest import free_port

    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }
    args = ["--log-level", "info", "export", "--log-group", "/aws/eks/c/cluster"]
    args += ["--lake", str(tmp_path / "lake"), "--since", "5m", "--format", "json"]
    proc = subprocess.Popen(
        [*detect_cmd(), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # wait until a call is being retried
        if "retrying in" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    summary = json.loads(out)
    assert summary["stopped_by"] == "SIGTERM" and summary["events_written"] == 0
    assert "error:" not in err
