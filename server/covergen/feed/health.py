"""Which styles cannot be used now, why, and the one warning an operator gets for each.

A style is unusable when its adapter file is missing, is rejected when read (not safetensors,
truncated) or does not fit the base model (trained for another base). Its regions then get
fallback covers with reason `adapter_unavailable` when they call with a budget, ListStyles shows
`usable: false` with the reason, and `covergen_adapter_unavailable_total{style}` counts each
request that met it. The warning is logged once per style until a reload clears the record.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from covergen.metrics import Metrics

log = logging.getLogger(__name__)


class StyleHealth:
    """Unusable styles and their reasons; cleared by `reset` after ReloadStyles."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._unusable: dict[str, str] = {}
        self._lock = threading.Lock()

    def reason(self, style: str) -> str | None:
        """Why `style` cannot be used, or None when it can."""
        with self._lock:
            return self._unusable.get(style)

    def first_unusable(self, styles: list[str]) -> tuple[str, str] | None:
        """The first of `styles` that is unusable, with its reason."""
        with self._lock:
            for style in styles:
                if style in self._unusable:
                    return style, self._unusable[style]
        return None

    def mark_unusable(self, style: str, problem: str, path: Path | None = None) -> None:
        """Record that `style`'s adapter failed; warns once with the fix."""
        with self._lock:
            known = style in self._unusable
            self._unusable[style] = problem
        if not known:
            where = f" at {path}" if path is not None else ""
            log.warning(
                "style %s is unusable: %s. Its regions get fallback covers (reason adapter_unavailable) "
                "until it is fixed: put a LoRA adapter trained for this base model%s, then call "
                "AdminService.ReloadStyles",
                style, problem, where,
            )  # fmt: skip

    def count(self, style: str) -> None:
        """Count one request that needed `style` while it was unusable."""
        self._metrics.count_adapter_unavailable(style)

    def reset(self) -> None:
        """Forget every record (after a reload: files may have been fixed)."""
        with self._lock:
            self._unusable.clear()
