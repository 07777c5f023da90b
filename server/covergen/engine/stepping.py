"""Step-level batching on the Denoiser: jobs join and leave a running batch at every step.

`StepRunner` splits `Denoiser.run` into three verbs the step-level engine calls between steps:

    begin(jobs)    text-encode the newly admitted jobs once (their adapters on the text encoder),
                   draw their starting noise, give each its own scheduler copy  -> RunningJob
    step(running)  one UNet forward over every running job, each at its *own* timestep
                   (the UNet takes one timestep per sample), then each job's own scheduler step
    finish(done)   decode the jobs that took their last step together, in one VAE batch

Every job keeps its own scheduler instance (diffusers schedulers hold per-run state: step
index, PNDM's history), its own generator (starting noise, then per-step noise) and its own
guidance, so a job's latents do not depend on who else is running, or when they joined; only
the float noise of a different UNet batch shape remains (the equivalence tests measure it).
Rows of one forward: `[uncond of jobs with guidance != 1; cond of every job]`, so a guidance-1
job (LCM mode) costs one row. The row layout, embeddings and LoRA plan are rebuilt only when
the set of running jobs changes.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from covergen.engine.denoise import CoverJob, Denoiser, _unique_stacks
from covergen.engine.lora_layers import StackItem, stack_signature


@dataclass(eq=False)
class RunningJob:
    """One job inside the running batch: its latents, conditioning and scheduler state."""

    job: CoverJob
    scheduler: Any  # a private copy of the pipeline's scheduler, timesteps set for job.steps
    generator: torch.Generator
    latents: torch.Tensor  # [1, 4, h/8, w/8]
    embeds: torch.Tensor  # [2, 77, d] (uncond, cond) when guided, else [1, 77, d] (cond)
    stack: tuple[StackItem, ...]  # base stack + the job's own
    index: int = 0  # steps taken
    step_options: dict[str, Any] = field(default_factory=dict)

    @property
    def guided(self) -> bool:
        return self.job.guidance_scale != 1.0

    @property
    def done(self) -> bool:
        return self.index >= len(self.scheduler.timesteps)

    def timestep(self) -> torch.Tensor:
        return self.scheduler.timesteps[self.index]


@dataclass
class _Layout:
    """The rows of one forward for a given set of running jobs (rebuilt when the set changes)."""

    members: tuple[int, ...]  # id() of each RunningJob, in order
    guided: list[int]  # positions (into running) of jobs with an uncond row
    embeds: torch.Tensor  # [rows, 77, d]
    guidance: torch.Tensor  # [len(guided), 1, 1, 1]


class StepRunner:
    """Runs the begin/step/finish verbs over one `Denoiser`'s pipeline; worker thread only."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self._templates: dict[int, Any] = {}  # steps -> scheduler with its timesteps set
        self._layout: _Layout | None = None

    # --- admission -----------------------------------------------------------------------------

    @torch.inference_mode()
    def begin(self, jobs: Sequence[CoverJob]) -> list[RunningJob]:
        """Encode the jobs' prompts (one text-encoder batch) and set up their denoising state."""
        d = self.denoiser
        stacks, stack_rows = _unique_stacks(jobs, d.base_stack)
        prompts: list[str] = []
        rows: list[int] = []
        for job, row in zip(jobs, stack_rows, strict=True):
            texts = [job.negative_prompt, job.prompt] if job.guidance_scale != 1.0 else [job.prompt]
            prompts.extend(texts)
            rows.extend([row] * len(texts))
        d.text_lora.activate(stacks, rows)
        try:
            embeds = d._encode(prompts)  # [sum of rows, 77, d]
        finally:
            d.text_lora.deactivate()
        running: list[RunningJob] = []
        offset = 0
        for job, row in zip(jobs, stack_rows, strict=True):
            width = 2 if job.guidance_scale != 1.0 else 1
            scheduler = self._scheduler(job.steps)
            generator = torch.Generator("cpu").manual_seed(job.seed)
            latents = d._starting_noise(job, generator) * scheduler.init_noise_sigma
            options = {"generator": [generator]} if _takes_generator(scheduler) else {}
            running.append(
                RunningJob(
                    job,
                    scheduler,
                    generator,
                    latents,
                    embeds[offset : offset + width],
                    stacks[row],
                    0,
                    options,
                )
            )
            offset += width
        return running

    def _scheduler(self, steps: int) -> Any:
        template = self._templates.get(steps)
        if template is None:
            pipeline_scheduler = self.denoiser.pipeline.scheduler
            template = type(pipeline_scheduler).from_config(pipeline_scheduler.config)
            template.set_timesteps(steps, device=self.denoiser.device)
            self._templates[steps] = template
        return copy.deepcopy(template)

    # --- one denoising step --------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, running: Sequence[RunningJob]) -> None:
        """Advance every running job by one of its own steps (one UNet forward for all of them)."""
        d = self.denoiser
        layout = self._layout_for(running)
        scaled = [
            r.scheduler.scale_model_input(r.latents, r.timestep()) for r in running
        ]  # each [1, 4, h, w]
        guided = [scaled[i] for i in layout.guided]
        model_input = torch.cat(guided + scaled)  # [rows, 4, h, w]
        times = [r.timestep() for r in running]
        t = torch.stack([times[i] for i in layout.guided] + times).to(d.device)  # [rows]
        noise = d.pipeline.unet(model_input, t, encoder_hidden_states=layout.embeds, return_dict=False)[0]
        n_uncond = len(layout.guided)
        uncond, cond = noise[:n_uncond], noise[n_uncond:]  # [g, 4, h, w], [n, 4, h, w]
        if n_uncond:
            at = torch.tensor(layout.guided, device=noise.device)
            picked = cond.index_select(0, at)
            cond = cond.index_copy(0, at, uncond + layout.guidance * (picked - uncond))
        for i, r in enumerate(running):
            r.latents = r.scheduler.step(
                cond[i : i + 1], times[i], r.latents, return_dict=False, **r.step_options
            )[0]
            r.index += 1

    def _layout_for(self, running: Sequence[RunningJob]) -> _Layout:
        members = tuple(id(r) for r in running)
        if self._layout is not None and self._layout.members == members:
            return self._layout
        d = self.denoiser
        guided = [i for i, r in enumerate(running) if r.guided]
        index: dict[tuple, int] = {}
        stacks: list[tuple[StackItem, ...]] = []
        job_rows: list[int] = []
        for r in running:
            key = stack_signature(r.stack)
            if key not in index:
                index[key] = len(stacks)
                stacks.append(r.stack)
            job_rows.append(index[key])
        d.unet_lora.activate(stacks, [job_rows[i] for i in guided] + job_rows)
        embeds = torch.cat([running[i].embeds[:1] for i in guided] + [r.embeds[-1:] for r in running])
        scales = [running[i].job.guidance_scale for i in guided]
        guidance = torch.tensor(scales, device=d.device, dtype=d.dtype).view(-1, 1, 1, 1)
        self._layout = _Layout(members, guided, embeds, guidance)
        return self._layout

    def idle(self) -> None:
        """The batch emptied: drop the layout and take the adapters off the UNet."""
        self._layout = None
        self.denoiser.unet_lora.deactivate()

    # --- leaving -------------------------------------------------------------------------------

    @torch.inference_mode()
    def finish(self, done: Sequence[RunningJob]) -> list[np.ndarray]:
        """Decode jobs that finished on the same step together: one image [H, W, 3] uint8 each."""
        images = self.denoiser._decode(torch.cat([r.latents for r in done]))  # [n, H, W, 3]
        return list(images)


def _takes_generator(scheduler: Any) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters
