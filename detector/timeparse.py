"""Time arguments: ``1h``, ``30m``, ``7d``, ``2w`` (relative to now) or ISO-8601 instants.

Users type ``detect score --since 1h`` and schedulers pass ``{{ data_interval_start }}``;
both must land on the same UTC instants, so parsing lives in one place, with one set of
bounds: a duration is at most :data:`MAX_DURATION`, an instant lies in
[:data:`EARLIEST`, :data:`LATEST`). Anything outside is a :class:`TimeArgumentError` (a
usage error, exit 2), never an ``OverflowError`` deep inside a command.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from detector.errors import UsageError

_REL = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE
)  # ASCII digits: \d took "١h"
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: The longest duration any option takes: ten years covers every baseline and backfill.
MAX_DURATION = timedelta(days=3650)
#: Instants outside these bounds are typos (or epoch-zero defaults), not audit time.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
#: How far past this machine's clock an instant may be and still count as now (clocks
#: of the machine that computed it and of this one may differ a little).
CLOCK_SKEW = timedelta(seconds=60)


class TimeArgumentError(UsageError, ValueError):
    """A time argument that is neither a duration nor an ISO-8601 instant, or out of range."""


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``1h``, ``7d``, ``2w`` -> timedelta, at most :data:`MAX_DURATION`."""
    match = _REL.match(text)
    if not match:
        raise TimeArgumentError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 10m, 1h)"
        )
    value, unit = match.groups()
    try:
        duration = timedelta(**{_UNITS[unit.lower()]: float(value)})
    except OverflowError:
        duration = None
    if duration is None or duration > MAX_DURATION:
        raise TimeArgumentError(
            f"duration {text!r} out of range: at most {MAX_DURATION.days}d (10 years)"
        )
    return duration


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
        return check_instant(now - parse_duration(text), text)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeArgumentError(
            f"invalid time {text!r}: use a duration before now (1h, 30m, 7d) "
            "or an ISO-8601 instant (2026-11-27T10:00:00Z)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 and the like
        raise TimeArgumentError(f"time {text!r} out of range") from None
    return check_instant(value, text)


def check_instant(value: datetime, text: str) -> datetime:
    """``value`` if within [EARLIEST, LATEST), else a :class:`TimeArgumentError`."""
    if not EARLIEST <= value < LATEST:
        raise TimeArgumentError(
            f"time {text!r} out of range: from {EARLIEST:%Y-%m-%d} up to, not including, "
            f"{LATEST:%Y-%m-%d}"
        )
    return value


def check_range(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``(start, end)`` if ``end`` is after ``start``, else a :class:`TimeArgumentError`."""
    if end <= start:
        raise TimeArgumentError(
            f"empty time range: --until ({end:%Y-%m-%dT%H:%M:%SZ}) is not "
            f"after --since ({start:%Y-%m-%dT%H:%M:%SZ})"
        )
    return start, end


def check_not_future(flag: str, value: datetime | None, *, now: datetime, why: str) -> None:
    """Refuse ``value`` later than ``now`` (give or take :data:`CLOCK_SKEW`), saying
    ``why`` that matters to the command: where an end is recorded or waited for."""
    if value is not None and value > now + CLOCK_SKEW:
        raise TimeArgumentError(f"{flag} {value:%Y-%m-%dT%H:%M:%SZ} is in the future: {why}")


def parse_range(
    since: str, until: str | None = None, *, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """``[since, until)`` in UTC; ``until`` defaults to now."""
    now = now or datetime.now(UTC)
    start = parse_instant(since, now=now)
    end = parse_instant(until, now=now) if until else now
    return check_range(start, end)


def iso_utc(moment: datetime) -> str:
    """An instant as machine output writes it: UTC, six fractional digits, ``Z``.

    One form for every time, whole seconds or not: two forms in one field sorted wrong as
    text (found by review). :func:`parse_instant` reads it back."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def humanize(window: timedelta) -> str:
    """``10 minutes``, ``1 hour``, ``90 seconds``: for sentences analysts read."""
    seconds = int(window.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"
