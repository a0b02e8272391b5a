"""Audit input files and S3 objects: the four formats, read in bounded batches.

1. ``ndjson``: kube-apiserver ``--audit-log-path`` output, one Event JSON per line (.gz too).
2. ``cloudwatch-json``: ``aws logs filter-log-events`` output, ``events[].message``.
3. ``export-gz``: CloudWatch export-task objects, lines ``ISO-TIMESTAMP SPACE message``.
4. ``firehose``: CloudWatch subscription records delivered by Firehose, gzip of
   concatenated ``{"messageType": ...}`` objects with no newline between them.

Every reader yields :class:`LineBatch` objects (Arrow arrays of raw message bytes with
where each came from), so one normalizer serves all formats, and memory is bounded by the
batch size rather than the input size.
"""

from __future__ import annotations

import bz2
import codecs
import io
import json
import logging
import lzma
import os
import re
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem

from detector.errors import EXIT_USAGE, RuntimeFailure
from detector.events.normalize import MAX_LINE_BYTES, QuarantineRecord
from detector.sources import formats
from detector.sources.formats import AUTO, CLOUDWATCH_JSON, EXPORT_GZ, FIREHOSE, NDJSON
from detector.storage import (
    Location,
    filesystem,
    full_uri,
    is_s3,
    s3_uri_problem,
    strip_protocol,
)

log = logging.getLogger(__name__)

#: What ``--input-format`` accepts: the four formats (:mod:`detector.sources.formats`) or auto.
FORMATS = (AUTO, *formats.INPUT_FORMATS)

#: Bytes of input per batch: big enough for pyarrow to parse at full speed (four of its
#: 8 MB parse blocks), small enough that the few batches an ingest has in flight (one
#: read ahead, two normalizing) and their parsed columns stay a few hundred MB.
BATCH_BYTES = 32 * 1024 * 1024
#: Messages a batch of a streamed ``filter-log-events`` document holds: each event is a
#: decoded object until then, so a quarter of a block's text (a 295 MB document peaked at
#: 1,004 MB at a whole block, 819 to 851 MB at this).
STREAMED_BATCH_BYTES = BATCH_BYTES // 4

# The shapes each format is recognised by live next to their writers in formats.py.
_ISO_PREFIX = formats.EXPORT_PREFIX
_SUBSCRIPTION_KEY = formats.SUBSCRIPTION_START_BYTES
_SUBSCRIPTION_START = formats.SUBSCRIPTION_START
_PAGE_START = formats.PAGE_START
_EKS_GROUP = formats.EKS_LOG_GROUP_PATTERN
#: An EKS cluster name (letters, digits, '-' and '_', starting with a letter or digit).
_CLUSTER_NAME = r"([A-Za-z0-9][A-Za-z0-9._-]{0,99})"
#: Path segments naming a cluster: ``aws/eks/<name>/`` (the EKS log group, as users often
#: reuse it for an export-task prefix) or a ``cluster=<name>/`` partition folder.
_WHOLE_CLUSTER_NAME = re.compile(_CLUSTER_NAME)
_PATH_CLUSTER = re.compile(
    r"(?:^|/)aws/eks/" + _CLUSTER_NAME + r"(?=/)|(?:^|/)cluster=" + _CLUSTER_NAME + r"(?=/)"
)
BOM = b"\xef\xbb\xbf"
#: Cap on the raw bytes a reader keeps of a rejected record (the quarantine caps again).
RAW_KEEP = 65536


class InputError(RuntimeFailure):
    """An input that cannot be read at all (missing, no permission, not gzip...)."""


class InputNotFound(InputError):
    """A path that names nothing: a typo in the command, so a usage error (exit 2)."""

    exit_code = EXIT_USAGE


@dataclass
class LineBatch:
    """Raw audit messages with their origin, ready for :func:`normalize_lines`."""

    lines: pa.Array  # binary, one message each
    positions: pa.Array  # string: 1-based line number, or CloudWatch event id
    source: pa.Array | str  # path/URI, or URI#logStream
    cluster: str | None = None  # from the log group name when the format carries one
    #: lines rejected before parsing (too long to even hold), as quarantine records
    rejected: list[QuarantineRecord] = field(default_factory=list)
    nbytes: int = 0
    #: every element ends with its newline (file blocks): lets the parser skip a join
    terminated: bool = False


def merge_batches(batches: Sequence[LineBatch]) -> LineBatch:
    """One batch of the lines of ``batches`` (all of one ``cluster``), each line keeping its
    source and position: small inputs are normalized together, as one file's lines are
    (a batch's fixed cost is tens of small queries, ~50 ms, more than the work on a
    50-event Firehose object; see ``detector.pipeline.ingest.MERGE_BYTES``)."""
    if len(batches) == 1:
        return batches[0]

    def sources(b: LineBatch) -> pa.Array:
        if isinstance(b.source, str):
            return pa.repeat(b.source, len(b.lines)).cast(pa.string())
        return b.source.cast(pa.string())

    return LineBatch(
        lines=pa.concat_arrays([b.lines.cast(pa.large_binary()) for b in batches]),
        positions=pa.concat_arrays([b.positions.cast(pa.string()) for b in batches]),
        source=pa.concat_arrays([sources(b) for b in batches]),
        cluster=batches[0].cluster,
        rejected=[r for b in batches for r in b.rejected],
        nbytes=sum(b.nbytes for b in batches),
        terminated=all(b.terminated for b in batches),
    )


def cluster_from_log_group(group: object) -> str | None:
    """``/aws/eks/prod/cluster`` -> ``prod``; None for any other group, and for an EKS
    group whose name could not be a cluster's (``/aws/eks/../cluster``: see
    :func:`names_bad_cluster`)."""
    if not group or not isinstance(group, str):
        return None
    match = _EKS_GROUP.match(group)
    if match is None or not _WHOLE_CLUSTER_NAME.fullmatch(match.group(1)):
        return None
    return match.group(1)


def names_bad_cluster(group: object) -> bool:
    """True for an EKS log group whose cluster part is no cluster name (``..``, ``a b``).

    EKS names clusters with letters, digits, ``-`` and ``_``, so such a group comes from
    forged or damaged data: its events are quarantined rather than stored under a name
    that would be a path outside the lake, or under another cluster's name.
    """
    return (
        isinstance(group, str)
        and _EKS_GROUP.match(group) is not None
        and cluster_from_log_group(group) is None
    )


def cluster_from_path(uri: str) -> str | None:
    """The cluster named by a path or S3 key, else None.

    CloudWatch export tasks write ``<prefix>/<task-id>/<log-stream>/000000.gz``: the task
    id and the EKS stream name (``kube-apiserver-audit-<hash>``) never name the cluster, and
    the prefix is the user's choice, so only a recognisable part counts: an
    ``aws/eks/<name>/`` run of segments or a ``cluster=<name>/`` folder. The one nearest the
    file wins (``s3://b/cluster=a/aws/eks/b/x.gz`` -> ``b``).
    """
    path = strip_protocol(uri)
    found = None
    for match in _PATH_CLUSTER.finditer(path):
        found = match.group(1) or match.group(2)
    return found


# --------------------------------------------------------------------------- opening
def _is_regular(fs: object, path: str) -> bool:
    """False for a FIFO, socket or device in a local folder: opening one can block forever
    (a FIFO waits for a writer), and none of them is an audit log a run should read."""
    if not isinstance(fs, LocalFileSystem):
        return True
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return True  # vanished or unreadable: open_input says why


def _local_tree(folder: str) -> tuple[list[str], list[str]]:
    """The files under a local ``folder`` (links to folders not followed) and the folders
    under it that cannot be listed (no permission): fsspec's listing passed over those in
    silence, and their files were left out of the run unsaid."""
    failed: list[str] = []

    def refused(err: OSError) -> None:
        if not isinstance(err, FileNotFoundError):  # gone while walked (rotated): nothing lost
            failed.append(
                f"{err.filename}: cannot read the folder: {(err.strerror or str(err)).lower()}"
            )

    files = [
        os.path.join(where, name)
        for where, _, names in os.walk(folder, onerror=refused)
        for name in names
    ]
    return files, failed


def _links_out_of(fs: object, folder: str, files: list[str]) -> list[str]:
    """Local ``files`` under ``folder`` that are, through a symbolic link (to the file or a
    folder on its way), outside it. A folder of logs is read as what it holds: a link
    planted in it (to /etc/shadow, a credentials file) put that file's lines in the lake's
    quarantine, which no pattern redacts. A link within the folder (``current`` to today's
    log) is read."""
    if not isinstance(fs, LocalFileSystem):
        return []
    root = os.path.realpath(folder) + os.sep
    return sorted(f for f in files if not os.path.realpath(f).startswith(root))


def _without_links_out(
    fs: object, path: str, folder: str, matches: list[str], skip: Callable[[str], None]
) -> list[str]:
    """``matches`` without :func:`_links_out_of` ``folder``, said once in a warning."""
    leaving = _links_out_of(fs, folder, matches)
    if not leaving:
        return matches
    skip(
        f"{path}: skipped {len(leaving)} link(s) to files outside the folder "
        f"(such as {leaving[0].rsplit('/', 1)[-1]}); name one to read it"
    )
    gone = set(leaving)
    return [m for m in matches if m not in gone]


def _unreachable(fs: object, path: str) -> str | None:
    """Why a local path that does not seem to exist cannot be reached (a folder on its way
    that may not be searched), or None when it is simply not there."""
    if not isinstance(fs, LocalFileSystem):
        return None
    try:
        os.stat(path)
    except PermissionError as exc:
        return exc.strerror.lower() if exc.strerror else "permission denied"
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return None
    return None


def expand_inputs(
    paths: list[str],
    *,
    on_skip: Callable[[str], None] | None = None,
    on_unreadable: Callable[[str], None] | None = None,
) -> list[str]:
    """Files under each path (folders recursively, ``s3://`` prefixes, globs), sorted.

    Local entries that are not regular files (FIFOs, sockets, devices) are skipped with a
    warning, given to ``on_skip`` (else logged): reading a FIFO would hang the run. Hidden
    files in a folder (``.audit.log.swp``, a writer's ``.tmp-*``) are skipped too, with one
    warning per folder that counts them: a folder holding only ``.audit.log`` read nothing
    and said nothing. A hidden file named on its own is read.

    A folder inside that cannot be listed is given to ``on_unreadable`` (the caller reads
    the rest and reports it as an input that failed), else raises :class:`InputError`; a
    path that cannot be reached for want of permission raises :class:`InputError` (exit 3),
    not :class:`InputNotFound`.
    """

    def skip(warning: str) -> None:
        if on_skip is not None:
            on_skip(warning)
        else:
            log.warning("%s", warning)

    def unreadable(reason: str) -> None:
        if on_unreadable is None:
            raise InputError(reason)
        on_unreadable(reason)

    found: list[str] = []
    for path in paths:
        if not path.strip():  # an unset variable ("$AUDIT_LOG"): not the current folder
            raise InputNotFound("an input path is empty: name a file, folder or s3:// prefix")
        problem = s3_uri_problem(path)
        if problem:
            raise InputNotFound(problem)
        fs = filesystem(path)
        bare = strip_protocol(path)
        if any(ch in bare for ch in "*?[") and not fs.exists(bare):
            # A pattern; a name that merely holds ?, * or [ (an S3 key may) is taken as is.
            matches = fs.glob(bare)
            if not matches:
                raise InputNotFound(f"{path}: no file, folder or object matches")
            base = re.split(r"[*?\[]", bare, maxsplit=1)[0].rsplit("/", 1)[0] or "/"
            matches = _without_links_out(fs, path, base, matches, skip)
        elif fs.isdir(bare):
            if isinstance(fs, LocalFileSystem):
                every, failed = _local_tree(bare)
                for reason in failed:
                    unreadable(reason)
            else:
                every = fs.find(bare)
            matches = [p for p in every if not p.rsplit("/", 1)[-1].startswith(".")]
            if hidden := sorted(set(every) - set(matches)):
                example = hidden[0].rsplit("/", 1)[-1]
                skip(
                    f"{path}: skipped {len(hidden)} hidden file(s) (names beginning with '.', "
                    f"such as {example}); name one to read it"
                )
            matches = _without_links_out(fs, path, bare, matches, skip)
        elif fs.exists(bare):
            matches = [bare]
        elif why := _unreachable(fs, bare):
            raise InputError(f"{path}: cannot read: {why}")
        else:
            raise InputNotFound(f"{path}: no such file, folder or object")
        for m in sorted(matches):
            if fs.isdir(m):
                continue
            if not _is_regular(fs, m):
                skip(f"{full_uri(path, m)}: skipped, not a regular file (FIFO, socket or device)")
                continue
            found.append(full_uri(path, m))
    return found


def open_input(uri: str) -> BinaryIO:
    """A binary stream of the input's content, decompressed when it is gzip, bzip2 or xz
    (by magic bytes); other compressions are refused by name.

    A gzip stream is decompressed by :class:`Gunzip`, bzip2 and xz by :class:`Unpacked`:
    each ends early at a cut or damaged member instead of raising, so every line before
    the damage is still read.
    """
    try:
        fh = filesystem(uri).open(strip_protocol(uri), "rb")
    except FileNotFoundError as exc:
        # Every caller opens what expand_inputs found: gone since (a rotated log) or a
        # link to nothing is a failure to read (exit 3), not a path mistyped (exit 2).
        raise InputError(f"{uri}: cannot open: no such file (a broken link, or removed)") from exc
    except PermissionError as exc:
        raise InputError(f"{uri}: permission denied") from exc
    except OSError as exc:
        raise InputError(f"{uri}: cannot open: {exc}") from exc
    head = fh.read(6)
    fh.seek(0)
    if head[:2] == b"\x1f\x8b":
        return Gunzip(fh)  # type: ignore[return-value]
    if head[:3] == b"BZh":
        return Unpacked(fh, bz2.BZ2Decompressor, "bzip2")  # type: ignore[return-value]
    if head == b"\xfd7zXZ\x00":
        return Unpacked(fh, lzma.LZMADecompressor, "xz")  # type: ignore[return-value]
    for magic, problem in _UNREAD_CONTAINERS:
        if head.startswith(magic):
            fh.close()
            raise InputError(f"{uri}: {problem}")
    return fh  # type: ignore[return-value]


_DECOMPRESS = "which is not read: decompress it first (plain text, gzip, bzip2 and xz are)"
#: Containers and compressions read as text they would be quarantined line by line as
#: garbage, every event lost with exit 0 (found by review): refused by name instead.
_UNREAD_CONTAINERS = (
    (b"\x28\xb5\x2f\xfd", f"compressed with zstd, {_DECOMPRESS}"),
    (b"PK\x03\x04", f"compressed with zip, {_DECOMPRESS}"),
    (b"\x04\x22\x4d\x18", f"compressed with lz4, {_DECOMPRESS}"),
    (b"7z\xbc\xaf\x27\x1c", f"compressed with 7-Zip, {_DECOMPRESS}"),
    (
        b"PAR1",
        "a Parquet file, not an audit log: a lake's events are read with `detect score`, "
        "`findings` or any Parquet reader, not ingested again",
    ),
)


class _Decoded(io.RawIOBase):
    """A compressed stream decompressed as it is read, which ends at the last byte that
    could be decompressed instead of raising: :attr:`damage` says why it ended early.

    Unlike :class:`gzip.GzipFile` (or ``bz2``'s and ``lzma``'s files), a stream cut short
    (an upload killed midway, a disk that filled up) or damaged in the middle does not
    raise and lose the block being read, so the reader keeps every complete line before
    the damage and quarantines the rest. Subclasses fill :attr:`_out` in :meth:`_fill`.
    """

    CHUNK = 256 * 1024

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._pending = b""  # compressed bytes read and not yet fed
        self._out: list[bytes] = []
        self._out_len = 0
        self._done = False
        self.damage: str | None = None
        self.consumed = 0  # compressed bytes read

    def _fill(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _take_chunk(self, cut: str | None) -> bool:
        """The next block of compressed input into ``_pending``; False at the end of the
        input, which ends the stream, damaged by ``cut`` when it came inside a member."""
        chunk = self._raw.read(self.CHUNK)
        if not chunk:
            if cut:
                self.damage = f"{cut} (after {self.consumed:,} compressed bytes)"
            self._done = True
            return False
        self.consumed += len(chunk)
        self._pending = chunk
        return True

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = -1 if size is None else size
        while not self._done and (want < 0 or self._out_len < want):
            self._fill()
        data = b"".join(self._out)
        if want < 0 or len(data) <= want:
            self._out, self._out_len = [], 0
            return data
        self._out, self._out_len = [data[want:]], len(data) - want
        return data[:want]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_len += len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


class Gunzip(_Decoded):
    """gzip members back to back (see :class:`_Decoded`). A step decompresses at most
    :attr:`STEP_OUT` bytes: a gzip of zeros expands 1,000-fold, and a 256 KB read block
    of one took 256 MB at once (a 1 GB-of-zeros file peaked at 976 MB; found by review)."""

    STEP_OUT = 4 * 2**20

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__(raw)
        self._d = zlib.decompressobj(31)
        self._member_bytes = 0  # compressed bytes fed to the current member
        self._more_out = False  # the last step stopped at STEP_OUT: zlib may hold more

    def _fill(self) -> None:
        if not self._pending and not self._more_out:
            inside = bool(self._member_bytes) and not self._d.eof
            if not self._take_chunk(
                "truncated gzip: the input ends inside a compressed member" if inside else None
            ):
                if inside:
                    self._emit(self._d.flush())  # what the cut member still holds
                return
        self._step()

    def _step(self) -> None:
        data, self._pending = self._pending, b""
        if self._d.eof:  # the previous member ended: the next one, or padding
            data = data.lstrip(b"\x00")
            if not data:
                return
            if not data.startswith(b"\x1f\x8b"):
                self.damage = "damaged gzip: data after the last complete member is not gzip"
                self._done = True
                return
            self._d, self._member_bytes = zlib.decompressobj(31), 0
        saved = self._d.copy()
        try:
            out = self._d.decompress(data, self.STEP_OUT)
        except zlib.error as exc:
            self._salvage(saved, data, exc)
            return
        self._emit(out)
        tail = self._d.unconsumed_tail
        self._member_bytes += len(data) - len(tail)
        self._more_out = len(out) == self.STEP_OUT and not self._d.eof
        self._pending = self._d.unused_data if self._d.eof else tail

    def _salvage(self, decoder: zlib._Decompress, data: bytes, exc: zlib.error) -> None:
        """Replay the damaged chunk in small steps, then the failing step a byte at a
        time, to keep everything the damage comes after: a step's output is lost with its
        error, and a bad checksum is found in the member's last bytes, after all of its
        data was decoded (the last lines of the member went to neither the lake nor the
        quarantine; found by review)."""
        step = 512
        for i in range(0, len(data), step):
            saved = decoder.copy()
            try:
                self._emit(decoder.decompress(data[i : i + step]))
            except zlib.error:
                decoder = saved
                for j in range(i, min(i + step, len(data))):
                    try:
                        self._emit(decoder.decompress(data[j : j + 1]))
                    except zlib.error:
                        break
                break
            if decoder.eof:
                break
        self.damage = f"damaged gzip: {exc}"
        self._done = True


class Unpacked(_Decoded):
    """bzip2 or xz streams back to back (see :class:`_Decoded`). A cut ``.bz2`` or ``.xz``
    raised "Compressed file ended before the end-of-stream marker was reached" at the
    block that held the cut, and the input was lost whole (found by review)."""

    #: The most one step decompresses: bzip2 expands a few bytes to megabytes, so the
    #: output of a read block is taken a slice at a time (memory stays bounded).
    STEP_OUT = 4 * 2**20

    def __init__(self, raw: BinaryIO, decoder: Callable[[], Any], name: str) -> None:
        super().__init__(raw)
        self._new, self._name = decoder, name
        self._d = decoder()
        self._fed = 0  # compressed bytes fed to the current stream

    def _fill(self) -> None:
        if not self._pending and (self._d.eof or self._d.needs_input):
            inside = bool(self._fed) and not self._d.eof
            cut = f"truncated {self._name}: the input ends inside a compressed stream"
            if not self._take_chunk(cut if inside else None):
                return
        if self._d.eof:  # the previous stream ended: the next one, or padding
            self._pending = self._pending.lstrip(b"\x00")
            if not self._pending:
                return
            self._d, self._fed = self._new(), 0
        data, self._pending = self._pending, b""
        try:
            self._emit(self._d.decompress(data, self.STEP_OUT))
        except (OSError, EOFError, lzma.LZMAError) as exc:
            self.damage = f"damaged {self._name}: {exc}"
            self._done = True
            return
        self._fed += len(data)
        if self._d.eof:
            self._pending = self._d.unused_data


def sniff_format(head: bytes) -> str:
    """Guess the format from the first bytes of the (decompressed) content."""
    text = head.lstrip()
    if not text:
        return NDJSON
    if _ISO_PREFIX.match(text):
        return EXPORT_GZ
    if text.startswith(b"{"):
        first = text[:4096]
        if _SUBSCRIPTION_KEY.match(first):
            return FIREHOSE
        if formats.PAGE_START_BYTES.match(first) or (
            b"\n" in text and text.split(b"\n", 1)[0].strip() == b"{"
        ):
            return CLOUDWATCH_JSON
    return NDJSON


# --------------------------------------------------------------------------- line splitting
def _split_lines(block: bytes | memoryview, offsets: np.ndarray | None = None) -> pa.Array:
    """The lines of ``block`` as a zero-copy binary array, each element keeping its newline.

    Keeping the newline makes the array's data buffer the block itself: the normalizer can
    hand any run of lines to the JSON parser as one slice, with no copy and no join. Line
    boundaries come from numpy, not a Python loop, a slice at a time so the scratch memory
    stays small whatever the block size. ``block`` must not change afterwards (blocks
    from :func:`iter_line_blocks` never do).
    """
    if not len(block):
        return pa.array([], pa.large_binary())
    if block[-1] != 10:  # b"\n"
        block, offsets = bytes(block) + b"\n", None
    if offsets is None:
        offsets = _line_offsets(np.frombuffer(block, dtype=np.uint8))
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        len(offsets) - 1,
        [None, pa.py_buffer(offsets), pa.py_buffer(block)],
    )


def _line_offsets(view: np.ndarray) -> np.ndarray:
    """0 and the offset just past each newline of ``view`` (int64), the Arrow offsets of its
    lines. A 4 MB slice at a time: one 32 MB comparison allocated (and page-faulted) a
    fresh 32 MB mask per block, which cost more than the search itself."""
    step = 4 * 1024 * 1024
    ends = [np.flatnonzero(view[i : i + step] == 10) + (i + 1) for i in range(0, len(view), step)]
    return np.concatenate([np.zeros(1, np.int64), *ends]).astype(np.int64, copy=False)


def _read_into(stream: BinaryIO, buf: np.ndarray, start: int) -> int:
    """Fill ``buf[start:]`` from ``stream`` as far as it goes; returns the bytes read.

    Every stream here has ``readinto`` (files, S3 objects, :class:`Gunzip`,
    :class:`_Prefixed`), so bytes land in the block with no intermediate copy; a short read
    is followed by more reads, so only the end of the input stops it early.
    """
    pos = start
    with memoryview(buf) as view:
        while pos < len(buf):
            got = stream.readinto(view[pos:])  # type: ignore[attr-defined]
            if not got:
                break
            pos += got
    return pos - start


def _last_newline(buf: np.ndarray, size: int) -> int:
    """Index of the last ``\\n`` in ``buf[:size]``, or -1; looks at the end first."""
    hi, step = size, 64 * 1024
    while hi > 0:
        lo = max(0, hi - step)
        found = np.flatnonzero(buf[lo:hi] == 10)
        if found.size:
            return lo + int(found[-1])
        hi, step = lo, step * 4
    return -1


#: Lines normalized together at most: a read block of tiny lines is cut into slices.
MAX_BATCH_LINES = 100_000


def iter_line_blocks(
    stream: BinaryIO, *, batch_bytes: int = BATCH_BYTES
) -> Iterator[tuple[memoryview, int, list[tuple[int, int, bytes, bool]], np.ndarray | None]]:
    """Blocks of whole lines: (block, number of its first line, oversize lines, offsets).

    ``offsets`` are the block's line offsets (see :func:`_line_offsets`), found while
    counting its lines, or None for a block that may lack its final newline.

    Each block is one buffer read into directly, with the unfinished last line of the
    previous block moved to its front: a block costs its own size in memory, not the
    copies that joining and slicing ``bytes`` would make. The buffer is numpy's
    (uninitialised: zero-filling 32 MB under the GIL stalled the other stages) and every
    scan of it is numpy too, so reading holds the GIL for almost nothing. A block is
    never written again after it is yielded.

    A line longer than :data:`MAX_LINE_BYTES` is never held whole: it is skipped while
    reading and reported as (line number, size, first bytes, whether a line break ended
    it), so a 10 GB line costs no more memory than a short one.
    """
    line_no = 1
    carry = b""
    while True:
        buf = np.empty(len(carry) + batch_bytes, dtype=np.uint8)
        buf[: len(carry)] = np.frombuffer(carry, dtype=np.uint8)
        got = _read_into(stream, buf, len(carry))
        size = len(carry) + got
        if not got:
            if carry:
                yield memoryview(carry), line_no, [], None
            return
        cut = _last_newline(buf, size)
        if cut < 0:
            if size <= MAX_LINE_BYTES + 1:  # the limit and a CR before the newline to come
                carry = buf[:size].tobytes()
                continue
            # Oversize line: swallow it up to its newline.
            head = buf[:65536].tobytes()
            del buf
            ended = True
            while True:
                more = stream.read(batch_bytes)
                if not more:
                    rest, ended = b"", False
                    break
                nl = more.find(b"\n")
                if nl >= 0:
                    size += nl
                    rest = more[nl + 1 :]
                    break
                size += len(more)
            yield memoryview(b""), line_no, [(line_no, size, head, ended)], None
            line_no += 1
            carry = rest
            continue
        carry = buf[cut + 1 : size].tobytes()
        offsets = _line_offsets(buf[: cut + 1])
        yield memoryview(buf)[: cut + 1], line_no, [], offsets
        line_no += len(offsets) - 1


# --------------------------------------------------------------------------- readers
def _ndjson_batches(
    uri: str,
    stream: BinaryIO,
    *,
    strip_timestamp: bool,
    damage: Callable[[], str | None] = lambda: None,
    growing: Callable[[], float | None] = lambda: None,
) -> Iterator[LineBatch]:
    """Batches of a file's lines, numbered from 1.

    ``growing``: seconds since the file last changed, if that is recent enough that a
    writer may still be appending it (:data:`GROWING_SECONDS`). Its last line, without a
    line break and not yet JSON, is then left for the next run with a warning instead of
    quarantined: a cron job ingesting a live audit log put a half-written event in
    quarantine, and ingested it whole the next time (found by review).
    """
    next_line, reported = 1, False
    for block, first_line, oversize, offsets in iter_line_blocks(stream):
        age = growing() if any(not ended for *_, ended in oversize) else None
        if age is not None:  # an over-long last line still being written: its size is not
            oversize = [line for line in oversize if line[3]]  # known yet (review)
            _say_left(uri, first_line, age)
        rejected = [
            (uri, str(n), f"line too long: {size} bytes (limit {MAX_LINE_BYTES})", head, size)
            for n, size, head, _ in oversize
        ]
        unterminated = len(block) and block[-1] != 10
        age = growing() if unterminated and offsets is None else None
        tail = bytes(block) if age is not None else b""
        # an export line is its time, a space, then the event; one without the time is
        # read as it stands (:func:`_strip_export_timestamp`)
        event = tail.partition(formats.EXPORT_SEPARATOR)[2] if strip_timestamp else tail
        if age is not None and not _is_json(tail) and not _is_json(event):
            _say_left(uri, first_line, age)
            block = memoryview(b"")
            if not rejected:
                continue
        why = damage() if len(block) and block[-1] != 10 else None
        if why:  # only the last block can lack its newline: the line the damage cut
            data = bytes(block)
            cut = data.rfind(b"\n") + 1
            tail_no = first_line + data.count(b"\n", 0, cut)
            rejected.append((uri, str(tail_no), f"{why}; line cut off", data[cut:][:RAW_KEEP]))
            block, offsets = memoryview(data)[:cut], None
            next_line, reported = tail_no + 1, True
        if not len(block):
            yield LineBatch(
                pa.array([], pa.large_binary()), pa.array([], pa.string()), uri, rejected=rejected
            )
            continue
        lines = _split_lines(block, offsets)
        if strip_timestamp:
            lines = _strip_export_timestamp(lines)
        numbers = np.arange(first_line, first_line + len(lines), dtype=np.int64)
        next_line = max(next_line, first_line + len(lines))
        if len(lines) <= MAX_BATCH_LINES:  # events of a few hundred bytes or more: always
            yield LineBatch(
                lines=lines,
                positions=pa.array(numbers).cast(pa.string()),
                source=uri,
                rejected=rejected,
                nbytes=len(block),
                terminated=True,
            )
            continue
        # A block of tiny lines (3-byte garbage: 10M lines in 32 MB) normalized at once took
        # gigabytes, every row a quarantine record (found by review): a slice at a time.
        for lo in range(0, len(lines), MAX_BATCH_LINES):
            part = lines.slice(lo, MAX_BATCH_LINES)
            yield LineBatch(
                lines=part,
                positions=pa.array(numbers[lo : lo + MAX_BATCH_LINES]).cast(pa.string()),
                source=uri,
                rejected=rejected if lo == 0 else [],
                nbytes=int(pc.sum(pc.binary_length(part)).as_py() or 0) + len(part),
                terminated=True,
            )
    why = damage()
    if why and not reported:  # the damage fell on a line boundary: say it happened anyway
        yield _rejected_only(uri, (uri, str(next_line), why, b""))


def _say_left(uri: str, line: int, age: float) -> None:
    log.warning(
        "%s: line %d has no line break yet and the file changed %.0f s ago: "
        "left for the next run (a writer is still appending it)",
        uri,
        line,
        age,
    )


#: A local file changed less than this long ago may still be appended to: its last line,
#: unfinished, is left for the next run (:func:`_ndjson_batches`).
GROWING_SECONDS = 60.0


def _changed_seconds_ago(uri: str) -> float | None:
    """Seconds since the local file ``uri`` last changed (negative: a time to come);
    None for an object store."""
    if not isinstance(filesystem(uri), LocalFileSystem):
        return None
    try:
        return time.time() - os.stat(strip_protocol(uri)).st_mtime
    except OSError:
        return None


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _strip_export_timestamp(lines: pa.Array) -> pa.Array:
    """``2026-11-27T10:00:00.000Z {...}`` -> ``{...}``; lines without the prefix unchanged."""
    parts = pc.split_pattern(lines, pattern=formats.EXPORT_SEPARATOR, max_splits=1)
    has_two = pc.equal(pc.list_value_length(parts), 2)
    first = pc.list_element(parts, 0)
    looks_like_ts = pc.and_(
        has_two,
        pc.match_substring_regex(first.cast(pa.large_string(), safe=False), r"^\d{4}-\d\d-\d\dT"),
    )
    second = pc.list_element(pc.if_else(has_two, parts, pa.nulls(len(parts), parts.type)), 1)
    return pc.if_else(looks_like_ts, second, lines)


def messages_batch(
    source: str | list[str],
    messages: list[str],
    ids: list[str],
    *,
    cluster: str | None = None,
) -> LineBatch:
    """A batch of CloudWatch ``message`` strings (one audit event each, in principle).

    Raw line breaks become spaces: inside a JSON string they must be escaped, so a raw one
    can only be whitespace between tokens (a pretty-printed event, still valid) or damage;
    either way the message stays one line for the NDJSON parser and keeps its position.
    """
    encoded = pa.array(messages, pa.large_string())
    if any("\n" in m or "\r" in m for m in messages):
        encoded = pc.replace_substring_regex(encoded, pattern="[\r\n]", replacement=" ")
    return LineBatch(
        lines=encoded.cast(pa.large_binary()),
        positions=pa.array(ids, pa.string()),
        source=source if isinstance(source, str) else pa.array(source, pa.string()),
        cluster=cluster,
        nbytes=sum(len(m) for m in messages),
    )


def _messages_batch(
    uri: str, messages: list[str], ids: list[str], streams: list[str], cluster: str | None
) -> LineBatch:
    sources = [f"{uri}#{s}" if s else uri for s in streams]
    return messages_batch(sources, messages, ids, cluster=cluster)


def _json_text(value: Any) -> bytes:
    """A record's JSON text for the quarantine, whatever its depth (orjson stops at 255).

    JSON, never Python's ``repr``: the quarantine's redaction reads JSON and YAML shapes,
    and ``{'password': 'x'}`` is neither (found by review). Deeper than the standard
    library writes, the record is named by its shape alone.
    """
    try:
        return orjson.dumps(value)[:RAW_KEEP]
    except (orjson.JSONEncodeError, TypeError):
        pass
    try:
        return json.dumps(value, default=str, ensure_ascii=False)[:RAW_KEEP].encode(
            "utf-8", "replace"
        )
    except (RecursionError, ValueError):
        return f"<a {type(value).__name__} nested too deeply to keep>".encode()


def _cloudwatch_json_batches(uri: str, stream: BinaryIO) -> Iterator[LineBatch]:
    """One or more ``filter-log-events`` documents, concatenated or one per line.

    The AWS CLI joins every page of a range into one document unless told not to, so one
    document may hold millions of events: one larger than a read block is read event by
    event (:class:`StreamedMember`) and handed on in batches of a block's size, never held
    whole (a 295 MB document was quarantined whole, no event read: found by review).
    """
    for page, doc, raw, error in iter_concatenated_json(
        stream, restart=_PAGE_START, stream_member="events"
    ):
        if isinstance(doc, StreamedMember):
            yield from _event_batches(uri, page, doc)
            continue
        events = doc.get("events") if isinstance(doc, dict) else None
        if error is not None or not isinstance(events, list):
            reason = (
                f"invalid JSON page: {error}"
                if error is not None
                else "not a filter-log-events page (no events list)"
            )
            yield _rejected_only(uri, (uri, f"page {page}", reason, raw or _json_text(doc)))
            continue
        yield from _event_batches(uri, page, events)


def _event_batches(uri: str, page: int, events: Iterable[Any]) -> Iterator[LineBatch]:
    """The events of one page as batches of about :data:`STREAMED_BATCH_BYTES` of
    messages; one without a message is set aside with a reason."""
    messages: list[str] = []
    ids: list[str] = []
    streams: list[str] = []
    rejected: list[tuple[str, str, str, bytes]] = []
    size = 0
    for i, ev in enumerate(events):
        if isinstance(ev, Undecodable):
            reason = f"CloudWatch event {ev.reason}"
            rejected.append(
                (uri, f"page {page} event {i + 1}", reason, ev.text.encode()[:RAW_KEEP])
            )
            continue
        msg = ev.get("message") if isinstance(ev, dict) else None
        eid = f"page {page} event {i + 1}"
        if isinstance(ev, dict) and ev.get("eventId"):
            eid = str(ev["eventId"])
        if not isinstance(msg, str) or not msg.strip():
            reason = "CloudWatch event without a message"
            rejected.append((uri, eid, reason, _json_text(ev)))
            continue
        messages.append(msg)
        ids.append(eid)
        streams.append(str(ev.get("logStreamName") or ""))
        size += len(msg)
        if size >= STREAMED_BATCH_BYTES:
            batch = _messages_batch(uri, messages, ids, streams, None)
            batch.rejected = rejected
            yield batch
            messages, ids, streams, rejected, size = [], [], [], [], 0
    if isinstance(events, StreamedMember) and events.error is not None:
        reason, raw = events.error
        said = (
            f"not a filter-log-events page ({reason})"
            if reason == f"no {events.member} list"
            else f"invalid JSON page: {reason}"
        )
        rejected.append((uri, f"page {page}", said, raw))
    batch = _messages_batch(uri, messages, ids, streams, None)
    batch.rejected = rejected
    yield batch


def _rejected_only(uri: str, record: tuple[str, str, str, bytes]) -> LineBatch:
    source, position, reason, raw = record
    return LineBatch(
        pa.array([], pa.large_binary()),
        pa.array([], pa.string()),
        uri,
        rejected=[(source, position, reason, raw[:RAW_KEEP])],
    )


#: White space between JSON values (and the BOMs of concatenated files).
_JSON_SPACE = re.compile(r"[ \t\r\n\ufeff]*")


class _JsonCursor:
    """Decoded text of a stream read a block at a time, and a position in it."""

    def __init__(self, stream: BinaryIO, chunk_bytes: int) -> None:
        self.stream, self.chunk_bytes = stream, chunk_bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        # Control characters inside strings are taken as they are: one raw NUL in one
        # message failed the whole page and every event on it (found by review); the
        # message itself is judged when it is normalized.
        self.decoder = json.JSONDecoder(strict=False)
        self.buf, self.pos, self.eof = "", 0, False

    def more(self) -> bool:
        """Read a block onto the text not yet read (what was read is let go); False at
        the end of the stream."""
        if self.eof:
            return False
        chunk = self.stream.read(self.chunk_bytes)
        self.eof = not chunk
        self.buf, self.pos = self.buf[self.pos :] + self.utf8.decode(chunk, final=self.eof), 0
        return True

    def skip_space(self) -> bool:
        """Past white space; False at the end of the stream."""
        while True:
            self.pos = _JSON_SPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return True
            if not self.more():
                return False

    def decode(self, limit: int) -> Any:
        """The value at the position, reading more while it may just be incomplete and
        fewer than ``limit`` characters are held."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except (json.JSONDecodeError, RecursionError):
                if self.eof or len(self.buf) - self.pos >= limit:
                    raise
                self.more()
                continue
            if end == len(self.buf) and not self.eof and isinstance(value, (int, float)):
                self.more()  # a number at the end of the text read may go on in the next block
                continue
            self.pos = end
            return value

    def expect(self, char: str) -> None:
        if not self.skip_space() or self.buf[self.pos] != char:
            at = self.buf[self.pos : self.pos + 1] or "the end of the input"
            raise json.JSONDecodeError(f"expected {char!r}, found {at!r}", self.buf, self.pos)
        self.pos += 1


@dataclass
class Undecodable:
    """An item of a streamed list that could not be decoded, with why and its text."""

    reason: str
    text: str


def _skip_value(cur: _JsonCursor, limit: int) -> str:
    """The text of the JSON value at the cursor, which is moved past it. Its end is found
    by counting brackets outside strings (no recursion, whatever its depth), reading more
    while fewer than ``limit`` characters are held; :class:`json.JSONDecodeError` if it
    does not end."""
    start = cur.pos
    depth, i, in_string = 0, start, False
    while True:
        buf = cur.buf
        while i < len(buf):
            ch = buf[i]
            if in_string:
                if ch == "\\":
                    i += 1
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
                if depth == 0:
                    cur.pos = i + 1
                    return buf[start : i + 1]
            i += 1
        if cur.eof or len(buf) - start >= limit:
            raise json.JSONDecodeError("the input ends inside a value", buf, start)
        offset = cur.pos
        cur.more()  # drops what precedes the position: positions move back by it
        start, i = start - offset, i - offset


class StreamedMember:
    """The items of one list member of a top-level object too large to decode at once,
    read one by one; the object's other members are read and let go. A damaged stretch
    ends the items and is kept in :attr:`error` as (reason, raw text)."""

    def __init__(self, cursor: _JsonCursor, member: str) -> None:
        self.cursor, self.member = cursor, member
        self.error: tuple[str, bytes] | None = None
        #: The object's opening, kept for the quarantine when it turns out to hold no list.
        self.head = cursor.buf[cursor.pos : cursor.pos + RAW_KEEP].encode()
        self._items = self._read()

    def __iter__(self) -> Iterator[Any]:
        return self._items

    def _read(self) -> Iterator[Any]:
        cur, limit = self.cursor, 8 * self.cursor.chunk_bytes
        found = False
        try:
            cur.expect("{")
            first = True
            while True:
                if not cur.skip_space():
                    raise json.JSONDecodeError("the input ends inside the object", cur.buf, cur.pos)
                if cur.buf[cur.pos] == "}":
                    cur.pos += 1
                    if not found:  # said as the same shape is when small (found by review)
                        self.error = (f"no {self.member} list", self.head)
                    return
                if not first:
                    cur.expect(",")
                    cur.skip_space()
                first = False
                name = cur.decode(limit)
                cur.expect(":")
                cur.skip_space()
                if name != self.member or cur.buf[cur.pos : cur.pos + 1] != "[":
                    cur.decode(limit)  # another member (nextToken, searchedLogStreams)
                    continue
                found = True
                cur.pos += 1
                item = 0
                while True:
                    if not cur.skip_space():
                        raise json.JSONDecodeError("the input ends inside a list", cur.buf, cur.pos)
                    if cur.buf[cur.pos] == "]":
                        cur.pos += 1
                        break
                    if item:
                        cur.expect(",")
                        cur.skip_space()
                    item += 1
                    try:
                        value = cur.decode(limit)
                    except RecursionError:
                        # One item nested too deeply for the decoder: set aside alone, the
                        # items after it read on (it failed the whole page; review).
                        yield Undecodable("nested too deeply", _skip_value(cur, limit))
                        continue
                    except json.JSONDecodeError as exc:
                        # One damaged entry whose brackets still close (a byte changed):
                        # set aside alone too. Every entry after it was lost with the rest
                        # of the document, 75k events of a 190 MB one (found by review).
                        if cur.buf[cur.pos] != "{":  # decode left the position at its start
                            raise
                        try:
                            text = _skip_value(cur, limit)
                        except json.JSONDecodeError:
                            raise exc from None  # no end to it (cut short): said as decoded
                        yield Undecodable(f"invalid JSON: {exc.msg}", text)
                        continue
                    yield value
        except (json.JSONDecodeError, RecursionError) as exc:
            reason = (
                "nested too deeply"
                if isinstance(exc, RecursionError)
                else f"{exc.msg}, after the {self.member} read so far"
            )
            self.error = (reason, cur.buf[cur.pos : cur.pos + RAW_KEEP].encode())


def iter_concatenated_json(
    stream: BinaryIO,
    *,
    restart: re.Pattern[str],
    chunk_bytes: int = BATCH_BYTES,
    stream_member: str | None = None,
) -> Iterator[tuple[int, Any, bytes, str | None]]:
    """Top-level JSON values written back to back (any key order, any whitespace between).

    Yields ``(n, value, b"", None)`` per value, or ``(n, None, raw, reason)`` for a damaged
    stretch, after which decoding resumes where ``restart`` (the opening of a top-level
    value of this format) next matches, so one corrupt record costs only itself. With
    ``stream_member``, an object larger than a block is yielded as a
    :class:`StreamedMember` of that list member's items (consume it before the next), so
    memory stays bounded whatever one value's size.
    """
    cur = _JsonCursor(stream, chunk_bytes)
    n = 0
    while cur.skip_space():
        streams = stream_member is not None and cur.buf[cur.pos] == "{"
        limit = chunk_bytes if streams else 8 * chunk_bytes
        try:
            value = cur.decode(limit)  # on failure, the position is the value's start
        except (json.JSONDecodeError, RecursionError) as exc:
            n += 1
            # A page too large to decode at once, or one that fails whole (an item nested
            # too deeply): read item by item, so one bad item costs itself alone and the
            # items before a damaged stretch are kept (a page was lost whole; review).
            if streams:
                member = StreamedMember(cur, stream_member)  # type: ignore[arg-type]
                yield n, member, b"", None
                for _ in member:  # what the consumer left unread
                    pass
                if member.error is not None:  # said by the consumer; resume at the next page,
                    # which may begin right where the damage is (a page cut short)
                    found = restart.search(cur.buf, cur.pos)
                    cur.pos = found.start() if found else len(cur.buf)
                continue
            found = restart.search(cur.buf, cur.pos + 1)
            stop = found.start() if found else len(cur.buf)
            if isinstance(exc, RecursionError):  # stdlib json recurses per nesting level
                reason = "JSON nested too deeply"
            else:
                reason = f"invalid JSON at char {exc.pos - cur.pos}"
            yield n, None, cur.buf[cur.pos : stop][:RAW_KEEP].encode(), reason
            cur.pos = stop
            continue
        n += 1
        yield n, value, b"", None


def _firehose_batches(uri: str, stream: BinaryIO) -> Iterator[LineBatch]:
    """CloudWatch subscription records (gzip members back to back, no newline between
    records, keys in any order); CONTROL_MESSAGE records are skipped."""
    pending: tuple[list[str], list[str], list[str]] = ([], [], [])
    cluster: str | None = None
    pending_bytes = 0
    rejected: list[tuple[str, str, str, bytes]] = []
    for record_no, record, raw, error in iter_concatenated_json(
        stream, restart=_SUBSCRIPTION_START
    ):
        if error is not None or not isinstance(record, dict):
            reason = f"invalid Firehose record: {error or 'not a JSON object'}"
            rejected.append((uri, f"record {record_no}", reason, raw))
            continue
        if record.get("messageType") == formats.CONTROL_MESSAGE:
            continue
        log_events = record.get("logEvents")
        if not isinstance(log_events, list):
            reason = "invalid Firehose record: logEvents is not a list"
            rejected.append((uri, f"record {record_no}", reason, _json_text(record)))
            continue
        group = record.get("logGroup")
        if names_bad_cluster(group):
            reason = f"invalid Firehose record: log group {str(group)[:120]!r} names no cluster"
            rejected.append((uri, f"record {record_no}", reason, _json_text(record)))
            continue
        group_cluster = cluster_from_log_group(group)
        if group_cluster and cluster and group_cluster != cluster and pending[0]:
            yield _flush_firehose(uri, pending, cluster, rejected)  # one cluster per batch
            pending, rejected, pending_bytes = ([], [], []), [], 0
        cluster = group_cluster or cluster
        log_stream = str(record.get("logStream") or "")
        for i, ev in enumerate(log_events):
            msg = ev.get("message") if isinstance(ev, dict) else None
            eid = (
                str(ev.get("id"))
                if isinstance(ev, dict) and ev.get("id")
                else f"record {record_no} event {i + 1}"
            )
            if not isinstance(msg, str) or not msg.strip():
                rejected.append((uri, eid, "log event without a message", _json_text(ev)))
                continue
            pending[0].append(msg)
            pending[1].append(eid)
            pending[2].append(log_stream)
            pending_bytes += len(msg)
        if pending_bytes >= BATCH_BYTES:
            yield _flush_firehose(uri, pending, cluster, rejected)
            pending, rejected, pending_bytes = ([], [], []), [], 0
    if pending[0] or rejected:
        yield _flush_firehose(uri, pending, cluster, rejected)


def _flush_firehose(uri, pending, cluster, rejected) -> LineBatch:  # type: ignore[no-untyped-def]
    batch = _messages_batch(uri, pending[0], pending[1], pending[2], cluster)
    batch.rejected = rejected
    return batch


def path_text(uri: str) -> str:
    """``uri`` as text the lake can hold: the bytes of a local name that are not UTF-8
    (which Python keeps as lone surrogates, and no UTF-8 writer takes) written as ``\\xNN``.
    A folder holding one such name failed to ingest at all."""
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return uri.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return uri


def read_batches(uri: str, fmt: str = AUTO, *, again_later: bool = False) -> Iterator[LineBatch]:
    """Batches of raw audit messages from one file or object.

    A UTF-8 byte-order mark at the start is dropped (editors on Windows write one; it is
    not part of the first event). Damage that ends a gzip stream early is reported as a
    quarantine record, after everything before it was read. Batches name their source by
    :func:`path_text`.

    ``again_later``: the caller reads the file again on its next run (``detect ingest``),
    so an unfinished last line of a file still being written waits for it
    (:func:`_ndjson_batches`). A replay or an in-memory read has no next run: the line is
    quarantined as it stands.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    raw = open_input(uri)
    local = uri
    uri = path_text(uri)
    stream: BinaryIO = raw

    def damage() -> str | None:
        return getattr(raw, "damage", None)

    def growing() -> float | None:
        if not again_later or isinstance(raw, _Decoded):  # a compressed file is whole
            return None
        age = _changed_seconds_ago(local)
        # a future time (a copy from a host whose clock is ahead) says nothing of a writer
        return age if age is not None and 0 <= age < GROWING_SECONDS else None

    try:
        head = stream.read(65536)
        if head.startswith(BOM):
            head = head[len(BOM) :]
        if fmt == AUTO:
            fmt = sniff_format(head)
        stream = _Prefixed(head, raw)  # type: ignore[assignment]
        if fmt in (NDJSON, EXPORT_GZ):
            yield from _ndjson_batches(
                uri, stream, strip_timestamp=fmt == EXPORT_GZ, damage=damage, growing=growing
            )
            return
        if fmt == CLOUDWATCH_JSON:
            yield from _cloudwatch_json_batches(uri, stream)
        else:
            yield from _firehose_batches(uri, stream)
        why = damage()
        if why:
            yield _rejected_only(uri, (uri, "end of input", why, b""))
    except (OSError, EOFError) as exc:
        raise InputError(f"{uri}: read failed: {exc}") from exc
    finally:
        stream.close()


class _Prefixed(io.RawIOBase):
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                out, self._head = self._head + self._rest.read(), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._rest.read(size)

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(self._head), len(buffer))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._rest, "readinto", None)
        if readinto is not None:
            return int(readinto(buffer) or 0)
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._rest.close()
        super().close()


def object_identity(uri: str) -> tuple[str, str]:
    """(uri, version tag) used to remember processed S3 objects: ETag, else size+mtime."""
    loc = Location.of(uri)
    info = loc.fs.info(loc.root)
    tag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if not tag:
        tag = f"{info.get('size')}-{info.get('LastModified') or info.get('mtime')}"
    return uri, tag


__all__ = [
    "FORMATS",
    "InputError",
    "InputNotFound",
    "LineBatch",
    "cluster_from_log_group",
    "cluster_from_path",
    "expand_inputs",
    "is_s3",
    "object_identity",
    "read_batches",
    "sniff_format",
]
