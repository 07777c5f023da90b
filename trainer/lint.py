"""Checking a training folder before spending hours on it.

`lint_folder` reports, per file, what will hurt the adapter and how to fix it: missing or
duplicate captions, vague words, captions longer than CLIP's 77-token window, images smaller than
the training resolution, blurry images (variance of the Laplacian), near-duplicate images
(perceptual hash distance <= 4), unreadable files and unreviewed draft captions. Errors stop a
training run from making sense; warnings are worth fixing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imagehash
import numpy as np
from PIL import Image

from covergen.clip_tokens import clip_token_counter

from .dataset import list_images, open_rgb, read_metadata

VAGUE_WORDS: tuple[str, ...] = (
    "beautiful", "nice view", "nice", "good", "amazing", "漂亮", "好看", "美丽",
)
CLIP_WINDOW = 77  # tokens, including the start and end tokens
BLUR_THRESHOLD = 100.0  # variance of the Laplacian on the 8-bit grey image (<= 512 px side)
NEAR_DUPLICATE_DISTANCE = 4  # phash Hamming distance
_CJK = re.compile(r"[\u3000-\u9fff\uf900-\ufaff\uff00-\uffef]")
_WORD = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")

Severity = Literal["error", "warning"]
TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Finding:
    """One problem with one file, and what to do about it."""

    file: str
    problem: str
    fix: str
    severity: Severity


def estimate_tokens(caption: str) -> int:
    """A conservative CLIP token count without a tokenizer: long words and CJK cost more."""
    count = 2  # start and end tokens
    for piece in _WORD.findall(caption):
        if _CJK.fullmatch(piece):
            count += 2  # a CJK character is 1-3 byte-level BPE tokens; 2 on average
        elif piece.isalnum():
            count += max(1, math.ceil(len(piece) / 4))
        else:
            count += 1
    return count


def tokenizer_counter(tokenizer: object) -> TokenCounter:
    """Exact counts from a CLIPTokenizer (start and end tokens included, no truncation)."""
    return clip_token_counter(tokenizer, special_tokens=True)


def laplacian_variance(image: Image.Image) -> float:
    """Sharpness: variance of the 4-neighbour Laplacian of the grey image (longest side <= 512)."""
    grey = image.convert("L")
    if max(grey.size) > 512:
        grey.thumbnail((512, 512), Image.Resampling.BILINEAR)
    g = np.asarray(grey, dtype=np.float64)  # [h, w]
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


def _caption_table(folder: Path) -> tuple[dict[str, tuple[str, bool]], str]:
    metadata = folder / "metadata.csv"
    if metadata.is_file():
        return read_metadata(metadata), metadata.name
    table: dict[str, tuple[str, bool]] = {}
    for path in list_images(folder):
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            table[path.name] = (sidecar.read_text(encoding="utf-8").strip(), False)
    return table, "<image>.txt"


def _caption_findings(
    name: str, caption: str, draft: bool, source: str, count_tokens: TokenCounter
) -> list[Finding]:
    found: list[Finding] = []
    if draft:
        found.append(Finding(name, "caption is an unreviewed draft",
                             f"check it, then clear the draft column in {source}", "warning"))
    lowered = caption.lower()
    vague = [w for w in VAGUE_WORDS if re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", lowered)]
    if vague:
        found.append(Finding(name, f"vague words: {', '.join(vague)}",
                             "describe what is seen (white walls, black tiles, canal) instead", "warning"))
    tokens = count_tokens(caption)
    if tokens > CLIP_WINDOW:
        found.append(Finding(name, f"caption is {tokens} tokens; CLIP reads only {CLIP_WINDOW}",
                             "shorten it; words past the window are ignored", "warning"))
    return found


def lint_folder(
    folder: Path, *, resolution: int = 512, count_tokens: TokenCounter = estimate_tokens
) -> list[Finding]:
    """Every finding for the images and captions in `folder`, sorted by file."""
    captions, source = _caption_table(folder)
    images = list_images(folder)
    names = {p.name for p in images}
    findings: list[Finding] = []
    for name in sorted(set(captions) - names):
        findings.append(Finding(name, f"listed in {source} but the file is missing",
                                "remove the row or add the image", "error"))
    by_caption: dict[str, list[str]] = {}
    hashes: list[tuple[str, imagehash.ImageHash]] = []
    for path in images:
        caption, draft = captions.get(path.name, ("", False))
        if not caption:
            findings.append(Finding(path.name, "missing caption",
                                    f"add a caption in {source} (covergen-label drafts them)", "error"))
        else:
            by_caption.setdefault(caption.strip().lower(), []).append(path.name)
            findings += _caption_findings(path.name, caption, draft, source, count_tokens)
        try:
            image = open_rgb(path)
        except (OSError, ValueError) as exc:
            findings.append(Finding(path.name, f"unreadable image ({exc})",
                                    "re-export it as PNG or JPEG, or delete it", "error"))
            continue
        if min(image.size) < resolution:
            findings.append(Finding(path.name, f"{image.width}x{image.height} is under {resolution} px",
                                    f"use a source at least {resolution} px on the short side", "warning"))
        sharpness = laplacian_variance(image)
        if sharpness < BLUR_THRESHOLD:
            problem = f"blurry or flat (sharpness {sharpness:.0f} < {BLUR_THRESHOLD:.0f})"
            findings.append(Finding(path.name, problem, "replace it with a sharper photo", "warning"))
        hashes.append((path.name, imagehash.phash(image)))
    for files in by_caption.values():
        if len(files) > 1:
            for name in files:
                others = ", ".join(f for f in files if f != name)
                findings.append(Finding(name, f"same caption as {others}",
                                        "say what differs between these images", "warning"))
    for i, (name_a, hash_a) in enumerate(hashes):
        for name_b, hash_b in hashes[i + 1:]:
            distance = hash_a - hash_b
            if distance <= NEAR_DUPLICATE_DISTANCE:
                findings.append(Finding(name_b, f"near-duplicate of {name_a} (phash distance {distance})",
                                        "keep one of them; duplicates over-weight one scene", "warning"))
    return sorted(findings, key=lambda f: (f.file, f.severity, f.problem))


def format_table(findings: list[Finding]) -> str:
    """A fixed-width table: file | level | problem | how to fix."""
    if not findings:
        return "no problems found"
    rows = [("file", "level", "problem", "how to fix")]
    rows += [(f.file, f.severity, f.problem, f.fix) for f in findings]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3]]).rstrip()
        for r in rows
    ]
    errors = sum(1 for f in findings if f.severity == "error")
    lines.append(f"{errors} errors, {len(findings) - errors} warnings")
    return "\n".join(lines)
