"""Redaction: no credential reaches the lake, whatever shape it arrives in.

The end-to-end test plants a distinctive marker in every place an audit event can carry a
credential, runs the real ``detect ingest`` and ``detect score --rules-only`` over them and
over garbage lines that end in quarantine, then reads every column of every Parquet file in
the lake looking for any marker. The unit tests below pin the classes one by one and what
redaction must keep (key names, aws-auth mappings, exec commands).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.events.normalize import events_from_dicts, normalize_lines, quarantine_frame
from detector.events.redact import (
    DROPPED,
    NAME_PATTERNS,
    PATTERNS,
    REDACTED,
    is_credential_key,
    redact_text,
)

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def mark(n: int) -> str:
    """A marker no real data contains, made of base64-safe characters."""
    return f"ZQXMARK{n:02d}QZX"


def event(n: int, verb: str, resource: str, **kw) -> dict:
    """A RequestResponse-level audit.k8s.io/v1 event by a person, at AT."""
    ns = kw.pop("ns", "app")
    ref = {"resource": resource, "namespace": ns, "name": kw.pop("name", f"obj{n}")}
    ref.update(kw.pop("ref", {}))
    ts = kw.pop("ts", AT + timedelta(seconds=n))
    stamp = ts if isinstance(ts, str) else ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ev = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": f"aaaaaaaa-0000-0000-0000-{n:012d}",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/{ns}/{resource}",
        "verb": verb,
        "user": {"username": "mallory", "groups": ["system:authenticated"]},
        "sourceIPs": ["203.0.113.9"],
        "userAgent": "kubectl/v1.31.2 (linux/amd64) kubernetes/abcdef0",
        "objectRef": ref,
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
        "annotations": {"authorization.k8s.io/decision": "allow"},
    }
    ev.update(kw)
    return ev


def escaped(obj: object) -> str:
    """JSON of ``obj`` as a string: what an annotation or a patch value holds."""
    return orjson.dumps(obj).decode()


def planted_events() -> list[dict]:
    """Valid events with a credential marker in every place an audit event can hold one."""
    m = mark

    def jwt(n: int) -> str:
        return f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ{m(n)}.c2lnbmF0dXJl"

    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {
            "name": "db",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": escaped(
                    {"apiVersion": "v1", "kind": "Secret", "data": {"password": m(3)}}
                )
            },
        },
        "data": {"password": m(1)},
        "stringData": {"user": m(2)},
    }
    deployment_applied = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "env": [{"name": "DB_PASSWORD", "value": m(14)}]},
                    ]
                }
            }
        },
        "metadata": {"annotations": {"vendor.example/api_token": m(15)}},
    }
    probe_pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "nginx",
                    "env": [{"name": "DB_PASSWORD", "value": m(16)}],
                    "livenessProbe": {
                        "httpGet": {
                            "path": "/healthz",
                            "httpHeaders": [
                                {"name": "Authorization", "value": f"Bearer abcdefgh${m(17)}"}
                            ],
                        }
                    },
                }
            ]
        },
    }
    webhook_patch = {
        "configuration": "inject-creds",
        "webhook": "inject.example.com",
        "patch": [{"op": "add", "path": "/data/injected", "value": m(19)}],
        "patchType": "JSONPatch",
    }
    return [
        event(1, "create", "secrets", requestObject=secret, responseObject={**secret}),
        event(
            2,
            "list",
            "secrets",
            responseObject={
                "kind": "SecretList",
                "items": [{"metadata": {"name": "a"}, "data": {"token": m(5)}}],
            },
        ),
        event(3, "patch", "secrets", requestObject={"data": {"k": m(6)}}),
        event(
            4,
            "patch",
            "secrets",
            requestObject=[
                {"op": "add", "path": "/data/k", "value": m(7)},
                {
                    "op": "replace",
                    "path": "/metadata/annotations/" + LAST_APPLIED.replace("/", "~1"),
                    "value": escaped({"kind": "Secret", "data": {"k": m(8)}}),
                },
            ],
        ),
        event(
            5,
            "create",
            "serviceaccounts",
            ns="kube-system",
            name="admin",
            ref={"subresource": "token"},
            responseObject={"kind": "TokenRequest", "status": {"token": m(9)}},
        ),
        event(
            6,
            "create",
            "tokenreviews",
            requestObject={"kind": "TokenReview", "spec": {"token": m(10)}},
        ),
        event(
            7,
            "create",
            "receivers",
            ref={"apiGroup": "notify.example.com"},
            requestObject={
                "kind": "Receiver",
                "spec": {"headers": {"Authorization": [f"Basic {m(11)}"], "X-Api-Key": [m(12)]}},
            },
        ),
        event(
            8,
            "create",
            "configmaps",
            requestObject={"kind": "ConfigMap", "data": {"db_password": m(13), "mode": "prod"}},
        ),
        event(
            9,
            "patch",
            "deployments",
            ref={"apiGroup": "apps"},
            requestObject={
                "metadata": {
                    "annotations": {
                        "kubectl.kubernetes.io/last-applied-configuration": escaped(
                            deployment_applied
                        )
                    }
                }
            },
        ),
        event(10, "create", "pods", requestObject=probe_pod),
        event(
            11,
            "get",
            "secrets",
            responseObject={
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "columnDefinitions": [{"name": "Name", "type": "string"}],
                "rows": [
                    {
                        "cells": ["db", "Opaque", 1, "1d"],
                        "object": {"metadata": {"name": "db"}, "data": {"password": m(18)}},
                    }
                ],
            },
        ),
        event(
            12,
            "update",
            "secrets",
            level="Metadata",
            annotations={
                "authorization.k8s.io/decision": "allow",
                "patch.webhook.admission.k8s.io/round_0_index_0": escaped(webhook_patch),
            },
        ),
        event(
            13,
            "get",
            "pods",
            requestURI=f"/api/v1/namespaces/app/pods?access_token={m(20)}&limit=5&sig={m(21)}",
        ),
        event(14, "get", "pods", requestURI=f"/api/v1/pods?watch=1&password={m(22)}"),
        event(
            15,
            "create",
            "configmaps",
            requestObject={
                "kind": "ConfigMap",
                "data": {"note": f"curl -H 'Authorization: Bearer abcdefgh${m(23)}'"},
            },
        ),
        event(
            16,
            "create",
            "databases",
            ref={"apiGroup": "db.example.com"},
            requestObject={"spec": {"db_password": m(24), "clientSecret": m(25)}},
        ),
        event(
            17,
            "create",
            "validatingwebhookconfigurations",
            ns=None,
            requestObject={
                "webhooks": [{"clientConfig": {"url": f"https://hook:{m(26)}@hooks.example.com/"}}]
            },
        ),
        event(
            18,
            "create",
            "configmaps",
            requestObject={
                "data": {
                    "key.pem": f"-----BEGIN RSA PRIVATE KEY-----\n{m(27)}\n"
                    "-----END RSA PRIVATE KEY-----\n"
                }
            },
        ),
        # kubectl exec sends its command URL-encoded, a word per parameter
        event(
            19,
            "create",
            "pods",
            ref={"subresource": "exec"},
            requestURI="/api/v1/namespaces/app/pods/web/exec?command=curl&command=-H"
            f"&command=Authorization%3A+Bearer+{m(60)}&command=mysql+--password%3D{m(61)}"
            "&stdout=true",
        ),
        event(
            20,
            "create",
            "pods",
            userAgent=f"deployer/1.0 {jwt(62)}",
            requestObject={"spec": {"containers": [{"name": "a", "args": [jwt(63)]}]}},
        ),
        # JSON keeps no key order: value first, or another member between
        event(
            21,
            "create",
            "deployments",
            requestObject={
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "env": [
                                {"value": m(64), "name": "DB_PASSWORD"},
                                {"name": "API_TOKEN", "valueFrom": None, "value": m(65)},
                            ],
                        }
                    ]
                }
            },
        ),
        # a body that is not an object: stored as a JSON string, so nothing says it is clean
        event(23, "create", "secrets", requestObject=f"c2VjcmV0{m(71)}"),
        # a hostile line can put a credential in any field
        event(
            22,
            "get",
            "configmaps",
            name=f"password={m(66)}",
            user={"username": f"Bearer abcdefgh{m(67)}", "groups": [f"x?token={m(68)}"]},
            impersonatedUser={"username": f"svc token={m(69)}"},
        ),
    ]


def planted_garbage() -> list[bytes]:
    """Lines that must be quarantined, each holding credential markers."""
    m = mark
    cut_secret = orjson.dumps(
        event(40, "create", "secrets", requestObject={"data": {"password": m(40), "other": m(41)}})
    )
    cut_secret = cut_secret[: cut_secret.index(m(41).encode()) + 12]  # cut before the quote
    future = event(
        41,
        "create",
        "secrets",
        ts="9999-12-31T23:59:59.000000Z",
        requestURI=f"/api/v1/namespaces/app/secrets?access_token={m(43)}",
        requestObject={"kind": "Secret", "data": {"password": m(42)}},
    )
    no_user = event(
        42,
        "create",
        "receivers",
        requestObject={"spec": {"headers": {"Authorization": [f"Bearer {m(44)}"]}}},
        annotations={"note": f"X-Api-Key: {m(45)}"},
        responseObject={"spec": {"X-Api-Key": [m(45)]}},
    )
    del no_user["user"]
    applied = escaped({"kind": "Secret", "data": {"password": m(48)}})
    cut_applied = orjson.dumps(
        event(
            43,
            "patch",
            "secrets",
            requestObject={
                "metadata": {
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied}
                }
            },
        )
    )
    cut_applied = cut_applied[: cut_applied.index(m(48).encode()) + 12]
    cut_patch = orjson.dumps(
        event(
            44,
            "patch",
            "secrets",
            requestObject=[{"op": "add", "path": "/data/k", "value": m(49)}, {"op": "x"}],
        )
    )
    cut_patch = cut_patch[: cut_patch.index(b'{"op":"x"')]
    cut_token = orjson.dumps(
        event(
            45,
            "create",
            "serviceaccounts",
            ref={"subresource": "token"},
            responseObject={"kind": "TokenRequest", "status": {"token": m(50) + "x" * 20}},
        )
    )
    cut_token = cut_token[: cut_token.index(m(50).encode()) + 15]
    hook = escaped({"patch": [{"op": "add", "path": "/data/x", "value": m(51)}]})
    cut_hook = orjson.dumps(
        event(
            46,
            "update",
            "secrets",
            annotations={"patch.webhook.admission.k8s.io/round_0_index_0": hook},
        )
    )
    cut_hook = cut_hook[: cut_hook.index(m(51).encode()) + 14]
    ancient = event(
        47,
        "get",
        "secrets",
        ts="0001-01-01T00:00:00.000000Z",
        responseObject={
            "kind": "Table",
            "rows": [{"object": {"metadata": {"name": "db"}, "data": {"password": m(52)}}}],
        },
    )
    wrong_type = event(
        48,
        "create",
        "databases",
        requestObject={"spec": {"db_password": m(53)}},
        responseStatus={"code": "forbidden"},
    )
    # JSON escapes a tab: in quarantined text it is the two characters \t
    tabbed = orjson.dumps(event(49, "get", "pods", userAgent=f"x Bearer\tabcdefgh{m(70)} y"))
    tabbed = tabbed[: tabbed.index(m(70).encode()) + 20]
    return [
        cut_secret,
        tabbed,
        orjson.dumps(future),
        orjson.dumps(no_user),
        f"curl -H 'Authorization: Bearer abc${m(46)}' https://k8s/x?a=1&password={m(47)}".encode(),
        cut_applied,
        cut_patch,
        cut_token,
        cut_hook,
        orjson.dumps(ancient),
        orjson.dumps(wrong_type),
    ]


def markers_in(value: object) -> set[str]:
    text = json.dumps(value, default=str)
    return {m for m in (mark(n) for n in range(100)) if m in text}


def test_no_planted_credential_reaches_any_column_of_any_lake_file(tmp_path):
    """`detect ingest` and `detect score`, run in this process: what is searched is what
    they write to the lake and print, not anything about the process."""
    from tests.conftest import run_detect_in_process as detect

    valid, garbage = planted_events(), planted_garbage()
    lines = [orjson.dumps(e) for e in valid]
    lines[5:5] = garbage[:5]
    lines.extend(garbage[5:])
    log = tmp_path / "audit.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    planted = markers_in(log.read_text())
    assert len(planted) == 52  # the fixture itself holds every marker

    lake = str(tmp_path / "lake")
    ingested = detect("ingest", str(log), "--lake", lake, "--cluster", "prod", "--format", "json")
    assert ingested.returncode == 0, ingested.stderr
    summary = json.loads(ingested.stdout)
    assert summary["events_written"] == len(valid)
    assert summary["quarantined"] == len(garbage)
    scored = detect("score", "--lake", lake, "--since", "2h", "--rules-only", "--format", "json")
    assert scored.returncode == 0, scored.stderr
    assert markers_in(scored.stdout) == set()

    tables: dict[str, int] = {}
    leaks: dict[str, set[str]] = {}
    for path in sorted(Path(lake).rglob("*.parquet")):
        table = pq.read_table(path)
        top = path.relative_to(lake).parts[0]
        tables[top] = tables.get(top, 0) + table.num_rows
        for name in table.column_names:
            found = markers_in(table.column(name).to_pylist())
            if found:
                leaks[f"{path.relative_to(lake)}:{name}"] = found
    # Every table was written, so the search covered them all.
    assert {"events", "quarantine", "findings", "findings_events"} <= set(tables), tables
    assert tables["findings_events"] > 0
    assert leaks == {}
    for path in Path(lake).rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            assert markers_in(path.read_text(errors="replace")) == set(), path


# ----------------------------------------------------------------- what is kept


def _one(ev: dict):
    return events_from_dicts([ev]).row(0, named=True)


def test_key_names_survive_and_the_values_do_not():
    row = _one(planted_events()[7])  # ConfigMap with db_password
    body = orjson.loads(row["request_object"])
    assert body["data"] == {"db_password": REDACTED, "mode": "prod"}
    assert row["redacted"] is True


def test_aws_auth_mappings_and_exec_commands_are_kept():
    roles = "- rolearn: arn:aws:iam::1:role/admin\n  groups: [system:masters]\n"
    aws_auth = event(
        1,
        "patch",
        "configmaps",
        ns="kube-system",
        name="aws-auth",
        requestObject={"data": {"mapRoles": roles}},
    )
    exec_ = event(
        2,
        "create",
        "pods",
        ref={"subresource": "exec"},
        requestURI="/api/v1/namespaces/app/pods/web/exec?command=cat&command=%2Fvar%2Frun"
        "%2Fsecrets%2Fkubernetes.io%2Fserviceaccount%2Ftoken&stdout=true",
    )
    pod = event(
        3,
        "create",
        "pods",
        requestObject={
            "spec": {
                "volumes": [{"name": "t", "secret": {"secretName": "db-creds"}}],
                "automountServiceAccountToken": False,
            }
        },
    )
    df = events_from_dicts([aws_auth, exec_, pod])
    assert orjson.loads(df["request_object"][0])["data"]["mapRoles"] == roles
    assert df["request_uri"][1] == exec_["requestURI"]
    assert orjson.loads(df["request_object"][2]) == pod["requestObject"]
    assert df["redacted"].to_list() == [False, False, False]
    assert df["decision"].to_list() == ["allow"] * 3


def test_names_that_look_like_assignments_with_a_colon_are_kept():
    # ':' separates the parts of a name: the ServiceAccount "proxy" of namespace "oauth"
    sa = event(
        1,
        "get",
        "secrets",
        ns="oauth",
        name="token:cache",
        user={
            "username": "system:serviceaccount:oauth:proxy",
            "groups": ["system:serviceaccounts:oauth", "system:authenticated"],
        },
    )
    row = _one(sa)
    assert row["user_name"] == "system:serviceaccount:oauth:proxy"
    assert row["principal"] == "system:serviceaccount:oauth:proxy"
    assert row["name"] == "token:cache"
    assert row["user_groups"] == ["system:serviceaccounts:oauth", "system:authenticated"]
    assert row["redacted"] is False


def test_redacted_bodies_stay_valid_json_with_the_secret_keys():
    df = events_from_dicts(planted_events())
    for column in ("request_object", "response_object", "annotations"):
        for text in df[column].drop_nulls():
            orjson.loads(text)
    secret = orjson.loads(df["request_object"][0])
    assert secret["data"] == {"password": REDACTED}
    assert secret["stringData"] == {"user": REDACTED}
    hook = orjson.loads(
        orjson.loads(df["annotations"][11])["patch.webhook.admission.k8s.io/round_0_index_0"]
    )
    assert hook["patch"][0] == {"op": "add", "path": "/data/injected", "value": REDACTED}
    assert hook["webhook"] == "inject.example.com"


@pytest.mark.parametrize(
    ("key", "credential"),
    [
        ("db_password", True),
        ("X-Api-Key", True),
        ("Authorization", True),
        ("clientSecret", True),
        ("AWS_SECRET_ACCESS_KEY", True),
        ("aws_session_token", True),
        ("secretName", False),
        ("tokenExpirationSeconds", False),
        ("authorization.k8s.io/decision", False),
        ("key", False),
    ],
)
def test_credential_keys_are_found_by_pattern_not_by_list(key, credential):
    assert is_credential_key(key) is credential


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ('{"db_password":"hunter2hunter', '{"db_password":"<redacted>"'),
        ('{"Authorization": ["Bearer abc$def123", "x"]}', '{"Authorization": "<redacted>"}'),
        ('"a":"{\\"api_token\\":\\"hunter2\\"}"', '"a":"{\\"api_token\\":\\"<redacted>\\"}"'),
        ("GET /x?access_token=hunter2&limit=1", "GET /x?access_token=<redacted>&limit=1"),
        ("Authorization: Bearer abcdefgh$hunter2", "Authorization: Bearer <redacted>"),
    ],
)
def test_text_patterns_work_on_cut_and_escaped_text(text, kept):
    out = redact_text(text)
    assert "hunter2" not in out and "def123" not in out
    assert out == kept


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("é password: hunter2 ü", "é password: <redacted> ü"),
        ("épassword=hunter2", "épassword=<redacted>"),  # an ASCII word boundary: redacts more
        ("\ufffd\ufffdBearer abcdefgh$hunter2", "\ufffd\ufffdBearer <redacted>"),
        ("\u00e9https://u:hunter2@host/x", "\u00e9https://u:<redacted>@host/x"),
    ],
)
def test_text_patterns_work_next_to_non_ascii_text(text, kept):
    """Binary garbage lands in quarantine as text full of replacement characters: the
    patterns use an ASCII word boundary, which the regex engine runs fast on such text."""
    for quarantine in (False, True):
        assert redact_text(text, quarantine=quarantine) == kept


def test_quarantined_text_loses_secret_payloads_even_when_cut():
    raw = b'{"kind":"Event","objectRef":{"resource":"secrets"},"requestObject":{"data":{"a":"hun'
    row = quarantine_frame([("f", "1", "invalid JSON: EOF near ter2", raw + b"ter2")]).row(
        0, named=True
    )
    assert "hunter2" not in row["raw"]
    assert row["raw"].startswith('{"kind":"Event","objectRef":{"resource":"secrets"}')
    assert row["raw_size"] == len(raw) + 4


@pytest.mark.parametrize(
    "member",
    [
        rb'"d\u0061ta":{"a":"hunter2"}',  # a Secret's payload under an escaped name
        rb'"p\u0061ssword":"hunter2"',
        rb'"P\u0041SSWORD":"hunter2"',  # upper-case hex digits
        rb'"x":"{\"d\\u0061ta\":{\"a\":\"hunter2\"}}"',  # JSON in a string
        rb'"kubectl.kubernetes.io\/last-applied-configuration":"{\"a\":\"hunter2\"}"',
        # four levels of JSON in strings: sixteen backslashes (found by review: eight ran out)
        b'"x":"{\\"p' + b"\\" * 16 + b'u0061ssword\\":\\"hunter2\\"}"',
        # quotes written as \u0022, which any JSON reader reads as quotes (review)
        rb'"x":"{\u0022password\u0022:\u0022hunter2\u0022}"',
    ],
)
def test_quarantined_text_loses_values_under_escaped_member_names(member):
    """The quarantine's patterns read text, not JSON: a member name written with JSON escapes
    (``\u0061`` is ``a``) hid its value from them (found by review)."""
    raw = b'{"kind":"Event","requestObject":{"kind":"Secret",' + member + b"}}"
    row = quarantine_frame([("f", "1", "not an audit event", raw)]).row(0, named=True)
    assert "hunter2" not in row["raw"]
    assert row["raw"].startswith('{"kind":"Event","requestObject":{"kind":"Secret",')


def test_quarantined_text_keeps_what_escapes_do_not_hide():
    """Written-out escapes keep JSON valid: a quote or a backslash is written escaped
    (``\\u0022`` as ``\\"``), and an escaped backslash before other text is left as it is."""
    raw = rb'{"a":"say \u0022hi\u0022 C:\\temp \\n \u00e9","b":"\u0041\/x"}'
    row = quarantine_frame([("f", "1", "not an audit event", raw)]).row(0, named=True)
    assert orjson.loads(row["raw"]) == orjson.loads(raw)
    assert row["raw"] == r'{"a":"say \"hi\" C:\\temp \\n \u00e9","b":"A/x"}'


def test_every_pattern_is_listed_in_security_md():
    text = (Path(__file__).resolve().parent.parent / "docs" / "security.md").read_text()
    for pattern in (*PATTERNS, *NAME_PATTERNS):
        assert pattern.name in text, pattern.name


@pytest.mark.parametrize("depth", [300, 1000])
def test_a_body_nested_past_the_stack_is_dropped_not_fatal(depth):
    # 300 levels: walkable, but deeper than orjson writes; 1000: deeper than Python's stack.
    body = '{"a":' * depth + '{"data":{"password":"' + mark(60) + '"}}' + "}" * depth
    ev = orjson.dumps(event(1, "create", "secrets", requestObject={"kind": "Secret"}))
    line = ev.replace(b'{"kind":"Secret"}', body.encode())
    result = normalize_lines(
        pa.array([line, orjson.dumps(event(2, "get", "pods"))]),
        positions=pa.array(["1", "2"]),
        source="t",
        cluster="c",
    )
    assert result.events["request_object"].to_list() == [DROPPED, None]  # JSON, and no marker
    assert result.events["redacted"].to_list() == [True, False]


#: Any text (quotes, backslashes, control characters, non-ASCII) around what is looked for.
_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    data=st.lists(st.tuples(_TEXT.filter(bool), _TEXT), min_size=1, max_size=3),
    string_data=st.lists(st.tuples(_TEXT.filter(bool), _TEXT), max_size=2),
    shape=st.sampled_from(["create", "update", "merge-patch", "apply", "get", "list"]),
)
def test_no_secret_value_reaches_the_lake_whatever_its_key_or_text(data, string_data, shape):
    """Property: a Secret's values are gone from every column, whatever its key names and
    whatever text surrounds them, in every shape a Secret's payload takes in an audit event
    (body of a create or update, a merge patch, kubectl's last-applied annotation, the
    response of a get or a list)."""
    n = 0
    secret_data, plain = {}, {}
    for key, around in data:
        secret_data[key] = around + mark(n) + around
        n += 1
    for key, around in string_data:
        plain[key] = around + mark(n)
        n += 1
    secret = {
        "kind": "Secret",
        "apiVersion": "v1",
        "metadata": {"name": "db", "namespace": "app"},
        "data": secret_data,
        **({"stringData": plain} if plain else {}),
    }
    if shape in ("create", "update"):
        ev = event(1, shape, "secrets", requestObject=secret, responseObject=secret)
    elif shape == "merge-patch":
        ev = event(1, "patch", "secrets", requestObject={"data": secret_data, "stringData": plain})
    elif shape == "apply":
        applied = {**secret, "metadata": {**secret["metadata"]}}
        applied["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(secret)}
        ev = event(1, "patch", "secrets", requestObject=applied, responseObject=applied)
    elif shape == "get":
        ev = event(1, "get", "secrets", responseObject=secret)
    else:
        ev = event(1, "list", "secrets", responseObject={"kind": "SecretList", "items": [secret]})
    df = events_from_dicts([ev])
    assert df.height == 1
    for column, dtype in df.schema.items():
        if dtype != pl.String:
            continue
        text = df[column][0] or ""
        for i in range(n):
            assert mark(i) not in text, (column, shape)
    assert df["redacted"][0]
