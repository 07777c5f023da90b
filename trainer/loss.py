"""The denoising objective a LoRA is trained on, and the held-out loss that measures it.

Noise (plus optional offset noise) is added to clean latents at random timesteps with the DDPM
schedule of the base; the UNet predicts epsilon or v (whatever the base's scheduler says), and
the per-sample MSE is optionally re-weighted by min-SNR-gamma. All randomness comes from one CPU
`torch.Generator`, so a run is reproducible and its RNG state can be checkpointed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import cast

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.training_utils import compute_snr

from covergen.errors import ConfigError


def autocast_context(device: torch.device, mixed_precision: str) -> AbstractContextManager[None]:
    """`torch.autocast` for fp16/bf16 on an accelerator; nothing for full precision."""
    if mixed_precision == "no":
        return nullcontext()
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def training_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction)."""
    kind = scheduler.config["prediction_type"]
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, cast(torch.IntTensor, timesteps))
    raise ConfigError(
        f"base scheduler prediction_type '{kind}' is not supported; use an epsilon or "
        "v_prediction base model"
    )


def denoising_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,  # [b, 4, h/8, w/8] on the training device
    conditioning: torch.Tensor,  # [b, 77, dim]
    generator: torch.Generator,
    *,
    noise_offset: float = 0.0,
    snr_gamma: float | None = None,
    mixed_precision: str = "no",
) -> torch.Tensor:
    """Mean (optionally min-SNR weighted) MSE between the UNet's prediction and its target."""
    device = latents.device
    b, c = latents.shape[:2]
    noise = torch.randn(latents.shape, generator=generator).to(device)  # [b, 4, h/8, w/8]
    if noise_offset:
        noise = noise + noise_offset * torch.randn((b, c, 1, 1), generator=generator).to(device)
    steps = int(scheduler.config["num_train_timesteps"])
    timesteps = cast(torch.IntTensor, torch.randint(0, steps, (b,), generator=generator).to(device))  # [b]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = training_target(scheduler, latents, noise, timesteps)
    with autocast_context(device, mixed_precision):
        prediction = unet(noisy, timesteps, conditioning).sample
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is not None:
        snr = compute_snr(scheduler, timesteps)  # [b]
        weights = torch.clamp(snr, max=snr_gamma) / snr
        if scheduler.config["prediction_type"] == "v_prediction":
            weights = torch.clamp(snr, max=snr_gamma) / (snr + 1)
        per_sample = per_sample * weights
    return per_sample.mean()


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def held_out_loss(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    latents: list[torch.Tensor],  # each [4, h/8, w/8]
    conditioning: list[torch.Tensor],  # each [77, dim]
    *,
    seed: int,
    repeats: int = 4,
    batch_size: int = 8,
) -> float:
    """Plain MSE on held-out images with noise and timesteps fixed by `seed` (comparable runs)."""
    generator = torch.Generator().manual_seed(seed)
    was_training = unet.training
    unet.eval()
    device = unet.device
    total, count = 0.0, 0
    order = sorted(range(len(latents)), key=lambda i: tuple(latents[i].shape))
    for _ in range(repeats):
        for group in chunks(order, batch_size):
            shapes = {tuple(latents[i].shape) for i in group}
            for shape in shapes:
                members = [i for i in group if tuple(latents[i].shape) == shape]
                batch = torch.stack([latents[i] for i in members]).to(device)
                cond = torch.stack([conditioning[i] for i in members]).to(device)
                loss = denoising_loss(unet, scheduler, batch, cond, generator)
                total += float(loss) * len(members)
                count += len(members)
    unet.train(was_training)
    return total / max(count, 1)
