"""Ingest: formats, normalization, redaction, quarantine, idempotency, S3, CLI."""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import os
import threading
import zlib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from factories import (
    audit_id,
    cloudwatch_page,
    export_task_object,
    firehose_object,
    make_event,
    ndjson,
)

from detector.events.normalize import REDACTED, events_from_dicts
from detector.lake.events import Lake
from detector.pipeline.ingest import ingest_paths, read_events
from detector.sources.files import BOM

EXTERNAL = Path(__file__).parent / "data" / "external"
FALCO = Path(__file__).parent / "data" / "falco"  # Falco fixtures (see NOTICE.md there)
AUDIT2RBAC = EXTERNAL / "audit2rbac" / "demo.log"


def write_ndjson(path: Path, events: list[dict], *, gz: bool = False) -> Path:
    path.write_bytes(ndjson(events, gz=gz))
    return path


# ----------------------------------------------------------------- real data nobody here wrote
def test_real_external_events_all_ingest_and_malformed_one_is_quarantined(lake_dir):
    inputs = [str(FALCO / "*.json"), str(AUDIT2RBAC)]
    summary = ingest_paths(inputs, lake_dir, cluster="prod")
    events, _ = read_events(inputs)
    lake_events = Lake(lake_dir).scan_events().collect()
    # 51 well-formed Falco events + 37 audit2rbac events. Four Falco fixtures are hand-edited
    # copies sharing an auditID with another fixture; the lake keeps one per (audit_id, stage).
    assert events.height == 51 + 37
    expected_keys = events.select("audit_id", "stage").unique()
    assert lake_events.height == expected_keys.height == summary.events_written
    assert (
        lake_events.select("audit_id", "stage")
        .sort("audit_id", "stage")
        .equals(expected_keys.sort("audit_id", "stage"))
    )
    quarantine = Lake(lake_dir).scan_quarantine().collect()
    assert quarantine.height == 1
    assert quarantine["source"][0].endswith("fal_01_003.json")
    assert quarantine["reason"][0] == "missing auditID"


def test_v1beta1_events_normalize():
    events, _ = read_events([str(FALCO / "create_nginx_pod_privileged.json")])
    assert events["audit_api_version"][0] == "audit.k8s.io/v1beta1"
    assert events["event_time"][0] == datetime(2018, 10, 25, 14, 9, 12, 581541, tzinfo=UTC)
    # The oldest shape has no stageTimestamp: its time is `timestamp`.
    old = make_event(
        1,
        apiVersion="audit.k8s.io/v1beta1",
        timestamp="2017-09-11T19:55:05Z",
        metadata={"creationTimestamp": "2017-09-11T19:55:05Z"},
    )
    del old["stageTimestamp"], old["requestReceivedTimestamp"]
    df = events_from_dicts([old])
    assert df["event_time"][0] == datetime(2017, 9, 11, 19, 55, 5, tzinfo=UTC)
    assert df["received_time"][0] == df["event_time"][0]
    assert events["principal"][0] == "system:serviceaccount:kube-system:replicaset-controller"
    assert events["principal_kind"][0] == "service_account"


def test_impersonation_and_forbidden_fields_from_audit2rbac():
    events, _ = read_events([str(AUDIT2RBAC)])
    forbidden = events.filter(pl.col("response_code") == 403)
    assert forbidden.height > 0
    assert {"bob", "alice", "system:serviceaccount:ns1:sa1"} <= set(forbidden["impersonated_user"])
    assert set(forbidden["user_name"]) == {"system:admin"}
    assert set(forbidden["response_reason"]) == {"Forbidden"}


# ----------------------------------------------------------------- the four formats
@pytest.mark.parametrize("fmt", ["ndjson", "ndjson-gz", "cloudwatch-json", "export-gz", "firehose"])
def test_each_input_format_yields_the_same_events(tmp_path, fmt):
    events = [make_event(i) for i in range(10)]
    path = tmp_path / "input"
    if fmt == "ndjson":
        write_ndjson(path, events)
    elif fmt == "ndjson-gz":
        write_ndjson(path, events, gz=True)
    elif fmt == "cloudwatch-json":
        path.write_text(json.dumps(cloudwatch_page(events), indent=2))
    elif fmt == "export-gz":
        path.write_bytes(export_task_object(events))
    else:
        path.write_bytes(firehose_object(events))
    got, quarantine = read_events([str(path)])
    assert quarantine.height == 0
    assert got["audit_id"].to_list() == [e["auditID"] for e in events]
    assert got["principal"].unique().to_list() == ["arn:aws:iam::111122223333:role/eng-admin/alice"]
    if fmt == "firehose":
        assert got["cluster"].unique().to_list() == ["prod-east"]  # from the log group name
        assert got["source_position"].to_list() == [f"evt-{i}" for i in range(10)]
    if fmt == "cloudwatch-json":
        assert got["source"][0].endswith("#kube-apiserver-audit-0123abcd")


def test_forced_format_overrides_detection(tmp_path):
    path = write_ndjson(tmp_path / "a.log", [make_event(1)])
    got, _ = read_events([str(path)], fmt="ndjson")
    assert got.height == 1


# ----------------------------------------------------------------- identity
@pytest.mark.parametrize(
    ("user", "principal", "kind"),
    [
        (
            {"username": "system:serviceaccount:payments:api"},
            "system:serviceaccount:payments:api",
            "service_account",
        ),
        (
            {"username": "system:node:ip-10-0-1-2.ec2.internal"},
            "system:node:ip-10-0-1-2.ec2.internal",
            "node",
        ),
        (
            {"username": "system:kube-controller-manager"},
            "system:kube-controller-manager",
            "system",
        ),
        ({"username": "eks:certificate-controller"}, "eks:certificate-controller", "system"),
        (
            {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
            "system:anonymous",
            "anonymous",
        ),
        ({"username": "jane@example.com"}, "jane@example.com", "other"),
        (
            {
                "username": "ci",
                "extra": {
                    "canonicalArn": ["arn:aws:iam::1:user/ci-bot"],
                    "arn": ["arn:aws:iam::1:user/ci-bot"],
                },
            },
            "arn:aws:iam::1:user/ci-bot",
            "iam_user",
        ),
        (
            {
                "username": "eng-admin",
                "extra": {
                    "canonicalArn": ["arn:aws:iam::1:role/eng-admin"],
                    "sessionName": ["bob"],
                },
            },
            "arn:aws:iam::1:role/eng-admin/bob",
            "iam_role",
        ),
    ],
)
def test_principal_derivation(user, principal, kind):
    df = events_from_dicts([make_event(1, user=user)])
    assert df["principal"][0] == principal
    assert df["principal_kind"][0] == kind
    assert df["user_name"][0] == user["username"]


def test_shared_iam_username_splits_into_one_principal_per_session():
    alice = make_event(1)
    bob = make_event(2)
    bob["user"] = {**bob["user"], "extra": {**bob["user"]["extra"], "sessionName": ["bob"]}}
    df = events_from_dicts([alice, bob])
    assert df["user_name"].unique().to_list() == ["eng-admin"]
    assert df["principal"].n_unique() == 2


def test_missing_optional_fields_do_not_fail_the_row():
    bare = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "x1",
        "stage": "ResponseComplete",
        "stageTimestamp": "2026-11-27T10:00:00Z",
        "verb": "get",
        "user": {"username": "alice"},  # required: an event without it is quarantined
        "somethingNew": {"nested": [1, 2]},
    }
    df = events_from_dicts([bare])
    assert df.height == 1
    assert df["principal"][0] == "alice"
    assert df["response_code"][0] is None


# ----------------------------------------------------------------- redaction
def _secret_event(i: int, **kw) -> dict:
    return make_event(
        i,
        level="RequestResponse",
        verb=kw.pop("verb", "create"),
        objectRef={"resource": "secrets", "namespace": "app", "name": "db", "apiVersion": "v1"},
        **kw,
    )


def test_secret_bodies_are_redacted_but_keys_kept():
    body = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "db",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": (
                    '{"data":{"password":"c2VjcmV0"}}'
                )
            },
        },
        "data": {"password": "c2VjcmV0"},
        "stringData": {"user": "admin"},
    }
    listing = {
        "kind": "SecretList",
        "items": [{"metadata": {"name": "a"}, "data": {"token": "dG9rZW4="}}],
    }
    patch = {"data": {"password": "bmV3"}}
    json_patch = [{"op": "replace", "path": "/data/password", "value": "bmV3"}]
    df = events_from_dicts(
        [
            _secret_event(1, requestObject=body, responseObject=body),
            _secret_event(2, verb="list", responseObject=listing),
            _secret_event(3, verb="patch", requestObject=patch),
            _secret_event(4, verb="patch", requestObject=json_patch),
        ]
    )
    assert df["redacted"].to_list() == [True, True, True, True]
    text = " ".join(
        df["request_object"].drop_nulls().to_list() + df["response_object"].drop_nulls().to_list()
    )
    for secret in ("c2VjcmV0", "dG9rZW4=", "bmV3", "admin"):
        assert secret not in text
    req = orjson.loads(df["request_object"][0])
    assert req["data"] == {"password": REDACTED}
    assert req["stringData"] == {"user": REDACTED}
    assert orjson.loads(df["response_object"][1])["items"][0]["data"] == {"token": REDACTED}


def test_token_request_and_bearer_values_are_redacted():
    token = make_event(
        1,
        level="RequestResponse",
        verb="create",
        objectRef={
            "resource": "serviceaccounts",
            "subresource": "token",
            "namespace": "kube-system",
            "name": "admin",
        },
        responseObject={
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "status": {"token": "eyJhbGciOiJSUzI1NiJ9.payload.sig"},
        },
    )
    review = make_event(
        2,
        level="Request",
        verb="create",
        objectRef={"resource": "tokenreviews", "apiGroup": "authentication.k8s.io"},
        requestObject={"kind": "TokenReview", "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.x.y"}},
        annotations={
            "authorization.k8s.io/decision": "allow",
            "note": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz",
        },
    )
    plain = make_event(3)
    df = events_from_dicts([token, review, plain])
    assert df["redacted"].to_list() == [True, True, False]
    assert "eyJ" not in (df["response_object"][0] + df["request_object"][1])
    assert "abcdefghijklmnop" not in df["annotations"][1]
    assert orjson.loads(df["response_object"][0])["status"]["token"] == REDACTED


# ----------------------------------------------------------------- quarantine
def test_bad_lines_are_quarantined_with_reasons_and_neighbours_kept(tmp_path):
    good = [orjson.dumps(make_event(i)) for i in range(20)]
    truncated = orjson.dumps(make_event(100, requestObject={"blob": "x" * 300_000}))[:262_144]
    bad = [
        b'{"kind":"Event","auditID":',  # invalid JSON
        truncated,  # CloudWatch cut at 256 KB
        orjson.dumps(make_event(101, responseStatus={"code": "forbidden"})),  # wrong type
        orjson.dumps({k: v for k, v in make_event(102).items() if k != "auditID"}),
        b'{"kind":"Event","auditID":"\xff\xfe","stage":"x"}',  # not UTF-8
        b"[1,2,3]",
        b'{"kind":"Event","auditID":"big","blob":"' + b"y" * (10 * 1024 * 1024) + b'"}',
    ]
    lines = good[:7] + bad[:3] + good[7:14] + bad[3:] + good[14:]
    path = tmp_path / "audit.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(path)], lake, cluster="default")
    assert summary.events_written == 20
    assert summary.quarantined == len(bad)
    q = Lake(lake).scan_quarantine().collect().sort("source_position", descending=False)
    reasons = dict(zip(q["source_position"].cast(pl.Int64), q["reason"], strict=True))
    assert reasons[8].startswith("invalid JSON")
    assert reasons[9].startswith("invalid JSON")
    assert reasons[10].startswith("wrong type")
    assert reasons[18] == "missing auditID"
    assert reasons[19] == "invalid UTF-8"
    assert reasons[20] == "not a JSON object"
    assert reasons[21].startswith("line too long")
    assert q["raw"].str.len_bytes().max() <= 64 * 1024
    # raw_size is the line's size, not its kept head's (it said 65,536; found by a soak)
    sizes = dict(zip(q["source_position"].cast(pl.Int64), q["raw_size"], strict=True))
    assert sizes[21] == len(bad[6]) and sizes[8] == len(bad[0])
    assert set(Lake(lake).scan_events().collect()["audit_id"]) == {
        make_event(i)["auditID"] for i in range(20)
    }


# ----------------------------------------------------------------- lake behaviour
def test_reingest_adds_nothing_and_partitions_by_event_hour(tmp_path):
    events = [make_event(i) for i in range(30)]
    events[5]["stageTimestamp"] = "2026-11-27T11:59:59.999999Z"
    path = write_ndjson(tmp_path / "a.log", events)
    lake = str(tmp_path / "lake")
    first = ingest_paths([str(path)], lake, cluster="default")
    second = ingest_paths([str(path)], lake, cluster="default")
    assert (first.events_written, first.duplicates) == (30, 0)
    assert (second.events_written, second.duplicates) == (0, 30)
    parts = Lake(lake).partitions()
    assert parts == [("default", "2026-11-27", "10"), ("default", "2026-11-27", "11")]
    assert Lake(lake).scan_events().collect().height == 30
    files = list((tmp_path / "lake").rglob("*.parquet"))
    assert not [f for f in (tmp_path / "lake").rglob(".tmp-*")]
    assert all(f.read_bytes()[:4] == b"PAR1" for f in files)


def test_scan_events_prunes_to_the_range(tmp_path):
    events = [
        make_event(i, stageTimestamp=f"2026-11-27T{h:02d}:30:00Z")
        for i, h in enumerate(range(0, 24, 2))
    ]
    lake = str(tmp_path / "lake")
    ingest_paths([str(write_ndjson(tmp_path / "a.log", events))], lake, cluster="default")
    start, end = datetime(2026, 11, 27, 6, tzinfo=UTC), datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert [p[2] for p in Lake(lake).partitions(start, end)] == ["06", "08", "10"]
    got = Lake(lake).scan_events(start, end).collect()
    assert got["event_time"].dt.hour().to_list() == [6, 8, 10]
    assert got["cluster"].unique().to_list() == ["default"]


def test_an_object_key_holding_a_credential_is_remembered_without_it(tmp_path, s3_bucket):
    """The list of ingested S3 objects kept each key as written, so a key such as
    ``exports/?access_token=...`` put the token in the lake's state. Objects are now
    known by their key's digest; the key kept for people is redacted. A manifest written
    before (keys in the clear) still counts its objects as ingested."""
    import boto3

    from detector.lake.manifest import MANIFEST_DIR
    from detector.sources.files import object_identity

    s3 = boto3.client("s3")
    secret = "ghp_QAMARK903Xabcdefghijklmnop"
    keys = [f"in/?access_token={secret}/a.log", "in/password=hunter2-QAMARK901X/b.log"]
    for i, key in enumerate(keys):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=orjson.dumps(make_event(i)))
    lake = tmp_path / "lake"
    first = ingest_paths([f"s3://{s3_bucket}/in/"], str(lake), cluster="prod")
    assert (first.inputs, first.events_written) == (2, 2)
    state = lake / "_state" / MANIFEST_DIR
    text = "".join(f.read_text() for f in state.iterdir())
    assert "QAMARK" not in text and "access_token=<redacted>" in text
    again = ingest_paths([f"s3://{s3_bucket}/in/"], str(lake), cluster="prod")
    assert (again.inputs, again.skipped_inputs) == (0, 2)
    # a manifest from before: the uri in the clear, no digest
    legacy = [object_identity(f"s3://{s3_bucket}/{k}") for k in keys]
    for f in state.iterdir():
        f.unlink()
    (state / "20261130T000000-legacy.json").write_bytes(
        orjson.dumps({"objects": [{"uri": u, "etag": e} for u, e in legacy]})
    )
    old = ingest_paths([f"s3://{s3_bucket}/in/"], str(lake), cluster="prod")
    assert (old.inputs, old.skipped_inputs) == (0, 2)


def test_s3_lake_round_trip_and_s3_inputs_are_remembered(tmp_path, s3_bucket, moto_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    events = [make_event(i) for i in range(12)]
    s3.put_object(
        Bucket=s3_bucket,
        Key="in/a.log.gz",
        Body=gzip.compress(b"\n".join(orjson.dumps(e) for e in events[:6])),
    )
    s3.put_object(Bucket=s3_bucket, Key="in/b.gz", Body=firehose_object(events[6:]))
    lake = f"s3://{s3_bucket}/lake"
    first = ingest_paths([f"s3://{s3_bucket}/in/"], lake, cluster="prod")
    assert (first.inputs, first.events_written) == (2, 12)
    again = ingest_paths([f"s3://{s3_bucket}/in/"], lake, cluster="prod")
    assert (again.inputs, again.skipped_inputs, again.lines) == (0, 2, 0)
    s3.put_object(Bucket=s3_bucket, Key="in/c.log", Body=orjson.dumps(make_event(99)))
    third = ingest_paths([f"s3://{s3_bucket}/in/"], lake, cluster="prod")
    assert (third.inputs, third.events_written) == (1, 1)
    got = Lake(lake).scan_events().collect()
    assert got.height == 13
    assert got["cluster"].unique().to_list() == ["prod"]
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="lake/events/")["Contents"]
    ]
    assert all(k.startswith("lake/events/cluster=prod/date=2026-11-27/hour=10/part-") for k in keys)


def test_a_key_holding_glob_characters_is_read_as_named_and_a_pattern_must_match(
    tmp_path, s3_bucket, moto_endpoint
):
    """S3 keys may hold ``?``, ``*`` or ``[``: such a key was taken as a pattern that
    matched nothing, and the run said "0 inputs" as if it had succeeded. A name that exists
    is now read as named, and a pattern that matches nothing is an error (exit 2)."""
    import boto3

    from detector.sources.files import InputNotFound

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="q?run=1/audit.log", Body=orjson.dumps(make_event(1)))
    s3.put_object(Bucket=s3_bucket, Key="r/audit.log", Body=orjson.dumps(make_event(2)))
    local = tmp_path / "logs[1]"
    local.mkdir()
    (local / "audit.log").write_bytes(orjson.dumps(make_event(3)))
    lake = str(tmp_path / "lake")
    named = [f"s3://{s3_bucket}/q?run=1/", str(local)]
    assert ingest_paths(named, lake, cluster="c").events_written == 2
    assert ingest_paths([f"s3://{s3_bucket}/*/audit.log"], lake, cluster="c").inputs == 1
    for pattern in (f"s3://{s3_bucket}/zz*/", str(tmp_path / "logs[2]")):
        with pytest.raises(InputNotFound, match="no file, folder or object matches"):
            ingest_paths([pattern], lake, cluster="c")


# ----------------------------------------------------------------- CLI
def test_progress_at_a_terminal_redraws_one_line_and_shows_a_paths_controls(tmp_path):
    """At a terminal, ingest's progress line begins with a carriage return that moves the
    cursor: the console that shows control characters from the lake showed that one too,
    as the text ``\\x0d``, and the line grew without end. A control character in a path
    is still shown, not sent."""
    from conftest import on_terminal

    log = tmp_path / "audit\x1b[2Jlog"
    log.write_text("".join(json.dumps(make_event(i)) + "\n" for i in range(3)))
    code, shown, _ = on_terminal(
        ["ingest", str(log), "--lake", str(tmp_path / "lake"), "--cluster", "c"], stream="stderr"
    )
    assert code == 0
    assert shown.startswith("\r3 lines, 0 quarantined"), shown
    assert "\\x0d" not in shown and "\x1b" not in shown and "audit\\x1b[2Jlog" in shown


def test_cli_ingest_json_summary_and_exit_codes(tmp_path, detect):
    path = write_ndjson(tmp_path / "a.log", [make_event(i) for i in range(5)])
    with path.open("ab") as fh:
        fh.write(b"not json\n")
    lake = str(tmp_path / "lake")
    ok = detect("ingest", str(path), "--lake", lake, "--cluster", "prod", "--format", "json")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert (summary["events_written"], summary["quarantined"]) == (5, 1)
    assert summary["quarantine_reasons"] == {"invalid JSON": 1}

    missing = detect("ingest", str(tmp_path / "nope.log"), "--lake", lake)
    assert missing.returncode == 2  # a path naming nothing is a usage error, found first
    assert "no such file" in missing.stderr and missing.stdout == ""
    assert "Traceback" not in missing.stderr

    bad_format = detect("ingest", str(path), "--lake", lake, "--input-format", "xml")
    assert bad_format.returncode == 2
    assert "--input-format" in bad_format.stderr

    helptext = detect("ingest", "--help")
    assert helptext.returncode == 0
    assert "Example" in helptext.stdout and "detect ingest" in helptext.stdout


def test_eks_kubelet_is_a_node_even_though_it_authenticates_through_iam():
    kubelet = make_event(
        1,
        user={
            "username": "system:node:ip-10-0-1-2.ec2.internal",
            "groups": ["system:nodes", "system:authenticated"],
            "extra": {
                "canonicalArn": ["arn:aws:iam::1:role/eks-node-role"],
                "sessionName": ["i-0abc"],
            },
        },
    )
    df = events_from_dicts([kubelet])
    assert df["principal"][0] == "system:node:ip-10-0-1-2.ec2.internal"
    assert df["principal_kind"][0] == "node"
    assert df["iam_arn"][0] == "arn:aws:iam::1:role/eks-node-role"


SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def test_the_shipped_samples_ingest_identically_in_all_four_formats(tmp_path):
    labels = json.loads((SAMPLES / "labels.json").read_text())
    keys = {}
    for fmt in ("audit.log.gz", "cloudwatch", "export", "firehose"):
        lake = str(tmp_path / fmt)
        summary = ingest_paths([str(SAMPLES / fmt)], lake, cluster="demo")
        assert summary.quarantined == 0, fmt
        events = Lake(lake).scan_events().collect()
        keys[fmt] = set(events.select("audit_id", "stage").iter_rows())
        labeled = {a for s in labels["scenarios"] for a in s["audit_ids"]}
        assert labeled <= set(events["audit_id"]), fmt
        by_principal = set(events["principal"])
        assert {s["principal"] for s in labels["scenarios"]} <= by_principal, fmt
    assert keys["audit.log.gz"] == keys["cloudwatch"] == keys["export"] == keys["firehose"]
    # Export-task and Firehose objects carry the log group, so the cluster comes from it.
    assert Lake(str(tmp_path / "firehose")).clusters() == [labels["cluster"]]


def test_firehose_records_in_any_key_order_and_a_damaged_record_costs_only_itself(tmp_path):
    events = [make_event(i) for i in range(6)]

    def record(evs: list[dict], start: int) -> bytes:
        # logEvents first, as moto's Firehose writes it; CloudWatch puts messageType first.
        return orjson.dumps(
            {
                "logEvents": [
                    {"id": f"e{start + j}", "timestamp": 1, "message": orjson.dumps(e).decode()}
                    for j, e in enumerate(evs)
                ],
                "logGroup": "/aws/eks/blue/cluster",
                "logStream": "kube-apiserver-audit-1",
                "messageType": "DATA_MESSAGE",
                "owner": "1",
                "subscriptionFilters": ["f"],
            }
        )

    damaged = b'{"logEvents": [{"id": "x", "message": "{\\"kind\\": \\"Ev'  # cut mid-record
    body = record(events[:3], 0) + damaged + record(events[3:], 3)
    path = tmp_path / "firehose.gz"
    path.write_bytes(gzip.compress(body))
    got, quarantine = read_events([str(path)])
    assert got["audit_id"].to_list() == [e["auditID"] for e in events]
    assert got["cluster"].unique().to_list() == ["blue"]
    assert quarantine.height == 1
    assert quarantine["reason"][0].startswith("invalid Firehose record")


def test_many_small_inputs_store_what_each_gives_alone(tmp_path):
    """Small inputs (Firehose objects of a few events, short log files) are normalized
    together, a batch's fixed cost being most of the work on them (72 sample objects took
    6.4 s). Whatever goes together, each event keeps its own file and line, each cluster
    its own events, and a bad line or record is quarantined against its own file: the
    lake is the one ingesting every input alone gives."""

    def firehose(group: str, evs: list[dict], *, damaged: bool = False) -> bytes:
        record = orjson.dumps(
            {
                "messageType": "DATA_MESSAGE",
                "logGroup": group,
                "logStream": "kube-apiserver-audit-1",
                "logEvents": [
                    {"id": f"e{e['auditID']}", "timestamp": 1, "message": orjson.dumps(e).decode()}
                    for e in evs
                ],
            }
        )
        return gzip.compress(record + (b'{"logEvents": [{"id": "x", "mess' if damaged else b""))

    inputs = tmp_path / "in"
    (inputs / "aws" / "eks" / "green").mkdir(parents=True)
    files = []
    n = 0
    for i in range(6):
        evs = [make_event(n + j) for j in range(3)]
        n += 3
        group = "/aws/eks/blue/cluster" if i % 2 else "/aws/eks/red/cluster"
        path = inputs / f"firehose-{i}.gz"
        path.write_bytes(firehose(group, evs, damaged=i == 3))
        files.append(path)
    for i in range(3):  # no log group: the cluster comes from the path
        path = write_ndjson(inputs / "aws" / "eks" / "green" / f"{i}.log", [make_event(n + i)])
        files.append(path)
    with files[-1].open("ab") as fh:
        fh.write(b"{not json\n")

    def stored(lake: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        events = Lake(lake).scan_events().collect().drop("ingested_at", strict=False)
        quarantine = Lake(lake).scan_quarantine().collect()
        quarantine = quarantine.select("source", "source_position", "reason", "raw")
        return events.sort(events.columns), quarantine.sort(quarantine.columns)

    together = ingest_paths([str(inputs)], str(tmp_path / "together"))
    events, quarantine = stored(str(tmp_path / "together"))
    alone = [
        stored(str(tmp_path / f"alone{i}"))
        for i, f in enumerate(files)
        if ingest_paths([str(f)], str(tmp_path / f"alone{i}")).inputs
    ]
    expected_events = pl.concat([e for e, _ in alone], how="vertical")
    expected_quarantine = pl.concat([q for _, q in alone], how="vertical")
    assert events.equals(expected_events.sort(expected_events.columns))
    assert quarantine.equals(expected_quarantine.sort(expected_quarantine.columns))
    assert together.inputs == len(files) and together.quarantined == 2
    assert sorted(Lake(str(tmp_path / "together")).clusters()) == ["blue", "green", "red"]
    assert events["source"].n_unique() == len(files)  # each event names its own file


def test_reingest_does_not_quarantine_the_same_bad_line_twice(tmp_path):
    path = write_ndjson(tmp_path / "a.log", [make_event(1)])
    with path.open("ab") as fh:
        fh.write(b"{broken\n")
    lake = str(tmp_path / "lake")
    first = ingest_paths([str(path)], lake, cluster="default")
    second = ingest_paths([str(path)], lake, cluster="default")
    assert first.quarantined == second.quarantined == 1  # each run reports what it saw
    stored = Lake(lake).scan_quarantine().collect()
    assert stored.select("source_position", "reason").rows() == [("2", stored["reason"][0])]
    assert stored.height == 1


def test_a_live_logs_half_written_last_line_waits_for_the_next_run(tmp_path, caplog):
    """A cron job ingesting an audit log the API server is still appending put the
    half-written last event in quarantine, then ingested it whole the next time: a
    quarantine row for an event that was never bad (found by review). A file changed in
    the last minute keeps its unfinished last line for the next run, with a warning; an
    older file cut short is quarantined as before, and a complete last line without a
    line break is an event either way."""
    path = write_ndjson(tmp_path / "audit.log", [make_event(1), make_event(2)])
    last = orjson.dumps(make_event(3))
    with path.open("ab") as fh:
        fh.write(last[:150])
    lake = str(tmp_path / "lake")
    with caplog.at_level("WARNING"):
        first = ingest_paths([str(path)], lake, cluster="default")
    assert (first.events_written, first.quarantined) == (2, 0)
    assert "line 3 has no line break yet" in caplog.text
    with path.open("ab") as fh:
        fh.write(last[150:])  # the writer finishes the event, its line break still to come
    second = ingest_paths([str(path)], lake, cluster="default")
    assert (second.events_written, second.quarantined) == (1, 0)
    assert Lake(lake).scan_quarantine().collect().height == 0

    cut = write_ndjson(tmp_path / "cut.log", [make_event(4)])
    with cut.open("ab") as fh:
        fh.write(orjson.dumps(make_event(5))[:150])
    an_hour_ago = datetime.now(UTC).timestamp() - 3600
    os.utime(cut, (an_hour_ago, an_hour_ago))
    third = ingest_paths([str(cut)], lake, cluster="default")
    assert (third.events_written, third.quarantined) == (1, 1)
    # changed "in a day": a copy from a host whose clock is ahead, no writer (review)
    tomorrow = datetime.now(UTC).timestamp() + 86_400
    os.utime(cut, (tomorrow, tomorrow))
    assert ingest_paths([str(cut)], str(tmp_path / "lake2"), cluster="c").quarantined == 1
    # a read with no next run (`rules test`, a replay) quarantines it as it stands (review)
    fresh = write_ndjson(tmp_path / "fresh.log", [make_event(6)])
    with fresh.open("ab") as fh:
        fh.write(last[:150])
    events, quarantine = read_events([str(fresh)])
    assert (events.height, quarantine.height) == (1, 1)
    # a last line past the size limit, still being written: quarantined once it ends, with
    # its whole size (the first run's record kept the size it had then: review)
    big = tmp_path / "big.log"
    big.write_bytes(b'{"blob":"' + b"x" * 4_600_000)
    assert ingest_paths([str(big)], str(tmp_path / "lake3"), cluster="c").quarantined == 0
    with big.open("ab") as fh:
        fh.write(b"x" * 600_000 + b'"}\n')
    assert ingest_paths([str(big)], str(tmp_path / "lake3"), cluster="c").quarantined == 1
    (record,) = Lake(str(tmp_path / "lake3")).scan_quarantine().collect().rows(named=True)
    assert record["raw_size"] == 5_200_011


def test_a_large_document_without_events_a_page_cut_before_the_next_and_a_split_number():
    """Found by review of the streaming reader: a large document holding no ``events``
    list was dropped without a word (small, it is quarantined); a page cut right before
    the next one lost that next page; a number cut by a block's end read as two values."""
    import io

    from detector.sources.files import StreamedMember, _event_batches, iter_concatenated_json
    from detector.sources.formats import PAGE_START

    def read(text: bytes, chunk: int = 1024) -> tuple[list[str], list[str]]:
        got, said = [], []
        for page, doc, _raw, error in iter_concatenated_json(
            io.BytesIO(text), restart=PAGE_START, chunk_bytes=chunk, stream_member="events"
        ):
            if error is not None:
                said.append(error)
                continue
            events = doc if isinstance(doc, StreamedMember) else doc.get("events")
            if not isinstance(events, (list, StreamedMember)):
                said.append("no events")
                continue
            for batch in _event_batches("f", page, events):
                got.extend(json.loads(m)["auditID"] for m in batch.lines.to_pylist())
                said.extend(r[2] for r in batch.rejected)
        return got, said

    results = json.dumps({"results": [[{"field": "x" * 50}] for _ in range(400)]}).encode()
    assert len(results) > 4096  # larger than a block: streamed, its other members read whole
    assert read(results, 4096) == ([], ["not a filter-log-events page (no events list)"])

    events = [make_event(i) for i in range(40)]
    first = json.dumps(cloudwatch_page(events[:30]))
    cut = first[: first.index(', {"logStreamName"', len(first) // 2)]  # right after an event
    second = json.dumps(cloudwatch_page(events[30:], t0=1795000009000))
    got, said = read((cut + "\n" + second).encode())
    assert got[-10:] == [e["auditID"] for e in events[30:]] and len(said) == 1

    items = [{"n": i} for i in range(40)]
    doc = {"events": [*items[:20], 123456, *items[20:]]}
    text = json.dumps(doc).encode()
    at = text.index(b"123456") + 3  # the block ends inside the number
    member_items = []
    for _n, value, _raw, error in iter_concatenated_json(
        io.BytesIO(text), restart=PAGE_START, chunk_bytes=at, stream_member="events"
    ):
        assert error is None and isinstance(value, StreamedMember)
        member_items = list(value)
        assert value.error is None
    assert member_items == doc["events"]


def test_a_quarantine_write_reads_only_the_files_its_lines_may_repeat(tmp_path, monkeypatch):
    """Every quarantine file ever written was read at each write: a follow export of a
    busy stream's other lines slowed and grew with the lake's history (found by review).
    A write reads the files holding its sources' positions in its range; a re-run still
    stores nothing twice. (The reads are counted by wrapping the lake's own reader.)"""
    from detector.events.normalize import quarantine_frame

    lake_dir = str(tmp_path / "lake")

    def lines(source: str, first: int, n: int) -> pl.DataFrame:
        return quarantine_frame(
            [(source, f"{i:06d}", "bad", b"x") for i in range(first, first + n)]
        )

    writer = Lake(lake_dir)
    for k in range(4):  # four earlier flushes of one stream, one of another
        assert writer.write_quarantine(lines("cw#a", k * 100, 100)) == 100
    assert writer.write_quarantine(lines("cw#b", 0, 100)) == 100

    fresh = Lake(lake_dir)  # a new process: nothing known of the files yet
    read: list[str] = []
    real = fresh.quarantine.read
    monkeypatch.setattr(fresh.quarantine, "read", lambda p, c=None: read.append(p) or real(p, c))
    assert fresh.write_quarantine(lines("cw#a", 400, 100)) == 100
    assert len(read) == 5  # each file once, to learn its ranges
    read.clear()
    assert fresh.write_quarantine(lines("cw#a", 500, 100)) == 100
    assert read == []  # nothing stored meets 000500..000599 of cw#a
    assert fresh.write_quarantine(lines("cw#a", 350, 200)) == 0  # a re-run: all stored
    assert len(read) == 3  # the files of 300-399, 400-499, 500-599 only
    assert Lake(lake_dir).scan_quarantine().collect().height == 700


def test_prefetched_keeps_order_raises_producer_errors_and_stops_early():
    from detector.pipeline.ingest import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk went away")

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    stream = prefetched(endless())
    for item in stream:
        if item == 3:
            break
    stream.close()  # returns once the producer thread has stopped
    assert not [t for t in threading.enumerate() if t.name == "ingest-prefetch" and t.is_alive()]
    assert len(produced) <= 6  # the producer stopped, at most a slot ahead


def test_ordered_map_keeps_input_order_raises_at_the_failing_item_and_stops_early():
    from detector.pipeline.ingest import ordered_map

    # Later items finish first (each waits for the one after it to start): order must hold.
    started = [threading.Event() for _ in range(21)]

    def slow_first(i: int) -> int:
        started[i].set()
        if i % 2 == 0:
            started[i + 1].wait(timeout=30)
        return i * i

    assert list(ordered_map(slow_first, iter(range(20)), workers=2)) == [i * i for i in range(20)]

    def failing(i: int) -> int:
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for item in ordered_map(failing, iter(range(10)), workers=2):
            got.append(item)
    assert got == [0, 1, 2]  # every result before the failing one, none after

    taken = []

    def endless():
        i = 0
        while True:
            taken.append(i)
            yield i
            i += 1

    stream = ordered_map(lambda i: i, endless(), workers=2)
    for item in stream:
        if item == 3:
            break
    stream.close()  # returns once no worker is running
    assert not [t for t in threading.enumerate() if t.name.startswith("ingest-normalize")]
    assert len(taken) <= 6


# ----------------------------------------------------------------- hostile input (issue 10)
def _lake_ids(lake: str) -> list[str]:
    return sorted(Lake(lake).scan_events().collect()["audit_id"])


def _quarantine(lake: str) -> pl.DataFrame:
    return Lake(lake).scan_quarantine().collect().sort("source", "source_position")


@pytest.mark.parametrize("line", [b"x^2 + y^2", b"\x1f\x8b not gzip", b"(\xb5/\xfd zstd?"])
def test_a_line_that_looks_like_compressed_data_is_quarantined_and_the_run_goes_on(tmp_path, line):
    # polars used to take "x^" (0x78 0x5E, a zlib header) at the start of a parse chunk as
    # compressed input: "corrupt deflate stream" aborted the run, other files included. A
    # bad line reaches the start of a chunk wherever it is: the parser bisects around it.
    first = tmp_path / "in" / "a.log"
    first.parent.mkdir()
    events = ndjson([make_event(i) for i in range(5)]).splitlines(keepends=True)
    first.write_bytes(b"".join(events[:2]) + line + b"\n" + b"".join(events[2:]))
    write_ndjson(tmp_path / "in" / "b.log", [make_event(i) for i in range(5, 9)])
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(tmp_path / "in")], lake, cluster="prod")
    assert summary.failed_inputs == []
    assert _lake_ids(lake) == [make_event(i)["auditID"] for i in range(9)]
    bad = _quarantine(lake)
    assert bad.select("source_position", "reason").rows() == [("3", bad["reason"][0])]
    assert bad["reason"][0].startswith(("invalid JSON", "invalid UTF-8"))


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_event(tmp_path):
    events = [make_event(i) for i in range(3)]
    log = tmp_path / "audit.log"
    log.write_bytes(BOM + ndjson(events))
    page = tmp_path / "page.json"
    page.write_bytes(BOM + json.dumps(cloudwatch_page(events), indent=2).encode())
    twice = tmp_path / "two-pages.json"  # two BOM-prefixed pages concatenated (cat a b)
    twice.write_bytes(
        BOM
        + json.dumps(cloudwatch_page(events[:2])).encode()
        + b"\n"
        + BOM
        + json.dumps(cloudwatch_page(events[2:], t0=1795000009000)).encode()
    )
    for path in (log, page, twice):
        got, quarantine = read_events([str(path)])
        assert quarantine.height == 0, quarantine["reason"].to_list()
        assert got["audit_id"].to_list() == [e["auditID"] for e in events]


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_page_or_record_costs_only_itself(tmp_path):
    events = [make_event(i) for i in range(6)]
    pages = tmp_path / "pages.json"
    pages.write_text(
        json.dumps(cloudwatch_page(events[:3]))
        + '\n{"events": '
        + _deep(200_000)
        + "}\n"
        + json.dumps(cloudwatch_page(events[3:], t0=1795000009000))
    )
    fire = tmp_path / "firehose.gz"
    deep_record = '{"messageType": "DATA_MESSAGE", "logEvents": ' + _deep(200_000) + "}"
    fire.write_bytes(
        gzip.decompress(firehose_object(events[:3]))
        + deep_record.encode()
        + gzip.decompress(firehose_object(events[3:], ids=[f"late-{i}" for i in range(3)]))
    )
    fire.write_bytes(gzip.compress(fire.read_bytes()))
    for path in (pages, fire):
        got, quarantine = read_events([str(path)])
        assert got["audit_id"].to_list() == [e["auditID"] for e in events]
        assert quarantine.height == 1
        assert quarantine["reason"][0].endswith("nested too deeply")  # a page: its one item


def test_a_page_larger_than_a_block_is_read_event_by_event_and_damage_costs_only_the_rest():
    """``aws logs filter-log-events`` joins every page into one document by default: one
    larger than the 256 MB a value could take was quarantined whole, 0 events read, exit 0
    (found by review). A document larger than a read block is read event by event; a
    damaged stretch inside it keeps the events before it, and the next page is read. The
    block is made small here (the only change): the real one is 32 MB."""
    import io

    from detector.sources.files import StreamedMember, _event_batches, iter_concatenated_json
    from detector.sources.formats import PAGE_START

    events = [make_event(i) for i in range(300)]
    big = json.dumps(cloudwatch_page(events[:200]), indent=4)  # the CLI's layout
    cut = json.dumps(cloudwatch_page(events[200:250], t0=1795000005000))
    damaged = cut[: len(cut) // 2] + "\x00garbage"
    after = json.dumps(cloudwatch_page(events[250:], t0=1795000009000))
    text = "\n".join([big, damaged, after]).encode()
    assert len(big) > 8 * 4096

    got, said = [], []
    for page, doc, _raw, error in iter_concatenated_json(
        io.BytesIO(text), restart=PAGE_START, chunk_bytes=4096, stream_member="events"
    ):
        if error is not None:
            said.append((page, error))
            continue
        for batch in _event_batches(
            "f", page, doc if isinstance(doc, StreamedMember) else doc["events"]
        ):
            got.extend(json.loads(m)["auditID"] for m in batch.lines.to_pylist())
            said.extend((page, r[2]) for r in batch.rejected)
    kept = [e["auditID"] for e in events[:200]] + [e["auditID"] for e in events[250:]]
    damaged_kept = [a for a in got if a not in kept]
    assert [a for a in got if a in kept] == kept
    assert damaged_kept == [e["auditID"] for e in events[200 : 200 + len(damaged_kept)]]
    assert len(said) == 1 and said[0][0] == 2 and "invalid JSON" in said[0][1]


def test_one_damaged_entry_of_a_document_costs_itself_alone(tmp_path):
    """A changed byte in one entry whose brackets still close (a member without its
    colon) ended the document's events there: 74,999 of 150,000 events of a 190 MB
    `filter-log-events` document were lost, with one quarantine row (found by review).
    That entry alone is quarantined; every other one is read, before and after it."""
    events = [make_event(i) for i in range(40)]
    text = json.dumps(cloudwatch_page(events[:20])) + json.dumps(
        cloudwatch_page(events[20:], t0=1795000005000)
    )
    at = text.index('"logStreamName": ', len(text) // 4)  # in the first page
    text = text[:at] + '"logStreamName" ' + text[at + len('"logStreamName": ') :]
    path = tmp_path / "pages.json"
    path.write_text(text)
    summary = ingest_paths([str(path)], str(tmp_path / "lake"), cluster="c")
    assert (summary.events_written, summary.quarantined) == (39, 1)
    (record,) = Lake(str(tmp_path / "lake")).scan_quarantine().collect().rows(named=True)
    assert record["reason"].startswith("CloudWatch event invalid JSON: Expecting ':'")
    assert record["raw"].startswith('{"logStreamName" ')


def test_a_fifo_in_an_input_folder_is_skipped_with_a_warning(tmp_path, detect):
    folder = tmp_path / "in"
    folder.mkdir()
    write_ndjson(folder / "a.log", [make_event(i) for i in range(4)])
    os.mkfifo(folder / "b.pipe")  # opening it for reading would wait for a writer forever
    lake = str(tmp_path / "lake")
    # A subprocess with a timeout: the bug this guards is a hang, which must fail, not hang.
    done = detect(
        "ingest", str(folder), "--lake", lake, "--cluster", "prod", "--format", "json", timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["inputs"], summary["events_written"]) == (1, 4)
    assert len(summary["warnings"]) == 1 and "b.pipe" in summary["warnings"][0]
    assert "not a regular file" in summary["warnings"][0]


def test_hidden_files_in_an_input_folder_are_counted_in_a_warning(tmp_path, detect):
    """A folder holding only ``.audit.log`` read nothing and said nothing: 0 inputs,
    exit 0. Hidden files are still skipped (editor swap files, a writer's temporary
    files), but the summary says so; named alone, one is read."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_ndjson(folder / ".audit.log", [make_event(i) for i in range(3)])
    write_ndjson(folder / ".audit.log.1", [make_event(i) for i in range(3, 5)])
    lake = str(tmp_path / "lake")
    done = detect("ingest", str(folder), "--lake", lake, "--cluster", "prod", "--format", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["inputs"] == 0
    assert summary["warnings"] == [
        f"{folder}: skipped 2 hidden file(s) (names beginning with '.', such as .audit.log); "
        "name one to read it"
    ]
    named = detect("ingest", str(folder / ".audit.log"), "--lake", lake, "--cluster", "prod")
    assert named.returncode == 0 and "3 new events" in named.stdout, named.stderr


def _complete_lines_before(cut: bytes) -> int:
    """Whole lines in what an independent decoder gets out of a cut gzip stream."""
    out = zlib.decompressobj(31).decompress(cut)
    return out.count(b"\n")


@functools.cache
def _big_gzip() -> tuple[list[str], bytes]:
    """20k events of ~1.1 KB (their auditIDs) and their gzip log: more than one read block,
    so cuts fall inside later blocks too. Made once for the three cuts (a second each)."""
    events = [make_event(i, requestURI=f"/api/v1/namespaces/n{i}/pods") for i in range(20_000)]
    return [e["auditID"] for e in events], ndjson(events, gz=True)


def test_bzip2_and_xz_inputs_are_read_and_other_compressions_refused_by_name(tmp_path):
    """A .bz2 or .xz log was read as text: every line quarantined as garbage, 0 events,
    exit 0 (found by review). bzip2 and xz are read like gzip; zstd, zip, lz4 and 7-Zip,
    which the standard library cannot read, fail the input by name (exit 3)."""
    import bz2
    import lzma

    plain = write_ndjson(tmp_path / "audit.log", [make_event(i) for i in range(5)])
    data = plain.read_bytes()
    (tmp_path / "a.log.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "a.log.xz").write_bytes(lzma.compress(data))
    for name in ("a.log.bz2", "a.log.xz"):
        summary = ingest_paths([str(tmp_path / name)], str(tmp_path / f"lake-{name}"), cluster="c")
        assert (summary.events_written, summary.quarantined) == (5, 0), name
    zstd = tmp_path / "a.log.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 64)
    summary = ingest_paths([str(zstd)], str(tmp_path / "lake-zst"), cluster="c")
    assert summary.events_written == 0 and summary.quarantined == 0
    (failed,) = summary.failed_inputs
    assert "compressed with zstd, which is not read: decompress it first" in failed


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.97])
def test_a_truncated_gzip_keeps_every_complete_line_and_quarantines_the_cut(tmp_path, keep):
    ids, whole = _big_gzip()
    cut = whole[: int(len(whole) * keep)]
    path = tmp_path / "audit.log.gz"
    path.write_bytes(cut)
    complete = _complete_lines_before(cut)
    assert 0 < complete < len(ids)
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(path)], lake, cluster="default")
    assert summary.failed_inputs == []
    assert _lake_ids(lake) == sorted(ids[:complete])
    bad = _quarantine(lake)
    assert bad.height == 1
    assert bad["source_position"][0] == str(complete + 1)
    assert bad["reason"][0].startswith("truncated gzip")


def test_a_small_truncated_gzip_still_gives_its_lines(tmp_path):
    events = [make_event(i) for i in range(40)]
    whole = ndjson(events, gz=True)
    path = tmp_path / "small.gz"
    path.write_bytes(whole[:-30])
    complete = _complete_lines_before(whole[:-30])
    got, quarantine = read_events([str(path)])
    assert got.height == complete > 30
    assert quarantine["reason"].str.starts_with("truncated gzip").all()


def test_a_gzip_damaged_in_the_middle_keeps_what_precedes_the_damage(tmp_path):
    # Log shippers append gzip members; the third one here has a broken header.
    events = [make_event(i) for i in range(900)]
    members = [bytearray(ndjson(events[k : k + 300], gz=True)) for k in (0, 300, 600)]
    members[2][2] = 7  # compression method: 8 is deflate, 7 is nothing
    path = tmp_path / "damaged.gz"
    path.write_bytes(b"".join(members))
    got, quarantine = read_events([str(path)])
    assert got["audit_id"].to_list() == [e["auditID"] for e in events[:600]]
    assert quarantine["reason"].to_list() == [quarantine["reason"][0]]
    assert quarantine["reason"][0].startswith("damaged gzip")


# ----------------------------------------------------------------- which cluster (issue 15)
def _ingest_cli(*args: str):
    from typer.testing import CliRunner

    from detector.cli.app import app

    return CliRunner().invoke(app, ["ingest", *args])


def test_without_cluster_a_plain_log_into_an_empty_lake_is_refused_and_nothing_is_written(
    tmp_path,
):
    path = write_ndjson(tmp_path / "audit.log", [make_event(i) for i in range(5)])
    lake = tmp_path / "lake"
    result = _ingest_cli(str(path), "--lake", str(lake))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: cannot tell which cluster {path} is from: pass --cluster NAME"
    )
    assert result.stdout == ""
    assert not list(lake.rglob("*.parquet"))  # no event, no quarantine row, under no name
    # A name holding a credential is said as the lake's source column keeps it (review).
    named = write_ndjson(tmp_path / "audit?access_token=t0psecret.log", [make_event(0)])
    result = _ingest_cli(str(named), "--lake", str(lake))
    assert result.exit_code == 2 and "t0psecret" not in result.stderr
    assert "access_token=<redacted>" in result.stderr


def test_without_cluster_firehose_records_name_it_by_their_log_group(tmp_path):
    path = tmp_path / "firehose-object"
    path.write_bytes(firehose_object([make_event(i) for i in range(6)]))
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(path)], lake)
    assert summary.events_written == 6
    assert summary.clusters == {"prod-east": "log group"}
    assert Lake(lake).clusters() == ["prod-east"]


@pytest.mark.parametrize("bad", ["..", "a b", "x" * 101, "caf\u00e9"])
def test_a_firehose_record_whose_log_group_names_no_cluster_costs_only_itself(tmp_path, bad):
    # The log group comes from the data: a forged one must not stop the run (every later
    # re-run would stop there too) nor become a path; the record goes to quarantine.
    good = firehose_object([make_event(i) for i in range(4)], per_record=2)
    forged = firehose_object(
        [make_event(i) for i in range(10, 13)], group=f"/aws/eks/{bad}/cluster", per_record=3
    )
    (tmp_path / "a.gz").write_bytes(good)
    (tmp_path / "b.gz").write_bytes(forged)
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(tmp_path / "a.gz"), str(tmp_path / "b.gz")], lake)
    assert summary.events_written == 4 and summary.clusters == {"prod-east": "log group"}
    assert Lake(lake).clusters() == ["prod-east"]
    quarantined = pl.read_parquet(f"{lake}/quarantine/**/*.parquet")
    assert quarantined.height == 1
    assert "names no cluster" in quarantined["reason"][0]
    assert all(audit_id(i) in quarantined["raw"][0] for i in range(10, 13))


def test_without_cluster_an_export_task_prefix_under_aws_eks_names_it(tmp_path):
    # CloudWatch export tasks write <prefix>/<task-id>/<log-stream>/000000.gz.
    obj = tmp_path / "exports/aws/eks/staging/cluster/0f1e-task/kube-apiserver-audit-ab12"
    obj.mkdir(parents=True)
    (obj / "000000.gz").write_bytes(export_task_object([make_event(i) for i in range(4)]))
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(tmp_path / "exports")], lake)
    assert summary.events_written == 4 and summary.clusters == {"staging": "path"}
    assert Lake(lake).clusters() == ["staging"]


def test_cluster_from_path_reads_only_recognisable_parts():
    from detector.sources.files import cluster_from_path

    key = "s3://b/logs/aws/eks/prod/cluster/0f1e-task/kube-apiserver-audit-ab12/000000.gz"
    assert cluster_from_path(key) == "prod"
    assert cluster_from_path("s3://b/archive/cluster=blue/2026/a.log.gz") == "blue"
    assert cluster_from_path("s3://b/cluster=a/aws/eks/b/x.gz") == "b"  # nearest the file
    # a user-chosen prefix, a task id and an EKS stream name say nothing about the cluster
    assert cluster_from_path("s3://b/eks-audit/0f1e-task/kube-apiserver-audit-ab/0.gz") is None
    assert cluster_from_path("/var/log/kubernetes/audit.log") is None
    assert cluster_from_path("s3://b/aws/eks/x.gz") is None  # a file name is not a folder


def test_without_cluster_the_lakes_only_cluster_is_used_and_said(tmp_path, caplog):
    lake = str(tmp_path / "lake")
    ingest_paths([str(write_ndjson(tmp_path / "a.log", [make_event(1)]))], lake, cluster="prod")
    more = write_ndjson(tmp_path / "b.log", [make_event(i) for i in range(2, 5)])
    with caplog.at_level("INFO", logger="detector.pipeline.ingest"):
        summary = ingest_paths([str(more)], lake)
    assert summary.events_written == 3 and summary.clusters == {"prod": "lake"}
    assert any(
        "cluster prod, the only cluster in the lake" in r.getMessage() for r in caplog.records
    )
    last = write_ndjson(tmp_path / "c.log", [make_event(5)])
    result = _ingest_cli(str(last), "--lake", lake)
    assert result.exit_code == 0, result.stderr
    assert "cluster prod: the only cluster in the lake" in result.stdout
    got = Lake(lake).scan_events().collect()
    assert got.height == 5 and got["cluster"].unique().to_list() == ["prod"]


def test_without_cluster_a_lake_of_two_clusters_is_refused_before_writing(tmp_path):
    lake = str(tmp_path / "lake")
    ingest_paths([str(write_ndjson(tmp_path / "a.log", [make_event(1)]))], lake, cluster="prod")
    ingest_paths([str(write_ndjson(tmp_path / "b.log", [make_event(2)]))], lake, cluster="dev")
    before = sorted(p.name for p in (tmp_path / "lake").rglob("*.parquet"))
    more = write_ndjson(tmp_path / "c.log", [make_event(i) for i in range(3, 6)])
    result = _ingest_cli(str(more), "--lake", lake, "--format", "json")
    assert result.exit_code == 2
    assert f"cannot tell which cluster {more} is from: pass --cluster NAME" in result.stderr
    assert "dev, prod" in result.stderr
    assert sorted(p.name for p in (tmp_path / "lake").rglob("*.parquet")) == before


def test_bodies_that_are_not_objects_are_stored_as_json_text(tmp_path):
    """schema.md: request_object and response_object are JSON text any reader parses.
    A string body was stored unquoted (``plain text``, ``{"a":1`` from a string holding
    a cut object), which json.loads and json_extract refuse."""
    events = [
        make_event(1, requestObject="plain text body", responseObject='{"a":1'),
        make_event(2, requestObject=5, responseObject=True),
        make_event(3, requestObject={"spec": {"replicas": 2}}),
    ]
    lake = str(tmp_path / "lake")
    ingest_paths([str(write_ndjson(tmp_path / "a.log", events))], lake, cluster="c")
    df = pl.read_parquet(f"{lake}/events/**/*.parquet").sort("audit_id")
    bodies = [
        [None if t is None else json.loads(t) for t in df[c]]
        for c in ("request_object", "response_object")
    ]
    assert bodies == [
        ["plain text body", 5, {"spec": {"replicas": 2}}],
        ['{"a":1', True, None],
    ]


def test_a_lone_surrogate_escape_becomes_a_replacement_character_not_a_nul(tmp_path):
    """``"al\\ud800ice"`` is valid JSON naming no character: it was stored as ``al\\x00ice``,
    a principal with a NUL byte that C tools cut and no allowlist matches."""
    names = [b"al\\ud800ice", b"lo\\udc00w", b"ok\\ud83d\\ude00", b"esc\\\\ud800"]
    lines = [
        orjson.dumps(make_event(i)).replace(b'"eng-admin"', b'"' + name + b'"')
        for i, name in enumerate(names)
    ]
    path = tmp_path / "a.log"
    path.write_bytes(b"\n".join(lines) + b"\n")
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(path)], lake, cluster="c")
    assert summary.events_written == 4 and summary.quarantined == 0
    df = pl.read_parquet(f"{lake}/events/**/*.parquet").sort("audit_id")
    assert df["user_name"].to_list() == ["al\ufffdice", "lo\ufffdw", "ok\U0001f600", "esc\\ud800"]


def refuse(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operating system refusing to list ``folder`` or reach what is in it.

    Not as root (CI runs as root, and chmod refuses root nothing): there os.scandir and
    os.stat refuse it in this process instead, as the kernel would; no server can stand in
    for a file system's permissions.
    """
    if os.geteuid() != 0:
        folder.chmod(0)  # the caller gives it back its mode, so the folder can be removed
        return
    real_scandir, real_stat = os.scandir, os.stat

    def inside(path: object, *, itself: bool) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False  # a file descriptor
        full = os.path.abspath(os.fspath(path))
        return full.startswith(str(folder) + os.sep) or (itself and full == str(folder))

    def scandir(path: object = "."):
        if inside(path, itself=True):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def stat(path: object, *args: object, **kwargs: object):
        if inside(path, itself=False):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)


def test_a_folder_that_cannot_be_read_fails_the_run_and_the_rest_is_ingested(tmp_path, monkeypatch):
    top = tmp_path / "logs"
    (top / "ok").mkdir(parents=True)
    (top / "locked").mkdir()
    write_ndjson(top / "ok" / "a.log", [make_event(1)])
    write_ndjson(top / "locked" / "b.log", [make_event(2)])
    refuse(top / "locked", monkeypatch)
    try:
        summary = ingest_paths([str(top)], str(tmp_path / "lake"), cluster="prod")
        # The folder's events were not read, and the run says so (exit 3, not 0).
        assert summary.failed_inputs == [
            f"{top / 'locked'}: cannot read the folder: permission denied"
        ]
        assert summary.events_written == 1
        assert Lake(str(tmp_path / "lake")).scan_events().collect()["audit_id"].to_list() == [
            audit_id(1)
        ]
        # A file named inside it exists but cannot be reached: not "no such file" (exit 2).
        named = ingest_paths([str(top / "locked" / "b.log")], str(tmp_path / "lake2"))
        assert named.failed_inputs == [
            f"{top / 'locked' / 'b.log'}: cannot read: permission denied"
        ]
    finally:
        if os.geteuid() != 0:
            (top / "locked").chmod(0o755)


def test_a_file_name_that_is_not_utf8_is_read_and_named_with_its_bytes_escaped(tmp_path):
    # Linux takes any bytes in a name; Python holds the ones that are not UTF-8 as lone
    # surrogates, which no Parquet writer takes: one such file failed the whole folder.
    folder = tmp_path / "logs"
    folder.mkdir()
    write_ndjson(folder / "good.log", [make_event(1)])
    odd = os.path.join(os.fsencode(folder), b"\xff\xfeaudit.log")
    with open(odd, "wb") as fh:
        fh.write(ndjson([make_event(2)]) + b"not json\n")
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(folder)], lake, cluster="prod")
    assert (summary.events_written, summary.quarantined, summary.failed_inputs) == (2, 1, [])
    (source,) = Lake(lake).scan_quarantine().collect()["source"].to_list()
    assert source == f"{folder}/\\xff\\xfeaudit.log"


def test_a_lake_path_that_is_a_file_or_an_input_inside_the_lake_is_a_usage_error(tmp_path):
    from detector.errors import UsageError
    from detector.storage import MissingLake

    log = write_ndjson(tmp_path / "a.log", [make_event(1)])
    not_a_folder = tmp_path / "lake.txt"
    not_a_folder.write_text("")
    with pytest.raises(MissingLake, match="it is a file, not a folder") as err:
        ingest_paths([str(log)], str(not_a_folder), cluster="prod")
    assert err.value.exit_code == 2  # was exit 3: "writer.json: Not a directory"
    not_a_folder.unlink()

    lake = tmp_path / "lake"
    assert ingest_paths([str(log)], str(lake), cluster="prod").events_written == 1
    with pytest.raises(UsageError, match="is inside the lake"):
        ingest_paths([str(lake)], str(lake), cluster="prod")
    # Through a link to the lake's folder, or paths given as a generator, the same.
    (tmp_path / "alias").symlink_to(lake, target_is_directory=True)
    with pytest.raises(UsageError, match="is inside the lake"):
        ingest_paths(iter([str(tmp_path / "alias")]), str(lake), cluster="prod")
    (tmp_path / "alias").unlink()
    # A folder holding the lake is read without the lake's own files (Parquet, state).
    again = ingest_paths([str(tmp_path)], str(lake), cluster="prod")
    assert (again.inputs, again.quarantined) == (1, 0)
    assert any("of the lake" in w and "itself" in w for w in again.warnings)


def test_another_lake_among_the_inputs_is_skipped_and_a_parquet_file_refused_by_name(tmp_path):
    """An old lake copied beside the logs went to quarantine as thousands of lines of its
    Parquet pages and state files, with exit 0 (found by review)."""
    from detector.errors import UsageError

    old = tmp_path / "logs" / "old-lake"
    assert ingest_paths([str(write_ndjson(tmp_path / "o.log", [make_event(9)]))], str(old),
                        cluster="prod").events_written == 1  # fmt: skip
    write_ndjson(tmp_path / "logs" / "audit.log", [make_event(i) for i in range(3)])
    summary = ingest_paths([str(tmp_path / "logs")], str(tmp_path / "lake"), cluster="prod")
    assert (summary.events_written, summary.quarantined, summary.inputs) == (3, 0, 1)
    assert any("old-lake: skipped" in w and "another lake" in w for w in summary.warnings)
    with pytest.raises(UsageError, match="a lake, not audit logs"):
        ingest_paths([str(old)], str(tmp_path / "lake2"), cluster="prod")
    # Folders merely named so are a log collector's: read (they were taken for a lake).
    collector = tmp_path / "collector"
    (collector / "events").mkdir(parents=True)
    write_ndjson(collector / "events" / "audit.log", [make_event(i) for i in range(20, 22)])
    (collector / "_state").mkdir()
    (collector / "_state" / "checkpoint.json").write_text("{}")
    read = ingest_paths([str(collector)], str(tmp_path / "lake4"), cluster="prod")
    assert read.events_written == 2
    # One of its files named on its own: refused by name, not read as lines of garbage.
    (part,) = old.glob("events/**/*.parquet")
    one = ingest_paths([str(part)], str(tmp_path / "lake3"), cluster="prod")
    assert one.quarantined == 0 and "a Parquet file, not an audit log" in one.failed_inputs[0]


def test_a_broken_link_in_a_folder_is_an_input_that_failed_in_every_command(tmp_path):
    # ingest said exit 3 and read the rest; `rules test` (read_events) said exit 2, as if
    # the user had mistyped the path.
    from detector.sources.files import InputError, InputNotFound

    folder = tmp_path / "logs"
    folder.mkdir()
    write_ndjson(folder / "good.log", [make_event(1)])
    (folder / "rotated.log").symlink_to(folder / "audit-2.log")  # rotated away
    summary = ingest_paths([str(folder)], str(tmp_path / "lake"), cluster="prod")
    assert summary.events_written == 1
    assert summary.failed_inputs == [
        f"{folder / 'rotated.log'}: cannot open: no such file (a broken link, or removed)"
    ]
    with pytest.raises(InputError) as err:
        read_events([str(folder)])
    assert not isinstance(err.value, InputNotFound) and err.value.exit_code == 3


def test_a_link_in_a_folder_to_a_file_outside_it_is_not_read_unless_named(tmp_path):
    # A link planted in a log folder (to /etc/shadow, a credentials file) put that file's
    # lines in quarantine, where no redaction pattern knows a password hash.
    folder = tmp_path / "logs"
    folder.mkdir()
    write_ndjson(folder / "audit-1.log", [make_event(1)])
    (folder / "current.log").symlink_to("audit-1.log")  # inside: read (the same events)
    outside = tmp_path / "shadow"
    outside.write_text("root:$6$QQLINKMARKQQ:20228:0:99999:7:::\n")
    (folder / "shadow.log").symlink_to(outside)
    lake = str(tmp_path / "lake")
    summary = ingest_paths([str(folder)], lake, cluster="prod")
    assert (summary.inputs, summary.events_written, summary.quarantined) == (2, 1, 0)
    assert any("1 link(s) to files outside the folder" in w for w in summary.warnings)
    # A glob over the folder is the folder too.
    globbed = ingest_paths([str(folder / "*.log")], lake, cluster="prod")
    assert (globbed.inputs, globbed.quarantined) == (2, 0)
    named = ingest_paths([str(folder / "shadow.log")], lake, cluster="prod")
    assert named.quarantined == 1  # named on its own, it is read, as any file named


def test_a_nul_byte_in_an_input_path_names_nothing(tmp_path):
    from detector.sources.files import InputNotFound, expand_inputs

    with pytest.raises(InputNotFound):  # not "unexpected ValueError: embedded null byte"
        expand_inputs([str(tmp_path / "a\x00b.log")])


def test_input_of_tiny_garbage_lines_is_normalized_and_written_a_slice_at_a_time(
    tmp_path, monkeypatch
):
    """3M lines of ``{}`` (9 MB) took 5.5 GB: a 32 MB read block of tiny lines was
    normalized whole, and its quarantine held until the end (found by review). Slices are
    bounded in lines, and held quarantine counts towards a flush; the good events after
    the garbage are all written."""
    from detector.pipeline import ingest as ingest_mod
    from detector.sources import files as files_mod

    monkeypatch.setattr(files_mod, "MAX_BATCH_LINES", 1_000)
    monkeypatch.setattr(ingest_mod, "MAX_BATCH_LINES", 1_000)
    seen: list[int] = []
    merged = ingest_mod.merge_batches
    monkeypatch.setattr(ingest_mod, "merge_batches", lambda bs: seen.append(
        sum(len(b.lines) for b in bs)) or merged(bs))  # fmt: skip
    path = tmp_path / "garbage.log"
    path.write_bytes(
        b"{}\n" * 5_000 + b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(3))
    )
    summary = ingest_paths([str(path)], str(tmp_path / "lake"), cluster="c", flush_rows=2_000)
    assert (summary.events_written, summary.quarantined) == (3, 5_000)
    assert max(seen) <= 1_000 and sum(seen) == 5_003
    files = list((tmp_path / "lake" / "quarantine").rglob("*.parquet"))
    assert len(files) >= 2  # flushed as it went, not held to the end
    assert pl.read_parquet(files).height == 5_000


@pytest.mark.parametrize("lines", [10, 200])
def test_a_gzip_whose_checksum_is_wrong_keeps_every_line_its_data_holds(tmp_path, lines):
    """Only the CRC trailer damaged: every byte of data decompresses, but the step that
    reached the trailer lost its output with the error, and the last lines of the file
    went to neither the lake nor the quarantine (found by review)."""
    packed = bytearray(
        gzip.compress(b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(lines)))
    )
    packed[-6] ^= 0xFF  # in the CRC-32
    path = tmp_path / "audit.log.gz"
    path.write_bytes(bytes(packed))
    summary = ingest_paths([str(path)], str(tmp_path / "lake"), cluster="c")
    assert summary.events_written == lines
    (reason,) = summary.quarantine_reasons
    assert reason == "damaged gzip"  # the family; the lake row says "incorrect data check"


@pytest.mark.parametrize("kind", ["bz2", "xz"])
def test_a_cut_bzip2_or_xz_file_keeps_the_lines_before_the_cut(tmp_path, kind):
    """A cut .bz2 or .xz raised at the block holding the cut, and the whole input was lost
    with exit 3 (found by review): now the lines decoded before the cut are written and
    the cut is quarantined, as for gzip."""
    data = b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(3_000))
    packed = bz2.compress(data, compresslevel=1) if kind == "bz2" else lzma.compress(data)
    path = tmp_path / f"audit.log.{kind}"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    summary = ingest_paths([str(path)], str(tmp_path / "lake"), cluster="c")
    assert summary.failed_inputs == []
    assert 0 < summary.events_written < 3_000
    assert summary.quarantined == 1  # the line the cut went through, with the reason
    assert summary.events_written + summary.quarantined <= 3_000
    # Whole, and as two streams back to back (pbzip2, xz -T): every line.
    more = b"".join(orjson.dumps(make_event(i)) + b"\n" for i in range(3_000, 3_010))
    path.write_bytes(packed + (bz2.compress if kind == "bz2" else lzma.compress)(more))
    again = ingest_paths([str(path)], str(tmp_path / "lake2"), cluster="c")
    assert (again.events_written, again.quarantined) == (3_010, 0)


def test_one_bad_event_on_a_cloudwatch_page_costs_only_itself(tmp_path):
    """One entry nested deeper than the decoder goes, or one raw NUL in one message
    (invalid JSON, as any control character in a string): the whole page went to
    quarantine, its neighbours with it (found by review)."""
    events = [make_event(i) for i in range(6)]
    page = cloudwatch_page(events)
    text = orjson.dumps(page).decode()
    deep = '{"eventId": "deep", "message": ' + "[" * 3_000 + "]" * 3_000 + "}, "
    nested = text.replace('"events":[', '"events":[' + deep, 1)
    nul = text.replace('"events":[', '"events":[{"eventId": "nul", "message": "a\x00b"}, ', 1)
    for name, doc in (("nested", nested), ("nul", nul)):
        path = tmp_path / f"{name}.json"
        path.write_text(doc)
        got, quarantine = read_events([str(path)])
        assert sorted(got["audit_id"].to_list()) == sorted(e["auditID"] for e in events), name
        assert quarantine.height == 1, name
    assert quarantine["source_position"][0] == "nul"  # judged as the message it is


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_line_of_exactly_the_limit_is_read_and_one_byte_more_is_not(tmp_path, newline):
    """The limit counts the line without its break: a line of exactly 4 MiB, or one
    ending in CRLF, was refused by its newline or CR (found by review)."""
    from detector.events.normalize import MAX_LINE_BYTES

    def line(i: int, size: int) -> bytes:
        ev = make_event(i)
        ev["userAgent"] = ""
        ev["userAgent"] = "u" * (size - len(orjson.dumps(ev)))
        out = orjson.dumps(ev)
        assert len(out) == size
        return out + newline

    path = tmp_path / "audit.log"
    path.write_bytes(line(1, MAX_LINE_BYTES) + line(2, MAX_LINE_BYTES + 1) + line(3, 1000))
    got, quarantine = read_events([str(path)])
    assert got.height == 2
    assert quarantine["reason"].to_list() == [
        f"line too long: {MAX_LINE_BYTES + 1} bytes (limit {MAX_LINE_BYTES})"
    ]


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz"])
def test_a_compression_bomb_is_decompressed_a_bounded_step_at_a_time(tmp_path, kind):
    """A read block of a gzip of zeros expanded 1,000-fold at once (a 1 GB-of-zeros file,
    970 KB, peaked at 976 MB; found by review): what is held beyond a read is at most a
    step's output, and every byte still comes out."""
    from detector.sources.files import open_input

    data = b"\0" * 64 * 2**20
    pack = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind]
    path = tmp_path / f"zeros.{kind}"
    path.write_bytes(pack(data))
    stream = open_input(str(path))
    total, held = 0, 0
    while chunk := stream.read(2**20):
        total += len(chunk)
        held = max(held, stream._out_len)
    assert total == len(data) and stream.damage is None
    assert held <= stream.STEP_OUT
