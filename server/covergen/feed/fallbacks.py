"""The best cover the server holds now for a request whose own cover is not ready.

In order:
1. a cached cover of the same title (same variant, size, steps, format, themes) for a broader
   level of the region's path: its province, then its macro-region, then the default stack;
2. the standing cover of the region's style (the first style of its resolved stack);
3. the default style's standing cover.

Looking up 1 costs one Redis GET per level and never loads an adapter: versions come from the
registry when resident, else from the file's hash (memoised by size and mtime).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

from covergen.adapters.files import file_version
from covergen.adapters.registry import AdapterSource
from covergen.cache import CacheOutcome, ResultCache
from covergen.covers import AppliedAdapter, Cover, CoverMaker, Plan
from covergen.errors import CovergenError
from covergen.feed.standing import DEFAULT_STYLE, StandingCovers
from covergen.regions import RegionEntry, RegionResolver
from covergen.requests import FORMATS, CoverRequest

log = logging.getLogger(__name__)

_LEVELS_BY_PATH_LENGTH = {3: ("city", "province", "macro_region"), 2: ("province", "macro_region"), 1: ("macro_region",)}


def broader_tags(resolver: RegionResolver, path: tuple[str, ...]) -> list[str]:
    """Tags that resolve to each broader level of `path` (province code, macro-region name), then
    "default" (an unknown tag: the default stack). `path` runs from the tag outwards."""
    levels = _LEVELS_BY_PATH_LENGTH.get(len(path), ())
    by_name: dict[tuple[str, str], RegionEntry] = {(e.level, e.name): e for e in resolver.entries()}
    tags: list[str] = []
    for level, name in list(zip(levels, path, strict=False))[1:]:
        entry = by_name.get((level, name))
        if entry is not None:
            tags.append(entry.code or entry.name)
    tags.append(DEFAULT_STYLE)
    return tags


class _FileVersions:
    """Adapter file versions memoised by (path, size, mtime): hashing a 100 MB file per lookup
    would eat a feed budget."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[int, int, str]] = {}

    def of(self, path: Path) -> str:
        try:
            stat = os.stat(path)
        except OSError:
            return ""
        known = self._known.get(path)
        if known is not None and known[:2] == (stat.st_size, stat.st_mtime_ns):
            return known[2]
        version = file_version(path)
        self._known[path] = (stat.st_size, stat.st_mtime_ns, version)
        return version


class FallbackChooser:
    """Picks and builds the fallback `Cover` for a request."""

    def __init__(self, maker: CoverMaker, cache: ResultCache | None, standing: StandingCovers) -> None:
        self.maker = maker
        self.cache = cache
        self.standing = standing
        self._files = _FileVersions()

    def version_of(self, source: AdapterSource) -> str:
        """The version a request would paint `source` with, without loading it."""
        registry = self.maker.registry
        current = registry.current(source.name) if registry is not None else None
        return current.version if current is not None else self._files.of(source.path)

    async def choose(self, request: CoverRequest, plan: Plan, reason: str, arm: str) -> Cover | None:
        """The best fallback for `request` (planned as `plan`), or None when none is held."""
        started = time.perf_counter()
        cover = await self._broader_cached(request, plan, reason, arm)
        if cover is None:
            regional = next((i.style for i in plan.resolution.stack if i.weight > 0), DEFAULT_STYLE)
            style = DEFAULT_STYLE if arm == "generic" or plan.tone else regional  # tone guard: neutral
            cover = self._standing(plan, style, reason, arm) or self._standing(plan, DEFAULT_STYLE, reason, arm)
        if cover is not None:
            cover.timings_ms["total_ms"] = (time.perf_counter() - started) * 1000
        return cover

    async def _broader_cached(self, request: CoverRequest, plan: Plan, reason: str, arm: str) -> Cover | None:
        if self.cache is None:
            return None
        maker = self.maker
        own_key = self.key_of(plan)
        seen = {own_key}
        for tag in broader_tags(maker.resolver, plan.resolution.path):
            try:
                broader = maker.plan(replace(request, region=tag))
            except CovergenError:  # e.g. a weight override naming an adapter this level lacks
                continue
            key = self.key_of(broader)
            if key in seen:
                continue
            seen.add(key)
            cached = await self.cache.peek(key)
            if cached is not None:
                applied = self._applied(broader)
                return self._cover(plan, broader, cached.image, applied, reason, arm, "cache")
        return None

    def _applied(self, plan: Plan) -> tuple[AppliedAdapter, ...]:
        return tuple(AppliedAdapter(s.name, self.version_of(s), w) for s, w in self.maker.sources_of(plan))

    def key_of(self, plan: Plan) -> str:
        """The cache key of `plan`, with adapter versions from `version_of` (nothing loaded)."""
        return self.maker.key_of(plan, self._applied(plan))

    def _standing(self, plan: Plan, style: str, reason: str, arm: str) -> Cover | None:
        standing = self.standing.get(style)
        if standing is None:
            return None
        settings = plan.settings
        image = standing.encoded(settings.width, settings.height, settings.format)
        painted = replace(
            plan,
            prompt=standing.prompt,
            negative_prompt=standing.negative_prompt,
            seed=standing.seed,
            settings=replace(settings, steps=standing.steps, guidance_scale=standing.guidance_scale),
        )
        return self._cover(plan, painted, image, standing.adapters, reason, arm, "standing")

    def _cover(
        self,
        asked: Plan,
        painted: Plan,
        image: bytes,
        adapters: tuple[AppliedAdapter, ...],
        reason: str,
        arm: str,
        served_by: str,
    ) -> Cover:
        """A fallback Cover: the reader's region path, and what actually painted the image."""
        settings = asked.settings
        return Cover(
            image=image,
            mime_type=FORMATS[settings.format],
            width=settings.width,
            height=settings.height,
            region_path=asked.resolution.path or ("default",),
            region_fallback=asked.resolution.fallback,
            adapters=adapters,
            prompt=painted.prompt,
            negative_prompt=painted.negative_prompt,
            seed=painted.seed,
            steps=painted.settings.steps,
            guidance_scale=painted.settings.guidance_scale,
            cache_outcome=CacheOutcome.HIT if served_by == "cache" else None,
            base_model=self.maker.base_model_id,
            request_id=uuid.uuid4().hex[:16],
            style=adapters[0].name if adapters else DEFAULT_STYLE,
            timings_ms={"queue_ms": 0.0, "generate_ms": 0.0, "encode_ms": 0.0},
            served_by=served_by,
            arm=arm,
            fallback=True,
            fallback_reason=reason,
            tone=asked.tone,
        )
