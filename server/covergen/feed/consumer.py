"""PrepareConsumer: this replica's share of the prepare stream, taken only with spare capacity.

The loop takes entries while fewer than `concurrency` prepare jobs are in flight here and the
local engine (if this process has one) holds less than one batch of other work (live calls and background completions come
first), reclaims entries other replicas left pending past the visibility timeout, paints each
cover through `CoverMaker.make` at PREPARE priority (the result cache's cross-replica lock keeps
a cover from being painted twice), and acknowledges the entry once the cover is stored. Failures
go back on the stream until `max_attempts`, then to the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from covergen.cache import CacheOutcome
from covergen.covers import CoverMaker
from covergen.engine.batcher import Engine
from covergen.engine.denoise import PREPARE, Priority
from covergen.errors import CovergenError, Overloaded
from covergen.feed.stream import Delivery, PrepareStream, QueueUnavailable
from covergen.metrics import Metrics
from covergen.requests import CoverRequest

log = logging.getLogger(__name__)

_CAPACITY_RECHECK_S = 0.25  # the engine has no "depth fell" signal; re-read its depth this often
_OUTAGE_RETRY_S = 2.0
_STATS_EVERY_S = 2.0


class PrepareConsumer:
    def __init__(
        self,
        maker: CoverMaker,
        stream: PrepareStream,
        engine: Engine | None,
        metrics: Metrics,
        *,
        concurrency: int,
        block_ms: int = 1000,
    ) -> None:
        self.maker = maker
        self.stream = stream
        self.engine = engine
        self.metrics = metrics
        self.concurrency = concurrency
        self.block_ms = block_ms
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._capacity = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self._stats_at = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="covergen-prepare-consumer")

    async def stop(self) -> None:
        """Stop taking jobs; jobs in flight are cancelled and stay pending for another replica."""
        self._stopping.set()
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _has_capacity(self) -> bool:
        if len(self._inflight) >= self.concurrency:
            return False
        if self.engine is None:  # painters elsewhere (Ray Serve): only the concurrency bound
            return True
        others = self.engine.depth - len(self._inflight)
        return others < self.engine.max_batch

    async def _run(self) -> None:
        reclaim_every_s = self.stream.visibility_ms / 2000
        reclaimed_at = 0.0
        while not self._stopping.is_set():
            try:
                while not self._has_capacity():
                    self._capacity.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._capacity.wait(), _CAPACITY_RECHECK_S)
                spare = self.concurrency - len(self._inflight)
                deliveries: list[Delivery] = []
                if time.monotonic() - reclaimed_at >= reclaim_every_s:
                    reclaimed_at = time.monotonic()
                    deliveries = await self.stream.reclaim(spare)
                    if deliveries:
                        self.metrics.count_prepare("reclaimed", len(deliveries))
                        log.info("prepare: took over %d jobs left pending by other replicas", len(deliveries))
                if not deliveries:
                    deliveries = await self.stream.read(spare, self.block_ms)
                for delivery in deliveries:
                    task = asyncio.create_task(self._process(delivery), name=f"prepare {delivery.entry_id}")
                    self._inflight[delivery.entry_id] = task
                await self._refresh_stats()
                self._recovered()
            except QueueUnavailable as exc:
                self._outage(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), _OUTAGE_RETRY_S)

    async def _process(self, delivery: Delivery) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(delivery.entry_id))
        try:
            await self._paint(delivery)
        except QueueUnavailable as exc:
            self._outage(exc)  # not acknowledged: reclaimed after the visibility timeout
        finally:
            heartbeat.cancel()
            self._inflight.pop(delivery.entry_id, None)
            self._capacity.set()

    async def _paint(self, delivery: Delivery) -> None:
        job = delivery.job
        if delivery.times_delivered > self.stream.max_attempts:
            reason = (
                f"delivered {delivery.times_delivered} times without being acknowledged: replicas stopped "
                "while painting it (out of memory? see their logs)"
            )
            await self._failed(delivery, reason, force_dead=True)
            return
        request = CoverRequest(
            region=job.region, title=job.title, variant=job.variant, width=job.width,
            height=job.height, steps=job.steps, format=job.format,
        )  # fmt: skip
        try:
            cover = await self.maker.make(request, None, priority=Priority(PREPARE))
        except Overloaded:
            return  # the queue filled with live work: left pending, retried after the timeout
        except CovergenError as exc:
            await self._failed(delivery, str(exc))
            return
        except Exception as exc:  # a bug: count it as a failure of this job, keep consuming
            log.exception("prepare job %s failed", delivery.entry_id)
            await self._failed(delivery, f"internal error: {type(exc).__name__}: {exc}")
            return
        if cover.cache_outcome is CacheOutcome.BYPASS:
            return  # painted but not stored (Redis trouble): leave it pending
        await self.stream.ack(delivery)
        self.metrics.count_prepare("painted" if cover.cache_outcome is CacheOutcome.MISS else "cached")

    async def _failed(self, delivery: Delivery, reason: str, force_dead: bool = False) -> None:
        dead = await self.stream.fail(delivery, reason, dead=force_dead)
        self.metrics.count_prepare("dead_letter" if dead else "retried")
        if dead:
            log.warning(
                "prepare job for region %s moved to the dead-letter stream %s after %d attempts: %s",
                delivery.job.region[:64], self.stream.dead_stream, delivery.job.attempts + 1, reason,
            )  # fmt: skip

    async def _heartbeat(self, entry_id: str) -> None:
        """Keep a running job's entry from looking abandoned to other replicas."""
        every_s = self.stream.visibility_ms / 3000
        while True:
            await asyncio.sleep(every_s)
            with contextlib.suppress(QueueUnavailable):
                await self.stream.touch([entry_id])

    async def _refresh_stats(self) -> None:
        if time.monotonic() - self._stats_at < _STATS_EVERY_S:
            return
        self._stats_at = time.monotonic()
        stats = await self.stream.stats()
        self.metrics.set_prepare_stream(stats.lag, stats.pending, stats.oldest_age_s, stats.dead_letters)

    def _outage(self, exc: QueueUnavailable) -> None:
        if not self._down:
            self._down = True
            log.warning("prepare consumer paused: %s", exc)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("prepare consumer: Redis reachable again, consuming")
