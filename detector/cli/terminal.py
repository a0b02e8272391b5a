"""What the CLI prints goes to a terminal: characters a terminal would act on are shown.

Strings from the lake are written by whoever sent the API server a request: a user agent,
a resource name from a URL path. An escape sequence in one, printed as is, would move an
analyst's cursor, rewrite or hide lines, retitle the window or plant a link. rich strips
a few control characters (bell, backspace, carriage return) but passes ESC through.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

#: C0 and C1 controls and DEL, shown as ``\\x1b``; tab and line feed stay (our own output
#: uses them, and they move nothing but the cursor's line).
UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c not in (9, 10)}

#: :data:`UNSAFE` and line breaks and tabs too: for what must stay on one line (an error,
#: an entry of a plain listing).
ONE_LINE = UNSAFE | {10: "\\n", 13: "\\r", 9: "\\t"}


class SafeConsole(Console):
    """A rich console that shows control characters instead of sending them.

    Every string rich prints, table cells included, goes through :meth:`render_str`; the
    escapes are applied there, before markup is read, so styles still work.
    """

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(text.translate(UNSAFE), **kwargs)
