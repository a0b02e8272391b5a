"""Suppressions as code: a YAML file of match conditions, each with a reason and an expiry.

The file is kept in git next to the rules, reviewed like code, and applied before delivery.
A suppressed finding stays in the lake with status ``suppressed`` and the suppression's
name, so an investigation still finds it and an auditor sees who silenced what and why::

    suppressions:
      - name: kube-probe-health
        reason: the load balancer's health check hits /readyz anonymously (TICKET-42)
        expires: 2027-03-31          # a date (UTC end of day) or an ISO-8601 instant
        match:                        # every condition given must hold (AND)
          detector: "rule:anonymous-*"        # glob on the detector
          principal: "system:anonymous"       # glob on the principal ...
          principal_regex: "^arn:aws:iam::\\d+:role/ci-.*"  # ... or a regex
          cluster: prod
          namespace: kube-system              # every event of the finding in it
          source_ip: 10.0.0.0/8               # every event from this address or CIDR
          user_agent: "kube-probe/*"          # every event's user agent (glob)

Detector, principal and cluster are properties of the finding. Namespace, source IP and
user agent are properties of its events: the finding matches when *all* its events match,
so one hostile request mixed into a health check's window is never silenced with it.
An expired suppression is not applied and says so in the log (warning), once per run.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from detector.errors import UsageError
from detector.events.identity import canonical_principal
from detector.rules.condition import ConditionError, check_regex, glob_to_regex
from detector.rules.loader import YAML_LOADER, yaml_problem
from detector.userfiles import read_user_file

log = logging.getLogger(__name__)

FINDING_KEYS = ("detector", "principal", "principal_regex", "cluster")
EVENT_KEYS = ("namespace", "source_ip", "user_agent")
MATCH_KEYS = FINDING_KEYS + EVENT_KEYS
#: Matched as shell globs (the others: a regex, an address or CIDR).
GLOB_KEYS = ("detector", "principal", "cluster", "namespace", "user_agent")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")


class SuppressionError(UsageError):
    """The suppressions file cannot be used; the message names the entry and key."""


@dataclass(frozen=True)
class Suppression:
    name: str
    reason: str
    expires: datetime
    match: dict[str, str] = field(default_factory=dict)

    def expired(self, now: datetime) -> bool:
        return now >= self.expires


def _expiry(value: Any, where: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.max, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SuppressionError(f"{where}: expires {value!r} is not a date") from None
        if len(value) == 10:
            return datetime.combine(parsed.date(), time.max, tzinfo=UTC)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise SuppressionError(f"{where}: expires is required (a date such as 2027-03-31)")


def parse(data: Any, source: str = "suppressions") -> list[Suppression]:
    """Check a loaded YAML document; every problem is one line naming the entry."""
    if data is None:
        return []
    items = data.get("suppressions") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise SuppressionError(f"{source}: expected a list under 'suppressions:'")
    out: list[Suppression] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}: suppression {i + 1}"
        if not isinstance(item, dict):
            raise SuppressionError(f"{where}: expected a mapping with name, reason, expires, match")
        unknown = set(item) - {"name", "reason", "expires", "match"}
        if unknown:
            raise SuppressionError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise SuppressionError(f"{where}: name must be letters, digits, . _ : - (got {name!r})")
        where = f"{source}: suppression {name!r}"
        if name in seen:
            raise SuppressionError(f"{where}: duplicate name")
        seen.add(name)
        reason = item.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise SuppressionError(f"{where}: a reason is required")
        match = item.get("match")
        if not isinstance(match, dict) or not match:
            raise SuppressionError(f"{where}: match needs at least one of {', '.join(MATCH_KEYS)}")
        bad = set(match) - set(MATCH_KEYS)
        if bad:
            raise SuppressionError(
                f"{where}: unknown match key(s) {', '.join(sorted(bad))} "
                f"(known: {', '.join(MATCH_KEYS)})"
            )
        clean: dict[str, str] = {}
        for key, value in match.items():
            if not isinstance(value, str) or not value:
                raise SuppressionError(f"{where}: match.{key} must be a non-empty string")
            if key in GLOB_KEYS or key == "principal_regex":
                # Compiled by polars' engine, the one that applies it: Python's accepts
                # lookarounds and backreferences it refuses.
                try:
                    check_regex(value if key == "principal_regex" else glob_regex(value))
                except ConditionError as exc:
                    raise SuppressionError(f"{where}: match.{key}: {exc}") from None
            if key == "source_ip":
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise SuppressionError(
                        f"{where}: match.source_ip {value!r} is not an address or CIDR"
                    ) from None
            clean[key] = value
        out.append(Suppression(name, reason.strip(), _expiry(item.get("expires"), where), clean))
    return out


def load(path: str | Path | None) -> list[Suppression]:
    """Suppressions from a YAML file (safe_load: nothing in it is executed)."""
    if path is None:
        return []
    p = Path(path)
    try:
        text = read_user_file(p)
    except FileNotFoundError:
        raise SuppressionError(f"suppressions file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SuppressionError(f"suppressions file {path} cannot be read: {exc}") from None
    try:
        data = yaml.load(text, Loader=YAML_LOADER)  # safe: nothing in it is executed
    except RecursionError:
        raise SuppressionError(
            f"suppressions file {path}: not valid YAML: nested too deeply"
        ) from None
    except yaml.YAMLError as exc:
        raise SuppressionError(f"suppressions file {path}: {yaml_problem(exc)}") from None
    return parse(data, str(path))


def active(suppressions: list[Suppression], now: datetime) -> list[Suppression]:
    """The suppressions still in force; each expired one is logged as a warning."""
    out = []
    for s in suppressions:
        if s.expired(now):
            log.warning(
                "suppression %s expired on %s and is no longer applied (reason was: %s)",
                s.name,
                s.expires.strftime("%Y-%m-%d"),
                s.reason,
            )
        else:
            out.append(s)
    return out


def glob_regex(pattern: str) -> str:
    """A shell glob as an anchored regex for polars, as the rules' ``glob`` reads it.

    (``fnmatch.translate`` wrote Python-only atomic groups for two ``*``: a suppression
    on ``"*kube-probe*"`` loaded, then failed on the first finding it was applied to.)
    """
    return "^(?:" + glob_to_regex(pattern) + ")$"


def _glob(col: str, pattern: str) -> pl.Expr:
    values = pl.col(col).fill_null("")
    if not any(c in pattern for c in "*?["):
        # no wildcard: the same test without a regex to compile (most suppressions name
        # a principal or a cluster as it is, and a file may hold thousands)
        return values == pattern
    return values.str.contains(glob_regex(pattern))


def _cidr(col: str, value: str) -> pl.Expr:
    """Address in network, compared on the integer form (IPv4 and IPv6 kept apart).

    Reads ``_ip_version`` and ``_ip_int``, which :func:`_with_addresses` derives from
    ``col`` once per distinct address (a Python call per event and per suppression made
    500 source_ip suppressions over 20,000 events take 45 s)."""
    net = ipaddress.ip_network(value, strict=False)
    return (pl.col("_ip_version") == net.version) & pl.col("_ip_int").is_between(
        pl.lit(int(net.network_address), pl.UInt128),
        pl.lit(int(net.broadcast_address), pl.UInt128),
    )


def _with_addresses(events: pl.DataFrame, col: str = "source_ip") -> pl.DataFrame:
    """``events`` with the version and integer of each parseable address in ``col``."""
    distinct = events.get_column(col).drop_nulls().unique().to_list()
    parsed = {ip: a for ip in distinct if (a := _address(ip)) is not None}
    table = pl.DataFrame(
        {
            col: pl.Series(list(parsed), dtype=events.schema[col]),
            "_ip_version": pl.Series([a.version for a in parsed.values()], dtype=pl.Int8),
            "_ip_int": pl.Series([int(a) for a in parsed.values()], dtype=pl.UInt128),
        }
    )
    return events.join(table, on=col, how="left", maintain_order="left")


def _address(ip: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)  # type: ignore[arg-type]
    except ValueError:
        return None


def _finding_expr(s: Suppression) -> pl.Expr:
    m = s.match
    expr = pl.lit(True)
    if "detector" in m:
        expr &= _glob("detector", m["detector"])
    if "principal" in m:
        # as typed, or in the form the lake stores (an STS ARN pasted from CloudTrail)
        stored = canonical_principal(m["principal"])
        expr &= _glob("principal", m["principal"]) | _glob("principal", stored)
    if "principal_regex" in m:
        expr &= pl.col("principal").fill_null("").str.contains(m["principal_regex"])
    if "cluster" in m:
        expr &= _glob("cluster", m["cluster"])
    return expr


def _event_expr(s: Suppression) -> pl.Expr | None:
    m = s.match
    parts = []
    if "namespace" in m:
        parts.append(_glob("namespace", m["namespace"]))
    if "source_ip" in m:
        parts.append(_cidr("source_ip", m["source_ip"]))
    if "user_agent" in m:
        parts.append(_glob("user_agent", m["user_agent"]))
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr &= p
    return expr


def apply(
    findings: pl.DataFrame,
    events: pl.DataFrame | None,
    suppressions: list[Suppression],
    now: datetime,
) -> pl.DataFrame:
    """``finding_id`` -> ``suppression`` (name of the first matching suppression, or null).

    The first suppression in file order wins, so the file reads top to bottom like a
    firewall. Events are only looked at for suppressions with event conditions.

    Every suppression is tested in one query over the findings and one over their events
    (a column each), and the first that holds is picked per finding: tested one after
    another, each cost a few small queries, and a file of 50,000 took 48 s (500: ~1 s of
    every scoring run and every ``detect watch`` batch with findings).
    """
    ids = findings.select("finding_id")
    live = active(suppressions, now)
    if not live or findings.is_empty():
        return ids.with_columns(pl.lit(None, pl.String).alias("suppression"))
    if events is not None and not events.is_empty():
        key = findings.schema["finding_id"]
        if events.schema["finding_id"] != key:  # a join needs one type on both sides
            events = events.with_columns(pl.col("finding_id").cast(key))
        if any("source_ip" in s.match for s in live):
            events = _with_addresses(events)
    else:
        events = None
    picked: list[str | None] = [None] * findings.height
    # a block of suppressions at a time: the grid is findings x suppressions booleans
    for lo in range(0, len(live), _BLOCK):
        block = _first_held(findings, events, live[lo : lo + _BLOCK])
        picked = [p if p is not None else b for p, b in zip(picked, block, strict=True)]
        if all(p is not None for p in picked):
            break
    return ids.with_columns(pl.Series("suppression", picked, dtype=pl.String))


#: Suppressions tested at once: the grid held is findings x this many booleans.
_BLOCK = 1024


def _first_held(
    findings: pl.DataFrame, events: pl.DataFrame | None, live: list[Suppression]
) -> list[str | None]:
    """Per finding, the name of the first of ``live`` that holds, or None."""
    names = [f"_s{i}" for i in range(len(live))]
    # finding_id kept in the select: a suppression of event conditions only is a literal,
    # and a select of literals alone would be one row
    pairs = list(zip(live, names, strict=True))
    held = findings.select("finding_id", *(_finding_expr(s).alias(n) for s, n in pairs))
    fid = findings.get_column("finding_id")
    if fid.null_count() or fid.is_duplicated().any():
        # per finding_id, as before: a row matching suppresses every row of its id, and a
        # null id is never suppressed
        held = held.with_columns(
            (pl.col(n).any().over("finding_id") & pl.col("finding_id").is_not_null()).alias(n)
            for n in names
        )
    on_events = [(n, e) for s, n in pairs if (e := _event_expr(s)) is not None]
    if on_events and events is None:
        held = held.with_columns(pl.lit(False).alias(n) for n, _ in on_events)
    elif on_events:
        assert events is not None
        # every event of the finding must match (a finding without events matches none)
        every = events.group_by("finding_id").agg(
            e.fill_null(False).all().alias(f"{n}_events") for n, e in on_events
        )
        with_events = {n for n, _ in on_events}
        held = held.join(every, on="finding_id", how="left", maintain_order="left").select(
            "finding_id",
            *(
                (pl.col(n) & pl.col(f"{n}_events").fill_null(False)).alias(n)
                if n in with_events
                else pl.col(n)
                for n in names
            ),
        )
    grid = held.select(names).to_numpy()
    first = grid.argmax(axis=1)
    return [live[i].name if row[i] else None for row, i in zip(grid, first, strict=True)]
