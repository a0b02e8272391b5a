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
