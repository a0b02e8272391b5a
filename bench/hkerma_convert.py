"""hkerma/kubernetes-event-dataset's flattened CSV -> audit.k8s.io Event NDJSON.

The capture (16,563 events, a kubeadm cluster installing and removing Helm charts for four
minutes) is the only real benign cluster traffic we have, so the rules are checked against
it: the defaults must not flood a normal cluster. Logstash flattened it to 15 columns with
no header; this puts the fields back where an audit Event has them. What the capture never
had stays absent: source IPs, user agents, authorization annotations, request bodies. The
namespace and API group, dropped by the flattening, are recovered from the request URI the
way the API server derives objectRef from it. A short row (no audit ID) is passed through
so the normal quarantine sees it.

Usage::

    python bench/hkerma_convert.py [CSV] > hkerma.ndjson     # default: ../shared copy
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The copy kept with its licence in tests/data/hkerma/ (gzipped; the converter reads .gz).
DEFAULT_CSV = Path(__file__).resolve().parents[1] / "tests/data/hkerma/audit-logs.csv.gz"

COLUMNS = (
    "host",
    "requestReceivedTimestamp",
    "user.username",
    "verb",
    "objectRef.resource",
    "objectRef.subresource",
    "objectRef.name",
    "responseObject.metadata.name",
    "requestURI",
    "auditID",
    "stage",
    "responseStatus.code",
    "responseObject.metadata.uid",
    "ownerReferences[0].uid",
    "responseStatus.details.uid",
)

_NAMESPACE = re.compile(r"/namespaces/([^/?]+)")
_GROUP_VERSION = re.compile(r"^/apis/([^/]+)/([^/?]+)|^/api/([^/?]+)")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def to_event(row: dict[str, str]) -> dict[str, Any]:
    """One flattened CSV row -> one audit Event (v1) dict."""
    uri = row.get("requestURI") or ""
    resource = row.get("objectRef.resource") or None
    object_ref: dict[str, Any] = {}
    if resource:
        object_ref["resource"] = resource
        if row.get("objectRef.subresource"):
            object_ref["subresource"] = row["objectRef.subresource"]
        if row.get("objectRef.name"):
            object_ref["name"] = row["objectRef.name"]
        ns = _NAMESPACE.search(uri)
        if ns:
            object_ref["namespace"] = ns.group(1)
        gv = _GROUP_VERSION.search(uri)
        if gv:
            object_ref["apiGroup"] = gv.group(1) or ""
            object_ref["apiVersion"] = gv.group(2) or gv.group(3)
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "stage": row.get("stage") or None,
        "requestURI": uri,
        "verb": row.get("verb") or None,
        "user": {"username": row.get("user.username") or None},
        "requestReceivedTimestamp": row.get("requestReceivedTimestamp") or None,
        # The capture kept one timestamp; the stage timestamp is within milliseconds of it.
        "stageTimestamp": row.get("requestReceivedTimestamp") or None,
    }
    if row.get("auditID"):
        event["auditID"] = row["auditID"]
    if object_ref:
        event["objectRef"] = object_ref
    code = row.get("responseStatus.code")
    if code and code.isdigit():
        event["responseStatus"] = {"code": int(code)}
    if row.get("responseObject.metadata.name") or row.get("responseObject.metadata.uid"):
        event["responseObject"] = {
            "metadata": {
                k: v
                for k, v in (
                    ("name", row.get("responseObject.metadata.name")),
                    ("uid", row.get("responseObject.metadata.uid")),
                )
                if v
            }
        }
    return event


def read_rows(path: Path = DEFAULT_CSV) -> Iterator[dict[str, str]]:
    """The CSV as dicts keyed by the original field paths (short rows padded)."""
    with _open_text(path) as fh:
        for values in csv.reader(fh):
            values = values + [""] * (len(COLUMNS) - len(values))
            yield dict(zip(COLUMNS, values, strict=False))


def convert(path: Path = DEFAULT_CSV) -> list[dict[str, Any]]:
    """All rows as Event dicts."""
    return [to_event(row) for row in read_rows(path)]


def write_ndjson(path: Path, out: io.TextIOBase) -> int:
    n = 0
    for event in convert(path):
        out.write(json.dumps(event, separators=(",", ":")) + "\n")
        n += 1
    return n


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CSV
    count = write_ndjson(source, sys.stdout)  # type: ignore[arg-type]
    print(f"{count} events", file=sys.stderr)
