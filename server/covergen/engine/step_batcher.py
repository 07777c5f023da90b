"""The step-level engine (`COVERGEN_BATCHING=step`): jobs join and leave the batch at every step.

The static `Engine` runs a batch's every step before it looks at the queue again, so a job that
arrives just after a batch starts waits for the whole batch. `StepEngine` keeps the same public
surface (`submit`, `depth`, `run_on_worker`, `close`, the bounded queue and `Overloaded`) and
replaces the worker loop, the way LLM servers schedule tokens:

    loop:  run worker tasks -> admit waiting jobs into free slots (best priority, oldest first)
           -> text-encode the admitted -> drop cancelled / past-deadline jobs
           -> one UNet step for every running job -> decode and answer the jobs that finished

One running batch has one latent shape (width, height); step counts and guidance may differ.
Admission walks the queue in (priority, arrival) order and stops at the first job of another
shape, so that job is not overtaken: the running batch drains, then its shape runs next.
An out-of-memory step fails the most recently admitted job and retries the step with the others,
so jobs that fitted before keep running; a decode that runs out of memory fails only its jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from covergen.engine.batcher import Engine, _Pending, _settle
from covergen.engine.stepping import RunningJob, StepRunner
from covergen.errors import Overloaded

log = logging.getLogger(__name__)


def _shape(p: _Pending) -> tuple[int, int]:
    return (p.job.width, p.job.height)


class StepEngine(Engine):
    """`Engine` with step-level (continuous) batching; `max_batch` is the number of running slots."""

    def _work(self) -> None:
        runner = StepRunner(self.denoiser)
        running: list[tuple[_Pending, RunningJob]] = []
        while True:
            admitted = self._admit(running)
            if admitted is None:
                return
            if admitted:
                running.extend(self._begin(runner, admitted))
            running = self._drop_stopped(running)
            if running:
                running = self._step(runner, running)
                running = self._finish(runner, running)
            if not running:
                runner.idle()
            with self._cond:
                self._running = len(running)

    # --- admission -----------------------------------------------------------------------------

    def _admit(self, running: list[tuple[_Pending, RunningJob]]) -> list[_Pending] | None:
        """Waiting jobs for the free slots; blocks only while nothing runs; None once closed and empty."""
        while True:
            with self._cond:
                tasks = list(self._worker_tasks)
                self._worker_tasks.clear()
                if not tasks:
                    if self._pending or running:
                        return self._take(running)
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
            for task in tasks:  # outside the lock: a task may wait (tests hold the worker at a gate)
                task()

    def _take(self, running: list[tuple[_Pending, RunningJob]]) -> list[_Pending]:
        """Under the lock: pop the jobs to admit now."""
        free = self.max_batch - len(running)
        if free <= 0 or not self._pending:
            return []
        order = sorted(self._pending, key=lambda p: p.job.priority.value)  # stable: oldest first
        shape = _shape(running[0][0]) if running else _shape(order[0])
        taken: list[_Pending] = []
        for p in order:
            if len(taken) >= free or _shape(p) != shape:
                break  # a better or older job of another shape waits for this batch to drain
            taken.append(p)
        for p in taken:
            self._pending.remove(p)
        self._running = len(running) + len(taken)
        self.observer.queue_depth(len(self._pending))
        return taken

    def _begin(self, runner: StepRunner, admitted: list[_Pending]) -> list[tuple[_Pending, RunningJob]]:
        started = time.monotonic()
        for p in admitted:
            p.job.started_at = started
            self.observer.queue_wait(started - p.job.enqueued_at)
        try:
            states = runner.begin([p.job for p in admitted])
        except torch.OutOfMemoryError:
            _release_memory()
            self._fail(admitted, _oom(len(admitted), admitted[0]))
            return []
        except Exception as exc:  # a bug in one admission must not kill the worker
            log.exception("admitting %d jobs failed", len(admitted))
            self._fail(admitted, exc)
            return []
        return list(zip(admitted, states, strict=True))

    # --- stepping ------------------------------------------------------------------------------

    def _drop_stopped(self, running: list[tuple[_Pending, RunningJob]]) -> list[tuple[_Pending, RunningJob]]:
        kept = []
        for p, state in running:
            reason = p.job.stop_reason()
            if reason is None:
                kept.append((p, state))
            else:
                p.loop.call_soon_threadsafe(_settle, p.future, reason)
        return kept

    def _step(
        self, runner: StepRunner, running: list[tuple[_Pending, RunningJob]]
    ) -> list[tuple[_Pending, RunningJob]]:
        while running:
            try:
                runner.step([state for _, state in running])
                return running
            except torch.OutOfMemoryError:  # isolate: the newest job goes, the rest retry
                _release_memory()
                victim = running.pop()
                self._fail([victim[0]], _oom(len(running) + 1, victim[0]))
            except Exception as exc:
                log.exception("a step of %d jobs failed", len(running))
                self._fail([p for p, _ in running], exc)
                return []
        return running

    def _finish(
        self, runner: StepRunner, running: list[tuple[_Pending, RunningJob]]
    ) -> list[tuple[_Pending, RunningJob]]:
        done = [(p, s) for p, s in running if s.done]
        if not done:
            return running
        outcomes: Sequence[object]
        try:
            outcomes = runner.finish([s for _, s in done])
        except torch.OutOfMemoryError:
            _release_memory()
            outcomes = [_oom(len(done), done[0][0]) for _ in done]
        except Exception as exc:
            log.exception("decoding %d jobs failed", len(done))
            outcomes = [exc for _ in done]
        finished = time.monotonic()
        first_start = min(p.job.started_at or finished for p, _ in done)
        self.observer.batch_ran(len(done), finished - first_start)
        for (p, _), outcome in zip(done, outcomes, strict=True):
            p.loop.call_soon_threadsafe(_settle, p.future, outcome)
        return [(p, s) for p, s in running if not s.done]

    def _fail(self, pendings: list[_Pending], error: BaseException) -> None:
        for p in pendings:
            p.loop.call_soon_threadsafe(_settle, p.future, error)


def _oom(running: int, p: _Pending) -> Overloaded:
    return Overloaded(
        f"the device ran out of memory with {running} jobs running at {p.job.width}x{p.job.height}; "
        "retry, or lower width/height or COVERGEN_MAX_BATCH"
    )


def _release_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
