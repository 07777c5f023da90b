"""How LoRA meets the base model during training: attach, collect, and seed adapters.

The UNet (and optionally the CLIP text encoder) gets a peft adapter named "default"; only its
`lora_A`/`lora_B` weights train. `init_lora` copies an existing adapter file (diffusers or
kohya format) into those weights for incremental training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.utils import convert_unet_state_dict_to_peft
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from transformers import CLIPTextModel

from covergen.errors import ConfigError

from .config import TEXT_ENCODER_TARGET_MODULES, TrainConfig

ADAPTER = "default"


def attach_adapters(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, config: TrainConfig) -> None:
    """Freeze the base, then add trainable LoRA layers to the UNet (and the text encoder)."""
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft accepts float alphas
        target_modules=list(config.target_modules),
        init_lora_weights="gaussian",
    )
    try:
        unet.add_adapter(unet_config)
    except ValueError as exc:
        raise ConfigError(
            f"target_modules {config.target_modules} do not match the UNet ({exc}); "
            "use names such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2"
        ) from None
    if config.train_text_encoder:
        te_config = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # peft accepts float alphas
            target_modules=list(TEXT_ENCODER_TARGET_MODULES),
            init_lora_weights="gaussian",
        )
        # peft directly, not `text_encoder.add_adapter`: transformers 5.2x gates that on peft
        # >= 0.22. `peft_config` is what get/set_peft_model_state_dict look the adapter up by.
        inject_adapter_in_model(te_config, text_encoder, adapter_name=ADAPTER)
        text_encoder.peft_config = {ADAPTER: te_config}  # type: ignore[dict-item]


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters of `module` (everything else is frozen)."""
    return [p for name, p in module.named_parameters() if "lora_" in name and p.requires_grad]


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """peft-format LoRA weights of `module` (`...to_q.lora_A.weight`), detached on CPU."""
    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(module).items()}


def load_lora_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy peft-format LoRA weights into `module`'s "default" adapter; all keys must match."""
    result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ConfigError(
            f"adapter weights do not fit this model: unexpected keys such as {unexpected[0]!r}"
        )


def _check_rank(source: Path, state: dict[str, torch.Tensor], config: TrainConfig) -> None:
    ranks = {v.shape[0] for k, v in state.items() if "lora_A" in k}
    if ranks and ranks != {config.lora_rank}:
        raise ConfigError(
            f"init_lora {source.name} has rank {sorted(ranks)}, but lora_rank is "
            f"{config.lora_rank}; set lora_rank: {min(ranks)}"
        )


def _check_alpha(
    source: Path,
    alphas: dict[str, float] | None,
    metadata: dict[str, object] | None,
    config: TrainConfig,
) -> None:
    """The file's alpha (kohya `.alpha` tensors or diffusers adapter metadata) must match."""
    found: set[float] = {float(a) for a in (alphas or {}).values()}
    meta = metadata or {}
    nested = meta.get("unet")
    alpha = nested.get("lora_alpha") if isinstance(nested, dict) else meta.get("unet.lora_alpha")
    if isinstance(alpha, int | float | str):
        found.add(float(alpha))
    if found and found != {float(config.lora_alpha)}:
        raise ConfigError(
            f"init_lora {source.name} was trained with lora_alpha {sorted(found)}, but "
            f"lora_alpha is {config.lora_alpha}; set lora_alpha: {min(found):g}"
        )


def seed_from_file(
    path: Path, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, config: TrainConfig
) -> None:
    """Start the adapters from an existing LoRA file (diffusers or kohya format)."""
    if not path.is_file():
        raise ConfigError(f"init_lora {path} does not exist; fix init_lora in train.yaml")
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
        str(path), return_lora_metadata=True
    )
    _check_alpha(path, alphas, metadata, config)
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if not unet_state:
        raise ConfigError(f"init_lora {path.name} holds no UNet LoRA weights")
    unet_state = convert_unet_state_dict_to_peft(unet_state)
    _check_rank(path, unet_state, config)
    load_lora_state(unet, unet_state)
    te_state = {
        k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")
    }
    if te_state and config.train_text_encoder:
        from diffusers.utils import convert_state_dict_to_peft

        load_lora_state(text_encoder, convert_state_dict_to_peft(te_state))
