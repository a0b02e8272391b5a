"""One partitioned-table helper: the only code that names, lists, writes and scans lake files.

Every table of the lake (``events``, ``quarantine``, ``findings``, ``findings_events``) and
every JSON document under ``_state/`` (checkpoints, leases, S3 object manifests) goes through
here, so each guarantee below is kept in one place:

1. **Names stay inside the lake.** A partition value or file name becomes a path only after
   :func:`safe_part` accepted it: ASCII letters, digits, ``.``, ``_``, ``-``; starting with a
   letter or digit; at most :data:`MAX_PART` characters. ``..``, ``/``, glob characters
   (``*?[]{}``) and over-long names are refused with :class:`UnsafeName` (exit 2) before
   anything is written. Names are validated, not encoded, so a path in the lake reads the
   same as the name the user gave (docs/schema.md).
2. **No glob, ever.** Directories are *listed* and the entries filtered by exact rules; the
   lake root and user-given names are never used as patterns, so ``prod[1]`` or a root
   folder called ``lake*`` mean exactly themselves.
3. **Atomic writes, out of readers' sight.** A file appears whole or not at all: on S3 one
   PUT; locally the bytes go to ``LAKE/_tmp/`` (outside every table, so
   ``pl.scan_parquet("LAKE/events/")`` never meets a half-written file), are fsynced, then
   renamed into place. Leftovers of a killed writer stay in ``_tmp/`` and are removed by
   ``detect compact``.
4. **Explicit file lists, scanned with the table's schema.** Readers scan the list of files
   that listing returned, with the declared schema (missing columns become nulls). A file
   whose footer cannot be read or whose column types differ from the schema is skipped with
   a warning (and listed by ``detect lake check``): one bad file never stops a run.
5. **Replace a set of files without a gap or a double.** :meth:`Table.replace` writes the
   new file, then a marker ``_replaced-<id>.json`` naming the files it supersedes. A listing
   that sees the marker *and* its output leaves the inputs out; one that does not sees the
   inputs only. Markers chain (a compacted file compacted again) and are applied as a
   whole (:func:`hidden_inputs`). The inputs are deleted later, oldest marker first
   (:meth:`Table.purge_replaced`, after a grace period long enough for scans that listed
   them to finish), then the marker.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date
from itertools import accumulate, pairwise

import orjson
import polars as pl

from detector.errors import RuntimeFailure, UsageError, is_polars_panic
from detector.storage import Location, polars_storage_options

log = logging.getLogger(__name__)

TMP_DIR = "_tmp"
MAX_PART = 100
#: A partition value or file name part; a table's data file; a compaction's marker file.
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")
DATA_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.parquet\Z")
MARKER_FILE = re.compile(r"^_replaced-[0-9a-f]{16,32}\.json\Z")


class UnsafeName(UsageError):
    """A name given for a path part (a cluster, a partition value) that could leave the lake."""


class LakeFileError(RuntimeFailure):
    """A lake file cannot be used (unreadable footer, wrong column types)."""


def safe_part(value: str, what: str = "name", *, limit: int = MAX_PART) -> str:
    """``value`` if it may be one path component in the lake, else :class:`UnsafeName`.

    ``limit`` stays under every filesystem's 255-byte name limit once ``key=`` is added.
    """
    if not isinstance(value, str) or not value:
        raise UnsafeName(f"{what} must not be empty")
    if len(value) > limit:
        raise UnsafeName(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    if not PART_NAME.match(value):
        raise UnsafeName(
            f"{what} {value[:60]!r} is not allowed: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def new_name(prefix: str = "part", suffix: str = ".parquet") -> str:
    """A fresh name: time first so a listing is in write order, uuid so writers never collide."""
    return (
        f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}{suffix}"
    )


def parquet_bytes(df: pl.DataFrame, *, row_group_size: int = 128_000) -> bytes:
    """``df`` as a lake file: zstd pages, column statistics, and a CRC per page.

    Written by pyarrow rather than polars, for the page checksums polars cannot write:
    random bytes in a page decoded without a word, or crashed polars (a panic, not an
    error) when a query reached the file (found by review). `detect lake check` verifies
    them. Written this way a file costs the same CPU and ~4% more bytes.

    Pages end at 1 MB, not at pyarrow's 20,000 rows: polars reads the column a range is
    filtered on page by page, and a frame whose columns are cut in different places is
    copied whole by every eager operation on it (see :func:`aligned_chunks`).
    """
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(
        _own_lists(df).to_arrow(),
        buf,
        compression="zstd",
        write_statistics=True,
        row_group_size=row_group_size,
        max_rows_per_page=row_group_size,
        write_page_checksum=True,
    )
    return buf.getvalue()


def aligned_chunks(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every column cut into the same chunks as most of them, in place.

    Reading a range, polars decodes the column the range is filtered on page by page and
    the others row group by row group. Given columns cut in different places, polars
    copies the whole frame into single chunks at every eager operation on it: +300 MB and
    a copy of 1M events for a ``frame.select("cluster")`` (measured). The odd columns are
    cut again here, as zero-copy slices of one copy of that column alone.
    """
    layouts = {name: tuple(len(c) for c in frame[name].get_chunks()) for name in frame.columns}
    # single chunks are left alone: a constant column (``cluster``) reads as one, and
    # polars does not count constants when it compares the columns' chunks
    cut = Counter(layout for layout in layouts.values() if len(layout) > 1)
    if len(cut) <= 1:
        return frame
    common = cut.most_common(1)[0][0]
    bounds = list(pairwise([0, *accumulate(common)]))
    for i, name in enumerate(frame.columns):
        if len(layouts[name]) == 1 or layouts[name] == common:
            continue
        whole = frame[name].rechunk()
        column = whole.slice(0, common[0])
        for a, b in bounds[1:]:
            column.append(whole.slice(a, b - a))
        frame.replace_column(i, column)
    return frame


def _damage(loc: Location, path: str) -> str | None:
    """What is wrong inside a file whose footer and schema are right: a page whose CRC does
    not match (files written with checksums), or data polars cannot decode; None if none.
    A polars panic is caught too: it is a BaseException, which a damaged page can raise."""
    import pyarrow.parquet as pq

    try:
        with loc.fs.open(path, "rb") as fh:
            data = fh.read()
        pq.read_table(io.BytesIO(data), page_checksum_verification=True)
        pl.read_parquet(io.BytesIO(data))
    except Exception as exc:
        return f"unreadable data ({type(exc).__name__}: {str(exc)[:120]})"
    except BaseException as exc:
        if not is_polars_panic(exc):
            raise
        return f"unreadable data (polars panicked: {str(exc).splitlines()[0][:120]})"
    return None


def _own_lists(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with its list columns copied into buffers of their own.

    A slice of a frame (a batch cut into its hours) shares its list columns' values with
    the whole batch, and polars' Parquet writer walks all of them for each slice: writing a
    1M-event batch as 52 hour files took 2.4 CPU-seconds instead of 1.2. The copy costs 0.04.
    """
    lists = [name for name, dtype in df.schema.items() if isinstance(dtype, pl.List)]
    if not lists:
        return df
    return df.with_columns(pl.col(lists).gather(pl.int_range(pl.len())))


def hidden_inputs(markers: list[dict], present: set[str]) -> set[str]:
    """The files ``markers`` hide, given the data files ``present`` in a partition.

    A marker takes effect once its output is there, or once its output is itself the
    input of a marker in effect: compacting a compacted file chains two markers (a, b -> X;
    X, c -> Y), and whether X is still listed, or which marker is read first, must not
    bring a and b back beside Y (applied one marker at a time in name order, they came
    back whenever the second marker's name sorted first).
    """
    hidden: set[str] = set()
    waiting = list(markers)
    while True:
        ready = [m for m in waiting if m["output"] in present or m["output"] in hidden]
        if not ready:
            return hidden
        for m in ready:
            hidden.update(m["inputs"])
            waiting.remove(m)


# --------------------------------------------------------------------------- file operations
def put_atomic(loc: Location, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` so readers see the whole file or nothing (guarantee 3);
    the temporary file lives in the lake's ``_tmp`` folder, out of every table's way."""
    loc.put_atomic(path, data, temp_dir=loc.path(TMP_DIR))


def list_dir(loc: Location, path: str) -> list[tuple[str, int]]:
    """(name, size) of the entries directly in ``path``; [] when it does not exist (guarantee 2)."""
    if not loc.is_s3:
        try:
            with os.scandir(path) as it:
                return sorted((e.name, e.stat().st_size if e.is_file() else -1) for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return []
    try:
        entries = loc.fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        out.append((name, int(e.get("size") or 0) if e.get("type") == "file" else -1))
    return sorted(out)


def list_files(loc: Location, path: str, suffix: str) -> list[str]:
    """Full paths of plain files in ``path`` whose name is safe and ends with ``suffix``."""
    return [
        f"{path}/{name}"
        for name, size in list_dir(loc, path)
        if size >= 0 and name.endswith(suffix) and PART_NAME.match(name)
    ]


def read_bytes(loc: Location, path: str) -> bytes:
    with loc.fs.open(path, "rb") as fh:
        return fh.read()


def remove(loc: Location, paths: Iterable[str]) -> None:
    """Delete ``paths``, one request each, so that a refused delete is an error.

    s3fs's bulk delete reports the keys S3 refused nowhere: a role without
    ``s3:DeleteObject`` saw every delete succeed and the files stay (a compaction's inputs
    then counted twice, for good, by every reader that does not apply its markers). A file
    already gone is not an error.
    """
    for path in paths:
        try:
            loc.fs.rm_file(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot delete {loc.uri_of(path)}: {type(exc).__name__}: {exc}; the role "
                "needs s3:DeleteObject there (pipelines/iam/detector-policy.json)"
            ) from None


# --------------------------------------------------------------------------- file checks
#: Files whose schema check is remembered, at most. A ``detect watch`` process meets a few
#: thousand new files a day (every batch writes some, compaction replaces them): kept
#: without a bound, with a copy of the schema's text each (~1.4 KB a file), they grew its
#: memory by megabytes a day for as long as it ran. A file pushed out is checked again
#: (one footer read) if it is scanned again.
CHECKED_FILES = 20_000
_checked: OrderedDict[tuple[str, int, str], str | None] = OrderedDict()
_checked_lock = threading.Lock()


#: Files already warned about in this process, whichever table object met them: a scoring
#: run reads a range through several (the events, the rules' history, the flagged-event
#: lookup), and each warned about the same damaged file again.
_WARNED: set[str] = set()
#: Past this many damaged files, each is warned about every time (memory stays bounded).
MAX_WARNED = 10_000


_SKIPPED: ContextVar[set[str] | None] = ContextVar("skipped_files", default=None)


@contextmanager
def skipped_files() -> Iterator[set[str]]:
    """The lake files that reads in this block skip as unusable (their URIs), for a
    caller that says so where its output is read (the report's page), not only in a
    warning on stderr that a scheduled job's reader never sees."""
    seen: set[str] = set()
    token = _SKIPPED.set(seen)
    try:
        yield seen
    finally:
        _SKIPPED.reset(token)


def schema_problem(
    loc: Location, path: str, size: int, schema: pl.Schema, required: Sequence[str] = ()
) -> str | None:
    """Why ``path`` cannot be scanned with ``schema`` (None: it can): unreadable, a column
    of another type, or one of the ``required`` columns missing (read as nulls, a file
    without its event times or ids gave wrong counts silently; found by review). Other
    columns may be missing: files written before a column was added read it as null.
    Remembered per (path, size, schema) for the :data:`CHECKED_FILES` files used last."""
    key = (path, size, sys.intern(str(schema) + ",".join(required)))
    with _checked_lock:
        if key in _checked:
            _checked.move_to_end(key)
            return _checked[key]
    try:
        with loc.fs.open(path, "rb") as fh:
            found = pl.read_parquet_schema(fh)
    except Exception as exc:  # any reader error means the same thing: unusable file
        problem: str | None = f"unreadable Parquet ({type(exc).__name__}: {str(exc)[:120]})"
    else:
        wrong = [
            f"{c} is {found[c]} (expected {t})"
            for c, t in schema.items()
            if c in found and found[c] != t
        ]
        missing = [c for c in required if c not in found]
        problem = (
            "wrong column type: " + "; ".join(wrong)
            if wrong
            else "missing column(s): " + ", ".join(missing)
            if missing
            else None
        )
    with _checked_lock:
        _checked[key] = problem
        while len(_checked) > CHECKED_FILES:
            _checked.popitem(last=False)
    return problem


def _valid(key: str, value: str) -> bool:
    """A ``date`` is a calendar date and an ``hour`` 00 to 23: readers skip others
    (``date=garbage``, ``hour=25``), so `detect lake check` lists them, which it did not
    (found by review)."""
    if key == "date":
        try:
            return date.fromisoformat(value).isoformat() == value
        except ValueError:
            return False
    if key == "hour":
        return len(value) == 2 and value.isdigit() and int(value) < 24
    return True


@dataclass
class FileEntry:
    path: str
    size: int


@dataclass
class Table:
    """A hive-partitioned Parquet table ``LAKE/<name>/<k1>=<v1>/.../*.parquet``."""

    loc: Location
    name: str
    keys: tuple[str, ...]
    schema: pl.Schema
    #: columns every file of the table has had since it was made: a file without one is
    #: damaged, not older (see :func:`schema_problem`)
    required: tuple[str, ...] = ()

    # ------------------------------------------------------------------ paths
    @property
    def root(self) -> str:
        return self.loc.path(self.name)

    def dir(self, values: Sequence[str]) -> str:
        """Directory of the partition given by the first ``len(values)`` keys (validated)."""
        if len(values) > len(self.keys):
            raise ValueError(f"{self.name} has {len(self.keys)} partition keys")
        parts = [f"{k}={safe_part(str(v), k)}" for k, v in zip(self.keys, values, strict=False)]
        return self.loc.path(self.name, *parts)

    def values(self, prefix: Sequence[str] = ()) -> list[str]:
        """Values of the next partition key under ``prefix``, found by listing."""
        key = self.keys[len(prefix)]
        out = []
        for name, size in list_dir(self.loc, self.dir(prefix)):
            if size < 0 and name.startswith(key + "="):
                value = name[len(key) + 1 :]
                if PART_NAME.match(value) and len(value) <= MAX_PART and _valid(key, value):
                    out.append(value)
        return out

    def partitions(self) -> list[tuple[str, ...]]:
        """Every partition, by listing each level."""
        found: list[tuple[str, ...]] = [()]
        for _ in self.keys:
            found = [(*p, v) for p in found for v in self.values(p)]
        return found

    # ------------------------------------------------------------------ listing
    def entries(self, values: Sequence[str]) -> list[FileEntry]:
        """Live data files of one partition: listed, markers applied (guarantee 5)."""
        directory = self.dir(values)
        listing = list_dir(self.loc, directory)
        data = {n: s for n, s in listing if s >= 0 and DATA_FILE.match(n)}
        markers = [
            m
            for m in (
                self._read_marker(f"{directory}/{n}")
                for n, size in listing
                if size >= 0 and MARKER_FILE.match(n)  # a folder of that name is no marker
            )
            if m is not None
        ]
        for dropped in hidden_inputs(markers, set(data)):
            data.pop(dropped, None)
        return [FileEntry(f"{directory}/{n}", s) for n, s in sorted(data.items())]

    def files(self, values: Sequence[str]) -> list[str]:
        return [e.path for e in self.entries(values)]

    def _read_marker(self, path: str) -> dict | None:
        """A marker as :meth:`replace` writes it, or None: a marker of any other shape
        (damaged, written by hand) hides nothing, so a listing never fails on it."""
        try:
            doc = orjson.loads(read_bytes(self.loc, path))
        except (FileNotFoundError, IsADirectoryError, orjson.JSONDecodeError):  # gone, a folder
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("output"), str):
            return None
        inputs, created = doc.get("inputs"), doc.get("created_at", 0)
        if not isinstance(inputs, list) or not all(isinstance(n, str) for n in inputs):
            return None
        if isinstance(created, bool) or not isinstance(created, int | float):
            return None
        if doc["output"] in inputs:  # it would hide its own output: no file stands for it
            return None
        return doc

    # ------------------------------------------------------------------ writing
    def write(self, values: Sequence[str], df: pl.DataFrame, name: str | None = None) -> str:
        """Write ``df`` as one new file of a partition (atomic); returns its path."""
        file = name or new_name()
        if not DATA_FILE.match(file):
            raise UnsafeName(f"file name {file!r} is not allowed")
        path = f"{self.dir(values)}/{file}"
        put_atomic(self.loc, path, parquet_bytes(df))
        return path

    def replace(self, values: Sequence[str], inputs: Sequence[str], df: pl.DataFrame) -> str:
        """Make ``df`` stand for the files ``inputs`` of a partition, atomically for readers.

        The marker is written before its output exists and takes effect only once the output
        is there, so every listing sees either the inputs or the output, never both or none.
        """
        directory = self.dir(values)
        output = new_name()
        marker_id = uuid.uuid4().hex
        marker = orjson.dumps(
            {
                "output": output,
                "inputs": [p.rsplit("/", 1)[-1] for p in inputs],
                "created_at": time.time(),
            }
        )
        # Marker first: without its output it changes nothing. Then the output, whose
        # appearance switches readers from the inputs to it in one step. Its bytes are
        # made first, so the marker waits for its output only as long as one write.
        data = parquet_bytes(df)
        put_atomic(self.loc, f"{directory}/_replaced-{marker_id}.json", marker)
        put_atomic(self.loc, f"{directory}/{output}", data)
        return f"{directory}/{output}"

    def purge_replaced(self, values: Sequence[str], older_than: float) -> int:
        """Delete inputs of markers older than ``older_than`` seconds, then the markers.

        Oldest marker first, and never one whose input is the output of a marker still
        there: compacting a compacted file chains two markers (a, b -> X; X, c -> Y), and
        purging the second first deleted X while the first still needed it to hide a and
        b. A kill between the two left a, b and Y all live: their rows twice, for good.
        """
        directory = self.dir(values)
        listing = dict(list_dir(self.loc, directory))
        markers = []
        for name in listing:
            is_marker = listing[name] >= 0 and MARKER_FILE.match(name)
            marker = self._read_marker(f"{directory}/{name}") if is_marker else None
            if marker is not None:
                markers.append((float(marker.get("created_at") or 0), name, marker))
        markers.sort(key=lambda m: (m[0], m[1]))
        pending = {m[2]["output"] for m in markers}
        removed = 0
        for created_at, name, marker in markers:
            path = f"{directory}/{name}"
            if time.time() - created_at < older_than or pending & set(marker["inputs"]):
                continue
            if marker["output"] not in listing:
                # The writer died before its output: the marker never took effect.
                remove(self.loc, [path])
                pending.discard(marker["output"])
                continue
            gone = [f"{directory}/{n}" for n in marker["inputs"] if n in listing]
            remove(self.loc, gone)  # inputs first: until they are gone the marker is needed
            remove(self.loc, [path])
            pending.discard(marker["output"])
            removed += len(gone)
        return removed

    def delete(self, paths: Iterable[str]) -> None:
        remove(self.loc, paths)

    def check_deletes(self) -> None:
        """Raise :class:`RuntimeFailure` unless files of this table can be deleted here.

        A compaction whose merged inputs could never be deleted would leave their rows twice
        for every reader outside the tool: it writes and deletes an empty probe object
        (``_delete-check``, a name no reader takes for data; one name, so a refused run
        leaves one such object, not one a run) before merging anything.
        """
        probe = f"{self.root}/_delete-check"
        self.loc.put_atomic(probe, b"")
        remove(self.loc, [probe])

    # ------------------------------------------------------------------ reading
    def usable(self, entries: Iterable[FileEntry]) -> list[str]:
        """Paths of files that scan with the table's schema; others are skipped with a warning."""
        good = []
        for e in entries:
            problem = schema_problem(self.loc, e.path, e.size, self.schema, self.required)
            if problem is None:
                good.append(e.path)
                continue
            key = self.loc.uri_of(e.path)
            if (skipped := _SKIPPED.get()) is not None:
                skipped.add(key)
            if key not in _WARNED:
                if len(_WARNED) < MAX_WARNED:
                    _WARNED.add(key)
                log.warning("skipping %s: %s (see `detect lake check`)", key, problem)
        return good

    def scan(self, files: Sequence[str]) -> pl.LazyFrame:
        """Lazy scan of an explicit list of files with the table's schema."""
        if not files:
            return pl.LazyFrame(schema=self.schema)
        return pl.scan_parquet(
            [self.loc.uri_of(f) for f in files],
            schema=self.schema,
            missing_columns="insert",
            extra_columns="ignore",
            hive_partitioning=False,
            glob=False,
            storage_options=polars_storage_options(self.loc.uri),
        )

    def read(self, path: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """One file, conformed to the schema (missing columns as nulls)."""
        with self.loc.fs.open(path, "rb") as fh:
            df = pl.read_parquet(fh, columns=list(columns) if columns else None)
        wanted = columns or list(self.schema)
        return df.select(
            [
                pl.col(c).cast(self.schema[c])
                if c in df.columns
                else pl.lit(None, self.schema[c]).alias(c)
                for c in wanted
            ]
        )

    def check(self, values: Sequence[str], *, deep: bool = True) -> list[tuple[str, str]]:
        """(path, problem) for the live files of a partition that readers would skip or fail on."""
        problems = []
        for e in self.entries(values):
            problem = schema_problem(self.loc, e.path, e.size, self.schema, self.required)
            if problem is None and deep:
                problem = _damage(self.loc, e.path)
            if problem:
                problems.append((e.path, problem))
        return problems
