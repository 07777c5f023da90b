"""Loading the base model, the one way the service and the trainer both do it.

A base model spec is one of:

* `"embedded"` (or `"embedded:tiny"`): the tiny built-in model, built into the cache on first use;
* `"embedded:regional"`: the committed tiny model trained on drawn regional scenes;
* a diffusers directory (it holds `model_index.json`), loaded from its safetensors weights;
* a single `.safetensors` checkpoint in the original SD (LDM) layout, loaded with a local config
  dir (explicit `config_dir`, else the configs `export_single_file` embedded, else SD 1.5's).

Pickle checkpoints (`.ckpt`, `.pt`, `.pth`, `.bin`) are refused before a byte of them is read:
unpickling runs arbitrary code. Nothing touches the network (`local_files_only=True`); the safety
checker is off and the progress bar silent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

# diffusers' lazy package __init__ shows mypy its dummy classes; import from the modules
from diffusers.loaders.single_file_utils import SingleFileComponentError
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from covergen.adapters.files import PICKLE_SUFFIXES
from covergen.errors import ConfigError
from covergen.models.content_id import content_id, directory_files
from covergen.models.device import resolve_device
from covergen.models.single_file import single_file_config_dir
from covergen.models.tiny import EMBEDDED_SPECS, ensure_embedded_model, is_embedded_spec

BASE_MODEL_SETTING = "COVERGEN_BASE_MODEL"
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")


@dataclass(frozen=True)
class LoadedBase:
    """A loaded base pipeline and the facts other modules key on."""

    pipeline: StableDiffusionPipeline
    content_id: str  # 16 hex chars of sha256 over the model's files; stable across machines
    source: str  # "embedded" or the resolved path of the directory / checkpoint
    default_size: int  # pixels: unet sample_size * vae scale factor (64 tiny, 512 SD 1.5)
    device: torch.device
    dtype: torch.dtype
    zero_mean_noise: bool = False  # covergen.json asks the Denoiser for zero-mean starting noise


COVERGEN_JSON = "covergen.json"  # covergen's own facts about a base model, beside model_index.json


def _wants_zero_mean_noise(root: Path) -> bool:
    """`zero_mean_noise` from `covergen.json` beside `model_index.json`; False without the file."""
    facts = root / COVERGEN_JSON
    return facts.is_file() and bool(json.loads(facts.read_text(encoding="utf-8")).get("zero_mean_noise", False))


def _pickle_refusal(path: Path) -> ConfigError:
    return ConfigError(
        f"base model {path} is a pickle checkpoint ({path.suffix}); covergen only loads "
        f"safetensors because unpickling can run arbitrary code. Convert it to .safetensors "
        f"(e.g. load it in a trusted sandbox and save with safetensors.torch.save_file) and set "
        f"{BASE_MODEL_SETTING} to the converted file"
    )


def _check_directory_weights(root: Path) -> None:
    """Refuse a diffusers dir whose component weights exist only as pickles."""
    for component in WEIGHT_COMPONENTS:
        folder = root / component
        if not folder.is_dir():
            raise ConfigError(
                f"diffusers directory {root} has no {component}/ folder; set "
                f"{BASE_MODEL_SETTING} to a complete SD 1.5-layout pipeline directory"
            )
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            found = f" (found only {', '.join(pickles)})" if pickles else ""
            raise ConfigError(
                f"{folder} holds no .safetensors weights{found}; covergen never unpickles. "
                f"Convert the pipeline with save_pretrained(..., safe_serialization=True) and "
                f"set {BASE_MODEL_SETTING} to the converted directory"
            )


def _load_directory(root: Path, dtype: torch.dtype) -> StableDiffusionPipeline:
    _check_directory_weights(root)
    return StableDiffusionPipeline.from_pretrained(
        root,
        dtype=dtype,
        use_safetensors=True,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _load_single_file(
    path: Path, config_dir: Path, dtype: torch.dtype
) -> StableDiffusionPipeline:
    try:
        return StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_dir),
            dtype=dtype,
            local_files_only=True,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except (SingleFileComponentError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"checkpoint {path} does not fit the configs in {config_dir} ({exc}); it must be an "
            f"SD 1.5-layout checkpoint: pass the matching config dir (config_dir=...) or set "
            f"{BASE_MODEL_SETTING} to another file"
        ) from exc


def resolve_spec(spec: str) -> Path:
    """The local path a non-embedded spec names, checked to exist and be a loadable kind."""
    if spec.strip().lower().startswith("embedded:"):
        raise ConfigError(
            f"base model {spec!r} names no embedded model; set {BASE_MODEL_SETTING} to one of "
            f"{', '.join(sorted(EMBEDDED_SPECS))}"
        )
    path = Path(spec).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(path)  # before any existence check: never even open a pickle
    if not path.exists():
        raise ConfigError(
            f"base model {spec!r} does not exist; set {BASE_MODEL_SETTING} to 'embedded', a "
            f"diffusers directory (with model_index.json) or a .safetensors checkpoint"
        )
    path = path.resolve()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ConfigError(
                f"base model directory {path} has no model_index.json, so it is not a diffusers "
                f"pipeline; set {BASE_MODEL_SETTING} to the pipeline's top folder"
            )
        return path
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(
            f"base model file {path} is neither .safetensors nor a known pickle format; set "
            f"{BASE_MODEL_SETTING} to a .safetensors checkpoint or a diffusers directory"
        )
    return path


def load_base_model(
    spec: str,
    *,
    cache_dir: Path,
    device: str = "auto",
    dtype: str = "auto",
    config_dir: Path | None = None,
) -> LoadedBase:
    """Load the base pipeline named by `spec`, offline, onto the resolved device and dtype.

    `config_dir` only matters for a single-file spec: a directory with `model_index.json` and the
    unet/vae/text_encoder/scheduler configs (tokenizer files are generated). Default: the configs
    embedded by `export_single_file`, else the shipped SD 1.5 configs.
    """
    torch_device, torch_dtype = resolve_device(device, dtype)
    if is_embedded_spec(spec):
        root = ensure_embedded_model(cache_dir, spec)
        pipeline = _load_directory(root, torch_dtype)
        files, source = directory_files(root), "embedded"
        zero_mean_noise = _wants_zero_mean_noise(root)
    else:
        path = resolve_spec(spec)
        zero_mean_noise = path.is_dir() and _wants_zero_mean_noise(path)
        if path.is_dir():
            pipeline = _load_directory(path, torch_dtype)
            files = directory_files(path)
        else:
            configs = single_file_config_dir(path, cache_dir, config_dir)
            pipeline = _load_single_file(path, configs, torch_dtype)
            files = {"checkpoint": path} | {
                f"config/{name}": file for name, file in directory_files(configs).items()
            }
        source = str(path)
    pipeline = pipeline.to(torch_device)
    pipeline.set_progress_bar_config(disable=True)
    default_size = int(pipeline.unet.config.sample_size) * int(pipeline.vae_scale_factor)
    return LoadedBase(
        pipeline=pipeline,
        content_id=content_id(files, cache_dir),
        source=source,
        default_size=default_size,
        device=torch_device,
        dtype=torch_dtype,
        zero_mean_noise=zero_mean_noise,
    )
