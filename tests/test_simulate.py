"""The simulator writes audit.k8s.io/v1 traffic in four input formats, with honest labels.

Everything here runs on real files in ``tmp_path``: what ingest reads is what is tested.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from detector.simulate import (
    FORMATS,
    SCENARIOS,
    default_end,
    principal_of,
    simulate,
    write_simulation,
)

END = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _ts(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _read_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three hours at 1 event/s, all formats (small enough to write in well under a second)."""
    out = tmp_path_factory.mktemp("sim")
    summary = write_simulation(out, days=0.125, rate=1.0, seed=7, end=END, formats=FORMATS)
    lines = _read_lines(out / "audit.log")
    return {
        "out": out,
        "summary": summary,
        "lines": lines,
        "events": [orjson.loads(line) for line in lines],
        "labels": orjson.loads((out / "labels.json").read_bytes()),
    }


def test_same_seed_same_bytes_in_every_format(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"days": 0.05, "rate": 0.5, "end": END, "formats": FORMATS}
    a = write_simulation(tmp_path / "a", seed=3, **kw)
    b = write_simulation(tmp_path / "b", seed=3, **kw)
    write_simulation(tmp_path / "c", seed=4, **kw)
    rel_a = sorted(p.relative_to(tmp_path / "a") for p in a.files)
    assert rel_a == sorted(p.relative_to(tmp_path / "b") for p in b.files)
    for rel in rel_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/audit.log").read_bytes() != (tmp_path / "c/audit.log").read_bytes()
    assert (tmp_path / "a/labels.json").read_bytes() != (tmp_path / "c/labels.json").read_bytes()
    assert a.events == b.events > 1000


#: sha256 of a small all-format simulation, recorded from the simulator before it was split
#: into modules (detector/simulate/traffic.py at the wave-one merge). A refactor must leave
#: these unchanged; a deliberate change to the traffic updates them, and data/samples too.
PINNED_FILES_SHA256 = "2421c672e76e1d6804f6e8b7bbf82b1e1cf6c1f2f2175d6dd64ddae6b5fd5370"
PINNED_LABELS_SHA256 = "6df03f56e393e9df34b885bfc7169cab3ade752da4d9337520cf78bd930bb689"


def test_output_bytes_are_pinned(tmp_path: Path) -> None:
    """Same seed and arguments give the very bytes they gave before, in all four formats."""
    s = write_simulation(tmp_path, days=0.05, rate=0.5, seed=3, end=END, formats=FORMATS)
    digest = hashlib.sha256()
    for path in sorted(s.files, key=lambda p: p.relative_to(tmp_path).as_posix()):
        rel = path.relative_to(tmp_path).as_posix().encode()
        digest.update(rel + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    labels = hashlib.sha256((tmp_path / "labels.json").read_bytes()).hexdigest()
    assert (len(s.files), s.events) == (20, 2227)
    assert labels == PINNED_LABELS_SHA256
    assert digest.hexdigest() == PINNED_FILES_SHA256


def test_iterating_twice_gives_the_same_events() -> None:
    sim = simulate(start=END - timedelta(hours=1, minutes=10), end=END, rate=1.0, seed=5)
    first = [orjson.dumps(e) for e in sim.iter_events()]
    assert first == list(sim.iter_lines())
    assert len(first) > 3000


def test_gzip_compresses_the_plain_text_formats(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"days": 0.05, "rate": 0.5, "seed": 1, "end": END}
    kw["formats"] = ["ndjson", "cloudwatch-json"]
    write_simulation(tmp_path / "plain", **kw)
    s = write_simulation(tmp_path / "gz", gzip=True, **kw)
    assert (tmp_path / "gz/audit.log.gz") in s.files
    assert not (tmp_path / "gz/audit.log").exists()
    assert _read_lines(tmp_path / "gz/audit.log.gz") == _read_lines(tmp_path / "plain/audit.log")
    page = tmp_path / "gz/cloudwatch/page-0001.json.gz"
    assert page in s.files
    plain = (tmp_path / "plain/cloudwatch/page-0001.json").read_bytes()
    assert gzip.decompress(page.read_bytes()) == plain


def test_every_scenario_is_labeled_with_ids_that_exist(sample: dict[str, Any]) -> None:
    labels = sample["labels"]
    assert labels["seed"] == 7
    assert labels["cluster"] == "demo"
    assert labels["end"] == "2026-11-27T12:00:00.000000Z"
    assert labels["start"] == "2026-11-27T09:00:00.000000Z"
    scenarios = labels["scenarios"]
    assert [s["scenario"] for s in scenarios] == list(SCENARIOS)
    assert len({s["id"] for s in scenarios}) == len(scenarios)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in sample["events"]:
        by_id.setdefault(e["auditID"], []).append(e)
    for s in scenarios:
        assert s["tactic"] and re.match(r"^T\d{4}(\.\d{3})?$", s["technique"]), s
        assert s["audit_ids"], s["id"]
        missing = [i for i in s["audit_ids"] if i not in by_id]
        assert not missing, (s["id"], missing)
        events = [e for i in s["audit_ids"] for e in by_id[i]]
        assert len(events) == s["events"]
        # The labeled principal is the one the schema derives from the events' user.
        principals = {principal_of(e["user"]) for e in events if e["user"]}
        assert principals == {s["principal"]}, s["id"]
        assert min(e["requestReceivedTimestamp"] for e in events) == s["start"]
        assert max(e["stageTimestamp"] for e in events) == s["end"]
        assert labels["start"] <= s["start"] < s["end"] < labels["end"]


def test_events_are_time_ordered_inside_the_range(sample: dict[str, Any]) -> None:
    events = sample["events"]
    stamps = [e["stageTimestamp"] for e in events]
    assert stamps == sorted(stamps)
    start, end = sample["labels"]["start"], sample["labels"]["end"]
    assert start <= stamps[0] and stamps[-1] < end
    assert all(start <= e["requestReceivedTimestamp"] <= e["stageTimestamp"] for e in events)
    hours = Counter(s[:13] for s in stamps)
    assert sorted(hours) == ["2026-11-27T09", "2026-11-27T10", "2026-11-27T11"]
    # The rate is an average over the range; controllers make it steady hour to hour.
    assert 0.75 * 3 * 3600 < len(events) < 1.25 * 3 * 3600


def test_every_event_has_the_v1_fields(sample: dict[str, Any]) -> None:
    for e in sample["events"]:
        assert e["kind"] == "Event" and e["apiVersion"] == "audit.k8s.io/v1"
        assert e["level"] in ("Metadata", "Request", "RequestResponse")
        assert UUID.match(e["auditID"]), e["auditID"]
        assert e["stage"] in ("ResponseStarted", "ResponseComplete")
        assert e["requestURI"].startswith("/")
        assert e["verb"]
        assert isinstance(e["sourceIPs"], list) and e["sourceIPs"]
        assert e["userAgent"]
        assert TS.match(e["requestReceivedTimestamp"]) and TS.match(e["stageTimestamp"])
        status = e["responseStatus"]
        assert status["metadata"] == {} and isinstance(status["code"], int)
        if status["code"] >= 400:
            assert status["status"] == "Failure" and status["reason"]
        if status["code"] == 401:
            assert e["user"] == {} and "annotations" not in e
        else:
            assert e["user"]["username"] and e["user"]["groups"]
            decision = e["annotations"]["authorization.k8s.io/decision"]
            assert decision == ("forbid" if status["code"] == 403 else "allow")
        if "objectRef" in e:
            assert e["objectRef"]["resource"] and e["objectRef"]["apiVersion"]
        if "requestObject" in e or "responseObject" in e:
            assert e["level"] != "Metadata"
        if "responseObject" in e:
            assert e["level"] == "RequestResponse"


def test_long_running_requests_log_two_stages(sample: dict[str, Any]) -> None:
    stages: dict[str, list[str]] = {}
    verbs: dict[str, str] = {}
    for e in sample["events"]:
        stages.setdefault(e["auditID"], []).append(e["stage"])
        verbs[e["auditID"]] = e["verb"]
    keys = Counter((e["auditID"], e["stage"]) for e in sample["events"])
    assert max(keys.values()) == 1  # (auditID, stage) is unique
    watches = [i for i, v in verbs.items() if v == "watch"]
    assert len(watches) > 100
    for i in watches:
        # Started first; Complete follows unless the watch was still open at the end.
        assert stages[i] in (["ResponseStarted", "ResponseComplete"], ["ResponseStarted"])
    assert sum(stages[i] == ["ResponseStarted", "ResponseComplete"] for i in watches) > 50
    for e in sample["events"]:
        if e["responseStatus"]["code"] == 101:
            assert e["objectRef"]["subresource"] in ("exec", "attach", "portforward")
        if e["verb"] not in ("watch", "create") and e["responseStatus"]["code"] != 401:
            assert stages[e["auditID"]] == ["ResponseComplete"]


def test_benign_traffic_mix(sample: dict[str, Any]) -> None:
    events = sample["events"]
    attack_ids = {i for s in sample["labels"]["scenarios"] for i in s["audit_ids"]}
    benign = [e for e in events if e["auditID"] not in attack_ids]
    names = Counter(e["user"]["username"] for e in benign)
    nodes = sum(n for u, n in names.items() if u.startswith("system:node:"))
    assert nodes > 0.3 * len(benign)  # the bulk is kubelets and controllers
    for who in (
        "system:kube-controller-manager",
        "system:kube-scheduler",
        "eks:node-manager",
        "system:serviceaccount:argocd:argocd-application-controller",
        "system:serviceaccount:monitoring:prometheus-k8s",
        "eng-admin",
    ):
        assert names[who] > 0, who
    humans = [e for e in benign if e["userAgent"].startswith(("kubectl/v1.31", "k9s", "Lens"))]
    assert 0 < len(humans) < 0.15 * len(benign)
    # Several people share the mapped username "eng-admin"; the session tells them apart.
    sessions = {
        e["user"]["extra"]["sessionName"][0]
        for e in events
        if e["user"].get("username") == "eng-admin"
    }
    assert len(sessions) >= 2
    assert all(
        ip.startswith(("203.0.113.", "198.51.100.")) for e in humans for ip in e["sourceIPs"]
    )
    codes = Counter(e["responseStatus"]["code"] for e in benign)
    assert codes[200] > 0.8 * len(benign) and codes[201] > 0
    # Bodies that downstream redaction must handle.
    kinds = {(e.get("requestObject") or {}).get("kind") for e in events if "requestObject" in e} | {
        (e.get("responseObject") or {}).get("kind") for e in events if "responseObject" in e
    }
    assert {"TokenRequest", "Pod", "ConfigMap"} <= kinds
    tokens = [
        e["responseObject"]["status"]["token"]
        for e in events
        if (e.get("responseObject") or {}).get("kind") == "TokenRequest"
    ]
    assert tokens and all(t.startswith("eyJ") and t.count(".") == 2 for t in tokens)


def _scenario_events(sample: dict[str, Any], name: str) -> list[dict[str, Any]]:
    (s,) = [s for s in sample["labels"]["scenarios"] if s["scenario"] == name]
    ids = set(s["audit_ids"])
    return [e for e in sample["events"] if e["auditID"] in ids]


def test_scenarios_look_like_what_they_are(sample: dict[str, Any]) -> None:
    ev = lambda name: _scenario_events(sample, name)  # noqa: E731

    stolen = ev("stolen_sa_token")
    assert {e["user"]["username"] for e in stolen} == {
        "system:serviceaccount:payments:payments-api"
    }
    assert all(e["sourceIPs"][0].startswith("185.220.101.") for e in stolen)
    secret_ns = {e["objectRef"].get("namespace") for e in stolen if "objectRef" in e}
    assert len(secret_ns) >= 8
    assert Counter(e["responseStatus"]["code"] for e in stolen)[403] >= 5

    (crb,) = [e for e in ev("cluster_admin_binding") if e["verb"] == "create"]
    assert crb["objectRef"]["resource"] == "clusterrolebindings"
    assert crb["requestObject"]["roleRef"]["name"] == "cluster-admin"
    assert crb["requestObject"]["subjects"][0]["name"] == crb["user"]["username"]
    # A create names the collection in its URI; objectRef carries the new object's name.
    assert crb["objectRef"]["name"] == crb["requestObject"]["metadata"]["name"]
    assert crb["requestURI"].startswith("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings?")

    (edit,) = [e for e in ev("aws_auth_edit") if e["verb"] in ("update", "patch")]
    assert edit["objectRef"]["name"] == "aws-auth"
    assert edit["objectRef"]["namespace"] == "kube-system"
    assert "system:masters" in edit["requestObject"]["data"]["mapRoles"]

    anon = ev("anonymous_probing")
    codes = Counter(e["responseStatus"]["code"] for e in anon)
    assert codes[401] >= 1 and codes[403] >= 5
    assert {e["requestURI"] for e in anon if e["responseStatus"]["code"] == 200} >= {"/version"}
    assert all(e["user"].get("username", "system:anonymous") == "system:anonymous" for e in anon)

    (ex,) = [e for e in ev("exec_kube_system") if e["stage"] == "ResponseStarted"]
    assert (
        ex["objectRef"]["subresource"] == "exec" and ex["objectRef"]["namespace"] == "kube-system"
    )
    assert ex["responseStatus"]["code"] == 101 and "command=sh" in ex["requestURI"]

    (hook,) = [e for e in ev("webhook_registration") if e["verb"] == "create"]
    assert hook["objectRef"]["resource"] == "mutatingwebhookconfigurations"
    assert hook["objectRef"]["apiGroup"] == "admissionregistration.k8s.io"

    enum = ev("permission_enumeration")
    assert Counter(e["responseStatus"]["code"] for e in enum)[403] >= 20
    assert any(
        e["objectRef"]["resource"] == "selfsubjectrulesreviews" for e in enum if "objectRef" in e
    )
    span = _ts(enum[-1]["stageTimestamp"]) - _ts(enum[0]["requestReceivedTimestamp"])
    assert span < timedelta(minutes=10)

    (pod,) = [
        e for e in ev("privileged_workload") if e["verb"] == "create" and "requestObject" in e
    ]
    spec = pod["requestObject"]["spec"]
    assert spec["hostPID"] and spec["hostNetwork"]
    assert spec["containers"][0]["securityContext"]["privileged"] is True
    assert {v["hostPath"]["path"] for v in spec["volumes"]} >= {"/", "/var/run/docker.sock"}

    (tok,) = [e for e in ev("token_for_privileged_sa") if e["verb"] == "create"]
    assert tok["objectRef"]["subresource"] == "token"
    assert tok["objectRef"]["namespace"] == "kube-system"
    assert tok["responseObject"]["status"]["token"].startswith("eyJ")
    assert not tok["user"]["username"].startswith("system:")

    dele = ev("delete_events")
    assert any(
        e["verb"] == "deletecollection" and e["objectRef"]["resource"] == "events" for e in dele
    )


def test_cloudwatch_pages(sample: dict[str, Any]) -> None:
    pages = sorted((sample["out"] / "cloudwatch").glob("page-*.json"))
    assert len(pages) >= 2  # ~10.8k events, 10,000 per page
    streams = set(sample["labels"]["log_streams"])
    messages: list[bytes] = []
    for i, page in enumerate(pages):
        doc = json.loads(page.read_text())
        assert len(doc["events"]) <= 10_000
        assert ("nextToken" in doc) == (i < len(pages) - 1)
        assert {s["logStreamName"] for s in doc["searchedLogStreams"]} == streams
        for ev in doc["events"]:
            assert ev["logStreamName"] in streams
            assert re.match(r"^kube-apiserver-audit-[0-9a-f]{32}$", ev["logStreamName"])
            assert re.match(r"^\d{56}$", ev["eventId"])
            assert ev["ingestionTime"] >= ev["timestamp"]
            message = json.loads(ev["message"])
            assert ev["timestamp"] == int(_ts(message["stageTimestamp"]).timestamp() * 1000)
            messages.append(ev["message"].encode())
    assert messages == sample["lines"]


def test_export_task_objects(sample: dict[str, Any]) -> None:
    files = sorted((sample["out"] / "export").glob("*/kube-apiserver-audit-*/*.gz"))
    assert files and all(re.match(r"^\d{6}\.gz$", f.name) for f in files)
    assert {f.parent.name for f in files} == set(sample["labels"]["log_streams"])
    lines: list[bytes] = []
    for f in files:
        previous = ""
        for raw in _read_lines(f):
            stamp, _, message = raw.partition(b" ")
            assert re.match(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", stamp), stamp
            assert stamp.decode() >= previous  # time-ordered within a stream
            previous = stamp.decode()
            assert json.loads(message)["stageTimestamp"][:23] == stamp.decode()[:23]
            lines.append(message)
    assert sorted(lines) == sorted(sample["lines"])


def test_firehose_objects(sample: dict[str, Any]) -> None:
    files = sorted((sample["out"] / "firehose").rglob("*.gz"))
    assert len(files) >= 30  # a 300 s buffer over three hours
    for f in files:
        assert re.search(
            r"firehose/2026/11/27/\d\d/eks-audit-demo-1-2026-11-27-[\d-]+-[0-9a-f-]{36}\.gz$",
            f.as_posix(),
        )
    decoder = json.JSONDecoder()
    messages: list[bytes] = []
    control = 0
    for n, f in enumerate(files):
        text = gzip.decompress(f.read_bytes()).decode()
        assert "}\n{" not in text and not text.endswith("\n")  # records are back to back
        pos = 0
        first = True
        while pos < len(text):
            record, pos = decoder.raw_decode(text, pos)
            if record["messageType"] == "CONTROL_MESSAGE":
                assert n == 0 and first
                control += 1
            else:
                assert record["messageType"] == "DATA_MESSAGE"
                assert record["owner"] == "111122223333"
                assert record["logGroup"] == "/aws/eks/demo/cluster"
                assert record["logStream"] in sample["labels"]["log_streams"]
                assert record["subscriptionFilters"]
                for ev in record["logEvents"]:
                    assert ev["id"] and isinstance(ev["timestamp"], int)
                    messages.append(ev["message"].encode())
            first = False
    assert control == 1
    assert sorted(messages) == sorted(sample["lines"])


def test_batches_are_hours_and_memory_is_bounded_by_them() -> None:
    sim = simulate(start=END - timedelta(hours=2, minutes=30), end=END, rate=1.0, seed=2)
    batches = list(sim.iter_batches())
    assert [b.hour.hour for b in batches] == [9, 10, 11]
    for b in batches:
        assert len(b.events) == len(b.times_us) == len(b.streams)
        assert all(
            b.hour.timestamp() * 1e6 <= t < b.hour.timestamp() * 1e6 + 3.6e9 for t in b.times_us
        )
        assert set(b.streams) <= {0, 1}


def test_scenarios_need_an_hour_but_benign_traffic_does_not() -> None:
    with pytest.raises(ValueError, match="too short"):
        simulate(start=END - timedelta(minutes=20), end=END)
    sim = simulate(start=END - timedelta(minutes=20), end=END, scenarios=())
    assert sim.labels == [] and sum(1 for _ in sim.iter_events()) > 1000
    one = simulate(start=END - timedelta(hours=2), end=END, scenarios=["aws_auth_edit"])
    assert [s["scenario"] for s in one.labels] == ["aws_auth_edit"]
    with pytest.raises(ValueError, match="unknown scenarios"):
        simulate(start=END - timedelta(hours=2), end=END, scenarios=["nope"])


def test_long_ranges_put_attacks_in_the_last_day(tmp_path: Path) -> None:
    sim = simulate(start=END - timedelta(days=2), end=END, rate=0.2, seed=11)
    for s in sim.labels:
        assert _ts(s["start"]) >= END - timedelta(days=1), s["id"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="naive"):
        simulate(start=datetime(2026, 11, 27), end=datetime(2026, 11, 28))
    with pytest.raises(ValueError, match="after"):
        simulate(start=END, end=END - timedelta(hours=1))
    with pytest.raises(ValueError, match="unknown formats"):
        write_simulation(Path("unused"), formats=["csv"], end=END)


def test_default_end_is_now_to_the_minute() -> None:
    end = default_end()
    assert end.tzinfo is UTC and end.second == 0 and end.microsecond == 0
    assert timedelta(0) <= datetime.now(UTC) - end < timedelta(minutes=2)


def test_checked_in_sample_is_what_its_readme_says(tmp_path: Path) -> None:
    """data/samples/README.md gives the call that made the sample; it must still make it."""
    samples = Path(__file__).resolve().parent.parent / "data" / "samples"
    end = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
    s = write_simulation(tmp_path, days=0.25, rate=0.2, seed=7, end=end, formats=FORMATS, gzip=True)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in s.files)
    checked_in = sorted(
        p.relative_to(samples).as_posix()
        for p in samples.rglob("*")
        if p.is_file() and p.name != "README.md"
    )
    assert written == checked_in, "regenerate data/samples with the call in its README"
    for rel in ("labels.json", "audit.log.gz", "cloudwatch/page-0001.json.gz"):
        assert (tmp_path / rel).read_bytes() == (samples / rel).read_bytes(), rel
