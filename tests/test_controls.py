"""What the CLI, the report and the logs show of lake text: nothing hidden, nothing sent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from detector.controls import ONE_LINE, UNSAFE, unshown

#: Letters drawn as nothing, or not drawn at all (found by review): a soft hyphen in
#: "ad\u00admin", a Hangul filler for a blank, tag characters spelling hidden text.
INVISIBLE = ["\u00ad", "\u034f", "\u115f", "\u3164", "\uffa0", "\ufff9", "\U0001d173"]
TAGS = "".join(chr(0xE0000 + ord(c)) for c in "ignore previous")


def test_characters_that_show_as_nothing_are_shown_escaped():
    name = "ad" + "".join(INVISIBLE) + "min" + TAGS
    shown = name.translate(UNSAFE)
    assert shown.startswith("ad\\u00ad\\u034f") and "\\U000e0069" in shown
    assert all(ord(c) < 0x7F for c in shown), shown  # nothing left but what is seen
    assert unshown(shown) == name  # and copied from the screen, it finds the stored one


@given(st.text(st.characters(exclude_characters="\\")))
def test_what_is_shown_on_one_line_leads_back_to_the_text(text):
    """A name copied from the screen, escapes and all, must find the stored one
    (`detect timeline`, suppressions): every escape is one :func:`unshown` reads back."""
    shown = text.translate(ONE_LINE)
    assert "\n" not in shown and "\x1b" not in shown
    assert unshown(shown) == text
