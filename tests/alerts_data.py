"""Small findings, events and incidents for the incident and delivery tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl

from detector.lake.findings_schema import (
    FINDINGS_COLUMNS,
    FINDINGS_EVENTS_COLUMNS,
    SEVERITIES,
    with_finding_ids,
)

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
W = timedelta(minutes=10)


def finding(
    principal: str,
    start: datetime,
    *,
    severity: str = "low",
    detector: str = "model:iforest",
    tactic: str | None = None,
    technique: str | None = None,
    kind: str = "iam_role",
    cluster: str = "prod",
    title: str | None = None,
    **overrides: object,
) -> dict:
    """One findings row (schema FINDINGS_COLUMNS); ``overrides`` replace any column."""
    row = {
        "finding_id": None,
        "detector": detector,
        "severity": severity,
        "severity_rank": SEVERITIES.index(severity),
        "score": 1.0,
        "threshold": 0.65,
        "cluster": cluster,
        "principal": principal,
        "principal_kind": kind,
        "window_start": start,
        "window_end": start + W,
        "title": title or f"{detector} on {principal}",
        "reasons": ["a reason"],
        "top_features": [],
        "tactic": tactic,
        "technique": technique,
        "event_count": 1,
        "audit_ids": [f"a-{principal}-{detector}-{start:%H%M}"],
        "created_at": T0,
        "model_version": "v1",
        "cold_start": False,
    }
    return {**row, **overrides}


def frames(
    rows: list[dict],
    *,
    source_ip: str = "10.0.0.5",
    namespace: str = "default",
    user_agent: str = "kubectl/v1.30",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Findings (with ids) and one event per finding with the given request attributes."""
    df = with_finding_ids(pl.DataFrame(rows, schema=FINDINGS_COLUMNS, orient="row"))
    n = df.height
    events = pl.DataFrame(
        {
            "finding_id": df["finding_id"],
            "audit_id": [ids[0] for ids in df["audit_ids"]],
            "stage": ["ResponseComplete"] * n,
            "event_time": df["window_start"],
            "principal": df["principal"],
            "cluster": df["cluster"],
            "source_ip": [source_ip] * n,
            "namespace": [namespace] * n,
            "user_agent": [user_agent] * n,
        }
    )
    full = pl.DataFrame(schema=FINDINGS_EVENTS_COLUMNS)
    events = pl.concat([full, events], how="diagonal_relaxed").select(full.columns)
    return df, events.cast(dict(FINDINGS_EVENTS_COLUMNS))


class Receiver:
    """A loopback HTTP server that records requests and answers from a plan of statuses."""

    def __init__(
        self, statuses: list[int] | None = None, before: Callable[[], int | None] | None = None
    ) -> None:
        """``before``: called as each request arrives; a status it returns overrides the
        plan (a test's way to hold an answer until something else happened)."""
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = rec.statuses.pop(0) if rec.statuses else 200
                status = (before() if before else None) or status
                rec.requests.append({"headers": dict(self.headers), "body": body, "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/SECRET-PATH"

    @property
    def delivered(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def queue(name: str) -> tuple[str, str]:
    """An SQS queue on the moto server (AWS settings from the environment): (url, arn)."""
    import boto3

    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def drain(url: str) -> list[dict]:
    """Every message in the queue, as JSON, taken off it."""
    import boto3

    out = []
    sqs = boto3.client("sqs")
    while True:
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not msgs:
            return out
        out += [json.loads(m["Body"]) for m in msgs]
        for m in msgs:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
