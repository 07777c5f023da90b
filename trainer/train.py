"""One LoRA training run, from a validated `TrainConfig` to exported adapter files.

`train(config)` loads the base, scans and caches the data, attaches LoRA layers, optimises them
with AdamW, logs to TensorBoard under `output_dir/logs`, checkpoints every `save_steps`, and
finally writes the diffusers and kohya adapter files. It returns a `TrainResult` with the loss
curve. A run with the same seed on the same device gives the same weights; a resumed run
replays the remaining batches exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from PIL import Image
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from covergen.errors import ConfigError
from covergen.models.device import torch_device

from .adapter import (
    attach_adapters,
    lean_lora_forward,
    load_lora_state,
    lora_parameters,
    lora_state,
    seed_from_file,
)
from .base import load_base
from .buckets import make_buckets
from .checkpoint import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import TrainImage, epoch_batches, read_records, scan, split_validation
from .export import TrainingFacts, export_diffusers, export_kohya
from .latents import CaptionEncoder, LatentCache, encode_pixels, load_pixels
from .loss import denoising_loss, held_out_loss
from .samples import sample_grid

log = logging.getLogger("trainer")
_VALIDATION_SEED_OFFSET = 7919

# Progress hook: `on_event(kind, fields)` with kind "start" (step, total_steps, batches_per_epoch),
# "step" (step, loss, lr), "validation" (step, loss), "samples" (step, epoch, path) and "done"
# (step). The CLI writes them as JSON lines (`--events FILE`); the studio draws its charts from them.
TrainEvents = Callable[[str, dict[str, Any]], None]


def _no_events(kind: str, fields: dict[str, Any]) -> None:
    """The default hook: nothing listens."""


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


def train(
    config: TrainConfig, *, show_progress: bool = True, on_event: TrainEvents = _no_events
) -> TrainResult:
    """Run (or resume) the training described by `config`; see the module docstring."""
    device = resolve_device(config.device)
    _check_precision(config, device)
    resume_from = _resume_path(config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)

    base = load_base(config.base_model, device=device)
    if config.resolution is None:  # the base's native size (64 for the embedded tiny model)
        config = config.model_copy(update={"resolution": base.default_size})
    pipe = base.pipeline
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    vae.requires_grad_(False)
    train_set, validation_set, problems = _load_data(config)

    cache = LatentCache(vae, config.cache_dir, base.content_id, flips=config.random_flip)
    cache.prepare(
        (train_set if config.crop == "center" else []) + validation_set,
        batch_size=config.batch_size,
        show_progress=show_progress,
    )
    captions = CaptionEncoder(pipe.tokenizer, text_encoder)

    attach_adapters(unet, text_encoder, config)
    if config.init_lora is not None and resume_from is None:
        seed_from_file(config.init_lora, unet, text_encoder, config)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    unet.train()
    text_encoder.train(config.train_text_encoder)

    groups: list[dict[str, Any]] = [{"params": lora_parameters(unet), "lr": config.learning_rate}]
    if config.train_text_encoder:
        groups.append({"params": lora_parameters(text_encoder), "lr": config.effective_text_encoder_lr})
    # One fused kernel for all LoRA tensors instead of ~10 small ops per tensor (~15 ms per
    # tiny-model step on CPU); the same AdamW update. Devices without it get the foreach path.
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(
        groups, lr=config.learning_rate, fused=fused, foreach=None if fused else True
    )
    batches_per_epoch = len(epoch_batches(train_set, config.batch_size, config.seed, 0))
    total_steps = _total_steps(config, batches_per_epoch)
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None
    generator = torch.Generator().manual_seed(config.seed)

    step, micro_step = 0, 0
    losses: list[float] = []
    validation_losses: dict[int, float] = {}
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        load_lora_state(unet, state.unet_lora)
        if config.train_text_encoder and state.text_encoder_lora:
            load_lora_state(text_encoder, state.text_encoder_lora)
        optimizer.load_state_dict(state.optimizer)
        lr_scheduler.load_state_dict(state.lr_scheduler)
        generator.set_state(state.generator_state)
        step, micro_step = state.step, state.micro_step
        losses, validation_losses = list(state.losses), dict(state.validation_losses)
        log.info("resumed from %s at step %d", resume_from.name, step)

    def conditioning_for(texts: list[str], *, grad: bool) -> torch.Tensor:
        if config.train_text_encoder and grad:
            return captions.encode(texts)
        if config.train_text_encoder:
            with torch.no_grad():
                return captions.encode(texts)
        return captions.encode_frozen(texts)

    def validate() -> float | None:
        if not validation_set:
            return None
        text_encoder.eval()
        latents = [cache.get(img) for img in validation_set]
        conds = list(conditioning_for([img.record.caption for img in validation_set], grad=False))
        text_encoder.train(config.train_text_encoder)
        return held_out_loss(
            unet,
            noise_scheduler,
            latents,
            conds,
            seed=config.seed + _VALIDATION_SEED_OFFSET,
            batch_size=config.batch_size,
        )

    def save_samples(at_step: int) -> None:
        if not config.sample_prompts:
            return
        grid = sample_grid(
            pipe,
            config.sample_prompts,
            size=config.effective_resolution,
            steps=config.sample_steps,
            guidance_scale=config.sample_guidance_scale,
            seed=config.seed,
        )
        writer.add_image("samples", grid, at_step, dataformats="HWC")
        samples_dir = config.output_dir / "samples"
        samples_dir.mkdir(parents=True, exist_ok=True)
        path = samples_dir / f"step-{at_step:06d}.png"
        Image.fromarray(grid).save(path)
        epoch = math.ceil(micro_step / batches_per_epoch)
        on_event("samples", {"step": at_step, "epoch": epoch, "path": str(path)})

    with lean_lora_forward(unet, text_encoder):  # peft's own forward again after the loop
        writer = SummaryWriter(log_dir=str(config.log_dir), purge_step=step if step else None)
        on_event("start", {"step": step, "total_steps": total_steps, "batches_per_epoch": batches_per_epoch})
        if step == 0 and 0 not in validation_losses:
            start = validate()
            if start is not None:
                validation_losses[0] = start
                writer.add_scalar("validation/loss", start, 0)
                on_event("validation", {"step": 0, "loss": start})
            save_samples(0)  # what the base paints before any training: the grid's first row

        def micro_batch_loss(indices: list[int]) -> torch.Tensor:
            images = [train_set[i] for i in indices]
            n = len(images)
            flips = (torch.rand(n, generator=generator) < 0.5).tolist() if config.random_flip else [False] * n
            if config.crop == "random":
                seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
                crops = [load_pixels(img, rng=random.Random(s)) for img, s in zip(images, seeds, strict=True)]
                pixels = torch.stack(
                    [c.flip(-1) if f else c for c, f in zip(crops, flips, strict=True)]
                )  # [b, 3, h, w]
                latents = encode_pixels(vae, pixels)
            else:
                latents = torch.stack(
                    [cache.get(img, flipped=f) for img, f in zip(images, flips, strict=True)]
                )
            texts = [img.record.caption for img in images]
            if config.caption_dropout:
                drops = (torch.rand(n, generator=generator) < config.caption_dropout).tolist()
                texts = ["" if d else t for t, d in zip(texts, drops, strict=True)]
            conditioning = conditioning_for(texts, grad=True)
            return denoising_loss(
                unet,
                noise_scheduler,
                latents.to(device),
                conditioning.to(device),
                generator,
                noise_offset=config.noise_offset,
                snr_gamma=config.snr_gamma,
                mixed_precision=config.mixed_precision,
            )

        params = [p for group in groups for p in group["params"]]
        checkpoints: list[Path] = []
        progress = tqdm(total=total_steps, initial=step, desc="training", disable=not show_progress)
        order: list[list[int]] = []
        order_epoch = -1
        pending: list[float] = []
        while step < total_steps:
            epoch, position = divmod(micro_step, batches_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_batches(train_set, config.batch_size, config.seed, epoch), epoch
            loss = micro_batch_loss(order[position])
            scaled = loss / config.gradient_accumulation_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            pending.append(loss.item())
            micro_step += 1
            if micro_step % config.gradient_accumulation_steps == 0:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(sum(pending) / len(pending))
                pending = []
                lr = lr_scheduler.get_last_lr()[0]
                writer.add_scalar("train/loss", losses[-1], step)
                writer.add_scalar("train/lr", lr, step)
                on_event("step", {"step": step, "loss": losses[-1], "lr": lr})
                progress.update(1)
                progress.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
                if step % config.save_steps == 0:
                    checkpoints.append(
                        save_checkpoint(
                            config.checkpoint_dir,
                            Checkpoint(
                                step=step,
                                micro_step=micro_step,
                                unet_lora=lora_state(unet),
                                text_encoder_lora=lora_state(text_encoder)
                                if config.train_text_encoder
                                else {},
                                optimizer=optimizer.state_dict(),
                                lr_scheduler=lr_scheduler.state_dict(),
                                generator_state=generator.get_state(),
                                losses=losses,
                                validation_losses=validation_losses,
                                config_json=config.to_json(),
                            ),
                            keep=config.checkpoints_to_keep,
                        )
                    )
            epoch_done = micro_step % batches_per_epoch == 0
            if (epoch_done or step == total_steps) and step not in validation_losses and pending == []:
                value = validate()
                if value is not None:
                    validation_losses[step] = value
                    writer.add_scalar("validation/loss", value, step)
                    log.info("step %d: held-out loss %.4f", step, value)
                    on_event("validation", {"step": step, "loss": value})
                save_samples(step)
        progress.close()
        writer.close()

    unet_config = unet.peft_config["default"]
    te_state = lora_state(text_encoder) if config.train_text_encoder else None
    te_config = text_encoder.peft_config["default"] if config.train_text_encoder else None
    diffusers_path = export_diffusers(config.output_dir, lora_state(unet), unet_config, te_state, te_config)
    facts = TrainingFacts(
        base_content_id=base.content_id,
        num_train_images=len(train_set),
        resolution=config.effective_resolution,
        epochs=math.ceil(micro_step / batches_per_epoch),
        steps=step,
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
    result = TrainResult(
        output_dir=config.output_dir,
        diffusers_path=diffusers_path,
        kohya_path=kohya_path,
        global_step=step,
        losses=losses,
        validation_losses=validation_losses,
        num_train_images=len(train_set),
        num_validation_images=len(validation_set),
        skipped=problems,
        checkpoints=checkpoints,
    )
    summary = {
        "global_step": step,
        "final_loss": losses[-1] if losses else None,
        "losses": losses,
        "validation_losses": {str(k): v for k, v in validation_losses.items()},
        "num_train_images": len(train_set),
        "num_validation_images": len(validation_set),
        "diffusers_file": diffusers_path.name,
        "kohya_file": kohya_path.name,
        "skipped": problems,
    }
    (config.output_dir / "training.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2))
    on_event("done", {"step": step})
    return result
