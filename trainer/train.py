"""One LoRA training run, from a validated `TrainConfig` to exported adapter files.

`train(config)` runs named steps: load the base, `prepare_data` (scan, split, cache latents),
`prepare_adapters` (attach LoRA layers, optionally seeded from a file), `make_optimisation`
(AdamW and its schedule), the `TrainingLoop` (`trainer.loop`: steps, checkpoints every
`save_steps`, validation, samples), then `export_adapters` (diffusers and kohya files) and
`write_summary` (`training.json`). Progress goes out as events (`trainer.events`): TensorBoard
under `output_dir/logs`, the progress bar and the caller's `on_event` all read the same stream.
It returns a `TrainResult` with the loss curve. A run with the same seed on the same device gives
the same weights; a resumed run replays the remaining batches exactly as the uninterrupted run
would have.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler

from covergen.errors import ConfigError
from covergen.models.device import torch_device
from covergen.models.loading import LoadedBase

from .adapter import attach_adapters, lean_lora_forward, lora_parameters, lora_state, seed_from_file
from .base import load_base
from .buckets import make_buckets
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .dataset import TrainImage, epoch_batches, read_records, scan, split_validation
from .events import ProgressBar, TensorBoardLog, TrainEvents, broadcast, no_events
from .export import TrainingFacts, export_diffusers, export_kohya
from .latents import CaptionEncoder, LatentCache
from .loop import LoopState, Optimisation, TrainingData, TrainingLoop

log = logging.getLogger("trainer")


@dataclass
class TrainResult:
    """What a run produced: the loss curve, the held-out losses, and where the files are."""

    output_dir: Path
    diffusers_path: Path
    kohya_path: Path
    global_step: int
    losses: list[float]  # one per optimizer step, index i = step i+1 (resumed runs included)
    validation_losses: dict[int, float]  # step -> held-out loss; step 0 is the starting point
    num_train_images: int
    num_validation_images: int
    skipped: list[str] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def start_validation_loss(self) -> float | None:
        return self.validation_losses.get(0)

    @property
    def final_validation_loss(self) -> float | None:
        return self.validation_losses[max(self.validation_losses)] if self.validation_losses else None


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda, then mps, then cpu: the server's rule (`covergen.models.device`)."""
    return torch_device(name, setting="device in train.yaml")


def _check_precision(config: TrainConfig, device: torch.device) -> None:
    if config.mixed_precision != "no" and device.type != "cuda":
        raise ConfigError(
            f"mixed_precision {config.mixed_precision} needs a CUDA GPU, but training runs on "
            f"{device.type}; set mixed_precision: no"
        )


def _resume_path(config: TrainConfig) -> Path | None:
    if config.resume is True:
        return latest_checkpoint(config.checkpoint_dir)
    if isinstance(config.resume, Path):
        return config.resume
    return None


def _total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    if config.max_train_steps is not None:
        return config.max_train_steps
    return math.ceil(config.epochs * batches_per_epoch / config.gradient_accumulation_steps)


def _load_data(config: TrainConfig) -> tuple[list[TrainImage], list[TrainImage], list[str]]:
    records, problems = read_records(config.train_data_dir, config.metadata_path)
    buckets = make_buckets(
        config.effective_resolution, step=config.bucket_step, max_aspect_ratio=config.max_aspect_ratio
    )
    report = scan(records, buckets)
    problems += report.problems
    for line in problems:
        log.warning("skipped %s", line)
    if report.drafts:
        log.warning(
            "%d captions are still marked draft; review them and clear the draft column",
            report.drafts,
        )
    if not report.images:
        raise ConfigError(
            f"no usable images in {config.train_data_dir} ({len(problems)} skipped); "
            "fix the lines above or point train_data_dir at the image folder"
        )
    train_set, validation_set = split_validation(report.images, config.validation_split, config.seed)
    return train_set, validation_set, problems


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def prepare_data(config: TrainConfig, base: LoadedBase, *, show_progress: bool) -> TrainingData:
    """Scan and split the images, cache the latents of those the loop reads from the cache
    (validation always; training too with centre crops), and the caption encoder."""
    pipe = base.pipeline
    train_set, validation_set, problems = _load_data(config)
    cache = LatentCache(pipe.vae, config.cache_dir, base.content_id, flips=config.random_flip)
    cache.prepare(
        (train_set if config.crop == "center" else []) + validation_set,
        batch_size=config.batch_size,
        show_progress=show_progress,
    )
    return TrainingData(
        train_set=train_set,
        validation_set=validation_set,
        problems=problems,
        cache=cache,
        captions=CaptionEncoder(pipe.tokenizer, pipe.text_encoder),
        batches_per_epoch=len(epoch_batches(train_set, config.batch_size, config.seed, 0)),
    )


def prepare_adapters(config: TrainConfig, base: LoadedBase, *, resuming: bool) -> None:
    """Attach the LoRA layers (seeded from `init_lora` on a fresh run) and set train modes."""
    unet, text_encoder = base.pipeline.unet, base.pipeline.text_encoder
    attach_adapters(unet, text_encoder, config)
    if config.init_lora is not None and not resuming:
        seed_from_file(config.init_lora, unet, text_encoder, config)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    unet.train()
    text_encoder.train(config.train_text_encoder)


def make_optimisation(
    config: TrainConfig, base: LoadedBase, device: torch.device, batches_per_epoch: int
) -> Optimisation:
    """AdamW over the LoRA parameters (text encoder at its own lr), the lr schedule over the
    run's total steps, and a grad scaler for fp16."""
    groups: list[dict[str, Any]] = [
        {"params": lora_parameters(base.pipeline.unet), "lr": config.learning_rate}
    ]
    if config.train_text_encoder:
        groups.append(
            {"params": lora_parameters(base.pipeline.text_encoder), "lr": config.effective_text_encoder_lr}
        )
    # One fused kernel for all LoRA tensors instead of ~10 small ops per tensor (~15 ms per
    # tiny-model step on CPU); the same AdamW update. Devices without it get the foreach path.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(
        groups, lr=config.learning_rate, fused=fused, foreach=None if fused else True
    )
    total_steps = _total_steps(config, batches_per_epoch)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
    return Optimisation(
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        scaler=torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None,
        params=[p for group in groups for p in group["params"]],
        total_steps=total_steps,
    )


def export_adapters(
    config: TrainConfig, base: LoadedBase, data: TrainingData, state: LoopState
) -> tuple[Path, Path]:
    """Write the trained adapter in the diffusers layout and as one kohya file; their paths."""
    unet, text_encoder = base.pipeline.unet, base.pipeline.text_encoder
    unet_config = unet.peft_config["default"]
    te_state = lora_state(text_encoder) if config.train_text_encoder else None
    te_config = text_encoder.peft_config["default"] if config.train_text_encoder else None
    diffusers_path = export_diffusers(config.output_dir, lora_state(unet), unet_config, te_state, te_config)
    facts = TrainingFacts(
        base_content_id=base.content_id,
        num_train_images=len(data.train_set),
        resolution=config.effective_resolution,
        epochs=state.epochs(data.batches_per_epoch),
        steps=state.step,
        learning_rate=config.learning_rate,
        comment=config.training_comment,
        output_name=config.effective_output_name,
        config_json=config.to_json(),
    )
    kohya_path = export_kohya(
        config.output_dir / f"{config.effective_output_name}.safetensors",
        lora_state(unet),
        unet_config,
        facts,
        te_state,
        fp16=config.export_fp16,
    )
    return diffusers_path, kohya_path


def write_summary(result: TrainResult) -> Path:
    """`output_dir/training.json`: the loss curves, image counts and file names of the run."""
    summary = {
        "global_step": result.global_step,
        "final_loss": result.losses[-1] if result.losses else None,
        "losses": result.losses,
        "validation_losses": {str(k): v for k, v in result.validation_losses.items()},
        "num_train_images": result.num_train_images,
        "num_validation_images": result.num_validation_images,
        "diffusers_file": result.diffusers_path.name,
        "kohya_file": result.kohya_path.name,
        "skipped": result.skipped,
    }
    path = result.output_dir / "training.json"
    path.write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    return path


def train(
    config: TrainConfig, *, show_progress: bool = True, on_event: TrainEvents = no_events
) -> TrainResult:
    """Run (or resume) the training described by `config`; see the module docstring.
    `on_event(kind, fields)` hears every progress event (`trainer.events` lists them)."""
    device = resolve_device(config.device)
    _check_precision(config, device)
    resume_from = _resume_path(config)
    _seed_everything(config.seed)
    base = load_base(config.base_model, device=device)
    if config.resolution is None:  # the base's native size (64 for the embedded tiny model)
        config = config.model_copy(update={"resolution": base.default_size})
    base.pipeline.vae.requires_grad_(False)
    data = prepare_data(config, base, show_progress=show_progress)
    prepare_adapters(config, base, resuming=resume_from is not None)
    optimisation = make_optimisation(config, base, device, data.batches_per_epoch)
    state = LoopState(generator=torch.Generator().manual_seed(config.seed))
    tensorboard, progress = TensorBoardLog(config.log_dir), ProgressBar(enabled=show_progress)
    emit = broadcast([tensorboard, progress, on_event])
    loop = TrainingLoop(config, base.pipeline, device, data, optimisation, state, emit)
    if resume_from is not None:
        loop.resume(resume_from)
    with lean_lora_forward(base.pipeline.unet, base.pipeline.text_encoder):  # peft's own forward after
        try:
            loop.run()
        finally:
            progress.close()
            tensorboard.close()

    diffusers_path, kohya_path = export_adapters(config, base, data, state)
    result = TrainResult(
        output_dir=config.output_dir,
        diffusers_path=diffusers_path,
        kohya_path=kohya_path,
        global_step=state.step,
        losses=state.losses,
        validation_losses=state.validation_losses,
        num_train_images=len(data.train_set),
        num_validation_images=len(data.validation_set),
        skipped=data.problems,
        checkpoints=state.checkpoints,
    )
    write_summary(result)
    on_event("done", {"step": state.step})
    return result
