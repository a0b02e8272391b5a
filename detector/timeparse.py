"""Time arguments: ``1h``, ``30m``, ``7d``, ``2w`` (relative to now) or ISO-8601 instants.

Users type ``detect score --since 1h`` and schedulers pass ``{{ data_interval_start }}``;
both must land on the same UTC instants, so parsing lives in one place.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class TimeArgumentError(ValueError):
    """A time argument that is neither a duration nor an ISO-8601 instant."""


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``1h``, ``7d``, ``2w`` -> timedelta."""
    match = _REL.match(text)
    if not match:
        raise TimeArgumentError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 10m, 1h)"
        )
    value, unit = match.groups()
    return timedelta(**{_UNITS[unit.lower()]: float(value)})


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    """A relative duration (counted back from ``now``) or an ISO-8601 instant, in UTC.

    Naive ISO instants are taken as UTC: audit timestamps are UTC and so are the lake's
    partitions, so a local-time reading would silently shift a range.
    """
    now = now or datetime.now(UTC)
    text = text.strip()
    if text.lower() == "now":
        return now
    if _REL.match(text):
        return now - parse_duration(text)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeArgumentError(
            f"invalid time {text!r}: use a duration before now (1h, 30m, 7d) "
            "or an ISO-8601 instant (2026-11-27T10:00:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_range(
    since: str, until: str | None = None, *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """``[since, until)`` in UTC; ``until`` defaults to now."""
    now = now or datetime.now(UTC)
    start = parse_instant(since, now=now)
    end = parse_instant(until, now=now) if until else now
    if end <= start:
        raise TimeArgumentError(
            f"empty time range: --until ({end:%Y-%m-%dT%H:%M:%SZ}) is not "
            f"after --since ({start:%Y-%m-%dT%H:%M:%SZ})"
        )
    return start, end
