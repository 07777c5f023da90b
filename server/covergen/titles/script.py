"""Traditional -> simplified Chinese, so one glossary, landmark table and tone list serve both.

OpenCC's `t2s` conversion (PyPI `opencc`, Apache-2.0) is built once per process on first use
(~10 ms) and shared; a converter only reads its tables, so concurrent calls are safe.
"""

from __future__ import annotations

import threading
from typing import Any

import opencc

_lock = threading.Lock()
_converter: Any = None


def to_simplified(text: str) -> str:
    """`text` with traditional characters replaced by simplified ones; other text unchanged."""
    global _converter
    if not text or text.isascii():
        return text
    if _converter is None:
        with _lock:
            if _converter is None:
                _converter = opencc.OpenCC("t2s")
    converted: str = _converter.convert(text)
    return converted
