"""The shipped IAM policy, enforced: what the tool does on S3 with exactly those rights.

A moto server of its own (a subprocess: IAM enforcement is a server-wide setting) starts
with ``INITIAL_NO_AUTH_ACTION_COUNT``: the first requests, which create the bucket and two
IAM users, pass unauthenticated; every request after them is checked against the policy of
the user who signs it. One user gets ``pipelines/iam/detector-policy.json`` as shipped,
the other the same policy without its ``s3:DeleteObject`` statement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conftest import free_port, run_detect
from factories import ndjson
from test_rules_helpers import ev

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "pipelines" / "iam" / "detector-policy.json"
BUCKET, PREFIX = "lake-bucket", "prod"
LAKE = f"s3://{BUCKET}/{PREFIX}"
#: create_bucket, then per user create_user, put_user_policy, create_access_key
SETUP_ACTIONS = 1 + 2 * 3


def policy(*, deletes: bool) -> str:
    text = POLICY.read_text().replace("LAKE_BUCKET", BUCKET).replace("LAKE_PREFIX", PREFIX)
    doc = json.loads(text)
    if not deletes:
        doc["Statement"] = [s for s in doc["Statement"] if s["Action"] != "s3:DeleteObject"]
    return json.dumps(doc)


@pytest.fixture(scope="module")
def enforcing() -> Iterator[dict[str, dict[str, str]]]:
    """(user -> env for `detect`) against a moto server enforcing IAM after the setup."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_ACTIONS)}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:  # werkzeug says when it listens
            if "Running on" in line:
                break
        endpoint = f"http://127.0.0.1:{port}"
        admin = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
        iam = boto3.client("iam", **admin)
        users = {}
        for name, deletes in (("shipped", True), ("no-delete", False)):
            iam.create_user(UserName=name)
            iam.put_user_policy(
                UserName=name, PolicyName="detector", PolicyDocument=policy(deletes=deletes)
            )
            key = iam.create_access_key(UserName=name)["AccessKey"]
            users[name] = {
                "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_REGION": "us-east-1",
            }
        yield users
    finally:
        server.terminate()
        server.communicate(timeout=30)


def s3_as(env: dict[str, str]):
    """An S3 client signing as ``env``'s user."""
    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def data_files(env: dict[str, str]) -> dict[str, list[str]]:
    """Every object under the lake's events/, by folder (signed as ``env``'s user)."""
    out: dict[str, list[str]] = {}
    pages = s3_as(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
    for page in pages:
        for obj in page.get("Contents", []):
            folder, _, name = obj["Key"].rpartition("/")
            out.setdefault(folder, []).append(name)
    return {k: sorted(v) for k, v in out.items() if "/events/" in f"/{k}/"}


def test_compaction_needs_deletes_and_without_them_merges_nothing(enforcing, tmp_path):
    """Under the shipped policy `detect compact` merges an hour's files and, after the
    grace, deletes the merged ones. Without s3:DeleteObject it stops before merging, exit 3,
    naming the permission: merged inputs it could never delete would be counted twice, for
    good, by every reader outside the tool (s3fs's bulk delete had reported the refused
    deletes as done, and compaction said so)."""
    shipped, no_delete = enforcing["shipped"], enforcing["no-delete"]
    for i in range(2):  # two ingests of one hour: two files in its partition
        log = tmp_path / f"audit-{i}.log"
        log.write_bytes(
            ndjson([ev("get", "pods", ns="shop", audit_id=f"a{i}-{n}") for n in range(3)])
        )
        done = run_detect("ingest", str(log), "--lake", LAKE, "--cluster", "prod", env=shipped)
        assert done.returncode == 0, done.stderr
    before = data_files(shipped)
    assert [len(v) for v in before.values()] == [2]

    refused = run_detect("compact", "--lake", LAKE, "--grace", "0s", env=no_delete)
    assert refused.returncode == 3, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "s3:DeleteObject" in line and "cannot delete" in line
    probe = f"{PREFIX}/events"
    assert data_files(shipped) == {**before, probe: ["_delete-check"]}  # nothing merged

    merged = run_detect("compact", "--lake", LAKE, "--grace", "0s", env=shipped)
    assert merged.returncode == 0, merged.stderr
    purged = run_detect("compact", "--lake", LAKE, "--grace", "0s", "--format", "json", env=shipped)
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout)["purged"] == 2
    after = data_files(shipped)
    assert [len(v) for v in after.values()] == [1]  # the merged file; inputs and marker gone
    assert probe not in after


def _signed_as(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process's S3 requests signed as ``env``'s user from now on. The tool keeps
    one s3fs filesystem per endpoint (and s3fs one per set of arguments), both made with
    the credentials of the moment: dropped, so the next request builds them anew."""
    import s3fs

    from detector import storage

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    storage._s3fs.cache_clear()
    s3fs.S3FileSystem.clear_instance_cache()


def _model_versions(env: dict[str, str]) -> set[str]:
    """The model versions whose files are in the model store (signed as ``env``'s user)."""
    listed = s3_as(env).list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/_models/")
    names = [o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])]
    return {n.split("-")[1].split(".")[0] for n in names if n.startswith(("model-", "baseline-"))}


def test_training_without_deletes_saves_the_model_and_keeps_old_files_with_a_warning(
    enforcing, monkeypatch, caplog
):
    """A nightly retrain under a role without s3:DeleteObject on the model store: each
    model is saved and loads, and the files of models it replaced stay, with a warning
    naming the permission (a clean-up it cannot do must not fail the training). With the
    shipped policy the same training removes them, silently.

    In process, so that the age after which old files go (PRUNE_AFTER, 30 minutes, which
    a test cannot wait for) can be set to zero; the S3 requests go to the IAM-enforcing
    moto server all the same."""
    import logging
    from datetime import timedelta

    import numpy as np

    from detector import features as F
    from detector.events.normalize import events_from_dicts
    from detector.features.fit import fit_baseline
    from detector.model import storage
    from detector.model.estimator import AuditIsolationForest
    from detector.model.storage import Model

    monkeypatch.setattr(storage, "PRUNE_AFTER", timedelta(0))
    events = events_from_dicts([ev("get", "pods", ns="shop", audit_id=f"m{n}") for n in range(5)])
    baseline, _ = fit_baseline(F.window_counts(events.lazy()).collect())
    X = np.random.default_rng(0).random((64, len(F.MODEL_INPUTS)))

    def model(seed: int) -> Model:
        est = AuditIsolationForest(n_estimators=5, random_state=seed, log_transform=False)
        return Model(scorer=est.fit(X).scorer_, baseline=baseline, window=F.DEFAULT_WINDOW)

    store = f"{LAKE}/_models"
    logger = logging.getLogger(storage.__name__)
    logger.addHandler(caplog.handler)  # whatever another test set 'detector' to propagate
    monkeypatch.setattr(logger, "level", logging.WARNING)
    try:
        _signed_as(monkeypatch, enforcing["no-delete"])
        kept = [model(seed).save(store).version for seed in (1, 2, 3)]
        assert Model.load(store).version == kept[-1]
        assert _model_versions(enforcing["shipped"]) == set(kept)  # nothing removed
        # (a set: the record may reach caplog's handler both here and through the root)
        warned = {r.getMessage() for r in caplog.records if r.name == storage.__name__}
        assert len(warned) == 1  # the third save was the first with files to remove
        (line,) = warned
        assert "s3:DeleteObject" in line and "kept" in line

        caplog.clear()
        _signed_as(monkeypatch, enforcing["shipped"])
        latest = model(4).save(store).version
        assert Model.load(store).version == latest
        # the replaced model (kept[-1]) stays for a reader that loaded its card just before
        assert _model_versions(enforcing["shipped"]) == {kept[-1], latest}
        assert not [r for r in caplog.records if r.name == storage.__name__]
    finally:
        logger.removeHandler(caplog.handler)
        _signed_as(monkeypatch, {})
