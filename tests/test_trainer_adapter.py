"""The trainer's lean LoRA forward gives peft's outputs and gradients, and hands peft back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from peft.tuners.lora.layer import Linear as LoraLinear

from trainer.adapter import attach_adapters, lean_lora_forward, lora_parameters
from trainer.config import TrainConfig


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=16,
        attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )  # fmt: skip


def loss_and_grads(unet: UNet2DConditionModel) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=generator)  # [b, 4, h/8, w/8]
    conditioning = torch.randn(2, 5, 16, generator=generator)  # [b, tokens, dim]
    params = lora_parameters(unet)
    for p in params:
        p.grad = None
    loss = unet(latents, torch.tensor([10, 900]), conditioning).sample.square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params if p.grad is not None]


@pytest.mark.parametrize("alpha", [4.0, 8.0])
def test_lean_forward_matches_peft_and_restores_it(tmp_path: Path, alpha: float) -> None:
    unet = tiny_unet()
    config = TrainConfig(train_data_dir=tmp_path, base_model="embedded", output_dir=tmp_path,
                         lora_rank=4, lora_alpha=alpha)  # fmt: skip
    attach_adapters(unet, torch.nn.Module(), config)  # type: ignore[arg-type]
    with torch.no_grad():  # peft starts lora_B at zero: make the adapter change the output
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    layers = [m for m in unet.modules() if isinstance(m, LoraLinear)]
    peft_loss, peft_grads = loss_and_grads(unet)

    with lean_lora_forward(unet) as switched:
        assert switched == len(layers) > 0
        lean_loss, lean_grads = loss_and_grads(unet)
    assert len(lean_grads) == len(peft_grads) == 2 * len(layers)
    # Measured over batches 1/2/4/8, alpha 4/8, torch threads 1/2: loss difference 0, gradient
    # difference at most 3.7e-9 absolute (all inside atol alone). Tolerances: loss rtol 1e-6
    # (8 float32 ulps: another CPU may reduce in another order), gradients atol 1e-7 (27x the
    # measured spread) with rtol 1e-5 for the larger entries.
    torch.testing.assert_close(lean_loss, peft_loss, rtol=1e-6, atol=1e-7)
    for lean, peft in zip(lean_grads, peft_grads, strict=True):
        torch.testing.assert_close(lean, peft, rtol=1e-5, atol=1e-7)
    assert not any("forward" in vars(m) for m in layers)  # peft's forward is back

    unet.disable_adapters()  # the general path again: the adapter no longer counts
    with lean_lora_forward(unet) as switched:
        assert switched == 0
