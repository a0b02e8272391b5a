"""The lake's per-process memory of what it has read: bounded however long a process runs."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import polars as pl

from detector.lake import table as T
from detector.storage import Location


def test_schema_checks_are_remembered_for_a_bounded_number_of_files(tmp_path, monkeypatch):
    """``detect watch`` meets thousands of new files a day: the checks it remembers stay
    bounded (they grew its memory for as long as it ran), hold one copy of the schema's
    text, and a file pushed out is checked again with the same answer."""
    monkeypatch.setattr(T, "CHECKED_FILES", 3, raising=False)
    monkeypatch.setattr(T, "_checked", OrderedDict())
    loc = Location.of(str(tmp_path))
    schema = pl.Schema({"a": pl.Int64})
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"a": ["x"]}).write_parquet(bad)
    good = []
    for i in range(4):
        good.append(tmp_path / f"good{i}.parquet")
        pl.DataFrame({"a": [i]}).write_parquet(good[-1])

    def problem(path: Path) -> str | None:
        # a fresh copy of the schema each time, as each caller's table holds its own
        return T.schema_problem(loc, str(path), path.stat().st_size, pl.Schema(dict(schema)))

    assert "wrong column type" in problem(bad)
    assert [problem(p) for p in good] == [None] * 4
    assert len(T._checked) == 3
    assert len({id(key[2]) for key in T._checked}) == 1
    assert "wrong column type" in problem(bad)  # pushed out, read again: same answer
