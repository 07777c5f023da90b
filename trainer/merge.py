"""Baking an adapter into the base: one LDM-layout `.safetensors` that needs no LoRA loader."""

from __future__ import annotations

from pathlib import Path

import torch

from covergen.errors import ConfigError

from .base import load_base
from .export import readable_by_others

_ADAPTER = "merge"


def merge_adapter(base_spec: str, lora: Path, weight: float, out: Path) -> Path:
    """Fuse `lora` into `base_spec` at `weight` and write the merged model as a single file."""
    if not lora.is_file():
        raise ConfigError(f"--lora {lora} does not exist; pass the adapter .safetensors file")
    if not 0.0 <= weight <= 2.0:
        raise ConfigError(f"--weight {weight} is outside [0, 2]; 0.8 is a usual value")
    from covergen.models import export_single_file

    base = load_base(base_spec, device=torch.device("cpu"))
    pipe = base.pipeline
    pipe.load_lora_weights(str(lora), adapter_name=_ADAPTER)
    pipe.fuse_lora(lora_scale=weight, adapter_names=[_ADAPTER])
    pipe.unload_lora_weights()  # fused weights stay; the LoRA layers go
    out.parent.mkdir(parents=True, exist_ok=True)
    export_single_file(pipe, out)
    return readable_by_others(out)
