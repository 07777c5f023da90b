"""Who paints: the seam between planning a cover and running the model.

`CoverMaker` plans a request (region, stack, prompt, seed, cache key) and hands a `PaintJob`
to a `Painter`. A job is plain data (adapter files by path and version, no tensors), so it can
cross a process boundary:

    Painter (protocol)
    ├── LocalPainter      this process's AdapterRegistry + Engine   (covergen-server)
    └── ServePainter      a Ray Serve painter deployment handle     (covergen.rayserve)
                          whose replicas each run a LocalPainter

Both tiers share one implementation of planning (covers.py) and one of painting (this
LocalPainter over the engine); the Ray path only adds transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from covergen.adapters.files import LoraWeights
from covergen.adapters.registry import AdapterRegistry, AdapterSource
from covergen.engine.batcher import Engine
from covergen.engine.denoise import CoverJob, Priority
from covergen.errors import AdapterRejected

LOCAL_PAINTER = "local"  # GenerateCoverResponse.served_by of the single-process server


@dataclass(frozen=True)
class StackAdapter:
    """One adapter of a job's stack as plain data: which file, which version, at what weight."""

    name: str
    path: Path
    version: str  # content_version of the file the cache key was computed with
    weight: float

    @property
    def source(self) -> AdapterSource:
        return AdapterSource(self.name, self.path)


@dataclass(frozen=True)
class PaintJob:
    """Everything a painter needs for one cover; picklable, no tensors."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    adapters: tuple[StackAdapter, ...] = ()
    deadline: float | None = None  # time.monotonic() of the process that built the job
    # LIVE, BACKGROUND or PREPARE (engine/denoise.py). Shared by reference with the local engine,
    # so a budgeted caller can demote its queued job; a copy sent to another process is not.
    priority: Priority = field(default_factory=Priority, compare=False)

    @property
    def stack_id(self) -> str:
        return stack_id(self.adapters)


@dataclass(frozen=True)
class Painting:
    """A painted cover and who painted it."""

    pixels: np.ndarray  # [height, width, 3] uint8
    painted_by: str  # "local", or a painter replica id
    queue_ms: float  # admission to the start of its batch
    generate_ms: float  # the batch's denoising and decoding


def stack_id(adapters: Sequence[StackAdapter]) -> str:
    """The canonical id of the adapters a job needs resident: `name@version` sorted, `+`-joined.

    Weights are left out: a replica that holds an adapter paints it at any weight. An empty
    stack (the base model alone) is "base". Ray Serve routes by this id (multiplexing).
    """
    held = sorted({f"{a.name}@{a.version}" for a in adapters if a.weight > 0})
    return "+".join(held) or "base"


def engine_job(job: PaintJob, weights: Mapping[str, LoraWeights]) -> CoverJob:
    """The engine's job for `job`, its adapters taken from `weights` (name -> resident weights)."""
    return CoverJob(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        width=job.width,
        height=job.height,
        steps=job.steps,
        guidance_scale=job.guidance_scale,
        stack=tuple((weights[a.name], a.weight) for a in job.adapters),
        deadline=job.deadline,
        priority=job.priority,
    )


class Painter(Protocol):
    """Paints jobs; `versions` says which adapter versions it will paint them with."""

    async def versions(self, sources: Sequence[AdapterSource]) -> dict[str, str]:
        """The version of each adapter that a job naming it will be painted with."""
        ...

    async def paint(self, job: PaintJob) -> Painting:
        """The cover for `job`, or the domain error that stopped it."""
        ...


class LocalPainter:
    """Paints on this process's engine, with adapters from this process's registry."""

    def __init__(self, engine: Engine, registry: AdapterRegistry, name: str = LOCAL_PAINTER) -> None:
        self.engine = engine
        self.registry = registry
        self.name = name

    async def versions(self, sources: Sequence[AdapterSource]) -> dict[str, str]:
        # acquiring makes them resident here, so the paint that follows a miss does not wait
        weights = await self.registry.acquire(sources)
        return {name: w.version for name, w in weights.items()}

    async def paint(self, job: PaintJob) -> Painting:
        weights = await self.registry.acquire(a.source for a in job.adapters)
        for adapter in job.adapters:
            if weights[adapter.name].version != adapter.version:  # planned against a newer file
                weights[adapter.name] = await asyncio.to_thread(
                    self.registry.load, adapter.source, replace=True
                )
            if weights[adapter.name].version != adapter.version:
                raise AdapterRejected(
                    f"adapter '{adapter.name}' is at version {weights[adapter.name].version} here but the "
                    f"request was planned with {adapter.version}; its file changed during the request, retry"
                )
        cover_job = engine_job(job, weights)
        pixels = await self.engine.submit(cover_job)
        finished = time.monotonic()
        started = cover_job.started_at or finished
        return Painting(
            pixels=pixels,
            painted_by=self.name,
            queue_ms=(started - cover_job.enqueued_at) * 1000,
            generate_ms=(finished - started) * 1000,
        )
