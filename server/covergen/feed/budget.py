"""FeedCovers: GenerateCover as a feed calls it, with a budget, an A/B arm and fallbacks.

    budget_ms = 0   wait for the region's cover (CoverMaker.make), as without a budget
    budget_ms > 0   start the region's cover as a background task at LIVE priority and wait up
                    to the budget; meanwhile choose the fallback. In time: the region's cover.
                    Otherwise the fallback (reason "budget"), and the task is demoted to
                    BACKGROUND and stores the cover when done, so the next call is a hit.
                    A full queue gives reason "overloaded"; an unusable adapter (known from
                    StyleHealth, or failing now) gives "adapter_unavailable".

The arm is chosen first (ArmAssigner); the generic arm plans the default stack, so its cover is
shared by every region. Every answer is counted by arm; every fallback by reason and arm.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any

from covergen.covers import Cover, CoverMaker, Plan
from covergen.engine.denoise import Priority
from covergen.errors import AdapterRejected, Cancelled, Draining, InvalidRequest, Overloaded
from covergen.feed.arms import ArmAssigner
from covergen.feed.fallbacks import FallbackChooser
from covergen.feed.health import StyleHealth
from covergen.metrics import Metrics
from covergen.requests import CoverRequest

log = logging.getLogger(__name__)

_ADAPTER_NAME = re.compile(r"adapter '([a-z0-9][a-z0-9_-]*)'")
_RESERVE_S = 0.02  # of the budget, kept for building the reply once the wait ends


@dataclass(frozen=True)
class FeedRequest:
    """A GenerateCover call with its feed-time fields."""

    cover: CoverRequest
    budget_ms: int = 0
    arm: str | None = None  # None: unspecified (the experiment decides)
    unit_id: str = ""


def rejected_style(exc: AdapterRejected, styles: list[str]) -> str:
    """Which of `styles` an AdapterRejected is about (its message names the adapter)."""
    found = _ADAPTER_NAME.search(str(exc))
    if found is not None and found.group(1) in styles:
        return found.group(1)
    return styles[0] if styles else "default"


class BackgroundCompletions:
    """Covers still being painted after their caller got a fallback; awaitable until drained."""

    def __init__(self, health: StyleHealth, maker: CoverMaker) -> None:
        self.health = health
        self.maker = maker
        self._tasks: set[asyncio.Task[Cover]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self, work: Coroutine[Any, Any, Cover], styles: list[str]) -> asyncio.Task[Cover]:
        task = asyncio.create_task(work, name="covergen-background-completion")
        self._tasks.add(task)
        self._idle.clear()
        task.add_done_callback(lambda done: self._done(done, styles))
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def drained(self) -> None:
        """Return once no background completion is running."""
        await self._idle.wait()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Cover], styles: list[str]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, AdapterRejected):
            style = rejected_style(exc, styles)
            card = self.maker.library.get(style) if style in self.maker.library.names() else None
            self.health.mark_unusable(style, str(exc), self.maker.library.adapter_path(card) if card else None)
        elif exc is not None and not isinstance(exc, Overloaded | Cancelled | Draining):
            log.warning("background completion of a cover failed: %s: %s", type(exc).__name__, exc)


class FeedCovers:
    """The object the servicer calls for GenerateCover."""

    def __init__(
        self,
        *,
        maker: CoverMaker,
        chooser: FallbackChooser,
        health: StyleHealth,
        arms: ArmAssigner,
        metrics: Metrics,
        max_budget_ms: int,
    ) -> None:
        self.maker = maker
        self.chooser = chooser
        self.health = health
        self.arms = arms
        self.metrics = metrics
        self.max_budget_ms = max_budget_ms
        self.background = BackgroundCompletions(health, maker)

    async def make(self, request: FeedRequest, deadline: float | None = None) -> Cover:
        """The cover (or fallback) for `request`; `deadline` is a time.monotonic() value or None."""
        answer_by = time.monotonic() + request.budget_ms / 1000  # the budget counts from arrival
        if not 0 <= request.budget_ms <= self.max_budget_ms:
            raise InvalidRequest(
                f"budget_ms {request.budget_ms} is above the limit of {self.max_budget_ms} ms "
                "(COVERGEN_MAX_BUDGET_MS); send 0 to wait for the cover"
            )
        arm = self.arms.assign(request.arm, request.unit_id)
        cover_request = replace(request.cover, arm=arm)
        if request.budget_ms == 0:
            cover = await self.maker.make(cover_request, deadline)
        else:
            answer_by = answer_by if deadline is None else min(answer_by, deadline)
            cover = await self._within_budget(cover_request, request.budget_ms / 1000, answer_by)
        self.metrics.count_arm(arm)
        if cover.fallback:
            self.metrics.count_fallback(cover.fallback_reason, arm)
        return cover

    async def _within_budget(self, request: CoverRequest, budget_s: float, answer_by: float) -> Cover:
        plan = self.maker.plan(request)  # bad input fails here, before any work
        styles = [item.style for item in plan.stack if item.weight > 0]
        unusable = self.health.first_unusable(styles)
        if unusable is not None:
            self.health.count(unusable[0])
            return await self._fallback(request, plan, "adapter_unavailable")
        # planning the title above came out of the budget too
        wait_s = max(0.0, answer_by - time.monotonic() - min(_RESERVE_S, budget_s * 0.1))
        priority = Priority()
        task = self.background.start(self.maker.make(request, None, priority=priority), styles)
        chosen = asyncio.create_task(self.chooser.choose(request, plan, "budget", request.arm))
        try:
            done, _ = await asyncio.wait({task}, timeout=wait_s)
            reason = "budget"
            if task in done:
                exc = task.exception()
                if exc is None:
                    return task.result()
                if isinstance(exc, Overloaded):
                    reason = "overloaded"
                elif isinstance(exc, AdapterRejected):
                    reason = "adapter_unavailable"
                    self.health.count(rejected_style(exc, styles))
                else:
                    raise exc
            else:
                priority.demote()  # it finishes behind live work and fills the cache
            fallback = await chosen
        finally:
            if not chosen.done():
                chosen.cancel()
        if fallback is None:  # nothing held (standing covers off): the region's cover, late
            log.warning("no fallback cover held for %s; waiting past the budget", request.region[:64])
            return await asyncio.shield(task)
        fallback.fallback_reason = reason
        return fallback

    async def _fallback(self, request: CoverRequest, plan: Plan, reason: str) -> Cover:
        cover = await self.chooser.choose(request, plan, reason, request.arm)
        if cover is None:
            raise AdapterRejected(
                f"region {request.region[:64]!r} needs an unusable adapter and no fallback cover is held; "
                "see ListStyles (usable, unusable_reason) and fix the adapter, then ReloadStyles"
            )
        return cover
