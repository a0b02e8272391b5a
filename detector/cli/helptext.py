"""Command help written as wrapped docstrings, shown reflowed to the terminal's width.

Typer's rich help keeps a docstring's single line breaks: source lines wrapped at 88
columns came out ragged in an 80-column terminal (a line, then a word alone on the next).
Each paragraph is joined into one line here and the terminal wraps it; a paragraph
marked ``\\b`` (examples) and list items keep their lines, as click's own help does.
"""

from __future__ import annotations

import inspect
import re

from typer.models import CommandInfo, TyperInfo

#: A line that starts a list item: it stays on a line of its own.
_ITEM = re.compile(r"^(?:[-*]|\d+[.)])\s")


def reflow(text: str) -> str:
    r"""``text`` with each paragraph's lines joined; ``\b`` blocks and list items kept;
    square brackets escaped (rich took ``[[sinks]]`` for markup and showed ``[]``).

    A ``\b`` block follows the paragraph before it on the next line: its marker line
    shows as the one blank line between them, and keeps the block's indentation from
    typer's dedent (an unindented line before an indented block).

    Examples
    --------
    >>> reflow("One line\nwrapped.\n\n- an item\n  going on\n- another [x]")
    'One line wrapped.\n\n- an item going on\n- another \\[x]'
    >>> reflow("Example:\n\n\b\n    detect demo\n    detect score")
    'Example:\n\x08\n    detect demo\n    detect score'
    """
    out = ""
    for paragraph in inspect.cleandoc(text).replace("[", "\\[").split("\n\n"):
        if paragraph.startswith("\b\n"):  # kept as written
            out += ("\n" if out else "") + paragraph
            continue
        lines: list[str] = []
        for line in paragraph.split("\n"):
            if lines and not _ITEM.match(line.strip()):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        out += ("\n\n" if out else "") + "\n".join(lines)
    return out


def _reflowed(text: object) -> object:
    """``text`` reflowed if it is a help text; typer's unset placeholders as they are."""
    return reflow(text) if isinstance(text, str) and text else text


def _reflow_doc(fn: object) -> None:
    if callable(fn) and isinstance(fn.__doc__, str):
        fn.__doc__ = reflow(fn.__doc__)


def reflow_registered(commands: list[CommandInfo], groups: list[TyperInfo]) -> None:
    """Reflow, once, the help of newly registered commands and command groups (nested
    ones included), wherever typer may take it from: an explicit help or a docstring."""
    for info in commands:
        info.help = _reflowed(info.help)  # type: ignore[assignment]
        _reflow_doc(info.callback)
    for group in groups:
        group.help = _reflowed(group.help)
        _reflow_doc(group.callback)
        sub = group.typer_instance
        if sub is None:
            continue
        sub.info.help = _reflowed(sub.info.help)
        _reflow_doc(sub.info.callback)
        if sub.registered_callback is not None:
            sub.registered_callback.help = _reflowed(sub.registered_callback.help)
            _reflow_doc(sub.registered_callback.callback)
        reflow_registered(sub.registered_commands, sub.registered_groups)
