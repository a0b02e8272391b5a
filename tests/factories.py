"""Raw audit events and the input formats that carry them: the one place tests build them.

Every builder starts from :func:`make_event`, a realistic ``audit.k8s.io/v1`` Event as an
EKS API server writes it (IAM session in ``user.extra``), so a test that needs "an event"
gets the same shape everywhere and says only what it changes. The format writers wrap
messages the way each source delivers them (NDJSON audit log, ``aws logs
filter-log-events`` output, CloudWatch export-task objects, Firehose subscription objects).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from detector.sources import formats

#: The default event time of :func:`make_event` (minute ``i % 60`` of this hour).
BASE_TIME = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
AUDIT_STREAM = "kube-apiserver-audit-0123abcd"


def iso(at: datetime | int) -> str:
    """An RFC 3339 timestamp with microseconds, as the API server writes; ints are epoch ms."""
    if isinstance(at, int):
        at = datetime.fromtimestamp(at / 1000, UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_id(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


def make_event(i: int, *, at: datetime | int | None = None, **overrides: Any) -> dict[str, Any]:
    """A realistic audit.k8s.io/v1 event (EKS IAM session) with overridable parts.

    ``i`` makes the auditID unique; the time is ``at`` (a datetime or epoch ms), else
    minute ``i % 60`` of :data:`BASE_TIME`. ``overrides`` replace top-level fields.
    """
    if at is None:
        stamp = BASE_TIME + timedelta(minutes=i % 60, milliseconds=200)
    elif isinstance(at, int):
        stamp = datetime.fromtimestamp(at / 1000, UTC)
    else:
        stamp = at
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id(i),
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/app/pods",
        "verb": "list",
        "user": {
            "username": "eng-admin",
            "uid": "aws-iam-authenticator:111122223333:AROAEXAMPLE",
            "groups": ["system:authenticated", "eng"],
            "extra": {
                "arn": ["arn:aws:sts::111122223333:assumed-role/eng-admin/alice"],
                "canonicalArn": ["arn:aws:iam::111122223333:role/eng-admin"],
                "sessionName": ["alice"],
                "accessKeyId": ["ASIAEXAMPLE"],
            },
        },
        "sourceIPs": ["203.0.113.7", "10.0.0.1"],
        "userAgent": "kubectl/v1.31.2 (darwin/arm64) kubernetes/abcdef0",
        "objectRef": {"resource": "pods", "namespace": "app", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": iso(stamp - timedelta(milliseconds=100)),
        "stageTimestamp": iso(stamp),
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": 'RBAC: allowed by ClusterRoleBinding "eng"',
        },
    }
    ev.update(overrides)
    return ev


def audit_message(
    audit_id: str, ts: int, *, verb: str = "get", user: str = "alice", **overrides: Any
) -> str:
    """One event as a CloudWatch message string: ``audit_id`` at epoch ms ``ts``, a plain
    (non-IAM) ``user``; the request URI's namespace varies with the id."""
    ev = make_event(
        0,
        at=ts,
        auditID=audit_id,
        verb=verb,
        user={"username": user, "groups": ["system:authenticated"]},
        requestURI=f"/api/v1/namespaces/ns-{sum(map(ord, audit_id)) % 5}/pods",
        userAgent="kubectl/v1.31.2",
        sourceIPs=["203.0.113.7"],
        **overrides,
    )
    del ev["annotations"]
    return orjson.dumps(ev).decode()


# --------------------------------------------------------------------------- formats
# The framing comes from detector.sources.formats, the module the readers and the simulator
# use, so a test input is shaped exactly as the code under test expects it.
def _text(message: dict[str, Any] | str | bytes) -> bytes:
    if isinstance(message, dict):
        return orjson.dumps(message)
    return message.encode() if isinstance(message, str) else message


def ndjson(messages: list[dict[str, Any] | str | bytes], *, gz: bool = False) -> bytes:
    """An API server audit log: one message per line (gzip-compressed with ``gz``)."""
    data = formats.ndjson_text(_text(m) for m in messages)
    return formats.gzip_bytes(data) if gz else data


def cloudwatch_page(
    messages: list[dict[str, Any] | str], *, stream: str = AUDIT_STREAM, t0: int = 1795000000000
) -> dict[str, Any]:
    """``aws logs filter-log-events`` output holding ``messages``; eventIds are unique."""
    events = [
        orjson.dumps(
            formats.cloudwatch_event(
                stream,
                t0 + i,
                _text(m).decode("utf-8", "replace") if not isinstance(m, str) else m,
                t0 + 1000 + i,
                # unique across pages, 56 digits like CloudWatch's
                str(37 * 10**54 + (t0 - 1795000000000 + i) * 10**3),
            )
        )
        for i, m in enumerate(messages)
    ]
    return orjson.loads(formats.cloudwatch_page(events, [], None))


def export_task_object(messages: list[dict[str, Any] | str], *, t0: int = 1795000000000) -> bytes:
    """A CloudWatch export-task object: gzip of ``ISO-TIMESTAMP SPACE message`` lines."""
    return formats.gzip_bytes(
        b"".join(formats.export_line(t0 + i, _text(m)) for i, m in enumerate(messages))
    )


def firehose_object(
    messages: list[dict[str, Any] | str],
    *,
    group: str = "/aws/eks/prod-east/cluster",
    stream: str = AUDIT_STREAM,
    per_record: int = 3,
    t0: int = 1795000000000,
    ids: list[str] | None = None,
) -> bytes:
    """A Firehose object from a CloudWatch subscription: a CONTROL_MESSAGE, then records of
    ``per_record`` log events, back to back with no newline (one gzip member here)."""
    texts = [m if isinstance(m, str) else _text(m).decode() for m in messages]
    ids = ids or [f"evt-{i}" for i in range(len(texts))]
    records = [formats.control_record(t0)]
    for start in range(0, len(texts), per_record):
        records.append(
            formats.subscription_record(
                "111122223333",
                group,
                stream,
                ["to-firehose"],
                (
                    (ids[start + j], t0 + start + j, text)
                    for j, text in enumerate(texts[start : start + per_record])
                ),
            )
        )
    return formats.firehose_object(records, member_per_record=False)
