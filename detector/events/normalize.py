"""Raw audit lines -> canonical event rows, with redaction and a quarantine for the rest.

The hot path is columnar: a batch of lines is parsed in one polars ``read_ndjson`` call
against an explicit schema and every derived column is a polars expression. Python only
touches the lines that need it: a batch that fails to parse is split in halves until the
bad lines are isolated (so one bad line costs about ``2*log2(n)`` re-parses, and its good
neighbours are never lost), and Secret/TokenRequest bodies are redacted object by object
because their structure (lists, patches, last-applied annotations) is not regular.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from detector.events.schema import (
    CANONICAL_COLUMNS,
    QUARANTINE_COLUMNS,
    QUARANTINE_RAW_CAP,
    RAW_EVENT_SCHEMA,
)

#: Lines longer than this are quarantined unparsed. The API server itself caps request
#: bodies near 3 MiB and CloudWatch cuts entries at 256 KB, so anything larger is damage.
MAX_LINE_BYTES = 4 * 1024 * 1024

REDACTED = "<redacted>"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"

# Bearer/Basic credentials anywhere in a body or annotation, and JSON members whose key
# names a credential (TokenReview spec.token, webhook client configs, proxied headers).
_BEARER = r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]{8,}=*"
_SECRET_KEYS = (
    r'(?i)("(?:authorization|proxy-authorization|token|id_token|access_token|refresh_token'
    r'|password|client_secret|x-api-key)"\s*:\s*)"(?:[^"\\]|\\.)*"'
)
_NEEDS_OBJECT_REDACTION = r'"kind":\s*"(?:Secret|SecretList|TokenRequest)"'
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


@dataclass
class Normalized:
    """One batch's outcome: canonical events and quarantined lines."""

    events: pl.DataFrame
    quarantine: pl.DataFrame


# --------------------------------------------------------------------------- parsing
def _ndjson_bytes(lines: pa.Array, *, terminated: bool = False) -> bytes:
    """NDJSON bytes of ``lines``: a buffer slice when each line keeps its newline (files),
    else one C-level join (4x faster than Arrow's element-wise join kernel)."""
    if not terminated:
        return b"\n".join(lines.to_pylist())
    if len(lines) == 0:
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    lo, hi = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return lines.buffers()[2].to_pybytes()[lo:hi] if lo else lines.buffers()[2].to_pybytes()[:hi]


def _read(data: bytes) -> pl.DataFrame:
    # scan+collect is ~12% faster than read_ndjson on 48 MB blocks (measured, polars 2.1)
    return pl.scan_ndjson(io.BytesIO(data), schema=RAW_EVENT_SCHEMA).collect()


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:300] if message.strip() else "parse error"


def _parse_reason(exc: Exception, line: bytes) -> str:
    """A reason an operator can act on, from polars' error text."""
    text = _first_line(str(exc))
    if "InvalidUtf8" in text:
        return "invalid UTF-8"
    if "expected to contain JSON object" in text:
        return "not a JSON object"
    if "error parsing line" in text or "EOF" in text or "Syntax" in text:
        return f"invalid JSON: {text}"
    return f"wrong type: {text}"


def _parse_isolating(
    lines: pa.Array, index: pa.Array, *, terminated: bool = False
) -> tuple[list[pl.DataFrame], list[int], list[tuple[int, str]]]:
    """Parse ``lines``; on failure bisect so only the bad lines are set aside."""
    frames: list[pl.DataFrame] = []
    good_idx: list[int] = []
    bad: list[tuple[int, str]] = []
    stack = [(0, len(lines))]
    while stack:
        lo, hi = stack.pop()
        chunk = lines.slice(lo, hi - lo)
        data = _ndjson_bytes(chunk, terminated=terminated)
        try:
            df = _read(data)
        except pl.exceptions.PolarsError as exc:  # Compute/Schema/...: all mean bad input
            if hi - lo == 1:
                bad.append((index[lo].as_py(), _parse_reason(exc, chunk[0].as_py())))
                continue
            mid = (lo + hi) // 2
            stack.extend([(mid, hi), (lo, mid)])  # lo half first: keeps input order
            continue
        if df.height != hi - lo:  # a whitespace-only line the parser skipped
            if hi - lo == 1:
                continue
            mid = (lo + hi) // 2
            stack.extend([(mid, hi), (lo, mid)])
            continue
        frames.append(df)
        good_idx.extend(index.slice(lo, hi - lo).to_pylist())
    return frames, good_idx, bad


# --------------------------------------------------------------------------- redaction
def _redact_secret_like(obj: Any, *, force: bool) -> bool:
    """Replace Secret payload values in place; ``force`` when the body is a Secret patch."""
    changed = False
    if isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict) and "op" in item and "path" in item:
                path = str(item.get("path", ""))
                if force and path.startswith(("/data", "/stringData")) and "value" in item:
                    item["value"] = _redact_values(item["value"])
                    changed = True
            else:
                changed |= _redact_secret_like(item, force=force)
        return changed
    if not isinstance(obj, dict):
        return False
    kind = obj.get("kind")
    if kind in ("SecretList", "List") or "items" in obj:
        changed |= _redact_secret_like(obj.get("items") or [], force=force or kind == "SecretList")
    if kind == "TokenRequest":
        status = obj.get("status")
        if isinstance(status, dict) and "token" in status:
            status["token"] = REDACTED
            changed = True
    if kind == "Secret" or (force and kind is None):
        for key in ("data", "stringData"):
            if isinstance(obj.get(key), dict) and obj[key]:
                obj[key] = _redact_values(obj[key])
                changed = True
        annotations = (obj.get("metadata") or {}).get("annotations")
        if isinstance(annotations, dict) and _LAST_APPLIED in annotations:
            annotations[_LAST_APPLIED] = REDACTED
            changed = True
    return changed


def _redact_values(value: Any) -> Any:
    if isinstance(value, dict):
        return dict.fromkeys(value, REDACTED)
    return REDACTED


def redact_object(text: str | None, *, is_secret_resource: bool) -> tuple[str | None, bool]:
    """Redact one request/response body (JSON text); returns (text, changed)."""
    if text is None:
        return None, False
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        # A body that is not JSON (rare: a raw string) cannot be inspected: drop it whole.
        return (REDACTED, True) if is_secret_resource else (text, False)
    if _redact_secret_like(obj, force=is_secret_resource):
        return orjson.dumps(obj).decode(), True
    return text, False


def _redact(df: pl.DataFrame) -> pl.DataFrame:
    """Secret payloads and credentials out, before anything is written."""
    objects = ("request_object", "response_object", "annotations")
    # Find first, replace only where found: most bodies hold no credential, and searching
    # is much cheaper than rewriting and comparing every string.
    found = {
        c: (pl.col(c).str.contains(_BEARER) | pl.col(c).str.contains(_SECRET_KEYS)).fill_null(False)
        for c in objects
    }
    cleaned = df.with_columns(
        *(
            pl.when(found[c])
            .then(
                pl.col(c)
                .str.replace_all(_BEARER, "${1} " + REDACTED)
                .str.replace_all(_SECRET_KEYS, '${1}"' + REDACTED + '"')
            )
            .otherwise(pl.col(c))
            .alias(c)
            for c in objects
        ),
        pl.any_horizontal(list(found.values())).alias("redacted"),
    )
    secretish = (
        (pl.col("resource") == "secrets")
        | ((pl.col("resource") == "serviceaccounts") & (pl.col("subresource") == "token"))
    ) & (pl.col("request_object").is_not_null() | pl.col("response_object").is_not_null())
    secretish = (
        secretish
        | pl.col("request_object").str.contains(_NEEDS_OBJECT_REDACTION).fill_null(False)
        | pl.col("response_object").str.contains(_NEEDS_OBJECT_REDACTION).fill_null(False)
    )
    idx = cleaned.select(pl.arg_where(secretish.fill_null(False))).to_series()
    if idx.len() == 0:
        return cleaned
    rows = cleaned[idx].select("resource", "request_object", "response_object", "redacted")
    new_req, new_resp, new_flag = [], [], []
    for resource, req, resp, flag in rows.iter_rows():
        is_secret = resource == "secrets"
        req2, c1 = redact_object(req, is_secret_resource=is_secret)
        resp2, c2 = redact_object(resp, is_secret_resource=is_secret)
        new_req.append(req2)
        new_resp.append(resp2)
        new_flag.append(bool(flag) or c1 or c2)
    return cleaned.with_columns(
        cleaned["request_object"].scatter(idx, pl.Series(new_req, dtype=pl.String)),
        cleaned["response_object"].scatter(idx, pl.Series(new_resp, dtype=pl.String)),
        cleaned["redacted"].scatter(idx, pl.Series(new_flag, dtype=pl.Boolean)),
    )


# --------------------------------------------------------------------------- identity
def _extra(field: str) -> pl.Expr:
    return pl.col("user").struct.field("extra").struct.field(field).list.first().alias(field)


_ASSUMED_ROLE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/(.+)$")


def stored_principal(value: str) -> str:
    """The form :func:`principal_exprs` stores for an identity a user names, for one string.

    EKS reports an IAM session as the role's canonical ARN plus the session name, so
    ``arn:aws:sts::ACCT:assumed-role/ROLE/SESSION`` (what ``aws sts get-caller-identity``
    and CloudTrail show) is stored as ``arn:aws:iam::ACCT:role/ROLE/SESSION``. Anything
    else (usernames, IAM role or user ARNs, globs over them) is returned unchanged.
    """
    m = _ASSUMED_ROLE.match(value)
    if not m:
        return value
    partition, account, role, session = m.groups()
    return f"arn:{partition}:iam::{account}:role/{role}/{session}"


def principal_exprs() -> list[pl.Expr]:
    """``principal`` and ``principal_kind`` from the username and EKS's ``user.extra``.

    EKS maps many IAM sessions onto one Kubernetes username (``eng-admin``), so for IAM
    identities the principal is the canonical ARN plus the session name: one person, one
    principal. Everything else is identified by its username.
    """
    user = pl.col("user_name")
    arn = pl.col("iam_arn")
    # Kubelets on EKS authenticate through the node role (extra carries its ARN and the
    # instance id as session): the node name is the better identity for them.
    is_node = user.str.starts_with("system:node:").fill_null(False)
    is_iam = arn.is_not_null() & arn.str.starts_with("arn:") & ~is_node
    kind = (
        pl.when(is_iam & arn.str.contains(r":role/|:assumed-role/"))
        .then(pl.lit("iam_role"))
        .when(is_iam)
        .then(pl.lit("iam_user"))
        .when(user.is_in(["system:anonymous"]) | user.is_null())
        .then(pl.lit("anonymous"))
        .when(user.str.starts_with("system:serviceaccount:"))
        .then(pl.lit("service_account"))
        .when(user.str.starts_with("system:node:"))
        .then(pl.lit("node"))
        .when(user.str.starts_with("system:") | user.str.starts_with("eks:"))
        .then(pl.lit("system"))
        .when(user.str.starts_with("arn:aws:sts:") & user.str.contains(":assumed-role/"))
        .then(pl.lit("iam_role"))
        .when(user.str.starts_with("arn:aws:iam:") & user.str.contains(":user/"))
        .then(pl.lit("iam_user"))
        .otherwise(pl.lit("other"))
    )
    principal = (
        pl.when(is_iam & pl.col("iam_session_name").is_not_null())
        .then(pl.concat_str([arn, pl.col("iam_session_name")], separator="/"))
        .when(is_iam)
        .then(arn)
        .otherwise(user.fill_null("system:anonymous"))
    )
    return [principal.alias("principal"), kind.alias("principal_kind")]


def _timestamp(col: pl.Expr) -> pl.Expr:
    return col.str.to_datetime(_TS_FORMAT, time_unit="us", time_zone="UTC", strict=False)


def _annotation(key: str) -> pl.Expr:
    pattern = r'"' + re.escape(key) + r'":\s*"((?:[^"\\]|\\.)*)"'
    return pl.col("annotations").str.extract(pattern, 1)


def canonicalize(raw: pl.DataFrame, *, cluster: pl.Expr) -> pl.DataFrame:
    """Raw parsed Event columns (plus ``source``, ``source_position``) -> canonical rows."""
    user = pl.col("user")
    obj = pl.col("objectRef")
    status = pl.col("responseStatus")
    event_ts = pl.coalesce(
        pl.col("stageTimestamp"),
        pl.col("timestamp"),
        pl.col("metadata").struct.field("creationTimestamp"),
        pl.col("requestReceivedTimestamp"),
    )
    df = raw.with_columns(
        _timestamp(event_ts).alias("event_time"),
        _timestamp(pl.col("requestReceivedTimestamp")).alias("_received"),
        user.struct.field("username").alias("user_name"),
        user.struct.field("uid").alias("user_uid"),
        user.struct.field("groups").alias("user_groups"),
        pl.coalesce(_extra("canonicalArn"), _extra("arn")).alias("iam_arn"),
        _extra("sessionName").alias("iam_session_name"),
        _extra("accessKeyId").alias("access_key_id"),
    ).with_columns(principal_exprs())
    df = df.select(
        cluster.alias("cluster"),
        "event_time",
        pl.coalesce("_received", "event_time").alias("received_time"),
        pl.col("auditID").alias("audit_id"),
        "stage",
        "level",
        "verb",
        pl.col("requestURI").alias("request_uri"),
        "user_name",
        "user_uid",
        "user_groups",
        "principal",
        "principal_kind",
        "iam_arn",
        "iam_session_name",
        "access_key_id",
        pl.col("impersonatedUser").struct.field("username").alias("impersonated_user"),
        pl.col("sourceIPs").list.first().alias("source_ip"),
        pl.col("sourceIPs").alias("source_ips"),
        pl.col("userAgent").alias("user_agent"),
        obj.struct.field("resource").alias("resource"),
        obj.struct.field("subresource").alias("subresource"),
        obj.struct.field("namespace").alias("namespace"),
        obj.struct.field("name").alias("name"),
        obj.struct.field("apiGroup").alias("api_group"),
        obj.struct.field("apiVersion").alias("api_version"),
        status.struct.field("code").cast(pl.Int32, strict=False).alias("response_code"),
        status.struct.field("status").alias("response_status"),
        status.struct.field("reason").alias("response_reason"),
        _annotation("authorization.k8s.io/decision").alias("decision"),
        _annotation("authorization.k8s.io/reason").alias("reason"),
        "annotations",
        pl.col("requestObject").alias("request_object"),
        pl.col("responseObject").alias("response_object"),
        pl.lit(False).alias("redacted"),
        pl.col("apiVersion").alias("audit_api_version"),
        "source",
        "source_position",
    )
    return _redact(df).select(list(CANONICAL_COLUMNS))


# --------------------------------------------------------------------------- entry points
def quarantine_frame(
    records: list[tuple[str, str, str, bytes | str]], *, now: datetime | None = None
) -> pl.DataFrame:
    """Quarantine rows from (source, position, reason, raw) tuples; raw capped and decoded."""
    now = now or datetime.now(UTC)
    rows = []
    for source, position, reason, raw in records:
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
        rows.append(
            (
                now,
                source,
                position,
                reason,
                len(data),
                data[:QUARANTINE_RAW_CAP].decode("utf-8", "replace"),
            )
        )
    return pl.DataFrame(rows, schema=QUARANTINE_COLUMNS, orient="row")


def _raw(lines: pa.Array, i: int) -> bytes:
    return lines[i].as_py().rstrip(b"\r\n")


def normalize_lines(
    lines: pa.Array,
    *,
    positions: pa.Array,
    source: pa.Array | str,
    cluster: pa.Array | str,
    now: datetime | None = None,
    terminated: bool = False,
) -> Normalized:
    """Normalize a batch of raw lines (binary or string array, one audit Event JSON each).

    ``positions`` (line numbers or CloudWatch event ids) and ``source`` say where each line
    came from, so a quarantined line can be found again in its input.
    """
    n = len(lines)
    lines = lines.cast(pa.large_binary())
    positions = (
        pa.array(positions, pa.string()) if not isinstance(positions, pa.Array) else positions
    )
    positions = positions.cast(pa.string())
    sources = pa.repeat(source, n) if isinstance(source, str) else source.cast(pa.string())
    clusters = pa.repeat(cluster, n) if isinstance(cluster, str) else cluster.cast(pa.string())

    sizes = pc.binary_length(lines)
    # Blank lines are skipped like the parser does; only very short lines can be blank in
    # practice, so only those are looked at (a longer whitespace-only line is caught by the
    # row-count check in _parse_isolating and isolated there).
    short = pc.less_equal(sizes, 3).to_numpy(zero_copy_only=False)
    blank = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(short):
        blank[i] = not lines[int(i)].as_py().strip()
    blank = pa.array(blank)
    too_long = pc.greater(sizes, MAX_LINE_BYTES)
    keep = pc.and_not(pc.invert(blank), too_long)
    index = pa.array(range(n), pa.int64())
    keep_idx = pc.filter(index, keep)

    kept = lines if len(keep_idx) == n else pc.take(lines, keep_idx)
    frames, good_idx, bad = _parse_isolating(kept, keep_idx, terminated=terminated)
    records: list[tuple[str, str, str, bytes | str]] = []
    for i in pc.filter(index, too_long).to_pylist():
        records.append(
            (
                sources[i].as_py(),
                positions[i].as_py(),
                f"line too long: {sizes[i].as_py()} bytes (limit {MAX_LINE_BYTES})",
                _raw(lines, i)[:QUARANTINE_RAW_CAP],
            )
        )
    for i, reason in bad:
        records.append((sources[i].as_py(), positions[i].as_py(), reason, _raw(lines, i)))

    if frames:
        take = pa.array(good_idx, pa.int64())
        raw = pl.concat(frames, how="vertical").with_columns(
            pl.Series("source", pc.take(sources, take)),
            pl.Series("source_position", pc.take(positions, take)),
            pl.Series("_cluster", pc.take(clusters, take)),
            pl.Series("_line", good_idx, dtype=pl.Int64),
        )
        events = canonicalize(raw, cluster=pl.col("_cluster")).with_columns(
            raw["_line"].alias("_line")
        )
        missing = (
            pl.when(pl.col("audit_id").is_null() | (pl.col("audit_id") == ""))
            .then(pl.lit("missing auditID"))
            .when(pl.col("event_time").is_null())
            .then(pl.lit("missing or invalid stageTimestamp/timestamp"))
            .when(pl.col("stage").is_null())
            .then(pl.lit("missing stage"))
        )
        flagged = events.with_columns(missing.alias("_reason"))
        rejects = flagged.filter(pl.col("_reason").is_not_null())
        for line_no, reason in rejects.select("_line", "_reason").iter_rows():
            records.append(
                (
                    sources[line_no].as_py(),
                    positions[line_no].as_py(),
                    reason,
                    _raw(lines, line_no),
                )
            )
        events = flagged.filter(pl.col("_reason").is_null()).drop("_line", "_reason")
    else:
        events = pl.DataFrame(schema=CANONICAL_COLUMNS)
    return Normalized(events=events, quarantine=quarantine_frame(records, now=now))


def events_from_dicts(
    events: list[dict[str, Any]], *, cluster: str = "test", source: str = "test"
) -> pl.DataFrame:
    """Canonical rows from raw Event dicts: for tests and for hand-built examples.

    Raises ``ValueError`` if any event would be quarantined, since a caller building events
    by hand wants to know, not to lose them.
    """
    lines = pa.array([orjson.dumps(e) for e in events], pa.binary())
    result = normalize_lines(
        lines,
        positions=pa.array([str(i + 1) for i in range(len(events))]),
        source=source,
        cluster=cluster,
    )
    if result.quarantine.height:
        reasons = result.quarantine["reason"].to_list()
        raise ValueError(f"{len(reasons)} event(s) could not be normalized: {reasons[:3]}")
    return result.events
