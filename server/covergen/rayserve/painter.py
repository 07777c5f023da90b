"""The painter tier: one Ray Serve replica holds a base model, an adapter registry and an engine.

Requests are multiplexed by canonical adapter-stack id (`painters.stack_id`): Serve routes a
stack's requests to a replica that already holds its adapters, and a replica that gets a new
stack loads it, dropping its least recently used stack beyond `max_stacks`. Painting itself is
the single-process server's `LocalPainter` over `build_painting`; this module adds none.

Errors are the domain's own (`AdapterRejected`, `Overloaded`, ...): Ray carries them to the
ingress, which unwraps them, so a caller sees the status and message the single-process server
would send.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ray import serve

from covergen.adapters.files import LoraWeights
from covergen.painters import LocalPainter, Painting, PaintJob, StackAdapter
from covergen.server import PaintingParts, build_painting
from covergen.settings import Settings

log = logging.getLogger(__name__)

# A stack is a region's adapter plus, typically, up to two theme overlays.
TYPICAL_STACK_ADAPTERS = 3
# Adapter files of the stacks seen lately, by stack id (ids name versions, not paths).
_MAX_KNOWN_STACKS = 4096


def stacks_per_replica(settings: Settings) -> int:
    """How many stacks a replica keeps routed to it: as many as its adapter registry holds."""
    if settings.ray_stacks_per_replica is not None:
        return settings.ray_stacks_per_replica
    return max(1, settings.max_resident_adapters // TYPICAL_STACK_ADAPTERS)


@dataclass(frozen=True)
class PainterInfo:
    """What the ingress needs from the painter tier to plan requests the way a painter paints."""

    replica: str  # the replica id that answered, as in GenerateCoverResponse.served_by
    pid: int
    model_id: str  # the result cache's base-model id (base plus image-changing speedups)
    scheduler_name: str
    default_size: int
    tokenizer: Any  # the base model's CLIP tokenizer: the ingress counts prompt tokens with it


@dataclass(frozen=True)
class _HeldStack:
    """A stack this replica is routed: references that keep its adapters' weights alive."""

    stack_id: str
    weights: tuple[LoraWeights, ...]


class PainterReplica:
    """The Serve deployment class of the painter tier (see `app.painter_deployment`)."""

    async def __init__(self, overrides: dict[str, Any] | None = None) -> None:  # type: ignore[misc]
        started = time.perf_counter()
        self.settings = Settings(**(overrides or {}))
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()  # load-time bars would garble the replica logs
        if self.settings.torch_threads is not None:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        context = serve.get_replica_context()
        self.replica = f"{context.app_name}#{context.deployment}#{context.replica_id.unique_id}"
        self.parts: PaintingParts = await build_painting(self.settings)
        self.painter = LocalPainter(self.parts.engine, self.parts.registry, name=self.replica)

        async def hold(stack_id: str) -> _HeldStack:  # Serve keeps its LRU on a plain function
            return await self._load_stack(stack_id)

        self._hold = serve.multiplexed(max_num_models_per_replica=stacks_per_replica(self.settings))(hold)
        self._files: OrderedDict[str, tuple[StackAdapter, ...]] = OrderedDict()
        self._painting = 0
        self._busy = asyncio.Condition()
        log.info("painter %s ready in %.1f s", self.replica, time.perf_counter() - started)

    async def _load_stack(self, stack_id: str) -> _HeldStack:
        """Serve's multiplexed loader: make the stack's adapters resident in the registry."""
        adapters = self._files[stack_id]
        weights = await self.parts.registry.acquire(a.source for a in adapters if a.weight > 0)
        return _HeldStack(stack_id, tuple(weights.values()))

    async def paint(self, job: PaintJob, budget_s: float | None = None) -> Painting:
        """Paint `job`; `budget_s` is what is left of the caller's deadline, in seconds."""
        if budget_s is not None:
            job = dataclasses.replace(job, deadline=time.monotonic() + budget_s)
        self._files[job.stack_id] = job.adapters
        self._files.move_to_end(job.stack_id)
        if len(self._files) > _MAX_KNOWN_STACKS:
            self._files.popitem(last=False)
        await self._hold(job.stack_id)
        async with self._busy:
            self._painting += 1
            self._busy.notify_all()
        try:
            return await self.painter.paint(job)
        finally:
            async with self._busy:
                self._painting -= 1

    async def describe(self) -> PainterInfo:
        base = self.parts.base
        return PainterInfo(
            replica=self.replica,
            pid=os.getpid(),
            model_id=self.parts.model_id,
            scheduler_name=type(base.pipeline.scheduler).__name__,
            default_size=base.default_size,
            tokenizer=base.pipeline.tokenizer,
        )

    async def wait_until_painting(self) -> PainterInfo:
        """Returns once this replica has a cover in progress (fault drills kill it then)."""
        async with self._busy:
            await self._busy.wait_for(lambda: self._painting > 0)
        return await self.describe()

    def __del__(self) -> None:
        parts = getattr(self, "parts", None)
        if parts is not None:
            parts.close()
