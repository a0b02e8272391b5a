"""Tailing a local audit log: complete lines only, across rotation, resumable."""

from __future__ import annotations

import os

import orjson
import pytest
from factories import make_event

from detector.events.normalize import normalize_lines
from detector.sources.files import InputNotFound
from detector.sources.tail import FileTail, TailPosition, check_tailable


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


def drained(tail: FileTail, polls: int = 20) -> list[str]:
    """Every event ``tail`` has to give now: polls (at least two, at most ``polls``: a bug
    that never catches up fails, not hangs) until it is not behind."""
    got: list[str] = []
    for i in range(polls):
        got += ids(tail.poll())
        if i and not tail.behind:
            return got
    raise AssertionError(f"still behind after {polls} polls")


def following(log, *numbers: int) -> FileTail:
    """A tail that has read ``log``, written here with events ``numbers``."""
    log.write_bytes(b"".join(line(i) for i in numbers))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(*numbers)
    return tail


def checkpointed(log, *numbers: int) -> TailPosition:
    """The position a watch stores after reading ``log`` (holding events ``numbers``),
    as read back after a restart."""
    first = FileTail(str(log))
    assert ids(first.poll()) == aid(*numbers)
    saved = TailPosition.from_dict(first.position.to_dict())
    first.close()
    return saved


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


@pytest.mark.parametrize("resumed", [False, True])
def test_copytruncate_seen_after_the_file_grew_past_the_offset_again(tmp_path, resumed):
    """Truncated, then written past the old offset before the next poll (a slow poll, a
    watch down during logrotate): the size alone did not show it, and the new file's
    lines up to the old offset, the attack among them, were never read."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(0) + line(1))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0, 1)
    if resumed:  # the same, across a restart from a stored position
        saved = TailPosition.from_dict(tail.position.to_dict())
        tail.close()
    with log.open("r+b") as fh:  # truncate in place (the same inode), then write more
        fh.truncate(0)
        fh.write(line(2) + line(3) + line(4))
    if resumed:
        tail = FileTail(str(log), saved)
    assert ids(tail.poll()) == aid(2, 3, 4)
    assert tail.poll() == []


@pytest.mark.parametrize("rotation", ["rename", "copytruncate"])
def test_a_rotation_while_nobody_read_the_file_loses_none_of_its_last_lines(
    tmp_path, rotation, caplog
):
    """Rotated while the watch was down (kube-apiserver's own rotation during a restart,
    logrotate at night): the lines written after the checkpoint and before the rotation
    were never read, and nothing said so (found by a soak). They are read from the
    rotated file first, then the new file from its start."""
    caplog.set_level("INFO", logger="detector.sources.tail")
    log = tmp_path / "audit.log"
    log.write_bytes(line(0) + line(1))
    saved = checkpointed(log, 0, 1)
    with log.open("ab") as fh:  # written after the checkpoint, before the rotation
        fh.write(line(2) + line(3))
    older = tmp_path / "audit.log.2"  # an older rotation: not this one
    older.write_bytes(line(90))
    an_hour_ago = os.stat(log).st_mtime_ns - 3600 * 10**9
    os.utime(older, ns=(an_hour_ago, an_hour_ago))
    rotated = tmp_path / "audit.log.1"
    if rotation == "rename":
        os.rename(log, rotated)
        log.write_bytes(line(4))
    else:
        rotated.write_bytes(log.read_bytes())
        with log.open("r+b") as fh:  # the same inode, truncated, then written past the offset
            fh.truncate(0)
            fh.write(line(4) + line(5) + line(6))
    resumed = FileTail(str(log), saved)
    new = aid(4) if rotation == "rename" else aid(4, 5, 6)
    assert ids(resumed.poll()) + ids(resumed.poll()) == aid(2, 3) + new
    assert resumed.poll() == []
    assert "reading its rotated file audit.log.1 on from byte" in caplog.text


def test_a_rotated_file_that_is_gone_is_said_so(tmp_path, caplog):
    """Rotated and deleted (or compressed) while nobody read it: what it held after the
    checkpoint cannot be read, and the log says so instead of nothing."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    saved = checkpointed(log, 0)
    log.unlink()
    log.write_bytes(line(1))
    assert ids(FileTail(str(log), saved).poll()) == aid(1)
    assert "lines written to that file after it and before its rotation are not read" in (
        caplog.text
    )


def test_a_line_too_long_written_in_two_goes_is_one_quarantined_line(tmp_path):
    """Over 4 MB with no line break yet, a line is taken as damage; its rest, written
    later, was a second bad line ("invalid JSON") of its own (found by a soak). It is
    passed over, and the lines after it are read as ever, across a restart too."""
    from detector.events.normalize import MAX_LINE_BYTES

    log = tmp_path / "audit.log"
    head = b'{"kind":"Event","blob":"' + b"y" * (MAX_LINE_BYTES + 500_000)
    log.write_bytes(line(0) + head)
    tail = FileTail(str(log))
    taken = tail.poll() + tail.poll()  # the whole lines, then the long one as it stands
    result = [
        normalize_lines(b.lines, positions=b.positions, source=b.source, cluster="c") for b in taken
    ]
    assert [r.events["audit_id"].to_list() for r in result] == [aid(0), []]
    assert result[1].quarantine["reason"].to_list()[0].startswith("line too long")
    with log.open("ab") as fh:
        fh.write(b"y" * 1000)
    assert tail.poll() == []
    saved = TailPosition.from_dict(tail.position.to_dict())
    with log.open("ab") as fh:
        fh.write(b'"}\n' + line(1))
    assert ids(tail.poll()) == aid(1)  # no fragment: ids() fails on any quarantined line
    tail.close()
    with log.open("ab") as fh:
        fh.write(line(2))
    assert ids(FileTail(str(log), saved).poll())[-1:] == aid(2)  # the position still fits


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


def test_a_big_file_is_read_a_poll_budget_at_a_time_and_rotation_waits_for_it(tmp_path):
    """Followed from its start, a file of many GB was read whole into one poll's batches.
    Each poll now stops at ``poll_bytes`` (``behind`` says more is waiting), every line
    still comes once and in order, and a rename rotation finishes the old file first,
    however many polls that takes."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(line(i) for i in range(40)))
    size = len(line(0))
    tail = FileTail(str(log), batch_bytes=3 * size, poll_bytes=7 * size)
    got, polls = [], 0
    while True:
        batches = tail.poll()
        polls += 1
        assert sum(b.nbytes for b in batches) <= 9 * size  # the budget plus one batch
        got += ids(batches)
        if not tail.behind:
            break
    assert got == aid(*range(40)) and polls > 4

    with log.open("ab") as fh:
        fh.write(b"".join(line(i) for i in range(40, 70)))
    log.rename(tmp_path / "audit.log.1")
    log.write_bytes(line(70))
    got = []
    while True:
        got += ids(tail.poll())
        if not tail.behind:
            break
    assert got == aid(*range(40, 71))


def test_only_a_regular_file_can_be_followed(tmp_path):
    """/dev/zero (a device) was read without end until memory ran out; a folder failed
    after the lease was taken. A file that does not exist yet is fine: the API server may
    create it later."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, what in [
        ("/dev/zero", "not a regular file"),
        (fifo, "not a regular file"),
        (tmp_path, "a folder"),
    ]:
        with pytest.raises(InputNotFound, match=what):
            check_tailable(str(path))
    check_tailable(str(tmp_path / "not-yet.log"))
    (tmp_path / "audit.log").write_bytes(line(0))
    check_tailable(str(tmp_path / "audit.log"))


@pytest.mark.parametrize("mark_bytes, mark", [(-5, "ab"), ("x", "ab"), (10**9, "ab"), (8, 7)])
def test_a_damaged_stored_mark_falls_back_to_the_size_check(tmp_path, mark_bytes, mark):
    """A negative length made the check read with a negative size (a ValueError out of
    every poll); any mark that cannot be ours is ignored."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(0) + line(1))
    first = FileTail(str(log))
    assert ids(first.poll()) == aid(0, 1)
    stored = {**first.position.to_dict(), "mark_bytes": mark_bytes, "mark": mark}
    first.close()
    with log.open("ab") as fh:
        fh.write(line(2))
    again = FileTail(str(log), TailPosition.from_dict(stored))
    assert ids(again.poll()) == aid(2)


def _age(path, seconds: int) -> None:
    """Set a file's modification time ``seconds`` back: the order rotations were made in."""
    when = os.stat(path).st_mtime_ns - seconds * 10**9
    os.utime(path, ns=(when, when))


@pytest.mark.parametrize("resumed", [False, True])
def test_two_rotations_in_between_lose_neither_file(tmp_path, resumed, caplog):
    """Rotated twice while the watch was down (or between two polls): it read the rest of
    the first rotated file, then the current file, and the file rotated in between was
    never read (found by review). Every rotation newer than the one read is read first,
    oldest first."""
    caplog.set_level("INFO", logger="detector.sources.tail")
    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0)
    if resumed:
        saved = TailPosition.from_dict(tail.position.to_dict())
        tail.close()
    with log.open("ab") as fh:
        fh.write(line(1))
    os.rename(log, tmp_path / "audit.log.1")  # logrotate: .1 is the newest rotation
    log.write_bytes(line(2) + line(3))
    os.rename(tmp_path / "audit.log.1", tmp_path / "audit.log.2")
    os.rename(log, tmp_path / "audit.log.1")
    log.write_bytes(line(4))
    _age(tmp_path / "audit.log.2", 120)
    _age(tmp_path / "audit.log.1", 60)
    if resumed:
        tail = FileTail(str(log), saved)
    got = drained(tail)
    assert got == aid(1, 2, 3, 4)
    assert tail.poll() == []
    assert "audit.log.1, rotated after the file before it" in caplog.text


def test_copytruncate_seen_live_reads_the_rest_from_the_copy(tmp_path):
    """Copied and truncated between two polls: the lines written after the last poll and
    before the copy are only in the copy; the tail read the truncated file again from its
    start and they were lost."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(0) + line(1))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0, 1)
    with log.open("ab") as fh:
        fh.write(line(2))
    (tmp_path / "audit.log.1").write_bytes(log.read_bytes())
    log.write_bytes(line(3))  # the same inode, truncated and written again
    assert ids(tail.poll()) == aid(2, 3)


@pytest.mark.parametrize("planted", ["other name", "link"])
def test_only_the_log_s_own_rotations_are_read(tmp_path, planted, caplog):
    """Any file in the folder that held the last line read was taken as the rotation, the
    newest first: a copy under another name was read as the log's history (found by
    review). A link named like a rotation, pointing anywhere, is not followed either."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    saved = checkpointed(log, 0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    forged = (elsewhere if planted == "link" else tmp_path) / "notes.txt"
    forged.write_bytes(line(0) + line(66))  # what was read, then lines nobody logged
    if planted == "link":
        (tmp_path / "audit.log.1").symlink_to(forged)
    log.unlink()
    log.write_bytes(line(1))
    assert ids(FileTail(str(log), saved).poll()) == aid(1)
    assert "are not read" in caplog.text


def test_the_mark_after_a_long_line_is_the_end_of_that_line(tmp_path):
    """The rest of a line too long, passed over, set the mark to the bytes of it the last
    read got (here the 3 bytes `"}` and a line break, which end every audit line): a file
    rewritten in place with the same 3 bytes before the old offset was not seen as
    rewritten, and its lines before that offset were never read (found by review)."""
    from detector.events.normalize import MAX_LINE_BYTES

    log = tmp_path / "audit.log"
    log.write_bytes(b'{"kind":"Event","blob":"' + b"y" * (MAX_LINE_BYTES + 10))
    tail = FileTail(str(log))
    while tail.poll() or tail.behind:
        pass
    with log.open("ab") as fh:
        fh.write(b'"}\n')
    assert tail.poll() == []
    offset = tail.position.offset
    new = line(1) + line(2)
    pad = b'{"kind":"Event","pad":"'
    filler = pad + b"z" * (offset - len(new) - len(pad) - 3) + b'"}\n'
    with log.open("r+b") as fh:  # the same inode, rewritten to the same length
        fh.truncate(0)
        fh.write(new + filler)
    assert os.stat(log).st_size == offset
    batches = tail.poll()
    lines = [b.lines for b in batches]
    got = [
        normalize_lines(x, positions=b.positions, source=b.source, cluster="c")
        for x, b in zip(lines, batches, strict=True)
    ]
    assert [a for r in got for a in r.events["audit_id"].to_list()] == aid(1, 2)


def test_a_later_rotation_is_read_when_the_checkpoint_s_file_is_gone(tmp_path, caplog):
    """logrotate's compress + delaycompress (Debian's default), two rotations while the
    watch was down: the file of the checkpoint is now audit.log.2.gz, and the plain
    audit.log.1 after it was never read either (found by review). What the compressed
    file held after the checkpoint is said to be lost; the later rotation is read."""
    import gzip

    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    _age(log, 600)  # the checkpoint, ten minutes ago
    saved = checkpointed(log, 0)
    with log.open("ab") as fh:
        fh.write(line(1))
    (tmp_path / "audit.log.2.gz").write_bytes(gzip.compress(log.read_bytes()))
    log.unlink()
    (tmp_path / "audit.log.1").write_bytes(line(2) + line(3))
    log.write_bytes(line(4))
    _age(tmp_path / "audit.log.2.gz", 120)
    _age(tmp_path / "audit.log.1", 60)
    resumed = FileTail(str(log), saved)
    assert ids(resumed.poll()) + ids(resumed.poll()) == aid(2, 3, 4)
    assert "are not read" in caplog.text


def test_copytruncate_then_a_rename_between_two_polls_loses_nothing(tmp_path):
    """logrotate's copytruncate, then the API server's own rotation, both between two
    polls: the file held open was finished from its old offset, past the end of what it
    now holds, and the copy and the file's new lines were lost (found by review)."""
    log = tmp_path / "audit.log"
    tail = following(log, 0)
    with log.open("ab") as fh:
        fh.write(line(1))
    (tmp_path / "audit.log.1").write_bytes(log.read_bytes())  # copytruncate's copy
    log.write_bytes(line(2))  # truncated in place, written again
    _age(tmp_path / "audit.log.1", 60)
    os.rename(log, tmp_path / "audit-2026-12-02T06-00-00.000.log")  # then renamed
    log.write_bytes(line(3))
    got = drained(tail)
    assert got == aid(1, 2, 3)


def test_a_checkpoint_at_byte_0_then_copytruncate_reads_the_copy(tmp_path):
    """A checkpoint at byte 0 (a first run on an empty log, a quiet cluster) has no line
    to find a copy by: logrotate's copy of what was written next was never read, and
    nothing said so (found by review). The rotations modified since the checkpoint are."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    first = FileTail(str(log))
    assert first.poll() == []
    saved = TailPosition.from_dict(first.position.to_dict())
    assert saved.offset == 0
    first.close()
    _age(log, 60)  # the checkpoint was a minute ago
    saved = TailPosition.from_dict({**saved.to_dict(), "mtime_ns": os.stat(log).st_mtime_ns})
    log.write_bytes(line(0) + line(1))
    (tmp_path / "audit.log.1").write_bytes(log.read_bytes())
    with log.open("r+b") as fh:
        fh.truncate(0)
        fh.write(line(2))
    resumed = FileTail(str(log), saved)
    assert ids(resumed.poll()) + ids(resumed.poll()) == aid(0, 1, 2)


@pytest.mark.parametrize("planted", ["a FIFO", "a link to /dev/zero"])
def test_the_log_replaced_by_what_is_not_a_regular_file_is_not_read(tmp_path, planted, caplog):
    """Checked only at start, the path was opened as found at each rotation: a FIFO there
    hung the watch for good (a stop could not drain it), a link to /dev/zero was read
    128 MB a poll for ever (found by review). It is passed over, said once, until a
    regular file is there again."""
    import signal

    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0)
    os.rename(log, tmp_path / "audit.log.1")
    if planted == "a FIFO":
        os.mkfifo(log)
    else:
        log.symlink_to("/dev/zero")

    def hung(*_):  # a watchdog, not a wait: the bug is a poll that never returns
        raise TimeoutError("poll blocked on the path")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        assert tail.poll() == [] and tail.poll() == []
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert caplog.text.count("not a regular file now") == 1
    log.unlink()
    log.write_bytes(line(1))
    assert ids(tail.poll()) == aid(1)


def test_only_names_a_rotation_takes_are_rotations(tmp_path):
    """``audit.log.bak`` and ``audit-webhook.log`` (another log beside it), modified after
    a rotation, were read whole as rotations of audit.log (found by review)."""
    from detector.sources.tail import rotation_names

    names = rotation_names("audit.log")
    for name in ["audit.log.1", "audit.log.12", "audit.log-20261201", "audit-20261201.log",
                 "audit-2026-12-01T06-00-00.000.log", "audit.log-2026120106",
                 "audit.log.2026-12-01", "audit.1.log"]:  # fmt: skip
        assert names.fullmatch(name), name
    for name in ["audit.log", "audit.log.bak", "audit-webhook.log", "audit.log.1.gz",
                 "audit.log-20261201.gz", "xaudit.log.1", "audit.log.1/../x"]:  # fmt: skip
        assert not names.fullmatch(name), name

    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    tail = FileTail(str(log))
    assert ids(tail.poll()) == aid(0)
    os.rename(log, tmp_path / "audit.log.1")
    for other in ("audit.log.bak", "audit-webhook.log"):
        (tmp_path / other).write_bytes(line(50) + line(51))
    log.write_bytes(line(1))
    assert ids(tail.poll()) == aid(1)


def test_lines_after_a_hole_of_nul_bytes_are_kept(tmp_path):
    """copytruncate under a writer that does not append (the API server's own log writer
    opens its file without O_APPEND): it goes on at its old offset, so the truncated file
    starts with a hole of NUL bytes, and the event after it was quarantined as invalid
    JSON (found by review). NUL padding a crash left at a file's end, then appended to,
    is the same."""
    log = tmp_path / "audit.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)  # no O_APPEND
    try:
        os.write(fd, line(0) + line(1))
        tail = FileTail(str(log))
        assert ids(tail.poll()) == aid(0, 1)
        (tmp_path / "audit.log.1").write_bytes(log.read_bytes())
        os.truncate(log, 0)
        os.write(fd, line(2) + b"\0" * 4096)  # after the hole; then a crash's padding
    finally:
        os.close(fd)
    with log.open("ab") as fh:
        fh.write(line(3))
    got = drained(tail)  # ids() fails on any quarantined line
    assert got == aid(2, 3)


def test_lines_copied_away_before_any_was_read_are_read_from_the_copy(tmp_path):
    """Nothing read yet of the log (a quiet cluster: it was empty at the last poll), then
    written, copied and truncated before the next poll: there is no line to find the
    copy by, and its lines were lost (found by a fuzzer in review). A rotation modified
    since the last poll holds them."""
    log = tmp_path / "audit.log"
    log.write_bytes(b"")
    tail = FileTail(str(log))
    assert tail.poll() == []
    _age(log, 60)  # the last poll saw it a minute ago
    tail.poll()
    log.write_bytes(line(0) + line(1))
    (tmp_path / "audit.log.1").write_bytes(log.read_bytes())
    log.write_bytes(b"")  # truncated in place
    got = drained(tail)
    assert got == aid(0, 1)
    with log.open("ab") as fh:
        fh.write(line(2))
    assert ids(tail.poll()) == aid(2)  # and the copy is not read again


def test_a_first_run_s_file_copied_and_then_renamed_is_read_with_its_copy(tmp_path):
    """Stored before its first step (nothing read), the log was copied and truncated,
    written, then renamed: the re-run found the stored file by its inode and read it,
    and never the copy before it (found by review). Every rotation modified since the
    checkpoint and the stored file are read, oldest first."""
    log = tmp_path / "audit.log"
    log.write_bytes(line(0))
    _age(log, 600)
    saved = TailPosition.from_dict(FileTail(str(log)).pin().to_dict())
    assert saved.offset == 0
    with log.open("ab") as fh:
        fh.write(line(1))
    (tmp_path / "audit.log.2").write_bytes(log.read_bytes())  # copytruncate's copy
    _age(tmp_path / "audit.log.2", 300)
    with log.open("r+b") as fh:
        fh.truncate(0)
        fh.write(line(2))
    _age(log, 120)
    os.rename(log, tmp_path / "audit.log.1")
    log.write_bytes(line(3))
    resumed = FileTail(str(log), saved)
    got = drained(resumed)
    assert got == aid(0, 1, 2, 3)


def test_a_rotation_while_a_poll_catches_up_is_read_before_the_newest_file(tmp_path, monkeypatch):
    """A poll stated the log, read the rotated files (seconds, catching up), then opened
    the path again: rotated once more in between, the file that was current was never
    read (found by a kill soak in review). The rotation is made here at the moment the
    poll has read the rotated file (an in-process stand-in for the API server: no
    server can be timed to that point)."""
    log = tmp_path / "audit.log"
    tail = following(log, 0)
    with log.open("ab") as fh:
        fh.write(line(1))
    os.rename(log, tmp_path / "audit.log.1")
    log.write_bytes(line(2))  # current at the poll's start
    real, fired = FileTail._open_first, []

    def rotated_meanwhile(self, candidates, why):
        opened = real(self, candidates, why)
        if not opened and not fired:  # the rotated file read: the writer rotates again
            fired.append(1)
            os.rename(tmp_path / "audit.log.1", tmp_path / "audit.log.2")
            os.rename(log, tmp_path / "audit.log.1")
            log.write_bytes(line(3))
        return opened

    monkeypatch.setattr(FileTail, "_open_first", rotated_meanwhile)
    got = drained(tail)
    assert got + ids(tail.poll()) == aid(1, 2, 3)


def test_a_log_that_is_not_there_yet_is_said_and_an_empty_path_refused(tmp_path, caplog):
    """`watch --tail missing.log --once` said "0 events", exit 0, without a word, and
    `--tail ''` did the same (found by review). A file not there yet is followed when it
    appears (the API server may create it later), with a warning; an empty path is no file."""
    import logging

    missing = str(tmp_path / "audit.log")
    with caplog.at_level(logging.WARNING, logger="detector.sources.tail"):
        check_tailable(missing)
    assert f"{missing} does not exist yet" in caplog.text
    with pytest.raises(InputNotFound, match="--tail is empty"):
        check_tailable(" ")
