"""Tailing a local audit log: complete lines only, across rotation, resumable."""

from __future__ import annotations

import os

import orjson
from factories import make_event

from detector.events.normalize import normalize_lines
from detector.sources.tail import FileTail, TailPosition


def line(i: int) -> bytes:
    return orjson.dumps(make_event(i)) + b"\n"


def ids(batches) -> list[str]:
    out: list[str] = []
    for b in batches:
        result = normalize_lines(b.lines, positions=b.positions, source=b.source, cluster="c")
        assert result.quarantine.height == 0, result.quarantine["reason"].to_list()
        out += result.events["audit_id"].to_list()
    return out


def aid(*numbers: int) -> list[str]:
    return [make_event(i)["auditID"] for i in numbers]


def test_only_complete_lines_are_returned_and_nothing_twice(tmp_path):
    log = tmp_path / "audit.log"
    tail = FileTail(str(log))
    assert tail.poll() == []  # no file yet: nothing, no error
    log.write_bytes(line(0) + line(1))
    assert ids(tail.poll()) == aid(0, 1)
    assert tail.poll() == []
    half = line(2)[:40]
    with log.open("ab") as fh:
        fh.write(half)
    assert tail.poll() == []  # a line still being written waits
    with log.open("ab") as fh:
        fh.write(line(2)[40:] + line(3))
    assert ids(tail.poll()) == aid(2, 3)


def test_rotation_by_rename_finishes_the_old_file_then_reads_the_new_one(tmp_path):
    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0)
    with log.open("ab") as fh:  # written just before the rotation, not yet polled
        fh.write(line(1))
    os.rename(log, tmp_path / "audit-2026-11-30T06-00-00.000.log")
    assert ids(tail.poll()) == aid(1)  # the new file does not exist yet
    log.write_bytes(line(2) + line(3))
    assert ids(tail.poll()) == aid(2, 3)


def test_copytruncate_reads_the_file_again_from_its_start(tmp_path):
    log = tmp_path / "audit.log"
    log.write_bytes(line(0) + line(1))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0, 1)
    log.write_bytes(line(2))  # truncated in place and written again
    assert ids(tail.poll()) == aid(2)


def test_a_stored_position_resumes_exactly_and_positions_name_the_file_version(tmp_path):
    log = tmp_path / "audit.log"
    log.write_bytes(b"\xef\xbb\xbf" + line(0) + line(1))
    first = FileTail(str(log))
    batches = first.poll()
    assert ids(batches) == aid(0, 1)
    inode = os.stat(log).st_ino
    assert batches[0].positions.to_pylist() == [f"{inode}:3", f"{inode}:{3 + len(line(0))}"]
    saved = TailPosition.from_dict(first.position.to_dict())
    first.close()
    with log.open("ab") as fh:
        fh.write(line(2))
    again = FileTail(str(log), saved)
    assert ids(again.poll()) == aid(2)
