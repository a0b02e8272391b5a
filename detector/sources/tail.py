"""Follow a local audit log that an API server appends to, across rotation.

A self-managed kube-apiserver writes ``--audit-log-path`` and rotates it itself
(``--audit-log-maxsize``: the file is renamed and a new one created) or is rotated by
logrotate (rename, or ``copytruncate``). :class:`FileTail` is polled, not event-driven:
each :meth:`FileTail.poll` returns the complete lines appended since the last call, so the
caller decides the pace and nothing blocks.

- Only complete lines are returned; a line still being written stays for the next poll.
- Rotation by rename: the file we had open is read to its end first (its last line is
  complete: the writer has moved on), then the new file is read from its start.
- Truncation in place (copytruncate): the file is read again from its start. Seen when the
  file is shorter than the offset, and also when it has grown past the offset again since
  the last poll (a slow poll, a watch that was down during logrotate): the last line read
  before the offset (its last :data:`MARK_BYTES` at most) is no longer there. The size
  alone missed that case, and the new file's first lines, up to the old offset, were
  never read.
- :attr:`FileTail.position` (inode, byte offset, that line's digest) says where the next poll
  starts; a caller that stores it with its checkpoint resumes exactly there after a
  restart. Rotated or rewritten in between, the rest of that file is read first from the
  file in the same folder that holds the last line read (the renamed file, or a copy
  logrotate made before truncating), then every later rotation, oldest first, then the
  current file from its start; with no such file (deleted, compressed) the current file is
  read from its start, with a warning.
- Rotated files are looked for among the files named after the log (``audit.log.1``,
  ``audit.log-20261201``, kube-apiserver's ``audit-2026-12-01T06-00-00.000.log``), regular
  files of the log's owner, opened without following links: a file someone else planted
  in the folder is never read as the log's history.

Positions in the batches are ``INODE:OFFSET`` (byte offset of the line in that file), so
a quarantined line names the file version and place it came from even across rotations.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from detector.events.normalize import MAX_LINE_BYTES
from detector.sources.files import BATCH_BYTES, BOM, InputNotFound, LineBatch, _split_lines

log = logging.getLogger(__name__)

#: The most of the last line before the offset whose digest tells the file read from a
#: rewritten one of the same inode. The whole line, not its end: an audit line ends with
#: annotations that repeat from event to event; its times and audit ID come before.
MARK_BYTES = 4096


@dataclass(frozen=True)
class TailPosition:
    """Where the next poll starts: the file's inode, a byte offset in it, and the length
    and digest of the line (its last :data:`MARK_BYTES`) just before that offset (0 and
    empty in positions stored before they were kept)."""

    inode: int
    offset: int
    mark_bytes: int = 0
    mark: str = ""
    #: the offset is inside a line too long, already taken: the rest of it is passed over
    skipping: bool = False
    #: the file's modification time then (0: not kept): a rotation modified later holds
    #: lines not read, even when the file of the checkpoint is gone or held none of them
    mtime_ns: int = 0

    def to_dict(self) -> dict[str, int | str | bool]:
        return {
            "inode": self.inode,
            "offset": self.offset,
            "mark_bytes": self.mark_bytes,
            "mark": self.mark,
            **({"skipping": True} if self.skipping else {}),
            **({"mtime_ns": self.mtime_ns} if self.mtime_ns else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, int | str | bool]) -> TailPosition:
        size, mark = data.get("mark_bytes"), data.get("mark")
        if not (isinstance(size, int) and 0 < size <= MARK_BYTES and isinstance(mark, str)):
            size, mark = 0, ""  # none kept, or damaged: the size check alone, as before
        mtime = data.get("mtime_ns")
        return cls(
            int(data["inode"]),
            int(data["offset"]),
            size,
            mark,
            data.get("skipping") is True,
            mtime if isinstance(mtime, int) and mtime > 0 else 0,
        )


def check_tailable(path: str) -> None:
    """Refuse a path that can only be followed as a regular file: a folder, a device or a
    FIFO (``/dev/zero`` was read without end until memory ran out). A path that does not
    exist yet is fine, said in a warning: the API server may create it later (a typo was
    "0 events" and exit 0 without a word; found by review). An empty one is refused."""
    if not path.strip():
        raise InputNotFound("--tail is empty: give the audit log file")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        log.warning("%s does not exist yet: it is followed from when it appears", path)
        return
    except OSError as exc:
        raise InputNotFound(f"{path}: cannot follow: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "not a regular file (FIFO, socket or device)"
        raise InputNotFound(f"{path}: cannot follow it, it is {what}: give the audit log file")


def rotation_names(base: str) -> re.Pattern[str]:
    """Names a rotation of the log named ``base`` takes: logrotate's ``audit.log.1`` and
    ``audit.log-20261201`` (dateext, any date format of digits; ``audit-20261201.log`` and
    ``audit.1.log`` with ``extension``), the API server's
    ``audit-2026-12-01T06-00-00.000.log``. Not any name that merely starts alike
    (``audit.log.bak``, ``audit-webhook.log``): those were read whole as rotations. Nor a
    compressed rotation (``audit.log.2.gz``): it cannot be read on from a byte offset, so
    what it holds after the checkpoint is said to be lost, not read as garbage."""
    stem, ext = os.path.splitext(base)
    b, s, e = re.escape(base), re.escape(stem), re.escape(ext)
    after = r"[.-]\d[\dT_.-]*"  # .1, -20261201, .2026-12-01, -2026-12-01T06-00-00.000
    return re.compile(rf"{b}{after}|{s}{after}{e}" if ext else rf"{b}{after}")


def _modified_after(
    listing: list[tuple[str, os.stat_result]],
    after: tuple[int, int | None],
    skip: set[int],
    *,
    also: int | None = None,
) -> list[tuple[int, int, str]]:
    """(modification time, inode, path) of the rotations in ``listing`` modified after
    ``after`` (a time and an inode that breaks ties; no inode: strictly later), and the
    one of inode ``also`` whenever modified, the inodes of ``skip`` left out: the
    candidates :meth:`FileTail._open_first` takes the oldest of."""
    time_ns, inode = after
    return [
        (st.st_mtime_ns, st.st_ino, path)
        for path, st in listing
        if st.st_ino not in skip
        and (
            st.st_ino == also
            or (
                st.st_mtime_ns > time_ns
                if inode is None
                else (st.st_mtime_ns, st.st_ino) > (time_ns, inode)
            )
        )
    ]


#: Bytes a poll reads at most: a big file followed from its start is read this much a
#: step (1 GB peaked at 829 MB, against 2.8 GB read whole).
POLL_BYTES = 4 * BATCH_BYTES


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _open_regular(path: str, *, follow: bool = False) -> BinaryIO | None:
    """``path`` open for reading if it is a regular file: not a link unless ``follow``
    (O_NOFOLLOW), nor a FIFO or device swapped in since it was checked (O_NONBLOCK:
    opening a FIFO does not wait; a FIFO at the log's path hung the watch for good)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


class FileTail:
    """Complete lines appended to ``path`` since the last :meth:`poll`, at most
    ``poll_bytes`` a poll: a big file followed from its start is read a slice at a time
    (:attr:`behind` says more is waiting), not held whole in memory."""

    def __init__(
        self,
        path: str,
        position: TailPosition | None = None,
        *,
        batch_bytes: int = BATCH_BYTES,
        poll_bytes: int = POLL_BYTES,
    ) -> None:
        self.path = path
        self.poll_bytes = max(1, poll_bytes)
        self.batch_bytes = min(batch_bytes, self.poll_bytes)
        #: the last poll stopped at ``poll_bytes`` with more to read: poll again now
        self.behind = False
        self._fh: BinaryIO | None = None
        self._inode = position.inode if position else None
        self._offset = position.offset if position else 0
        self._mark = (position.mark_bytes, position.mark) if position else (0, "")
        #: inside a line too long that was already taken: the bytes up to its end are skipped
        self._skipping = position.skipping if position else False
        self._mtime = position.mtime_ns if position else 0
        #: the path is there but not a regular file (a FIFO put in its place): said once
        self._refused = False

    @property
    def position(self) -> TailPosition | None:
        if self._inode is None:
            return None
        return TailPosition(self._inode, self._offset, *self._mark, self._skipping, self._mtime)

    def pin(self) -> TailPosition | None:
        """Open the file as it is now, and the position of its start: a caller that stores
        it before the first poll (which may take a while) finds this file again by its
        inode if it is rotated before a re-run."""
        if self._fh is None and (current := self._stat()) is not None:
            self._open(current)
            if self._fh is not None:
                self._mtime = os.fstat(self._fh.fileno()).st_mtime_ns
        return self.position

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def poll(self) -> list[LineBatch]:
        """Batches of the complete lines written since the last poll (maybe none), up to
        ``poll_bytes``; :attr:`behind` is then set and the next poll goes on from there."""
        batches: list[LineBatch] = []
        budget = self.poll_bytes
        self.behind = False
        current = self._stat()
        if self._fh is None:
            if current is None:
                return batches
            self._open(current)
            if self._fh is None:  # not a regular file now: nothing to read
                return batches
        else:
            held = os.fstat(self._fh.fileno())
            if self._rewritten(held):
                # Truncated in place (copytruncate; renamed since, maybe): the rest of what
                # we read is in the copy logrotate made, when there is one; then this file
                # again from its start.
                found = self._switch_to_rotated(self._owners(held))
                if not found:
                    self._offset, self._mark, self._skipping = 0, (0, ""), False
            elif (
                not self._offset
                and self._mtime
                and current is not None
                and held.st_ino == current.st_ino
            ):
                # Nothing read of it yet, so no line to find a copy by: written and copied
                # and truncated between two polls, its lines are only in the copy, a
                # rotation modified since the last poll (they were lost).
                since = _modified_after(
                    self._rotations(self._owners(held)), (self._mtime, None), {held.st_ino}
                )
                self._open_first(since, "copied since the last poll")
        assert self._fh is not None
        if current is not None and current.st_ino != self._inode:
            # Rotated: finish the old file (its last line is complete), then any rotation
            # made after it (two while we were down), then the current one from its start.
            listing: list[tuple[str, os.stat_result]] = []
            owners: set[int] = {0}
            listed_for: int | None = None  # the folder is listed again only if rotated again
            key = (0, 0)
            while True:
                if self._fh is not None:
                    more, budget = self._read_available(final=True, budget=budget)
                    batches += more
                    if self.behind:  # this file is not finished yet: on with it next poll
                        return batches
                    finished = os.fstat(self._fh.fileno())
                    key = (finished.st_mtime_ns, finished.st_ino)
                    self.close()
                    self._inode, self._offset, self._mark = None, 0, (0, "")
                    self._skipping = False
                    owners = self._owners(finished)
                # Stated again: rotated once more while this poll read (seconds, catching
                # up), the file that was current is a rotation now, read before the new one.
                current = self._stat() or current
                if listed_for != current.st_ino:
                    listing, listed_for = self._rotations(owners), current.st_ino
                later = _modified_after(listing, key, {current.st_ino, key[1]})
                if self._open_first(later, "rotated after the file before it"):
                    continue
                self._open(current)
                if self._fh is None:
                    return batches
                if self._inode == current.st_ino:
                    break
                self.close()  # rotated between the stat and the open: that file first
                self._inode = None
        more, _ = self._read_available(final=False, budget=budget)
        self._mtime = os.fstat(self._fh.fileno()).st_mtime_ns
        return batches + more

    # ------------------------------------------------------------------ internals
    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None  # between a rename and the new file's creation

    def _open(self, st: os.stat_result) -> None:
        """Open ``path`` (``st``: its stat) and go on from the stored position: in it, in
        the rotation that holds it, or in the rotations since, then the file from 0."""
        fh = _open_regular(self.path, follow=True)
        if fh is None:
            if not self._refused:
                log.warning("%s: not a regular file now: not read until it is", self.path)
            self._refused = True
            return
        self._fh, self._refused = fh, False
        opened = os.fstat(fh.fileno())
        if self._inode is None:  # a file of its own (the first, or the one after a rotation)
            self._inode, self._offset, self._mark, self._skipping = opened.st_ino, 0, (0, ""), False
            return
        owners = self._owners(opened)
        if not self._offset and not self._mark[0] and self._mtime:
            # Nothing read yet of the checkpoint's file (stored before a first step, or a
            # quiet log): that file, renamed, and every rotation modified since the
            # checkpoint hold lines not read (a copy logrotate made of it too), oldest
            # first; then the current file from its start.
            unread = _modified_after(
                self._rotations(owners, self._inode),
                (self._mtime, None),
                {opened.st_ino},
                also=self._inode,
            )
            if self._open_first(unread, "not read since the checkpoint"):
                return
            self._inode, self._offset, self._mark, self._skipping = opened.st_ino, 0, (0, ""), False
            return
        stale = opened.st_ino != self._inode or self._rewritten(st)
        if stale and self._switch_to_rotated(owners):
            # Rotated (or copied and truncated) while nobody read it: the lines after the
            # stored position are in the rotated file. Finish that first (poll reads it to
            # its end, as after a rename seen live), then the current one from its start.
            return
        if stale and self._offset:
            log.warning(
                "%s: no file in its folder holds what was read up to byte %d of the file of "
                "the checkpoint (inode %d): lines written to that file after it and before "
                "its rotation are not read",
                self.path, self._offset, self._inode,
            )  # fmt: skip
        if stale and self._mtime:
            # The file of the checkpoint gone (deleted, compressed): the rotations modified
            # since hold lines not read, oldest first (a file of the stored inode among
            # them is another file: the inode was freed and reused).
            since = _modified_after(self._rotations(owners), (self._mtime, None), {opened.st_ino})
            if self._open_first(since, "modified since the checkpoint"):
                return
        if stale:
            self._offset, self._mark, self._skipping = 0, (0, ""), False  # another file: from 0
        self._inode = opened.st_ino

    @staticmethod
    def _owners(st: os.stat_result) -> set[int]:
        """Whose files may be the log's rotations: the log's owner and root (logrotate's
        ``create`` may give the new file another owner than the old one)."""
        return {st.st_uid, 0}

    def _rotations(
        self, owners: set[int], inode: int | None = None
    ) -> list[tuple[str, os.stat_result]]:
        """The files in ``path``'s folder named as its rotations (:func:`rotation_names`),
        regular files of ``owners`` (or of ``inode``, whoever owns it: the new log may have
        another owner than the one renamed), compressed ones left out."""
        folder, base = os.path.split(os.path.abspath(self.path))
        named = rotation_names(base)
        found: list[tuple[str, os.stat_result]] = []
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return found
        for entry in entries:
            if not named.fullmatch(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since it was listed
            if stat.S_ISREG(st.st_mode) and (st.st_uid in owners or st.st_ino == inode):
                found.append((entry.path, st))
        return found

    def _switch_to_rotated(self, owners: set[int]) -> bool:
        """Go on from the stored offset in the rotation that holds what was read up to it
        (the stored inode renamed, ``audit.log.1``, or a copy that ends with the same line
        before the offset: logrotate's copytruncate). Only with the stored line's digest to
        tell it, or at offset 0 by the inode alone (positions kept before digests: no)."""
        size, digest = self._mark
        if size > self._offset or (not size and self._offset):
            return False
        # The stored inode first, then the newest: the likeliest to hold it.
        candidates = sorted(
            self._rotations(owners, self._inode),
            key=lambda c: (c[1].st_ino != self._inode, -c[1].st_mtime_ns),
        )
        for path, listed in candidates:
            if not size and listed.st_ino != self._inode:
                continue
            if (fh := _open_regular(path)) is None:
                continue
            st = os.fstat(fh.fileno())
            if st.st_size >= self._offset and (
                not size or _digest(os.pread(fh.fileno(), size, self._offset - size)) == digest
            ):
                self.close()
                self._fh, self._inode = fh, st.st_ino
                log.info(
                    "%s: reading its rotated file %s on from byte %d first",
                    self.path, os.path.basename(path), self._offset,
                )  # fmt: skip
                return True
            fh.close()
        return False

    def _open_first(self, candidates: list[tuple[int, int, str]], why: str) -> bool:
        """Open the oldest of ``candidates`` (modification time, inode, path) that can be
        read, from its start; one that cannot is said to be passed over (it was silent)."""
        for _, inode, path in sorted(candidates):
            fh = _open_regular(path)
            if fh is None or os.fstat(fh.fileno()).st_ino != inode:  # replaced since listed
                if fh is not None:
                    fh.close()
                log.warning(
                    "%s: cannot read its rotation %s: the lines it holds are not read",
                    self.path, path,
                )  # fmt: skip
                continue
            self.close()
            self._fh, self._inode = fh, inode
            self._offset, self._mark, self._skipping = 0, (0, ""), False
            log.info("%s: reading %s, %s", self.path, os.path.basename(path), why)
            return True
        return False

    def _rewritten(self, st: os.stat_result) -> bool:
        """The open file no longer holds what was read before the offset: truncated (it is
        shorter), or truncated and written past the offset again (its bytes differ)."""
        if st.st_size < self._offset:
            return True
        size, digest = self._mark
        if not size or self._fh is None or size > self._offset:
            return False
        return _digest(os.pread(self._fh.fileno(), size, self._offset - size)) != digest

    def _read_available(self, *, final: bool, budget: int) -> tuple[list[LineBatch], int]:
        """Batches from the offset on, while ``budget`` bytes last; what is left of it."""
        assert self._fh is not None and self._inode is not None
        batches: list[LineBatch] = []
        while True:
            if budget <= 0:
                self.behind = True
                return batches, budget
            self._fh.seek(self._offset)
            data = self._fh.read(self.batch_bytes)
            if not data:
                return batches, budget
            start = self._offset
            if self._skipping:  # the rest of a line too long, already quarantined
                end = data.find(b"\n") + 1 or len(data)
                self._skipping = data[end - 1] != 10
                self._offset += end
                # What is before the offset now: the end of the long line, not only the
                # bytes of it this read got (a few, and a weak mark).
                n = min(MARK_BYTES, self._offset)
                self._mark = (n, _digest(os.pread(self._fh.fileno(), n, self._offset - n)))
                budget -= end
                continue
            if start == 0 and data.startswith(BOM):
                data, start = data[len(BOM) :], len(BOM)
                self._offset = start
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if final:
                    cut = len(data)  # the writer left: take what it wrote
                elif len(data) > MAX_LINE_BYTES:
                    # Damage: quarantined as it stands; the rest of it, whenever it comes, is
                    # passed over, not quarantined again as a line of its own.
                    cut, self._skipping = len(data), True
                else:
                    return batches, budget  # a line still being written
            block = data[:cut]
            batches.append(self._batch(block, start))
            self._offset = start + cut
            last = block[block.rfind(b"\n", 0, len(block) - 1) + 1 :][-MARK_BYTES:]
            self._mark = (len(last), _digest(last))
            budget -= cut
            if cut < len(data) and not final and len(data) < self.batch_bytes:
                return batches, budget

    def _batch(self, block: bytes, start: int) -> LineBatch:
        lines = _split_lines(block)
        # The array's offsets buffer holds each line's start in ``block`` (int64).
        starts = start + np.frombuffer(lines.buffers()[1], dtype=np.int64)[: len(lines)]
        positions = [f"{self._inode}:{o}" for o in starts.tolist()]
        return LineBatch(
            lines=lines,
            positions=pa.array(positions, pa.string()),
            source=self.path,
            nbytes=len(block),
            terminated=True,
        )


__all__ = [
    "MARK_BYTES",
    "POLL_BYTES",
    "FileTail",
    "TailPosition",
    "check_tailable",
    "rotation_names",
]
