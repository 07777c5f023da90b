"""The base model: the embedded tiny model, offline loading, and single-file export.

Public surface (everything else in this package is internal):

    load_base_model(spec, *, cache_dir, device="auto", dtype="auto", config_dir=None) -> LoadedBase
    resolve_device(device="auto", dtype="auto") -> (torch.device, torch.dtype)
    export_single_file(pipeline, out) -> None
    default_cache_dir() -> Path
    is_embedded_spec(spec) -> bool
"""

from __future__ import annotations

from covergen.models.cache import default_cache_dir
from covergen.models.device import resolve_device
from covergen.models.loading import BASE_MODEL_SETTING, LoadedBase, load_base_model
from covergen.models.single_file import export_single_file
from covergen.models.tiny import EMBEDDED_SPECS, is_embedded_spec

__all__ = [
    "BASE_MODEL_SETTING",
    "EMBEDDED_SPECS",
    "LoadedBase",
    "default_cache_dir",
    "export_single_file",
    "is_embedded_spec",
    "load_base_model",
    "resolve_device",
]
