"""Sample images from the current adapter, tiled into one grid per call, for TensorBoard."""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline


@torch.no_grad()
def sample_grid(
    pipeline: StableDiffusionPipeline,
    prompts: list[str],
    *,
    size: int,
    steps: int,
    guidance_scale: float,
    seed: int,
) -> np.ndarray:
    """Generate one image per prompt (fixed seed) and tile them: [rows*size, cols*size, 3] uint8."""
    was_training = pipeline.unet.training
    pipeline.unet.eval()
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    images = pipeline(
        prompts,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="np",
    ).images  # [n, size, size, 3] in [0, 1]
    pipeline.unet.train(was_training)
    cols = math.ceil(math.sqrt(len(prompts)))
    rows = math.ceil(len(prompts) / cols)
    grid = np.zeros((rows * size, cols * size, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * size : (r + 1) * size, c * size : (c + 1) * size] = (image * 255).round()
    return grid
