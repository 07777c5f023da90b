"""The one place the trainer loads a base model.

Everything else in the trainer receives the `covergen.models.LoadedBase` this returns; which
specs are understood ("embedded", a diffusers folder, a single .safetensors) is decided by
`covergen.models`, so the trainer and the server always agree on what a base is.
"""

from __future__ import annotations

import torch

from covergen.models import LoadedBase, default_cache_dir, load_base_model


def load_base(spec: str, *, device: torch.device) -> LoadedBase:
    """Load `spec` in fp32 on `device`: LoRA training keeps fp32 master weights."""
    return load_base_model(spec, cache_dir=default_cache_dir(), device=device.type, dtype="float32")
