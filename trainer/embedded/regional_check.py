"""Painting covers for regions through the engine's Denoiser, to check what a base model paints.

A `RegionPainter` resolves a region tag through the real regions table and builds the real
prompt (`PromptBuilder`, style cards), then runs `Denoiser` with the base model's own noise rule
(`LoadedBase.zero_mean_noise`), optionally stacking the styles' adapters from a folder. The
regional model's tests and the contact sheet use it, and `trainer.scenes.classify` scores it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from covergen.adapters.files import read_lora_file
from covergen.clip_tokens import clip_token_counter
from covergen.engine.denoise import CoverJob, Denoiser
from covergen.engine.lora_layers import StackItem
from covergen.models.loading import LoadedBase
from covergen.prompts import PromptBuilder
from covergen.regions import RegionResolver
from covergen.styles import StyleLibrary


class RegionPainter:
    """Covers for (region, title, seed) from one base model and one styles folder."""

    def __init__(self, base: LoadedBase, styles_dir: Path, adapter_files: Mapping[str, Path] | None = None) -> None:
        self.library = StyleLibrary.load(styles_dir)
        self.resolver = RegionResolver.load(styles_dir / "regions.yaml", self.library)
        self.prompts = PromptBuilder.load(
            styles_dir / "glossary.yaml",
            count_tokens=clip_token_counter(base.pipeline.tokenizer),
            reserved_words=self.library.trigger_words(),
        )
        self.denoiser = Denoiser(base.pipeline, zero_mean_noise=base.zero_mean_noise)
        self.size = base.default_size
        self.adapters = {
            name: read_lora_file(path, name, self.denoiser.module_names()).to(self.denoiser.device, self.denoiser.dtype)
            for name, path in (adapter_files or {}).items()
        }

    def styles_of(self, region: str, themes: Sequence[str] = ()) -> list[tuple[str, float]]:
        """The (style, weight) stack a cover for `region` with `themes` uses."""
        stack = [(item.style, item.weight) for item in self.resolver.resolve(region).stack]
        for theme in themes:
            overlay = self.library.overlay_for_theme(theme)
            if all(name != overlay.name for name, _ in stack):
                stack.append((overlay.name, overlay.default_weight))
        return stack

    def prompt(self, region: str, title: str = "", themes: Sequence[str] = ()) -> tuple[str, str]:
        """The (prompt, negative prompt) the service builds for this request."""
        cards = [self.library.get(name) for name, _ in self.styles_of(region, themes)]
        built = self.prompts.build(title, self.library.get("default"), cards)
        return built.prompt, built.negative_prompt

    def paint(
        self,
        region: str,
        seeds: Sequence[int],
        *,
        title: str = "",
        themes: Sequence[str] = (),
        adapters: bool = False,
        steps: int = 20,
        guidance: float = 5.0,
    ) -> list[np.ndarray]:
        """One [size, size, 3] uint8 cover per seed; `adapters` stacks those this painter holds."""
        prompt, negative = self.prompt(region, title, themes)
        stack: tuple[StackItem, ...] = ()
        if adapters:
            stack = tuple((self.adapters[name], weight) for name, weight in self.styles_of(region, themes) if name in self.adapters)
        jobs = [
            CoverJob(prompt=prompt, negative_prompt=negative, seed=seed, width=self.size, height=self.size,
                     steps=steps, guidance_scale=guidance, stack=stack)
            for seed in seeds
        ]
        outcomes = self.denoiser.run(jobs)
        images: list[np.ndarray] = []
        for outcome in outcomes:
            if not isinstance(outcome, np.ndarray):
                raise outcome
            images.append(outcome)
        return images
