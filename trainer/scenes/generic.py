"""Painters for the scenes that belong to no region: the neutral city, landscapes, random shapes.

They keep the base model general: without them every prompt would fall into one of the six
regional looks. The neutral city is what the `default` style card's template paints; the
random shapes come with captions naming their colours and shapes.
"""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from trainer.scenes.palettes import NAMED_COLOURS, jitter, pick
from trainer.scenes.regional import CANVAS, _ri, _vertical_gradient

SHAPE_NAMES = ("circle", "square", "triangle", "stripe")


def paint_default_city(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A soft-coloured modern skyline in flat daylight: the neutral editorial cover."""
    s = "default"
    ground_y = _ri(rng, 96, 108)
    _vertical_gradient(draw, pick(s, "sky", rng, 6), pick(s, "sun", rng, 6), 0, ground_y)
    x = _ri(rng, -6, 0)
    while x < CANVAS:
        width, top = _ri(rng, 14, 26), _ri(rng, 20, 70)
        tower = pick(s, str(rng.choice(["tower_a", "tower_b", "tower_c", "tower_d"])), rng, 10)
        draw.rectangle([x, top, x + width, ground_y], fill=tower)
        for wy in range(top + 4, ground_y - 4, 8):
            draw.line([(x + 3, wy), (x + width - 3, wy)], fill=pick(s, "window", rng, 4), width=2)
        x += width + _ri(rng, 1, 5)
    draw.rectangle([0, ground_y, CANVAS, CANVAS], fill=pick(s, "ground", rng, 6))


def paint_landscape(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> tuple[str, str]:
    """Mountains over a lake or a field, in a randomly chosen time of day.

    Returns (time of day, foreground) words for the caption.
    """
    times = {
        "morning": ((170, 200, 235), (240, 220, 190)),
        "noon": ((90, 150, 230), (190, 220, 245)),
        "dusk": ((120, 80, 140), (250, 160, 90)),
    }
    when = str(rng.choice(list(times)))
    top, bottom = times[when]
    horizon = _ri(rng, 56, 80)
    _vertical_gradient(draw, jitter(top, rng), jitter(bottom, rng), 0, horizon)
    for layer in range(_ri(rng, 1, 3)):
        shade = jitter((70 + 30 * layer, 100 + 20 * layer, 90 + 25 * layer), rng, 12)
        points = [(0, horizon)]
        for x in range(0, CANVAS + 16, 16):
            points.append((x, horizon - _ri(rng, 8, 40) + 8 * layer))
        points.append((CANVAS, horizon))
        draw.polygon(points, fill=shade)
    foreground = str(rng.choice(["lake", "field"]))
    colour = jitter((70, 110, 150), rng, 12) if foreground == "lake" else jitter((110, 150, 60), rng, 14)
    draw.rectangle([0, horizon, CANVAS, CANVAS], fill=colour)
    return when, foreground


def paint_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> tuple[list[str], str]:
    """Random flat shapes in named colours on a plain background.

    Returns (colour words of the shapes, colour word of the background) for the caption.
    """
    names = list(NAMED_COLOURS)
    background = str(rng.choice(names))
    draw.rectangle([0, 0, CANVAS, CANVAS], fill=jitter(NAMED_COLOURS[background], rng, 10))
    used: list[str] = []
    for _ in range(_ri(rng, 2, 5)):
        colour = str(rng.choice([n for n in names if n != background]))
        shape = str(rng.choice(SHAPE_NAMES))
        x, y, size = _ri(rng, 0, 100), _ri(rng, 0, 100), _ri(rng, 18, 56)
        fill = jitter(NAMED_COLOURS[colour], rng, 10)
        if shape == "circle":
            draw.ellipse([x, y, x + size, y + size], fill=fill)
        elif shape == "square":
            draw.rectangle([x, y, x + size, y + size], fill=fill)
        elif shape == "triangle":
            draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=fill)
        else:
            draw.rectangle([0, y, CANVAS, y + size // 3], fill=fill)
        used.append(f"{colour} {shape}")
    return used, background
