"""The CLI's consoles: control characters are shown (:mod:`detector.controls`), not sent.

rich strips a few control characters (bell, backspace, carriage return) but passes ESC
through, so a user agent or a name from the lake could drive an analyst's terminal.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from detector.controls import LINE_CHARS, ONE_LINE, UNSAFE, clip


class SafeConsole(Console):
    """A rich console that shows control characters instead of sending them.

    Every string rich prints, table cells included, goes through :meth:`render_str`; the
    escapes are applied there, before markup is read, so styles still work. Emoji codes
    are off: ``:warning: boss`` in a lake name was shown as an emoji, not as stored, and
    could not be pasted back into a command (found by review); we print none of our own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("emoji", False)
        super().__init__(*args, **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(text.translate(UNSAFE), **kwargs)

    def line(self, text: str, **kwargs: Any) -> None:
        """Print ``text`` as one line, markup and emoji codes off (``:warning:`` in a user
        agent printed as an emoji): a line break or tab in what it quotes
        from the lake is shown (``\\n``), so a user agent cannot draw a line of its own (a
        forged event line under `detect findings show`, lined up with the real ones). Cut
        at :data:`LINE_CHARS` (a reason quoting a name of 5,000 characters, a principal of
        100,000): ``--format json`` has the whole text."""
        text = clip(text.translate(ONE_LINE), LINE_CHARS) or ""
        self.print(text, markup=False, emoji=False, **kwargs)
