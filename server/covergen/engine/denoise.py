"""One batch of covers through text encoder, UNet and VAE, with per-sample adapters and seeds.

This is the loop of diffusers' StableDiffusionPipeline written for batches whose samples differ:
each sample keeps its own seed, guidance scale and adapter stack, so a cover is the same whether
it ran alone or in a batch. Deadlines and cancellations are checked between denoising steps.

Each job draws from one seeded generator: first its starting noise, then any noise the scheduler
adds per step (LCM, ancestral samplers), so those samplers are batch-independent too. A batch
whose jobs all ask for guidance 1 skips the unconditional half (CFG at 1 is the conditional
prediction alone). A `base_stack` (the LCM-LoRA of few-step mode) is put under every job's stack.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline

from covergen.engine.lora_layers import PerSampleLora, StackItem, stack_signature
from covergen.errors import Cancelled, CovergenError, DeadlineExceeded, Overloaded

# Admission priorities: lower runs first. A live caller waits on its job; a background job
# finishes a cover whose caller already got a fallback within its budget; a prepare job paints a
# cover ahead of readers (PrepareCovers). See PRIORITY-INTERFACE.md.
LIVE, BACKGROUND, PREPARE = 0, 1, 2


@dataclass
class Priority:
    """A job's admission priority, shared with whoever submitted it so they can lower it.

    The engine reads `value` every time it chooses what to admit next; a budgeted call lowers its
    queued job from LIVE to BACKGROUND (`demote`) when it answers with a fallback instead.
    """

    value: int = LIVE

    def demote(self, to: int = BACKGROUND) -> None:
        """Lower the priority to `to` (never raises it)."""
        self.value = max(self.value, to)


@dataclass
class CoverJob:
    """Everything the engine needs to paint one cover. Built by CoverMaker, run by the engine."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    stack: tuple[StackItem, ...] = ()
    deadline: float | None = None  # time.monotonic() value after which the job is abandoned
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    priority: Priority = field(default_factory=Priority)  # LIVE, BACKGROUND or PREPARE

    def batch_key(self) -> tuple[int, int, int]:
        """Jobs with equal keys can share one denoising loop."""
        return (self.width, self.height, self.steps)

    def stop_reason(self) -> CovergenError | None:
        if self.cancelled.is_set():
            return Cancelled("the client cancelled the request")
        if self.deadline is not None and time.monotonic() > self.deadline:
            return DeadlineExceeded(
                f"the deadline passed after {time.monotonic() - self.enqueued_at:.2f} s; "
                "raise the client deadline or lower steps/size"
            )
        return None


# Per job: the image [height, width, 3] uint8, or the error that ended it.
JobOutcome = np.ndarray | CovergenError


class Denoiser:
    """Owns the pipeline's modules for generation. Only the engine's worker thread calls `run`."""

    def __init__(
        self,
        pipeline: StableDiffusionPipeline,
        zero_mean_noise: bool = False,
        *,
        fuse_shared_stacks: bool = False,
        base_stack: tuple[StackItem, ...] = (),
    ) -> None:
        """`fuse_shared_stacks`: run a batch whose jobs all share one adapter stack on fused weight
        copies instead of LoRA hooks (see `lora_layers`); mixed batches always use the hooks.
        `base_stack`: adapters applied under every job's own stack, through the same hooks."""
        self.pipeline = pipeline
        self.base_stack = base_stack
        self.unet_lora = PerSampleLora(pipeline.unet, "unet", fuse_shared=fuse_shared_stacks)
        self.text_lora = PerSampleLora(pipeline.text_encoder, "text_encoder", fuse_shared=fuse_shared_stacks)
        self.zero_mean_noise = zero_mean_noise
        self.device = pipeline.unet.device
        self.dtype = pipeline.unet.dtype
        self.vae_scale = int(pipeline.vae_scale_factor)

    def module_names(self) -> dict[str, list[str]]:
        return {"unet": self.unet_lora.module_names(), "text_encoder": self.text_lora.module_names()}

    def check_compatible(self, weights: object) -> str | None:
        return self.unet_lora.check_compatible(weights) or self.text_lora.check_compatible(weights)  # type: ignore[arg-type]

    def forget(self, name: str) -> None:
        self.unet_lora.forget(name)
        self.text_lora.forget(name)

    def initial_latents(self, job: CoverJob) -> torch.Tensor:
        """The starting noise of one job, from its seed alone: [1, 4, h/8, w/8]."""
        return self._starting_noise(job, torch.Generator("cpu").manual_seed(job.seed))

    def _starting_noise(self, job: CoverJob, generator: torch.Generator) -> torch.Tensor:
        shape = (
            1,
            self.pipeline.unet.config.in_channels,
            job.height // self.vae_scale,
            job.width // self.vae_scale,
        )
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        if self.zero_mean_noise:
            latents = latents - latents.mean(dim=(2, 3), keepdim=True)
        return latents.to(self.device, self.dtype)

    @torch.inference_mode()
    def run(self, jobs: Sequence[CoverJob]) -> list[JobOutcome]:
        try:
            return self._run(jobs)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            error = Overloaded(
                f"the device ran out of memory on a batch of {len(jobs)} at "
                f"{jobs[0].width}x{jobs[0].height}; retry, or lower width/height or COVERGEN_MAX_BATCH"
            )
            return [error for _ in jobs]
        finally:
            self.unet_lora.deactivate()
            self.text_lora.deactivate()

    def _run(self, jobs: Sequence[CoverJob]) -> list[JobOutcome]:
        n = len(jobs)
        stacks, rows = _unique_stacks(jobs, self.base_stack)
        # CFG runs unconditional and conditional halves in one forward: [uncond(n); cond(n)];
        # guidance 1 everywhere is the conditional half alone: [cond(n)]
        cfg = any(j.guidance_scale != 1.0 for j in jobs)
        prompts = [j.prompt for j in jobs]
        forward_rows = rows + rows if cfg else rows
        self.text_lora.activate(stacks, forward_rows)
        embeds = self._encode(
            [j.negative_prompt for j in jobs] + prompts if cfg else prompts
        )  # [2n or n, 77, d]
        self.text_lora.deactivate()
        self.unet_lora.activate(stacks, forward_rows)

        scheduler = type(self.pipeline.scheduler).from_config(self.pipeline.scheduler.config)
        scheduler.set_timesteps(jobs[0].steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(j.seed) for j in jobs]
        latents = torch.cat([self._starting_noise(j, g) for j, g in zip(jobs, generators, strict=True)])
        latents = latents * scheduler.init_noise_sigma  # [n, 4, h/8, w/8]
        # per-step noise (LCM, ancestral samplers) continues each job's own generator
        step_options = (
            {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
        )
        guidance = torch.tensor([j.guidance_scale for j in jobs], device=self.device, dtype=self.dtype)
        guidance = guidance.view(n, 1, 1, 1)
        outcomes: list[JobOutcome | None] = [None] * n
        for t in scheduler.timesteps:
            for i, job in enumerate(jobs):
                if outcomes[i] is None:
                    outcomes[i] = job.stop_reason()
            if all(o is not None for o in outcomes):
                return [o for o in outcomes if o is not None]
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]) if cfg else latents, t)
            noise = self.pipeline.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            if cfg:  # noise: [2n, 4, h, w]
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            latents = scheduler.step(noise, t, latents, return_dict=False, **step_options)[0]
        self.unet_lora.deactivate()
        images = self._decode(latents)
        return [o if o is not None else images[i] for i, o in enumerate(outcomes)]

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tokenizer = self.pipeline.tokenizer
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.pipeline.text_encoder(ids)[0].to(self.dtype)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipeline.vae
        decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]  # [n, 3, H, W]
        decoded = (decoded / 2 + 0.5).clamp(0, 1)
        pixels = decoded.cpu().permute(0, 2, 3, 1).float().numpy()
        return (pixels * 255).round().astype("uint8")  # [n, H, W, 3]


def _unique_stacks(
    jobs: Sequence[CoverJob], base_stack: tuple[StackItem, ...] = ()
) -> tuple[list[tuple[StackItem, ...]], list[int]]:
    """Distinct stacks of a batch (each under `base_stack`) and, per job, the index of its stack."""
    index: dict[tuple, int] = {}
    stacks: list[tuple[StackItem, ...]] = []
    rows: list[int] = []
    for job in jobs:
        stack = base_stack + job.stack
        key = stack_signature(stack)
        if key not in index:
            index[key] = len(stacks)
            stacks.append(stack)
        rows.append(index[key])
    return stacks, rows
