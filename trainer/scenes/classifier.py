"""The coarse style classifier: nearest style centroid of a 4x4 grid of mean colours.

It is how the project checks, without a learned model, that a generated cover "looks like" its
region: an image is shrunk to 4x4 cells of mean RGB (48 numbers, 0..1) and given the regional
style whose drawn scenes' mean grid is nearest. Centroids come from `CENTROID_SCENES` drawn
scenes per style (seeds from `CENTROID_SEED`), computed once per process. The same module
measures what the overlays change: saturation and the streakiness of rain.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image

from trainer.scenes.render import REGIONAL_STYLES, draw_scene

GRID = 4
CENTROID_SCENES = 48
CENTROID_SEED = 1_000_000  # disjoint from the seeds the training set and tests draw


def grid_features(image: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8 -> [GRID * GRID * 3] mean colours of a GRID x GRID grid, 0..1."""
    small = Image.fromarray(image).resize((GRID, GRID), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64).reshape(-1) / 255.0


@cache
def _centroids(styles: tuple[str, ...]) -> np.ndarray:
    """[len(styles), GRID * GRID * 3] mean grid features of each style's drawn scenes."""
    return np.stack(
        [
            np.mean([grid_features(draw_scene(style, CENTROID_SEED + k)) for k in range(CENTROID_SCENES)], axis=0)
            for style in styles
        ]
    )


def style_distances(image: np.ndarray, styles: Sequence[str] = REGIONAL_STYLES) -> dict[str, float]:
    """Euclidean distance from `image`'s grid features to each style's centroid."""
    gaps = np.linalg.norm(_centroids(tuple(styles)) - grid_features(image), axis=1)
    return {style: float(gap) for style, gap in zip(styles, gaps, strict=True)}


def classify(image: np.ndarray, styles: Sequence[str] = REGIONAL_STYLES) -> str:
    """The style (of `styles`) whose drawn scenes `image` is nearest to."""
    distances = style_distances(image, styles)
    return min(distances, key=distances.__getitem__)


def saturation(image: np.ndarray) -> float:
    """Mean HSV saturation, 0..1 (ink wash drives it toward 0)."""
    pixels = image.astype(np.float64) / 255.0
    high, low = pixels.max(axis=2), pixels.min(axis=2)
    return float(np.mean(np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)))


def brightness(image: np.ndarray) -> float:
    """Mean luma, 0..255 (rain lowers it)."""
    return float(np.mean(image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])))


def pinkness(image: np.ndarray) -> float:
    """Mean of (R - G) over pixels where red and blue both exceed green: the share of blossom pink."""
    pixels = image.astype(np.float64)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(np.mean(np.where((r > g + 20) & (b > g), r - g, 0.0)))
