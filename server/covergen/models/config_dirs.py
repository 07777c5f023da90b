"""Complete offline config directories for loading single-file checkpoints.

`StableDiffusionPipeline.from_single_file` needs every component's config and the tokenizer
files from somewhere; without `config=` it asks the Hugging Face hub, which we never do. This
module owns the shipped SD 1.5 configs (`covergen/configs/sd15/`) and assembles, under the cache
dir, a directory that holds a set of component configs plus the generated CLIP tokenizer files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from covergen.errors import ConfigError
from covergen.models.cache import publish_directory, staging_dir
from covergen.models.clip_vocab import write_tokenizer_files

SD15_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "sd15"

# The config files of an SD-1.5-layout pipeline, by path relative to the config dir.
COMPONENT_CONFIG_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "scheduler/scheduler_config.json",
)
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def read_component_configs(config_dir: Path) -> dict[str, dict[str, object]]:
    """The component config files of `config_dir`, parsed, keyed by relative path."""
    configs: dict[str, dict[str, object]] = {}
    for relative in COMPONENT_CONFIG_FILES:
        path = config_dir / relative
        if not path.is_file():
            raise ConfigError(
                f"config dir {config_dir} lacks {relative}; a config dir needs "
                f"{', '.join(COMPONENT_CONFIG_FILES)} (see {SD15_CONFIG_DIR} for SD 1.5)"
            )
        configs[relative] = json.loads(path.read_text(encoding="utf-8"))
    return configs


def assemble_config_dir(configs: dict[str, dict[str, object]], cache_dir: Path) -> Path:
    """A cached directory holding `configs` and the CLIP tokenizer files, ready for `config=`.

    The directory is named by a hash of the configs, so each distinct architecture is assembled
    once and never overwritten.
    """
    canonical = json.dumps(configs, sort_keys=True, separators=(",", ":")).encode()
    target = cache_dir / "configs" / hashlib.sha256(canonical).hexdigest()[:16]
    if (target / "model_index.json").is_file():
        return target
    tokenizer_dir = write_tokenizer_files(cache_dir)
    staging = staging_dir(target)
    for relative, config in configs.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    (staging / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, staging / "tokenizer" / name)
    publish_directory(staging, target)
    return target


def config_dir_for(config_dir: Path | None, cache_dir: Path) -> Path:
    """The complete config dir for `config_dir`'s components (default: shipped SD 1.5)."""
    return assemble_config_dir(read_component_configs(config_dir or SD15_CONFIG_DIR), cache_dir)
