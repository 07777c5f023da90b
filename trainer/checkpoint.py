"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is one `torch.save` file `checkpoints/step-000500.pt` holding the LoRA weights,
optimizer and lr-scheduler state, the global step, the loss history and the RNG state. It is
written to a temporary file and moved into place with `os.replace`, so a crash mid-write never
leaves a truncated checkpoint. Only tensors and plain values are stored: it loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from covergen.errors import ConfigError

_NAME = re.compile(r"^step-(\d{6,})\.pt$")


@dataclass
class Checkpoint:
    """The resumable state of a run after `step` optimizer steps."""

    step: int
    micro_step: int  # batches consumed so far (step * gradient_accumulation_steps)
    unet_lora: dict[str, torch.Tensor]
    text_encoder_lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    generator_state: torch.Tensor  # the CPU torch.Generator that draws noise, timesteps, flips
    losses: list[float]
    validation_losses: dict[int, float]
    config_json: str


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:06d}.pt"


def save_checkpoint(folder: Path, checkpoint: Checkpoint, *, keep: int) -> Path:
    """Write atomically, then delete all but the newest `keep` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(folder, checkpoint.step)
    temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    payload = {
        "step": checkpoint.step,
        "micro_step": checkpoint.micro_step,
        "unet_lora": checkpoint.unet_lora,
        "text_encoder_lora": checkpoint.text_encoder_lora,
        "optimizer": checkpoint.optimizer,
        "lr_scheduler": checkpoint.lr_scheduler,
        "generator_state": checkpoint.generator_state,
        "losses": torch.tensor(checkpoint.losses, dtype=torch.float64),
        "validation_steps": torch.tensor(list(checkpoint.validation_losses), dtype=torch.int64),
        "validation_values": torch.tensor(
            list(checkpoint.validation_losses.values()), dtype=torch.float64
        ),
        "config_json": checkpoint.config_json,
    }
    torch.save(payload, temp)
    os.replace(temp, target)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return target


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(folder: Path) -> Path:
    """The newest checkpoint, or a ConfigError that says how to start without one."""
    found = list_checkpoints(folder)
    if not found:
        raise ConfigError(
            f"resume: no checkpoint in {folder}; run without --resume (or resume: false) to "
            "start fresh"
        )
    return found[-1]


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`."""
    if not path.is_file():
        raise ConfigError(f"resume: checkpoint {path} does not exist; fix resume in train.yaml")
    data = torch.load(path, map_location="cpu", weights_only=True)
    return Checkpoint(
        step=int(data["step"]),
        micro_step=int(data["micro_step"]),
        unet_lora=data["unet_lora"],
        text_encoder_lora=data["text_encoder_lora"],
        optimizer=data["optimizer"],
        lr_scheduler=data["lr_scheduler"],
        generator_state=data["generator_state"],
        losses=[float(x) for x in data["losses"]],
        validation_losses={
            int(s): float(v)
            for s, v in zip(data["validation_steps"], data["validation_values"], strict=True)
        },
        config_json=str(data["config_json"]),
    )
