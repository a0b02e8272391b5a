"""Raw audit lines -> canonical event rows, redacted, and a quarantine for the rest.

The hot path is columnar: a clean batch of lines is parsed in one pyarrow ``read_json`` call
against an explicit schema (about 2.5x cheaper than polars' NDJSON reader), its free-form
members come from the line text or, for the few lines with bodies, from polars (see
:func:`_read_fast`), and every derived column is a polars expression. Python only touches
the lines that need it: a batch the fast path cannot vouch for is parsed by polars, the
reference, and split in halves until the bad lines are isolated (so one bad line costs
about ``2*log2(n)`` re-parses, and its good neighbours are never lost), and
Secret/TokenRequest bodies are redacted object by object because their structure (lists,
patches, last-applied annotations) is not regular.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from detector.events.auditid import bounded_ids
from detector.events.identity import UNVERIFIED
from detector.events.redact import REDACTED as REDACTED
from detector.events.redact import redact_events, redact_quarantine
from detector.events.schema import (
    CANONICAL_COLUMNS,
    QUARANTINE_COLUMNS,
    QUARANTINE_RAW_CAP,
    RAW_EVENT_SCHEMA,
)

#: Lines longer than this are quarantined unparsed. The API server itself caps request
#: bodies near 3 MiB and CloudWatch cuts entries at 256 KB, so anything larger is damage.
MAX_LINE_BYTES = 4 * 1024 * 1024

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"

#: Default sane range of event times. Kubernetes audit logging (and so any real event) is
#: younger than 2014; an event more than a day ahead of the wall clock is a broken clock or
#: a forgery. Outside it, one row would make every later score/train over the lake fail
#: (Python datetimes stop at year 9999), so such events are quarantined instead.
DEFAULT_EARLIEST = datetime(2014, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE = timedelta(days=1)


@dataclass(frozen=True)
class TimeBounds:
    """The event times accepted into the lake; ``clock`` is injectable for tests."""

    earliest: datetime = DEFAULT_EARLIEST
    max_future: timedelta = DEFAULT_MAX_FUTURE
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def latest(self) -> datetime:
        return self.clock() + self.max_future


@dataclass
class Normalized:
    """One batch's outcome: canonical events and quarantined lines."""

    events: pl.DataFrame
    quarantine: pl.DataFrame


# --------------------------------------------------------------------------- parsing
def _ndjson_bytes(lines: pa.Array, *, terminated: bool = False) -> bytes:
    """NDJSON bytes of ``lines``: a buffer slice when each line keeps its newline (files),
    else one C-level join (4x faster than Arrow's element-wise join kernel)."""
    if not terminated:
        return b"\n".join(lines.to_pylist())
    if len(lines) == 0:
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    lo, hi = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return lines.buffers()[2].to_pybytes()[lo:hi] if lo else lines.buffers()[2].to_pybytes()[:hi]


def _read(data: bytes, schema: dict[str, pl.DataType] = RAW_EVENT_SCHEMA) -> pl.DataFrame:
    # polars sniffs the first bytes for a compression magic number (gzip, zlib, zstd) and
    # inflates the whole buffer if one matches: a text line such as "x^2 + y^2" (0x78 0x5E,
    # a zlib header) then fails as a "corrupt deflate stream". An event starts with "{", so
    # any other first byte is a bad line anyway: a leading newline (a blank line the parser
    # skips) keeps it from being read as a header and lets the bad line be isolated.
    if data[:1] not in (b"{", b" ", b"\n", b"\t", b"\r", b""):
        data = b"\n" + data
    # scan+collect is ~12% faster than read_ndjson on 48 MB blocks (measured, polars 2.1)
    return pl.scan_ndjson(io.BytesIO(data), schema=schema).collect()


#: Free-form members read as JSON text. pyarrow cannot keep a sub-object as text, so the
#: fast path parses every other field with pyarrow and gets these another way (below).
_OBJECT_FIELDS = ("requestObject", "responseObject", "annotations")
#: Escapes polars does not write back when it turns a sub-object into text. In a value it
#: escapes ``"``, ``\n`` and ``\r`` again but writes a backslash, a tab and the other
#: control characters as they are (``C:\temp`` for ``C:\\temp``); in a key it escapes
#: nothing. Neither is JSON. Other ``\u`` escapes come out as the character, which is. The
#: second pattern walks the line string by string from its start (so it never reads a
#: closing quote as an opening one) to a key holding any escape.
_UNKEPT_ESCAPE = (
    r"\\(?:[\\tbf]|u00[01][0-9a-fA-F]|u005[cC])"
    r'|^(?:[^"]|"(?:[^"\\]|\\.)*")*"(?:[^"\\]|\\.)*\\.(?:[^"\\]|\\.)*"\s*:'
)


#: A free-form member whose value is a string, a number or a boolean: polars gives a
#: string's text unquoted (``plain text``, ``{"a":1`` from ``"{\"a\":1"``), which is not
#: JSON; such lines have their members written by :mod:`json` too (``"plain text"``), so
#: the columns hold JSON text whatever the line held. The API server always writes objects.
_NOT_AN_OBJECT = r'"(?:requestObject|responseObject|annotations)"\s*:\s*[^\s{\[n]'


def _loads(text: str | bytes) -> Any:
    """JSON text as Python values: orjson, or :mod:`json` for what orjson refuses (integers
    past 64 bits, lone surrogate escapes). Raises ``UnicodeDecodeError`` for bytes that are
    not UTF-8, ``RecursionError`` for nesting past :mod:`json`'s limit, ``ValueError`` for
    the rest."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)


def _read_objects(data: bytes, lines: pa.Array, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """:func:`_read` of ``lines`` (``data`` is their NDJSON), with every object member
    valid JSON text: the lines polars would garble (:data:`_UNKEPT_ESCAPE`, rare: Windows
    paths, escaped JSON inside a string; :data:`_NOT_AN_OBJECT`, hostile input) have their
    members written by :mod:`json`, in polars' layout (``{"k": "v"}``), so the lake holds
    JSON any reader can parse.

    A line :mod:`json` cannot read back (nesting past its recursion limit) keeps polars'
    text.
    """
    df = _read(data, schema)
    fields = [k for k in _OBJECT_FIELDS if k in df.columns]
    if not fields or df.height != len(lines):
        return df
    text = pl.Series("t", lines).cast(pl.String, strict=False)
    present = df.select(pl.any_horizontal(pl.col(k).is_not_null() for k in fields)).to_series()
    rewrite = text.str.contains(_UNKEPT_ESCAPE) | text.str.contains(_NOT_AN_OBJECT)
    rows = (present & rewrite.fill_null(False)).arg_true()
    if rows.is_empty():
        return df
    fixed: dict[str, list[str | None]] = {k: [] for k in fields}
    for i in rows.to_list():
        try:
            event = _loads(text[i])
            written = {
                k: None if event.get(k) is None else json.dumps(event[k], ensure_ascii=False)
                for k in fields
            }
        except (ValueError, RecursionError, AttributeError):
            written = {k: df[k][i] for k in fields}
        for k in fields:
            fixed[k].append(written[k])
    return df.with_columns(
        df[k].scatter(rows, pl.Series(fixed[k], dtype=pl.String)) for k in fields
    )


# --------------------------------------------------------------------------- fast path


def _arrow_type(dtype: pa.DataType) -> pa.DataType:
    """pyarrow's JSON reader converts to string/list only, not their large forms."""
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        return pa.list_(_arrow_type(dtype.value_type))
    if pa.types.is_struct(dtype):
        return pa.struct([pa.field(f.name, _arrow_type(f.type)) for f in dtype])
    return dtype


_SCALAR_SCHEMA = {k: v for k, v in RAW_EVENT_SCHEMA.items() if k not in _OBJECT_FIELDS}
_ARROW_PARSE = pj.ParseOptions(
    explicit_schema=pa.schema(
        [
            pa.field(f.name, _arrow_type(f.type))
            for f in pl.DataFrame(schema=_SCALAR_SCHEMA).to_arrow().schema
        ]
    ),
    unexpected_field_behavior="ignore",
)
#: Larger than any line we parse (MAX_LINE_BYTES): a line straddling two blocks fails.
#: One thread: big inputs are normalized a block per core already (pipeline.ingest), and
#: pyarrow's own threads on top cost a fifth more CPU for the same parse; a batch smaller
#: than the block size is parsed on one thread either way.
_ARROW_READ = pj.ReadOptions(block_size=8 * 1024 * 1024, use_threads=False)

# ``annotations`` as the last member of the line (where the API server writes it) holding a
# compact map of plain strings (only ``\"`` escapes): then the text polars would give is
# this one with ``": "`` and ``", "`` separators, so both paths store the same bytes. It is
# matched on the line's tail from the first ``"annotations"`` (a regex over the whole line
# cost 0.9 CPU-s per 1M events, this 0.5). The match is certain in valid JSON: the quotes
# rule out a longer key, a string cannot hold them unescaped, and no brace inside the map
# and exactly one ``}`` after it put the map at the top level. A line where the key occurs
# again after the map (a duplicate key: the map is then not last) fails the match and is
# parsed by polars (see ``doubt``).
_ANN_STR = r'"(?:[^"\\\x00-\x1f]|\\")*"'
_ANN_LAST = (
    r'^"annotations"\s*:\s*(\{(?:'
    + _ANN_STR
    + ":"
    + _ANN_STR
    + "(?:,"
    + _ANN_STR
    + ":"
    + _ANN_STR
    + r")*)?\})\s*\}\s*$"
)


#: A JSON string holding only ``,`` or ``:``, where a key or a value starts (after ``{``,
#: ``:`` or ``,``): the re-spacing above cannot tell it from a separator.
_SEPARATOR_STRING = r'[{:,]"[,:]"'


def _annotation_maps(tails: pl.DataFrame) -> pl.DataFrame:
    """The annotations map of each line ``tail`` (from its first ``"annotations"`` on), as
    polars would store it, or null where :data:`_ANN_LAST` cannot vouch for it; and
    ``_respaced_wrong`` where a key or value that is just "," or ":" would be re-spaced
    as a separator. Run per distinct tail (:func:`_per_distinct`): a batch repeats a few
    dozen maps, and every line's cost 0.55 CPU-seconds per 1M events."""
    compact = pl.col("tail").str.extract(_ANN_LAST, 1)
    return tails.with_columns(
        compact.str.replace_all('":"', '": "', literal=True)
        .str.replace_all('","', '", "', literal=True)
        .alias("annotations"),
        compact.str.contains(_SEPARATOR_STRING).fill_null(False).alias("_respaced_wrong"),
    )


def _arrow_input(lines: pa.Array, *, terminated: bool) -> pa.BufferReader:
    """The NDJSON text of ``lines`` for pyarrow: the block itself (no copy) for files."""
    if not terminated:
        return pa.BufferReader(_ndjson_bytes(lines))
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    lo, hi = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return pa.BufferReader(lines.buffers()[2].slice(lo, hi - lo))


def _opens_object(lines: pa.Array) -> np.ndarray:
    """Which lines open a JSON object (``{`` after any whitespace), on bytes.

    Only such blocks go to pyarrow: pyarrow 26 crashes the process (a null pointer,
    apache/arrow#47409) on a block whose first line is a bare ``null``, and reads one
    further down as an event with every field null, where polars says "not a JSON object".
    """
    opens = pc.starts_with(lines, "{")
    if not pc.all(opens).as_py():  # rare: a bad line, or space before the object
        opens = pc.match_substring_regex(lines, r"^[ \t\r\n]*\{")
    return opens.to_numpy(zero_copy_only=False)


def _read_fast(lines: pa.Array, *, terminated: bool) -> pl.DataFrame | None:
    """``_read(data)`` for a clean block at about half the cost, or None if unsure.

    pyarrow parses the typed fields (its JSON reader is ~3x faster than polars' here).
    The object members come from the line text: ``annotations`` by :data:`_ANN_LAST`, and
    the few lines it cannot vouch for (bodies, ``\\u`` escapes that could spell a key,
    any other layout) are parsed for those members alone by polars, the reference. Any
    doubt (a parse error, a skipped or extra row, invalid UTF-8) returns None, and the
    caller takes the careful path that isolates and explains bad lines: quarantine
    reasons never depend on which path ran.
    """
    n = len(lines)
    if not _opens_object(lines).all():
        return None
    try:
        table = pj.read_json(
            _arrow_input(lines, terminated=terminated),
            read_options=_ARROW_READ,
            parse_options=_ARROW_PARSE,
        )
        if table.num_rows != n:
            return None
        text = pl.Series("t", lines).cast(pl.String)
    except (pa.ArrowException, pl.exceptions.PolarsError):
        return None
    # Row i must be line i: a whitespace-only line (skipped) next to a line holding two
    # events (split at its inner line break) would keep the count and shift the rows.
    # Every line opens an object (checked above), so none is whitespace only.
    if text.str.contains(r"[\r\n][^\r\n]").any():
        return None
    key_at = text.str.find('"annotations"', literal=True)
    tails = _text_from(text, key_at).to_frame("tail")
    maps = _per_distinct(tails, ["tail"], _annotation_maps)
    ann = maps["annotations"]
    doubt = (
        text.str.contains('"requestObject"', literal=True)
        | text.str.contains('"responseObject"', literal=True)
        | text.str.contains("\\u", literal=True)
        # the map is not last, not plain strings, or the key occurs again after it (the
        # match from the first key then fails: a duplicate key is polars' to settle)
        | (key_at.is_not_null() & ann.is_null())
        | maps["_respaced_wrong"]
    )
    objects = pl.DataFrame(
        {
            "requestObject": pl.Series([None] * n, dtype=pl.String),
            "responseObject": pl.Series([None] * n, dtype=pl.String),
            "annotations": ann,
        }
    )
    rows = doubt.arg_true()
    if len(rows):
        some = pc.take(lines, pa.array(rows.to_numpy()))
        try:
            found = _read_objects(
                _ndjson_bytes(some), some, {k: pl.String() for k in _OBJECT_FIELDS}
            )
        except (pl.exceptions.PolarsError, OSError):
            return None
        if found.height != len(rows):
            return None
        objects = objects.with_columns(
            pl.Series(k, objects[k]).scatter(rows, found[k]) for k in _OBJECT_FIELDS
        )
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return pl.concat([df, objects], how="horizontal").select(
        pl.col(k).cast(v) for k, v in RAW_EVENT_SCHEMA.items()
    )


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:300] if message.strip() else "parse error"


def _parse_reason(exc: Exception, line: bytes) -> str:
    """A reason an operator can act on, from polars' error text."""
    text = _first_line(str(exc))
    if "InvalidUtf8" in text:
        return "invalid UTF-8"
    if "expected to contain JSON object" in text:
        return "not a JSON object"
    if "error parsing line" in text or "EOF" in text or "Syntax" in text:
        return f"invalid JSON: {text}"
    return f"wrong type: {text}"


#: A UTF-16 surrogate escape: a high one (with the low one that may follow), or a low one.
_SURROGATE = re.compile(
    rb"(\\+)u([dD][89abAB][0-9a-fA-F]{2})(\\u[dD][c-fC-F][0-9a-fA-F]{2})?"
    rb"|(\\+)u([dD][c-fC-F][0-9a-fA-F]{2})"
)


def _lone_surrogate(match: re.Match[bytes]) -> bytes:
    """A surrogate escape without its other half becomes U+FFFD; a pair is kept, and so is
    text after an escaped backslash (an even run of backslashes escapes none)."""
    slashes = match.group(1) or match.group(4)
    paired = match.group(1) is not None and match.group(3) is not None
    if len(slashes) % 2 == 0 or paired:
        return match.group(0)
    return slashes + b"ufffd" + (match.group(3) or b"")


def _lone_surrogates_replaced(lines: pa.Array) -> tuple[pa.Array, bool]:
    """``lines`` with lone surrogate escapes (``"al\ud800ice"``) written as U+FFFD.

    No text holds such a character: pyarrow refuses the line and polars read it as a NUL
    byte (``al\x00ice``), a principal no allowlist matches. Only lines holding a surrogate
    escape are looked at, in Python (hostile or broken input, rare)."""
    has = pc.match_substring_regex(lines, r"\\u[dD][89a-fA-F]").fill_null(False)
    rows = np.flatnonzero(has.to_numpy(zero_copy_only=False))
    if not len(rows):
        return lines, False
    values = lines.to_pylist()
    for i in rows:
        values[i] = _SURROGATE.sub(_lone_surrogate, values[i])
    return pa.array(values, lines.type), True


def _parse_isolating(
    lines: pa.Array, index: pa.Array, *, terminated: bool = False
) -> tuple[list[pl.DataFrame], list[int], list[tuple[int, str]]]:
    """Parse ``lines``; on failure set the bad lines aside with a reason, keep the rest.

    A block the fast path refuses is parsed fast again without the lines that cannot be
    objects (:func:`_without_misshapen`). What still fails is screened line by line
    (:func:`_screen`): lines that are not JSON objects cost one C-speed check each, and
    objects with a value polars' schema refuses (a string where ``user`` is an object)
    are parsed alone, which gives their reason. The rest is parsed as one; only when
    polars still refuses it is it bisected. (Bisecting a block with a mistyped line in a
    hundred took minutes: two polars parses of ever smaller halves per bad line.)
    """
    frames: list[pl.DataFrame] = []
    good_idx: list[int] = []
    bad: list[tuple[int, str]] = []
    if len(lines):
        fast = _read_fast(lines, terminated=terminated)
        if fast is not None:
            return [fast], index.to_pylist(), bad
        lines, replaced = _lone_surrogates_replaced(lines)
        if replaced:
            terminated = False  # the lines were rewritten: no longer slices of one block
            fast = _read_fast(lines, terminated=False)
            if fast is not None:
                return [fast], index.to_pylist(), bad
        retried = _without_misshapen(lines, index, terminated=terminated)
        if retried is not None:
            return retried
    objects, refused, misfits = _screen(lines)
    bad.extend((index[i].as_py(), reason) for i, reason in refused)
    fitting = [i for i in objects if i not in misfits]
    for part in [fitting, *([i] for i in sorted(misfits))]:
        if not part:
            continue
        take = pa.array(part, pa.int64())
        some, some_index = pc.take(lines, take), pc.take(index, take)
        fast = _read_fast(some, terminated=terminated) if len(part) > 1 else None
        if fast is not None:
            frames.append(fast)
            good_idx.extend(some_index.to_pylist())
        else:
            refused_before = len(bad)
            _bisect(some, some_index, terminated, frames, good_idx, bad)
            misfit = misfits.get(part[0]) if len(part) == 1 else None
            if misfit and len(bad) > refused_before and bad[-1][1].startswith("wrong type"):
                bad[-1] = (bad[-1][0], f"wrong type: {misfit}")
    if len(frames) > 1 and misfits:  # back in input order
        order = np.argsort(np.asarray(good_idx), kind="stable")
        frames = [pl.concat(frames, how="vertical")[order]]
        good_idx = [good_idx[i] for i in order]
    return frames, good_idx, sorted(bad)


def _bisect(
    lines: pa.Array,
    index: pa.Array,
    terminated: bool,
    frames: list[pl.DataFrame],
    good_idx: list[int],
    bad: list[tuple[int, str]],
) -> None:
    """Parse ``lines`` with polars, halving what it refuses down to the bad lines: the
    good ones go to ``frames``/``good_idx`` (in input order), the bad to ``bad``."""
    stack = [(0, len(lines))] if len(lines) else []
    while stack:
        lo, hi = stack.pop()
        chunk = lines.slice(lo, hi - lo)
        data = _ndjson_bytes(chunk, terminated=terminated)
        try:
            df = _read_objects(data, chunk, RAW_EVENT_SCHEMA)
        except (pl.exceptions.PolarsError, OSError) as exc:  # all mean bad input
            if hi - lo == 1:
                bad.append((index[lo].as_py(), _parse_reason(exc, chunk[0].as_py())))
                continue
            mid = (lo + hi) // 2
            stack.extend([(mid, hi), (lo, mid)])  # lo half first: keeps input order
            continue
        if df.height != hi - lo:  # a whitespace-only line the parser skipped
            if hi - lo == 1:
                continue
            mid = (lo + hi) // 2
            stack.extend([(mid, hi), (lo, mid)])
            continue
        frames.append(df)
        good_idx.extend(index.slice(lo, hi - lo).to_pylist())


def _count_byte(lines: pa.Array, byte: int) -> np.ndarray:
    """How many times ``byte`` occurs in each line: one numpy pass over the block's bytes
    (pyarrow's ``count_substring`` took 5x longer; polars' needs valid UTF-8)."""
    lines = lines.cast(pa.large_binary())
    _, offsets_buffer, data = lines.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    found = np.flatnonzero(raw[offsets[0] : offsets[-1]] == byte)
    return np.diff(np.searchsorted(found, offsets - offsets[0]))


def _without_misshapen(
    lines: pa.Array, index: pa.Array, *, terminated: bool
) -> tuple[list[pl.DataFrame], list[int], list[tuple[int, str]]] | None:
    """The fast path again, over a block less the lines that cannot be an object.

    The bad lines of real input are mostly cut short (a partial write, a rotated file),
    binary or another program's log lines: none is shaped like an object. Those alone are
    screened (the reasons are :func:`_screen`'s, whichever path runs) and the rest is
    parsed fast. One truncated line in a hundred sent every block down the careful path,
    which reads every line in Python and polars: 1.7x the time and 1.5x the memory. None
    when no line is misshapen or the rest still fails: the careful path decides.
    """
    # On bytes: a line that is not UTF-8 is misshapen, and so is a line with space after
    # its object (it is then screened and kept, like any other object the shape misses).
    ends = [pc.ends_with(lines, end) for end in ("}", "}\n", "}\r\n")]
    closes = pc.or_(pc.or_(ends[0], ends[1]), ends[2]).to_numpy(zero_copy_only=False)
    # cut just after a nested object's "}": the braces no longer pair up
    paired = _count_byte(lines, ord("{")) == _count_byte(lines, ord("}"))
    odd = np.flatnonzero(~(_opens_object(lines) & closes & paired))
    if odd.size == 0 or odd.size == len(lines):
        return None
    odd_at = pa.array(odd, pa.int64())
    objects, refused, _ = _screen(pc.take(lines, odd_at))
    keep = np.ones(len(lines), dtype=bool)
    keep[odd] = False
    keep[odd[objects]] = True  # an object after all (a spacing the shape misses)
    kept = pa.array(np.flatnonzero(keep), pa.int64())
    fast = _read_fast(pc.take(lines, kept), terminated=terminated)
    if fast is None:
        return None
    bad = [(index[odd_at[i].as_py()].as_py(), reason) for i, reason in refused]
    return [fast], pc.take(index, kept).to_pylist(), sorted(bad)


def _screen(lines: pa.Array) -> tuple[list[int], list[tuple[int, str]], dict[int, str | None]]:
    """Positions of the lines holding a JSON object, a reason for each other line
    (whitespace-only lines are neither: the parser skips them), and the objects to parse
    alone: those holding a value polars' schema would refuse, with the reason
    :func:`_misfit` gives, and those nested too deeply to tell (no reason: polars gives it).

    orjson first; what it refuses, :mod:`json` (integers past 64 bits, lone surrogate
    escapes), so no valid line is refused here that polars would take. A line nested too
    deeply for either is left to polars.
    """
    objects: list[int] = []
    refused: list[tuple[int, str]] = []
    misfits: dict[int, str | None] = {}
    for i, raw in enumerate(lines.to_pylist()):
        if not raw.strip():
            continue
        try:
            value = _loads(raw)
        except UnicodeDecodeError:
            refused.append((i, "invalid UTF-8"))
            continue
        except RecursionError:  # polars decides, alone: it may refuse it too
            objects.append(i)
            misfits[i] = None
            continue
        except ValueError as exc:
            refused.append((i, f"invalid JSON: {_first_line(str(exc))}"))
            continue
        if isinstance(value, dict):
            objects.append(i)
            misfit = _misfit(value)
            if misfit:
                misfits[i] = misfit
        else:
            refused.append((i, "not a JSON object"))
    return objects, refused, misfits


def _shape_of(dtype: pl.DataType) -> Any:
    """A polars dtype as :func:`_misfit` checks it: None for any value (strings: polars
    takes any value as text), ``int``, a dict of the members that are not None, or a
    1-tuple for a list. Members taking any value are left out: none to check."""
    if isinstance(dtype, pl.Struct):
        members = {f.name: _shape_of(f.dtype) for f in dtype.fields}
        return {name: shape for name, shape in members.items() if shape is not None}
    if isinstance(dtype, pl.List):
        return (_shape_of(dtype.inner),)
    if dtype == pl.Int64:
        return int
    if dtype == pl.String:
        return None
    raise TypeError(f"no JSON shape for {dtype}")


_RAW_SHAPE = _shape_of(pl.Struct(RAW_EVENT_SCHEMA))


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (for a quarantine reason)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    names = {dict: "an object", list: "an array", str: "a string", float: "a number"}
    return names.get(type(value), "a value")


def _misfit(value: Any, shape: Any = _RAW_SHAPE, path: str = "") -> str | None:
    """Where ``value`` is not what polars reads as the dtype ``shape`` stands for (as its
    NDJSON reader does: any value is text for a string, null for anything), said as a
    reason: ``user: an object expected, got a string``; None where it fits.

    The field is named and the value never quoted: polars' own message names a dtype
    (hundreds of characters for ``user``) and quotes the value, which may be a secret no
    pattern recognises. Only a hint for the parse: a line it passes that polars refuses
    is still found, by bisection; one it fails is parsed alone, and polars decides.
    (Plain Python types, not polars dtypes: this runs for every screened line.)
    """
    if value is None or shape is None:
        return None
    if shape is int:
        if type(value) is int:
            return None if -(2**63) <= value < 2**63 else f"{path}: an integer past 64 bits"
        expected = "an integer"
    elif type(shape) is dict:
        if type(value) is dict:
            for name, member in shape.items():
                found = _misfit(value.get(name), member, f"{path}.{name}" if path else name)
                if found:
                    return found
            return None
        expected = "an object"
    elif type(value) is list:
        for i, item in enumerate(value if shape[0] is not None else ()):
            found = _misfit(item, shape[0], f"{path}[{i}]")
            if found:
                return found
        return None
    else:
        expected = "an array"
    return f"{path}: {expected} expected, got {_json_type(value)}"


# --------------------------------------------------------------------------- identity
def _extra(field: str) -> pl.Expr:
    return pl.col("user").struct.field("extra").struct.field(field).list.first().alias(field)


def principal_exprs() -> list[pl.Expr]:
    """``principal`` and ``principal_kind`` from the username and EKS's ``user.extra``.

    EKS maps many IAM sessions onto one Kubernetes username (``eng-admin``), so for IAM
    identities the principal is the canonical ARN plus the session name: one person, one
    principal. Everything else is identified by its username. A ``user`` with no username
    (``{}``, what the API server logs for a failed authentication, 401) is anonymous; an
    event with no ``user`` at all never gets here (quarantined: the field is required).

    A username that merely looks like an ARN, with no IAM identity in ``user.extra`` (an
    OIDC claim, a certificate's CN, a static token: whoever controls them picks the name),
    is stored as ``unverified:<username>`` (:data:`~detector.events.identity.UNVERIFIED`),
    kind ``other``: it read as the IAM session it named, joined that person's incidents,
    timeline and baseline, matched their suppressions and linked to their CloudTrail. So
    is a username that begins with the marker itself, so no two usernames share a principal.
    """
    # A blank name is no name: as a principal "" could not be named to `detect timeline`,
    # and its findings had a blank principal (found by review).
    name = pl.col("user_name")
    user = pl.when(name.str.strip_chars() == "").then(pl.lit(None, pl.String)).otherwise(name)
    arn = pl.col("iam_arn")
    # Kubelets on EKS authenticate through the node role (extra carries its ARN and the
    # instance id as session): the node name is the better identity for them.
    is_node = user.str.starts_with("system:node:").fill_null(False)
    is_iam = arn.is_not_null() & arn.str.starts_with("arn:") & ~is_node
    # Leading spaces and capitals too: a display that strips or folds them showed
    # " ARN:aws:iam::...:user/alice" as alice.
    looks_like_arn = user.str.strip_chars_start().str.to_lowercase().str.starts_with("arn:")
    claimed = ~is_iam & (looks_like_arn | user.str.starts_with(UNVERIFIED))
    kind = (
        pl.when(is_iam & arn.str.contains(r":role/|:assumed-role/"))
        .then(pl.lit("iam_role"))
        .when(is_iam)
        .then(pl.lit("iam_user"))
        .when(claimed.fill_null(False))
        .then(pl.lit("other"))
        .when(user.is_in(["system:anonymous"]) | user.is_null())
        .then(pl.lit("anonymous"))
        .when(user.str.starts_with("system:serviceaccount:"))
        .then(pl.lit("service_account"))
        .when(user.str.starts_with("system:node:"))
        .then(pl.lit("node"))
        .when(user.str.starts_with("system:") | user.str.starts_with("eks:"))
        .then(pl.lit("system"))
        .otherwise(pl.lit("other"))
    )
    principal = (
        pl.when(is_iam & pl.col("iam_session_name").is_not_null())
        .then(pl.concat_str([arn, pl.col("iam_session_name")], separator="/"))
        .when(is_iam)
        .then(arn)
        .when(claimed.fill_null(False))
        .then(pl.lit(UNVERIFIED) + user)
        .otherwise(user.fill_null("system:anonymous"))
    )
    return [principal.alias("principal"), kind.alias("principal_kind")]


def _timestamp(col: pl.Expr) -> pl.Expr:
    return col.str.to_datetime(_TS_FORMAT, time_unit="us", time_zone="UTC", strict=False)


#: The API server's own timestamps (RFC3339Micro): ``2026-11-27T10:00:00.123456Z``.
_API_SERVER_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"
_UTC_MICROS = pa.timestamp("us", "UTC")


def _times(text: pl.Series) -> pl.Series:
    """RFC 3339 text -> UTC instants, null where it is none: what :func:`_timestamp` gives.

    Polars parses ~250 ns a value, a tenth of a batch's normalizing on one core for two
    columns; arrow's ISO-8601 cast takes ~20 ns. Arrow accepts shapes polars refuses (a
    space for the ``T``, no seconds) and refuses some polars takes (a leap second), so it
    runs only when every value has the API server's own shape (checked by one regex, ~35
    ns) and polars parses the column when any does not, or when arrow refuses one.
    """
    if text.len() and text.str.contains(_API_SERVER_TIME).all():  # nulls stay null
        try:
            return pl.Series(text.name, pc.cast(text.to_arrow(), _UTC_MICROS))
        except pa.ArrowException:  # a date that does not exist, a leap second
            pass
    return text.to_frame().select(_timestamp(pl.col(text.name))).to_series()


_Text = TypeVar("_Text", pl.Series, pl.Expr)


def _text_from(text: _Text, byte: _Text) -> _Text:
    """``text`` from byte offset ``byte`` on (a column or an expression).

    ``str.find`` counts bytes and ``str.slice`` characters: any non-ASCII text before the
    offset would shift a character cut. Callers cut next to an ASCII character they found,
    so on a character boundary, and the bytes read back as text.
    """
    return text.cast(pl.Binary).bin.slice(byte).cast(pl.String)


def _annotation(key: str) -> pl.Expr:
    """The string value of ``key`` in the annotations map (JSON text), else null; its
    escapes as written (see :func:`_unescaped`).

    A literal search for the key, then a regex anchored at its value: 2x cheaper than one
    unanchored regex over every map (the maps hold only strings, so the first occurrence
    of the key is the key).
    """
    member = '"' + key + '":'
    col = pl.col("annotations")
    start = col.str.find(member, literal=True) + len(member.encode())
    return _text_from(col, start).str.extract(r'^\s*"((?:[^"\\]|\\.)*)"', 1)


#: The annotations canonical rows keep as columns of their own.
_ANNOTATION_COLUMNS = {
    "decision": "authorization.k8s.io/decision",
    "reason": "authorization.k8s.io/reason",
}


def _per_distinct(
    df: pl.DataFrame, keys: list[str], derive: Callable[[pl.DataFrame], pl.DataFrame]
) -> pl.DataFrame:
    """``derive``'s new columns for every row of ``df``, computed once per distinct ``keys``.

    Columns that repeat across a batch (a few dozen annotation maps among 200k rows)
    make string work per row wasted: it runs on the distinct values and is joined back,
    in ``df``'s row order. Where most values differ (hostile or unusual input) the join
    would cost more than it saves (twice the work for 200k different annotation maps):
    the work then runs on every row, after a distinct pass (8% more in that case).
    """
    distinct = df.select(keys).unique()
    if 2 * distinct.height > df.height:
        return derive(df.select(keys)).drop(keys)
    return (
        df.select(keys)
        .join(derive(distinct), on=keys, how="left", nulls_equal=True, maintain_order="left")
        .drop(keys)
    )


def _annotation_columns(distinct: pl.DataFrame) -> pl.DataFrame:
    """:data:`_ANNOTATION_COLUMNS` of annotation maps, as ``_decision``, ``_reason``
    (unescaped); per distinct map, they cost 0.05 CPU-seconds per 1M events against 0.44
    read from every row."""
    members = distinct.with_columns(
        _annotation(key).alias(f"_{name}") for name, key in _ANNOTATION_COLUMNS.items()
    )
    return _unescaped(members, tuple(f"_{name}" for name in _ANNOTATION_COLUMNS))


def _unescaped(df: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """``columns``, JSON string contents with their escapes as written, decoded: stored as
    the schema shows them (``"x"``, not ``\\"x\\"``).

    Nearly every value holds ``\\"`` escapes alone (an RBAC reason quotes the names it
    cites): a literal replace. The few with any other escape are decoded as JSON; one JSON
    cannot decode (a lone surrogate escape) is kept as written rather than lost.
    """
    decoded = []
    for name in columns:
        written = df[name]
        out = written.str.replace_all('\\"', '"', literal=True)
        other = written.str.contains(r'\\[^"]').fill_null(False).arg_true()
        if len(other):
            some = written.gather(other).to_frame("s")
            json_text = pl.concat_str(pl.lit('"'), pl.col("s"), pl.lit('"'))
            fixed = some.select(pl.coalesce(json_text.str.json_path_match("$"), pl.col("s")))
            out = out.scatter(other, fixed.to_series())
        decoded.append(out.alias(name))
    return df.with_columns(decoded)


def canonicalize(raw: pl.DataFrame, *, cluster: pl.Expr) -> pl.DataFrame:
    """Raw parsed Event columns (plus ``source``, ``source_position``) -> canonical rows."""
    user = pl.col("user")
    obj = pl.col("objectRef")
    status = pl.col("responseStatus")
    event_ts = pl.coalesce(
        pl.col("stageTimestamp"),
        pl.col("timestamp"),
        pl.col("metadata").struct.field("creationTimestamp"),
        pl.col("requestReceivedTimestamp"),
    )
    stamps = raw.select(event_ts.alias("event_time"), pl.col("requestReceivedTimestamp"))
    df = raw.with_columns(
        _times(stamps["event_time"]),
        _times(stamps["requestReceivedTimestamp"]).alias("_received"),
        user.struct.field("username").alias("user_name"),
        user.struct.field("uid").alias("user_uid"),
        user.struct.field("groups").alias("user_groups"),
        pl.coalesce(_extra("canonicalArn"), _extra("arn")).alias("iam_arn"),
        _extra("sessionName").alias("iam_session_name"),
        _extra("accessKeyId").alias("access_key_id"),
    ).with_columns(principal_exprs())
    df = df.hstack(_per_distinct(df, ["annotations"], _annotation_columns))
    df = df.select(
        cluster.alias("cluster"),
        "event_time",
        pl.coalesce("_received", "event_time").alias("received_time"),
        pl.col("auditID").alias("audit_id"),
        "stage",
        "level",
        "verb",
        pl.col("requestURI").alias("request_uri"),
        "user_name",
        "user_uid",
        "user_groups",
        "principal",
        "principal_kind",
        "iam_arn",
        "iam_session_name",
        "access_key_id",
        pl.col("impersonatedUser").struct.field("username").alias("impersonated_user"),
        pl.col("impersonatedUser").struct.field("groups").alias("impersonated_groups"),
        pl.col("sourceIPs").list.first().alias("source_ip"),
        pl.col("sourceIPs").alias("source_ips"),
        pl.col("userAgent").alias("user_agent"),
        obj.struct.field("resource").alias("resource"),
        obj.struct.field("subresource").alias("subresource"),
        obj.struct.field("namespace").alias("namespace"),
        obj.struct.field("name").alias("name"),
        obj.struct.field("apiGroup").alias("api_group"),
        obj.struct.field("apiVersion").alias("api_version"),
        status.struct.field("code").cast(pl.Int32, strict=False).alias("response_code"),
        status.struct.field("status").alias("response_status"),
        status.struct.field("reason").alias("response_reason"),
        pl.col("_decision").alias("decision"),
        pl.col("_reason").alias("reason"),
        "annotations",
        pl.col("requestObject").alias("request_object"),
        pl.col("responseObject").alias("response_object"),
        pl.lit(False).alias("redacted"),
        pl.col("apiVersion").alias("audit_api_version"),
        "source",
        "source_position",
    )
    redacted = redact_events(df)
    return redacted.with_columns(bounded_ids(redacted["audit_id"])).select(list(CANONICAL_COLUMNS))


# --------------------------------------------------------------------------- entry points
#: A quarantine record: (source, position, reason, raw), and the original line's size
#: where ``raw`` is only its head (a line too long: ``raw_size`` is the line's, not the head's).
QuarantineRecord = tuple[str, str, str, bytes | str] | tuple[str, str, str, bytes | str, int]


def quarantine_frame(
    records: Sequence[QuarantineRecord], *, now: datetime | None = None
) -> pl.DataFrame:
    """Quarantine rows from :data:`QuarantineRecord` tuples; raw capped, decoded and
    redacted (the one way rows enter the quarantine, so nothing skips redaction)."""
    now = now or datetime.now(UTC)
    rows = []
    for source, position, reason, raw, *size in records:
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
        rows.append(
            (
                now,
                source,
                position,
                reason,
                size[0] if size else len(data),
                data[:QUARANTINE_RAW_CAP].decode("utf-8", "replace"),
            )
        )
    return redact_quarantine(pl.DataFrame(rows, schema=QUARANTINE_COLUMNS, orient="row"))


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _raw(lines: pa.Array, i: int) -> bytes:
    return lines[i].as_py().rstrip(b"\r\n")


#: Members that hold a name or a word (a string), as (member, field in it): polars reads a
#: list or an object there as its JSON text (``"auditID": ["x"]`` became the id
#: ``["x"]``), where a value of another wrong type (``"code": "x"``) is refused.
_STRING_MEMBERS: tuple[tuple[str, str | None], ...] = (
    ("auditID", None),
    ("stage", None),
    ("verb", None),
    ("level", None),
    ("requestURI", None),
    ("userAgent", None),
    ("user", "username"),
    ("impersonatedUser", "username"),
    ("objectRef", "resource"),
    ("objectRef", "namespace"),
    ("objectRef", "name"),
    ("objectRef", "subresource"),
    ("objectRef", "apiGroup"),
)


#: A line where one of those members' key is followed by a list or an object (any member of
#: that name: the line is then parsed to tell which).
_OPENS_LIST = (
    r'"(?:auditID|stage|verb|level|requestURI|userAgent|username|resource|namespace|name'
    r'|subresource|apiGroup)"\s*:\s*[\[{]'
)


def _opens_json(addresses: pl.Expr) -> pl.Expr:
    """Per address of a list, whether it is the JSON text of an array or an object."""
    return addresses.list.eval(
        pl.element().str.starts_with("{") | pl.element().str.starts_with("[")
    )


def _not_strings(raw: pl.DataFrame, lines: pa.Array) -> pl.Series:
    """Per row of ``raw``, why one of :data:`_STRING_MEMBERS` is not a string, or null.

    Only rows where such a member's text opens like JSON (``[``, ``{``) are looked at in
    their line, which says whether the member was a list or an object or a string that
    happened to begin so: nearly every batch has none, and the check is one query.
    """
    values = [pl.col(m) if k is None else pl.col(m).struct.field(k) for m, k in _STRING_MEMBERS]
    opens = raw.select(
        pl.any_horizontal(
            (v.str.starts_with("[") | v.str.starts_with("{")).fill_null(False) for v in values
        )
    ).to_series()
    reasons: list[str | None] = [None] * raw.height
    rows = opens.arg_true()
    if rows.len():  # a client can open every name with "[": the lines say which are lists
        lines_of = pa.array(raw["_line"].gather(rows).to_numpy(), pa.int64())
        listed = pc.match_substring_regex(pc.take(lines, lines_of), _OPENS_LIST)
        rows = rows.filter(pl.Series(listed.to_pylist(), dtype=pl.Boolean))
    for row in rows.to_list():
        try:
            event = _loads(_raw(lines, int(raw["_line"][row])))
        except (ValueError, RecursionError, UnicodeDecodeError):
            continue
        for member, key in _STRING_MEMBERS:
            value = event.get(member) if isinstance(event, dict) else None
            if key is not None:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (list, dict)):
                name = member if key is None else f"{member}.{key}"
                reasons[row] = f"wrong type: {name}: a string expected, got {_json_type(value)}"
                break
    return pl.Series("_not_string", reasons, dtype=pl.String)


def _without_leading_nuls(lines: pa.Array) -> pa.Array:
    """``lines`` with the NUL bytes before each dropped. A file truncated under a writer
    that does not append (logrotate's copytruncate under the API server's own log writer)
    gets a hole of NULs before its next line, and a crash can leave NUL padding at a
    file's end that the next write follows: the event after them was quarantined as
    invalid JSON (found by review). A NUL can only start a line there (JSON holds none
    raw), so only lines that start with one are looked at, and they are rare. A line of
    NULs alone stays as it is: quarantined, as every line is accounted for."""
    starts = pc.starts_with(lines, pattern=b"\x00").fill_null(False)
    if not pc.any(starts).as_py():
        return lines
    held = [lines[i].as_py() for i in pc.indices_nonzero(starts).to_pylist()]
    fixed = [rest if (rest := line.lstrip(b"\x00")).strip() else line for line in held]
    return pc.replace_with_mask(lines, starts, pa.array(fixed, pa.large_binary()))


def normalize_lines(
    lines: pa.Array,
    *,
    positions: pa.Array,
    source: pa.Array | str,
    cluster: pa.Array | str,
    now: datetime | None = None,
    terminated: bool = False,
    bounds: TimeBounds | None = None,
) -> Normalized:
    """Normalize a batch of raw lines (binary or string array, one audit Event JSON each).

    ``positions`` (line numbers or CloudWatch event ids) and ``source`` say where each line
    came from, so a quarantined line can be found again in its input. Events stamped
    outside ``bounds`` (default :class:`TimeBounds`) are quarantined with a reason.
    """
    bounds = bounds or TimeBounds()
    n = len(lines)
    lines = _without_leading_nuls(lines.cast(pa.large_binary()))
    positions = (
        pa.array(positions, pa.string()) if not isinstance(positions, pa.Array) else positions
    )
    positions = positions.cast(pa.string())
    sources = pa.repeat(source, n) if isinstance(source, str) else source.cast(pa.string())
    clusters = pa.repeat(cluster, n) if isinstance(cluster, str) else cluster.cast(pa.string())

    sizes = pc.binary_length(lines)
    # Blank lines are skipped like the parser does; only very short lines can be blank in
    # practice, so only those are looked at (a longer whitespace-only line is caught by the
    # row-count check in _parse_isolating and isolated there).
    short = pc.less_equal(sizes, 3).to_numpy(zero_copy_only=False)
    blank = np.zeros(n, dtype=bool)
    for i in np.flatnonzero(short):
        blank[i] = not lines[int(i)].as_py().strip()
    blank = pa.array(blank)
    # Judged without the line break: a line of exactly the limit, or one ending in CRLF,
    # was refused by its "\n" or "\r" (found by review). Lines that long are rare.
    over = pc.greater(sizes, MAX_LINE_BYTES).to_numpy(zero_copy_only=False).copy()
    for i in np.flatnonzero(over):
        over[i] = len(_raw(lines, int(i))) > MAX_LINE_BYTES
    too_long = pa.array(over)
    keep = pc.and_not(pc.invert(blank), too_long)
    index = pa.array(range(n), pa.int64())
    keep_idx = pc.filter(index, keep)

    kept = lines if len(keep_idx) == n else pc.take(lines, keep_idx)
    frames, good_idx, bad = _parse_isolating(kept, keep_idx, terminated=terminated)
    records: list[QuarantineRecord] = []
    for i in pc.filter(index, too_long).to_pylist():
        line = _raw(lines, i)  # without its line break, as every raw_size
        records.append(
            (
                sources[i].as_py(),
                positions[i].as_py(),
                f"line too long: {len(line)} bytes (limit {MAX_LINE_BYTES})",
                line[:QUARANTINE_RAW_CAP],
                len(line),
            )
        )
    for i, reason in bad:
        records.append((sources[i].as_py(), positions[i].as_py(), reason, _raw(lines, i)))

    if frames:
        take = pa.array(good_idx, pa.int64())
        raw = pl.concat(frames, how="vertical").with_columns(
            pl.Series("source", pc.take(sources, take)),
            pl.Series("source_position", pc.take(positions, take)),
            pl.Series("_cluster", pc.take(clusters, take)),
            pl.Series("_line", good_idx, dtype=pl.Int64),
        )
        code = raw["responseStatus"].struct.field("code")
        events = canonicalize(raw, cluster=pl.col("_cluster")).with_columns(
            raw["_line"].alias("_line"),
            _not_strings(raw, lines),
            raw["user"].is_null().alias("_no_user"),
            # a code the int32 column cannot hold was stored as null: the event said one
            (code.is_not_null() & code.cast(pl.Int32, strict=False).is_null()).alias("_bad_code"),
        )
        earliest, latest = bounds.earliest, bounds.latest()
        times = (pl.col("event_time"), pl.col("received_time"))
        missing = (
            pl.when(pl.col("_not_string").is_not_null())
            .then(pl.col("_not_string"))
            .when(pl.col("audit_id").is_null() | (pl.col("audit_id") == ""))
            .then(pl.lit("missing auditID"))
            .when(pl.col("event_time").is_null())
            .then(pl.lit("missing or invalid stageTimestamp/timestamp"))
            .when(pl.col("stage").is_null() | (pl.col("stage").str.strip_chars() == ""))
            .then(pl.lit("missing stage"))  # blank as well (review): no key for its copies
            .when(pl.col("_no_user"))
            .then(pl.lit("missing user"))
            # polars reads an object in these as its JSON text: `{"a": 1}` was a source
            # address, and a string an annotations map (found by review)
            .when(_opens_json(pl.col("source_ips")).list.any().fill_null(False))
            .then(pl.lit("wrong type: sourceIPs: addresses expected, got an array or an object"))
            .when(~pl.col("annotations").str.starts_with("{").fill_null(True))
            .then(pl.lit("wrong type: annotations: an object expected"))
            .when(pl.col("_bad_code"))
            .then(pl.lit("responseStatus.code out of range (not an HTTP status)"))
            .when(pl.any_horizontal(t < earliest for t in times))
            .then(pl.lit(f"timestamp out of range: before {earliest:%Y-%m-%d %H:%M:%S}Z"))
            .when(pl.any_horizontal(t > latest for t in times))
            .then(
                pl.lit(
                    f"timestamp out of range: more than {_span(bounds.max_future)} "
                    f"after the clock ({latest - bounds.max_future:%Y-%m-%d %H:%M:%S}Z)"
                )
            )
        )
        flagged = events.with_columns(missing.alias("_reason"))
        rejects = flagged.filter(pl.col("_reason").is_not_null())
        for line_no, reason in rejects.select("_line", "_reason").iter_rows():
            records.append(
                (
                    sources[line_no].as_py(),
                    positions[line_no].as_py(),
                    reason,
                    _raw(lines, line_no),
                )
            )
        events = flagged.filter(pl.col("_reason").is_null()).drop(
            "_line", "_reason", "_no_user", "_bad_code", "_not_string"
        )
    else:
        events = pl.DataFrame(schema=CANONICAL_COLUMNS)
    return Normalized(events=events, quarantine=quarantine_frame(records, now=now))


def events_from_dicts(
    events: list[dict[str, Any]], *, cluster: str = "test", source: str = "test"
) -> pl.DataFrame:
    """Canonical rows from raw Event dicts: for tests and for hand-built examples.

    Raises ``ValueError`` if any event would be quarantined, since a caller building events
    by hand wants to know, not to lose them.
    """
    lines = pa.array([orjson.dumps(e) for e in events], pa.binary())
    result = normalize_lines(
        lines,
        positions=pa.array([str(i + 1) for i in range(len(events))]),
        source=source,
        cluster=cluster,
    )
    if result.quarantine.height:
        reasons = result.quarantine["reason"].to_list()
        raise ValueError(f"{len(reasons)} event(s) could not be normalized: {reasons[:3]}")
    return result.events
