"""How LoRA meets the base model during training: attach, collect, and seed adapters.

The UNet (and optionally the CLIP text encoder) gets a peft adapter named "default"; only its
`lora_A`/`lora_B` weights train. `init_lora` copies an existing adapter file (diffusers or
kohya format) into those weights for incremental training. `lean_lora_forward` swaps peft's
general-purpose LoRA forward for the three `F.linear` calls a single plain adapter needs while
the run trains (same result; measured ~8% less time per tiny-model step on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeGuard, cast

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.utils import convert_unet_state_dict_to_peft
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.lora.layer import Linear as LoraLinear
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


def _is_plain_lora_linear(layer: torch.nn.Module) -> TypeGuard[LoraLinear]:
    """A peft LoRA Linear whose only active adapter is ours, unmerged, without dropout or DoRA."""
    return (
        type(layer) is LoraLinear
        and not layer.merged
        and not layer.disable_adapters
        and list(layer.active_adapters) == [ADAPTER]
        and ADAPTER in layer.lora_A
        and ADAPTER not in layer.lora_variant
        and isinstance(layer.lora_dropout[ADAPTER], torch.nn.Identity)
        and not layer.fan_in_fan_out
        and not layer.base_layer._forward_hooks
        and not layer.base_layer._forward_pre_hooks
    )


def _plain_lora_forward(layer: LoraLinear) -> Callable[..., torch.Tensor]:
    """`base(x) + scaling * B(A(x))` as three `F.linear` calls, no per-call bookkeeping."""
    base = cast(torch.nn.Linear, layer.base_layer)
    lora_a = cast(torch.nn.Linear, layer.lora_A[ADAPTER])
    lora_b = cast(torch.nn.Linear, layer.lora_B[ADAPTER])
    scaling = layer.scaling  # read per call: diffusers' `scale_lora_layers` rescales it in place
    general = LoraLinear.forward

    def forward(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if args or kwargs:  # e.g. peft's `adapter_names`: the general path handles it
            return general(layer, x, *args, **kwargs)
        update = F.linear(F.linear(x, lora_a.weight), lora_b.weight)  # [..., out]
        return torch.add(F.linear(x, base.weight, base.bias), update, alpha=scaling[ADAPTER])

    return forward


@contextmanager
def lean_lora_forward(*modules: torch.nn.Module) -> Iterator[int]:
    """While open, plain LoRA Linear layers in `modules` skip peft's generic forward.

    Yields how many layers were switched; on exit each gets peft's forward back, so anything
    done with the model afterwards (`set_adapters`, merging, a second adapter) sees peft as is.
    """
    switched: list[LoraLinear] = []
    for module in modules:
        for layer in module.modules():
            if _is_plain_lora_linear(layer):
                layer.forward = _plain_lora_forward(layer)  # type: ignore[method-assign]
                switched.append(layer)
    try:
        yield len(switched)
    finally:
        for layer in switched:
            del layer.forward


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
        raise ConfigError(f"adapter weights do not fit this model: unexpected keys such as {unexpected[0]!r}")


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
    state, alphas, metadata = StableDiffusionPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    _check_alpha(path, alphas, metadata, config)
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    if not unet_state:
        raise ConfigError(f"init_lora {path.name} holds no UNet LoRA weights")
    unet_state = convert_unet_state_dict_to_peft(unet_state)
    _check_rank(path, unet_state, config)
    load_lora_state(unet, unet_state)
    te_state = {k.removeprefix("text_encoder."): v for k, v in state.items() if k.startswith("text_encoder.")}
    if te_state and config.train_text_encoder:
        from diffusers.utils import convert_state_dict_to_peft

        load_lora_state(text_encoder, convert_state_dict_to_peft(te_state))
