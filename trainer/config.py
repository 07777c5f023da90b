"""The training configuration: one YAML file, validated in full before any work starts.

`load_config(path)` reads `train.yaml`, rejects unknown keys and out-of-range values with a message
that names the file and the key (`train.yaml: lora_rank must be 1..256, got 0`), resolves relative
paths against the YAML file's folder and fills resolution-dependent defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from covergen.config_files import Problem, describe_validation_error, load_yaml_mapping
from covergen.errors import ConfigError
from covergen.models.tiny import is_embedded_spec

# Short names content staff see in tutorials (CLIP/transformers naming) -> diffusers UNet names.
TARGET_MODULE_ALIASES: dict[str, str] = {
    "q_proj": "to_q",
    "k_proj": "to_k",
    "v_proj": "to_v",
    "out_proj": "to_out.0",
}
# The modules a text-encoder LoRA adapts (CLIP attention projections).
TEXT_ENCODER_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
EMBEDDED_BASE = "embedded"
EMBEDDED_RESOLUTION = 64
DEFAULT_RESOLUTION = 512


class TrainConfig(BaseModel):
    """Every knob of one LoRA training run. Paths are absolute once `load_config` returns."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    # --- required: what to train on, from what, and where to write ---
    train_data_dir: Path
    base_model: str
    output_dir: Path
    metadata_path: Path | None = None  # default: <train_data_dir>/metadata.csv if it exists
    # --- the adapter ---
    lora_rank: int = 8
    lora_alpha: float = 8.0
    target_modules: list[str] = Field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    init_lora: Path | None = None  # start from this adapter (incremental training)
    train_text_encoder: bool = False
    text_encoder_lr: float | None = None  # default: learning_rate
    # --- optimisation ---
    batch_size: int = 4
    epochs: int = 10
    max_train_steps: int | None = None  # optimizer steps; caps `epochs` when set
    learning_rate: float = 1e-4
    lr_scheduler: Literal["constant", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = 0
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # --- diffusion-specific loss shaping ---
    noise_offset: float = 0.0
    snr_gamma: float | None = None  # min-SNR weighting; 5.0 is the paper's value
    caption_dropout: float = 0.0
    # --- data ---
    resolution: int | None = None  # default: 64 for the embedded base, else 512
    bucket_step: int = 64
    max_aspect_ratio: float = 2.0
    crop: Literal["center", "random"] = "center"
    random_flip: bool = False
    validation_split: float = 0.1
    # --- monitoring and checkpoints ---
    save_steps: int = 500
    checkpoints_to_keep: int = 3
    sample_prompts: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("sample_prompts", "validation_prompts")
    )
    sample_steps: int = 20
    sample_guidance_scale: float = 5.0
    resume: bool | Path = False  # true: the latest checkpoint in output_dir; or a checkpoint path
    output_name: str | None = None  # kohya file name; default: the output_dir's name
    training_comment: str = ""
    export_fp16: bool = False  # write the kohya file in fp16 (half the size)

    @field_validator("lora_rank")
    @classmethod
    def _rank(cls, v: int) -> int:
        if not 1 <= v <= 256:
            raise ValueError(f"lora_rank must be 1..256, got {v}")
        return v

    @field_validator("lora_alpha", "learning_rate", "max_grad_norm", "sample_guidance_scale")
    @classmethod
    def _positive_float(cls, v: float, info: Any) -> float:
        if not v > 0:
            raise ValueError(f"{info.field_name} must be > 0, got {v}")
        return v

    @field_validator("text_encoder_lr")
    @classmethod
    def _te_lr(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"text_encoder_lr must be > 0, got {v}")
        return v

    @field_validator(
        "batch_size",
        "epochs",
        "gradient_accumulation_steps",
        "save_steps",
        "checkpoints_to_keep",
        "sample_steps",
    )
    @classmethod
    def _positive_int(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {v}")
        return v

    @field_validator("lr_warmup_steps")
    @classmethod
    def _warmup(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {v}")
        return v

    @field_validator("max_train_steps")
    @classmethod
    def _max_steps(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"max_train_steps must be >= 1 (or left out), got {v}")
        return v

    @field_validator("noise_offset")
    @classmethod
    def _noise_offset(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"noise_offset must be 0..1 (0.05-0.1 is usual), got {v}")
        return v

    @field_validator("snr_gamma")
    @classmethod
    def _snr(cls, v: float | None) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"snr_gamma must be > 0 (5.0 is usual) or left out, got {v}")
        return v

    @field_validator("caption_dropout")
    @classmethod
    def _dropout(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {v}")
        return v

    @field_validator("validation_split")
    @classmethod
    def _split(cls, v: float) -> float:
        if not 0.0 <= v <= 0.5:
            raise ValueError(f"validation_split must be 0..0.5, got {v}")
        return v

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: int | None) -> int | None:
        if v is not None and (v < 64 or v > 2048 or v % 8):
            raise ValueError(f"resolution must be a multiple of 8 in 64..2048, got {v}")
        return v

    @field_validator("bucket_step")
    @classmethod
    def _bucket_step(cls, v: int) -> int:
        if v < 8 or v % 8:
            raise ValueError(f"bucket_step must be a multiple of 8, got {v}")
        return v

    @field_validator("max_aspect_ratio")
    @classmethod
    def _aspect(cls, v: float) -> float:
        if not 1.0 <= v <= 4.0:
            raise ValueError(f"max_aspect_ratio must be 1..4, got {v}")
        return v

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("target_modules must name at least one module, e.g. [to_q, to_v]")
        mapped = [TARGET_MODULE_ALIASES.get(name, name) for name in v]
        return list(dict.fromkeys(mapped))  # aliases may duplicate canonical names

    @property
    def effective_resolution(self) -> int:
        """The training side length: the configured one, else the base's usual size.

        `train` replaces a missing `resolution` with the loaded base's `default_size`; this
        guess (64 for the embedded model, 512 otherwise) is what `--print-config` shows.
        """
        if self.resolution is not None:
            return self.resolution
        return EMBEDDED_RESOLUTION if is_embedded_spec(self.base_model) else DEFAULT_RESOLUTION

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else self.learning_rate

    @property
    def effective_output_name(self) -> str:
        return self.output_name or self.output_dir.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def cache_dir(self) -> Path:
        return self.output_dir / "cache"

    @property
    def log_dir(self) -> Path:
        return self.output_dir / "logs"

    def to_json(self) -> str:
        """The effective config as JSON (what `--print-config` shows and exports embed)."""
        data = self.model_dump(mode="json")
        data["resolution"] = self.effective_resolution
        return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True)


_PATH_KEYS = ("train_data_dir", "metadata_path", "output_dir", "init_lora", "resume", "base_model")


def _resolve_paths(raw: dict[str, Any], folder: Path, source: str) -> dict[str, Any]:
    """Make relative path values absolute against the YAML file's folder."""
    out = dict(raw)
    for key in _PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"{source}: {key} contains a NUL character; write a plain path")
    for key in ("train_data_dir", "metadata_path", "output_dir", "init_lora"):
        value = out.get(key)
        if isinstance(value, str) and value:
            out[key] = str((folder / Path(value).expanduser()).resolve())
    resume = out.get("resume")
    if isinstance(resume, str) and resume:
        out["resume"] = str((folder / Path(resume).expanduser()).resolve())
    base = out.get("base_model")
    if isinstance(base, str) and not is_embedded_spec(base) and not Path(base).is_absolute():
        candidate = (folder / base).resolve()
        out["base_model"] = str(candidate)
    return out


def _phrase_config_problem(source: str) -> Callable[[Problem], str]:
    """One sentence per problem, starting with the config file's name."""

    def phrase(problem: Problem) -> str:
        key = problem.key or "(top level)"
        if problem.kind == "unknown":
            return f"{source}: unknown key '{key}'; known keys: {', '.join(sorted(TrainConfig.model_fields))}"
        if problem.kind == "missing":
            return f"{source}: required key '{key}' is missing"
        message = problem.message
        if not message.startswith(key):
            message = f"{key}: {message} (got {problem.input!r})"
        return f"{source}: {message}"

    return phrase


def config_from_mapping(raw: dict[str, Any], *, folder: Path, source: str) -> TrainConfig:
    """Validate a mapping (as read from YAML); relative paths resolve against `folder`."""
    try:
        config = TrainConfig.model_validate(_resolve_paths(raw, folder, source))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, _phrase_config_problem(source))) from None
    if config.metadata_path is None and (config.train_data_dir / "metadata.csv").exists():
        config.metadata_path = config.train_data_dir / "metadata.csv"
    return config


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate `train.yaml`; `overrides` (from CLI flags) win over file values."""
    source = path.name
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; pass --config styles/<name>/train.yaml")
    raw = load_yaml_mapping(
        path, what="train config", holds="keys such as base_model and train_data_dir", empty_ok=True
    )
    raw.update(overrides or {})
    return config_from_mapping(raw, folder=path.parent.resolve(), source=source)
