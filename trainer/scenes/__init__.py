"""Procedurally drawn 64 px scenes: the training data of the embedded regional base model.

Public surface:

    draw_scene(style, seed, overlays=()) -> [64, 64, 3] uint8      (render)
    classify(image) -> style; style_distances(image) -> {style: d}  (classifier)
    saturation / brightness / pinkness(image) -> float             (classifier)
    CaptionWriter(styles_dir)                                       (captions)
    base_scene / style_scene / write_style_folder                   (dataset)
    REGIONAL_STYLES, OVERLAY_STYLES

`python -m trainer.scenes --out .cache/scenes` writes one folder per style for covergen-train.
"""

from __future__ import annotations

from trainer.scenes.captions import CaptionWriter
from trainer.scenes.classifier import brightness, classify, pinkness, saturation, style_distances
from trainer.scenes.dataset import DrawnScene, base_scene, style_scene, write_style_folder
from trainer.scenes.render import OVERLAY_STYLES, REGIONAL_STYLES, SCENE_SIZE, draw_scene

__all__ = [
    "OVERLAY_STYLES",
    "REGIONAL_STYLES",
    "SCENE_SIZE",
    "CaptionWriter",
    "DrawnScene",
    "base_scene",
    "brightness",
    "classify",
    "draw_scene",
    "pinkness",
    "saturation",
    "style_distances",
    "style_scene",
    "write_style_folder",
]
