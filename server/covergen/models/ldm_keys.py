"""Diffusers -> original-SD (LDM) state-dict key names, for SD-1.5-layout pipelines.

This is the inverse of what diffusers' single-file loader converts, written from the layout:

* UNet (`model.diffusion_model.`): `conv_in` is `input_blocks.0.0`; down block b, layer l lives
  in `input_blocks.{1 + b*(L+1) + l}` (resnet `.0`, transformer `.1`) and its downsampler in
  `input_blocks.{1 + b*(L+1) + L}.0.op`; the mid block is `middle_block.{0,1,2}`; up block b,
  layer l (L+1 layers each) is `output_blocks.{b*(L+1) + l}`, its upsampler `.1.conv` after a
  plain resnet, `.2.conv` after a transformer. Resnets rename `norm1/conv1/norm2/conv2/
  time_emb_proj/conv_shortcut` to `in_layers.0/in_layers.2/out_layers.0/out_layers.3/
  emb_layers.1/skip_connection`; transformer internals keep their names.
* VAE (`first_stage_model.`): `down_blocks.i.resnets.j` -> `down.i.block.j`, up blocks are
  numbered in reverse (`up_blocks.i` -> `up.{n-1-i}`), mid resnets are `mid.block_1/2`, the mid
  attention is `mid.attn_1.{norm,q,k,v,proj_out}` with 1x1-conv weights `[C, C, 1, 1]`.
* CLIP text (`cond_stage_model.transformer.`): the `text_model.*` keys, prefix restored where
  transformers >= 5.6 dropped it.
"""

from __future__ import annotations

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_VAE_FIXED_PARTS = {"conv_in", "conv_out", "quant_conv", "post_quant_conv"}


class UnmappedKey(KeyError):
    """A diffusers key this SD-1.5-layout mapping does not know; the model is another layout."""


def _resnet_leaf(rest: str) -> str:
    """`conv1.weight` -> `in_layers.2.weight`."""
    module, _, param = rest.rpartition(".")
    if module not in _RESNET_RENAMES:
        raise UnmappedKey(rest)
    return f"{_RESNET_RENAMES[module]}.{param}"


def unet_key(key: str, layers_per_block: int, up_block_has_attention: list[bool]) -> str:
    """The LDM name (without prefix) of a diffusers UNet2DConditionModel key."""
    stride = layers_per_block + 1
    module, _, param = key.rpartition(".")
    if module in _UNET_FIXED:
        return f"{_UNET_FIXED[module]}.{param}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = 1 + block * stride + layer
        return f"input_blocks.{index}.0.{_resnet_leaf(rest)}" if kind == "resnets" else (
            f"input_blocks.{index}.1.{rest}"
        )
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        index = 1 + int(match[1]) * stride + layers_per_block
        return f"input_blocks.{index}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, layer, rest = match[1], int(match[2]), match[3]
        if kind == "resnets":
            return f"middle_block.{2 * layer}.{_resnet_leaf(rest)}"
        return f"middle_block.{2 * layer + 1}.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        index = block * stride + layer
        return f"output_blocks.{index}.0.{_resnet_leaf(rest)}" if kind == "resnets" else (
            f"output_blocks.{index}.1.{rest}"
        )
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        index = block * stride + layers_per_block
        slot = 2 if up_block_has_attention[block] else 1
        return f"output_blocks.{index}.{slot}.conv.{match[2]}"
    raise UnmappedKey(key)


def vae_key(key: str, num_up_blocks: int) -> str:
    """The LDM name (without prefix) of a diffusers AutoencoderKL key."""
    module, _, param = key.rpartition(".")
    if module in _VAE_FIXED_PARTS or re.fullmatch(r"(encoder|decoder)\.conv_(in|out)", module):
        return key
    if match := re.fullmatch(r"(encoder|decoder)\.conv_norm_out", module):
        return f"{match[1]}.norm_out.{param}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", module):
        leaf = match[3].replace("conv_shortcut", "nin_shortcut")
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{leaf}.{param}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", module):
        if match[2] not in _VAE_ATTENTION_RENAMES:
            raise UnmappedKey(key)
        return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION_RENAMES[match[2]]}.{param}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", module):
        leaf = match[3].replace("conv_shortcut", "nin_shortcut")
        return f"encoder.down.{match[1]}.block.{match[2]}.{leaf}.{param}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
        return f"encoder.down.{match[1]}.downsample.conv.{param}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", module):
        leaf = match[3].replace("conv_shortcut", "nin_shortcut")
        level = num_up_blocks - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{leaf}.{param}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
        level = num_up_blocks - 1 - int(match[1])
        return f"decoder.up.{level}.upsample.conv.{param}"
    raise UnmappedKey(key)


def is_vae_attention_projection(ldm_key: str) -> bool:
    """Whether an LDM VAE key is a mid-attention q/k/v/proj_out weight (a 1x1 conv in LDM)."""
    return bool(re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key))


def clip_key(key: str) -> str:
    """The LDM name (without prefix) of a CLIPTextModel key: always under `text_model.`."""
    return key if key.startswith("text_model.") else f"text_model.{key}"
