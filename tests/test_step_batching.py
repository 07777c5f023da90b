"""Step-level batching: a cover is the same alone and in a running batch that others join and leave.

Real parts: the committed regional base (`embedded:regional`) and its committed adapters, which
adapt attention and resnet convolutions. The reference is always the static `Denoiser.run` of
the job alone. `StepRunner` is driven by hand so jobs join at chosen steps; `StepEngine` is
driven through `submit`, held at gates (worker tasks, observer callbacks) rather than timed.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from covergen.adapters.files import LoraWeights, read_lora_file
from covergen.engine.batcher import EngineObserver
from covergen.engine.denoise import LIVE, PREPARE, CoverJob, Denoiser, Priority
from covergen.engine.step_batcher import StepEngine
from covergen.engine.stepping import RunningJob, StepRunner
from covergen.errors import Cancelled, DeadlineExceeded, Overloaded

REPO = Path(__file__).resolve().parents[1]
STYLES = ("jiangnan", "chuanyu_hotpot", "ink_wash")
# Latents of one job in other UNet batch shapes differ by float noise only. Measured on this
# machine (2 cores, fp32, 1 thread) with the jobs of the first test joining at steps
# [0,2,2,4], [0,0,1,3] and [1,0,4,2]: max |diff| 2.6e-5 (hooks) / 3.0e-5 (fused) in latents,
# 1 uint8 level in pixels. FIELD-NOTES records 2.1e-3 on another machine of this kind for a
# static mixed batch at guidance 7.5, so the bound is that with room (5e-3); pixels 2 levels
# as in test_engine. A wrong timestep, scheduler state or stack row moves latents by > 0.1.
LATENT_TOL = {"rtol": 0.0, "atol": 5e-3}
MAX_PIXEL_DIFF = 2
WAIT_S = 120.0  # generous bound on every wait for the worker; never reached when it works


@pytest.fixture(scope="module")
def regional(model_cache_dir: Path):
    from covergen.models import load_base_model

    return load_base_model("embedded:regional", cache_dir=model_cache_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def denoisers(regional) -> dict[str, Denoiser]:
    """Both ways a shared stack is applied, each over its own copy of the pipeline."""
    return {
        mode: Denoiser(
            copy.deepcopy(regional.pipeline), zero_mean_noise=True, fuse_shared_stacks=mode == "fused"
        )
        for mode in ("hooks", "fused")
    }


@pytest.fixture(params=["hooks", "fused"])
def denoiser(request: pytest.FixtureRequest, denoisers: dict[str, Denoiser]) -> Denoiser:
    """Both modes, for the equivalence tests (where they differ)."""
    return denoisers[request.param]


@pytest.fixture
def hooks(denoisers: dict[str, Denoiser]) -> Denoiser:
    """One mode for the engine's scheduling tests (admission does not depend on the mode)."""
    return denoisers["hooks"]


@pytest.fixture(scope="module")
def adapters(denoisers: dict[str, Denoiser]) -> dict[str, LoraWeights]:
    names = denoisers["hooks"].module_names()
    return {s: read_lora_file(REPO / "styles" / s / "adapter.safetensors", s, names) for s in STYLES}


def make_job(
    seed: int, stack: tuple = (), *, steps: int = 5, guidance: float = 5.0, size: int = 64
) -> CoverJob:
    return CoverJob(
        f"news cover {seed}, old street", "blurry", seed, size, size, steps, guidance, stack=stack
    )


@contextmanager
def captured_latents(denoiser: Denoiser) -> Iterator[list[torch.Tensor]]:
    """The latents each VAE decode receives (as post_quant_conv's input), one [4, h, w] per image."""
    seen: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.extend(inputs[0].detach().clone())

    handle = denoiser.pipeline.vae.post_quant_conv.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def alone(denoiser: Denoiser, job: CoverJob) -> tuple[np.ndarray, torch.Tensor]:
    with captured_latents(denoiser) as seen:
        (image,) = denoiser.run([job])
    assert isinstance(image, np.ndarray)
    return image, seen[0]


def stepped(runner: StepRunner, jobs: Sequence[CoverJob], joins_at: Sequence[int]) -> dict[int, tuple]:
    """Run `jobs` through `runner`, job i joining after `joins_at[i]` steps of the batch."""
    results: dict[int, tuple] = {}
    running: list[RunningJob] = []
    tick = 0
    while len(results) < len(jobs):
        joining = [j for j, at in zip(jobs, joins_at, strict=True) if at == tick]
        if joining:
            running += runner.begin(joining)
        if running:
            runner.step(running)
            done = [r for r in running if r.done]
            if done:
                with captured_latents(runner.denoiser) as latents:
                    images = runner.finish(done)
                for r, image, lat in zip(done, images, latents, strict=True):
                    results[r.job.seed] = (image, lat)
                running = [r for r in running if not r.done]
        tick += 1
    runner.idle()
    return results


def assert_same(got: tuple, want: tuple) -> None:
    torch.testing.assert_close(got[1], want[1], **LATENT_TOL)
    assert int(np.abs(got[0].astype(int) - want[0].astype(int)).max()) <= MAX_PIXEL_DIFF


def test_a_job_is_the_same_alone_and_joined_mid_way(
    denoiser: Denoiser, adapters: dict[str, LoraWeights]
) -> None:
    j, c, i = adapters["jiangnan"], adapters["chuanyu_hotpot"], adapters["ink_wash"]
    jobs = [
        make_job(11, ((j, 0.8),), steps=6, guidance=5.0),
        make_job(12, ((c, 0.8), (i, 0.5)), steps=4, guidance=7.5),
        make_job(13, (), steps=5, guidance=1.0),
        make_job(14, ((j, 0.8),), steps=3, guidance=5.0),  # shares job 11's stack
    ]
    want = {job.seed: alone(denoiser, job) for job in jobs}
    got = stepped(StepRunner(denoiser), jobs, joins_at=[0, 2, 2, 4])
    for job in jobs:
        assert_same(got[job.seed], want[job.seed])


def test_a_shared_stack_batch_is_the_same_as_alone(
    denoiser: Denoiser, adapters: dict[str, LoraWeights]
) -> None:
    """All running jobs on one stack: the fused mode fuses once and keeps it while members change."""
    stack = ((adapters["jiangnan"], 0.8),)
    jobs = [make_job(21, stack, steps=4), make_job(22, stack, steps=2), make_job(23, stack, steps=3)]
    want = {job.seed: alone(denoiser, job) for job in jobs}
    got = stepped(StepRunner(denoiser), jobs, joins_at=[0, 1, 3])
    for job in jobs:
        assert_same(got[job.seed], want[job.seed])


# --- the engine: submit, priorities, shapes, stops, out-of-memory -----------------------------


class Gate(EngineObserver):
    """Holds the worker after admitting its first job until a second job is queued."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.first_admitted = asyncio.Event()
        self.second_queued = threading.Event()
        self._admissions = 0

    def queue_wait(self, seconds: float) -> None:  # worker thread, at admission
        self._admissions += 1
        if self._admissions == 1:
            self.loop.call_soon_threadsafe(self.first_admitted.set)
            assert self.second_queued.wait(WAIT_S)

    def queue_depth(self, depth: int) -> None:
        if self.first_admitted.is_set() and depth >= 1:
            self.second_queued.set()


class Queued(EngineObserver):
    """Sets `reached` once `count` jobs are waiting in the queue (submit reports the depth)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop, self.count = loop, count
        self.reached = asyncio.Event()

    def queue_depth(self, depth: int) -> None:
        if depth >= self.count:
            self.loop.call_soon_threadsafe(self.reached.set)


@contextmanager
def engine_over(
    denoiser: Denoiser, observer: EngineObserver | None = None, **options: int
) -> Iterator[StepEngine]:
    engine = StepEngine(denoiser, observer=observer, **options)  # type: ignore[arg-type]
    engine.start()
    try:
        yield engine
    finally:
        engine.close(timeout=WAIT_S)


@contextmanager
def unet_rows(denoiser: Denoiser) -> Iterator[list[int]]:
    rows: list[int] = []
    handle = denoiser.pipeline.unet.register_forward_pre_hook(
        lambda m, args: rows.append(int(args[0].shape[0]))
    )
    try:
        yield rows
    finally:
        handle.remove()


async def test_a_job_submitted_while_another_runs_joins_it(
    hooks: Denoiser, adapters: dict[str, LoraWeights]
) -> None:
    first = make_job(31, ((adapters["jiangnan"], 0.8),), steps=6)
    second = make_job(32, ((adapters["ink_wash"], 0.8),), steps=3, guidance=7.5)
    want = [alone(hooks, job)[0] for job in (first, second)]
    gate = Gate(asyncio.get_running_loop())
    with engine_over(hooks, gate, max_batch=4) as engine, unet_rows(hooks) as rows:
        running_first = asyncio.ensure_future(engine.submit(first))
        await asyncio.wait_for(gate.first_admitted.wait(), WAIT_S)
        images = await asyncio.gather(engine.submit(second), running_first)
    # the first job alone for one step, then both (two CFG rows each) for the second's 3 steps,
    # then the first alone again for its last 2
    assert rows == [2, 4, 4, 4, 2, 2]
    for got, expected in zip(reversed(images), want, strict=True):
        assert int(np.abs(got.astype(int) - expected.astype(int)).max()) <= MAX_PIXEL_DIFF


async def test_live_jobs_are_admitted_before_prepare_jobs(hooks: Denoiser) -> None:
    held = threading.Event()
    queued = Queued(asyncio.get_running_loop(), 2)
    with engine_over(hooks, queued, max_batch=1) as engine:
        engine.run_on_worker(lambda: held.wait(WAIT_S))  # the worker waits here: a backlog builds
        prepare = make_job(41, steps=1)
        prepare.priority = Priority(PREPARE)
        live = make_job(42, steps=1)
        assert live.priority.value == LIVE
        calls = [asyncio.ensure_future(engine.submit(j)) for j in (prepare, live)]
        await asyncio.wait_for(queued.reached.wait(), WAIT_S)
        held.set()
        await asyncio.gather(*calls)
    assert live.started_at is not None and prepare.started_at is not None
    assert live.started_at < prepare.started_at


async def test_jobs_of_another_size_wait_for_the_running_batch_to_drain(hooks: Denoiser) -> None:
    jobs = [make_job(51, steps=2), make_job(52, steps=2, size=128), make_job(53, steps=2)]
    want = [alone(hooks, job)[0] for job in jobs]
    held = threading.Event()
    queued = Queued(asyncio.get_running_loop(), len(jobs))
    with engine_over(hooks, queued, max_batch=4) as engine, unet_rows(hooks) as rows:
        engine.run_on_worker(lambda: held.wait(WAIT_S))
        calls = [asyncio.ensure_future(engine.submit(j)) for j in jobs]
        await asyncio.wait_for(queued.reached.wait(), WAIT_S)
        held.set()
        images = await asyncio.gather(*calls)
    assert rows == [2, 2, 2, 2, 2, 2]  # one job at a time: 64, then 128, then 64 (arrival order)
    for got, expected in zip(images, want, strict=True):
        assert got.shape == expected.shape
        assert int(np.abs(got.astype(int) - expected.astype(int)).max()) <= MAX_PIXEL_DIFF


async def test_stopped_jobs_leave_and_the_others_finish(hooks: Denoiser) -> None:
    late = make_job(61, steps=3)
    late.deadline = time.monotonic() - 1.0
    gone = make_job(62, steps=3)
    gone.cancelled.set()
    kept = make_job(63, steps=3)
    want = alone(hooks, kept)[0]
    with engine_over(hooks, max_batch=4) as engine:
        outcomes = await asyncio.gather(
            *(engine.submit(j) for j in (late, gone, kept)), return_exceptions=True
        )
    assert isinstance(outcomes[0], DeadlineExceeded)
    assert isinstance(outcomes[1], Cancelled)
    assert int(np.abs(outcomes[2].astype(int) - want.astype(int)).max()) <= MAX_PIXEL_DIFF


async def test_out_of_memory_fails_the_newest_job_and_the_rest_run_on(hooks: Denoiser) -> None:
    first, second = make_job(71, steps=4), make_job(72, steps=4)
    want = alone(hooks, first)[0]

    def tight_memory(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if args[0].shape[0] > 2:  # more than one job (two CFG rows) does not "fit"
            raise torch.OutOfMemoryError("CUDA out of memory (injected at the UNet by the test)")

    gate = Gate(asyncio.get_running_loop())
    handle = hooks.pipeline.unet.register_forward_pre_hook(tight_memory)
    try:
        with engine_over(hooks, gate, max_batch=4) as engine:
            running_first = asyncio.ensure_future(engine.submit(first))
            await asyncio.wait_for(gate.first_admitted.wait(), WAIT_S)
            outcomes = await asyncio.gather(engine.submit(second), running_first, return_exceptions=True)
    finally:
        handle.remove()
    assert isinstance(outcomes[0], Overloaded)
    assert "COVERGEN_MAX_BATCH" in str(outcomes[0])
    assert int(np.abs(outcomes[1].astype(int) - want.astype(int)).max()) <= MAX_PIXEL_DIFF
