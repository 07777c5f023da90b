"""The optimisation loop of one training run, in named steps.

`TrainingLoop.run()` walks the training images in each epoch's batch order, adds up gradients
over `gradient_accumulation_steps` micro-batches (`micro_batch_loss`), takes one optimizer step
(`optimizer_step`), checkpoints every `save_steps` (`checkpoint`), and at step 0 and every epoch
end measures the held-out loss and paints a sample grid (`validate_and_sample`). Everything that
changes while it runs is in `LoopState`, which a checkpoint saves and `resume` restores; every
random draw goes through `LoopState.generator`, so a resumed run replays the remaining batches
exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from PIL import Image

from .adapter import load_lora_state, lora_state
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .dataset import TrainImage, epoch_batches
from .events import TrainEvents
from .latents import CaptionEncoder, LatentCache, encode_pixels, load_pixels
from .loss import denoising_loss, held_out_loss
from .samples import sample_grid

log = logging.getLogger("trainer")
_VALIDATION_SEED_OFFSET = 7919


@dataclass
class TrainingData:
    """The images of a run, split, with their cached latents and the caption encoder."""

    train_set: list[TrainImage]
    validation_set: list[TrainImage]
    problems: list[str]  # lines that were skipped, with the reason
    cache: LatentCache
    captions: CaptionEncoder
    batches_per_epoch: int


@dataclass
class Optimisation:
    """AdamW over the LoRA parameters, its learning-rate schedule and (fp16 only) a grad scaler."""

    optimizer: torch.optim.Optimizer
    lr_scheduler: Any  # torch.optim.lr_scheduler.LRScheduler from diffusers' get_scheduler
    scaler: torch.amp.GradScaler | None
    params: list[torch.nn.Parameter]  # every parameter the optimizer updates, for clipping
    total_steps: int


@dataclass
class LoopState:
    """What the loop changes, and what a checkpoint restores."""

    generator: torch.Generator  # CPU; draws noise, timesteps, flips, crops and caption dropout
    step: int = 0  # optimizer steps taken
    micro_step: int = 0  # batches consumed (step * gradient_accumulation_steps once a step is done)
    losses: list[float] = field(default_factory=list)  # index i = step i+1
    validation_losses: dict[int, float] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)  # written by this call (not earlier runs)

    def epochs(self, batches_per_epoch: int) -> int:
        """Epochs started so far, counting a partial one."""
        return math.ceil(self.micro_step / batches_per_epoch)


class TrainingLoop:
    """One run's loop over its data, models and optimiser; `run()` trains to `total_steps`."""

    def __init__(
        self,
        config: TrainConfig,
        pipe: StableDiffusionPipeline,
        device: torch.device,
        data: TrainingData,
        optimisation: Optimisation,
        state: LoopState,
        emit: TrainEvents,
    ) -> None:
        self.config, self.pipe, self.device = config, pipe, device
        self.data, self.opt, self.state, self.emit = data, optimisation, state, emit
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def resume(self, path: Path) -> None:
        """Restore LoRA weights, optimiser, schedule, RNG and history from the checkpoint at `path`."""
        saved = load_checkpoint(path)
        load_lora_state(self.pipe.unet, saved.unet_lora)
        if self.config.train_text_encoder and saved.text_encoder_lora:
            load_lora_state(self.pipe.text_encoder, saved.text_encoder_lora)
        self.opt.optimizer.load_state_dict(saved.optimizer)
        self.opt.lr_scheduler.load_state_dict(saved.lr_scheduler)
        self.state.generator.set_state(saved.generator_state)
        self.state.step, self.state.micro_step = saved.step, saved.micro_step
        self.state.losses, self.state.validation_losses = list(saved.losses), dict(saved.validation_losses)
        log.info("resumed from %s at step %d", path.name, saved.step)

    def run(self) -> None:
        """Train from `state.step` to `total_steps`, emitting start/step/validation/samples events."""
        state, per_epoch, accumulate = (
            self.state,
            self.data.batches_per_epoch,
            self.config.gradient_accumulation_steps,
        )
        self.emit(
            "start", {"step": state.step, "total_steps": self.opt.total_steps, "batches_per_epoch": per_epoch}
        )
        if state.step == 0 and 0 not in state.validation_losses:
            self.validate_and_sample()  # what the base paints before any training: the grid's first row
        order: list[list[int]] = []
        order_epoch = -1
        pending: list[float] = []  # losses of the micro-batches accumulated into the next step
        while state.step < self.opt.total_steps:
            epoch, position = divmod(state.micro_step, per_epoch)
            if epoch != order_epoch:
                order, order_epoch = (
                    epoch_batches(self.data.train_set, self.config.batch_size, self.config.seed, epoch),
                    epoch,
                )
            loss = self.micro_batch_loss(order[position])
            scaled = loss / accumulate
            (self.opt.scaler.scale(scaled) if self.opt.scaler is not None else scaled).backward()
            pending.append(loss.item())
            state.micro_step += 1
            if state.micro_step % accumulate == 0:
                self.optimizer_step(sum(pending) / len(pending))
                pending = []
            epoch_done = state.micro_step % per_epoch == 0
            at_end = state.step == self.opt.total_steps
            if (epoch_done or at_end) and state.step not in state.validation_losses and pending == []:
                self.validate_and_sample()

    def micro_batch_loss(self, indices: list[int]) -> torch.Tensor:
        """The denoising loss of the training images at `indices`, flipped, cropped and captioned
        (or not) by draws from the loop's generator."""
        config, generator = self.config, self.state.generator
        images = [self.data.train_set[i] for i in indices]
        n = len(images)
        flips = (torch.rand(n, generator=generator) < 0.5).tolist() if config.random_flip else [False] * n
        if config.crop == "random":
            seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
            crops = [load_pixels(img, rng=random.Random(s)) for img, s in zip(images, seeds, strict=True)]
            pixels = torch.stack(
                [c.flip(-1) if f else c for c, f in zip(crops, flips, strict=True)]
            )  # [b, 3, h, w]
            latents = encode_pixels(self.pipe.vae, pixels)
        else:
            latents = torch.stack(
                [self.data.cache.get(img, flipped=f) for img, f in zip(images, flips, strict=True)]
            )
        texts = [img.record.caption for img in images]
        if config.caption_dropout:
            drops = (torch.rand(n, generator=generator) < config.caption_dropout).tolist()
            texts = ["" if d else t for t, d in zip(texts, drops, strict=True)]
        return denoising_loss(
            self.pipe.unet,
            self.noise_scheduler,
            latents.to(self.device),
            self.conditioning(texts, grad=True).to(self.device),
            generator,
            noise_offset=config.noise_offset,
            snr_gamma=config.snr_gamma,
            mixed_precision=config.mixed_precision,
        )

    def conditioning(self, texts: list[str], *, grad: bool) -> torch.Tensor:
        """Text-encoder hidden states for `texts`: through the LoRA text encoder when it trains
        (with gradients when `grad`), else the memoised frozen embeddings."""
        captions = self.data.captions
        if self.config.train_text_encoder and grad:
            return captions.encode(texts)
        if self.config.train_text_encoder:
            with torch.no_grad():
                return captions.encode(texts)
        return captions.encode_frozen(texts)

    def optimizer_step(self, loss: float) -> None:
        """Clip, step the optimiser and schedule, record `loss` (the accumulated batches' mean),
        and checkpoint every `save_steps`."""
        opt, state = self.opt, self.state
        if opt.scaler is not None:
            opt.scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(opt.params, self.config.max_grad_norm)
        if opt.scaler is not None:
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
        else:
            opt.optimizer.step()
        opt.lr_scheduler.step()
        opt.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.losses.append(loss)
        self.emit("step", {"step": state.step, "loss": loss, "lr": opt.lr_scheduler.get_last_lr()[0]})
        if state.step % self.config.save_steps == 0:
            state.checkpoints.append(self.checkpoint())

    def checkpoint(self) -> Path:
        """Save the resumable state after this step; older checkpoints beyond the limit go."""
        config, state, opt = self.config, self.state, self.opt
        text_encoder_lora = lora_state(self.pipe.text_encoder) if config.train_text_encoder else {}
        saved = Checkpoint(
            step=state.step,
            micro_step=state.micro_step,
            unet_lora=lora_state(self.pipe.unet),
            text_encoder_lora=text_encoder_lora,
            optimizer=opt.optimizer.state_dict(),
            lr_scheduler=opt.lr_scheduler.state_dict(),
            generator_state=state.generator.get_state(),
            losses=state.losses,
            validation_losses=state.validation_losses,
            config_json=config.to_json(),
        )
        return save_checkpoint(config.checkpoint_dir, saved, keep=config.checkpoints_to_keep)

    def validate_and_sample(self) -> None:
        """Record the held-out loss at this step (when there is a validation set), then paint
        the sample grid (when there are sample prompts)."""
        step = self.state.step
        value = self.held_out_loss()
        if value is not None:
            self.state.validation_losses[step] = value
            if step:
                log.info("step %d: held-out loss %.4f", step, value)
            self.emit("validation", {"step": step, "loss": value})
        self.save_samples()

    def held_out_loss(self) -> float | None:
        """The denoising loss on the validation images at fixed noise; None without any."""
        validation_set = self.data.validation_set
        if not validation_set:
            return None
        text_encoder = self.pipe.text_encoder
        text_encoder.eval()
        latents = [self.data.cache.get(img) for img in validation_set]
        conds = list(self.conditioning([img.record.caption for img in validation_set], grad=False))
        text_encoder.train(self.config.train_text_encoder)
        return held_out_loss(
            self.pipe.unet,
            self.noise_scheduler,
            latents,
            conds,
            seed=self.config.seed + _VALIDATION_SEED_OFFSET,
            batch_size=self.config.batch_size,
        )

    def save_samples(self) -> None:
        """Paint `sample_prompts` at fixed seeds into `output_dir/samples/step-NNNNNN.png`."""
        config, step = self.config, self.state.step
        if not config.sample_prompts:
            return
        grid = sample_grid(
            self.pipe,
            config.sample_prompts,
            size=config.effective_resolution,
            steps=config.sample_steps,
            guidance_scale=config.sample_guidance_scale,
            seed=config.seed,
        )  # [rows*size, cols*size, 3] uint8
        samples_dir = config.output_dir / "samples"
        samples_dir.mkdir(parents=True, exist_ok=True)
        path = samples_dir / f"step-{step:06d}.png"
        Image.fromarray(grid).save(path)
        epoch = self.state.epochs(self.data.batches_per_epoch)
        self.emit("samples", {"step": step, "epoch": epoch, "path": str(path)})
