"""Sinks: send alerts to one destination, with retries and backoff, and say what failed.

Every sink takes a list of alerts and returns one :class:`Outcome` per alert; nothing
raises for a delivery failure (it becomes a dead letter). Retries: a transport error, a
throttle (HTTP 429, AWS throttling) or a server error (5xx) is retried ``retries`` times
with exponential backoff; a client error (other 4xx, a rejected finding) is not, since
sending the same bytes again cannot fix it. ``sleep`` is injectable so tests run without
waiting.

Secrets (webhook URLs, HMAC keys) are read when the sink is built and kept out of every
message, log line and dead letter: errors name the sink, never its URL.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import hmac
import http.client
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from detector.delivery import payloads
from detector.delivery.config import SinkConfig, check_url
from detector.delivery.payloads import Alert
from detector.storage import endpoint_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Detect-Signature-256"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SECURITYHUB_BATCH = 100
EVENTBRIDGE_BATCH = 10


@dataclass
class Outcome:
    alert: Alert
    ok: bool
    attempts: int = 1
    error: str | None = None
    payload: Any = None
    #: The receiver answered and refused this alert (:class:`Rejected`): the sink is up.
    rejected: bool = False
    #: Seconds the receiver asked us to wait (``Retry-After``) past what a retry may wait:
    #: the alert is not retried now, and the sink stays down at least this long.
    retry_after: float | None = None


class Retryable(Exception):
    """A failure worth another attempt (transport, throttling, 5xx); ``after``: the wait
    the receiver asked for (``Retry-After``), in seconds."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Permanent(Exception):
    """A failure another attempt cannot fix (4xx, a rejected record)."""


class Rejected(Permanent):
    """The receiver answered and refused this alert: its size or its content (HTTP 400,
    413, 422; AWS's validation errors; a record a batch call names). Another alert may
    pass, so the sink is not down (:func:`detector.delivery.deliver.deliver`): counted as
    a sink failure, one incident an attacker could make too big kept every later alert of
    the sink waiting behind it, run after run."""


#: HTTP answers that refuse the alert sent, not the sink's address or credentials.
REJECTED_STATUS = frozenset({400, 413, 422})
#: AWS error codes that refuse the request's content (a message too long, a bad field).
REJECTED_CODES = frozenset(
    {"InvalidParameter", "InvalidParameterValue", "ValidationError", "ValidationException"}
    | {"InvalidInputException"}
)
#: Codes a batch call's answer gives a record it refused for its content. The others it
#: may name (AccessDeniedException, NotAuthorizedForSourceException, InvalidAccountId...)
#: refuse the sender, every record alike: the sink is then down, as for a 403.
RECORD_REJECTED_CODES = frozenset(
    {"MalformedDetail", "InvalidArgument", "InvalidInput", "InvalidInputException"}
    | {"ValidationException"}
)


#: The longest wait between two attempts, whatever the backoff or ``Retry-After`` say.
MAX_RETRY_WAIT = 60.0


def _retry(
    cfg: SinkConfig,
    sleep: Callable[[float], None],
    alert: Alert,
    payload: Any,
    fn: Callable[[], None],
    retries: int,
) -> Outcome:
    attempt = 0
    while True:
        attempt += 1
        try:
            fn()
            return Outcome(alert, True, attempt, None, payload)
        except Permanent as exc:
            return Outcome(alert, False, attempt, str(exc), payload, isinstance(exc, Rejected))
        except Retryable as exc:
            if exc.after is not None and exc.after > MAX_RETRY_WAIT:
                # Asked to come back later than a retry waits: not before (a rate limit hit
                # again early may escalate). The sink is down until then (deliver).
                return Outcome(alert, False, attempt, str(exc), payload, retry_after=exc.after)
            if attempt > retries:
                return Outcome(alert, False, attempt, str(exc), payload)
            delay = min(max(cfg.backoff * 2 ** (attempt - 1), exc.after or 0.0), MAX_RETRY_WAIT)
            log.info(
                "sink %s: attempt %d failed (%s); retrying in %.1fs", cfg.name, attempt, exc, delay
            )
            sleep(delay)


class Sink:
    #: Alerts handed to :meth:`send` at a time: what is sent is recorded after each chunk,
    #: so a run killed part way re-sends only the chunk it was in (see deliver.deliver).
    chunk = 1

    def __init__(
        self,
        cfg: SinkConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self.now = now
        #: Retries per alert: the configured ones, or none while the sink is only being
        #: probed after an outage (:class:`detector.delivery.deliver.SinkHealth`).
        self.retries = cfg.retries

    @property
    def name(self) -> str:
        return self.cfg.name

    def _retry(self, alert: Alert, payload: Any, fn: Callable[[], None]) -> Outcome:
        """``fn()`` with this sink's retries, as ``alert``'s outcome carrying ``payload``."""
        return _retry(self.cfg, self.sleep, alert, payload, fn, self.retries)

    def start(self) -> None:
        """Ask now what the first send would ask (a one-shot run's start check); a network
        failure raises. Built, a sink has read its secrets and made no request."""

    def send(self, alerts: list[Alert]) -> list[Outcome]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Flush what the sink buffers (OCSF Parquet writes its file here)."""


# --------------------------------------------------------------------------- HTTP
class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not a place to go: urllib followed a 302 with a GET
    without the body (and with the signature headers, to any host), and the alert,
    delivered nowhere, was recorded as sent."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


#: A request's whole time, as a multiple of the sink's ``timeout`` (which bounds each read
#: of the socket, not the answer: a receiver sending its answer a byte every few seconds
#: held a run for hours).
DEADLINE_TIMEOUTS = 3
_REQUEST = threading.local()  # this thread's request: its deadline and the timer cutting it


def _armed(sock: socket.socket) -> None:
    """Shut ``sock`` down when this thread's request deadline passes: the read it is
    blocked in then ends, and the attempt fails as a lost connection."""
    deadline = getattr(_REQUEST, "deadline", None)
    if deadline is None:
        return

    fired, guard = threading.Event(), threading.Lock()

    def cut() -> None:
        with guard:  # not once the answer was taken whole (see _post)
            if getattr(timer, "done", False):
                return
            fired.set()
        with contextlib.suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(deadline, cut)
    timer.daemon = True
    timer.guard = guard  # type: ignore[attr-defined]
    timer.start()
    _REQUEST.timer, _REQUEST.fired = timer, fired


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _armed(self.sock)


class _DeadlineHTTPSConnection(http.client.HTTPSConnection, _DeadlineHTTPConnection):
    """HTTPSConnection.connect's ``super().connect()`` is the deadline connection's: the
    raw socket is armed before the TLS handshake, which a receiver can drip too."""


class _DeadlineHTTP(urllib.request.HTTPHandler):
    def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
        return super().do_open(_DeadlineHTTPConnection, req, **kw)


class _DeadlineHTTPS(urllib.request.HTTPSHandler):
    def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
        return super().do_open(_DeadlineHTTPSConnection, req, **kw)


_OPENER = urllib.request.build_opener(_NoRedirects, _DeadlineHTTP, _DeadlineHTTPS)


def _retry_after(exc: urllib.error.HTTPError, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds, given as a delay or as an HTTP date; None when absent or
    not one of those. A wait longer than a retry may wait is returned as it is: the alert
    then waits for the sink's next try rather than being retried early (found by review)."""
    value = str((exc.headers or {}).get("Retry-After", "")).strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if at.tzinfo is None:  # HTTP dates are GMT; a malformed one may carry no zone
            at = at.replace(tzinfo=UTC)
        seconds = (at - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds == float("inf"):  # nan, inf
        return None
    return max(0.0, seconds)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float, name: str) -> None:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    _REQUEST.deadline = timeout * DEADLINE_TIMEOUTS
    try:
        # The status is the answer: the body is not read (a receiver answering with a
        # gigabyte held it all in memory).
        with _OPENER.open(req, timeout=timeout):
            pass
        timer = getattr(_REQUEST, "timer", None)
        if timer is not None:
            with timer.guard:  # the answer is taken: a cut from now on changes nothing
                timer.done = True
                fired = _REQUEST.fired.is_set()
            if fired:  # headers cut short read as a whole answer
                raise TimeoutError
    except urllib.error.HTTPError as exc:
        msg = f"sink {name}: HTTP {exc.code}"
        if 300 <= exc.code < 400:
            raise Permanent(
                f"{msg}: redirected; sinks do not follow redirects, configure the URL it points to"
            ) from None
        if exc.code == 429 or exc.code >= 500:
            raise Retryable(msg, after=_retry_after(exc)) from None
        if exc.code in REJECTED_STATUS:
            raise Rejected(msg) from None
        raise Permanent(msg) from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        fired = getattr(_REQUEST, "fired", None)
        if fired is not None and fired.is_set():
            raise Retryable(
                f"sink {name}: no whole answer within {_REQUEST.deadline:g}s "
                f"({DEADLINE_TIMEOUTS} x timeout)"
            ) from None
        reason = getattr(exc, "reason", exc)
        raise Retryable(f"sink {name}: {type(reason).__name__}: connection failed") from None
    except http.client.HTTPException as exc:  # an answer that is not HTTP (BadStatusLine...)
        raise Retryable(f"sink {name}: {type(exc).__name__}: not an HTTP answer") from None
    except ValueError as exc:  # http.client.InvalidURL: its message quotes the URL's secret
        raise Permanent(f"sink {name}: {type(exc).__name__}: the URL cannot be sent") from None
    finally:
        timer = getattr(_REQUEST, "timer", None)
        if timer is not None:
            timer.cancel()
        _REQUEST.timer = _REQUEST.deadline = _REQUEST.fired = None


class _HttpSink(Sink):
    def __init__(self, cfg: SinkConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        url = cfg.secret("url")
        assert url is not None  # config guarantees one source
        check_url(url, f"sink {cfg.name!r}", bool(cfg.options.get("allow_http")))
        self._url = url

    def body(self, alert: Alert) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def headers(self, alert: Alert, body: bytes) -> dict[str, str]:
        return {IDEMPOTENCY_HEADER: alert.key}

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        out = []
        for alert in alerts:
            payload = self.body(alert)
            data = orjson.dumps(payload)
            headers = self.headers(alert, data)
            out.append(
                self._retry(
                    alert,
                    payload,
                    lambda d=data, h=headers: _post(self._url, d, h, self.cfg.timeout, self.name),
                )
            )
        return out


class WebhookSink(_HttpSink):
    """JSON body in falcosidekick's input format, signed with HMAC-SHA256 when keyed.

    ``X-Detect-Signature-256: sha256=<hex of HMAC(key, body)>`` as GitHub does, so a
    receiver checks it with a constant-time compare before trusting the body.
    """

    def __init__(self, cfg: SinkConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        secret = cfg.secret("secret")
        self._key = secret.encode() if secret else None

    def body(self, alert: Alert) -> dict[str, Any]:
        return payloads.falcosidekick(alert)

    def headers(self, alert: Alert, body: bytes) -> dict[str, str]:
        h = super().headers(alert, body)
        if self._key:
            h[SIGNATURE_HEADER] = "sha256=" + sign(self._key, body)
        return h


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


class SlackSink(_HttpSink):
    def body(self, alert: Alert) -> dict[str, Any]:
        lake = self.cfg.options.get("lake")
        if lake:
            alert = replace(alert, lake=lake)
        return payloads.slack(alert)

    def headers(self, alert: Alert, body: bytes) -> dict[str, str]:
        return {}  # Slack rejects nothing for extra headers, but needs none


# --------------------------------------------------------------------------- AWS
def _client(service: str, region: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint_url())


@functools.lru_cache(maxsize=8)
def _caller_account(region: str | None, endpoint: str | None) -> str:
    """The AWS account of this process's credentials, once per process (an exception is
    not cached: the next send asks again)."""
    return str(_client("sts", region).get_caller_identity()["Account"])


def _aws_error(name: str, exc: Exception) -> Exception:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "Error")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        msg = f"sink {name}: {code}"
        if (
            status >= 500
            or "Throttl" in code
            or code in ("TooManyRequestsException", "LimitExceededException")
        ):
            return Retryable(msg)
        return Rejected(msg) if code in REJECTED_CODES else Permanent(msg)
    if isinstance(exc, BotoCoreError):
        return Retryable(f"sink {name}: {type(exc).__name__}")
    return exc


class SnsSink(Sink):
    def __init__(self, cfg: SinkConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.topic = cfg.options["topic_arn"]
        self.client = _client("sns", cfg.options.get("region") or _arn_region(self.topic))

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        out = []
        fifo = self.topic.endswith(".fifo")
        for alert in alerts:
            doc = payloads.incident_doc(alert)
            args: dict[str, Any] = {
                "TopicArn": self.topic,
                "Subject": payloads.sns_subject(alert),
                "Message": orjson.dumps(doc).decode(),
                "MessageAttributes": {
                    "severity": {"DataType": "String", "StringValue": alert.incident.severity},
                    "kind": {"DataType": "String", "StringValue": alert.kind},
                    "incident_id": {
                        "DataType": "String",
                        "StringValue": alert.incident.incident_id,
                    },
                },
            }
            if fifo:  # FIFO topics drop a second message with the same id within 5 minutes
                args["MessageGroupId"] = alert.incident.incident_id
                args["MessageDeduplicationId"] = alert.key.replace(":", "-")

            def call(a: dict[str, Any] = args) -> None:
                try:
                    self.client.publish(**a)
                except Exception as exc:
                    raise _aws_error(self.name, exc) from None

            out.append(self._retry(alert, doc, call))
        return out


def _arn_region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 4 and parts[3] else None


class _BatchSink(Sink):
    """Put records in batches; resend only the records a partial failure names."""

    batch = 10

    @property
    def chunk(self) -> int:  # type: ignore[override]
        return self.batch

    def put(self, records: list[dict[str, Any]]) -> dict[int, tuple[bool, str, bool]]:
        """Index in ``records`` -> (retryable, error, rejected) for each record that failed;
        rejected: the record itself was refused (:data:`RECORD_REJECTED_CODES`)."""
        raise NotImplementedError  # pragma: no cover

    def record(self, alert: Alert) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def _failures(self, records: list[dict[str, Any]]) -> dict[int, tuple[bool, str, bool]]:
        """Index -> (retryable, error, rejected) for each record of one call that failed.

        A record the answer names was refused on its own (:class:`Rejected`); a whole call
        refused for its content (EventBridge's 256 KB per call) is put again a record at
        a time, so only the record at fault is refused, not the nine sent with it.
        """
        try:
            return self.put(records)
        except Exception as exc:
            err = _aws_error(self.name, exc)
            if not isinstance(err, Retryable | Permanent):
                raise
            if isinstance(err, Rejected) and len(records) > 1:
                failed = {}
                for i, record in enumerate(records):
                    alone = self._failures([record])
                    if alone:
                        failed[i] = alone[0]
                return failed
            failure = (isinstance(err, Retryable), str(err), isinstance(err, Rejected))
            return dict.fromkeys(range(len(records)), failure)

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        outcomes = [Outcome(a, False, 0, None, self.record(a)) for a in alerts]
        for start in range(0, len(outcomes), self.batch):
            pending = outcomes[start : start + self.batch]
            while pending:
                for o in pending:
                    o.attempts += 1
                failed = self._failures([o.payload for o in pending])
                retry = []
                for i, o in enumerate(pending):
                    if i not in failed:
                        o.ok, o.error, o.rejected = True, None, False
                        continue
                    retryable, o.error, o.rejected = failed[i]
                    if retryable and o.attempts <= self.retries:
                        retry.append(o)
                if retry:
                    delay = min(self.cfg.backoff * 2 ** (retry[0].attempts - 1), MAX_RETRY_WAIT)
                    log.info(
                        "sink %s: %d record(s) failed; retrying in %.1fs",
                        self.name,
                        len(retry),
                        delay,
                    )
                    self.sleep(delay)
                pending = retry
        return outcomes


class EventBridgeSink(_BatchSink):
    batch = EVENTBRIDGE_BATCH

    def __init__(self, cfg: SinkConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.client = _client("events", cfg.options.get("region"))
        self.bus = cfg.options.get("event_bus", "default")
        self.source = cfg.options.get("source", payloads.PRODUCT)

    def record(self, alert: Alert) -> dict[str, Any]:
        return payloads.eventbridge_entry(alert, self.source, self.bus)

    def put(self, records: list[dict[str, Any]]) -> dict[int, tuple[bool, str, bool]]:
        resp = self.client.put_events(Entries=records)
        failed = {}
        entries = resp.get("Entries", [])
        # An answer shorter than the call says nothing of the records past its end: they
        # are not known to be in, so they are tried again (never recorded as delivered).
        for i in range(len(entries), len(records)):
            failed[i] = (True, f"sink {self.name}: no answer for the entry", False)
        for i, entry in enumerate(entries):
            if entry.get("ErrorCode"):
                code = entry["ErrorCode"]
                failed[i] = (
                    code in ("InternalFailure", "ThrottlingException"),
                    f"sink {self.name}: {code}",
                    code in RECORD_REJECTED_CODES,
                )
        return failed


class SecurityHubSink(_BatchSink):
    """ASFF through BatchImportFindings: at most 100 a call; the same Id updates in place."""

    batch = SECURITYHUB_BATCH

    def __init__(self, cfg: SinkConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        region = cfg.options.get("region")
        self.client = _client("securityhub", region)
        self.region = region or self.client.meta.region_name
        configured = cfg.options.get("account_id")
        self.account = str(configured) if configured else ""

    def start(self) -> None:
        if not self.account:
            self.account = _caller_account(self.region, endpoint_url())

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        """Asks STS for the account when none is configured and :meth:`start` was not run:
        asked when built, an STS outage stopped every sink of `detect watch`, and the
        stream with them (found by review). Failing here, it is this sink's outage."""
        if not self.account:
            try:
                self.start()
            except Exception as exc:
                err = _aws_error(self.name, exc)
                named = isinstance(err, Retryable | Permanent)  # else its text may say anything
                error = f"{err if named else f'sink {self.name}: {type(exc).__name__}'}: "
                error += "asking STS for the account (or set account_id)"
                return [Outcome(a, False, 1, error, None) for a in alerts]
        return super().send(alerts)

    def record(self, alert: Alert) -> dict[str, Any]:
        return payloads.asff(
            alert, self.account, self.region, self.cfg.options.get("product_arn"), now=self.now()
        )

    def put(self, records: list[dict[str, Any]]) -> dict[int, tuple[bool, str, bool]]:
        resp = self.client.batch_import_findings(Findings=records)
        index = {r["Id"]: i for i, r in enumerate(records)}
        failed = {}
        unnamed = 0
        for f in resp.get("FailedFindings", []):
            i = index.get(f.get("Id"))
            if i is None:
                unnamed += 1
                continue
            code = f.get("ErrorCode", "Error")
            failed[i] = (
                code in ("InternalFailure", "ThrottlingException", "ServiceUnavailable"),
                f"sink {self.name}: {code}: {f.get('ErrorMessage', '')}"[:300],
                code in RECORD_REJECTED_CODES,
            )
        if unnamed:
            # A failure we cannot tie to a record: none of the call's records is known to
            # be in. Putting a finding again updates it in place, so all are tried again
            # rather than one recorded as delivered that Security Hub never took.
            error = f"sink {self.name}: {unnamed} failed finding(s) named no finding sent"
            for i in range(len(records)):
                failed.setdefault(i, (True, error, False))
        return failed


class Unstarted(Sink):
    """A sink that could not be built, standing in so its alerts fail as an outage does:
    it is marked down and they wait (see :class:`detector.delivery.deliver.SinkHealth`)
    while every other sink sends, instead of the error stopping them all."""

    def __init__(self, cfg: SinkConfig, error: str, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.error = error

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        return [Outcome(a, False, 1, self.error, None) for a in alerts]


# --------------------------------------------------------------------------- OCSF
class OcsfSink(Sink):
    """OCSF Detection Findings as JSON lines (a file or ``-`` for stdout), or Parquet in
    Amazon Security Lake's custom-source layout
    ``<path>/ext/<source>/region=<r>/accountId=<a>/eventDay=YYYYMMDD/<file>.parquet``.
    """

    chunk = 1000  # one file (or one append) per run, not one per alert

    def __init__(self, cfg: SinkConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.path = cfg.options["path"]
        self.format = cfg.options.get("format", "jsonl")
        self.source = cfg.options.get("source_name", payloads.PRODUCT)
        # Both are required for parquet (config.parse_sink); jsonl records carry them if set.
        self.region = cfg.options.get("region") or ""
        self.account = str(cfg.options.get("account_id") or "")

    def record(self, alert: Alert) -> dict[str, Any]:
        acct = self.cfg.options.get("account_id")
        return payloads.ocsf(
            alert, account_id=str(acct) if acct else None, region=self.cfg.options.get("region")
        )

    def send(self, alerts: list[Alert]) -> list[Outcome]:
        recs = [self.record(a) for a in alerts]
        if self.format == "parquet":
            try:
                write_security_lake(
                    self.path, self.source, self.region, self.account, recs, self.now()
                )
            except Exception as exc:  # storage errors: every alert of the batch failed
                err = f"sink {self.name}: {type(exc).__name__}: {exc}"[:300]
                return [Outcome(a, False, 1, err, r) for a, r in zip(alerts, recs, strict=True)]
            return [Outcome(a, True, 1, None, r) for a, r in zip(alerts, recs, strict=True)]
        data = b"".join(orjson.dumps(r) + b"\n" for r in recs)
        try:
            if self.path == "-":
                import sys

                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            else:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as fh:
                    fh.write(data)
        except OSError as exc:
            err = f"sink {self.name}: {exc.strerror or exc}"
            return [Outcome(a, False, 1, err, r) for a, r in zip(alerts, recs, strict=True)]
        return [Outcome(a, True, 1, None, r) for a, r in zip(alerts, recs, strict=True)]


def security_lake_dir(root: str, source: str, region: str, account: str, day: datetime) -> str:
    return (
        f"{root.rstrip('/')}/ext/{source}/region={region}/accountId={account}/eventDay={day:%Y%m%d}"
    )


def write_security_lake(
    root: str, source: str, region: str, account: str, records: list[dict[str, Any]], now: datetime
) -> list[str]:
    """One Parquet file per eventDay (of each record's ``time``), nested OCSF columns."""
    import io
    import uuid as _uuid

    import pyarrow.parquet as pq

    from detector.delivery.ocsf_parquet import ocsf_table
    from detector.storage import Location

    loc = Location.of(root)
    by_day: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        day = datetime.fromtimestamp(r["time"] / 1000, UTC)
        by_day.setdefault(f"{day:%Y%m%d}", []).append(r)
    written = []
    for day, rows in sorted(by_day.items()):
        # unmapped/evidences hold free-form maps: stored as JSON text so one schema fits all
        flat = [
            {
                **r,
                "unmapped": orjson.dumps(r.get("unmapped")).decode(),
                "evidences": [
                    {**e, "data": orjson.dumps(e.get("data")).decode()}
                    for e in r.get("evidences", [])
                ],
            }
            for r in rows
        ]
        table = ocsf_table(flat)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        path = loc.path(
            "ext",
            source,
            f"region={region}",
            f"accountId={account}",
            f"eventDay={day}",
            f"{now:%Y%m%dT%H%M%S}-{_uuid.uuid4().hex[:8]}.zstd.parquet",
        )
        loc.put_atomic(path, buf.getvalue())
        written.append(loc.uri_of(path))
    return written


SINK_TYPES: dict[str, type[Sink]] = {
    "webhook": WebhookSink,
    "slack": SlackSink,
    "sns": SnsSink,
    "eventbridge": EventBridgeSink,
    "securityhub": SecurityHubSink,
    "ocsf": OcsfSink,
}


def build(cfg: SinkConfig, **kw: Any) -> Sink:
    """The sink for ``cfg``; reads its secrets now (a missing one is a usage error)."""
    return SINK_TYPES[cfg.type](cfg, **kw)
