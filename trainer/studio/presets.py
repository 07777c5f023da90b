"""Training presets named for what staff want to make, and the form <-> config mapping.

The form's values become the same mapping a `train.yaml` holds and are validated by
`trainer.config.config_from_mapping`, so the page shows the CLI's own messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from covergen.errors import ConfigError
from trainer.config import TrainConfig, config_from_mapping

# key -> (label zh/en, kind) in the order the form shows them; the first block is the use case's.
FORM_KEYS: dict[str, tuple[str, str]] = {
    "base_model": ("基础模型 base model", "text"),
    "lora_rank": ("秩 lora_rank", "int"),
    "lora_alpha": ("lora_alpha", "float"),
    "target_modules": ("目标模块 target_modules (逗号分隔 comma-separated)", "list"),
    "batch_size": ("批大小 batch_size", "int"),
    "epochs": ("轮数 epochs", "int"),
    "learning_rate": ("学习率 learning_rate", "float"),
    "save_steps": ("检查点间隔 save_steps", "int"),
    "max_train_steps": ("最多步数 max_train_steps (可空 optional)", "int?"),
    "resolution": ("分辨率 resolution (可空 optional)", "int?"),
    "lr_scheduler": ("学习率调度 lr_scheduler", "text"),
    "lr_warmup_steps": ("预热步数 lr_warmup_steps", "int"),
    "caption_dropout": ("描述丢弃 caption_dropout", "float"),
    "validation_split": ("验证比例 validation_split", "float"),
    "seed": ("随机种子 seed", "int"),
    "device": ("设备 device", "text"),
    "init_lora": ("从已有适配器开始 init_lora (可空 optional)", "text?"),
    "sample_prompts": ("样图提示词 sample_prompts (每行一个 one per line)", "lines"),
    "sample_steps": ("样图步数 sample_steps", "int"),
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "regional": ("地区风格 A regional style", {
        "lora_rank": 8, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
        "batch_size": 4, "epochs": 10, "learning_rate": 1e-3, "save_steps": 50, "lr_scheduler": "cosine",
        "lr_warmup_steps": 10, "caption_dropout": 0.05, "validation_split": 0.1,
    }),
    "overlay": ("简单主题叠加 A simple theme overlay", {
        "lora_rank": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"],
        "batch_size": 4, "epochs": 6, "learning_rate": 1e-3, "save_steps": 50, "lr_scheduler": "constant",
        "lr_warmup_steps": 0, "caption_dropout": 0.1, "validation_split": 0.1,
    }),
    "variant": ("已有风格的增量变体 An incremental variant (e.g. rainy Jiangnan)", {
        "lora_rank": 8, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
        "batch_size": 4, "epochs": 4, "learning_rate": 3e-4, "save_steps": 50, "lr_scheduler": "constant",
        "lr_warmup_steps": 0, "caption_dropout": 0.05, "validation_split": 0.1,
        "init_lora": "../../../styles/jiangnan/adapter.safetensors",
    }),
}
DEFAULTS: dict[str, Any] = {"base_model": "embedded", "seed": 42, "device": "auto", "max_train_steps": None,
                            "resolution": None, "init_lora": None, "sample_prompts": [],
                            "sample_steps": 20}


def preset_values(name: str, styles_dir: Path) -> dict[str, Any]:
    values = {**DEFAULTS, **PRESETS.get(name, PRESETS["regional"])[1]}
    if values.get("init_lora"):
        values["init_lora"] = str(styles_dir / "jiangnan" / "adapter.safetensors")
    return values


def parse_form(form: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Form strings -> train.yaml values; returns the mapping and type problems (CLI-style lines)."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, (_, kind) in FORM_KEYS.items():
        raw = (form.get(key) or "").strip()
        try:
            if kind.endswith("?") and not raw:
                continue
            if kind.startswith("int"):
                values[key] = int(raw)
            elif kind == "float":
                values[key] = float(raw)
            elif kind == "list":
                values[key] = [part.strip() for part in raw.replace("，", ",").split(",") if part.strip()]
            elif kind == "lines":
                values[key] = [line.strip() for line in raw.splitlines() if line.strip()]
            else:
                values[key] = raw
        except ValueError:
            expected = "a whole number" if kind.startswith("int") else "a number"
            problems.append(f"train.yaml: {key}: must be {expected} (got {raw!r})")
    return values, problems


def build_config(values: dict[str, Any], dataset_dir: Path, output_dir: Path) -> tuple[TrainConfig | None, str, list[str]]:
    """Validate like `covergen-train` does; returns (config or None, the YAML, problems)."""
    mapping = {"train_data_dir": str(dataset_dir), "output_dir": str(output_dir), **values}
    text = yaml.safe_dump(mapping, allow_unicode=True, sort_keys=False)
    try:
        config = config_from_mapping(mapping, folder=dataset_dir, source="train.yaml")
    except ConfigError as exc:
        return None, text, str(exc).splitlines()
    return config, text, []
