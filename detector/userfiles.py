"""Small files a user names: rules, suppressions, labels, IP lists, sink secrets, detect.toml.

They are read whole, so each is checked to be of a sane size first: a log or ``/dev/zero``
given by mistake is refused instead of filling memory. No heavy imports: the CLI reads
``detect.toml`` with it before it knows which command runs.
"""

from __future__ import annotations

import errno
import os

#: Files a user points at (rules, suppressions, labels, IP lists, secrets, detect.toml) are
#: small; a bigger one is the wrong file (a log, ``/dev/zero``) and is refused, not read.
MAX_USER_FILE_BYTES = 16 * 1024 * 1024


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
