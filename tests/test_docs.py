"""Documentation stays true: every column and every command is documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from detector.cli import app
from detector.events.schema import CANONICAL_COLUMNS, QUARANTINE_COLUMNS
from detector.lake.findings_schema import FINDINGS_COLUMNS

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("column", [*CANONICAL_COLUMNS, *QUARANTINE_COLUMNS, *FINDINGS_COLUMNS])
def test_every_column_is_documented_in_schema_md(column):
    assert f"`{column}`" in (DOCS / "schema.md").read_text()


def _commands() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help_with_an_example(name):
    command = typer.main.get_command(app).commands[name]
    text = command.help or ""
    if hasattr(command, "commands"):  # a group: its subcommands carry the examples
        texts = [c.help or "" for c in command.commands.values()]
        assert texts and all(t.strip() for t in texts)
        return
    assert "Example" in text, f"`detect {name} --help` has no Example"


def test_the_readme_s_polars_reader_reads_a_lake_with_files_of_every_age(tmp_path, monkeypatch):
    """The README's snippet for reading the lake without us. Its first form failed on a lake
    whose first file read predates a column (`impersonated_groups`): polars takes the
    columns from that file and calls the newer one's an extra column (found by review)."""
    import os
    import re
    from datetime import timedelta

    import polars as pl
    from alerts_data import finding, frames

    from detector.lake import findings as store
    from detector.lake.events import Lake
    from detector.pipeline.ingest import ingest_paths
    from tests.test_lake import audit_file

    readme = (DOCS.parent / "README.md").read_text()
    (snippet,) = re.findall(r"Reading the lake without us:\n\n```python\n(.*?)```", readme, re.S)
    lake = tmp_path / "lake"
    ingest_paths([str(audit_file(tmp_path / "a.log", range(50)))], str(lake), cluster="prod")
    (new,) = (lake / "events").rglob("*.parquet")
    # a file of an older lake, in an earlier partition, without the column added since
    old_dir = lake / "events" / "cluster=prod" / "date=2026-10-01" / "hour=0"
    old_dir.mkdir(parents=True)
    old = old_dir / "part-old.parquet"
    pl.read_parquet(new).drop("impersonated_groups").write_parquet(old)
    os.utime(old, (1, 1))  # written long before
    at = pl.read_parquet(new)["event_time"][0]
    found = frames([finding("alice", at, detector="rule:pod-exec")])
    store.write_range(Lake(str(lake)), "rules", at, at + timedelta(minutes=10), *found)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # our own README's code, nothing else
    events = scope["events"].collect()
    assert events.height == 100 and events["impersonated_groups"].null_count() == 100
    assert set(events["cluster"]) == {"prod"}
    assert scope["findings"].collect()["principal"].to_list() == ["alice"]


def _leaves() -> list[tuple[str, object]]:
    out = []
    for name, command in typer.main.get_command(app).commands.items():
        subs = getattr(command, "commands", None)
        if subs:
            out += [(f"{name} {sub}", c) for sub, c in subs.items()]
        else:
            out.append((name, command))
    return sorted(out, key=lambda item: item[0])


@pytest.mark.parametrize(("name", "command"), _leaves(), ids=[n for n, _ in _leaves()])
def test_every_command_says_its_exit_codes(name, command):
    """`demo`, `simulate`, `suppressions`, `evaluate` and the `findings` and `incidents`
    subcommands named none (found by review): a cron job's author reads them there."""
    assert "Exit codes" in (command.help or ""), f"`detect {name} --help` names no exit codes"
