"""Audit ids as the lake keys them: bounded in size and free of characters consoles escape.

The API server takes ``auditID`` from the client's ``Audit-ID`` header, so a client picks
it: up to the header limit of 1 MB, with any character. The id is part of the lake's
unique key and of every finding's links. Here alone, so ingest (:mod:`detector.events.
normalize`) and the lake's dedup (:mod:`detector.lake.events`) bound it the same way, and
scoring, which reads the lake, imports nothing of ingest.
"""

from __future__ import annotations

import hashlib

import polars as pl

from detector.controls import ONE_LINE

#: Longest ``audit_id`` kept as written. The API server takes ``auditID`` from the client's
#: ``Audit-ID`` header (up to its 1 MB header limit) and generates a 36-character UUID
#: otherwise; the id is part of the lake's unique key and of every finding's links.
MAX_AUDIT_ID_BYTES = 128
_AUDIT_ID_HEAD_BYTES = 48
#: What an id may not hold: what the consoles escape (C0 and C1 controls, DEL, bidi
#: overrides, invisible characters; :data:`detector.controls.ONE_LINE`), as a class of the
#: regex polars runs, and as ``?`` in the head of a bounded id.
_UNFIT_CHARS = "[" + "".join(f"\\x{{{c:x}}}" for c in sorted(ONE_LINE)) + "]"
_AS_QUESTION_MARK = dict.fromkeys(ONE_LINE, "?")


def _bounded_id(audit_id: str) -> str:
    """A printable head of ``audit_id`` (its first 48 bytes) and a digest of the whole:
    unique as the id was, the same on every run, at most 74 bytes, and itself fit (bounded
    again, it is unchanged)."""
    digest = hashlib.sha256(audit_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    head = audit_id.encode("utf-8", "surrogatepass")[:_AUDIT_ID_HEAD_BYTES]
    printable = head.decode("utf-8", "ignore").translate(_AS_QUESTION_MARK)
    return f"{printable}…sha256:{digest}"


def bounded_ids(ids: pl.Series) -> pl.Series:
    """``ids`` with every id too long or holding a character the consoles escape bounded.

    Such an event is kept (a request sent under a 1 MB Audit-ID must not hide from the
    detectors in quarantine), but its id is written as :func:`_bounded_id`: a megabyte
    key slowed every lookup, and a NUL or escape sequence reached terminals and reports.
    Python runs only on those ids, which clients alone can send. The lake also bounds the
    keys of files written before (:meth:`detector.lake.events.Lake.write_events`), so such
    an event read again is known as the copy it is.
    """
    unfit = (ids.str.len_bytes() > MAX_AUDIT_ID_BYTES) | ids.str.contains(_UNFIT_CHARS)
    rows = unfit.fill_null(False).arg_true()
    if not len(rows):
        return ids
    return ids.scatter(rows, [_bounded_id(i) for i in ids.gather(rows).to_list()])
