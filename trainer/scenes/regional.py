"""Painters for the six regional scenes, one function per style, on a supersampled canvas.

Each painter draws onto a `CANVAS` x `CANVAS` RGB image (twice the 64 px output; the scene
renderer downsamples for anti-aliasing) from a seeded generator, so the same seed always gives
the same picture. Layout and palette are what tell the styles apart: a canal across the bottom
and a stone arch (Jiangnan), a big red pot in the dark (hotpot), grey brick and a stall in warm
light (hutong), arcade arches under ochre/teal facades beside a banyan (Lingnan), a red-brick
house with a swallowtail roof under blue sky (Minnan), string lights and a glowing grill in the
dark (night market).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import ImageDraw

from trainer.scenes.palettes import pick, with_alpha

CANVAS = 128  # drawing size in pixels; scenes are delivered at half this

Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator], None]


def _ri(rng: np.random.Generator, low: int, high: int) -> int:
    """A random int in [low, high]."""
    return int(rng.integers(low, high + 1))


def _vertical_gradient(draw: ImageDraw.ImageDraw, top: tuple[int, int, int], bottom: tuple[int, int, int], y0: int, y1: int) -> None:
    for y in range(y0, y1):
        t = (y - y0) / max(1, y1 - y0 - 1)
        colour = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (CANVAS, y)], fill=colour)


def paint_jiangnan(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """White-walled, black-roofed houses along a grey-green canal crossed by a stone arch bridge."""
    s = "jiangnan"
    water_y = _ri(rng, 70, 84)
    _vertical_gradient(draw, pick(s, "sky", rng), pick(s, "mist", rng), 0, water_y)
    x = _ri(rng, -20, 0)
    while x < CANVAS:
        width, top = _ri(rng, 26, 42), _ri(rng, 30, 48)
        wall, roof = pick(s, "wall", rng, 5), pick(s, "roof", rng, 5)
        draw.rectangle([x, top, x + width, water_y], fill=wall)
        draw.polygon([(x - 5, top + 2), (x + width // 2, top - _ri(rng, 8, 14)), (x + width + 5, top + 2)], fill=roof)
        draw.rectangle([x - 5, top, x + width + 5, top + 4], fill=roof)
        for _ in range(_ri(rng, 1, 2)):  # small dark windows
            wx = x + _ri(rng, 4, max(5, width - 10))
            draw.rectangle([wx, top + 14, wx + 5, top + 20], fill=roof)
        x += width + _ri(rng, 4, 12)
    draw.rectangle([0, water_y, CANVAS, CANVAS], fill=pick(s, "canal", rng))
    for _ in range(_ri(rng, 6, 10)):
        ry, rx = _ri(rng, water_y + 6, CANVAS - 4), _ri(rng, 0, CANVAS - 30)
        draw.line([(rx, ry), (rx + _ri(rng, 12, 30), ry)], fill=pick(s, "ripple", rng), width=2)
    cx, span = _ri(rng, 36, 92), _ri(rng, 40, 60)
    stone = pick(s, "stone", rng, 6)
    deck = water_y - _ri(rng, 14, 22)
    draw.rectangle([cx - span // 2 - 8, deck, cx + span // 2 + 8, water_y + 10], fill=stone)
    draw.ellipse([cx - span // 2 + 6, deck + 10, cx + span // 2 - 6, water_y + 10 + (water_y - deck)], fill=pick(s, "canal", rng, 4))
    draw.ellipse([cx - span // 2 + 6, water_y + 10, cx + span // 2 - 6, water_y + 30], outline=stone, width=3)
    if rng.random() < 0.7:  # willow hanging from one side
        wx = _ri(rng, 0, 16) if rng.random() < 0.5 else _ri(rng, 108, 124)
        for _ in range(_ri(rng, 7, 12)):
            sx = wx + _ri(rng, -12, 12)
            draw.line([(sx, 0), (sx + _ri(rng, -4, 4), _ri(rng, 30, 60))], fill=pick(s, "willow", rng), width=3)
    if rng.random() < 0.6:
        bx, by = _ri(rng, 8, 96), _ri(rng, water_y + 18, CANVAS - 12)
        draw.polygon([(bx, by), (bx + 26, by), (bx + 20, by + 6), (bx + 6, by + 6)], fill=pick(s, "boat", rng))


def paint_hotpot(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A bubbling round red hotpot on a dark table at night, steam rising, neon behind."""
    s = "chuanyu_hotpot"
    draw.rectangle([0, 0, CANVAS, CANVAS], fill=pick(s, "night", rng, 5))
    for _ in range(_ri(rng, 1, 3)):  # neon signs
        nx, ny = _ri(rng, 0, 100), _ri(rng, 2, 24)
        draw.rectangle([nx, ny, nx + _ri(rng, 14, 30), ny + _ri(rng, 4, 8)], outline=pick(s, "neon", rng, 12), width=2)
    table_y = _ri(rng, 66, 80)
    draw.rectangle([0, table_y, CANVAS, CANVAS], fill=pick(s, "table", rng, 6))
    cx, cy, r = _ri(rng, 54, 74), _ri(rng, 74, 88), _ri(rng, 32, 42)
    draw.ellipse([cx - r - 4, cy - r - 4, cx + r + 4, cy + r + 4], fill=pick(s, "rim", rng, 6))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=pick(s, "pot", rng, 8))
    inner = r - 7
    draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=pick(s, "broth", rng, 8))
    if rng.random() < 0.5:  # yuanyang pot: a pale half
        draw.pieslice([cx - inner, cy - inner, cx + inner, cy + inner], 90, 270, fill=pick(s, "pale_broth", rng))
    for _ in range(_ri(rng, 10, 20)):
        px, py = cx + _ri(rng, -inner + 4, inner - 4), cy + _ri(rng, -inner + 4, inner - 4)
        if (px - cx) ** 2 + (py - cy) ** 2 < (inner - 3) ** 2:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=pick(s, "chili", rng))
    for _ in range(_ri(rng, 3, 6)):  # steam wisps
        sx = cx + _ri(rng, -r + 6, r - 6)
        points = [(sx + int(6 * np.sin(k / 2 + rng.random())), cy - r - 4 - 8 * k) for k in range(_ri(rng, 3, 6))]
        draw.line(points, fill=with_alpha(pick(s, "steam", rng), 110), width=_ri(rng, 3, 6))


def paint_hutong(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A breakfast cart in a grey-brick hutong alley, warm morning sky, red doors."""
    s = "hutong_breakfast"
    sky_y = _ri(rng, 22, 36)
    _vertical_gradient(draw, pick(s, "sun", rng), pick(s, "sky", rng), 0, sky_y)
    if rng.random() < 0.7:
        sx = _ri(rng, 10, 118)
        draw.ellipse([sx - 10, sky_y - 26, sx + 10, sky_y - 6], fill=pick(s, "sun", rng, 4))
    ground_y = _ri(rng, 92, 104)
    draw.rectangle([0, sky_y, CANVAS, ground_y], fill=pick(s, "brick", rng, 6))
    mortar = pick(s, "mortar", rng, 4)
    for y in range(sky_y + 4, ground_y, 6):
        draw.line([(0, y), (CANVAS, y)], fill=mortar, width=1)
    for _ in range(_ri(rng, 1, 2)):
        dx = _ri(rng, 4, 110)
        draw.rectangle([dx, ground_y - 34, dx + 16, ground_y], fill=pick(s, "door", rng, 8))
    draw.rectangle([0, ground_y, CANVAS, CANVAS], fill=pick(s, "ground", rng, 6))
    cx, width = _ri(rng, 30, 70), _ri(rng, 40, 56)
    top = ground_y - _ri(rng, 26, 34)
    draw.rectangle([cx, top, cx + width, ground_y + 4], fill=pick(s, "cart", rng, 8))
    awning_y = top - _ri(rng, 14, 20)
    stripe = pick(s, "stripe", rng, 10) if rng.random() < 0.6 else pick(s, "door", rng, 8)
    for k in range(0, width + 12, 8):
        fill = pick(s, "awning", rng, 4) if (k // 8) % 2 else stripe
        draw.rectangle([cx - 6 + k, awning_y, cx + 2 + k, awning_y + 8], fill=fill)
    draw.ellipse([cx + 6, top - 4, cx + width - 6, top + 6], fill=pick(s, "griddle", rng, 4))
    draw.ellipse([cx + 4, ground_y, cx + 14, ground_y + 10], fill=pick(s, "griddle", rng, 4))
    draw.ellipse([cx + width - 14, ground_y, cx + width - 4, ground_y + 10], fill=pick(s, "griddle", rng, 4))
    for _ in range(_ri(rng, 2, 4)):  # steam off the griddle, warm light
        sx = cx + _ri(rng, 8, width - 8)
        draw.line([(sx, top - 6), (sx + _ri(rng, -5, 5), top - 22)], fill=with_alpha(pick(s, "sun", rng), 120), width=3)


def paint_lingnan(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Qilou arcade: ochre and teal facades over a row of dark arches, a green banyan beside."""
    s = "lingnan_arcade"
    draw.rectangle([0, 0, CANVAS, CANVAS], fill=pick(s, "sky", rng, 5))
    roof_y, arcade_y, ground_y = _ri(rng, 8, 20), _ri(rng, 62, 72), _ri(rng, 100, 110)
    x = 0
    while x < CANVAS:
        width = _ri(rng, 30, 46)
        facade = pick(s, "ochre", rng, 10) if rng.random() < 0.6 else pick(s, "teal", rng, 10)
        draw.rectangle([x, roof_y + _ri(rng, 0, 8), x + width, arcade_y], fill=facade)
        shutter = pick(s, "teal", rng, 8) if facade[2] < 120 else pick(s, "ochre", rng, 8)
        for wx in range(x + 5, x + width - 6, 11):
            for wy in (roof_y + 16, roof_y + 34):
                draw.rectangle([wx, wy, wx + 6, wy + 10], fill=shutter)
        x += width
    draw.rectangle([0, arcade_y, CANVAS, ground_y], fill=pick(s, "column", rng, 6))
    pitch = _ri(rng, 20, 26)
    for ax in range(_ri(rng, 2, 8), CANVAS, pitch):
        draw.rectangle([ax, arcade_y + 12, ax + pitch - 7, ground_y], fill=pick(s, "arch", rng, 5))
        draw.ellipse([ax, arcade_y + 4, ax + pitch - 7, arcade_y + 20], fill=pick(s, "arch", rng, 5))
    draw.rectangle([0, ground_y, CANVAS, CANVAS], fill=pick(s, "pavement", rng, 6))
    tx = _ri(rng, 0, 24) if rng.random() < 0.5 else _ri(rng, 100, 124)
    draw.rectangle([tx - 5, 40, tx + 5, ground_y + 8], fill=pick(s, "trunk", rng))
    for _ in range(_ri(rng, 6, 10)):
        bx, by, br = tx + _ri(rng, -30, 30), _ri(rng, 0, 44), _ri(rng, 12, 22)
        colour = pick(s, "banyan", rng, 10) if rng.random() < 0.6 else pick(s, "leaf", rng, 10)
        draw.ellipse([bx - br, by - br, bx + br, by + br], fill=colour)
    for _ in range(_ri(rng, 4, 8)):  # aerial roots
        rx = tx + _ri(rng, -24, 24)
        draw.line([(rx, _ri(rng, 36, 50)), (rx + _ri(rng, -2, 2), _ri(rng, 64, 90))], fill=pick(s, "trunk", rng), width=1)


def paint_minnan(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """A red-brick house on a pale stone base with a swallowtail roof ridge under a blue sky."""
    s = "minnan_redbrick"
    draw.rectangle([0, 0, CANVAS, CANVAS], fill=pick(s, "sky", rng, 8))
    for _ in range(_ri(rng, 0, 2)):
        cx, cy = _ri(rng, 0, 128), _ri(rng, 4, 24)
        draw.ellipse([cx - 14, cy - 5, cx + 14, cy + 5], fill=pick(s, "cloud", rng, 4))
    left, right = _ri(rng, 0, 16), _ri(rng, 112, 128)
    eave, base_y, ground_y = _ri(rng, 40, 52), _ri(rng, 92, 100), _ri(rng, 106, 114)
    draw.rectangle([left, eave, right, base_y], fill=pick(s, "brick", rng, 8))
    line = pick(s, "brick_line", rng, 5)
    for y in range(eave + 4, base_y, 5):
        draw.line([(left, y), (right, y)], fill=line, width=1)
    draw.rectangle([left, base_y, right, ground_y], fill=pick(s, "stone", rng, 6))
    ridge = eave - _ri(rng, 14, 20)
    roof = pick(s, "roof", rng, 6)
    lift = _ri(rng, 10, 16)  # the swallowtail: ridge ends sweep up
    draw.polygon([(left - 6, eave), (left + 10, ridge), (right - 10, ridge), (right + 6, eave)], fill=roof)
    draw.polygon([(left + 10, ridge + 3), (left - 4, ridge - lift), (left + 2, ridge - lift), (left + 22, ridge)], fill=roof)
    draw.polygon([(right - 10, ridge + 3), (right + 4, ridge - lift), (right - 2, ridge - lift), (right - 22, ridge)], fill=roof)
    mid = (left + right) // 2 + _ri(rng, -10, 10)
    draw.rectangle([mid - 9, base_y - 30, mid + 9, ground_y], fill=pick(s, "door", rng))
    draw.rectangle([mid - 13, base_y - 34, mid + 13, base_y - 30], fill=pick(s, "stone", rng))
    draw.rectangle([0, ground_y, CANVAS, CANVAS], fill=pick(s, "ground", rng, 6))
    for _ in range(_ri(rng, 0, 3)):  # potted flowers
        fx = _ri(rng, 4, 120)
        draw.ellipse([fx - 4, ground_y - 2, fx + 4, ground_y + 6], fill=pick(s, "flower", rng, 12))


def paint_night_market(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> None:
    """Barbecue at a night market: string lights over dark stalls, a glowing grill of skewers."""
    s = "night_market_bbq"
    draw.rectangle([0, 0, CANVAS, CANVAS], fill=pick(s, "night", rng, 5))
    for _ in range(_ri(rng, 2, 4)):  # stall silhouettes
        sx, sw = _ri(rng, -10, 110), _ri(rng, 24, 44)
        draw.rectangle([sx, _ri(rng, 30, 50), sx + sw, 90], fill=pick(s, "silhouette", rng, 5))
    for _ in range(_ri(rng, 2, 3)):  # catenary strings of bulbs
        y0, sag = _ri(rng, 4, 30), _ri(rng, 6, 16)
        points = [(x, y0 + int(sag * (1 - ((x - 64) / 64) ** 2))) for x in range(0, CANVAS + 1, 8)]
        draw.line(points, fill=pick(s, "wire", rng), width=1)
        for px, py in points[::2]:
            draw.ellipse([px - 3, py, px + 3, py + 6], fill=pick(s, "bulb", rng, 12))
    grill_y, left, right = _ri(rng, 72, 86), _ri(rng, 6, 24), _ri(rng, 104, 122)
    draw.rectangle([left, grill_y, right, grill_y + 14], fill=pick(s, "grill", rng, 5))
    draw.rectangle([left + 3, grill_y + 3, right - 3, grill_y + 10], fill=pick(s, "coal", rng, 12))
    for x in range(left + 4, right - 4, _ri(rng, 6, 9)):  # skewers across the grill
        draw.line([(x, grill_y - 14), (x + 3, grill_y + 2)], fill=pick(s, "stick", rng), width=1)
        for k in range(3):
            my = grill_y - 11 + 4 * k
            draw.rectangle([x - 1, my, x + 3, my + 3], fill=pick(s, "meat", rng, 10))
    for _ in range(_ri(rng, 2, 4)):  # smoke
        sx = _ri(rng, left, right)
        draw.line([(sx, grill_y - 16), (sx + _ri(rng, -10, 10), grill_y - 44)], fill=with_alpha(pick(s, "smoke", rng), 90), width=5)
    draw.rectangle([left, grill_y + 14, left + 4, 116], fill=pick(s, "grill", rng))
    draw.rectangle([right - 4, grill_y + 14, right, 116], fill=pick(s, "grill", rng))
    for _ in range(_ri(rng, 1, 3)):  # plastic stools
        fx = _ri(rng, 4, 116)
        colour = pick(s, "stool_red", rng) if rng.random() < 0.6 else pick(s, "stool_blue", rng)
        draw.rectangle([fx, 112, fx + 10, 120], fill=colour)


REGIONAL_PAINTERS: dict[str, Painter] = {
    "jiangnan": paint_jiangnan,
    "chuanyu_hotpot": paint_hotpot,
    "hutong_breakfast": paint_hutong,
    "lingnan_arcade": paint_lingnan,
    "minnan_redbrick": paint_minnan,
    "night_market_bbq": paint_night_market,
}
