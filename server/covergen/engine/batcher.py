"""The engine: a bounded admission queue and one worker thread that runs batches.

`Engine.submit` (async, any event loop) admits a job or refuses it at once with `Overloaded`
when `max_queue` jobs are already waiting. The worker takes the oldest job of the best priority
(`CoverJob.priority`: live, then background completions, then prepare jobs), gathers up to
`max_batch - 1` more jobs with the same batch key for at most `max_wait_ms`, runs them through the
`Denoiser` and hands each result back to its caller's event loop. A caller that goes away marks
its job cancelled; the denoiser notices between steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from covergen.engine.denoise import CoverJob, Denoiser
from covergen.errors import CovergenError, Draining, Overloaded

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    job: CoverJob
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop


class EngineObserver:
    """What the engine reports; the metrics module implements it. Defaults do nothing."""

    def queue_depth(self, depth: int) -> None: ...
    def batch_ran(self, size: int, seconds: float) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...


class Engine:
    """Owns the pipeline through its `Denoiser`; everything else talks to it through `submit`."""

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        max_batch: int = 4,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        observer: EngineObserver | None = None,
    ) -> None:
        self.denoiser = denoiser
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.observer = observer or EngineObserver()
        self._pending: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._running = 0
        self._thread: threading.Thread | None = None
        self._worker_tasks: deque[Callable[[], None]] = deque()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="covergen-engine", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop admitting, let queued and running jobs finish, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._pending) + self._running

    def run_on_worker(self, task: Callable[[], None]) -> None:
        """Run `task` on the worker thread before its next batch (e.g. forget an evicted adapter)."""
        with self._cond:
            self._worker_tasks.append(task)
            self._cond.notify_all()

    # --- admission -----------------------------------------------------------------------------

    async def submit(self, job: CoverJob) -> np.ndarray:
        """Run one job; returns its image [H, W, 3] uint8 or raises the job's error."""
        loop = asyncio.get_running_loop()
        pending = _Pending(job, loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise Draining("the server is shutting down; retry on another replica")
            if len(self._pending) >= self.max_queue:
                raise Overloaded(
                    f"the generation queue is full ({self.max_queue} waiting); retry with backoff, "
                    "or raise COVERGEN_MAX_QUEUE / add replicas"
                )
            job.enqueued_at = time.monotonic()
            self._pending.append(pending)
            self.observer.queue_depth(len(self._pending))
            self._cond.notify_all()
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            job.cancelled.set()
            pending.future.cancel()  # nobody awaits it now; the worker's late result is dropped
            with self._cond:
                if pending in self._pending:
                    self._pending.remove(pending)
                    self.observer.queue_depth(len(self._pending))
            raise

    # --- worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            started = time.monotonic()
            for p in batch:
                p.job.started_at = started
                self.observer.queue_wait(started - p.job.enqueued_at)
            try:
                outcomes = self.denoiser.run([p.job for p in batch])
            except Exception as exc:  # a bug in one batch must not kill the worker
                log.exception("batch of %d failed", len(batch))
                outcomes = [exc for _ in batch]  # type: ignore[misc]
            self.observer.batch_ran(len(batch), time.monotonic() - started)
            with self._cond:
                self._running = 0
            for p, outcome in zip(batch, outcomes, strict=True):
                p.loop.call_soon_threadsafe(_settle, p.future, outcome)

    def _next_batch(self) -> list[_Pending] | None:
        """The next batch; runs queued worker tasks first, outside the lock (a task may block)."""
        while True:
            with self._cond:
                tasks = list(self._worker_tasks)
                self._worker_tasks.clear()
                if not tasks:
                    if self._pending:
                        return self._gather()
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
            for task in tasks:  # submit, depth and run_on_worker stay free while a task runs
                task()

    def _gather(self) -> list[_Pending]:
        """Under the lock: the best waiting job and up to `max_batch - 1` compatible ones."""
        first = min(self._pending, key=lambda p: p.job.priority.value)  # oldest of the best
        self._pending.remove(first)
        batch = [first]
        key = first.job.batch_key()
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            batch.extend(self._take_compatible(key, self.max_batch - len(batch)))
            remaining = deadline - time.monotonic()
            if len(batch) >= self.max_batch or remaining <= 0 or self._closing:
                break
            self._cond.wait(remaining)
        self._running = len(batch)
        self.observer.queue_depth(len(self._pending))
        return batch

    def _take_compatible(self, key: tuple[int, int, int], limit: int) -> list[_Pending]:
        compatible = [p for p in self._pending if p.job.batch_key() == key]
        taken = sorted(compatible, key=lambda p: p.job.priority.value)[:limit]  # stable: oldest first
        for p in taken:
            self._pending.remove(p)
        return taken


def _settle(future: asyncio.Future[np.ndarray], outcome: object) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)  # type: ignore[arg-type]


__all__ = ["CoverJob", "CovergenError", "Engine", "EngineObserver"]
