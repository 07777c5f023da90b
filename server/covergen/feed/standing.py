"""Standing covers: one title-independent cover per style, kept in memory, for fallbacks.

At start-up and after every ReloadStyles, `StandingCovers.refresh` paints each regional style
and the default (base) style once, at the server's default size, steps and guidance, with a
neutral title and the style at its card's default weight, on the engine's BACKGROUND priority.
A style whose adapter fails here is marked unusable in `StyleHealth` (ListStyles shows why).
Pixels are kept; `StandingCover.encoded` encodes (and resizes, if the caller asked another
size) per format on demand, memoised.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from covergen.covers import AppliedAdapter, CoverMaker, encode_image
from covergen.engine.denoise import BACKGROUND, Priority
from covergen.errors import AdapterRejected
from covergen.feed.health import StyleHealth
from covergen.regions import Resolution, StyleWeight
from covergen.requests import CoverRequest

log = logging.getLogger(__name__)

STANDING_TITLE = "local news today"  # plain ASCII words reach every style's prompt as they are
DEFAULT_STYLE = "default"
_MAX_ENCODED = 64  # memoised (size, format) encodings per standing cover


@dataclass
class StandingCover:
    """One style's standing cover: pixels and what painted them."""

    style: str
    pixels: np.ndarray  # [height, width, 3] uint8
    adapters: tuple[AppliedAdapter, ...]
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    _encoded: OrderedDict[tuple[int, int, str], bytes] = field(default_factory=OrderedDict, repr=False)

    def encoded(self, width: int, height: int, fmt: str) -> bytes:
        """The cover as `fmt` at width x height (resized with Lanczos when that differs)."""
        key = (width, height, fmt)
        image = self._encoded.get(key)
        if image is None:
            pixels = self.pixels
            if pixels.shape[:2] != (height, width):
                pixels = np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))
            image = encode_image(pixels, fmt)
            self._encoded[key] = image
            if len(self._encoded) > _MAX_ENCODED:
                self._encoded.popitem(last=False)
        return image


class StandingCovers:
    """The standing cover of every regional style and the default, by style name."""

    def __init__(self, maker: CoverMaker, health: StyleHealth) -> None:
        self.maker = maker
        self.health = health
        self._covers: dict[str, StandingCover] = {}

    def get(self, style: str) -> StandingCover | None:
        return self._covers.get(style)

    def styles(self) -> tuple[str, ...]:
        return tuple(sorted(self._covers))

    async def refresh(self) -> None:
        """Paint every regional and base style once (concurrently, so the engine batches them)."""
        cards = [card for card in self.maker.library if card.kind in ("regional", "base")]
        results = await asyncio.gather(*(self._paint(card.name) for card in cards), return_exceptions=True)
        covers: dict[str, StandingCover] = {}
        for card, result in zip(cards, results, strict=True):
            if isinstance(result, AdapterRejected):
                path = self.maker.library.adapter_path(card)
                self.health.mark_unusable(card.name, str(result), path if isinstance(path, Path) else None)
            elif isinstance(result, BaseException):
                log.warning("standing cover of style %s failed: %s", card.name, result)
            else:
                covers[card.name] = result
        self._covers = covers
        log.info("standing covers ready for %d styles: %s", len(covers), ", ".join(sorted(covers)))

    async def _paint(self, style: str) -> StandingCover:
        maker = self.maker
        card = maker.library.get(style)
        request = CoverRequest(region=DEFAULT_STYLE, title=STANDING_TITLE)
        resolution = Resolution(tag=DEFAULT_STYLE, path=(), level="default", stack=(), fallback=True)
        plan = maker.plan_stack(request, resolution, [StyleWeight(style, card.default_weight)])
        sources = maker.sources_of(plan)
        versions = await maker.painter.versions([source for source, _ in sources])
        job = maker.paint_job(plan, sources, versions, priority=Priority(BACKGROUND))
        painting = await maker.painter.paint(job)
        return StandingCover(
            style=style,
            pixels=painting.pixels,
            adapters=tuple(AppliedAdapter(s.name, versions[s.name], w) for s, w in sources),
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            seed=plan.seed,
            steps=plan.settings.steps,
            guidance_scale=plan.settings.guidance_scale,
        )
