"""Training sets of drawn scenes: the base model's mixture, and one folder per style for adapters.

The base mixture is mostly regional scenes (some with an overlay) so regions get their look, plus
the neutral city, landscapes and random shapes so the base is not only regional. Every sample is
a pure function of (index, seed): two builds draw the same set. `write_style_folder` writes one
style's scenes as PNGs with a `metadata.csv` (`file,caption`) that `covergen-train` reads.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.scenes.captions import CaptionWriter, landscape_caption, shapes_caption
from trainer.scenes.generic import paint_landscape, paint_shapes
from trainer.scenes.render import OVERLAY_STYLES, REGIONAL_STYLES, canvas, draw_scene, finish, scene_rng

# Shares of the base mixture; the rest are random shapes.
REGIONAL_SHARE = 0.70
DEFAULT_CITY_SHARE = 0.10
LANDSCAPE_SHARE = 0.10
OVERLAY_CHANCE = 0.30  # of regional and city scenes, the share drawn with one overlay


@dataclass(frozen=True)
class DrawnScene:
    """One training image and its caption."""

    image: np.ndarray  # [64, 64, 3] uint8
    caption: str
    style: str  # a regional style, "default", "landscape" or "shapes"
    overlays: tuple[str, ...] = ()


def base_scene(index: int, seed: int, captions: CaptionWriter) -> DrawnScene:
    """Sample `index` of the base model's training mixture."""
    rng = scene_rng(seed * 1_000_003 + index, "mixture")
    scene_seed = int(rng.integers(0, 2**31))
    draw = rng.random()
    if draw < REGIONAL_SHARE + DEFAULT_CITY_SHARE:
        style = str(rng.choice(REGIONAL_STYLES)) if draw < REGIONAL_SHARE else "default"
        overlays = (str(rng.choice(OVERLAY_STYLES)),) if rng.random() < OVERLAY_CHANCE else ()
        image = draw_scene(style, scene_seed, overlays)
        return DrawnScene(image, captions.caption(style, overlays, rng), style, overlays)
    picture, drawer = canvas()
    painter_rng = scene_rng(scene_seed, "generic")
    if draw < REGIONAL_SHARE + DEFAULT_CITY_SHARE + LANDSCAPE_SHARE:
        when, foreground = paint_landscape(drawer, painter_rng)
        return DrawnScene(finish(picture), landscape_caption(when, foreground, rng), "landscape")
    shapes, background = paint_shapes(drawer, painter_rng)
    return DrawnScene(finish(picture), shapes_caption(shapes, background, rng), "shapes")


def style_scene(style: str, index: int, seed: int, captions: CaptionWriter) -> DrawnScene:
    """Sample `index` of one style's adapter set: its own scene, or for an overlay, a random
    regional scene with the overlay on top (captioned as the service would prompt that stack)."""
    rng = scene_rng(seed * 1_000_003 + index, f"adapter:{style}")
    scene_seed = int(rng.integers(0, 2**31))
    if style in OVERLAY_STYLES:
        primary = str(rng.choice(REGIONAL_STYLES))
        overlays: tuple[str, ...] = (style,)
    else:
        primary, overlays = style, ()
    image = draw_scene(primary, scene_seed, overlays)
    return DrawnScene(image, captions.caption(primary, overlays, rng), primary, overlays)


def write_style_folder(style: str, out: Path, count: int, seed: int, captions: CaptionWriter) -> Path:
    """Write `count` scenes of `style` as `out/<nnnn>.png` plus `out/metadata.csv`; returns `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for index in range(count):
        scene = style_scene(style, index, seed, captions)
        name = f"{index:04d}.png"
        Image.fromarray(scene.image).save(out / name)
        rows.append((name, scene.caption))
    with (out / "metadata.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return out
