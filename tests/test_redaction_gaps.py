"""Redaction gaps found by a QA review: each class of leak it reproduced, planted and looked for.

Every test goes through the real normalization path (``events_from_dicts``, which the CLI
uses) and reads every string column for the marker; the end-to-end test runs ``detect
ingest`` on all of them at once, valid and quarantined, and reads every Parquet file. Each
also checks what must survive next to the credential: key names, scheme words, the
``authorization.k8s.io`` annotations, object names, and JSON that stays JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_redaction import escaped, event

from detector.events.normalize import events_from_dicts, quarantine_frame
from detector.events.redact import REDACTED, is_credential_key, redact_text

LAST = "kubectl.kubernetes.io/last-applied-configuration"
RBAC_REASON = 'RBAC: allowed by ClusterRoleBinding "ops-token" of ClusterRole "admin" to User "u"'


def mark(n: int) -> str:
    """A marker no real data contains (base64-safe), distinct from test_redaction's."""
    return f"QQGAP{n:02d}MARKQQ"


def markers(text: str) -> set[str]:
    return {m for m in (mark(n) for n in range(100)) if m in text}


def all_strings(df: pl.DataFrame) -> str:
    """Every string of every row and column, lists included."""
    parts = []
    for column, dtype in df.schema.items():
        if dtype in (pl.String, pl.List(pl.String)):
            parts.append(json.dumps(df[column].to_list()))
    return "\n".join(parts)


def ingest(*events: dict) -> pl.DataFrame:
    df = events_from_dicts(list(events))
    assert df.height == len(events)
    for column in ("request_object", "response_object", "annotations"):
        for text in df[column].drop_nulls():
            orjson.loads(text)  # still JSON
    return df


def body(df: pl.DataFrame, row: int = 0, column: str = "request_object"):
    return orjson.loads(df[column][row])


def configmap(n: int, data: dict, **kw) -> dict:
    return event(n, "create", "configmaps", requestObject={"kind": "ConfigMap", "data": data}, **kw)


def secrets_event(n: int, obj: object, verb: str = "create") -> dict:
    return event(n, verb, "secrets", name="db", requestObject=obj)


# ------------------------------------------- 1. JSON patches under a credential-named path


def test_json_patch_values_under_a_credential_path_are_redacted_on_any_resource():
    patch = [
        {"op": "add", "path": "/data/db_password", "value": mark(1)},
        {"value": mark(2), "op": "replace", "path": "/metadata/annotations/example.com~1api-token"},
        {"op": "add", "path": "/data/mode", "value": "prod"},
    ]
    hook = escaped(
        {
            "webhook": "inject.example.com",
            "patch": [{"path": "/data/api_key", "value": mark(3), "op": "add"}],
            "patchType": "JSONPatch",
        }
    )
    df = ingest(
        event(1, "patch", "configmaps", name="app", requestObject=patch),
        event(
            2,
            "update",
            "configmaps",
            name="app",
            annotations={
                "authorization.k8s.io/decision": "allow",
                "patch.webhook.admission.k8s.io/round_0_index_0": hook,
            },
        ),
    )
    assert markers(all_strings(df)) == set()
    assert body(df, 0) == [
        {"op": "add", "path": "/data/db_password", "value": REDACTED},
        {
            "value": REDACTED,
            "op": "replace",
            "path": "/metadata/annotations/example.com~1api-token",
        },
        {"op": "add", "path": "/data/mode", "value": "prod"},
    ]
    annotations = body(df, 1, "annotations")
    hook_out = orjson.loads(annotations["patch.webhook.admission.k8s.io/round_0_index_0"])
    assert hook_out["patch"] == [{"path": "/data/api_key", "value": REDACTED, "op": "add"}]
    assert hook_out["webhook"] == "inject.example.com"
    assert df["name"].to_list() == ["app", "app"]
    assert df["decision"].to_list() == ["allow", "allow"]
    assert df["redacted"].to_list() == [True, True]


# ------------------------------------------------- 2. quoted values after a credential name


def test_quoted_values_after_a_credential_name_are_redacted():
    data = {
        "application.yaml": f'spring:\n  datasource:\n    password: "{mark(4)} x"\n    user: bob\n',
        "env.sh": f"export PGPASSWORD='{mark(5)} y'\nexport PGUSER=bob\n",
        "block.yaml": f"db_password: |\n  {mark(6)} z\nuser: bob\n",
    }
    pod = {
        "kind": "Pod",
        "spec": {
            "containers": [{"name": "a", "command": ["sh", "-c", f'DB_PASSWORD="{mark(7)}" ./run']}]
        },
    }
    df = ingest(
        configmap(1, data),
        event(2, "create", "pods", requestObject=pod),
        event(3, "get", "pods", userAgent=f'deploy-bot/1.0 --password="{mark(8)}" (linux)'),
    )
    assert markers(all_strings(df)) == set()
    out = body(df, 0)["data"]
    assert out["application.yaml"] == (
        f'spring:\n  datasource:\n    password: "{REDACTED}"\n    user: bob\n'
    )
    assert out["env.sh"] == f"export PGPASSWORD='{REDACTED}'\nexport PGUSER=bob\n"
    assert out["block.yaml"] == f"db_password: |\n  {REDACTED}\nuser: bob\n"
    assert body(df, 1)["spec"]["containers"][0]["command"] == [
        "sh",
        "-c",
        f'DB_PASSWORD="{REDACTED}" ./run',
    ]
    assert df["user_agent"][2] == f'deploy-bot/1.0 --password="{REDACTED}" (linux)'


def test_unquoted_values_and_json_around_a_bare_name_are_unchanged():
    # a name at the end of one JSON string must not swallow the next member
    df = ingest(configmap(1, {"msg": "password:", "next": "keep me", "token": "x"}))
    assert body(df, 0)["data"] == {"msg": "password:", "next": "keep me", "token": REDACTED}
    assert redact_text("password: hunter2 rest") == f"password: {REDACTED} rest"
    assert redact_text("--token=abc,def") == f"--token={REDACTED},def"


def test_a_credential_named_mapping_keeps_its_keys_and_a_value_on_the_next_line_goes():
    # A chart's values: ``passwordSecret:`` names the Secret that holds the password (a
    # mapping of name and key), where ``password:`` over an indented line is the password.
    data = {
        "values.yaml": "auth:\n  passwordSecret:\n    name: db\n    key: pw\n  user: bob\n",
        "plain.yaml": f"password:\n  {mark(9)} x\nuser: bob\n",
        "quoted.yaml": f'password:\n  "{mark(10)}"\nuser: bob\n',
        "last.yaml": f"token:\n\n  {mark(11)}",
    }
    df = ingest(configmap(1, data))
    assert markers(all_strings(df)) == set()
    out = body(df, 0)["data"]
    assert out["values.yaml"] == data["values.yaml"]
    assert out["plain.yaml"] == f"password:\n  {REDACTED}\nuser: bob\n"
    assert out["quoted.yaml"] == f'password:\n  "{REDACTED}"\nuser: bob\n'
    assert out["last.yaml"] == f"token:\n\n  {REDACTED}"
    # The same in text that is not JSON (a quarantined line, a user agent).
    assert redact_text("credentials:\n  secretName: s\n") == "credentials:\n  secretName: s\n"
    assert redact_text(f"password:\n  {mark(12)}\n") == f"password:\n  {REDACTED}\n"


def test_a_value_on_the_next_line_goes_whatever_its_comment_says():
    # ``: `` in a comment does not make the value's line a mapping key.
    assert redact_text(f"password:\n  {mark(13)}  # TODO: rotate\n") == (
        f"password:\n  {REDACTED}  # TODO: rotate\n"
    )
    assert redact_text(f"password:\n  {mark(14)} # set by:\n") == (
        f"password:\n  {REDACTED} # set by:\n"
    )
    assert redact_text(f"password:\r\n  {mark(15)}\r") == f"password:\r\n  {REDACTED}\r"
    # In an env file a name with nothing after its '=' is empty: the next line is its own.
    assert redact_text("API_TOKEN=\nLOG_LEVEL=info\n") == "API_TOKEN=\nLOG_LEVEL=info\n"


@pytest.mark.parametrize("space", ["\u00a0", "\u3000", "\u2007", "\t"])
def test_any_blank_between_a_credential_name_and_its_value(space):
    # A no-break space pasted from a wiki, an ideographic space from a CJK input method.
    for text in (f"DB_PASSWORD={space}{mark(16)}", f"password:{space}{mark(16)}"):
        assert mark(16) not in redact_text(text), text
    df = ingest(configmap(1, {"app.env": f"DB_PASSWORD={space}{mark(17)}\n"}))
    assert markers(all_strings(df)) == set()


def test_xml_credentials_and_flags_given_their_value_as_the_next_argument():
    settings = f"<server><id>r</id><username>u</username><password>{mark(18)}</password></server>"
    site = (
        "<property>\n  <name>fs.s3a.secret.key</name>\n"
        f"  <value>{mark(19)}</value>\n</property>\n"
        "<property><name>fs.s3a.endpoint</name><value>https://s3.example</value></property>"
    )
    args = ["login", "--password", mark(20), "--token-ttl", "5m", "registry.example"]
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "a", "args": args}]}}
    applied = {LAST: escaped({"kind": "Pod", "spec": {"containers": [{"args": args}]}})}
    exec_uri = (
        "/api/v1/namespaces/app/pods/web/exec?command=docker&command=login"
        f"&command=--password&command={mark(21)}&command=registry.example&container=web"
    )
    df = ingest(
        configmap(1, {"settings.xml": settings, "core-site.xml": site}),
        event(2, "create", "pods", requestObject=pod),
        event(3, "create", "pods", ref={"subresource": "exec"}, requestURI=exec_uri),
        event(4, "patch", "pods", annotations=applied),
    )
    assert markers(all_strings(df)) == set()
    data = body(df, 0)["data"]
    assert data["settings.xml"] == settings.replace(mark(18), REDACTED)
    assert data["core-site.xml"] == site.replace(mark(19), REDACTED)  # the endpoint stays
    kept = ["login", "--password", REDACTED, "--token-ttl", "5m", "registry.example"]
    assert body(df, 1)["spec"]["containers"][0]["args"] == kept
    assert df["request_uri"][2] == exec_uri.replace(mark(21), REDACTED)
    assert orjson.loads(body(df, 3, "annotations")[LAST])["spec"]["containers"][0]["args"] == kept


_SAFE = st.text(
    alphabet=st.characters(exclude_categories=["Cs", "Cc", "Zl", "Zp"], exclude_characters="\"'\\"),
    max_size=6,
)


@settings(max_examples=60, derandomize=True, deadline=None)
@given(
    key=st.sampled_from(["password", "DB_PASSWORD", "api-key", "clientSecret", "auth_token"]),
    assign=st.sampled_from([": ", "=", " = ", ":"]),
    quote=st.sampled_from(['"', "'"]),
    before=_SAFE,
    after=_SAFE,
    closed=st.booleans(),
)
def test_a_quoted_value_is_gone_whatever_it_holds(key, assign, quote, before, after, closed):
    """Property: a quoted value after a credential name loses all of its text, in a body
    (JSON-escaped quotes) and in a user agent (plain quotes), closed or cut."""
    value = f"{quote}{before}{mark(9)}{after}{quote if closed else ''}"
    text = f"{key}{assign}{value}"
    df = ingest(
        configmap(1, {"cfg": text + ("\nnext: line" if closed else "")}),
        event(2, "get", "pods", userAgent="bot/1 " + text),
    )
    assert markers(all_strings(df)) == set()
    assert body(df, 0)["data"]["cfg"].startswith(key)
    assert df["user_agent"][1].startswith("bot/1 " + key)


# ------------------------------------------- 3. Authorization with any scheme but Bearer/Basic

SCHEMES = ["token", "ApiKey", "Bot", "SSWS", "GenieKey", "Splunk", "Negotiate", "Custom-Scheme"]


def test_authorization_headers_lose_their_credentials_whatever_the_scheme():
    lines = {f"h{i}": f"Authorization: {s} {mark(10 + i)}" for i, s in enumerate(SCHEMES)}
    lines["digest"] = (
        f'curl -H "Authorization: Digest username="u", realm="r", nonce="{mark(20)}", '
        f'response="{mark(21)}"" https://x\nnext line'
    )
    lines["aws"] = (
        f"Authorization: AWS4-HMAC-SHA256 Credential={mark(22)}/20240101/us-east-1/s3/"
        f"aws4_request, SignedHeaders=host;x-amz-date, Signature={mark(23)}\nHost: s3"
    )
    lines["sh"] = f'curl -H "Authorization: token {mark(24)}" https://api.github.com/repos'
    annotations = {
        "authorization.k8s.io/decision": "allow",
        "authorization.k8s.io/reason": RBAC_REASON,
    }
    df = ingest(
        configmap(1, lines, annotations=annotations),
        event(2, "get", "pods", userAgent=f"curl -H 'Authorization: token {mark(25)}' x"),
        event(
            3,
            "create",
            "pods",
            ref={"subresource": "exec"},
            requestURI="/api/v1/namespaces/app/pods/web/exec?command=curl&command=-H"
            f"&command=Authorization%3A+token+{mark(26)}&stdout=true",
            annotations=annotations,
        ),
    )
    assert markers(all_strings(df)) == set()
    out = body(df, 0)["data"]
    for i, scheme in enumerate(SCHEMES):
        # a scheme word the patterns do not know may go too
        kept = (f"Authorization: {scheme} {REDACTED}", f"Authorization: {REDACTED} {REDACTED}")
        assert out[f"h{i}"] == kept[scheme == "Custom-Scheme"]
    assert out["aws"] == f"Authorization: AWS4-HMAC-SHA256 {REDACTED}\nHost: s3"
    assert out["digest"].endswith("next line")
    assert out["sh"] == f'curl -H "Authorization: token {REDACTED}" https://api.github.com/repos'
    assert df["user_agent"][1] == f"curl -H 'Authorization: token {REDACTED}' x"
    assert df["request_uri"][2].endswith(f"Authorization%3A+token+{REDACTED}&stdout=true")
    # the authorization annotations the rules read are not credentials
    assert df["decision"].to_list() == ["allow"] * 3
    assert df["reason"][0] == RBAC_REASON
    assert body(df, 0, "annotations") == annotations


# -------------------------------------------------------------- 4. malformed Secret bodies


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": "Secret", "apiVersion": "v1", "stringData": [mark(30)]},
        {"kind": "Secret", "apiVersion": "v1", "data": mark(30)},
        {"kind": "secret", "apiVersion": "v1", "data": {"k": mark(30)}},
        {"kind": "ConfigMap", "apiVersion": "v1", "data": {"password2": mark(30)}},
        {"kind": "SecretList", "items": [mark(30), {"data": {"k": mark(31)}}]},
        [mark(30)],
        [{"op": "replace", "path": "", "value": mark(30)}],
    ],
    ids=[
        "stringData-list",
        "data-string",
        "kind-lowercase",
        "kind-lies",
        "list-item-string",
        "body-list",
        "patch-whole",
    ],
)
def test_malformed_secret_bodies_lose_their_data(obj):
    df = ingest(secrets_event(1, obj), event(2, "get", "pods"))
    assert markers(all_strings(df)) == set()
    assert df["redacted"].to_list() == [True, False]
    assert df["name"][0] == "db"
    out = body(df, 0)
    if isinstance(obj, dict):
        assert out["kind"] == obj["kind"]  # what is not a payload is kept


def test_a_lowercase_secret_kind_is_a_secret_in_any_event():
    ev = event(
        1,
        "create",
        "widgets",
        requestObject={"items": [{"kind": "secret", "data": {"k": mark(32)}}]},
    )
    df = ingest(ev)
    assert markers(all_strings(df)) == set()
    assert body(df)["items"][0] == {"kind": "secret", "data": {"k": REDACTED}}


# ------------------------------------------------------------ 5. kubeconfig client-key-data

KUBECONFIG = (
    "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
    "    certificate-authority-data: LS0tLS1DQQ==\n    server: https://k8s\n  name: c\n"
    "users:\n- name: admin\n  user:\n    client-certificate-data: LS0tLS1DRVJU\n"
    "    client-key-data: {key}\n"
)


def test_kubeconfig_client_key_data_is_a_credential():
    df = ingest(
        configmap(1, {"config": KUBECONFIG.format(key=mark(40))}),
        event(
            2,
            "create",
            "clusters",
            requestObject={"spec": {"client_key_data": mark(41), "caData": "LS0tLS1DQQ=="}},
        ),
    )
    assert markers(all_strings(df)) == set()
    assert body(df, 0)["data"]["config"] == KUBECONFIG.format(key=REDACTED)
    assert body(df, 1)["spec"] == {"client_key_data": REDACTED, "caData": "LS0tLS1DQQ=="}
    assert is_credential_key("client-key-data")
    assert not is_credential_key("certificate-authority-data")


# ------------------------------------------------ 6. percent-encoded query parameter names


def test_percent_encoded_credential_parameter_names_are_redacted():
    uri = f"/api/v1/namespaces/app/pods?%74oken={mark(50)}&limit=5&p%61ss={mark(51)}&watch=1"
    df = ingest(event(1, "list", "pods", requestURI=uri))
    assert markers(all_strings(df)) == set()
    assert df["request_uri"][0] == (
        f"/api/v1/namespaces/app/pods?%74oken={REDACTED}&limit=5&p%61ss={REDACTED}&watch=1"
    )


# -------------------------------------- in passing: a PEM key under a credential-named key


def test_a_pem_key_after_a_credential_name_loses_its_body():
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{mark(60)}\n-----END RSA PRIVATE KEY-----\n"
    df = ingest(
        configmap(1, {"tls.yaml": f"private_key: {pem}", "plain": "kept"}),
        event(2, "get", "pods", name=f"x password={pem}"),
    )
    assert markers(all_strings(df)) == set()
    assert body(df)["data"]["plain"] == "kept"


# ------------------------------------------------------------------ the real CLI, end to end


def planted() -> tuple[list[dict], list[bytes]]:
    valid = [
        event(
            1,
            "patch",
            "configmaps",
            requestObject=[{"op": "add", "path": "/data/db_password", "value": mark(70)}],
        ),
        configmap(2, {"a.yaml": f'password: "{mark(71)}"', "b.sh": f"PGPASSWORD='{mark(72)}'"}),
        event(3, "get", "pods", userAgent=f'bot --password="{mark(73)}" x'),
        configmap(4, {"s": f"curl -H 'Authorization: token {mark(74)}' https://x"}),
        secrets_event(5, {"kind": "Secret", "stringData": [mark(75)]}),
        secrets_event(6, {"kind": "secret", "data": {"k": mark(76)}}),
        configmap(7, {"config": KUBECONFIG.format(key=mark(77))}),
        event(8, "list", "pods", requestURI=f"/api/v1/pods?%74oken={mark(78)}&limit=1"),
    ]
    # the same shapes in lines that are not JSON: quarantined
    garbage = [
        orjson.dumps(configmap(20, {"a": f'password: "{mark(80)}"\nuser: bob'}))[:-1] + b",,}",
        orjson.dumps(event(21, "get", "pods", userAgent=f"Authorization: SSWS {mark(81)}"))[:-1]
        + b",,}",
        f'curl -H \'Authorization: Digest response="{mark(82)}"\' --password="{mark(83)}"'.encode(),
    ]
    return valid, garbage


def test_no_gap_marker_reaches_any_column_of_any_lake_file(tmp_path):
    """`detect ingest`, run in this process: what is searched is what it writes."""
    from tests.conftest import run_detect_in_process as detect

    valid, garbage = planted()
    log = tmp_path / "audit.log"
    log.write_bytes(b"\n".join([orjson.dumps(e) for e in valid] + garbage) + b"\n")
    assert len(markers(log.read_text())) == 13

    lake = tmp_path / "lake"
    done = detect("ingest", str(log), "--lake", str(lake), "--cluster", "prod", "--format", "json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["events_written"], summary["quarantined"]) == (len(valid), len(garbage))

    leaks, events = {}, []
    for path in sorted(lake.rglob("*.parquet")):
        table = pq.read_table(path)
        for name in table.column_names:
            found = markers(json.dumps(table.column(name).to_pylist(), default=str))
            if found:
                leaks[f"{path.relative_to(lake)}:{name}"] = found
        if path.relative_to(lake).parts[0] == "events":
            events.append(pl.from_arrow(table))
    assert leaks == {}
    rows = pl.concat(events, how="diagonal_relaxed").sort("audit_id")
    assert rows["redacted"].to_list() == [True] * len(valid)
    assert rows["decision"].to_list() == ["allow"] * len(valid)
    assert rows["verb"].to_list() == [e["verb"] for e in valid]
    for text in rows["request_object"].drop_nulls():
        orjson.loads(text)
    for path in Path(lake).rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            assert markers(path.read_text(errors="replace")) == set(), path


def test_quarantined_text_loses_quoted_and_scheme_credentials():
    raw = (
        f'{{"userAgent":"x --password=\\"{mark(90)}\\" Authorization: Bot {mark(91)}",'
        f'"env":"PGPASSWORD=\'{mark(92)}\'",,'
    ).encode()
    row = quarantine_frame([("f", "1", "invalid JSON", raw)]).row(0, named=True)
    assert markers(row["raw"]) == set()
    assert row["raw"].startswith('{"userAgent":"x --password=')


# ------------------------------------------ JSON stays JSON, also when nested in a string

_PIECES = st.sampled_from(
    [
        "password: ",
        "password=",
        "PGPASSWORD=",
        "token: |\n  ",
        "Authorization: ",
        "Digest ",
        "x=",
        "-----BEGIN PRIVATE KEY-----",
        "--",
        '"',
        "'",
        "\\",
        "\n",
        " ",
        ",",
        ":",
        "}",
        "a",
        "\u00e9",
    ]
)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(values=st.lists(st.lists(_PIECES, max_size=10).map("".join), min_size=1, max_size=3))
def test_redacted_json_stays_json_at_every_depth(values):
    """Property: what the text patterns cut out of a body never holds a quote or half an
    escape, so the body and the JSON nested in its strings (a last-applied annotation, and
    one nested again) still parse, whatever surrounds a credential name."""
    inner = {f"k{i}": v for i, v in enumerate(values)}
    once = escaped(inner)
    applied = {"metadata": {"annotations": {"note": once, "twice": escaped({"a": once})}}}
    df = ingest(event(1, "patch", "configmaps", requestObject={**inner, **applied}))
    annotations = body(df)["metadata"]["annotations"]
    orjson.loads(annotations["note"])
    orjson.loads(orjson.loads(annotations["twice"])["a"])


def test_quoted_values_in_a_last_applied_annotation_are_redacted():
    cm = {
        "kind": "ConfigMap",
        "metadata": {"name": "app"},
        "data": {"app.yaml": f'db:\n  password: "{mark(95)}"\n  host: db\n'},
    }
    applied = {**cm, "metadata": {"name": "app", "annotations": {LAST: escaped(cm)}}}
    df = ingest(event(1, "patch", "configmaps", name="app", requestObject=applied))
    assert markers(all_strings(df)) == set()
    nested = orjson.loads(body(df)["metadata"]["annotations"][LAST])
    assert nested["data"]["app.yaml"] == f'db:\n  password: "{REDACTED}"\n  host: db\n'
    assert nested["metadata"] == {"name": "app"}


# ------------------------- in passing: every cookie of a Cookie header; headers in names


def test_cookie_headers_and_authorization_headers_in_names_lose_their_values():
    df = ingest(
        event(
            1,
            "get",
            "pods",
            userAgent=f"curl -H 'Cookie: theme=dark; sessionid={mark(96)}; x={mark(97)}' y",
            user={
                "username": f"Authorization: token {mark(98)}",
                "groups": ["system:authenticated"],
            },
        ),
        event(
            2,
            "get",
            "pods",
            user={
                "username": "system:serviceaccount:cookie:authorization",
                "groups": ["system:serviceaccounts:cookie"],
            },
        ),
    )
    assert markers(all_strings(df)) == set()
    assert df["user_agent"][0] == f"curl -H 'Cookie: {REDACTED}' y"
    # ':' separates the parts of a name: a namespace called "cookie" is no header
    assert df["user_name"][1] == "system:serviceaccount:cookie:authorization"
    assert df["user_groups"][1].to_list() == ["system:serviceaccounts:cookie"]
    assert df["redacted"].to_list() == [True, False]


def test_an_all_null_column_beside_text_columns_is_skipped_not_fatal():
    """A frame built by hand (a test, a library caller) may hold a column polars typed Null:
    it holds no text, so no credential; the columns beside it are still searched and
    rewritten (searching every column in one query had failed on it, as the per-column
    search did)."""
    from detector.events.redact import redact_text_columns

    df = pl.DataFrame({"empty": [None, None], "uri": ["/x?password=hunter2", None]})
    out, hit = redact_text_columns(df, ["empty", "uri"])
    assert out["uri"].to_list() == ["/x?password=<redacted>", None]
    assert hit is not None and hit.to_list() == [True, False]
    untouched, none = redact_text_columns(df.select("empty"), ["empty"])
    assert none is None and untouched.equals(df.select("empty"))


# ------------------------------------------------------- found by the review of 2026-12-02


def test_numbers_objects_and_op_less_patches_under_a_credential_name_lose_their_values():
    """A Helm release's values (YAML's unquoted ``password: 918273645`` is a number), a
    JSON patch whose value is a number or an object, and one without ``op``: each kept its
    credential (found by review). Booleans (``auth: true``) hold none and stay."""
    values = {"auth": {"rootPassword": 918273645, "enabled": True}, "redis": {"auth": True}}
    patch = [
        {"op": "replace", "path": "/spec/password", "value": 918273646},
        {"op": "add", "path": "/data/db_password", "value": {"v": mark(40)}},
        {"path": "/data/api_token", "value": mark(41)},
    ]
    df = ingest(
        event(1, "create", "helmreleases", requestObject={"kind": "HelmRelease", "spec": values}),
        event(2, "patch", "configmaps", name="app", requestObject=patch),
    )
    text = all_strings(df)
    assert markers(text) == set() and "918273645" not in text and "918273646" not in text
    assert body(df, 0)["spec"] == {
        "auth": {"rootPassword": REDACTED, "enabled": True},
        "redis": {"auth": True},
    }
    assert body(df, 1) == [
        {"op": "replace", "path": "/spec/password", "value": REDACTED},
        {"op": "add", "path": "/data/db_password", "value": {"v": REDACTED}},
        {"path": "/data/api_token", "value": REDACTED},
    ]
    line = b'{"kind":"Event","spec":{"values":{"auth":{"rootPassword":918273647}}},'
    raw = quarantine_frame([("f", "1", "invalid JSON", line)])["raw"][0]
    assert "918273647" not in raw and '"auth":"<redacted>"' in raw  # the object, whole


def test_a_secret_in_json_text_that_starts_with_white_space_or_a_capitalised_resource():
    """JSON nested in a string was parsed only when its first character was ``{``; and an
    event about ``Secrets`` (the audit log keeps what the client sent) was not about
    secrets (found by review)."""
    secret = {"kind": "Secret", "data": {"k": mark(42)}}
    applied = {LAST: " " + json.dumps(secret)}
    df = ingest(
        event(
            1, "update", "secrets", requestObject={**secret, "metadata": {"annotations": applied}}
        ),
        event(2, "update", "configmaps", requestObject={"data": {"x": "\n" + json.dumps(secret)}}),
        event(3, "patch", "Secrets", requestObject={"data": {"k": mark(43)}}),
    )
    assert markers(all_strings(df)) == set()
    assert body(df, 2) == {"data": {"k": REDACTED}}


def test_credentials_named_the_way_images_name_them_and_tokens_of_known_formats():
    env = [
        {"name": name, "value": mark(50 + i)}
        for i, name in enumerate(
            [
                "RABBITMQ_DEFAULT_PASS",
                "MYSQL_PWD",
                "LDAP_BIND_PW",
                "SECRET_KEY_BASE",
                "RAILS_MASTER_KEY",
                "ENCRYPTION_KEY",
                "OAUTH_CLIENT_SECRETS",
                "GOOGLE_APPLICATION_CREDENTIALS_JSON",
            ]
        )
    ]
    kept = [{"name": "BYPASS", "value": "on"}, {"name": "CACHE_KEY", "value": "v1"}]
    pod = {"kind": "Pod", "spec": {"containers": [{"name": "app", "env": env + kept}]}}
    agent = f"ci ghp_{'a1' * 18} xoxb-{mark(60)} https://hooks.slack.com/services/T0/B0/{mark(61)}"
    pgp = f"-----BEGIN PGP PRIVATE KEY BLOCK-----\n{mark(62)}\n-----END PGP PRIVATE KEY BLOCK-----"
    df = ingest(
        event(1, "create", "pods", requestObject=pod, userAgent=agent),
        event(2, "create", "configmaps", requestObject={"data": {"signing": pgp}}),
    )
    text = all_strings(df)
    assert markers(text) == set() and "a1a1a1" not in text
    assert body(df)["spec"]["containers"][0]["env"][-2:] == kept
    assert "https://hooks.slack.com/services/" in df["user_agent"][0]
    assert "-----BEGIN PGP PRIVATE KEY BLOCK-----" in body(df, 1)["data"]["signing"]


def test_a_record_quarantined_whole_is_json_text_the_patterns_read(tmp_path):
    """A CloudWatch page nested deeper than orjson writes was kept as Python's repr, whose
    single quotes no pattern reads (found by review)."""
    from detector.sources.files import _json_text

    deep: dict = {"data": {"password": mark(70)}}
    for _ in range(300):
        deep = {"x": deep}
    text = _json_text(deep).decode()
    assert text.startswith('{"x": {"x":') and "'" not in text
    row = quarantine_frame([("f", "1", "not a page", text.encode())]).row(0, named=True)
    assert markers(row["raw"]) == set()


def test_in_an_exec_uri_what_is_assigned_goes_and_the_rest_of_the_command_stays():
    """URL-encoded, a value ends at an encoded space; one in encoded quotes goes whole."""
    from urllib.parse import quote

    def uri(*words: str) -> str:
        query = "&".join(f"command={quote(w, safe='')}" for w in words)
        return f"/api/v1/namespaces/app/pods/p/exec?{query}&container=app"

    df = ingest(
        event(
            1,
            "create",
            "pods",
            requestURI=uri("sh", "-c", f"PGPASSWORD='{mark(80)} x{mark(81)}' psql -h db"),
        ),
        event(
            2,
            "create",
            "pods",
            requestURI=uri("sh", "-c", f"TOKEN={mark(82)} && curl -s http://169.254.169.254/"),
        ),
        event(3, "create", "pods", requestURI=uri(f"--password={mark(83)}", "--host", "db")),
        # a shell word whole: quotes inside it, a command substitution, parentheses
        event(4, "create", "pods", requestURI=uri("sh", "-c", f"TOKEN=$(echo {mark(84)}) x")),
        event(5, "create", "pods", requestURI=uri("sh", "-c", f'PASSWORD=ab"c {mark(85)}" x')),
        event(6, "create", "pods", requestURI=uri("sh", "-c", f"PASSWORD=(a {mark(86)}) x")),
        event(7, "create", "pods", requestURI=uri("sh", "-c", f"TOKEN=`echo {mark(87)}` x")),
        # a header's value to its end; a URL's password
        event(8, "create", "pods", requestURI=uri("curl", "-H", f"X-Api-Key: k {mark(88)}")),
        event(9, "create", "pods", requestURI=uri("curl", f"https://u:{mark(89)}@host/x")),
        # curl's user:password flag, as its own argument and inside a shell line
        event(10, "create", "pods", requestURI=uri("curl", "-u", f"admin:{mark(90)}", "x")),
        event(11, "create", "pods", requestURI=uri("sh", "-c", f"curl --user=a:{mark(91)} x")),
    )
    assert markers(all_strings(df)) == set()
    assert all(text.endswith("&container=app") for text in df["request_uri"])
    # a substitution that reads a file prints no credential literally: the file stays
    # (a stolen token's path is what exec-credential-read looks for)
    read = ingest(event(1, "create", "pods", requestURI=uri("sh", "-c", "T=$(</run/secrets/t); x")))
    assert "%2Frun%2Fsecrets%2Ft" in read["request_uri"][0]
    # and a -u of another command, or a time format, is no user:password
    kept = ingest(event(1, "create", "pods", requestURI=uri("sh", "-c", "date -u +%H:%M")))
    assert "%25H%3A%25M" in kept["request_uri"][0]
    assert "psql" in df["request_uri"][0] and "169.254.169.254" in df["request_uri"][1]
    assert "--host" in df["request_uri"][2]


def test_a_list_item_with_a_path_and_a_value_is_walked_as_an_object_too():
    """Taking any list item with ``path`` and ``value`` for a JSON-patch operation judged
    its value by the path alone: an Argo parameter ``{name: DB_PASSWORD, path, value}``
    kept its value (found by review)."""
    workflow = {
        "kind": "Workflow",
        "spec": {
            "arguments": {
                "parameters": [{"name": "DB_PASSWORD", "path": "/tmp/p", "value": mark(95)}]
            }
        },
    }
    df = ingest(event(1, "create", "workflows", requestObject=workflow))
    assert markers(all_strings(df)) == set()
    (param,) = body(df)["spec"]["arguments"]["parameters"]
    assert param == {"name": "DB_PASSWORD", "path": "/tmp/p", "value": REDACTED}


def test_credentials_a_security_review_found_kept_are_redacted():
    """Each shape a review planted and found in the lake (events, quarantine): a Keycloak
    credential list, an object under a credential key, key names spelled with how they
    are written, a Secret in JSON text that does not parse, a kind or resource with white
    space, tokens of known formats, a password holding '@' in a URL."""
    realm = {
        "users": [{"username": "admin", "credentials": [{"type": "password", "value": mark(1)}]}]
    }
    secret = json.dumps({"kind": "Secret", "data": {"x": mark(2)}})
    deep = '{"kind":"Secret","data":{"x":"' + mark(3) + '"},"pad":' + "[" * 1100 + "]" * 1100 + "}"
    names = {
        key: mark(10 + i)
        for i, key in enumerate(
            ["api_keys", "authkey", "secret_id", "SecretString", "password_b64",
             "private_key_pem", "privKey", "clientSecretValue", "tokenValue", "passcode"]
        )
    }  # fmt: skip
    tokens = " ".join(
        [
            f"glpat-{mark(30)}abcdefg",
            f"sk-proj-{mark(31)}abcdefg",
            f"AIza{mark(32)}{'x' * 22}",
            "AKIAIOSFODNN7EXAMPLE",  # an access key's id: no secret (the lake keeps one)
        ]
    )
    df = ingest(
        event(1, "create", "configmaps", requestObject={"data": {"realm.json": json.dumps(realm)}}),
        event(
            2,
            "create",
            "configmaps",
            requestObject={
                "data": {
                    "secrets.jsonl": secret + "\n" + secret,  # JSON Lines
                    "backup.json": "# nightly\n" + secret,  # text before the JSON
                    "nan.json": secret[:-1] + ', "n": NaN}',  # what Python's json.dumps writes
                    "deep.json": deep,  # deeper than orjson reads
                }
            },
        ),
        event(3, "create", "apps", requestObject={"spec": {"password": {"value": mark(4)}}}),
        event(4, "create", "configmaps", requestObject={"data": names}),
        event(5, "create", "configmaps", requestObject={"kind": "Secret ", "data": {"k": mark(5)}}),
        event(6, "update", "secrets ", requestObject={"data": {"k": mark(6)}}),
        event(7, "create", "configmaps", requestObject={"data": {"env": tokens}}),
        event(
            8,
            "create",
            "configmaps",
            requestObject={"data": {"url": f"postgres://app:p@ss{mark(7)}@db:5432/app"}},
        ),
    )
    text = all_strings(df)
    assert markers(text) == set() and "AKIAIOSFODNN7EXAMPLE" in text
    # What says where a credential is stays, and so do the names and the host.
    ref = {
        "password": {"secretKeyRef": {"name": "db", "key": "pw"}},
        "auth": {"enabled": True},
        "serviceAccountToken": {"expirationSeconds": 3607, "audience": "sts.amazonaws.com"},
    }
    kept = ingest(event(9, "create", "apps", requestObject={"spec": ref}))
    assert body(kept)["spec"] == ref
    # What the first version of these fixes destroyed (found by review): names with an
    # `sk-` part, a taint's and a Secret type's value, Helm values deeper under `auth`,
    # a manifest that only mentions a Secret.
    taint = {"key": "example.com/auth", "value": "restricted", "effect": "NoSchedule"}
    typed = {"type": "kubernetes.io/service-account-token", "value": "default"}
    helm = {"auth": {"config": {"text": "ldap", "data": "x"}, "enabled": True}}
    manifest = '{"kind": "Secret"} // referenced by name only\n{"kind": "Deployment"}'
    plain = ingest(
        event(
            10,
            "create",
            "pods",
            ns="shop-sk-production-eu-central",
            name="web-sk-checkoutfrontend1234567890",
            requestObject={"spec": {"taints": [taint], "t": typed, "values": helm}},
        ),
        event(11, "create", "configmaps", requestObject={"data": {"m.json": manifest}}),
    )
    assert plain["namespace"][0] == "shop-sk-production-eu-central"
    assert plain["name"][0] == "web-sk-checkoutfrontend1234567890"
    assert body(plain)["spec"] == {"taints": [taint], "t": typed, "values": helm}
    assert body(plain, 1)["data"]["m.json"] == manifest
    listed = ingest(event(12, "create", "apps", requestObject={"passwords": [{"value": mark(0)}]}))
    assert markers(all_strings(listed)) == set()
    assert body(df, 0)["data"]["realm.json"].count('"username":"admin"') == 1
    assert set(body(df, 3)["data"]) == set(names)
    assert "@db:5432/app" in body(df, 7)["data"]["url"]
    # Quarantined, the same object under a credential key loses its value.
    line = b'{"kind":"Event","weird":{"password":{"v":"' + mark(8).encode() + b'"}},'
    assert markers(quarantine_frame([("f", "1", "invalid JSON", line)])["raw"][0]) == set()
    cut = b'{"kind":"Secret","binaryData":{"k":"' + mark(9).encode()  # cut short
    assert markers(quarantine_frame([("f", "2", "invalid JSON", cut)])["raw"][0]) == set()


def test_passwords_given_to_commands_in_an_exec_request_are_redacted():
    """mysql -pX (attached), redis-cli -a X, aws configure set aws_secret_access_key X,
    and a typed status reason quoting curl -u: each was kept (found by review). The rest
    of the command stays, and -P (a port) and mkdir -p are not passwords."""
    from urllib.parse import quote

    def uri(*words: str) -> str:
        return "/api/v1/namespaces/d/pods/db/exec?" + "&".join(
            f"command={quote(w, safe='')}" for w in words
        )

    df = ingest(
        event(1, "create", "pods", requestURI=uri("mysql", "-uroot", f"-p{mark(20)}", "-P3306")),
        event(2, "create", "pods", requestURI=uri("sh", "-c", f"mysql -p'{mark(21)}' -e 'x'")),
        event(3, "create", "pods", requestURI=uri("redis-cli", "-a", mark(22), "ping")),
        event(
            4,
            "create",
            "pods",
            requestURI=uri("aws", "configure", "set", "aws_secret_access_key", mark(23)),
        ),
        event(5, "create", "pods", requestURI=uri("mkdir", "-p", "/tmp/x")),
        event(6, "create", "pods", requestURI=uri("kubectl", "get", "secret", "prod-db")),
        event(7, "create", "pods", requestURI=uri("sh", "-c", f"redis-cli -a {mark(25)} ping")),
    )
    assert markers(all_strings(df)) == set()
    assert df["request_uri"][5].endswith("command=secret&command=prod-db")  # what was read
    assert df["request_uri"][6].endswith("%20ping")  # the rest of the command stays
    assert redact_text("docker run -u 1000:1000 img") == "docker run -u 1000:1000 img"
    uris = df["request_uri"].to_list()
    assert "command=-uroot" in uris[0] and "command=-P3306" in uris[0]
    assert uris[2].endswith("&command=ping") and uris[4] == uri("mkdir", "-p", "/tmp/x")
    typed = redact_text(f"rotated; old one: curl -u admin:{mark(24)} https://x")
    assert markers(typed) == set() and "curl -u admin:" in typed
