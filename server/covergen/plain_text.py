"""The one rule for taking text from outside: NFKC, and no invisible or control characters.

Region tags, theme tags and article titles all pass through `plain_text` before anything
compares or prompts with them, so a bidi override or a zero-width joiner can neither split one
tag into two nor smuggle syntax into a prompt.
"""

from __future__ import annotations

import unicodedata


def plain_text(text: str) -> str:
    """`text` in NFKC with every category-C character removed: controls, format characters
    (bidi marks, zero-width joiners), surrogates, private use and unassigned code points."""
    normalized = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in normalized if unicodedata.category(ch)[0] != "C")
