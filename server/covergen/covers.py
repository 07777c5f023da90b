"""CoverMaker: from (region, title) to a finished, cached cover. The one object the servicer calls.

CoverPlanner.plan (planning.py: validate, region, stack, tone, prompt, seed)
  -> adapter versions -> cache key -> ResultCache.get_or_generate(Painter.paint -> encode image)

The painter (painters.py) is the local engine by default, or a Ray Serve painter deployment.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from covergen.adapters.registry import AdapterRegistry, AdapterSource
from covergen.cache import CachedCover, CacheOutcome, ResultCache, cache_key
from covergen.engine.batcher import Engine
from covergen.engine.denoise import Priority
from covergen.painters import LocalPainter, Painter, PaintJob, StackAdapter
from covergen.planning import CoverPlanner, Plan
from covergen.prompts import PromptBuilder
from covergen.regions import RegionResolver, Resolution, StyleWeight
from covergen.requests import FORMATS, CoverRequest, GenerationSettings, Limits
from covergen.styles import StyleLibrary

__all__ = ["AppliedAdapter", "Cover", "CoverMaker", "Plan", "encode_image"]


@dataclass(frozen=True)
class AppliedAdapter:
    name: str
    version: str
    weight: float


@dataclass
class Cover:
    """A finished cover and everything decided on the way to it."""

    image: bytes
    mime_type: str
    width: int
    height: int
    region_path: tuple[str, ...]
    region_fallback: bool
    adapters: tuple[AppliedAdapter, ...]
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    cache_outcome: CacheOutcome | None
    base_model: str
    request_id: str
    style: str  # the primary style, for metrics and logs
    timings_ms: dict[str, float] = field(default_factory=dict)
    served_by: str = ""  # "cache" on a hit, else the painter ("local", or a Ray painter replica id)
    arm: str = "regional"  # the A/B arm served: "regional" or "generic"
    fallback: bool = False  # a fallback stood in for the region's cover (budgeted calls only)
    fallback_reason: str = ""  # "budget", "overloaded" or "adapter_unavailable" when fallback
    tone: str = ""  # "restrained" when the tone guard applied (covergen.titles.tone), else ""

    @property
    def cache_hit(self) -> bool:
        return self.cache_outcome in (CacheOutcome.HIT, CacheOutcome.COALESCED)


class CoverMaker:
    """Turns validated requests into covers, through the cache and the engine."""

    def __init__(
        self,
        *,
        library: StyleLibrary,
        resolver: RegionResolver,
        prompts: PromptBuilder,
        registry: AdapterRegistry | None,
        engine: Engine | None,
        cache: ResultCache | None,
        limits: Limits,
        base_model_id: str,
        scheduler_name: str,
        painter: Painter | None = None,
    ) -> None:
        """`painter`: who paints misses (default: a LocalPainter over `engine` and `registry`).
        A maker whose painters are elsewhere (the Ray Serve ingress) has no engine or registry."""
        self.planner = CoverPlanner(library, resolver, prompts, limits)
        self.registry = registry
        self.engine = engine
        if painter is None:
            if engine is None or registry is None:
                raise ValueError("CoverMaker needs a painter, or an engine and a registry to paint with")
            painter = LocalPainter(engine, registry)
        self.painter: Painter = painter
        self.cache = cache
        self.base_model_id = base_model_id
        self.scheduler_name = scheduler_name
        self._max_keys = 4096
        self._keys: dict[tuple[object, ...], str] = {}  # (prompts, seed, settings, adapters) -> cache key

    # the style library and request limits live with the planner (planning.py)
    @property
    def library(self) -> StyleLibrary:
        return self.planner.library

    @property
    def resolver(self) -> RegionResolver:
        return self.planner.resolver

    @property
    def prompts(self) -> PromptBuilder:
        return self.planner.prompts

    @property
    def limits(self) -> Limits:
        return self.planner.limits

    def without_cache(self) -> CoverMaker:
        """The same maker with the result cache switched off (for checks and benchmarks)."""
        return CoverMaker(
            library=self.library,
            resolver=self.resolver,
            prompts=self.prompts,
            registry=self.registry,
            engine=self.engine,
            cache=None,
            limits=self.limits,
            base_model_id=self.base_model_id,
            scheduler_name=self.scheduler_name,
            painter=self.painter,
        )

    def replace_styles(self, library: StyleLibrary, resolver: RegionResolver, prompts: PromptBuilder) -> None:
        """Swap in a reloaded style library (admin ReloadStyles)."""
        self.planner.replace_styles(library, resolver, prompts)

    def plan(self, request: CoverRequest) -> Plan:
        """Validate and decide everything that does not need the model (CoverPlanner.plan)."""
        return self.planner.plan(request)

    def plan_stack(
        self,
        request: CoverRequest,
        resolution: Resolution,
        stack: Sequence[StyleWeight],
        settings: GenerationSettings | None = None,
    ) -> Plan:
        """The plan of `request` painted with an explicit `stack` (CoverPlanner.plan_stack)."""
        return self.planner.plan_stack(request, resolution, stack, settings)

    def sources_of(self, plan: Plan) -> list[tuple[AdapterSource, float]]:
        """The adapter files a plan paints with and their weights (CoverPlanner.sources_of)."""
        return self.planner.sources_of(plan)

    @staticmethod
    def paint_job(
        plan: Plan,
        sources: Sequence[tuple[AdapterSource, float]],
        versions: dict[str, str],
        *,
        priority: Priority,
        deadline: float | None = None,
    ) -> PaintJob:
        """The plain-data job a painter paints for `plan` (the one place a plan becomes a job)."""
        return PaintJob(
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            seed=plan.seed,
            width=plan.settings.width,
            height=plan.settings.height,
            steps=plan.settings.steps,
            guidance_scale=plan.settings.guidance_scale,
            adapters=tuple(StackAdapter(s.name, s.path, versions[s.name], w) for s, w in sources),
            deadline=deadline,
            priority=priority,
        )

    def key_of(self, plan: Plan, applied: Sequence[AppliedAdapter]) -> str:
        """The result-cache key of a plan painted with `applied` (adapter versions included)."""
        memo = (plan.prompt, plan.negative_prompt, plan.seed, plan.settings, tuple(applied))
        key = self._keys.get(memo)
        if key is None:  # canonical JSON + sha256 per hit, otherwise
            key = self._keys[memo] = self._cache_key(plan, applied)
            if len(self._keys) > self._max_keys:
                del self._keys[next(iter(self._keys))]
        return key

    def _cache_key(self, plan: Plan, applied: Sequence[AppliedAdapter]) -> str:
        return cache_key(
            {
                "base": self.base_model_id,
                "adapters": [[a.name, a.version, a.weight] for a in applied],
                "prompt": plan.prompt,
                "negative": plan.negative_prompt,
                "seed": plan.seed,
                "width": plan.settings.width,
                "height": plan.settings.height,
                "steps": plan.settings.steps,
                "guidance": plan.settings.guidance_scale,
                "scheduler": self.scheduler_name,
                "format": plan.settings.format,
            }
        )

    async def make(
        self, request: CoverRequest, deadline: float | None = None, *, priority: Priority | None = None
    ) -> Cover:
        """The cover for `request`; `deadline` is a time.monotonic() value or None.

        `priority`: the engine priority of a miss (default LIVE); the caller keeps the object
        and may demote it while the job waits (budgeted calls, prepare jobs).
        """
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:16]
        plan = self.plan(request)
        sources = self.sources_of(plan)
        versions = await self.painter.versions([source for source, _ in sources])
        applied = tuple(AppliedAdapter(s.name, versions[s.name], w) for s, w in sources)
        key = self.key_of(plan, applied)
        timings: dict[str, float] = {}
        painted_by: list[str] = []

        async def generate() -> CachedCover:
            job = self.paint_job(
                plan, sources, versions, deadline=deadline,
                priority=priority if priority is not None else Priority(),
            )
            painting = await self.painter.paint(job)
            pixels = painting.pixels
            painted_by.append(painting.painted_by)
            timings["queue_ms"] = painting.queue_ms
            timings["generate_ms"] = painting.generate_ms
            encode_started = time.perf_counter()
            image = await asyncio.to_thread(encode_image, pixels, plan.settings.format)
            timings["encode_ms"] = (time.perf_counter() - encode_started) * 1000
            return CachedCover(
                image=image, metadata={"width": int(pixels.shape[1]), "height": int(pixels.shape[0])}
            )

        outcome: CacheOutcome | None
        if self.cache is None:
            cached, outcome = await generate(), None
        else:
            cached, outcome = await self.cache.get_or_generate(key, generate)
        timings.setdefault("queue_ms", 0.0)
        timings.setdefault("generate_ms", 0.0)
        timings.setdefault("encode_ms", 0.0)
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        primary = next((i.style for i in plan.stack if i.weight > 0), "default")
        return Cover(
            image=cached.image,
            mime_type=FORMATS[plan.settings.format],
            width=plan.settings.width,
            height=plan.settings.height,
            region_path=plan.resolution.path or ("default",),
            region_fallback=plan.resolution.fallback,
            adapters=applied,
            prompt=plan.prompt,
            negative_prompt=plan.negative_prompt,
            seed=plan.seed,
            steps=plan.settings.steps,
            guidance_scale=plan.settings.guidance_scale,
            cache_outcome=outcome,
            base_model=self.base_model_id,
            request_id=request_id,
            style=primary,
            timings_ms=timings,
            served_by=painted_by[0] if painted_by else "cache",
            arm=request.arm,
            tone=plan.tone,
        )


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode [H, W, 3] uint8 pixels; PNG is lossless and byte-for-byte deterministic."""
    image = Image.fromarray(pixels, mode="RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG", optimize=False)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()
