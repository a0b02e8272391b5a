"""Control characters in text the tool prints: shown as ``\\x1b``, never sent.

Strings from the lake are written by whoever sent the API server a request (a user agent,
a resource name from a URL path), and errors quote what a user typed. An escape sequence
printed as is would move an analyst's cursor, rewrite or hide lines, retitle the window or
plant a link. The consoles (:mod:`detector.cli.terminal`), the error line and the text
log format all show them through these tables.
"""

from __future__ import annotations

import re

#: C0 and C1 controls and DEL, shown as ``\\x1b``; tab and line feed stay (our own output
#: uses them, and they move nothing but the cursor's line).
UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if c not in (9, 10)}
#: Characters that move or hide text without being seen: bidirectional overrides, isolates
#: and marks (a name shown reversed, "Trojan Source"; the Arabic letter mark too), zero-width
#: spaces, joiners and invisible operators, the line and paragraph separators (a line break
#: to some viewers), the byte-order mark; and letters drawn as nothing: the soft hyphen,
#: the Hangul fillers, the combining grapheme joiner, interlinear annotation marks, the
#: invisible musical formatting marks and the tag characters (text hidden in a name, read
#: by some software, not by people). Shown as ``\\u202e`` (``\\U000e0041`` past U+FFFF)
#: with the controls.
UNSAFE |= {
    c: f"\\u{c:04x}" if c <= 0xFFFF else f"\\U{c:08x}"
    for c in [
        0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E,
        *range(0x200B, 0x2010), 0x2028, 0x2029, *range(0x202A, 0x202F),
        *range(0x2060, 0x2065), *range(0x2066, 0x206A), 0x3164, 0xFEFF, 0xFFA0,
        *range(0xFFF9, 0xFFFC), *range(0x1D173, 0x1D17B), *range(0xE0000, 0xE0080),
    ]
}  # fmt: skip

#: :data:`UNSAFE` and line breaks and tabs too: for what must stay on one line (an error,
#: a log record, an entry of a plain listing).
ONE_LINE = UNSAFE | {10: "\\n", 13: "\\r", 9: "\\t"}

_SHOWN = {shown: chr(c) for c, shown in ONE_LINE.items()}
_SHOWN_RE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[nrt])")


def unshown(text: str) -> str:
    """What :data:`ONE_LINE` showed as ``text``: the characters it escaped put back, so a
    name copied from the screen, escapes and all, finds the one stored. Escapes it never
    writes (``\\x41``) are left as typed."""
    return _SHOWN_RE.sub(lambda m: _SHOWN.get(m.group(0), m.group(0)), text)


def holds_control_characters(text: str) -> bool:
    """Whether text a user gives as a setting holds a C0 control character or DEL (a line
    break, NUL, ESC): no path, name or secret source a user means to give does."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


#: :data:`UNSAFE` and what XML cannot hold at all (U+FFFE, U+FFFF, lone surrogates): for
#: text drawn into SVG, whose renderer stops the whole process on a NUL in a label.
NOT_XML = (
    UNSAFE
    | {0xFFFE: "\\ufffe", 0xFFFF: "\\uffff"}
    | {c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)}
)


#: The longest lake text (a user agent, a name) a line of the CLI quotes; JSON has it whole.
TEXT_CHARS = 200
#: The longest line the CLI prints of lake text (a reason quoting names, a principal).
LINE_CHARS = 1000


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, its last an ellipsis where it was cut: lake
    text is as long as a client made it (a user agent of 300,000 characters printed a
    line of that length under `detect timeline`)."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"
