"""The four audit input formats in one place: their names, their framing and their writers.

Why this module exists: three parts of the project must agree, byte for byte, on what each
format looks like. The readers in :mod:`detector.sources.files` parse them, the simulator
(:mod:`detector.simulate.writers`) produces them, and the test factories build small
examples of them. When each kept its own copy, a change on one side could silently stop
matching the other. Here the constants a reader keys on (record keys, message types, line
separators, log-group names) sit next to the function that writes them, and both sides
import them from here.

1. ``ndjson``: kube-apiserver ``--audit-log-path`` output, one Event JSON per line.
2. ``cloudwatch-json``: ``aws logs filter-log-events`` output, a JSON page holding
   ``events[].message``.
3. ``export-gz``: CloudWatch Logs export-task objects, gzip of lines
   ``ISO-TIMESTAMP SPACE message``.
4. ``firehose``: CloudWatch Logs subscription records delivered by Firehose to S3, each
   record a gzip member, the JSON objects back to back with no newline between them.

Writers return plain values (dicts, bytes) and never touch files: where and how output is
laid out (pages, parts, buffers) is the caller's choice. Gzip output is reproducible (no
file name, mtime 0), so the same input always gives the same bytes.
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

__all__ = [
    "AUTO",
    "CLOUDWATCH_JSON",
    "CONTROL_MESSAGE",
    "DATA_MESSAGE",
    "EXPORT_GZ",
    "FIREHOSE",
    "INPUT_FORMATS",
    "NDJSON",
    "cloudwatch_event",
    "cloudwatch_page",
    "control_record",
    "eks_log_group",
    "export_line",
    "firehose_object",
    "gzip_bytes",
    "gzip_stream",
    "ndjson_text",
    "subscription_record",
]

# --------------------------------------------------------------------------- names
NDJSON = "ndjson"
CLOUDWATCH_JSON = "cloudwatch-json"
EXPORT_GZ = "export-gz"
FIREHOSE = "firehose"
#: Every concrete format, in the order the docs list them.
INPUT_FORMATS = (NDJSON, CLOUDWATCH_JSON, EXPORT_GZ, FIREHOSE)
#: Readers only: guess the format from the first bytes (see ``files.sniff_format``).
AUTO = "auto"

# --------------------------------------------------------------------------- gzip
#: zlib's default trade-off; fixed so that written objects are reproducible.
GZIP_LEVEL = 6


def gzip_bytes(data: bytes) -> bytes:
    """One gzip member with no name and mtime 0: same data, same bytes."""
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def gzip_stream(raw: BinaryIO) -> gzip.GzipFile:
    """A streaming gzip writer over ``raw`` with the same reproducible header as
    :func:`gzip_bytes` (closing it does not close ``raw``)."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)


# --------------------------------------------------------------------------- ndjson
#: The API server ends every event with a newline, the last one included.
NDJSON_LINE_END = b"\n"


def ndjson_text(messages: Iterable[bytes]) -> bytes:
    """An audit log: each message (compact JSON, no newline) on its own line."""
    return b"".join(message + NDJSON_LINE_END for message in messages)


# --------------------------------------------------------------------------- cloudwatch-json
#: Top-level keys of a ``filter-log-events`` page; a reader recognises a page by them.
PAGE_KEYS = ("events", "searchedLogStreams", "nextToken")
PAGE_START = re.compile(r'\{\s*"(' + "|".join(PAGE_KEYS) + r')"')
PAGE_START_BYTES = re.compile(rb'\{\s*"(' + "|".join(PAGE_KEYS).encode() + rb')"')
#: The most events ``filter-log-events`` returns in one page.
MAX_PAGE_EVENTS = 10_000


def cloudwatch_event(
    stream: str, timestamp_ms: int, message: str, ingestion_ms: int, event_id: str
) -> dict[str, Any]:
    """One element of a page's ``events`` list, keys in the order the AWS CLI prints them."""
    return {
        "logStreamName": stream,
        "timestamp": timestamp_ms,
        "message": message,
        "ingestionTime": ingestion_ms,
        "eventId": event_id,
    }


def cloudwatch_page(
    events: list[bytes], searched_streams: Iterable[str], next_token: str | None
) -> bytes:
    """A whole page as the AWS CLI writes it (one JSON document and a newline).

    ``events`` are already-serialised :func:`cloudwatch_event` objects: a writer that
    fills pages of 10,000 events serialises each once instead of re-walking the page.
    ``next_token`` is present on every page but the last.
    """
    searched = b",".join(
        orjson.dumps({"logStreamName": s, "searchedCompletely": True}) for s in searched_streams
    )
    tail = b"" if next_token is None else b',"nextToken":' + orjson.dumps(next_token)
    return b"".join(
        (
            b'{"events":[',
            b",".join(events),
            b'],"searchedLogStreams":[' + searched + b"]" + tail + b"}\n",
        )
    )


# --------------------------------------------------------------------------- export-gz
#: What separates the timestamp from the message on an export-task line.
EXPORT_SEPARATOR = b" "
#: The timestamp prefix of an export-task line (readers also accept offsets).
EXPORT_PREFIX = re.compile(rb"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2}) ")


def export_timestamp(timestamp_ms: int) -> str:
    """``2026-11-27T10:00:00.123Z``: the ingestion-time prefix CloudWatch writes."""
    seconds, ms = divmod(timestamp_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def export_line(timestamp_ms: int, message: bytes) -> bytes:
    """One line of an export-task object, newline included."""
    return export_timestamp(timestamp_ms).encode() + EXPORT_SEPARATOR + message + b"\n"


def export_object_name(part: int) -> str:
    """The name CloudWatch gives the ``part``-th object of one log stream's export."""
    return f"{part:06d}.gz"


# --------------------------------------------------------------------------- firehose
CONTROL_MESSAGE = "CONTROL_MESSAGE"
DATA_MESSAGE = "DATA_MESSAGE"
#: What CloudWatch logs in the control record it sends when a subscription is created.
CONTROL_TEXT = "CWL CONTROL MESSAGE: Checking health of destination Firehose."
#: Top-level keys of a subscription record, in whatever order a producer wrote them
#: (CloudWatch puts messageType first; other writers, moto's included, do not).
SUBSCRIPTION_KEYS = (
    "messageType",
    "owner",
    "logGroup",
    "logStream",
    "subscriptionFilters",
    "logEvents",
    "policyLevel",
)
SUBSCRIPTION_START = re.compile(r'\{\s*"(' + "|".join(SUBSCRIPTION_KEYS) + r')"')
SUBSCRIPTION_START_BYTES = re.compile(rb'\{\s*"(' + "|".join(SUBSCRIPTION_KEYS).encode() + rb')"')
#: EKS control-plane logs go to this log group; its name carries the cluster.
EKS_LOG_GROUP = "/aws/eks/{cluster}/cluster"
EKS_LOG_GROUP_PATTERN = re.compile(r"^/aws/eks/([^/]+)/cluster\Z")


def eks_log_group(cluster: str) -> str:
    """``prod`` -> ``/aws/eks/prod/cluster``."""
    return EKS_LOG_GROUP.format(cluster=cluster)


def subscription_record(
    owner: str,
    log_group: str,
    log_stream: str,
    filters: list[str],
    log_events: Iterable[tuple[str, int, str]],
) -> dict[str, Any]:
    """A ``DATA_MESSAGE`` record: ``log_events`` are ``(id, timestamp_ms, message)``."""
    return {
        "messageType": DATA_MESSAGE,
        "owner": owner,
        "logGroup": log_group,
        "logStream": log_stream,
        "subscriptionFilters": filters,
        "logEvents": [
            {"id": event_id, "timestamp": timestamp_ms, "message": message}
            for event_id, timestamp_ms, message in log_events
        ],
    }


def control_record(timestamp_ms: int) -> dict[str, Any]:
    """The ``CONTROL_MESSAGE`` record that opens a subscription's first delivery; readers
    skip it."""
    return {
        "messageType": CONTROL_MESSAGE,
        "owner": "CloudwatchLogs",
        "logGroup": "",
        "logStream": "",
        "subscriptionFilters": [],
        "logEvents": [{"id": "", "timestamp": timestamp_ms, "message": CONTROL_TEXT}],
    }


def firehose_object(records: Iterable[dict[str, Any]], *, member_per_record: bool = True) -> bytes:
    """An S3 object as Firehose writes it: the records' JSON back to back, no newline.

    CloudWatch gzips every record and Firehose concatenates them as they are, so by
    default each record is its own gzip member; ``member_per_record=False`` gives one
    member for all (what a re-compressing producer writes; readers must take both).
    """
    texts = [orjson.dumps(record) for record in records]
    if member_per_record:
        return b"".join(gzip_bytes(text) for text in texts)
    return gzip_bytes(b"".join(texts))
