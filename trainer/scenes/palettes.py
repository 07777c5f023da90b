"""The named colours each drawn scene is painted from, and the jitter that varies them per seed.

A palette is the small set of colours that makes a style recognisable at 64 px (Jiangnan: white
walls, black roofs, a grey-green canal). Painters pick colours from here by role name, so a
style's look is decided in one table and the coarse classifier has something stable to learn.
"""

from __future__ import annotations

import numpy as np

RGB = tuple[int, int, int]

PALETTES: dict[str, dict[str, RGB]] = {
    "jiangnan": {
        "sky": (206, 216, 214),
        "mist": (226, 230, 224),
        "wall": (238, 237, 229),
        "roof": (42, 44, 50),
        "canal": (104, 132, 118),
        "ripple": (150, 172, 160),
        "stone": (150, 150, 144),
        "willow": (98, 140, 82),
        "boat": (82, 60, 44),
    },
    "chuanyu_hotpot": {
        "night": (30, 13, 18),
        "table": (74, 34, 24),
        "pot": (196, 30, 24),
        "rim": (120, 20, 18),
        "broth": (230, 66, 20),
        "chili": (130, 8, 10),
        "pale_broth": (232, 200, 150),
        "steam": (232, 222, 222),
        "neon": (255, 60, 110),
    },
    "hutong_breakfast": {
        "sky": (250, 218, 166),
        "sun": (255, 236, 170),
        "brick": (128, 126, 122),
        "mortar": (102, 100, 97),
        "door": (168, 40, 34),
        "ground": (156, 148, 136),
        "cart": (186, 134, 74),
        "awning": (226, 224, 214),
        "stripe": (70, 110, 170),
        "griddle": (60, 56, 52),
    },
    "lingnan_arcade": {
        "sky": (214, 230, 222),
        "ochre": (206, 160, 88),
        "teal": (68, 150, 140),
        "arch": (70, 56, 42),
        "column": (230, 210, 170),
        "banyan": (50, 112, 52),
        "leaf": (78, 140, 64),
        "trunk": (96, 74, 52),
        "pavement": (128, 134, 130),
    },
    "minnan_redbrick": {
        "sky": (92, 162, 226),
        "cloud": (230, 240, 250),
        "brick": (182, 72, 50),
        "brick_line": (150, 54, 38),
        "roof": (142, 46, 34),
        "stone": (222, 210, 192),
        "door": (60, 40, 34),
        "ground": (212, 200, 178),
        "flower": (240, 200, 60),
    },
    "night_market_bbq": {
        "night": (18, 20, 40),
        "silhouette": (36, 34, 52),
        "bulb": (255, 168, 52),
        "wire": (70, 62, 60),
        "grill": (56, 56, 60),
        "coal": (242, 112, 30),
        "stick": (168, 110, 62),
        "meat": (124, 52, 30),
        "smoke": (120, 116, 124),
        "stool_red": (200, 40, 40),
        "stool_blue": (40, 90, 200),
    },
    "default": {
        "sky": (184, 212, 234),
        "sun": (250, 236, 190),
        "ground": (206, 206, 196),
        "tower_a": (168, 190, 214),
        "tower_b": (226, 196, 186),
        "tower_c": (196, 216, 190),
        "tower_d": (224, 220, 200),
        "window": (244, 244, 236),
    },
    "spring": {"blossom": (255, 182, 206), "petal": (255, 214, 228), "fresh": (150, 210, 120)},
    "rain": {"streak": (206, 212, 224), "tint": (96, 108, 124)},
    "ink_wash": {"paper": (238, 234, 222), "ink": (28, 28, 30)},
}

# Plain colour words for the random-shapes scenes, so their captions name what is drawn.
NAMED_COLOURS: dict[str, RGB] = {
    "red": (210, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 210),
    "purple": (130, 50, 170),
    "pink": (240, 150, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "black": (15, 15, 15),
}


def jitter(colour: RGB, rng: np.random.Generator, spread: float = 8.0) -> RGB:
    """`colour` moved by a small Gaussian step per channel, clipped to 0..255."""
    moved = np.clip(np.asarray(colour, dtype=np.float64) + rng.normal(0.0, spread, 3), 0, 255)
    return (int(moved[0]), int(moved[1]), int(moved[2]))


def pick(style: str, role: str, rng: np.random.Generator, spread: float = 8.0) -> RGB:
    """The `role` colour of `style`'s palette, jittered."""
    return jitter(PALETTES[style][role], rng, spread)


def with_alpha(colour: RGB, alpha: int) -> tuple[int, int, int, int]:
    """`colour` as RGBA for translucent strokes (steam, smoke, mist)."""
    return (colour[0], colour[1], colour[2], alpha)
