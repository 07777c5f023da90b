"""Rendering a drawn scene to pixels: painter + overlays on a 2x canvas, downsampled to 64 px.

`draw_scene("jiangnan", seed=3, overlays=("rain",))` is a [64, 64, 3] uint8 array, the same on
every machine for the same arguments: each scene's generator is seeded from (seed, style name).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from trainer.scenes.generic import paint_default_city
from trainer.scenes.overlays import OVERLAYS
from trainer.scenes.regional import CANVAS, REGIONAL_PAINTERS, Painter

SCENE_SIZE = 64
REGIONAL_STYLES: tuple[str, ...] = tuple(REGIONAL_PAINTERS)
OVERLAY_STYLES: tuple[str, ...] = tuple(OVERLAYS)
PAINTERS: dict[str, Painter] = {**REGIONAL_PAINTERS, "default": paint_default_city}


def scene_rng(seed: int, name: str) -> np.random.Generator:
    """The generator for scene `seed` of `name`: independent across names, stable across runs."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank drawing canvas and its blending (RGBA) drawer."""
    image = Image.new("RGB", (CANVAS, CANVAS))
    return image, ImageDraw.Draw(image, "RGBA")


def finish(image: Image.Image, size: int = SCENE_SIZE) -> np.ndarray:
    """The canvas downsampled to `size` px: [size, size, 3] uint8."""
    return np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.uint8).copy()


def draw_scene(style: str, seed: int, overlays: Sequence[str] = (), size: int = SCENE_SIZE) -> np.ndarray:
    """Scene `seed` of `style` (a regional style or "default") with `overlays` applied in order."""
    if style not in PAINTERS:
        raise KeyError(f"no painter for style {style!r}; drawn styles are {', '.join(PAINTERS)}")
    unknown = [name for name in overlays if name not in OVERLAYS]
    if unknown:
        raise KeyError(f"no overlay {unknown[0]!r}; drawn overlays are {', '.join(OVERLAYS)}")
    rng = scene_rng(seed, style)
    image, draw = canvas()
    PAINTERS[style](draw, rng)
    for name in overlays:
        image = OVERLAYS[name](image, scene_rng(seed, f"{style}+{name}"))
    return finish(image, size)
