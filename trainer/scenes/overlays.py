"""The three overlay looks (rain, spring, ink wash) as transforms of an already painted scene.

Overlays are stacked on a regional style at serving time, so their training scenes are regional
scenes with the overlay applied: rain darkens, desaturates and adds light diagonal streaks;
spring lightens, greens and scatters pink blossom dots; ink wash turns the scene into dark ink
on pale paper with a few broad brush strokes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer.scenes.palettes import PALETTES, jitter, with_alpha
from trainer.scenes.regional import CANVAS, _ri

Overlay = Callable[[Image.Image, np.random.Generator], Image.Image]


def _luminance(pixels: np.ndarray) -> np.ndarray:
    """[h, w, 3] float 0..255 -> [h, w, 1] luma (BT.601)."""
    return (pixels @ np.array([0.299, 0.587, 0.114]))[..., None]


def apply_rain(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Darker, greyer, bluer, with thin light streaks slanting down."""
    pixels = np.asarray(image, dtype=np.float64)
    grey = _luminance(pixels)
    pixels = 0.45 * pixels + 0.55 * grey  # desaturate
    tint = np.asarray(jitter(PALETTES["rain"]["tint"], rng, 6), dtype=np.float64)
    pixels = 0.62 * pixels + 0.18 * tint  # darken toward a cold grey
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out, "RGBA")
    slant = _ri(rng, 4, 10)
    for _ in range(_ri(rng, 40, 70)):
        x, y, length = _ri(rng, -10, CANVAS), _ri(rng, -10, CANVAS), _ri(rng, 10, 22)
        draw.line([(x, y), (x + slant * length // 20, y + length)], fill=with_alpha(jitter(PALETTES["rain"]["streak"], rng, 6), 190), width=2)
    return out


def apply_spring(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighter and fresher green, with pink blossom clusters scattered from the top."""
    pixels = np.asarray(image, dtype=np.float64)
    fresh = np.asarray(PALETTES["spring"]["fresh"], dtype=np.float64)
    pixels = 0.72 * pixels + 0.18 * fresh + 0.10 * 255.0
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out, "RGBA")
    for _ in range(_ri(rng, 6, 10)):  # blossom clusters, denser near the top
        cx, cy = _ri(rng, 0, CANVAS), int(abs(rng.normal(0, 40)))
        for _ in range(_ri(rng, 5, 10)):
            px, py, r = cx + _ri(rng, -14, 14), cy + _ri(rng, -10, 10), _ri(rng, 2, 4)
            role = "blossom" if rng.random() < 0.6 else "petal"
            draw.ellipse([px - r, py - r, px + r, py + r], fill=jitter(PALETTES["spring"][role], rng, 6))
    return out


def apply_ink_wash(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Grey ink on pale rice paper: luma only, softened, with broad dark brush strokes."""
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float64)
    ink = _luminance(pixels) / 255.0  # [h, w, 1], 1 = paper
    ink = np.clip((ink - 0.5) * 1.3 + 0.6, 0, 1)
    paper = np.asarray(jitter(PALETTES["ink_wash"]["paper"], rng, 4), dtype=np.float64)
    dark = np.asarray(PALETTES["ink_wash"]["ink"], dtype=np.float64)
    pixels = dark + ink * (paper - dark)
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out, "RGBA")
    for _ in range(_ri(rng, 2, 4)):  # tapered brush strokes
        x, y = _ri(rng, 0, CANVAS), _ri(rng, 0, CANVAS)
        angle = rng.uniform(0, np.pi)
        for k in range(_ri(rng, 6, 12)):
            width = max(1, 9 - k)
            nx, ny = x + int(6 * np.cos(angle)), y + int(6 * np.sin(angle))
            draw.line([(x, y), (nx, ny)], fill=with_alpha(PALETTES["ink_wash"]["ink"], 170), width=width)
            x, y, angle = nx, ny, angle + rng.normal(0, 0.25)
    return out


OVERLAYS: dict[str, Overlay] = {"rain": apply_rain, "spring": apply_spring, "ink_wash": apply_ink_wash}
