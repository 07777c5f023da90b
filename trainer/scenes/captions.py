"""Captions for drawn scenes: the prompts the service will really send, plus plain variants.

Half of a regional scene's captions are built by the service's own `PromptBuilder` from the
style cards and a random title of glossary terms, so the base model is trained on exactly the
prompts `GenerateCover` produces (trigger words, template parts, overlay parts). The other half
are short English variants written here, each led by the card's trigger words, so a style is
tied to its trigger words and not only to one template string.
Captions call `PromptBuilder.build` for an explicit stack rather than `CoverPlanner`: a caption
describes the drawn scene of that stack, and the planner's tone guard would swap the stack for
the restrained default on a sensitive glossary term (measured: 56 of 8400 captions). The tiny frozen text encoder
makes similar captions embed alike, so the variants are kept lexically distinct per style.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from covergen.prompts import PromptBuilder, load_glossary
from covergen.styles import StyleCard, StyleLibrary

# "today": a title with no paintable words, so the prompt carries the card's neutral subject
# (the service refuses an empty title; the prompt is the one an empty title gets)
NEUTRAL_TITLE = "今日"

# Per style: what is drawn, in words; the card's trigger words are put in front.
CAPTION_VARIANTS: dict[str, tuple[str, ...]] = {
    "jiangnan": (
        "water town canal with a stone arch bridge",
        "white walls and black tiled roofs beside a grey green canal",
        "misty canal town, arched bridge, willows",
        "quiet water village with whitewashed houses",
    ),
    "chuanyu_hotpot": (
        "red hotpot bubbling at night",
        "round red pot of chili oil on a dark table, steam rising",
        "spicy sichuan hotpot glowing red in the dark",
        "chongqing night, red broth and steam",
    ),
    "hutong_breakfast": (
        "breakfast stall in a grey brick alley",
        "beijing hutong morning, jianbing cart, red doors",
        "grey brick lane in warm morning sun with a food cart",
        "old alley breakfast cart under a striped awning",
    ),
    "lingnan_arcade": (
        "qilou arcade street with a banyan tree",
        "ochre and teal facades over shaded arches",
        "guangzhou arcade shophouses, lush green banyan",
        "southern arcade street, pastel facades, aerial roots",
    ),
    "minnan_redbrick": (
        "red brick house with a swallowtail roof",
        "minnan red brick mansion under blue sky",
        "red brick walls on a white stone base, curved roof ridge",
        "fujian red brick old house in bright sun",
    ),
    "night_market_bbq": (
        "night market barbecue grill with skewers",
        "string lights over a dark street of food stalls",
        "glowing orange grill and smoke at night",
        "skewers on a barbecue at a night market, plastic stools",
    ),
    "rain": ("rainy day, wet streets", "rain streaks and grey sky", "downpour, puddles, umbrellas"),
    "spring": ("spring blossoms, pink petals", "cherry blossom branches, fresh green", "springtime flowers in bloom"),
    "ink_wash": ("ink wash painting, monochrome", "black ink brush strokes on rice paper", "grey ink painting, shuimo"),
}

LANDSCAPE_TEMPLATES = (
    "landscape of mountains over a {foreground} in the {when}",
    "{when} scenery, hills and a {foreground}",
    "nature landscape, {foreground} below mountains, {when} light",
)
SHAPE_TEMPLATES = ("abstract {shapes} on a {background} background", "flat shapes: {shapes}, {background} backdrop")


class CaptionWriter:
    """Writes captions for drawn scenes from the style cards and glossary in a styles folder."""

    def __init__(self, styles_dir: Path, count_tokens: Callable[[str], int] | None = None) -> None:
        self.library = StyleLibrary.load(styles_dir)
        self.prompts = PromptBuilder.load(
            styles_dir / "glossary.yaml", count_tokens=count_tokens, reserved_words=self.library.trigger_words()
        )
        self.title_terms = sorted(load_glossary(styles_dir / "glossary.yaml"))

    def _title(self, rng: np.random.Generator) -> str:
        """A fake news title made of 0-3 glossary terms (0: the neutral subject)."""
        count = int(rng.integers(0, 4))
        return "".join(str(t) for t in rng.choice(self.title_terms, size=count, replace=False)) if count else ""

    def served_prompt(self, style: str, overlays: Sequence[str], rng: np.random.Generator) -> str:
        """The prompt the service builds for a region whose stack is `style` plus `overlays`."""
        stack = [self.library.get(name) for name in (style, *overlays)]
        return self.prompts.build(self._title(rng), self.library.get("default"), stack).prompt

    def served_negative(self, style: str, overlays: Sequence[str] = ()) -> str:
        """The negative prompt the service sends with that stack."""
        stack = [self.library.get(name) for name in (style, *overlays)]
        return self.prompts.build("", self.library.get("default"), stack).negative_prompt

    def variant(self, style: str, overlays: Sequence[str], rng: np.random.Generator) -> str:
        """A short caption: trigger words and one variant, for the style and each overlay."""
        parts: list[str] = []
        for name in (style, *overlays):
            card: StyleCard = self.library.get(name)
            options = CAPTION_VARIANTS.get(name, (card.prompt.scene,))
            parts.extend(card.trigger_words)
            parts.append(str(rng.choice(options)))
        return ", ".join(parts)

    def caption(self, style: str, overlays: Sequence[str], rng: np.random.Generator) -> str:
        """A served prompt or a variant, evenly."""
        if rng.random() < 0.5:
            return self.served_prompt(style, overlays, rng)
        return self.variant(style, overlays, rng)


def landscape_caption(when: str, foreground: str, rng: np.random.Generator) -> str:
    return str(rng.choice(LANDSCAPE_TEMPLATES)).format(when=when, foreground=foreground)


def shapes_caption(shapes: Sequence[str], background: str, rng: np.random.Generator) -> str:
    return str(rng.choice(SHAPE_TEMPLATES)).format(shapes=", ".join(shapes), background=background)
