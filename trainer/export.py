"""Writing a trained adapter in the two formats users load.

* diffusers: `pytorch_lora_weights.safetensors` via `StableDiffusionPipeline.save_lora_weights`,
  keys `unet.<module>.lora_A.weight`, with the peft LoraConfig stored as metadata so
  `load_lora_weights` restores the alpha/rank scale.
* kohya / WebUI: `<name>.safetensors`, keys `lora_unet_<module path, . -> _>.lora_down.weight`
  [r, in], `.lora_up.weight` [out, r], `.alpha` (scalar), text encoder under `lora_te_`, and the
  `ss_*` metadata AUTOMATIC1111 and ComfyUI show, plus `covergen_config` (the training config).

Both files load with `StableDiffusionPipeline.load_lora_weights` and give the same images.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from peft import LoraConfig
from safetensors.torch import save_file

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_DOWN, _UP = ".lora_A.weight", ".lora_B.weight"


def readable_by_others(path: Path) -> Path:
    """Give a written file the mode a plain `open()` would: 0666 less the umask (0644 under the
    usual 022). safetensors' `save_file` creates files 0600, which a server running as another
    user (the image runs as uid 10001) cannot read from a shared styles volume."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


@dataclass(frozen=True)
class TrainingFacts:
    """What the kohya metadata records about the run that produced the adapter."""

    base_content_id: str
    num_train_images: int
    resolution: int
    epochs: int
    steps: int
    learning_rate: float
    comment: str
    output_name: str
    config_json: str


def export_diffusers(
    folder: Path,
    unet_lora: dict[str, torch.Tensor],
    unet_config: LoraConfig,
    text_encoder_lora: dict[str, torch.Tensor] | None = None,
    text_encoder_config: LoraConfig | None = None,
) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` from peft-format state dicts."""
    folder.mkdir(parents=True, exist_ok=True)
    unet_layers: dict[str, torch.nn.Module | torch.Tensor] = dict(unet_lora)
    te_layers: dict[str, torch.nn.Module] | None = (
        dict(text_encoder_lora) if text_encoder_lora else None  # type: ignore[arg-type]
    )
    StableDiffusionPipeline.save_lora_weights(
        folder,
        # peft naming kept as is (`lora_A`/`lora_B`): the format current diffusers writes and
        # reads natively; `convert_state_dict_to_diffusers` would produce the legacy `lora.down`.
        unet_lora_layers=unet_layers,
        text_encoder_lora_layers=te_layers,  # type: ignore[arg-type]  # None = no text encoder
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=(
            text_encoder_config.to_dict() if text_encoder_config is not None else None
        ),
        weight_name=DIFFUSERS_WEIGHT_NAME,
    )
    return readable_by_others(folder / DIFFUSERS_WEIGHT_NAME)


def _kohya_tensors(
    prefix: str, state: dict[str, torch.Tensor], alpha: float, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, down in state.items():
        if not key.endswith(_DOWN):
            continue
        module = key.removesuffix(_DOWN)
        up = state[module + _UP]
        name = f"{prefix}_{module.replace('.', '_')}"
        out[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()  # [r, in] (conv: [r, in, k, k])
        out[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()  # [out, r] (conv: [out, r, 1, 1])
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)  # [] scale = alpha / r
    return out


def export_kohya(
    path: Path,
    unet_lora: dict[str, torch.Tensor],
    unet_config: LoraConfig,
    facts: TrainingFacts,
    text_encoder_lora: dict[str, torch.Tensor] | None = None,
    *,
    fp16: bool = False,
) -> Path:
    """Write the kohya/WebUI-format adapter at `path` (fp32 unless `fp16`, which halves the size)."""
    dtype = torch.float16 if fp16 else torch.float32
    alpha = float(unet_config.lora_alpha)
    tensors = _kohya_tensors("lora_unet", unet_lora, alpha, dtype)
    if text_encoder_lora:
        # kohya names CLIP modules from `text_model.`; transformers >= 5.6 drops that prefix.
        te = {
            (k if k.startswith("text_model.") else f"text_model.{k}"): v
            for k, v in text_encoder_lora.items()
        }
        tensors.update(_kohya_tensors("lora_te", te, alpha, dtype))
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(int(unet_config.r)),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_hash": facts.base_content_id,
        "ss_num_train_images": str(facts.num_train_images),
        "ss_resolution": f"({facts.resolution}, {facts.resolution})",
        "ss_num_epochs": str(facts.epochs),
        "ss_steps": str(facts.steps),
        "ss_learning_rate": str(facts.learning_rate),
        "ss_training_comment": facts.comment,
        "ss_output_name": facts.output_name,
        "covergen_config": facts.config_json,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(temp), metadata=metadata)
    os.replace(readable_by_others(temp), path)
    return path


def read_config_from_kohya(path: Path) -> dict[str, object]:
    """The training config embedded in a kohya file by `export_kohya`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    return json.loads(meta.get("covergen_config", "{}"))
