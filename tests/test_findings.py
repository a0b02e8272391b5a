"""Findings in the lake: a scored range is replaced, never duplicated; list and show."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from alerts_data import T0, W, frames
from alerts_data import finding as alert_finding

from detector.lake import findings as store
from detector.lake.events import Lake


def finding(
    principal: str,
    start: datetime,
    *,
    severity: str = "low",
    score: float = 0.7,
    detector: str = "model:iforest",
    created: datetime = T0,
) -> dict:
    """A model finding as the scorer writes it (the alerts tests' row, with a reason)."""
    return alert_finding(
        principal,
        start,
        severity=severity,
        detector=detector,
        score=score,
        title=f"Unusual activity by {principal}",
        reasons=["made 9 requests; usual for this principal: 1; 99th percentile: 4"],
        top_features=[{"name": "requests", "value": 9.0, "baseline": 1.0, "population": 4.0}],
        audit_ids=[f"a-{principal}-{start:%H%M}"],
        created_at=created,
    )


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def files(lake: Lake, table: str = "findings") -> list[str]:
    return [
        p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[1]
        for p in lake.loc.glob(table, "date=*", "*.parquet")
    ]


def test_rescoring_the_same_range_replaces_it(lake):
    start, end = T0, T0 + timedelta(hours=1)
    f, e = frames([finding("alice", T0), finding("bob", T0 + W, severity="high", score=0.9)])
    store.write_range(lake, "model", start, end, f, e)
    f2, e2 = frames([finding("alice", T0, created=T0 + timedelta(hours=1))])
    store.write_range(lake, "model", start, end, f2, e2)
    listed = store.list_findings(lake, since=T0 - timedelta(days=1))
    assert listed["principal"].to_list() == ["alice"]
    assert files(lake) == ["date=2026-11-27/model-20261127T100000Z-20261127T110000Z.parquet"]
    assert files(lake, "findings_events") == files(lake)


def test_a_range_with_no_findings_left_removes_the_old_ones(lake):
    f, e = frames([finding("alice", T0)])
    store.write_range(lake, "model", T0, T0 + timedelta(hours=1), f, e)
    empty_f, empty_e = frames([])
    summary = store.write_range(lake, "model", T0, T0 + timedelta(hours=1), empty_f, empty_e)
    assert summary.removed_findings == 1
    assert store.list_findings(lake, since=T0 - timedelta(days=1)).is_empty()
    assert files(lake) == [] and files(lake, "findings_events") == []


def test_an_overlapping_range_takes_over_only_its_windows(lake):
    first, e1 = frames([finding("alice", T0), finding("bob", T0 + timedelta(minutes=40))])
    store.write_range(lake, "model", T0, T0 + timedelta(hours=1), first, e1)
    # the next hourly run starts half an hour later and finds carol instead of bob
    second, e2 = frames([finding("carol", T0 + timedelta(minutes=50))])
    store.write_range(
        lake, "model", T0 + timedelta(minutes=30), T0 + timedelta(minutes=90), second, e2
    )
    listed = store.list_findings(lake, since=T0 - timedelta(days=1))
    assert sorted(listed["principal"].to_list()) == ["alice", "carol"]
    assert len(files(lake)) == 2
    ev = pl.read_parquet(lake.loc.glob("findings_events", "*", "*.parquet")[0])
    assert set(ev["finding_id"]) <= set(listed["finding_id"])


def test_ranges_across_midnight_file_rows_by_window_date(lake):
    late = T0.replace(hour=23, minute=50)
    f, e = frames([finding("alice", late), finding("bob", late + W)])
    store.write_range(lake, "model", late, late + 2 * W, f, e)
    assert sorted(x.split("/")[0] for x in files(lake)) == ["date=2026-11-27", "date=2026-11-28"]
    store.write_range(lake, "model", late, late + 2 * W, *frames([]))
    assert files(lake) == []


def test_model_and_rule_findings_are_replaced_independently(lake):
    m, me = frames([finding("alice", T0)])
    r, re_ = frames([finding("alice", T0, detector="rule:pod-exec", severity="medium")])
    store.write_range(lake, "model", T0, T0 + W, m, me)
    store.write_range(lake, "rules", T0, T0 + W, r, re_)
    store.write_range(lake, "rules", T0, T0 + W, *frames([]))  # --rules-only found nothing
    listed = store.list_findings(lake, since=T0 - timedelta(days=1))
    assert listed["detector"].to_list() == ["model:iforest"]


def test_scoring_one_cluster_keeps_the_other_clusters_findings(lake):
    """One scheduled job per cluster on a shared lake (DETECT_CLUSTER): scoring cluster b
    over an hour erased cluster a's findings of that hour. A run over every cluster still
    replaces them all."""

    def of(cluster: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        return frames([alert_finding("alice", T0, cluster=cluster, detector="rule:pod-exec")])

    store.write_range(lake, "rules", T0, T0 + W, *of("a"), cluster="a")
    store.write_range(lake, "rules", T0, T0 + W, *of("b"), cluster="b")
    store.write_range(lake, "rules", T0, T0 + W, *of("a"), cluster="a")  # a's hourly run again
    listed = store.list_findings(lake, since=T0 - timedelta(days=1))
    assert sorted(listed["cluster"].to_list()) == ["a", "b"]
    store.write_range(lake, "rules", T0, T0 + W, *frames([]))  # every cluster: nothing found
    assert store.list_findings(lake, since=T0 - timedelta(days=1)).is_empty()


def test_a_crash_between_write_and_trim_leaves_duplicates_readers_drop(lake, monkeypatch):
    old, oe = frames([finding("alice", T0)])
    store.write_range(lake, "model", T0, T0 + timedelta(hours=1), old, oe)
    new, ne = frames([finding("alice", T0, score=0.8, created=T0 + timedelta(hours=2))])

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.Table, "read", crash)  # the trim step reads the old file first
    with pytest.raises(KeyboardInterrupt):
        store.write_range(
            lake, "model", T0 + timedelta(minutes=0), T0 + timedelta(minutes=30), new, ne
        )
    monkeypatch.undo()
    assert len(files(lake)) == 2  # both files hold alice's window
    listed = store.list_findings(lake, since=T0 - timedelta(days=1))
    assert listed.height == 1 and listed["score"][0] == 0.8  # newest wins
    _, events = store.get_finding(lake, listed["finding_id"][0])
    assert events.height == 1


def test_list_filters_and_order(lake):
    f, e = frames(
        [
            finding("arn:aws:iam::1:role/dev/alice", T0, severity="low", score=0.7),
            finding("arn:aws:iam::1:role/dev/bob", T0, severity="high", score=0.9),
            finding("system:serviceaccount:shop:cart", T0 + W, severity="medium", score=0.8),
            finding("arn:aws:iam::1:role/dev/alice", T0 - timedelta(days=3), severity="critical"),
        ]
    )
    store.write_range(lake, "model", T0 - timedelta(days=3), T0 + timedelta(hours=1), f, e)
    everything = store.list_findings(lake)
    assert everything["severity"].to_list() == ["critical", "high", "medium", "low"]
    recent = store.list_findings(lake, since=T0 - timedelta(hours=1))
    assert recent.height == 3
    assert store.list_findings(lake, since=T0 - timedelta(hours=1), principal="alice").height == 1
    assert store.list_findings(lake, min_severity="medium")["severity"].to_list() == [
        "critical",
        "high",
        "medium",
    ]
    with pytest.raises(ValueError, match="severity"):
        store.list_findings(lake, min_severity="urgent")


def test_show_returns_the_finding_and_its_events(lake):
    f, e = frames([finding("alice", T0), finding("bob", T0)])
    store.write_range(lake, "model", T0, T0 + W, f, e)
    fid = f.filter(pl.col("principal") == "bob")["finding_id"][0]
    row, events = store.get_finding(lake, fid)
    assert row["principal"] == "bob" and row["reasons"]
    assert events["audit_id"].to_list() == ["a-bob-1000"]
    with pytest.raises(store.FindingNotFound):
        store.get_finding(lake, "0" * 20)


def test_range_file_names_round_trip():
    name = store.range_file("model", T0, T0 + timedelta(hours=1))
    scoped = store.range_file("model", T0, T0 + timedelta(hours=1), cluster="eu/prod 1")
    assert store.parse_range_file(scoped) == ("model", T0, T0 + timedelta(hours=1))
    assert name == "model-20261127T100000Z-20261127T110000Z.parquet"
    assert store.parse_range_file(name) == ("model", T0, T0 + timedelta(hours=1))
    assert store.parse_range_file("part-0001.parquet") is None
