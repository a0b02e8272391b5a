"""The canonical audit-event schema: the one contract between sources, the lake and analysis.

Every source (files, CloudWatch, S3 objects) is turned into rows of :data:`EVENT_SCHEMA` by
:mod:`detector.events.normalize`; every reader of the lake gets these columns back from
:func:`detector.lake.scan_events` (with ``cluster`` restored from the partition path).
Each column is documented in ``docs/schema.md``; a test keeps the two in step.

The raw parse schema (:data:`RAW_EVENT_SCHEMA`) is explicit on purpose: polars infers a
JSON schema from the first 100 rows and silently drops keys first seen later, and an
inferred empty struct (``responseStatus.metadata: {}``) cannot be written to Parquet.
Free-form objects (request/response bodies, annotations, ``user.extra``) are read as JSON
*strings* so unknown fields are kept, never fail the row, and never change the schema.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:  # only named in a signature: importing pyarrow costs every command
    import pyarrow as pa

SCHEMA_VERSION = 1

#: Principal kinds, from most to least specific identity.
PRINCIPAL_KINDS = (
    "iam_role",
    "iam_user",
    "service_account",
    "node",
    "system",
    "anonymous",
    "other",
)

_TS = pl.Datetime("us", "UTC")

#: Columns of ``events/cluster=C/date=D/hour=H/*.parquet`` in file order. ``cluster`` is a
#: partition key only (Athena forbids a column that is also a partition key), so it is not
#: stored inside the files; :func:`detector.lake.scan_events` adds it back.
EVENT_COLUMNS: dict[str, pl.DataType] = {
    "event_time": _TS,  # stageTimestamp (v1) / timestamp (v1beta1), UTC
    "received_time": _TS,  # requestReceivedTimestamp
    "audit_id": pl.String(),
    "stage": pl.String(),
    "level": pl.String(),
    "verb": pl.String(),
    "request_uri": pl.String(),
    "user_name": pl.String(),
    "user_uid": pl.String(),
    "user_groups": pl.List(pl.String()),
    "principal": pl.String(),
    "principal_kind": pl.String(),
    "iam_arn": pl.String(),  # user.extra.canonicalArn (or arn) for IAM identities on EKS
    "iam_session_name": pl.String(),
    "access_key_id": pl.String(),
    "impersonated_user": pl.String(),
    "impersonated_groups": pl.List(pl.String()),  # kubectl --as-group
    "source_ip": pl.String(),
    "source_ips": pl.List(pl.String()),
    "user_agent": pl.String(),
    "resource": pl.String(),
    "subresource": pl.String(),
    "namespace": pl.String(),
    "name": pl.String(),
    "api_group": pl.String(),
    "api_version": pl.String(),
    "response_code": pl.Int32(),
    "response_status": pl.String(),  # responseStatus.status (Success/Failure)
    "response_reason": pl.String(),  # responseStatus.reason (Forbidden, NotFound, ...)
    "decision": pl.String(),  # annotation authorization.k8s.io/decision
    "reason": pl.String(),  # annotation authorization.k8s.io/reason
    "annotations": pl.String(),  # JSON object, all annotations as sent
    "request_object": pl.String(),  # JSON, redacted
    "response_object": pl.String(),  # JSON, redacted
    "redacted": pl.Boolean(),  # true when any value above was replaced by <redacted>
    "audit_api_version": pl.String(),  # audit.k8s.io/v1 or v1beta1
    "source": pl.String(),  # where the line came from: path/URI or log group/stream
    "source_position": pl.String(),  # line number, or CloudWatch eventId
}

#: The full canonical row as analysis code sees it (after a lake scan).
CANONICAL_COLUMNS: dict[str, pl.DataType] = {"cluster": pl.String(), **EVENT_COLUMNS}

#: Key of an event: an event is logged once per stage. What links findings to events.
EVENT_KEY = ("audit_id", "stage")
#: What makes two rows copies of one event, the lake's dedup key: its key and the stage's
#: own time, which every copy carries to the microsecond. The API server takes the audit
#: ID from the client's ``Audit-ID`` header when there is one, so a caller can give a
#: harmless request's ID to the next ones: keyed on (audit_id, stage) alone, an exec and
#: a cluster-admin binding were dropped as copies of a ``get`` (found by review).
COPY_KEY = ("audit_id", "stage", "event_time")

#: Partition columns of the events table, in path order.
PARTITION_COLUMNS = ("cluster", "date", "hour")

#: ``user.extra`` keys we keep. EKS puts the IAM identity here; service-account tokens bound
#: to a pod carry the pod and node. Read as a struct (not JSON text) because the IAM fields
#: are on the hot path of principal derivation; other keys are dropped.
USER_EXTRA_KEYS = (
    "arn",
    "canonicalArn",
    "sessionName",
    "accessKeyId",
    "principalId",
    "authentication.kubernetes.io/pod-name",
    "authentication.kubernetes.io/node-name",
)

_USER = pl.Struct(
    {
        "username": pl.String(),
        "uid": pl.String(),
        "groups": pl.List(pl.String()),
        "extra": pl.Struct({k: pl.List(pl.String()) for k in USER_EXTRA_KEYS}),
    }
)

#: What we read out of one audit.k8s.io Event JSON line (v1 and v1beta1).
RAW_EVENT_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(),
    "apiVersion": pl.String(),
    "level": pl.String(),
    "auditID": pl.String(),
    "stage": pl.String(),
    "requestURI": pl.String(),
    "verb": pl.String(),
    "user": _USER,
    "impersonatedUser": _USER,
    "sourceIPs": pl.List(pl.String()),
    "userAgent": pl.String(),
    "objectRef": pl.Struct(
        {
            "resource": pl.String(),
            "namespace": pl.String(),
            "name": pl.String(),
            "apiGroup": pl.String(),
            "apiVersion": pl.String(),
            "subresource": pl.String(),
        }
    ),
    "responseStatus": pl.Struct(
        {
            "status": pl.String(),
            "reason": pl.String(),
            "code": pl.Int64(),
        }
    ),
    "requestObject": pl.String(),
    "responseObject": pl.String(),
    "requestReceivedTimestamp": pl.String(),
    "stageTimestamp": pl.String(),
    "timestamp": pl.String(),  # v1beta1
    "metadata": pl.Struct({"creationTimestamp": pl.String()}),  # v1beta1
    "annotations": pl.String(),
}


def events_polars_schema(*, with_cluster: bool = False) -> pl.Schema:
    """The schema of event rows, with or without the ``cluster`` partition column."""
    return pl.Schema(CANONICAL_COLUMNS if with_cluster else EVENT_COLUMNS)


def events_arrow_schema(*, with_cluster: bool = False) -> pa.Schema:
    """The Arrow schema written to Parquet (what Athena DDL and readers see)."""
    return pl.DataFrame(schema=events_polars_schema(with_cluster=with_cluster)).to_arrow().schema


def empty_events(*, with_cluster: bool = True) -> pl.DataFrame:
    """A zero-row frame with the canonical columns, for empty ranges."""
    return pl.DataFrame(schema=events_polars_schema(with_cluster=with_cluster))


#: Quarantine rows: one per input line that could not become an event.
QUARANTINE_COLUMNS: dict[str, pl.DataType] = {
    "quarantined_at": _TS,
    "source": pl.String(),
    "source_position": pl.String(),
    "reason": pl.String(),
    "raw_size": pl.Int64(),
    "raw": pl.String(),  # capped at QUARANTINE_RAW_CAP bytes, invalid UTF-8 replaced
}

QUARANTINE_RAW_CAP = 64 * 1024
