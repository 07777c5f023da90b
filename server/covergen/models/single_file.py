"""Single-file checkpoints: export a pipeline to one LDM-layout `.safetensors`, and read it back.

`export_single_file` writes the layout AUTOMATIC1111, ComfyUI and diffusers' `from_single_file`
read (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`). It
also embeds the pipeline's component configs as JSON in the safetensors metadata (key
`covergen.configs`), so a checkpoint of a non-SD-1.5 architecture, such as the embedded tiny
model or a merge of it, loads back with no side files. Other tools ignore that metadata.

When loading, the config dir is chosen in this order: an explicit `config_dir`, the embedded
configs, the shipped SD 1.5 configs. Only safetensors is ever deserialised.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

# diffusers' lazy package __init__ shows mypy its dummy classes; import from the modules
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CLIPTextModel

from covergen.errors import ConfigError
from covergen.models.config_dirs import (
    assemble_config_dir,
    config_dir_for,
    read_component_configs,
)
from covergen.models.ldm_keys import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    UnmappedKey,
    clip_key,
    is_vae_attention_projection,
    unet_key,
    vae_key,
)

CONFIGS_METADATA_KEY = "covergen.configs"


def _pipeline_configs(pipeline: StableDiffusionPipeline) -> dict[str, dict[str, object]]:
    """The component configs exactly as `save_pretrained` would write them."""
    with tempfile.TemporaryDirectory(prefix="covergen-configs-") as tmp:
        root = Path(tmp)
        pipeline.save_config(root)
        pipeline.unet.save_config(root / "unet")
        pipeline.vae.save_config(root / "vae")
        pipeline.scheduler.save_config(root / "scheduler")
        pipeline.text_encoder.config.save_pretrained(root / "text_encoder")
        return read_component_configs(root)


def ldm_state_dict(
    unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel
) -> dict[str, torch.Tensor]:
    """The three models' weights under LDM single-file names, on their own device and dtype."""
    layers_per_block = unet.config["layers_per_block"]
    if not isinstance(layers_per_block, int):
        raise ConfigError(
            f"cannot export a UNet with per-block layers_per_block={layers_per_block}; the LDM "
            "single-file layout needs one int for every block"
        )
    up_has_attention = ["CrossAttn" in name for name in unet.config["up_block_types"]]
    num_up_blocks = len(vae.config["up_block_types"])
    unet_state, text_state = unet.state_dict(), text_encoder.state_dict()
    if any(".base_layer." in key or ".lora_" in key for key in [*unet_state, *text_state]):
        raise ConfigError(
            "cannot export a model with unfused LoRA layers; call pipeline.fuse_lora() and then "
            "pipeline.unload_lora_weights() first, so the file holds plain merged weights"
        )
    state: dict[str, torch.Tensor] = {}
    try:
        for key, tensor in unet_state.items():
            state[UNET_PREFIX + unet_key(key, layers_per_block, up_has_attention)] = tensor
        for key, tensor in vae.state_dict().items():
            name = VAE_PREFIX + vae_key(key, num_up_blocks)
            # [C, C] linear -> [C, C, 1, 1] conv, as LDM stores the VAE mid attention
            state[name] = tensor[:, :, None, None] if is_vae_attention_projection(name) else tensor
    except UnmappedKey as exc:
        raise ConfigError(
            f"cannot export key {exc.args[0]!r}: the pipeline is not in the SD 1.5 layout "
            "(UNet2DConditionModel with a cross-attention mid block, 4-level AutoencoderKL)"
        ) from exc
    for key, tensor in text_state.items():
        state[CLIP_PREFIX + clip_key(key)] = tensor
    return state


def export_single_file(pipeline: StableDiffusionPipeline, out: Path) -> None:
    """Write `pipeline` as one LDM-layout `.safetensors` file at `out`, configs in its metadata.

    Tensors keep the pipeline's dtype. The file is written to a temporary sibling and renamed, so
    a reader never sees half a checkpoint.
    """
    if out.suffix != ".safetensors":
        raise ConfigError(f"export path {out} must end in .safetensors; pick e.g. {out.stem}.safetensors")
    metadata = {"format": "pt", CONFIGS_METADATA_KEY: json.dumps(_pipeline_configs(pipeline))}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    tensors = ldm_state_dict(pipeline.unet, pipeline.vae, pipeline.text_encoder)
    cpu_tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    save_file(cpu_tensors, str(partial), metadata=metadata)
    partial.replace(out)


def embedded_configs(path: Path) -> dict[str, dict[str, object]] | None:
    """The component configs stored in a checkpoint's metadata by `export_single_file`, if any."""
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            metadata = checkpoint.metadata() or {}
    except SafetensorError as exc:
        raise ConfigError(
            f"{path} is not a readable safetensors file ({exc}); re-download or re-export it"
        ) from exc
    text = metadata.get(CONFIGS_METADATA_KEY)
    if text is None:
        return None
    configs = json.loads(text)
    if not isinstance(configs, dict):
        raise ConfigError(f"{path} has malformed {CONFIGS_METADATA_KEY} metadata; re-export it")
    return configs


def single_file_config_dir(path: Path, cache_dir: Path, config_dir: Path | None) -> Path:
    """The complete config dir to load `path` with: explicit, else embedded, else SD 1.5."""
    if config_dir is not None:
        return config_dir_for(config_dir, cache_dir)
    configs = embedded_configs(path)
    if configs is not None:
        return assemble_config_dir(configs, cache_dir)
    return config_dir_for(None, cache_dir)
