"""Files a user names: small ones read whole, and the outputs a command writes.

Read: rules, suppressions, labels, IP lists, sink secrets, detect.toml. Each is checked to
be of a sane size first: a log or ``/dev/zero`` given by mistake is refused instead of
filling memory. Written: a report, the rules' docs, an address-range snapshot, atomically
where the path is a file. No heavy imports: the CLI reads ``detect.toml`` with it before
it knows which command runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import time
import uuid
from pathlib import Path

#: Files a user points at (rules, suppressions, labels, IP lists, secrets, detect.toml) are
#: small; a bigger one is the wrong file (a log, ``/dev/zero``) and is refused, not read.
MAX_USER_FILE_BYTES = 16 * 1024 * 1024


def _naming(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` with ``path`` as its file when the OS named none (a write that ran out of
    space says only "No space left on device"): the error line then says where."""
    if exc.filename is not None or not exc.strerror:
        return exc
    return type(exc)(exc.errno, exc.strerror, os.fspath(path))


def replace_atomically(
    path: str | os.PathLike[str], data: bytes, temp: str | os.PathLike[str]
) -> None:
    """Write ``data`` to ``temp``, flush it to disk, rename it over ``path``: a reader sees
    the old file or the new one, never half of it. On failure ``temp`` is removed, and a
    write that runs out of space names ``path``. The one local atomic write: the lake's,
    the model folder's and the outputs a user names."""
    try:
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from None
        raise


def read_user_bytes(path: str | os.PathLike[str], *, limit: int = MAX_USER_FILE_BYTES) -> bytes:
    """The bytes of a small local file a user named, never reading past ``limit``.

    Fails as reading it whole would (``OSError``: missing, a folder, unreadable); a file
    over ``limit`` is an ``OSError`` too (``EFBIG``) instead of filling memory.
    """
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // 2**20} MB, not a file of this kind")
    return data


def read_user_file(path: str | os.PathLike[str], *, limit: int = MAX_USER_FILE_BYTES) -> str:
    """The UTF-8 text of a small local file a user named (:func:`read_user_bytes`).

    ``UnicodeDecodeError`` where it is not UTF-8, as reading it whole would fail, so
    callers keep their messages.
    """
    return read_user_bytes(path, limit=limit).decode("utf-8")


#: A temporary file of an atomic write older than this was left by a run that was
#: killed (SIGKILL, power loss) before it could remove it; a younger one may be another
#: run's, still being written.
STALE_TEMP_SECONDS = 3600


def remove_stale_temps(directory: str | os.PathLike[str], own: re.Pattern[str]) -> None:
    """Remove the temporary files named like ``own`` in ``directory`` that killed runs left.

    Only regular files older than :data:`STALE_TEMP_SECONDS`; a younger one may be another
    run's, still being written.
    """
    cutoff = time.time() - STALE_TEMP_SECONDS
    try:
        for entry in os.scandir(directory):
            if not own.fullmatch(entry.name):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                os.unlink(entry.path)
    except OSError:  # tidying up only: the write itself says what is wrong
        pass


def write_user_file(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) at a path a user named, so a reader never sees half of it.

    A file is written beside itself and renamed over (through a symlink: the file it
    points at). ``-`` is standard output, and a path that is not a file, such as
    ``/dev/null`` or a FIFO, is written into as a shell's ``>`` would: renaming over it
    replaced the device itself (as root, ``-o /dev/null`` left a regular file there).
    Temporary files a killed run left beside the file are removed (after an hour).
    Returns the path written; ``.is_file()`` tells a file from a stream.
    """
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return Path("-")
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if special:  # opened as named: /dev/stdout resolves to no path
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return Path(path)
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(
        target.parent, re.compile(r"\." + re.escape(target.name) + r"\.[0-9a-f]{8}\.tmp")
    )
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    replace_atomically(target, text.encode("utf-8"), tmp)
    return Path(path)
