"""Staying under AWS quotas and riding out their faults: a rate limiter and a retry policy.

CloudWatch Logs quotas are per account and Region and shared by every caller, so an exporter
must (1) pace itself below its share, with :class:`RateLimiter`, and (2) treat throttling,
5xx answers, timeouts and connection resets as normal weather, with :class:`Retrier`:
exponential backoff with full jitter, bounded attempts, and a count of what it did so the
summary can report it. botocore's own retries are switched off for clients built with
:func:`client_config`, so every retry is ours and is counted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from detector.errors import RuntimeFailure

T = TypeVar("T")

#: Error codes that mean "slow down": the request rate is over a quota.
THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
    }
)
#: Error codes that mean "try again later", across CloudWatch Logs, S3 and STS: throttling,
#: and the service's own passing failures.
RETRYABLE_CODES = THROTTLING_CODES | {
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
}


def client_config(*, connect_timeout: float = 10, read_timeout: float = 60) -> Config:
    """botocore settings for clients whose calls go through a :class:`Retrier`."""
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code")
    return None


def is_retryable(exc: BaseException) -> bool:
    """Throttling, server-side trouble, timeouts and broken connections; not client mistakes."""
    if isinstance(exc, ClientError):
        if error_code(exc) in RETRYABLE_CODES:
            return True
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429
    # HTTPClientError: connection closed/reset, read timeout; ConnectionError: refused,
    # connect timeout, proxy trouble; IncompleteReadError: a body cut short.
    return isinstance(exc, HTTPClientError | ConnectionError | IncompleteReadError)


def setup_problem(exc: BaseException) -> str | None:
    """What to set when AWS credentials or a region are missing from the whole chain: a
    configuration error (exit 2), said the same way by every command and never wrapped as
    one call's failure (retrying cannot mend it); None for any other error."""
    if isinstance(exc, NoRegionError):
        return "no AWS region: set AWS_REGION, or pass --region"
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials found (set AWS_PROFILE, AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, or run with an IAM role such as IRSA)"
        )
    return None


def unreachable_endpoint(exc: BaseException) -> str | None:
    """``scheme://host[:port]`` of an endpoint that could not be reached (connection
    refused or timed out, TLS, proxy); None for any other error. Only the endpoint: the
    request's path and query stay out of the error line."""
    if not isinstance(exc, ConnectionError | HTTPClientError):
        return None
    url = str(getattr(exc, "kwargs", {}).get("endpoint_url") or "")
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.split('/', 1)[0].split('?', 1)[0]}" if sep else "the AWS endpoint"


def describe_error(exc: BaseException) -> str:
    """One line for a person: ``ThrottlingException: Rate exceeded``."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code") or "error"
        message = err.get("Message") or str(exc)
        return f"{code}: {message}"
    if isinstance(exc, BotoCoreError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RetriesExhausted(RuntimeFailure):
    """A call kept failing with retryable errors for all allowed attempts."""

    def __init__(self, operation: str, attempts: int, last: BaseException) -> None:
        self.operation = operation
        self.attempts = attempts
        self.last = last
        super().__init__(f"{operation} failed {attempts} times; last: {describe_error(last)}")


class RetryAborted(RuntimeFailure):
    """A retryable failure while a stop was requested: give up now, quietly."""

    def __init__(self, operation: str, last: BaseException) -> None:
        self.operation = operation
        self.last = last
        super().__init__(f"{operation} abandoned on shutdown; last: {describe_error(last)}")


class RateLimiter:
    """A token bucket: at most ``rate`` calls per second on average, bursts up to ``burst``.

    ``rate <= 0`` disables limiting. Thread-safe; :meth:`acquire` sleeps as needed and
    returns the seconds it waited.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()
        self.waited = 0.0

    def acquire(self) -> float:
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            wait = 0.0
            if self._tokens < 1:
                wait = (1 - self._tokens) / self.rate
                self._sleep(wait)
                self._last = self._clock()
                self._tokens = 0.0
            else:
                self._tokens -= 1
            self.waited += wait
            return wait


@dataclass
class RetryStats:
    """What the retrier did, for the run summary."""

    calls: int = 0  # API calls attempted, retries included
    retries: int = 0
    throttled: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    backoff_seconds: float = 0.0
    call_seconds: float = 0.0  # waiting for answers (retries included, backoff not)
    rate_wait_seconds: float = 0.0  # held back by the client-side rate limit

    def to_dict(self) -> dict[str, Any]:
        return {
            "api_calls": self.calls,
            "retries": self.retries,
            "throttled": self.throttled,
            "retry_reasons": dict(sorted(self.by_reason.items(), key=lambda kv: -kv[1])),
            "backoff_seconds": round(self.backoff_seconds, 3),
            "api_seconds": round(self.call_seconds, 3),
            "rate_limit_wait_seconds": round(self.rate_wait_seconds, 3),
        }


class Retrier:
    """Run calls with a rate limit and exponential backoff with full jitter.

    The n-th retry sleeps a uniform random time in ``[0, min(cap, base * 2**n)]`` ("full
    jitter", which spreads a herd of throttled clients best). Non-retryable errors are raised
    at once; retryable ones after ``max_attempts`` tries become :class:`RetriesExhausted`.
    When ``should_stop`` returns true, a retryable failure raises :class:`RetryAborted`
    instead of sleeping, so a shutdown is not held up by an outage.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 8,
        base: float = 0.5,
        cap: float = 20.0,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        on_retry: Callable[[str, BaseException, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        self.base = base
        self.cap = cap
        self.limiter = limiter
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.on_retry = on_retry
        self.should_stop = should_stop
        self.stats = RetryStats()

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (0-based)."""
        return self._rng.uniform(0, min(self.cap, self.base * (2**retry_number)))

    def call(self, operation: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
        last: BaseException | None = None
        for attempt in range(self.max_attempts):
            if self.limiter is not None:
                self.stats.rate_wait_seconds += self.limiter.acquire()
            self.stats.calls += 1
            started = time.monotonic()
            try:
                return fn(**kwargs)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                last = exc
                reason = error_code(exc) or type(exc).__name__
                if reason in THROTTLING_CODES:
                    self.stats.throttled += 1
                if attempt + 1 >= self.max_attempts:
                    break
                if self.should_stop is not None and self.should_stop():
                    raise RetryAborted(operation, exc) from None
                delay = self.backoff(attempt)
                self.stats.retries += 1
                self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1
                self.stats.backoff_seconds += delay
                if self.on_retry is not None:
                    self.on_retry(operation, exc, delay)
                self._sleep(delay)
            finally:
                self.stats.call_seconds += time.monotonic() - started
        assert last is not None
        raise RetriesExhausted(operation, self.max_attempts, last)
