"""Draft captions for a folder of images, for staff to review before training.

With a local BLIP-style captioning model (`--captioner DIR`), each image gets the model's
description; without one, a caption is assembled from the style keywords plus what simple image
analysis can say (dominant colours named in English, brightness, orientation). The `draft` column
of `metadata.csv` says where each caption came from: `model` (the captioning model) or `yes`
(the keyword draft, also used when the model says nothing about an image). Both count as
unreviewed drafts: the trainer warns while any remain and `covergen-label lint` lists them.
An existing metadata file is never overwritten unless forced.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from covergen.errors import ConfigError

from .dataset import DRAFT_KEYWORDS, DRAFT_MODEL, list_images, open_rgb

# Basic colour names and their sRGB centres; nearest wins.
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "grey": (128, 128, 128),
    "red": (200, 30, 30),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 150, 60),
    "teal": (30, 140, 140),
    "blue": (40, 80, 200),
    "sky blue": (120, 180, 235),
    "purple": (120, 50, 160),
    "pink": (240, 150, 190),
    "brown": (120, 75, 40),
    "beige": (220, 200, 160),
}


@dataclass(frozen=True)
class ImageTraits:
    """What simple analysis says about an image."""

    colours: tuple[str, ...]  # dominant colour names, most covered first
    brightness: str  # "dark", "dim", "bright" or "evenly lit"
    orientation: str  # "landscape", "portrait" or "square"


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    point = np.asarray(rgb, dtype=np.float32)
    return min(COLOUR_NAMES, key=lambda n: float(np.sum((np.asarray(COLOUR_NAMES[n]) - point) ** 2)))


def analyse(image: Image.Image, *, max_colours: int = 2) -> ImageTraits:
    """Dominant colours (palette quantisation), mean luminance and orientation."""
    small = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    quantised = small.quantize(colors=6, method=Image.Quantize.MEDIANCUT)
    palette: list[int] = list(quantised.getpalette() or [])
    counts: list[tuple[int, int]] = sorted(quantised.getcolors() or [], reverse=True)  # type: ignore[arg-type]
    names: list[str] = []
    for count, index in counts:
        if count < 64 * 64 * 0.08:
            break
        rgb = (palette[3 * index], palette[3 * index + 1], palette[3 * index + 2])
        name = nearest_colour(rgb)
        if name not in names:
            names.append(name)
        if len(names) == max_colours:
            break
    luma = float(np.asarray(small.convert("L"), dtype=np.float32).mean())
    brightness = "dark" if luma < 60 else "dim" if luma < 110 else "bright" if luma > 180 else "evenly lit"
    ratio = image.width / image.height
    orientation = "landscape" if ratio > 1.1 else "portrait" if ratio < 0.9 else "square"
    return ImageTraits(tuple(names), brightness, orientation)


def draft_caption(keywords: list[str], traits: ImageTraits) -> str:
    """`jiangnan, white walls, red and white colours, bright, landscape`."""
    parts = list(keywords)
    if traits.colours:
        parts.append(" and ".join(traits.colours) + " colours")
    parts += [traits.brightness, traits.orientation]
    return ", ".join(p for p in parts if p)


def parse_keywords(text: str | None) -> list[str]:
    """Split `"jiangnan, white walls"` (commas or Chinese commas) into clean keywords."""
    if not text:
        return []
    return [k.strip() for k in text.replace("，", ",").split(",") if k.strip()]


def blip_captioner(folder: Path) -> Callable[[Image.Image], str]:
    """A captioning function backed by a local BLIP model folder (never downloads)."""
    if not folder.is_dir():
        raise ConfigError(f"--captioner {folder} is not a folder; pass a local BLIP model folder")
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    try:
        processor = BlipProcessor.from_pretrained(folder, local_files_only=True)
        model = BlipForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"--captioner {folder} is not a BLIP captioning model folder ({reason}); it needs the "
            "files save_pretrained writes (config.json, weights, processor and tokenizer files), "
            "e.g. a local copy of Salesforce/blip-image-captioning-base"
        ) from None

    def caption(image: Image.Image) -> str:
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=30)  # [1, tokens]
        return str(processor.decode(ids[0], skip_special_tokens=True)).strip()

    return caption


def label_folder(
    input_dir: Path,
    keywords: list[str],
    captioner: Callable[[Image.Image], str] | None = None,
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Draft a caption per image: `[(file, caption, draft)]` and one problem line per unreadable file.

    `draft` is `model` for the captioner's words, `yes` for the keyword draft.
    """
    rows: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for path in list_images(input_dir):
        try:
            image = open_rgb(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: unreadable image, no caption drafted ({exc})")
            continue
        described = captioner(image) if captioner is not None else ""
        if described:
            rows.append((path.name, ", ".join([*keywords, described]), DRAFT_MODEL))
        else:
            if captioner is not None:
                problems.append(f"{path.name}: the captioning model wrote nothing; keyword draft used")
            rows.append((path.name, draft_caption(keywords, analyse(image)), DRAFT_KEYWORDS))
    return rows, problems


def write_metadata(output: Path, rows: list[tuple[str, str, str]], *, force: bool) -> None:
    """Write `file,caption,draft` rows; refuse to replace a file unless `force`."""
    if output.exists() and not force:
        raise ConfigError(
            f"{output} already exists and may hold edited captions; pass --force to replace it "
            "or --output to write elsewhere"
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "caption", "draft"])
    writer.writerows(rows)
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(f".{output.name}.tmp{os.getpid()}")
    temp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(temp, output)
