"""The contact sheet of the embedded regional model: every starter region (and three
region + theme overlays) painted as the service paints them, with the drawn-scene classifier's
verdict under each cover (`make contact-sheet` writes `docs/contact-sheet.png`).

    python -m trainer.embedded.regional sheet --out docs/contact-sheet.png
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from covergen.models.cache import default_cache_dir
from covergen.models.loading import load_base_model
from trainer.embedded.regional_check import RegionPainter
from trainer.scenes.classifier import classify

SHEET_REGIONS = (
    ("hangzhou", "杭州"),
    ("suzhou", "苏州"),
    ("chengdu", "成都"),
    ("chongqing", "重庆"),
    ("beijing", "北京"),
    ("guangzhou", "广州"),
    ("xiamen", "厦门"),
    ("harbin", "哈尔滨"),
    ("shanghai", "上海"),
)
SHEET_THEMES = (
    ("hangzhou + rain", "杭州", "下雨"),
    ("hangzhou + ink", "杭州", "水墨"),
    ("chengdu + spring", "成都", "春天"),
)


def render_contact_sheet(model: Path, styles_dir: Path, out: Path, seeds: int = 4) -> Path:
    """A PNG grid: one row per region (and per region + theme), `seeds` covers each, 2x upscaled,
    with the drawn-scene classifier's verdict under every cover. Covers are painted as the service
    paints them: the service's plan (prompt and stack) with the adapter files of `styles_dir`."""
    base = load_base_model(str(model), cache_dir=default_cache_dir(), device="cpu", dtype="fp32")
    painter = RegionPainter(base, styles_dir)
    rows: list[tuple[str, str, tuple[str, ...]]] = [(label, region, ()) for label, region in SHEET_REGIONS]
    rows += [(label, region, (theme,)) for label, region, theme in SHEET_THEMES]
    cell, label_width, caption = 128, 130, 12
    sheet = Image.new("RGB", (label_width + seeds * cell, len(rows) * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (label, region, themes) in enumerate(rows):
        top = row * (cell + caption)
        draw.text((4, top + cell // 2), label, fill="black")
        for column, image in enumerate(painter.paint(region, range(seeds), themes=themes, adapters=True)):
            left = label_width + column * cell
            sheet.paste(Image.fromarray(image).resize((cell, cell), Image.Resampling.NEAREST), (left, top))
            draw.text((left + 2, top + cell), classify(image)[:18], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
