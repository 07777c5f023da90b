"""Painting covers for regions through the engine's Denoiser, to check what a base model paints.

A `RegionPainter` plans every cover with the service's own planner (`CoverPlanner`: the real
regions table, style cards, tone guard and prompt builder of a styles folder), turns each plan
into the job a painter paints (`CoverMaker.paint_job`, `painters.engine_job`), and runs them in
one batch through `Denoiser` with the base model's own noise rule (`LoadedBase.zero_mean_noise`).
With `adapters=True` it stacks the adapter files the plan names, read by a real AdapterRegistry.
The regional model's tests and the contact sheet use it, and `trainer.scenes.classify` scores it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covergen.adapters.files import LoraWeights
from covergen.adapters.registry import AdapterRegistry
from covergen.clip_tokens import clip_token_counter
from covergen.covers import CoverMaker
from covergen.engine.denoise import CoverJob, Denoiser, Priority
from covergen.models.loading import LoadedBase
from covergen.painters import engine_job
from covergen.planning import CoverPlanner, Plan
from covergen.requests import CoverRequest, Limits
from trainer.scenes.captions import NEUTRAL_TITLE


class RegionPainter:
    """Covers for (region, title, seed) from one base model and one styles folder."""

    def __init__(self, base: LoadedBase, styles_dir: Path) -> None:
        self.denoiser = Denoiser(base.pipeline, zero_mean_noise=base.zero_mean_noise)
        self.size = base.default_size
        self.planner = CoverPlanner.load(
            styles_dir, Limits(default_size=base.default_size), clip_token_counter(base.pipeline.tokenizer)
        )
        self.registry = AdapterRegistry(
            module_names=self.denoiser.module_names(),
            check=self.denoiser.check_compatible,
            device=self.denoiser.device,
            dtype=self.denoiser.dtype,
            max_resident=64,  # every style of the folder stays resident
        )

    def plan(
        self,
        region: str,
        seed: int,
        *,
        title: str = NEUTRAL_TITLE,
        themes: Sequence[str] = (),
        steps: int = 20,
        guidance: float = 5.0,
    ) -> Plan:
        """The service's plan for this request (stack, prompt; the seed as given)."""
        request = CoverRequest(
            region=region, title=title, seed=seed, steps=steps, guidance_scale=guidance, themes=tuple(themes)
        )
        return self.planner.plan(request)

    def job(self, plan: Plan, adapters: bool) -> CoverJob:
        """The engine job for `plan`: with its adapter files stacked, or the base model alone."""
        sources = self.planner.sources_of(plan) if adapters else []
        weights: dict[str, LoraWeights] = {source.name: self.registry.load(source) for source, _ in sources}
        versions = {name: w.version for name, w in weights.items()}
        return engine_job(CoverMaker.paint_job(plan, sources, versions, priority=Priority()), weights)

    def paint(
        self,
        region: str,
        seeds: Sequence[int],
        *,
        title: str = NEUTRAL_TITLE,
        themes: Sequence[str] = (),
        adapters: bool = False,
        steps: int = 20,
        guidance: float = 5.0,
    ) -> list[np.ndarray]:
        """One [size, size, 3] uint8 cover per seed; `adapters` stacks the plan's adapter files."""
        plans = [self.plan(region, seed, title=title, themes=themes, steps=steps, guidance=guidance) for seed in seeds]
        outcomes = self.denoiser.run([self.job(plan, adapters) for plan in plans])
        images: list[np.ndarray] = []
        for outcome in outcomes:
            if not isinstance(outcome, np.ndarray):
                raise outcome
            images.append(outcome)
        return images

    def close(self) -> None:
        self.registry.close()
