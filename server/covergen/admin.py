"""StyleAdmin: reload the style library and warm or drop adapters while the server runs.

A reload reads styles/ into new library, resolver and prompt objects, reads every changed
adapter on the loader thread and checks it against the base model. Only when everything that
changed has passed are the new objects swapped in; a style whose new adapter fails keeps its
previous version resident and is reported as rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from covergen.adapters.registry import AdapterRegistry, AdapterSource
from covergen.covers import CoverMaker
from covergen.errors import CovergenError, StyleNotFound
from covergen.prompts import PromptBuilder
from covergen.regions import RegionResolver
from covergen.styles import StyleLibrary

log = logging.getLogger(__name__)


@dataclass
class ReloadReport:
    reloaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    style_count: int = 0


StyleLoader = Callable[[], tuple[StyleLibrary, RegionResolver, PromptBuilder]]


class StyleAdmin:
    """The operations behind AdminService."""

    def __init__(
        self,
        maker: CoverMaker,
        registry: AdapterRegistry,
        load_styles: StyleLoader,
        after_reload: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`after_reload`: run after new styles are swapped in (feed: standing covers, style health)."""
        self.maker = maker
        self.registry = registry
        self.load_styles = load_styles
        self.after_reload = after_reload
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadReport:
        async with self._lock:
            library, resolver, prompts = await asyncio.to_thread(self.load_styles)
            report = ReloadReport(style_count=len(library))
            for card in library:
                resident = self.registry.current(card.name)
                if resident is None:
                    continue  # not in use: the next request loads (and checks) the new file
                try:
                    path = library.adapter_path(card)
                    if path is None:
                        self.registry.release(card.name)
                        continue
                    weights = await asyncio.to_thread(self.registry.read, AdapterSource(card.name, path))
                except CovergenError as exc:
                    self.registry.retain(resident)
                    report.rejected.append(f"{card.name}: {exc}")
                    log.warning("reload kept the previous version of %s: %s", card.name, exc)
                    continue
                self.registry.release(card.name)
                if weights.version != resident.version:
                    self.registry.install(weights)
                    report.reloaded.append(card.name)
            self.maker.replace_styles(library, resolver, prompts)
            if self.after_reload is not None:
                await self.after_reload()
            return report

    async def load(self, style: str) -> tuple[str, float]:
        card = self.maker.library.get(style)
        path = self.maker.library.adapter_path(card)
        if path is None:
            raise StyleNotFound(f"style '{style}' has no adapter file to load")
        resident = self.registry.get_resident(style)
        if resident is not None:
            return resident.version, 0.0
        started = time.perf_counter()
        weights = (await self.registry.acquire([AdapterSource(style, path)]))[style]
        return weights.version, (time.perf_counter() - started) * 1000

    def unload(self, style: str) -> bool:
        self.maker.library.get(style)  # NOT_FOUND for unknown styles
        return self.registry.evict(style)
