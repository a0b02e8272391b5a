"""The lake's file-level guarantees (detector/lake/table.py): names stay inside the lake, no
globs, temporary files out of readers' sight, bad files skipped and listed, one key per
event across clusters, S3 manifests recorded only after everything is flushed, compaction.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import polars as pl
import pytest

from detector.events.normalize import events_from_dicts
from detector.lake import table as T
from detector.lake.events import Lake
from detector.lake.maintenance import check_lake, compact
from detector.pipeline import ingest as ingest_mod
from detector.pipeline.ingest import ingest_paths


def event(i: int, *, minute: int | None = None, hour: int = 10) -> dict:
    m = i % 60 if minute is None else minute
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": f"00000000-0000-0000-0000-{i:012d}",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/app/pods",
        "verb": "list",
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "sourceIPs": ["203.0.113.7"],
        "objectRef": {"resource": "pods", "namespace": "app", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": f"2026-11-27T{hour:02d}:{m:02d}:00.100000Z",
        "stageTimestamp": f"2026-11-27T{hour:02d}:{m:02d}:00.200000Z",
    }


def audit_file(path: Path, ids: range, **kw) -> Path:
    path.write_bytes(b"".join(orjson.dumps(event(i, **kw)) + b"\n" for i in ids))
    return path


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def lake_rows(lake: str) -> int:
    return Lake(lake).scan_events().select(pl.len()).collect().item()


# ----------------------------------------------------------------------------- names
def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``detect ARGS`` in-process (start-up costs seconds; the code path is the same)."""
    from typer.testing import CliRunner

    from detector.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize(
    "cluster", ["../../..", "..", "a/b", "prod[1]", "*", "prod?", ".hidden", "x" * 300]
)
def test_unsafe_cluster_names_are_refused_before_anything_is_written(
    tmp_path, monkeypatch, cluster
):
    src = audit_file(tmp_path / "audit.log", range(10))
    work = tmp_path / "deep" / "er" / "still"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = files_under(tmp_path)
    proc = cli("ingest", str(src), "--lake", "lake", "--cluster", cluster)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "cluster name" in lines[0] and "allowed" in lines[0]
    assert files_under(tmp_path) == before  # nothing written, inside the lake or out of it


def test_a_writer_given_an_unsafe_cluster_writes_nothing(tmp_path):
    events = ingest_mod.read_events([str(audit_file(tmp_path / "a.log", range(4)))])[0]
    mixed = events.with_columns(
        pl.when(pl.col("audit_id").str.ends_with("3"))
        .then(pl.lit("../x"))
        .otherwise(pl.lit("prod"))
        .alias("cluster")
    )
    with pytest.raises(T.UnsafeName):
        Lake(str(tmp_path / "lake")).write_events(mixed)
    assert files_under(tmp_path) == [tmp_path / "a.log"]


def test_a_lake_path_with_glob_characters_means_itself(tmp_path):
    lake = str(tmp_path / "la[k]e*?{x}")
    decoy = tmp_path / "lake"  # what "la[k]e" would match as a pattern
    src = audit_file(tmp_path / "audit.log", range(10))
    for _ in range(3):
        ingest_paths([str(src)], lake, cluster="prod")
    ingest_paths([str(src)], str(decoy), cluster="prod")
    assert lake_rows(lake) == 10
    assert Lake(lake).partitions() == [("prod", "2026-11-27", "10")]
    assert check_lake(Lake(lake)).problems == []


def test_names_are_validated_not_encoded():
    assert T.safe_part("prod-eu.west_1") == "prod-eu.west_1"
    for bad in ("../x", "a b", "é", "x" * 101, "a\x00", "prod\n"):  # \n: re.match's $
        with pytest.raises(T.UnsafeName):
            T.safe_part(bad)


# ----------------------------------------------------------------------------- temp files
_KILL_DURING_WRITE = """
import os, signal, sys
import polars as pl
from detector.lake.events import Lake
from detector.pipeline.ingest import read_events
events, _ = read_events([sys.argv[2]], cluster="prod")
lake = Lake(sys.argv[1])
lake.write_events(events.head(5))
real_replace = os.replace
def die(src, dst):
    if dst.endswith(".parquet"):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between writing and renaming
    real_replace(src, dst)
os.replace = die
lake.write_events(events.tail(5))
"""


def test_a_writer_killed_mid_write_leaves_nothing_readers_glob(tmp_path):
    lake = tmp_path / "lake"
    src = audit_file(tmp_path / "audit.log", range(10))
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_DURING_WRITE, str(lake), str(src)], check=False
    )
    assert proc.returncode == -9
    assert all(p.suffix == ".parquet" for p in files_under(lake / "events"))
    leftovers = files_under(lake / T.TMP_DIR)
    assert len(leftovers) == 1
    # What a user of the lake does outside this tool works, and sees the first write only.
    assert pl.scan_parquet(f"{lake}/events/").collect().height == 5
    assert lake_rows(str(lake)) == 5
    # The killed writer still "holds" the writer lock: it is taken over at once (same host,
    # its PID is gone), so the next run neither waits for the lease to run out nor fails.
    ingest_paths([str(src)], str(lake), cluster="prod")
    assert lake_rows(str(lake)) == 10
    assert compact(Lake(str(lake)), grace=0).tmp_removed == len(leftovers)
    assert not (lake / T.TMP_DIR).exists() or not any((lake / T.TMP_DIR).iterdir())


# ----------------------------------------------------------------------------- bad files
def _bad_files(lake: Path) -> list[Path]:
    part = lake / "events" / "cluster=prod" / "date=2026-11-27" / "hour=10"
    good = next(part.glob("*.parquet"))
    wide = pl.read_parquet(good).with_columns(pl.col("response_code").cast(pl.Int64))
    wide = wide.with_columns(pl.col("audit_id") + "-wide")
    wide_path = part / "part-20990101T000000-wide00000000.parquet"
    wide.write_parquet(wide_path)
    corrupt = part / "part-20990101T000000-corrupt00000.parquet"
    corrupt.write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    # a column every events file has had, missing: read as nulls, its rows counted under
    # no time at all, silently (found by review)
    timeless = part / "part-20990101T000000-timeless0000.parquet"
    pl.read_parquet(good).with_columns(pl.col("audit_id") + "-t").drop("event_time").write_parquet(
        timeless
    )
    return [wide_path, corrupt, timeless]


def test_a_bad_lake_file_is_skipped_with_a_warning_and_listed_by_lake_check(tmp_path, caplog):
    lake = tmp_path / "lake"
    src = audit_file(tmp_path / "audit.log", range(10))
    ingest_paths([str(src)], str(lake), cluster="prod")
    bad = _bad_files(lake)

    with caplog.at_level("WARNING"):
        assert lake_rows(str(lake)) == 10  # the good file is read, the bad ones skipped
    assert sum("skipping" in r.getMessage() for r in caplog.records) == 3
    caplog.clear()
    with caplog.at_level("WARNING"):  # another Lake object (a scoring run uses several)
        assert lake_rows(str(lake)) == 10
    assert not any("skipping" in r.getMessage() for r in caplog.records)  # said once
    more = audit_file(tmp_path / "more.log", range(10, 20))
    summary = ingest_paths([str(src), str(more)], str(lake), cluster="prod")
    assert (summary.events_written, summary.duplicates) == (10, 10)
    assert lake_rows(str(lake)) == 20

    proc = cli("lake", "check", "--lake", str(lake), "--format", "json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert sorted(Path(p["path"]).name for p in report["problems"]) == sorted(b.name for b in bad)
    kinds = {Path(p["path"]).name: p["problem"] for p in report["problems"]}
    assert "response_code is Int64" in kinds[bad[0].name]
    assert kinds[bad[1].name].startswith("unreadable")
    assert kinds[bad[2].name] == "missing column(s): event_time"
    stray = lake / "events" / "cluster=prod[1]"  # as an older version could write it
    stray.mkdir()
    # folders no reader takes for a partition, listed too (they were not; review)
    odd = [lake / "events" / "cluster=prod" / n for n in ("date=garbage", "date=2026-02-30")]
    odd.append(lake / "events" / "cluster=prod" / "date=2026-11-27" / "hour=25")
    for folder in odd:
        folder.mkdir()
    report = check_lake(Lake(str(lake)))
    assert [p.problem for p in report.problems if "prod[1]" in p.path] == [
        "not a partition of this table (ignored)"
    ]
    listed = {Path(p.path).name for p in report.problems if p.problem.startswith("not a part")}
    assert {f.name for f in odd} <= listed
    stray.rmdir()
    for folder in odd:
        folder.rmdir()
    for b in bad:
        b.unlink()
    assert cli("lake", "check", "--lake", str(lake)).returncode == 0


# ----------------------------------------------------------------------------- clusters
def test_events_stored_under_another_cluster_are_skipped_and_counted(tmp_path, caplog):
    lake = str(tmp_path / "lake")
    src = audit_file(tmp_path / "audit.log", range(20))
    ingest_paths([str(src)], lake, cluster="prod")
    more = audit_file(tmp_path / "more.log", range(15, 25))
    with caplog.at_level("WARNING"):
        summary = ingest_paths([str(src), str(more)], lake, cluster="default")
    assert summary.events_written == 5 and summary.other_cluster == 20
    assert summary.to_dict()["other_cluster"] == 20
    assert any("under cluster prod" in r.getMessage() for r in caplog.records)
    got = Lake(lake).scan_events().collect()
    assert got.height == 25 and got["audit_id"].n_unique() == 25


def test_a_reused_audit_id_does_not_make_an_attackers_next_requests_copies(tmp_path):
    """The API server takes the audit ID from the client's Audit-ID header: a caller gave
    a harmless get's ID to an exec and a cluster-admin binding a minute later, in one run
    or the next, and both were dropped as copies (found by review). Real copies, the same
    stage time to the microsecond, are still written once."""
    harmless = event(1, minute=1)
    exec_ = {
        **event(1, minute=2),
        "verb": "create",
        "requestURI": "/api/v1/namespaces/kube-system/pods/aws-node-x/exec?command=sh",
        "objectRef": {"resource": "pods", "namespace": "kube-system", "name": "aws-node-x",
                      "subresource": "exec", "apiVersion": "v1"},
    }  # fmt: skip
    binding = {**event(1, minute=3), "verb": "create"}
    first = tmp_path / "a.log"
    first.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in (harmless, exec_, harmless)))
    summary = ingest_paths([str(first)], str(tmp_path / "lake"), cluster="prod")
    assert (summary.events_written, summary.duplicates) == (2, 1)
    later = tmp_path / "b.log"
    later.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in (binding, exec_)))
    again = ingest_paths([str(later)], str(tmp_path / "lake"), cluster="prod")
    assert (again.events_written, again.duplicates) == (1, 1)
    stored = Lake(str(tmp_path / "lake")).scan_events().collect()
    assert sorted(stored["request_uri"].str.contains("exec").to_list()) == [False, False, True]
    # The finding on the exec shows the exec, not the get whose ID it reused.
    lake = str(tmp_path / "lake")
    run = cli("score", "--lake", lake, "--since", "2026-11-27T10:00:00Z", "--until",
              "2026-11-27T11:00:00Z", "--no-model", "--format", "json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    (found,) = [
        f
        for f in json.loads(run.stdout)["findings"]
        if f["detector"] == "rule:exec-kube-system-pod"
    ]
    shown = cli("findings", "show", found["finding_id"], "--lake", lake, "--format", "json")
    uris = [e["request_uri"] for e in json.loads(shown.stdout)["events"]]
    assert any("exec?command=sh" in u for u in uris), uris


def test_an_event_stored_under_its_whole_long_id_is_a_copy_when_ingested_again(tmp_path):
    """Ids over 128 bytes are now stored bounded (head and digest). A lake written before
    holds them whole: the same event ingested again after the upgrade (a file read again,
    CloudWatch's overlap) was a second row under its new key (found by review)."""
    long_id = {**event(1, minute=1), "auditID": "x" * 300}
    path = tmp_path / "a.log"
    path.write_bytes(orjson.dumps(long_id) + b"\n" + orjson.dumps(event(2, minute=2)) + b"\n")
    lake = Lake(str(tmp_path / "lake"))
    before = events_from_dicts([long_id], cluster="prod")
    lake.write_events(before.with_columns(pl.lit("x" * 300).alias("audit_id")))  # as stored then
    summary = ingest_paths([str(path)], str(tmp_path / "lake"), cluster="prod")
    assert (summary.events_written, summary.duplicates) == (1, 1)
    assert lake.scan_events().collect().height == 2


def test_dedup_keys_held_in_memory_are_bounded_and_dropping_them_loses_no_dedup(
    tmp_path, monkeypatch
):
    """Memory of an ingest must not grow with its input; keys pushed out are read again."""
    monkeypatch.setattr("detector.lake.events.KEY_CACHE_ROWS", 25)
    lake = str(tmp_path / "lake")
    # Three hours, written in batches of 10 (flush_rows), back and forth between hours.
    src = tmp_path / "audit.log"
    src.write_bytes(
        b"".join(orjson.dumps(event(i, hour=10 + (i // 10) % 3)) + b"\n" for i in range(90))
    )
    held = []
    original = Lake.write_events

    def spy(self, df):
        stats = original(self, df)
        held.append(self.keys.rows)
        return stats

    monkeypatch.setattr(Lake, "write_events", spy)
    first = ingest_paths([str(src)], lake, cluster="prod", flush_rows=10)
    again = ingest_paths([str(src)], lake, cluster="prod", flush_rows=10)
    assert first.events_written == 90
    assert again.events_written == 0 and again.duplicates == 90
    assert max(held) <= 25 + 10  # the bound, plus the one file just written
    assert lake_rows(lake) == 90


def test_each_row_lands_in_its_own_cluster_and_hour_in_order_or_not(tmp_path):
    """A batch is cut into (cluster, hour) partitions: runs of rows when it is in time
    order (the usual case), a grouping when hours and clusters interleave (so a request
    repeated in two runs of one hour is still written once). Either way every row is in
    the file of its cluster and hour, once, and a second write adds none."""
    from detector.events.normalize import events_from_dicts

    hours = [10, 10, 11, 12, 12]  # in order
    mixed = [10, 12, 10, 11, 12, 11, 10]  # interleaved
    batches = [
        events_from_dicts([event(i, hour=h) for i, h in enumerate(hours)]),
        pl.concat(
            [
                events_from_dicts([event(100 + i, hour=h)]).with_columns(
                    pl.lit("east" if i % 2 else "west").alias("cluster")
                )
                for i, h in enumerate(mixed)
            ]
        ),
    ]
    batches[1] = pl.concat([batches[1], batches[1].head(1)])  # a repeat, in another run
    lake = Lake(str(tmp_path / "lake"))
    for batch in batches:
        assert lake.write_events(batch).written == batch.unique(["audit_id", "stage"]).height
        assert lake.write_events(batch).written == 0
    for part in lake.partitions():
        rows = lake.scan_partitions([part]).collect()
        cluster, date, hour = part
        assert (rows["cluster"] == cluster).all()
        assert rows["event_time"].dt.strftime("%Y-%m-%d %H").unique().to_list() == [
            f"{date} {hour}"
        ]
    stored = lake.scan_events().collect()
    expected = pl.concat(batches, how="vertical").unique(["audit_id", "stage"])
    assert stored.height == expected.height
    assert sorted(zip(stored["cluster"], stored["audit_id"], strict=True)) == sorted(
        zip(expected["cluster"], expected["audit_id"], strict=True)
    )


def test_a_batch_keeps_the_first_row_of_a_repeated_request_and_every_row_its_lists(tmp_path):
    """Within a batch the first row of each (audit_id, stage) wins, and the list columns
    (groups, source IPs) of rows cut into hour files are each row's own (the writer
    copies them out of the batch first: see table.parquet_bytes)."""
    from detector.events.normalize import events_from_dicts

    raw = []
    for i in range(12):
        e = event(i, hour=10 + i % 3)
        e["user"]["groups"] = [f"team-{i}", "system:authenticated"][: 1 + i % 2]
        e["sourceIPs"] = [f"203.0.113.{i}"] * (1 + i % 3)
        raw.append(e)
    repeat = {**event(4, hour=11), "verb": "delete"}  # request 4 again, later in the batch
    batch = events_from_dicts([*raw, repeat])
    lake = Lake(str(tmp_path / "lake"))
    assert lake.write_events(batch).written == 12
    stored = lake.scan_events().collect().sort("audit_id")
    first = batch.head(12).sort("audit_id")
    assert stored["verb"].to_list() == ["list"] * 12
    assert stored["user_groups"].to_list() == first["user_groups"].to_list()
    assert stored["source_ips"].to_list() == first["source_ips"].to_list()
    assert stored["user_groups"][5].to_list() == ["team-5", "system:authenticated"]


# ----------------------------------------------------------------------------- S3
def test_a_missing_bucket_is_a_configuration_error(tmp_path, moto_endpoint):
    src = audit_file(tmp_path / "audit.log", range(3))
    proc = cli("ingest", str(src), "--lake", "s3://no-such-bucket-here/lake", "--cluster", "prod")
    assert proc.returncode == 2, proc.stderr
    assert "bucket 'no-such-bucket-here' does not exist" in proc.stderr
    from detector.storage import MissingBucket

    with pytest.raises(MissingBucket):  # reading it is no empty lake either
        Lake("s3://no-such-bucket-here/lake").scan_events()
    # a model folder in a missing bucket: said before training, not after the whole fit
    # as "unexpected FileNotFoundError", exit 3 (which cron retries, fitting again)
    lake = str(tmp_path / "lake")
    assert cli("ingest", str(src), "--lake", lake, "--cluster", "prod").returncode == 0
    train = cli(
        "train", "--lake", lake, "--since", "1d", "--model-dir", "s3://no-such-bucket-here/m"
    )
    assert train.returncode == 2, train.stderr
    assert "bucket 'no-such-bucket-here' does not exist (create it, or fix --model-dir)" in (
        train.stderr
    )


def test_an_object_is_marked_done_only_after_its_quarantined_lines_are_stored(
    tmp_path, s3_bucket, monkeypatch
):
    import boto3

    s3 = boto3.client("s3")
    bad_lines = b"not json\n{also not\n"
    s3.put_object(Bucket=s3_bucket, Key="in/a-bad.log", Body=bad_lines)
    s3.put_object(
        Bucket=s3_bucket,
        Key="in/b-good.log",
        Body=audit_file(tmp_path / "g", range(5)).read_bytes(),
    )
    lake = f"s3://{s3_bucket}/lake"
    real = ingest_mod.read_batches

    def killed_on_second(uri, fmt, **kw):
        if uri.endswith("b-good.log"):
            raise KeyboardInterrupt  # the process dies here: no flush, no cleanup
        return real(uri, fmt, **kw)

    monkeypatch.setattr(ingest_mod, "read_batches", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        ingest_paths([f"s3://{s3_bucket}/in/"], lake, cluster="prod")
    monkeypatch.setattr(ingest_mod, "read_batches", real)
    summary = ingest_paths([f"s3://{s3_bucket}/in/"], lake, cluster="prod")
    assert summary.inputs == 2  # the bad-lines object was not marked done
    assert Lake(lake).scan_quarantine().collect().height == 2
    assert lake_rows(lake) == 5


# ----------------------------------------------------------------------------- compaction
def _many_small_files(lake: str, n: int) -> None:
    for k in range(n):
        ids = range(k * 10, k * 10 + 10)
        events = ingest_mod.read_events([str(_tmp_file(lake, k, ids))], cluster="prod")[0]
        Lake(lake).write_events(events)


def _tmp_file(lake: str, k: int, ids: range) -> Path:
    path = Path(lake).parent / f"batch-{k}.log"
    return audit_file(path, ids, minute=k)


def test_compact_merges_partitions_atomically_and_idempotently(tmp_path):
    lake = str(tmp_path / "lake")
    _many_small_files(lake, 6)
    store = Lake(lake)
    part = ("prod", "2026-11-27", "10")
    assert len(store.partition_files(part)) == 6
    before = store.scan_events().collect().sort("audit_id")

    planned = store.scan_events()  # a reader that listed the files before compaction
    summary = compact(store, grace=3600)
    assert (summary.partitions, summary.files_before, summary.files_after) == (1, 6, 1)
    assert planned.collect().sort("audit_id").equals(before)  # old files kept for it
    assert Lake(lake).scan_events().collect().sort("audit_id").equals(before)
    assert len(Lake(lake).partition_files(part)) == 1

    again = compact(Lake(lake), grace=3600)
    assert again.partitions == 0 and again.purged == 0
    # A writer appending after compaction: new rows kept, old ones still deduplicated.
    more = audit_file(tmp_path / "more.log", range(55, 70), minute=5)  # 55-59: copies
    summary = ingest_paths([str(more)], store, cluster="prod")
    assert (summary.events_written, summary.duplicates) == (10, 5)
    merged = compact(Lake(lake), grace=0)  # deletes the six, merges the two live files
    assert (merged.purged, merged.partitions, merged.files_before) == (6, 1, 2)
    assert compact(Lake(lake), grace=0).purged == 2
    part_dir = Path(store.partition_path(part))
    assert len(list(part_dir.glob("*.parquet"))) == 1
    assert lake_rows(lake) == 70
    assert check_lake(Lake(lake)).problems == []


def test_a_replace_marker_without_its_output_changes_nothing(tmp_path):
    lake = str(tmp_path / "lake")
    _many_small_files(lake, 2)
    store = Lake(lake)
    part = ("prod", "2026-11-27", "10")
    files = store.partition_files(part)
    marker = {
        "output": "part-x-never-written.parquet",
        "inputs": [f.rsplit("/", 1)[1] for f in files],
    }
    Path(store.partition_path(part), "_replaced-" + "0" * 32 + ".json").write_bytes(
        orjson.dumps({**marker, "created_at": 0})
    )
    assert store.partition_files(part) == files and lake_rows(lake) == 20
    compact(store, grace=0)
    assert lake_rows(lake) == 20 and len(store.partition_files(part)) == 1


def test_a_compaction_touches_nothing_while_another_writer_holds_the_lake(tmp_path, monkeypatch):
    """Two compactions at once: the second purged outside the writer lock, took the
    first's marker (written, its output not yet) for a dead writer's and deleted it; the
    output then came, and its inputs with it were all live (rows twice to the tool's own
    reader; found by review). Purging waits for the lock like merging."""
    from detector.lake import lock
    from detector.lake.state import Lease, Owner, StateObject

    lake = str(tmp_path / "lake")
    _many_small_files(lake, 2)
    store = Lake(lake)
    table, part = store.events, ("prod", "2026-11-27", "10")
    files = table.files(part)
    other = Lease(StateObject(store, *lock.LOCK_PARTS), owner=Owner(pid=1), seconds=600)
    other.acquire()  # another compaction (pid 1 is alive), between its marker and output
    output = "part-" + "a" * 32 + ".parquet"
    marker = {"output": output, "inputs": [f.rsplit("/", 1)[1] for f in files], "created_at": 0}
    marker_path = Path(store.partition_path(part), "_replaced-" + "1" * 32 + ".json")
    marker_path.write_bytes(orjson.dumps(marker))
    monkeypatch.setattr(lock, "WAIT_SECONDS", 0)
    with pytest.raises(lock.LakeBusy):
        compact(store, grace=0)
    assert marker_path.exists()  # not taken for a dead writer's
    merged = table.scan(files).collect()
    T.put_atomic(store.loc, f"{table.dir(part)}/{output}", T.parquet_bytes(merged))
    other.release()
    assert lake_rows(lake) == 20 == Lake(lake).scan_events().collect()["audit_id"].n_unique()


def test_a_purge_killed_between_chained_markers_never_shows_a_row_twice(tmp_path, monkeypatch):
    """Compacting a compacted file chains two markers: a, b -> X, then X, c -> Y. Purging
    went by marker name; purging the second first deleted X while the first still needed
    it to hide a and b, and a kill right then left a, b and Y all live for good (found by
    bench/soak_watch.py --compact-every, which SIGKILLs compactions)."""
    lake = str(tmp_path / "lake")
    _many_small_files(lake, 3)
    store = Lake(lake)
    table, part = store.events, ("prod", "2026-11-27", "10")
    a, b, c = table.files(part)
    x = table.replace(part, [a, b], table.scan([a, b]).collect())
    table.replace(part, [x, c], table.scan([x, c]).collect())
    part_dir = Path(store.partition_path(part))
    first, second = sorted(part_dir.glob("_replaced-*.json"), key=lambda p: orjson.loads(
        p.read_bytes())["created_at"])  # fmt: skip
    first.rename(part_dir / ("_replaced-" + "f" * 32 + ".json"))  # the later name: last by name
    second.rename(part_dir / ("_replaced-" + "0" * 32 + ".json"))
    assert lake_rows(lake) == 30

    calls = []

    def killed_at_the_third_removal(loc, paths):  # a SIGKILL mid-purge (in-process stand-in)
        calls.append(list(paths))
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_remove(loc, paths)

    real_remove = T.remove
    monkeypatch.setattr(T, "remove", killed_at_the_third_removal)
    with pytest.raises(KeyboardInterrupt):
        table.purge_replaced(part, older_than=0)
    monkeypatch.setattr(T, "remove", real_remove)
    assert lake_rows(lake) == 30
    table.purge_replaced(part, older_than=0)  # the next run finishes
    assert lake_rows(lake) == 30 and len(table.files(part)) == 1


@pytest.mark.parametrize(
    "marker",
    [b"[1]", b'{"output": "x.parquet", "inputs": [{}]}', b'{"output": 7, "inputs": []}',
     b'{"output": "x.parquet", "inputs": [], "created_at": "soon"}', b"{",
     # a folder of that name stopped every command (exit 3); a marker naming a file as its
     # own input and output hid it (found by review)
     "a folder", "hides its own output"],
)  # fmt: skip
def test_a_marker_of_another_shape_hides_nothing_and_breaks_nothing(tmp_path, marker):
    """A damaged or hand-written ``_replaced-*.json`` made every listing of its partition
    fail (an unhashable input, a JSON list, a date in words): it is ignored now."""
    lake = str(tmp_path / "lake")
    _many_small_files(lake, 2)
    store = Lake(lake)
    part = ("prod", "2026-11-27", "10")
    path = Path(store.partition_path(part), "_replaced-" + "a" * 32 + ".json")
    if marker == "a folder":
        path.mkdir()
    elif marker == "hides its own output":
        name = Path(store.partition_files(part)[0]).name
        path.write_bytes(orjson.dumps({"output": name, "inputs": [name], "created_at": 0}))
    else:
        path.write_bytes(marker)
    assert lake_rows(lake) == 20 and len(store.partition_files(part)) == 2
    compact(store, grace=0)
    assert lake_rows(lake) == 20 and len(store.partition_files(part)) == 1


def test_compact_and_lake_check_cli(tmp_path):
    lake = str(tmp_path / "lake")
    _many_small_files(lake, 3)
    proc = cli("compact", "--lake", lake, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["files_before"] == 3
    assert cli("compact", "--lake", lake, "--grace", "soon").returncode == 2
    for command in (["compact"], ["lake", "check"]):
        help_text = cli(*command, "--help").stdout
        assert "Example:" in help_text


def test_state_names_cannot_leave_the_state_folder(tmp_path):
    with pytest.raises(T.UnsafeName):
        Lake(str(tmp_path / "lake")).state_path("..", "x")


# ----------------------------------------------------------------------------- writer lock
#: A lease that lasts until 2096, and one that ran out long ago (a crashed writer).
HELD, EXPIRED = 4_000_000_000_000, 1_000


def hold_lock(bucket: str, prefix: str, until_ms: int) -> str:
    """The writer lock of the lake at ``s3://bucket/prefix``, written as a writer on another
    host would hold it until ``until_ms``; returns the lock's key."""
    import boto3

    from detector.lake import lock

    key = f"{prefix}/_state/" + "/".join(lock.LOCK_PARTS)
    holder = {"host": "another-host", "pid": 1, "pidns": "1", "run_id": "elsewhere"}
    doc = {"owner": holder, "lease_until_ms": until_ms, "seq": 1}
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=orjson.dumps(doc))
    return key


def locked_lake(tmp_path: Path, bucket: str, prefix: str, monkeypatch) -> str:
    """A lake at ``s3://bucket/prefix`` holding a few events, its writer lock held by a
    live writer elsewhere, and writers that give up at once instead of waiting."""
    from detector.lake import lock

    lake = f"s3://{bucket}/{prefix}"
    events = ingest_mod.read_events([str(audit_file(tmp_path / "a.log", range(2)))])[0]
    Lake(lake).write_events(events)  # the lake exists
    hold_lock(bucket, prefix, HELD)
    monkeypatch.setattr(lock, "WAIT_SECONDS", 0.0)
    return lake


def test_a_live_writer_elsewhere_holds_the_s3_lock_and_an_expired_one_does_not(
    tmp_path, s3_bucket, monkeypatch
):
    """The lock is a lease in S3, taken with conditional writes (moto honours IfMatch /
    IfNoneMatch): a holder on another host blocks writers until its lease runs out."""
    import boto3

    from detector.lake import lock

    lake = f"s3://{s3_bucket}/lake"
    events = ingest_mod.read_events([str(audit_file(tmp_path / "a.log", range(5)))])[0]
    key = hold_lock(s3_bucket, "lake", HELD)
    monkeypatch.setattr(lock, "WAIT_SECONDS", 0.0)
    with pytest.raises(lock.LakeBusy, match="another writer holds the lock"):
        Lake(lake).write_events(events)
    assert Lake(lake).scan_events().collect().height == 0  # nothing written meanwhile
    assert lock.LakeBusy.exit_code == 3

    hold_lock(s3_bucket, "lake", EXPIRED)  # a crashed writer on another host
    assert Lake(lake).write_events(events).written == 5
    state = orjson.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert state["owner"]["run_id"] != "elsewhere" and "released_at" in state


def test_incidents_are_updated_under_the_writer_lock(tmp_path, s3_bucket, monkeypatch):
    """One scheduled run per cluster on a shared lake updates the same day's incidents file:
    each read the file, added its rows and replaced it, so the later dropped the other's.
    The update now waits for the lake's writer lock like every other write."""
    from datetime import UTC, datetime

    from detector.lake import lock
    from detector.lake.incidents import read_incidents, write_incidents

    lake = locked_lake(tmp_path, s3_bucket, "lake-incidents", monkeypatch)
    at = datetime(2026, 11, 27, 10, tzinfo=UTC)
    row = {"incident_id": "i-1", "cluster": "a", "first_seen": at, "last_seen": at, "version": 1}
    with pytest.raises(lock.LakeBusy):
        write_incidents(Lake(lake), [row])
    assert read_incidents(Lake(lake)).is_empty()  # nothing written meanwhile
    hold_lock(s3_bucket, "lake-incidents", EXPIRED)  # the holder's lease ran out (it crashed)
    assert write_incidents(Lake(lake), [row]) == 1
    assert read_incidents(Lake(lake))["incident_id"].to_list() == ["i-1"]


def test_findings_are_written_under_the_writer_lock(tmp_path, s3_bucket, monkeypatch):
    """A range's findings write trims older files every cluster's runs share (a
    read-modify-write): it waits for the lake's writer lock like every other write."""
    from datetime import UTC, datetime, timedelta

    from alerts_data import finding, frames

    from detector.lake import findings as store
    from detector.lake import lock

    lake = locked_lake(tmp_path, s3_bucket, "lake-findings", monkeypatch)
    at = datetime(2026, 11, 27, 10, tzinfo=UTC)
    found = frames([finding("alice", at, detector="rule:pod-exec")])
    with pytest.raises(lock.LakeBusy):
        store.write_range(Lake(lake), "rules", at, at + timedelta(minutes=10), *found)
    assert store.list_findings(Lake(lake)).is_empty()  # nothing written meanwhile
    hold_lock(s3_bucket, "lake-findings", EXPIRED)  # the holder's lease ran out (it crashed)
    store.write_range(Lake(lake), "rules", at, at + timedelta(minutes=10), *found)
    assert store.list_findings(Lake(lake))["principal"].to_list() == ["alice"]


def test_a_lake_path_through_a_file_is_a_usage_error(tmp_path):
    """`--lake in.log/sub` failed deep in the lock with "Not a directory", exit 3 and the
    lock's path (found by review): a path that cannot be a folder is exit 2, said plainly."""
    log = audit_file(tmp_path / "in.log", range(3), minute=0)
    result = cli("ingest", str(log), "--lake", f"{log}/sub", "--cluster", "prod")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: no lake at {log}/sub: {log} is a file, not a folder"


def _first_column_page(part_file: Path) -> tuple[int, int]:
    """(offset, size) of the first column chunk (``event_time``) of a lake file."""
    import pyarrow.parquet as pq

    chunk = pq.ParquetFile(part_file).metadata.row_group(0).column(0)
    assert chunk.path_in_schema == "event_time"
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    return start, chunk.total_compressed_size


def test_a_byte_changed_in_a_page_is_found_by_the_page_checksum(tmp_path):
    """One byte changed inside the event_time page: polars read other times without a
    word, and `lake check`, which read the file with polars, found nothing (found by
    review). Lake files now carry a CRC per page, which `lake check` verifies."""
    lake = tmp_path / "lake"
    ingest_paths([str(audit_file(tmp_path / "audit.log", range(400)))], str(lake), cluster="prod")
    (part_file,) = (lake / "events").rglob("*.parquet")
    good = part_file.read_bytes()
    before = pl.read_parquet(part_file)["event_time"]
    start, size = _first_column_page(part_file)

    def read_wrong(offset: int) -> bool:
        data = bytearray(good)
        data[offset] ^= 0xFF
        try:
            times = pl.read_parquet(io.BytesIO(bytes(data)), columns=["event_time"])
        except BaseException:  # an error (or a panic: the next test) is no silent damage
            return False
        return not times["event_time"].equals(before)

    # the first byte (in page order) whose change polars reads as other times, silently
    offset = next((o for o in range(start, start + size) if read_wrong(o)), None)
    assert offset is not None
    data = bytearray(good)
    data[offset] ^= 0xFF
    part_file.write_bytes(bytes(data))
    check = cli("lake", "check", "--lake", str(lake), "--format", "json")
    (problem,) = json.loads(check.stdout)["problems"]
    assert Path(problem["path"]).name == part_file.name
    assert "CRC checksum verification failed" in problem["problem"]


def test_a_page_that_makes_polars_panic_is_one_line_not_a_crash(tmp_path):
    """Some damaged pages make polars panic, which Python raises as a BaseException: it
    went past every handler, and `detect score` died with a Rust backtrace and a traceback
    (found by review). It is now the one line of any damaged file, exit 3."""
    lake = tmp_path / "lake"
    ingest_paths([str(audit_file(tmp_path / "audit.log", range(400)))], str(lake), cluster="prod")
    (part_file,) = (lake / "events").rglob("*.parquet")
    good = part_file.read_bytes()
    start, size = _first_column_page(part_file)

    def panics(offset: int) -> bool:
        data = bytearray(good)
        data[offset] ^= 0xFF
        try:
            pl.read_parquet(io.BytesIO(bytes(data)), columns=["event_time"])
        except Exception:
            return False
        except BaseException as exc:
            return type(exc).__name__ == "PanicException"
        return False

    # the first byte (in page order) whose change makes this polars panic
    offset = next((o for o in range(start, start + size) if panics(o)), None)
    assert offset is not None, "no byte of the page makes polars panic any more"
    data = bytearray(good)
    data[offset] ^= 0xFF
    part_file.write_bytes(bytes(data))
    score = cli("score", "--lake", str(lake), "--since", "2026-11-27T00:00:00Z",
                "--until", "2026-11-28T00:00:00Z", "--no-model", "--dry-run")  # fmt: skip
    assert score.returncode == 3, score.stderr
    (line,) = score.stderr.strip().splitlines()
    assert "could not be decoded (polars panicked" in line and "detect lake check" in line
    check = cli("lake", "check", "--lake", str(lake), "--format", "json")
    assert [Path(p["path"]).name for p in json.loads(check.stdout)["problems"]] == [part_file.name]


def test_a_file_damaged_past_its_footer_is_one_line_saying_how_to_find_it(tmp_path):
    """Bytes overwritten inside a file whose footer still reads: readers check footers, so
    the scan met it and said "unexpected ComputeError: zstd error ..." (found by review).
    It is one line saying the file is damaged and how to find it; `lake check` names it."""
    lake = tmp_path / "lake"
    ingest_paths([str(audit_file(tmp_path / "audit.log", range(400)))], str(lake), cluster="prod")
    (part_file,) = (lake / "events").rglob("*.parquet")
    import pyarrow.parquet as pq

    data = bytearray(part_file.read_bytes())
    footer = pq.ParquetFile(part_file).metadata.serialized_size + 8  # and its length, magic
    start, end = len(data) // 10, min(len(data) // 2, len(data) - footer)
    data[start:end] = b"A" * (end - start)
    part_file.write_bytes(bytes(data))
    score = cli("score", "--lake", str(lake), "--since", "2026-11-27T00:00:00Z",
                "--until", "2026-11-28T00:00:00Z", "--no-model", "--dry-run")  # fmt: skip
    assert score.returncode == 3
    (line,) = score.stderr.strip().splitlines()
    assert "could not be decoded" in line and "detect lake check" in line, line
    check = cli("lake", "check", "--lake", str(lake), "--format", "json")
    assert [Path(p["path"]).name for p in json.loads(check.stdout)["problems"]] == [part_file.name]
