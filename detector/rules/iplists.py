"""IP address lists for rules: AWS's published ranges (a dated snapshot) and deny lists.

GuardDuty's MaliciousIPCaller findings flag EKS API calls from addresses on threat lists,
and a node, kube-system or ``eks:`` identity calling from a public address outside AWS
means its credentials left the cluster. Both need address-in-network tests over millions
of rows, so networks become sorted, merged integer intervals and each address is found
with one binary search (``search_sorted``), vectorized, never a Python loop per event.

No network access at run time: the AWS ranges ship as a small derived file
(``data/aws-ip-ranges.txt``, merged CIDRs with the source's date). ``detect rules
aws-ranges`` derives a fresh one from a user-supplied ``ip-ranges.json`` into a file of
the user's (never into the installed package, which may be read-only and is replaced on
upgrade), which the rules read instead once ``detect.toml`` names it (``aws_ranges``,
exported as ``DETECT_AWS_RANGES``). Deny lists are text files
of addresses or CIDRs, one a line (``#`` comments), named in ``detect.toml``
(``ip_lists = [...]``, exported as ``DETECT_IP_LISTS``).

IPv4 and IPv6 alike: an EKS cluster in IPv6 mode gives its pods AWS's global IPv6
addresses, and the API server logs them. IPv4 addresses are searched in polars; IPv6 ones
(a few distinct addresses a range, each answered once and remembered) with ``bisect``
over Python integers, which polars has no 128-bit search for. An IPv6 address that
carries an IPv4 one (IPv4-mapped ``::ffff:203.0.113.9``, 6to4, Teredo's client, NAT64's
well-known prefix) is judged as that IPv4 address: the host behind a tunnel or
translator is the one calling.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import json
import os
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import polars as pl

from detector.config import AWS_RANGES_ENV, IP_LISTS_ENV, ConfigError
from detector.events.addresses import CLAIMED
from detector.rules.condition import ConditionError
from detector.userfiles import read_user_file

__all__ = ["IP_LISTS_ENV", "derive_aws_ranges", "read_networks", "source_in"]
#: Refuse lists beyond this many entries (a wrong file, not a threat feed).
MAX_ENTRIES = 2_000_000

#: Addresses that are not on the public internet: private, shared (CGNAT), loopback,
#: link-local, documentation and multicast ranges.
NON_PUBLIC = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
    # IPv6: the reserved ::/8 (unspecified, loopback...), NAT64, discard, IETF protocol
    # assignments (Teredo...), documentation, 6to4, unique local, link-local, multicast
    # (an address carrying an IPv4 one, 6to4, Teredo, NAT64, is judged as that one).
    "::/8",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Ranges:
    """A list's networks as merged, sorted ``[start, end]`` integer intervals: IPv4 as
    polars series (one vectorised search for every address of a range), IPv6 as Python
    integers (128 bits, searched with ``bisect``)."""

    starts: pl.Series
    ends: pl.Series
    v6_starts: tuple[int, ...] = ()
    v6_ends: tuple[int, ...] = ()

    def holds_v6(self, number: int) -> bool:
        i = bisect.bisect_right(self.v6_starts, number) - 1
        return i >= 0 and number <= self.v6_ends[i]


def shipped_aws_ranges() -> Path:
    """The snapshot of AWS's ranges shipped in the package."""
    return Path(str(resources.files("detector.rules") / "data" / "aws-ip-ranges.txt"))


def configured_aws_ranges() -> Path | None:
    """The AWS ranges file the settings name (``aws_ranges``, ``DETECT_AWS_RANGES``), if any."""
    configured = os.environ.get(AWS_RANGES_ENV, "").strip()
    return Path(configured) if configured else None


def aws_ranges_path() -> Path:
    """The AWS ranges the rules read: the configured file, else the shipped snapshot."""
    return configured_aws_ranges() or shipped_aws_ranges()


#: A bad line that looks like an attempt at an address (``10.0.0.0/33``, ``10.0.0.256``,
#: with a dot or a colon) is quoted in the error; any other is not: the file named may not
#: be a list at all (a credentials file, /etc/shadow, a hex API key), and an error message
#: goes to logs.
_ADDRESS_LIKE = re.compile(r"(?=[^.:]*[.:])[0-9A-Fa-f:./%]{1,50}")


def _shown(text: str) -> str:
    if _ADDRESS_LIKE.fullmatch(text):
        return repr(text)
    return f"a line of {len(text)} characters that no address holds (not shown)"


def parse_networks(lines: Iterable[str], label: str) -> list[_Network]:
    """Addresses or CIDRs, one a line; ``#`` starts a comment. Bad lines name their number."""
    out: list[_Network] = []
    for number, raw in enumerate(lines, 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConditionError(
                f"{label}, line {number}: not an address or CIDR: {_shown(text)}"
            ) from None
        out.append(net)
        if len(out) > MAX_ENTRIES:
            raise ConditionError(f"{label}: more than {MAX_ENTRIES:,} entries")
    return out


def read_networks(path: str | Path) -> list[_Network]:
    try:
        return parse_networks(read_user_file(path).splitlines(), str(path))
    except FileNotFoundError:
        raise ConditionError(f"IP list {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConditionError(f"IP list {path}: cannot read: {exc}") from None


def intervals(networks: Iterable[_Network]) -> Ranges:
    """Merged, sorted ``[start, end]`` integer intervals of the networks, per family."""
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for net in map(_as_v4, networks):
        pair = (int(net.network_address), int(net.broadcast_address))
        (v4 if net.version == 4 else v6).append(pair)
    return _ranges(v4, v6)


def _ranges(v4: list[tuple[int, int]], v6: list[tuple[int, int]]) -> Ranges:
    """The :class:`Ranges` of each family's ``(start, end)`` pairs, merged: one constructor
    for the checked path and the plain one, so both answer alike."""
    merged, merged_v6 = _merged(v4), _merged(v6)
    return Ranges(
        pl.Series("start", [p[0] for p in merged], dtype=pl.UInt32),
        pl.Series("end", [p[1] for p in merged], dtype=pl.UInt32),
        tuple(p[0] for p in merged_v6),
        tuple(p[1] for p in merged_v6),
    )


def _as_v4(net: _Network) -> _Network:
    """An IPv4-mapped network (``::ffff:185.220.101.0/120``) as the IPv4 one it maps: a
    mapped source is searched as IPv4, and a list's mapped entry matched nothing (review)."""
    mapped = isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped
    if mapped and net.prefixlen >= 96:
        return ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
    return net


def ipv4_number(col: pl.Expr) -> pl.Expr:
    """A dotted IPv4 address as an integer; null for anything else (IPv6, garbage)."""
    parts = col.str.extract_groups(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")
    octets = [parts.struct.field(str(i)).cast(pl.UInt32, strict=False) for i in (1, 2, 3, 4)]
    valid = pl.all_horizontal([o <= 255 for o in octets])
    number = octets[0] * 16777216 + octets[1] * 65536 + octets[2] * 256 + octets[3]
    return pl.when(valid).then(number)


def in_intervals(number: pl.Expr, starts: pl.Series, ends: pl.Series) -> pl.Expr:
    """Whether each integer lies in one of the intervals (null stays null)."""
    if starts.is_empty():
        return pl.when(number.is_not_null()).then(pl.lit(False))
    idx = pl.lit(starts).search_sorted(number, side="right").cast(pl.Int64) - 1
    end = pl.lit(ends).gather(idx.clip(lower_bound=0))
    return pl.when(number.is_null()).then(None).otherwise((idx >= 0) & (number <= end))


#: A dotted IPv4 address or CIDR as ``ipaddress`` reads it (no leading zeros).
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_CIDR = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(3[0-2]|[12]?\d))?")


def _plain_intervals(paths: list[str | Path]) -> Ranges | None:
    """:func:`intervals` of the files, when every entry is a plain address or CIDR.

    The AWS snapshot is read by every run that loads the rules: parsing its ~1,800 IPv4
    and ~2,100 IPv6 CIDRs with integer arithmetic instead of ``ipaddress`` objects takes a
    tenth of the time. Overlapping or adjacent networks are merged into one interval (the
    same addresses as ``collapse_addresses``). None when a line is anything else (a typo,
    too many entries): the checked path then reads the files and names the bad line.
    """
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for path in paths:
        try:
            lines = read_user_file(path).splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        for raw in lines:
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            if len(v4) + len(v6) >= MAX_ENTRIES:
                return None
            pair = _v6_pair(text) if ":" in text else _v4_pair(text)
            if pair is None:
                return None
            if ":" in text and pair[0] >> 32 == pair[1] >> 32 == 0xFFFF:  # IPv4-mapped
                pair = (pair[0] & 0xFFFFFFFF, pair[1] & 0xFFFFFFFF)
                v4.append(pair)
                continue
            (v6 if ":" in text else v4).append(pair)
    return _ranges(v4, v6)


def _v4_pair(text: str) -> tuple[int, int] | None:
    m = _IPV4_CIDR.fullmatch(text)
    if m is None:
        return None
    a, b, c, d, bits = m.groups()
    number = (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d)
    host = (1 << (32 - int(bits if bits is not None else 32))) - 1
    return number & ~host & 0xFFFFFFFF, number | host


def _v6_pair(text: str) -> tuple[int, int] | None:
    address, slash, bits = text.partition("/")
    if slash and not (bits.isdigit() and len(bits) <= 3 and int(bits) <= 128):
        return None
    try:
        number = int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")
    except OSError:  # a zone, a typo: the checked path says which line
        return None
    host = (1 << (128 - int(bits if slash else 128))) - 1
    return number & ~host, number | host


def _merged(pairs: list[tuple[int, int]]) -> list[list[int]]:
    merged: list[list[int]] = []
    for start, end in sorted(pairs):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _versions(key: str) -> tuple[tuple[int, int] | None, ...]:
    """(mtime, size) of each file of ``key``: a list written again is read again."""
    out = []
    for f in key.split(os.pathsep):
        try:
            st = os.stat(f) if f else None
        except OSError:
            st = None
        out.append((st.st_mtime_ns, st.st_size) if st else None)
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _cached(kind: str, key: str, versions: tuple[tuple[int, int] | None, ...] = ()) -> Ranges:
    if kind == "non_public":
        return intervals(ipaddress.ip_network(n) for n in NON_PUBLIC)
    files: list[str | Path] = [f for f in key.split(os.pathsep) if f]
    plain = _plain_intervals(files)
    if plain is not None:
        return plain
    try:
        return intervals(n for f in files for n in read_networks(f))
    except ConditionError as exc:  # the setting's fault, not that of the rule reading it
        raise ConfigError(f"{_SETTINGS.get(kind, kind)}: {exc.message}") from None


#: Where each list's files are named, for errors about them.
_SETTINGS = {
    "aws": f"aws_ranges in detect.toml ({AWS_RANGES_ENV})",
    "denied": f"ip_lists in detect.toml ({IP_LISTS_ENV})",
}


#: Addresses whose answer one :func:`source_in` expression remembers (about 100 bytes
#: each): a cluster's callers are a few hundred to a few thousand; past this many (a
#: scan from every address of a /16, a long-running watch) it starts over.
KNOWN_ADDRESSES = 65_536
#: Not yet classified (an answer itself may be None: an address that does not parse).
_UNKNOWN = object()
#: The longest text remembered as an address (an IPv6 one with a zone is under 64): a log
#: may put anything in sourceIPs, and a megabyte there must not be kept 65,536 times.
ADDRESS_CHARS = 64


def source_in(kind: str) -> pl.Expr:
    """Whether the request's addresses are in the non-public ranges, AWS's ranges or the
    configured deny lists, judged over every address of ``sourceIPs``.

    ``source_ip`` is ``sourceIPs[0]``: the client's own X-Forwarded-For claim when it sends
    one, and only the last address is the one the API server's connection came from. A
    stolen token used from 8.8.4.4 with ``X-Forwarded-For: 10.0.5.5`` was judged private
    (found by review). So a request is non-public only when every address is, in AWS only
    when every public address is (and one is), and denied when any address is: a forged
    header can add an address to be judged, never hide one.

    One expression per list and version of its files, shared by every rule that tests
    it: in the first pass over a range, where all the rules' gates run in one query,
    polars then classifies each address once for all of them, not once per rule.
    """
    key = _list_key(kind)
    return _source_in(kind, key, _versions(key))


def _list_key(kind: str) -> str:
    """The files list ``kind`` reads, joined by ``os.pathsep`` ("" for the fixed ranges)."""
    return {"denied": os.environ.get(IP_LISTS_ENV, ""), "aws": str(aws_ranges_path())}.get(kind, "")


def lists_stamp() -> tuple[tuple[str, tuple[tuple[int, int] | None, ...]], ...]:
    """The list files rules compile with and their versions: besides its files, all a
    compiled rule set depends on (see ``rules.loader._compiled``), so one is reused only
    while this is unchanged, and a list written again or named anew is read again."""
    return tuple((key, _versions(key)) for key in map(_list_key, ("denied", "aws")))


@functools.lru_cache(maxsize=16)
def _lookup(
    kind: str, key: str, versions: tuple[tuple[int, int] | None, ...]
) -> Callable[[pl.Series], pl.Series]:
    """Each address of a series in the list files ``key`` names, at ``versions``: True,
    False, or None for text that is no address.

    A range holds few distinct addresses and many events, so each distinct address is
    classified once (one binary search each) and the answer mapped back onto the rows.
    The answers are remembered between calls: polars hands over a read range a file's
    chunk at a time (tens of calls for a day), and building the search for the same few
    hundred addresses in each call cost three times the mapping itself.
    """
    ranges = _cached(kind, key, versions)
    known: dict[str, bool | None] = {}

    def lookup(s: pl.Series) -> pl.Series:
        s = s.cast(pl.String)  # the first pass may hand it over as a categorical
        distinct = s.drop_nulls().unique()
        if distinct.is_empty():
            return pl.Series(s.name, [None] * len(s), dtype=pl.Boolean)
        addresses = distinct.to_list()
        # Read once, then only this call's own answers: polars calls this from several
        # threads at once, and another may start the memory over meanwhile.
        answers = [known.get(a, _UNKNOWN) for a in addresses]
        missing = [a for a, v in zip(addresses, answers, strict=True) if v is _UNKNOWN]
        if missing:
            v6 = {a: _v6_address(a) for a in missing if ":" in a and len(a) <= ADDRESS_CHARS}
            carried = {a: v4 for a, ip in v6.items() if ip and (v4 := _carried_v4(ip))}
            probes = [str(carried[a]) if a in carried else a for a in missing]
            found = (
                pl.Series("ip", probes, dtype=pl.String)
                .to_frame()
                .select(in_intervals(ipv4_number(pl.col("ip")), ranges.starts, ranges.ends))
                .to_series()
                .to_list()
            )
            new = {
                a: ranges.holds_v6(int(ip)) if (ip := v6.get(a)) and a not in carried else hit
                for a, hit in zip(missing, found, strict=True)
            }
            answers = [
                new[a] if v is _UNKNOWN else v for a, v in zip(addresses, answers, strict=True)
            ]
            if len(known) + len(new) > KNOWN_ADDRESSES:
                known.clear()
            known.update((a, v) for a, v in new.items() if len(a) <= ADDRESS_CHARS)
        answer = pl.Series(answers, dtype=pl.Boolean)
        return s.replace_strict(distinct, answer, default=None, return_dtype=pl.Boolean)

    return lookup


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _carried_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: IPv4-mapped, 6to4 (``2002:AABB:CCDD::``),
    Teredo (its client's), NAT64's well-known prefix (``64:ff9b::AABB:CCDD``). Judged as
    reserved IPv6 they were never public, so a stolen token used through a Teredo tunnel
    from a Tor exit passed every outside-AWS and deny-list rule (found by review)."""
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _v6_address(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _source_in(kind: str, key: str, versions: tuple[tuple[int, int] | None, ...]) -> pl.Expr:
    """:func:`source_in` for the list files ``key`` names, at ``versions``. No deny list
    configured: constant false, so the rule costs nothing."""
    if kind == "denied" and not key.strip(os.pathsep + " "):
        return pl.lit(False)
    lookup = _lookup(kind, key, versions)
    non_public = _lookup("non_public", "", ())

    def classify(both: pl.Series) -> pl.Series:
        answer = lookup(both.struct.field("source_ip"))
        lists = both.struct.field("source_ips")
        several = (lists.list.len() > 1).fill_null(False)
        if not several.any():  # one address a request, nearly always: judged as it is
            return answer
        judged = _each_address(lists, several.arg_true())
        judged = judged.with_columns(hit=lookup(judged["ip"]), private=non_public(judged["ip"]))
        if kind == "non_public":
            each = pl.col("hit").all()
        elif kind == "aws":  # every public address in AWS, and one public at least
            public = pl.col("private").not_()
            each = (pl.col("hit") | pl.col("private")).all() & public.any()
        else:
            each = pl.col("hit").any()
        per_row = judged.group_by("row", maintain_order=True).agg(each.alias("hit"))
        return answer.scatter(per_row["row"], per_row["hit"])

    # Row by row in effect (each request's answer depends on it alone): declared so, the
    # streaming engine runs it on each batch instead of gathering the whole column first.
    return pl.struct("source_ip", "source_ips").map_batches(
        classify, return_dtype=pl.Boolean, is_elementwise=True
    )


def _each_address(lists: pl.Series, rows: pl.Series) -> pl.DataFrame:
    """(row, ip) for every address of the ``sourceIPs`` lists at ``rows``, as text."""
    frame = pl.DataFrame({"row": rows, "ip": lists.gather(rows)}).explode("ip")
    return frame.with_columns(pl.col("ip").cast(pl.String))


def public_outside_aws() -> pl.Expr:
    """The addresses of ``source_ips`` that are public and outside AWS's ranges: what the
    outside-AWS rules name in their reasons (``from 10.0.5.5, 8.8.4.4`` did not say which
    of a forwarded request's addresses was judged; found by review). An address the client
    named in a forwarding header says so: ``8.8.4.4 (claimed by the client in a forwarding
    header)``, since any caller can write one (found by review). Read for the rows of
    findings only, so one classification per address is plenty."""
    key = _list_key("aws")
    in_aws, non_public = _lookup("aws", key, _versions(key)), _lookup("non_public", "", ())

    def pick(lists: pl.Series) -> pl.Series:
        rows = pl.int_range(len(lists), eager=True).alias("row")
        each = _each_address(lists, rows)
        keep = (~non_public(each["ip"]) & ~in_aws(each["ip"])).fill_null(False)
        # Every address but the last is what the client wrote in a header: said so.
        claimed = pl.int_range(pl.len()).over("row") < pl.len().over("row") - 1
        named = pl.when(claimed).then(pl.format("{} ({})", "ip", pl.lit(CLAIMED)))
        each = each.with_columns(named.otherwise(pl.col("ip")).alias("ip"))
        picked = each.filter(keep).group_by("row", maintain_order=True).agg(pl.col("ip"))
        return rows.to_frame().join(picked, on="row", how="left")["ip"]

    return pl.col("source_ips").map_batches(
        pick, return_dtype=pl.List(pl.String), is_elementwise=True
    )


def derive_aws_ranges(ip_ranges_json: str | Path) -> str:
    """The snapshot file's text from AWS's ``ip-ranges.json``: merged IPv4 and IPv6 CIDRs,
    dated.

    Every prefix counts (service AMAZON is the superset AWS publishes for all of its
    services, EC2 included), merged into the fewest CIDRs; the header keeps the source's
    createDate and syncToken so a finding can say how old its reference was.
    """
    try:
        data = json.loads(read_user_file(ip_ranges_json))  # 16 MB at most: /dev/zero is no list
        prefixes = [p["ip_prefix"] for p in data["prefixes"]]
        prefixes += [p["ipv6_prefix"] for p in data.get("ipv6_prefixes", [])]
        created, token = data["createDate"], data["syncToken"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConditionError(
            f"{ip_ranges_json}: not AWS's ip-ranges.json ({type(exc).__name__}: {exc})"
        ) from None
    networks = parse_networks(prefixes, str(ip_ranges_json))
    merged = [
        *ipaddress.collapse_addresses(n for n in networks if n.version == 4),  # type: ignore[misc]
        *ipaddress.collapse_addresses(n for n in networks if n.version == 6),  # type: ignore[misc]
    ]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    header = [
        "# AWS public IPv4 and IPv6 ranges, merged from ip-ranges.json",
        f"# createDate {created} syncToken {token} ({len(prefixes)} prefixes, "
        f"{len(merged)} merged); derived {stamp} by `detect rules aws-ranges`",
    ]
    return "\n".join([*header, *(str(n) for n in merged)]) + "\n"
