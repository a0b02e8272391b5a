"""Checkpoint documents: compare-and-swap locally and on S3 (moto), leases and takeovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from detector.lake.events import Lake
from detector.lake.state import (
    CheckpointBusy,
    CheckpointConflict,
    Lease,
    Owner,
    StateError,
    StateObject,
    holder_is_alive,
)


@pytest.fixture(autouse=True)
def _conftest_region(monkeypatch):
    """The region conftest sets, even if an earlier in-process CLI run changed it (the root
    callback exports --region / the config file's region into the environment)."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(params=["local", "s3"])
def lake(request, tmp_path) -> Lake:
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    bucket = request.getfixturevalue("s3_bucket")
    return Lake(f"s3://{bucket}/lake")


def test_compare_and_swap_lets_exactly_one_of_two_writers_win(lake):
    doc = StateObject(lake, "cloudwatch", "g.json")
    assert doc.read().data is None
    etag = doc.write({"watermark_ms": 1}, etag=None)
    with pytest.raises(CheckpointConflict):
        doc.write({"watermark_ms": 9}, etag=None)  # create-only: it exists now

    a, b = doc.read(), StateObject(lake, "cloudwatch", "g.json").read()
    assert a.etag == b.etag == etag
    doc.write({"watermark_ms": 2}, etag=a.etag)
    with pytest.raises(CheckpointConflict):
        StateObject(lake, "cloudwatch", "g.json").write({"watermark_ms": 3}, etag=b.etag)
    assert doc.read().data == {"watermark_ms": 2}


def test_s3_write_whose_answer_was_lost_is_not_a_conflict(s3_bucket):
    """A retried conditional PUT finds its own first attempt in place: that is success."""
    doc = StateObject(Lake(f"s3://{s3_bucket}/lake"), "x.json")
    first = doc.write({"seq": 1, "run": "r1"}, etag=None)
    same = doc.write({"seq": 1, "run": "r1"}, etag=None)  # as a retry would, stale condition
    assert same == first
    with pytest.raises(CheckpointConflict):
        doc.write({"seq": 2, "run": "r1"}, etag=None)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    path = tmp_path / "lake" / "_state" / "c.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(StateError, match=r"not valid JSON.*move it aside"):
        StateObject(lake, "c.json").read()


def test_second_owner_is_refused_until_the_first_releases(lake):
    doc = StateObject(lake, "cloudwatch", "g.json")
    first = Lease(doc, owner=Owner(host="pod-a", pid=7, run_id="a"), seconds=60)
    assert first.acquire(fields={"log_group": "/aws/eks/p/cluster"}) is None
    first.update(watermark_ms=123)

    second = Lease(
        StateObject(lake, "cloudwatch", "g.json"),
        owner=Owner(host="pod-b", pid=7, run_id="b"),
        seconds=60,
    )
    with pytest.raises(CheckpointBusy, match=r"another exporter holds .* pid 7 on pod-a"):
        second.acquire()

    first.release()
    previous = second.acquire()
    assert previous["watermark_ms"] == 123 and previous["log_group"] == "/aws/eks/p/cluster"
    # The first one, back from a long pause, must not advance it any more.
    first.held = True
    with pytest.raises(CheckpointConflict, match="changed by another exporter"):
        first.update(watermark_ms=999)
    assert second.peek()["watermark_ms"] == 123


def test_expired_lease_is_taken_over(tmp_path):
    now = [1_000.0]
    lake = Lake(str(tmp_path / "lake"))
    stale = Lease(
        StateObject(lake, "g.json"),
        owner=Owner(host="gone", run_id="old"),
        seconds=30,
        clock=lambda: now[0],
    )
    stale.acquire()
    fresh = Lease(
        StateObject(lake, "g.json"),
        owner=Owner(host="new", run_id="new"),
        seconds=30,
        clock=lambda: now[0],
    )
    with pytest.raises(CheckpointBusy):
        fresh.acquire()
    now[0] += 31
    fresh.acquire()
    assert fresh.peek()["owner"]["run_id"] == "new"


def test_dead_holder_on_this_host_is_replaced_at_once(tmp_path):
    """After a SIGKILL the restarted exporter must not wait for the lease to run out."""
    lake = Lake(str(tmp_path / "lake"))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)
    dead = Owner(pid=dead_pid, run_id="dead")
    Lease(StateObject(lake, "g.json"), owner=dead, seconds=600).acquire()
    me = Owner()
    assert not holder_is_alive(dead.to_dict(), me)
    Lease(StateObject(lake, "g.json"), owner=me, seconds=600).acquire()

    # A restarted container has the same PID (often 1) but a new run id: also gone.
    restarted = Owner(pid=os.getpid(), run_id="previous-incarnation")
    assert not holder_is_alive(restarted.to_dict(), me)
    # A live process elsewhere, or another live PID here, is presumed alive.
    assert holder_is_alive(Owner(host="elsewhere", pid=dead_pid).to_dict(), me)
    assert holder_is_alive(Owner(pid=os.getppid()).to_dict(), me)


def test_lease_renewal_and_release_are_recorded(tmp_path):
    now = [0.0]
    lake = Lake(str(tmp_path / "lake"))
    lease = Lease(StateObject(lake, "g.json"), seconds=30, clock=lambda: now[0])
    lease.acquire()
    assert not lease.renew_if_due()
    now[0] = 11
    assert lease.renew_if_due()
    data = json.loads((tmp_path / "lake" / "_state" / "g.json").read_text())
    assert data["lease_until_ms"] == 41_000 and data["seq"] == 2
    lease.release()
    data = json.loads((tmp_path / "lake" / "_state" / "g.json").read_text())
    assert data["lease_until_ms"] == 11_000 and "released_at" in data
    assert not list((tmp_path / "lake" / "_state").glob(".tmp-*"))


def test_a_delivery_that_outlasts_its_lease_keeps_the_lock(tmp_path, monkeypatch):
    """The delivery lease was taken once and never renewed: a delivery to slow sinks (30 s
    deadlines, four attempts, one alert at a time) outlasted its 300 s, and another run
    took the lock and sent the same alerts again. Here the lease lasts 1.2 s and the
    delivery goes on past its end. A lease runs on the wall clock and its renewer is a
    thread, so this test waits for the clock to pass that end."""
    from detector.lake import lock

    monkeypatch.setattr(lock, "DELIVERY_LEASE_SECONDS", 1.2)
    lake = Lake(str(tmp_path / "lake"))
    parts = lock.DELIVERY_LOCK_PARTS
    other = Lease(StateObject(lake, *parts), owner=Owner(host="elsewhere"), seconds=1.2)
    with lock.delivery_lock(lake, wait=0) as held:
        assert held
        taken_until = other.peek()["lease_until_ms"] / 1000
        threading.Event().wait(max(0.0, taken_until - time.time()) + 0.5)
        assert other.peek()["lease_until_ms"] / 1000 > time.time()  # renewed
        with pytest.raises(CheckpointBusy):
            other.acquire()
    other.acquire()  # given up when the delivery ends
