"""The GPU benchmark in one command: SD 1.5's real architecture, random weights, fp16, 512 px.

    .venv/bin/python loadtest/bench_gpu.py              # a CUDA machine: well under 10 minutes
    .venv/bin/python loadtest/bench_gpu.py --dry-run    # the same code on a CPU, tiny model, seconds

Nothing is downloaded: the UNet, VAE and CLIP text encoder are built from the configs shipped in
`server/covergen/configs/sd15/` with random weights, in memory. Adapters are random LoRAs over
attention projections and resnet convolutions (the layers the shipped regional adapters adapt),
built as `LoraWeights` in memory. Each section prints one table with ratios from the same run:

1. engine vs plain diffusers pipeline: it/s on the same batch (no adapter, CFG);
2. a mixed batch of 8 different stacks vs 8 jobs sharing one stack (hooks, and fused);
3. `COMPILE_UNET` on vs off (CUDA only; the dry run says so and skips it);
4. LCM few-step mode (LCMScheduler, 4 steps, guidance 1, an LCM-LoRA-shaped adapter) p50;
5. step-level vs static batching under open-loop Poisson load at 70% of the static capacity.

`--dry-run` is run by `make test` (tests/test_bench_gpu.py) so this script cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as `python loadtest/bench_gpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_lcm import LCMScheduler
from torch import nn

from covergen.adapters.files import LoraFactor, LoraWeights
from covergen.engine.batcher import Engine
from covergen.engine.denoise import CoverJob, Denoiser
from covergen.engine.lora_layers import StackItem
from covergen.engine.speedups import compile_unet
from covergen.engine.step_batcher import StepEngine

REPO = Path(__file__).resolve().parents[1]
ADAPTED = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")


def build(dry_run: bool) -> tuple[StableDiffusionPipeline, torch.device]:
    cache = REPO / ".cache" / "covergen"
    if dry_run:
        from covergen.models import load_base_model

        torch.set_num_threads(1)  # 2 shared cores: more intra-op threads thrash (loadtest/RESULTS.md)

        return load_base_model(
            "embedded", cache_dir=cache, device="cpu", dtype="fp32"
        ).pipeline, torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here; run with --dry-run to check the script on a CPU")
    from loadtest.bench_engine import build_pipeline

    pipeline = build_pipeline("sd15", cache).to("cuda", torch.float16)
    return pipeline, torch.device("cuda")


def random_adapter(unet: nn.Module, name: str, rank: int, seed: int, device: torch.device) -> LoraWeights:
    """A LoRA over attention projections and resnet convs, as the shipped adapters have."""
    generator = torch.Generator("cpu").manual_seed(seed)
    dtype = next(unet.parameters()).dtype
    factors: dict[str, LoraFactor] = {}
    for module_name, module in unet.named_modules():
        if not module_name.endswith(ADAPTED):
            continue
        if isinstance(module, nn.Conv2d):
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator)
            down /= (module.in_channels * module.kernel_size[0] * module.kernel_size[1]) ** 0.5
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator) * 0.1
        elif isinstance(module, nn.Linear):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) * 0.1
        else:
            continue
        factors[module_name] = LoraFactor(down.to(device, dtype), up.to(device, dtype), 1.0)
    return LoraWeights(name, f"v{seed}", None, {"unet": factors})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `fn` after one warm-up call (none for a single repeat: the dry run)."""
    if repeats > 1:
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def jobs(n: int, args: argparse.Namespace, stacks: list[tuple[StackItem, ...]], steps: int | None = None,
         guidance: float = 5.0, seed: int = 0) -> list[CoverJob]:  # fmt: skip
    return [
        CoverJob(
            f"news cover {seed + i}, harbour at dusk",
            "blurry",
            seed + i,
            args.size,
            args.size,
            steps or args.steps,
            guidance,
            stack=stacks[i % len(stacks)],
        )  # fmt: skip
        for i in range(n)
    ]


def section_pipeline(pipe: StableDiffusionPipeline, device: torch.device, args: argparse.Namespace) -> None:
    denoiser = Denoiser(pipe)
    batch = jobs(args.batch, args, [()])
    ours = timed(lambda: denoiser.run(batch), device, args.repeats)
    theirs = timed(
        lambda: pipe(
            [j.prompt for j in batch], negative_prompt=[j.negative_prompt for j in batch],
            num_inference_steps=args.steps, guidance_scale=5.0, height=args.size, width=args.size, output_type="np",
        ),
        device, args.repeats,
    )  # fmt: skip
    print(f"\n## 1. engine vs plain diffusers pipeline (batch {args.batch}, {args.steps} steps, CFG)")
    print("| arm | s per batch | it/s | x diffusers |\n|---|---:|---:|---:|")
    for name, s in (("diffusers StableDiffusionPipeline", theirs), ("covergen Denoiser", ours)):
        print(f"| {name} | {s:.3f} | {args.steps / s:.2f} | {theirs / s:.3f} |")


def section_mixed(pipe: StableDiffusionPipeline, device: torch.device, args: argparse.Namespace) -> None:
    adapters = [random_adapter(pipe.unet, f"region{i}", args.rank, 100 + i, device) for i in range(8)]
    eight = [((a, 0.8),) for a in adapters]
    one = [((adapters[0], 0.8),)]
    hooks = Denoiser(pipe)
    fused = Denoiser(copy.deepcopy(pipe), fuse_shared_stacks=True)
    arms = {
        "8 jobs, 1 stack, hooks": (hooks, one),
        "8 jobs, 1 stack, fused": (fused, one),
        "8 jobs, 8 stacks (mixed), hooks": (hooks, eight),
    }
    base = timed(lambda: hooks.run(jobs(8, args, [()])), device, args.repeats)
    print(f"\n## 2. mixed 8-stack batch vs single-stack (batch 8, {args.steps} steps, rank {args.rank})")
    print(
        f"| arm | s per batch | x no adapter | x single-stack hooks |\n|---|---:|---:|---:|\n| no adapter | {base:.3f} | 1.000 | - |"
    )
    single = None
    for name, (denoiser, stacks) in arms.items():
        s = timed(lambda d=denoiser, st=stacks: d.run(jobs(8, args, st)), device, args.repeats)  # type: ignore[misc]
        single = single or s
        print(f"| {name} | {s:.3f} | {s / base:.3f} | {s / single:.3f} |")
    del fused


def section_compile(pipe: StableDiffusionPipeline, device: torch.device, args: argparse.Namespace) -> None:
    print("\n## 3. COMPILE_UNET on vs off (batch 4)")
    if device.type != "cuda":
        print("skipped: torch.compile is CUDA-only in covergen (apply_speedups refuses it on a CPU)")
        return
    eager = Denoiser(pipe)
    compiled_pipe = copy.deepcopy(pipe)
    compiled = Denoiser(compiled_pipe)
    compile_unet(compiled_pipe.unet, compiled.unet_lora)
    batch = jobs(4, args, [()])
    started = time.perf_counter()
    compiled.run(batch)  # compiles
    sync(device)
    first = time.perf_counter() - started
    off = timed(lambda: eager.run(batch), device, args.repeats)
    on = timed(lambda: compiled.run(batch), device, args.repeats)
    print(
        f"| arm | s per batch | it/s | x off |\n|---|---:|---:|---:|\n| off | {off:.3f} | {args.steps / off:.2f} | 1.000 |"
    )
    print(
        f"| on | {on:.3f} | {args.steps / on:.2f} | {on / off:.3f} |\n(first compiled batch, compile included: {first:.1f} s)"
    )
    del compiled_pipe


def section_lcm(pipe: StableDiffusionPipeline, device: torch.device, args: argparse.Namespace) -> None:
    lcm_pipe = copy.deepcopy(pipe)
    lcm_pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    denoiser = Denoiser(
        lcm_pipe,
        base_stack=((random_adapter(lcm_pipe.unet, "@lcm", 64 if not args.dry_run else 4, 7, device), 1.0),),
    )
    full = Denoiser(pipe)
    one = jobs(1, args, [()])
    few = jobs(1, args, [()], steps=4, guidance=1.0)
    samples = [timed(lambda: denoiser.run(few), device, 1) for _ in range(args.repeats + 2)]
    p50 = statistics.median(samples)
    default = timed(lambda: full.run(one), device, args.repeats)
    print(
        f"\n## 4. LCM few-step mode (batch 1): 4 steps, guidance 1, rank-{64 if not args.dry_run else 4} LCM-LoRA shape"
    )
    print(f"| arm | p50 s per cover |\n|---|---:|\n| default: {args.steps} steps, CFG | {default:.3f} |")
    print(f"| LCM: 4 steps | {p50:.3f} ({p50 / default:.3f}x) |")
    del lcm_pipe


async def _drive(
    engine: Engine, batch: list[CoverJob], rate: float | None, seed: int
) -> tuple[float, list[float]]:
    """Submit `batch` at once (rate None) or as Poisson arrivals; returns (covers/s, latencies)."""
    rng = random.Random(seed)
    latencies: list[float] = []

    async def one(job: CoverJob) -> None:
        started = time.perf_counter()
        await engine.submit(job)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    tasks = []
    for job in batch:
        tasks.append(asyncio.create_task(one(job)))
        if rate is not None:
            await asyncio.sleep(rng.expovariate(rate))  # open-loop arrival gaps, not synchronisation
    await asyncio.gather(*tasks)
    return len(batch) / (time.perf_counter() - started), latencies


def section_batching(pipe: StableDiffusionPipeline, device: torch.device, args: argparse.Namespace) -> None:
    adapters = [random_adapter(pipe.unet, f"region{i}", args.rank, 200 + i, device) for i in range(8)]
    stacks = [((a, 0.8),) for a in adapters]
    denoiser = Denoiser(pipe)
    kinds: dict[str, type[Engine]] = {"step": StepEngine, "static": Engine}

    def run(name: str, seed: int, rate: float | None) -> tuple[float, list[float]]:
        engine = kinds[name](
            denoiser, max_batch=args.max_batch, max_wait_ms=5.0, max_queue=4 * args.load_jobs
        )
        engine.start()
        try:
            return asyncio.run(_drive(engine, jobs(args.load_jobs, args, stacks, seed=seed), rate, seed))
        finally:
            engine.close(60.0)

    caps: dict[str, list[float]] = {"step": [], "static": []}
    for rnd in range(2):  # saturation: every job at once, arms interleaved
        for name in ("step", "static") if rnd == 0 else ("static", "step"):
            caps[name].append(run(name, 1000 * rnd, None)[0])
    rate = 0.7 * statistics.median(caps["static"])
    lat = {name: sorted(run(name, 5000, rate)[1]) for name in ("static", "step")}
    print(
        f"\n## 5. step-level vs static batching (max_batch {args.max_batch}, 8 stacks, {args.load_jobs} jobs per run)"
    )
    print(f"Poisson arrivals at {rate:.2f}/s = 70% of the static capacity")
    print("| batching | capacity covers/s | p50 s at 70% | p99 s at 70% |\n|---|---:|---:|---:|")
    for name in ("static", "step"):
        values = lat[name]
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        print(
            f"| {name} | {statistics.median(caps[name]):.2f} | {values[len(values) // 2]:.3f} | {p99:.3f} |"
        )
    ratio = statistics.median(caps["step"]) / statistics.median(caps["static"])
    print(f"step / static capacity: **{ratio:.2f}**")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, tiny sizes: checks the code")
    parser.add_argument("--sections", default="pipeline,mixed,compile,lcm,batching")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.size = 64 if dry else 512
    args.steps = 2 if dry else 20
    args.batch = 2 if dry else 4
    args.rank = 4 if dry else 16
    args.repeats = 1 if dry else 3
    args.max_batch = 4 if dry else 8
    args.load_jobs = 4 if dry else 32
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    pipe, device = build(args.dry_run)
    what = (
        "tiny model, CPU fp32 (dry run)"
        if args.dry_run
        else f"SD 1.5 architecture, random weights, {torch.cuda.get_device_name()} fp16"
    )
    print(f"# bench_gpu: {what}, {args.size} px; built in {time.perf_counter() - started:.1f} s")
    sections = {"pipeline": section_pipeline, "mixed": section_mixed, "compile": section_compile,
                "lcm": section_lcm, "batching": section_batching}  # fmt: skip
    with torch.inference_mode():
        for name in args.sections.split(","):
            sections[name](pipe, device, args)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
