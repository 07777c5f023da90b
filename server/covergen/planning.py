"""CoverPlanner: everything decided about a cover before any model work (the one home of the plan).

    validate -> resolve region -> stack adapters (+ theme overlays, weight overrides)
      -> tone guard -> build prompt -> derive seed  =  Plan

`CoverMaker` (covers.py) plans through one of these for the live path, budgeted calls, prepare
jobs and standing covers; the trainer's region painter (trainer/embedded/regional_check.py)
plans through one too, so what a check paints is what the service would paint. A planner needs
no model: a styles folder, the request limits and (optionally) the base model's CLIP tokenizer.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covergen.adapters.registry import AdapterSource
from covergen.errors import ConfigError, InvalidRequest
from covergen.prompts import PromptBuilder
from covergen.regions import RegionResolver, Resolution, StyleWeight
from covergen.requests import CoverRequest, GenerationSettings, Limits, validate
from covergen.styles import StyleCard, StyleLibrary
from covergen.titles.translator import MarianTranslator


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


def load_styles(
    styles_dir: Path,
    count_tokens: Callable[[str], int] | None = None,
    translator: MarianTranslator | None = None,
) -> tuple[StyleLibrary, RegionResolver, PromptBuilder]:
    """Read style cards, the regions table, the glossary, landmarks and tone guard from `styles_dir`
    (`translator`: a loaded MarianTranslator, or None for the dictionary path)."""
    if not styles_dir.is_dir():
        raise ConfigError(f"styles directory {styles_dir} does not exist; set COVERGEN_STYLES_DIR")
    library = StyleLibrary.load(styles_dir)
    resolver = RegionResolver.load(styles_dir / "regions.yaml", library)
    prompts = PromptBuilder.load(
        styles_dir / "glossary.yaml",
        count_tokens=count_tokens,
        reserved_words=library.trigger_words(),
        translator=translator,
    )
    if prompts.tone_guard is not None:
        prompts.tone_guard.check_styles(library)
    prompts.warm_up()  # jieba's dictionary: ~2 s here rather than on the first request
    return library, resolver, prompts


class CoverPlanner:
    """Plans covers from one style library; memoises plans per (frozen) request."""

    def __init__(
        self, library: StyleLibrary, resolver: RegionResolver, prompts: PromptBuilder, limits: Limits
    ) -> None:
        self.library = library
        self.resolver = resolver
        self.prompts = prompts
        self.limits = limits
        # Plans of recent requests: on a cache hit, segmenting the title and counting CLIP tokens
        # was ~70% of the server's time (profiled under loadgen). Cleared when styles change.
        self._plans: OrderedDict[CoverRequest, Plan] = OrderedDict()
        self._max_plans = 4096
        self._paths: dict[str, Path | None] = {}  # style name -> resolved adapter file

    @classmethod
    def load(
        cls, styles_dir: Path, limits: Limits, count_tokens: Callable[[str], int] | None = None
    ) -> CoverPlanner:
        """A planner over the styles folder `styles_dir`, as the server loads it (no translator)."""
        return cls(*load_styles(styles_dir, count_tokens), limits)

    def replace_styles(self, library: StyleLibrary, resolver: RegionResolver, prompts: PromptBuilder) -> None:
        """Swap in a reloaded style library (admin ReloadStyles); forgets every plan."""
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

    def _adapter_path(self, card: StyleCard) -> Path | None:
        # resolving the path (symlinks, the styles-root check) was ~30% of a cache hit (cProfile);
        # it changes only with the library, so it is kept until replace_styles
        if card.name not in self._paths:
            self._paths[card.name] = self.library.adapter_path(card)
        return self._paths[card.name]


def derive_seed(request: CoverRequest, stack: list[StyleWeight]) -> int:
    """A seed from what the cover shows (stack, title, variant): same request, same cover.

    The raw region tag is left out on purpose: 杭州 and hangzhou (or two cities sharing a
    stack) with the same title get the same cover, and share its cache entry.
    """
    material: list[Any] = [request.title, request.variant, [(i.style, i.weight) for i in stack]]
    digest = hashlib.sha256(repr(material).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
