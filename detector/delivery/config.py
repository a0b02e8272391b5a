"""``[[sinks]]`` in detect.toml: parsed and checked whole when the file is read.

::

    [[sinks]]
    name = "secops-webhook"
    type = "webhook"                  # webhook, slack, sns, eventbridge, securityhub, ocsf
    url_env = "DETECT_WEBHOOK_URL"    # secrets only from the environment ...
    secret_file = "/run/secrets/hmac" # ... or a file; never in detect.toml itself
    min_severity = "medium"           # default low; info is never delivered
    detectors = ["rule:*"]            # optional filters (globs), any of which must match
    clusters = ["prod"]
    namespaces = ["payments"]
    retries = 3                       # attempts after the first, with exponential backoff
    backoff = "1s"
    throttle = "15m"                  # at most one update per principal per sink per 15m
    max_alerts_per_hour = 20          # then one digest per throttle (slack 20, others 0: off)

Why secrets never sit in the file: detect.toml is committed to git and printed by
``detect config show``; a Slack webhook URL or an HMAC key in it leaks to everyone who can
read either. ``describe()`` shows where a secret comes from and whether it is set, never the
value.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from detector import config as settings
from detector.controls import holds_control_characters
from detector.errors import UsageError
from detector.lake.findings_schema import SEVERITIES
from detector.timeparse import MAX_DURATION, TimeArgumentError, parse_duration
from detector.userfiles import read_user_file

TYPES = ("webhook", "slack", "sns", "eventbridge", "securityhub", "ocsf")
COMMON = {
    "name",
    "type",
    "min_severity",
    "detectors",
    "clusters",
    "namespaces",
    "retries",
    "backoff",
    "throttle",
    "max_alerts_per_hour",
    "timeout",
    "enabled",
}
#: ``max_alerts_per_hour`` by sink type when not set: people read Slack, and a channel of
#: hundreds of alerts an hour is read by nobody; the other sinks may feed machines (a
#: SOAR, a Lambda, Security Hub), which expect every incident, so they are not capped.
ALERTS_PER_HOUR = {"slack": 20}
#: Sinks a budget may be set on. Security Hub, EventBridge and OCSF keep (or feed) one
#: record per incident, updated and closed in place: a digest in its stead would leave
#: those never opened or never closed.
STORM_TYPES = ("slack", "webhook", "sns")
SPECIFIC: dict[str, set[str]] = {
    "webhook": {"url", "url_env", "url_file", "secret_env", "secret_file", "allow_http"},
    "slack": {"url_env", "url_file", "lake", "allow_http"},
    "sns": {"topic_arn", "region"},
    "eventbridge": {"event_bus", "source", "region"},
    "securityhub": {"account_id", "region", "product_arn"},
    "ocsf": {"path", "format", "source_name", "account_id", "region"},
}
REQUIRED = {"sns": ("topic_arn",), "ocsf": ("path",)}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


class SinkConfigError(settings.ConfigError, UsageError):
    """A sink that cannot be used as configured; names the sink and key, never a secret."""


class SecretMissing(SinkConfigError):
    pass


@dataclass(frozen=True)
class SinkConfig:
    name: str
    type: str
    min_severity: str = "low"
    detectors: tuple[str, ...] = ()
    clusters: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    retries: int = 3
    backoff: float = 1.0
    throttle: float = 900.0
    #: Alerts sent one by one in an hour, at most (0: no limit); past it, a digest
    #: (:mod:`detector.delivery.storm`).
    max_alerts_per_hour: int = 0
    timeout: float = 10.0
    enabled: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def min_rank(self) -> int:
        return SEVERITIES.index(self.min_severity)

    def secret(self, what: str) -> str | None:
        """``url`` or ``secret`` from ``<what>_env`` or ``<what>_file`` (None when neither)."""
        env, path = self.options.get(f"{what}_env"), self.options.get(f"{what}_file")
        if env:
            value = os.environ.get(env)
            if not value:
                raise SecretMissing(
                    f"sink {self.name!r}: environment variable {shown_env(env)} ({what}) is not set"
                )
            return value.strip()
        if path:
            try:
                return read_user_file(path).strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretMissing(
                    f"sink {self.name!r}: {what}_file {path} cannot be read: "
                    f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}"
                ) from None
        return self.options.get(what) if what == "url" else None

    def check_secrets(self) -> None:
        """Read the secrets the sink reads when it is built (a :class:`SecretMissing` for
        one that cannot be), and nothing else: no network, so a long-running command checks
        them at start without an outage of STS or a receiver stopping it."""
        self.secret("url")
        self.secret("secret")

    def describe(self) -> str:
        """One line for ``detect config show``: secrets as their source, never their value."""
        parts = [f"type={self.type}", f"min_severity={self.min_severity}"]
        if self.max_alerts_per_hour:
            parts.append(f"max_alerts_per_hour={self.max_alerts_per_hour}")
        for key, value in sorted(self.options.items()):
            if key.endswith("_env"):
                state = "set" if os.environ.get(value) else "NOT SET"
                parts.append(f"{key}={shown_env(value)} ({state})")
            elif key.endswith("_file"):
                parts.append(f"{key}={value}")
            elif key == "url":  # allowed for webhooks only; shown without path or query
                u = urlsplit(value)
                parts.append(
                    f"url={u.scheme}://{u.hostname}{':' + str(u.port) if u.port else ''}/…"
                )
            else:
                parts.append(f"{key}={value}")
        for key in ("detectors", "clusters", "namespaces"):
            if getattr(self, key):
                parts.append(f"{key}={','.join(getattr(self, key))}")
        return " ".join(parts)

    def accepts(
        self, severity_rank: int, detectors: list[str], cluster: str | None, namespaces: list[str]
    ) -> bool:
        """Whether an incident passes this sink's severity and filters (info never does)."""
        if not self.enabled or severity_rank < max(self.min_rank, 1):
            return False
        if self.detectors and not any(
            fnmatch.fnmatchcase(d, p) for d in detectors for p in self.detectors
        ):
            return False
        if self.clusters and not any(fnmatch.fnmatchcase(cluster or "", p) for p in self.clusters):
            return False
        return not self.namespaces or any(
            fnmatch.fnmatchcase(n, p) for n in namespaces for p in self.namespaces
        )


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SinkConfigError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _seconds(value: Any, where: str, key: str) -> float:
    """A duration as a number of seconds or text ("30s"), within the bounds of every
    duration (a number of 1e308 or inf slept forever, or overflowed, at the first retry)."""
    limit = MAX_DURATION.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= limit:
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value).total_seconds()
        except TimeArgumentError as exc:
            raise SinkConfigError(f"{where}: {key} = {value!r}: {exc}") from None
    raise SinkConfigError(f'{where}: {key} must be a duration such as "30s" (at most 3650d)')


def _positive(seconds: float, where: str) -> float:
    """A timeout of 0 fails every delivery at once ("connection failed"): refused here."""
    if seconds <= 0:
        raise SinkConfigError(f"{where}: timeout must be longer than 0s")
    return seconds


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, where: str, allow_http: bool) -> None:
    """A URL a sink can post to, or one line saying what is wrong with it. The line never
    quotes the URL: a webhook's path or query is its secret."""
    try:
        _check_url(url, where, allow_http)
    except SinkConfigError:
        raise
    except ValueError:  # urllib's own, which quotes the URL's host or user:password
        raise SinkConfigError(
            f"{where}: the URL cannot be read (its host or user part is not one a client "
            "can use; the URL is not shown)"
        ) from None


def _check_url(url: str, where: str, allow_http: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and (allow_http or _loopback(url))):
        raise SinkConfigError(
            f"{where}: the URL must be https:// (http only to loopback or with allow_http = true)"
        )
    if any(c.isspace() for c in url) or holds_control_characters(url):
        raise SinkConfigError(f"{where}: the URL holds spaces or control characters")
    try:
        parts.port  # noqa: B018 - raises for a port out of range or not a number
    except ValueError:
        raise SinkConfigError(f"{where}: the URL's port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise SinkConfigError(f"{where}: the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise SinkConfigError(
            f"{where}: credentials in the URL (user:password@) are not supported: put the "
            "secret in the URL's path or query from url_env, or sign with secret_env"
        )


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: An environment variable's name as people write them: shown as it is.
_CONVENTIONAL_ENV = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


def shown_env(name: str) -> str:
    """A ``*_env`` option's variable name as messages and ``config show`` print it.

    A name that is not UPPER_CASE, or a long one without ``_`` (an upper-case hex digest),
    may be the secret itself, written in the wrong key (``secret_env = "hmac..."``, found
    by review): it is described, never printed.
    """
    if _CONVENTIONAL_ENV.fullmatch(name) and ("_" in name or len(name) <= 16):
        return name  # SLACK_HOOK_URL; not an upper-case key or hex digest without a "_"
    return "<a name not in UPPER_CASE, not shown: is the secret itself written there?>"


def _check_option(key: str, value: Any, where: str) -> Any:
    """A sink's own key, checked to hold what its code will use it as: ``allow_http`` a
    boolean, every other one a non-blank string without control characters, and ``*_env``
    a variable name (a number there failed at the first alert as "str expected, not
    int"). An ``account_id`` written as a TOML number is taken as its digits."""
    if key == "allow_http":
        if not isinstance(value, bool):
            raise SinkConfigError(f"{where}: {key} must be true or false")
        return value
    if key == "account_id" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise SinkConfigError(f"{where}: {key} must be a non-empty string (in quotes)")
    if holds_control_characters(value):
        raise SinkConfigError(f"{where}: {key} holds control characters")
    if key.endswith("_env") and not _ENV_NAME.fullmatch(value):
        # The value is not shown: a URL or a secret written where its variable's name goes
        # would be printed (found by review).
        raise SinkConfigError(
            f"{where}: {key} must name an environment variable (letters, digits and _), "
            "not hold the value itself"
        )
    return value


def parse_sink(item: Any, where: str) -> SinkConfig:
    if not isinstance(item, dict):
        raise SinkConfigError(f"{where}: expected a table ([[sinks]])")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise SinkConfigError(f"{where}: name must be lowercase letters, digits, - or _")
    where = f"{where} {name!r}"
    kind = item.get("type")
    if kind not in TYPES:
        raise SinkConfigError(f"{where}: type must be one of {', '.join(TYPES)}, not {kind!r}")
    unknown = set(item) - COMMON - SPECIFIC[kind]
    if unknown:
        raise SinkConfigError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} for a {kind} sink "
            f"(known: {', '.join(sorted(COMMON | SPECIFIC[kind]))})"
        )
    for key in REQUIRED.get(kind, ()):
        if not isinstance(item.get(key), str) or not item[key]:
            raise SinkConfigError(f"{where}: {key} is required for a {kind} sink")
    options = {k: _check_option(k, v, where) for k, v in item.items() if k in SPECIFIC[kind]}
    if kind in ("webhook", "slack"):
        sources = [k for k in ("url", "url_env", "url_file") if k in options]
        if len(sources) != 1:
            raise SinkConfigError(f"{where}: give exactly one of url_env or url_file")
        if "url" in options:
            check_url(str(options["url"]), where, bool(options.get("allow_http")))
        if kind == "webhook" and "secret_env" in options and "secret_file" in options:
            raise SinkConfigError(f"{where}: give one of secret_env or secret_file")
    if kind == "ocsf":
        fmt = options.setdefault("format", "jsonl")
        if fmt not in ("jsonl", "parquet"):
            raise SinkConfigError(f"{where}: format must be jsonl or parquet")
        if fmt == "parquet" and options["path"] == "-":
            raise SinkConfigError(f"{where}: parquet needs a path (a folder or s3:// prefix)")
        for key in ("source_name", "account_id", "region"):  # these become path segments
            value = options.get(key)
            if value is not None and not _SEGMENT.match(str(value)):
                raise SinkConfigError(f"{where}: {key} must be letters, digits, - or _")
        if fmt == "parquet" and not (options.get("region") and options.get("account_id")):
            # Security Lake files its custom sources by region and account: a guess (it was
            # us-east-1 and 000000000000) files findings where nothing attributes them.
            raise SinkConfigError(
                f"{where}: parquet (Amazon Security Lake's layout) needs region and account_id"
            )
    region = options.get("region")
    named = isinstance(region, str) and settings.REGION_NAME.fullmatch(region)
    if region is not None and not named:
        raise SinkConfigError(f"{where}: region must be an AWS region name (us-east-1)")
    severity = item.get("min_severity", "low")
    if severity not in SEVERITIES or severity == "info":
        raise SinkConfigError(
            f"{where}: min_severity must be one of {', '.join(SEVERITIES[1:])} "
            "(info is a record, never an alert)"
        )
    retries = item.get("retries", 3)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 10:
        raise SinkConfigError(f"{where}: retries must be an integer from 0 to 10")
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SinkConfigError(f"{where}: enabled must be true or false")
    per_hour = item.get("max_alerts_per_hour", ALERTS_PER_HOUR.get(kind, 0))
    if not isinstance(per_hour, int) or isinstance(per_hour, bool) or not 0 <= per_hour <= 10_000:
        raise SinkConfigError(
            f"{where}: max_alerts_per_hour must be an integer from 0 (no limit) to 10000"
        )
    if per_hour and kind not in STORM_TYPES:
        raise SinkConfigError(
            f"{where}: max_alerts_per_hour is for sinks people read ({', '.join(STORM_TYPES)}); "
            f"{kind} keeps a record per incident, which a digest would replace"
        )
    return SinkConfig(
        name=name,
        type=kind,
        min_severity=severity,
        detectors=_strings(item.get("detectors", []), where, "detectors"),
        clusters=_strings(item.get("clusters", []), where, "clusters"),
        namespaces=_strings(item.get("namespaces", []), where, "namespaces"),
        retries=retries,
        backoff=_seconds(item.get("backoff", "1s"), where, "backoff"),
        throttle=_seconds(item.get("throttle", "15m"), where, "throttle"),
        max_alerts_per_hour=per_hour,
        timeout=_positive(_seconds(item.get("timeout", "10s"), where, "timeout"), where),
        enabled=enabled,
        options=options,
    )


def parse_sinks(value: Any, source: str = "detect.toml") -> list[SinkConfig]:
    """Every ``[[sinks]]`` entry, checked; names must be unique (they key delivery records)."""
    if not isinstance(value, list):
        raise SinkConfigError(f"{source}: sinks must be an array of tables ([[sinks]])")
    out = [parse_sink(item, f"{source} [[sinks]] #{i + 1}") for i, item in enumerate(value)]
    names = [s.name for s in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SinkConfigError(f"{source}: sink name(s) used twice: {', '.join(dupes)}")
    return out


settings.EXTRA_KEYS["sinks"] = parse_sinks
