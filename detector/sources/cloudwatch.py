"""CloudWatch Logs reader: the pages of EKS audit events in a log group, nothing more.

EKS writes audit events to streams ``kube-apiserver-audit-<id>`` of the group
``/aws/eks/<cluster>/cluster``, next to other components' streams. :class:`LogsReader`
lists them with ``DescribeLogStreams`` (prefix, 50 per page) and reads a time range with
``FilterLogEvents``, giving ``logStreamNames`` in batches of 100. Every event is checked
against the prefix again on our side: moto ignores ``logStreamNamePrefix`` on
``FilterLogEvents``, and AWS may answer empty pages that still carry a ``nextToken`` (they
are followed to the end).

Calls go through a :class:`~detector.ratelimit.Retrier` (pacing, backoff on throttling and
5xx). Deciding which range to read, writing to the lake and checkpointing are the
exporter's job (:mod:`detector.pipeline.export`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from detector.ratelimit import Retrier
from detector.sources.files import LineBatch, messages_batch

DEFAULT_STREAM_PREFIX = "kube-apiserver-audit-"
#: FilterLogEvents takes at most 100 stream names per call.
MAX_STREAMS_PER_CALL = 100
#: FilterLogEvents returns at most 10,000 events (and 1 MB) per page.
MAX_PAGE_LIMIT = 10_000
#: DescribeLogStreams returns at most 50 streams per page.
DESCRIBE_LIMIT = 50


# --------------------------------------------------------------------------- reading
@dataclass
class Page:
    """The audit events of one FilterLogEvents answer (other streams already removed)."""

    events: list[dict[str, Any]]
    ignored: int = 0


class PaginationStuck(Exception):
    """CloudWatch kept answering a page with the same token and nothing else."""


class LogsReader:
    """The two CloudWatch Logs calls an export needs, paced and retried."""

    def __init__(
        self,
        client: Any,
        log_group: str,
        *,
        stream_prefix: str = DEFAULT_STREAM_PREFIX,
        retrier: Retrier,
        page_limit: int = MAX_PAGE_LIMIT,
        stop: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.log_group = log_group
        self.stream_prefix = stream_prefix
        self.retrier = retrier
        self.page_limit = max(1, min(page_limit, MAX_PAGE_LIMIT))
        self.stop = stop or threading.Event()

    def streams(self) -> list[str]:
        """Names of the audit streams in the group, sorted."""
        names: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"logGroupName": self.log_group, "limit": DESCRIBE_LIMIT}
            if self.stream_prefix:  # an empty prefix: every stream (AWS refuses "")
                kwargs["logStreamNamePrefix"] = self.stream_prefix
            if token:
                kwargs["nextToken"] = token
            resp = self.retrier.call(
                "DescribeLogStreams", self.client.describe_log_streams, **kwargs
            )
            names.extend(
                s["logStreamName"]
                for s in resp.get("logStreams", [])
                if s.get("logStreamName", "").startswith(self.stream_prefix)
            )
            new_token = resp.get("nextToken")
            if not new_token or new_token == token:
                break
            token = new_token
        return sorted(set(names))

    def pages(self, streams: list[str], start_ms: int, end_ms: int) -> Iterator[Page]:
        """Pages of events with ``start_ms <= timestamp <= end_ms`` (inclusive, as the API)."""
        wanted = set(streams)
        for i in range(0, len(streams), MAX_STREAMS_PER_CALL):
            batch = streams[i : i + MAX_STREAMS_PER_CALL]
            token: str | None = None
            repeats = 0
            while True:
                kwargs: dict[str, Any] = {
                    "logGroupName": self.log_group,
                    "logStreamNames": batch,
                    "startTime": start_ms,
                    "endTime": end_ms,
                    "limit": self.page_limit,
                }
                if token:
                    kwargs["nextToken"] = token
                resp = self.retrier.call("FilterLogEvents", self.client.filter_log_events, **kwargs)
                raw = resp.get("events", [])
                events = [
                    e
                    for e in raw
                    if e.get("logStreamName", "").startswith(self.stream_prefix)
                    and e.get("logStreamName") in wanted
                    and start_ms <= int(e.get("timestamp", start_ms)) <= end_ms
                ]
                yield Page(events, ignored=len(raw) - len(events))
                new_token = resp.get("nextToken")
                if not new_token:
                    break
                # An empty page with a token is normal on AWS; the same token coming back
                # with nothing again and again is not: stop rather than spin, and say so.
                # Ending quietly made the chunk complete and moved the checkpoint past
                # whatever the token still had (found by review).
                repeats = repeats + 1 if (new_token == token and not raw) else 0
                if repeats >= 3:
                    raise PaginationStuck(
                        f"FilterLogEvents gave the same nextToken with no events {repeats} "
                        f"times for {self.log_group} from {start_ms} to {end_ms} ms: stopped, "
                        "the checkpoint before that window (run again)"
                    )
                if self.stop.is_set():
                    break
                token = new_token
            if self.stop.is_set():
                return


def page_batch(
    events: list[dict[str, Any]], *, region: str, log_group: str, cluster: str | None
) -> LineBatch:
    """The messages of CloudWatch events as one batch.

    Source is ``cloudwatch://REGION/GROUP#STREAM`` and position the ``eventId``, so a
    quarantined message can be found again. An event whose message is missing, not a
    string or blank is rejected with a reason (it cannot be an audit event, and dropping
    it silently would leave no trace of it).
    """
    prefix = f"cloudwatch://{region}{log_group}#"
    messages: list[str] = []
    ids: list[str] = []
    sources: list[str] = []
    rejected: list[tuple[str, str, str, bytes]] = []
    for ev in events:
        message = ev.get("message")
        source, eid = prefix + str(ev.get("logStreamName")), str(ev.get("eventId"))
        if not isinstance(message, str) or not message.strip():
            reason = "CloudWatch event without a message"
            rejected.append((source, eid, reason, str(message or "").encode()))
            continue
        messages.append(message)
        ids.append(eid)
        sources.append(source)
    batch = messages_batch(sources, messages, ids, cluster=cluster)
    batch.rejected = rejected
    return batch


__all__ = [
    "DEFAULT_STREAM_PREFIX",
    "DESCRIBE_LIMIT",
    "MAX_PAGE_LIMIT",
    "MAX_STREAMS_PER_CALL",
    "LogsReader",
    "Page",
    "page_batch",
]
