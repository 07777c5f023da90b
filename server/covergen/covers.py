"""CoverMaker: from (region, title) to a finished, cached cover. The one object the servicer calls.

validate -> resolve region -> stack adapters (+ theme overlays, weight overrides)
  -> build prompt -> derive seed -> adapter versions -> cache key -> ResultCache.get_or_generate(
         Painter.paint -> encode image)

The painter (painters.py) is the local engine by default, or a Ray Serve painter deployment.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covergen.adapters.registry import AdapterRegistry, AdapterSource
from covergen.cache import CachedCover, CacheOutcome, ResultCache, cache_key
from covergen.engine.batcher import Engine
from covergen.engine.denoise import Priority
from covergen.errors import InvalidRequest
from covergen.painters import LocalPainter, Painter, PaintJob, StackAdapter
from covergen.prompts import PromptBuilder
from covergen.regions import RegionResolver, Resolution, StyleWeight
from covergen.requests import FORMATS, CoverRequest, GenerationSettings, Limits, validate
from covergen.styles import StyleCard, StyleLibrary


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


@dataclass(frozen=True)
class Plan:
    """What will be generated for a request, before any model work."""

    resolution: Resolution
    stack: tuple[StyleWeight, ...]
    cards: tuple[StyleCard, ...]
    prompt: str
    negative_prompt: str
    seed: int
    settings: GenerationSettings
    tone: str = ""  # "restrained": a sensitive title, painted with the neutral default style


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
        self.library = library
        self.resolver = resolver
        self.prompts = prompts
        self.registry = registry
        self.engine = engine
        if painter is None:
            if engine is None or registry is None:
                raise ValueError("CoverMaker needs a painter, or an engine and a registry to paint with")
            painter = LocalPainter(engine, registry)
        self.painter: Painter = painter
        self.cache = cache
        self.limits = limits
        self.base_model_id = base_model_id
        self.scheduler_name = scheduler_name
        # Plans of recent requests: on a cache hit, segmenting the title and counting CLIP tokens
        # was ~70% of the server's time (profiled under loadgen). Cleared when styles change.
        self._plans: OrderedDict[CoverRequest, Plan] = OrderedDict()
        self._max_plans = 4096
        self._paths: dict[str, Path | None] = {}  # style name -> resolved adapter file
        self._keys: dict[tuple[object, ...], str] = {}  # (prompts, seed, settings, adapters) -> cache key

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
        self.library, self.resolver, self.prompts = library, resolver, prompts
        self._plans.clear()
        self._paths.clear()

    def plan(self, request: CoverRequest) -> Plan:
        """Validate and decide everything that does not need the model (memoised per request)."""
        plan = self._plans.get(request)  # the frozen request is the key: every field counts
        if plan is not None:
            self._plans.move_to_end(request)
            return plan
        plan = self._plan(request)
        self._plans[request] = plan
        if len(self._plans) > self._max_plans:
            self._plans.popitem(last=False)
        return plan

    def _plan(self, request: CoverRequest) -> Plan:
        settings = validate(request, self.limits)
        library, resolver = self.library, self.resolver
        resolution = resolver.resolve(request.region)
        stack = list(resolution.stack)
        weights = request.adapter_weights
        if request.arm == "generic":
            # the control arm: what the default style paints for this title, no regional adapters;
            # overrides naming the region's adapters do not apply to it
            stack = list(resolver.default_stack())
            kept = {i.style for i in stack} | {library.overlay_for_theme(t).name for t in request.themes}
            weights = {name: w for name, w in weights.items() if name in kept}
        for theme in request.themes:
            overlay = library.overlay_for_theme(theme)
            if all(item.style != overlay.name for item in stack):
                stack.append(StyleWeight(overlay.name, overlay.default_weight))
        names = {item.style for item in stack}
        unknown = sorted(set(weights) - names)
        if unknown:
            raise InvalidRequest(
                f"adapter_weights names {', '.join(unknown)}, which is not in this request's stack "
                f"({', '.join(sorted(names)) or 'empty'}); only adapters of the resolved stack can be reweighted"
            )
        stack = [StyleWeight(i.style, weights.get(i.style, i.weight)) for i in stack]
        return self.plan_stack(request, resolution, stack, settings)

    def plan_stack(
        self,
        request: CoverRequest,
        resolution: Resolution,
        stack: Sequence[StyleWeight],
        settings: GenerationSettings | None = None,
    ) -> Plan:
        """The plan of `request` painted with an explicit `stack` (standing covers use this)."""
        settings = settings if settings is not None else validate(request, self.limits)
        stack, tone = self.prompts.guard_tone(request.title, stack, self.library)  # sensitive: neutral, no festive
        cards = tuple(self.library.get(item.style) for item in stack)
        base = self.library.get("default")
        built = self.prompts.build(request.title, base, cards, tone)  # weight 0 drops the adapter, not the template
        seed = request.seed if request.seed is not None else derive_seed(request, list(stack))
        return Plan(resolution, tuple(stack), cards, built.prompt, built.negative_prompt, seed, settings, tone)

    def sources_of(self, plan: Plan) -> list[tuple[AdapterSource, float]]:
        """The adapter files a plan paints with and their weights (weight-0 and file-less left out)."""
        return [
            (AdapterSource(card.name, path), item.weight)
            for card, item in zip(plan.cards, plan.stack, strict=True)
            if item.weight > 0 and (path := self._adapter_path(card)) is not None
        ]

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

    def _adapter_path(self, card: StyleCard) -> Path | None:
        # resolving the path (symlinks, the styles-root check) was ~30% of a cache hit (cProfile);
        # it changes only with the library, so it is kept until replace_styles
        if card.name not in self._paths:
            self._paths[card.name] = self.library.adapter_path(card)
        return self._paths[card.name]

    def key_of(self, plan: Plan, applied: Sequence[AppliedAdapter]) -> str:
        """The result-cache key of a plan painted with `applied` (adapter versions included)."""
        memo = (plan.prompt, plan.negative_prompt, plan.seed, plan.settings, tuple(applied))
        key = self._keys.get(memo)
        if key is None:  # canonical JSON + sha256 per hit, otherwise
            key = self._keys[memo] = self._cache_key(plan, applied)
            if len(self._keys) > self._max_plans:
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


def derive_seed(request: CoverRequest, stack: list[StyleWeight]) -> int:
    """A seed from what the cover shows (stack, title, variant): same request, same cover.

    The raw region tag is left out on purpose: 杭州 and hangzhou (or two cities sharing a
    stack) with the same title get the same cover, and share its cache entry.
    """
    material: list[Any] = [request.title, request.variant, [(i.style, i.weight) for i in stack]]
    digest = hashlib.sha256(repr(material).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


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
