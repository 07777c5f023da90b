"""Benchmark of covergen's adapter-aware batching engine against diffusers' own LoRA paths.

One command runs one workload and prints tables (not collected by pytest):

    .venv/bin/python loadtest/bench_engine.py --arch tiny --size 64 --steps 4 --requests 64 --stacks 8
    .venv/bin/python loadtest/bench_engine.py --arch sd15 --size 256 --steps 4 --requests 16 --stacks 8

Workload: N requests over K >= 8 regional stacks (every third stack adds a shared overlay adapter,
so a third of the stacks hold 2 adapters), stack popularity Zipf(s), every prompt unique, fixed
size, steps and guidance. Arms, all on copies of one pipeline in this process:

  (a) naive      per request: load_lora_weights + set_adapters + generate + unload_lora_weights
  (b) resident   every adapter loaded once (adapter_name=...); per request set_adapters, batch 1
  (c) engine     covergen's Engine(Denoiser) with max_batch; the whole slice is submitted at once
                 (a burst); adapters made resident through AdapterRegistry beforehand
  (d) ceiling    one fixed adapter fused (fuse_lora, then unload_lora_weights) at batch 1,2,4,8

Requests are split into `--rounds` slices; each round runs every arm on its slice, in a rotated
order, so load from other processes falls on all arms alike. Latency is measured from the
round's start (every request of the slice arrives at t=0), service time from when the request's
own work began. The other sections time one thing each: switching between resident stacks,
the UNet step with a two-adapter stack, cold loads of a rank-16 adapter, the registry's RSS over
1,000 load/evict cycles, the attention-processor / channels_last UNet forward, and (`settings`)
whole covers under each `COVERGEN_*` speed setting applied by `engine/speedups.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import psutil
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from safetensors.torch import save_file

from covergen.adapters.files import LoraWeights
from covergen.adapters.registry import AdapterRegistry, AdapterSource
from covergen.engine.batcher import Engine, EngineObserver
from covergen.engine.denoise import CoverJob, Denoiser
from covergen.engine.lora_layers import StackItem

REPO = Path(__file__).resolve().parents[1]
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
NEGATIVE = "text, watermark, blurry"
GUIDANCE = 5.0
REGIONS = [
    "jiangnan canal", "sichuan hotpot", "hutong breakfast", "lingnan arcade", "minnan red brick",
    "harbin night market", "xinjiang bazaar", "yunnan terraces", "tibet monastery", "shanghai bund",
    "xian city wall", "guilin karst",
]  # fmt: skip


# --- models and adapters ----------------------------------------------------------------------


def build_pipeline(arch: str, cache_dir: Path) -> StableDiffusionPipeline:
    """The tiny embedded model, or SD 1.5's real architecture with random weights, in memory."""
    if arch == "tiny":
        from covergen.models import load_base_model

        return load_base_model("embedded", cache_dir=cache_dir, device="cpu", dtype="fp32").pipeline
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_pndm import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from covergen.models.clip_vocab import write_tokenizer_files
    from covergen.models.config_dirs import SD15_CONFIG_DIR

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(write_tokenizer_files(cache_dir)),
        unet=unet,
        scheduler=PNDMScheduler.from_pretrained(SD15_CONFIG_DIR, subfolder="scheduler"),
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def write_adapter(unet: torch.nn.Module, path: Path, rank: int, seed: int) -> Path:
    """A random attention LoRA in the diffusers layout (with the metadata diffusers needs)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTENTION):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) * (0.6 / rank**0.5)
            tensors[f"unet.{name}.lora_A.weight"] = down.contiguous()
            tensors[f"unet.{name}.lora_B.weight"] = up.contiguous()
    metadata = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": list(ATTENTION)}
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(metadata)})
    return path


@dataclass(frozen=True)
class Request:
    index: int
    stack: tuple[tuple[str, float], ...]  # adapter names and weights
    prompt: str
    seed: int


def regional_stacks(k: int) -> list[tuple[tuple[str, float], ...]]:
    """K stacks: region i at 0.8, and every third also the shared overlay at 0.5."""
    stacks = []
    for i in range(k):
        stack: tuple[tuple[str, float], ...] = ((f"region{i}", 0.8),)
        if i % 3 == 2:
            stack += (("overlay", 0.5),)
        stacks.append(stack)
    return stacks


def zipf_requests(n: int, k: int, s: float, seed: int) -> list[Request]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, k + 1) ** s
    picks = rng.choice(k, size=n, p=popularity / popularity.sum())
    stacks = regional_stacks(k)
    return [
        Request(j, stacks[int(i)], f"{REGIONS[int(i) % len(REGIONS)]} cover, story {j}", 10_000 + j)
        for j, i in enumerate(picks)
    ]


# --- arms -------------------------------------------------------------------------------------


@dataclass
class Timing:
    latency: list[float] = field(default_factory=list)  # s since the round's start
    service: list[float] = field(default_factory=list)  # s since the request's own work began
    busy: float = 0.0  # wall seconds the arm ran
    images: dict[int, np.ndarray] = field(default_factory=dict)  # request index -> [H, W, 3]


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    return [(image * 255).round().astype("uint8") for image in images]


class Arm:
    name: str

    def run(self, requests: Sequence[Request], timing: Timing) -> None:
        raise NotImplementedError


class DiffusersArm(Arm):
    """(a) naive and (b) resident: diffusers' pipeline, one request at a time."""

    def __init__(self, name: str, pipeline: StableDiffusionPipeline, files: dict[str, Path], args: argparse.Namespace,
                 latents: Callable[[Request], torch.Tensor], resident: bool) -> None:  # fmt: skip
        self.name, self.pipeline, self.files, self.args, self.latents = name, pipeline, files, args, latents
        self.resident = resident
        self.load_seconds = 0.0
        if resident:
            started = time.perf_counter()
            for adapter, path in files.items():
                pipeline.load_lora_weights(str(path), adapter_name=adapter)
            self.load_seconds = time.perf_counter() - started

    def run(self, requests: Sequence[Request], timing: Timing) -> None:
        start = time.perf_counter()
        for request in requests:
            began = time.perf_counter()
            names = [name for name, _ in request.stack]
            if not self.resident:
                for name in names:
                    self.pipeline.load_lora_weights(str(self.files[name]), adapter_name=name)
            self.pipeline.set_adapters(names, [w for _, w in request.stack])
            image = self.pipeline(
                prompt=request.prompt,
                negative_prompt=NEGATIVE,
                latents=self.latents(request),
                guidance_scale=GUIDANCE,
                num_inference_steps=self.args.steps,
                height=self.args.size,
                width=self.args.size,
                output_type="np",
            ).images
            if not self.resident:
                self.pipeline.unload_lora_weights()
            done = time.perf_counter()
            timing.images[request.index] = to_uint8(image)[0]
            timing.latency.append(done - start)
            timing.service.append(done - began)
        timing.busy += time.perf_counter() - start


class BatchSizes(EngineObserver):
    """Records the size of every batch the engine ran."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch_ran(self, size: int, seconds: float) -> None:
        self.sizes.append(size)


class EngineArm(Arm):
    """(c) covergen: the slice is submitted to the Engine at once from asyncio."""

    def __init__(self, denoiser: Denoiser, weights: dict[str, LoraWeights], args: argparse.Namespace) -> None:
        self.name = f"(c) engine max_batch={args.max_batch}" + (" fused" if args.fuse_shared else "")
        self.denoiser, self.weights, self.args = denoiser, weights, args
        self.batch_sizes = BatchSizes()

    def job(self, request: Request) -> CoverJob:
        stack: tuple[StackItem, ...] = tuple((self.weights[name], w) for name, w in request.stack)
        size, steps = self.args.size, self.args.steps
        return CoverJob(request.prompt, NEGATIVE, request.seed, size, size, steps, GUIDANCE, stack=stack)

    def run(self, requests: Sequence[Request], timing: Timing) -> None:
        engine = Engine(self.denoiser, max_batch=self.args.max_batch, max_wait_ms=self.args.max_wait_ms,
                        max_queue=max(64, len(requests)), observer=self.batch_sizes)  # fmt: skip
        engine.start()
        try:
            start = time.perf_counter()
            asyncio.run(self._burst(engine, requests, timing, start))
            timing.busy += time.perf_counter() - start
        finally:
            engine.close(timeout=600)

    async def _burst(self, engine: Engine, requests: Sequence[Request], timing: Timing, start: float) -> None:
        async def one(request: Request) -> None:
            job = self.job(request)
            image = await engine.submit(job)
            done = time.perf_counter()
            timing.images[request.index] = image
            timing.latency.append(done - start)
            began = job.started_at if job.started_at is not None else job.enqueued_at
            timing.service.append(time.monotonic() - began)

        await asyncio.gather(*(one(r) for r in requests))


class CeilingArm(Arm):
    """(d) one adapter fused into the weights, batches of `batch` through the pipeline."""

    def __init__(self, pipeline: StableDiffusionPipeline, batch: int, args: argparse.Namespace,
                 latents: Callable[[Request], torch.Tensor]) -> None:  # fmt: skip
        self.name = f"(d) fused 1 adapter, batch {batch}"
        self.pipeline, self.batch, self.args, self.latents = pipeline, batch, args, latents

    def run(self, requests: Sequence[Request], timing: Timing) -> None:
        start = time.perf_counter()
        for first in range(0, len(requests), self.batch):
            chunk = requests[first : first + self.batch]
            began = time.perf_counter()
            self.pipeline(
                prompt=[r.prompt for r in chunk],
                negative_prompt=[NEGATIVE] * len(chunk),
                latents=torch.cat([self.latents(r) for r in chunk]),
                guidance_scale=GUIDANCE,
                num_inference_steps=self.args.steps,
                height=self.args.size,
                width=self.args.size,
                output_type="np",
            )
            done = time.perf_counter()
            timing.latency.extend([done - start] * len(chunk))
            timing.service.extend([done - began] * len(chunk))
        timing.busy += time.perf_counter() - start


def fused_ceiling_pipeline(pipeline: StableDiffusionPipeline, path: Path) -> StableDiffusionPipeline:
    pipeline.load_lora_weights(str(path), adapter_name="fixed")
    pipeline.set_adapters(["fixed"], [0.8])
    pipeline.fuse_lora(adapter_names=["fixed"])
    pipeline.unload_lora_weights()  # the fused weights stay; the peft layers go
    return pipeline


# --- the workload -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_workload(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    stacks = regional_stacks(args.stacks)
    adapters = sorted({name for stack in stacks for name, _ in stack})
    files = {
        name: write_adapter(base.unet, folder / f"{name}.safetensors", args.rank, i)
        for i, name in enumerate(adapters)
    }
    requests = zipf_requests(args.requests, args.stacks, args.zipf, args.seed)

    plain = Denoiser(base)  # for initial latents only; it never activates an adapter
    latents = lambda r: plain.initial_latents(CoverJob(r.prompt, NEGATIVE, r.seed, args.size, args.size,  # noqa: E731
                                                       args.steps, GUIDANCE))  # fmt: skip
    arms: list[Arm] = []
    if "a" in args.arms:
        arms.append(
            DiffusersArm("(a) naive load/unload", copy.deepcopy(base), files, args, latents, resident=False)
        )
    if "b" in args.arms:
        resident = DiffusersArm(
            "(b) resident set_adapters", copy.deepcopy(base), files, args, latents, resident=True
        )
        print(f"(b) load_lora_weights of {len(files)} adapters once: {resident.load_seconds:.2f} s")
        arms.append(resident)
    if "d" in args.arms:
        ceiling = fused_ceiling_pipeline(copy.deepcopy(base), files["region0"])
        arms.extend(CeilingArm(ceiling, b, args, latents) for b in args.ceiling_batches)
    # the engine hooks `base` itself (one copy fewer: SD 1.5 copies are ~4.8 GiB); this is why
    # the workload runs after the other sections, which deep-copy `base`
    denoiser = Denoiser(base, fuse_shared_stacks=args.fuse_shared)
    registry = AdapterRegistry(module_names=denoiser.module_names(), check=denoiser.check_compatible,
                               device=denoiser.device, dtype=denoiser.dtype, max_resident=len(adapters))  # fmt: skip
    weights = {name: registry.load(AdapterSource(name, path)) for name, path in files.items()}
    engine_arm = EngineArm(denoiser, weights, args)
    if "c" in args.arms:
        arms.append(engine_arm)

    warm = zipf_requests(max(args.max_batch, 2), args.stacks, args.zipf, args.seed + 1)
    for arm in arms:  # first calls allocate and initialise; keep them out of the figures
        arm.run(warm[: args.max_batch if isinstance(arm, EngineArm | CeilingArm) else 1], Timing())
    engine_arm.batch_sizes.sizes.clear()

    timings = {arm.name: Timing() for arm in arms}
    slices = np.array_split(np.arange(len(requests)), args.rounds)
    for round_index, indices in enumerate(slices):
        part = [requests[i] for i in indices]
        order = arms[round_index % len(arms) :] + arms[: round_index % len(arms)]
        for arm in order:
            gc.collect()
            arm.run(part, timings[arm.name])
            print(f"  round {round_index + 1}/{len(slices)} {arm.name}: {timings[arm.name].busy:.1f} s so far",
                  file=sys.stderr, flush=True)  # fmt: skip

    print(f"\nworkload: {args.requests} requests, {args.stacks} stacks (Zipf s={args.zipf}, "
          f"{sum(len(s) == 2 for s in stacks)} with 2 adapters), rank {args.rank}, {args.size} px, "
          f"{args.steps} steps, guidance {GUIDANCE}, {args.rounds} interleaved rounds, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(
        "stack popularity:",
        np.bincount([stacks.index(r.stack) for r in requests], minlength=args.stacks).tolist(),
    )
    if engine_arm.batch_sizes.sizes:
        print("engine batch sizes:", engine_arm.batch_sizes.sizes)
    rows = {name: (len(t.latency) / t.busy, t) for name, t in timings.items()}
    print("\n| arm | images/s | burst p50 s | burst p95 s | service p50 s | service p95 s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (rate, t) in rows.items():
        print(f"| {name} | {rate:.3g} | {percentile(t.latency, 50):.2f} | {percentile(t.latency, 95):.2f} | "
              f"{percentile(t.service, 50):.3f} | {percentile(t.service, 95):.3f} |")  # fmt: skip
    engine_rate = rows[engine_arm.name][0] if engine_arm.name in rows else None
    naive = next((v[0] for k, v in rows.items() if k.startswith("(a)")), None)
    resident_rate = next((v[0] for k, v in rows.items() if k.startswith("(b)")), None)
    ceilings = {k: v[0] for k, v in rows.items() if k.startswith("(d)")}
    if engine_rate is not None:
        if naive:
            print(f"\n(c)/(a) = {engine_rate / naive:.2f}")
        if resident_rate:
            print(f"(c)/(b) = {engine_rate / resident_rate:.2f}")
        if ceilings:
            best = max(ceilings, key=lambda k: ceilings[k])
            print(f"(c)/(d) = {engine_rate / ceilings[best]:.2f} against the best ceiling, {best}")
    check = [name for name in timings if name.startswith(("(a)", "(b)"))]
    if engine_arm.name in timings and check:
        ours = timings[engine_arm.name].images
        theirs = timings[check[-1]].images
        worst = max(int(np.abs(ours[i].astype(np.int16) - theirs[i].astype(np.int16)).max()) for i in ours)
        print(f"images: max |engine - {check[-1]}| = {worst} uint8 levels over {len(ours)} covers")


# --- one-thing sections -----------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def section_switch(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    """Cost of moving the model from one resident stack to another."""
    stacks = regional_stacks(args.stacks)
    adapters = sorted({name for stack in stacks for name, _ in stack})
    files = {
        n: write_adapter(base.unet, folder / f"sw-{n}.safetensors", args.rank, 50 + i)
        for i, n in enumerate(adapters)
    }
    ours = copy.deepcopy(base)  # both modes hook one copy: each activate is undone before the next
    denoisers = {mode: Denoiser(ours, fuse_shared_stacks=mode == "fused") for mode in ("hooks", "fused")}
    registry = AdapterRegistry(module_names=denoisers["hooks"].module_names(), check=denoisers["hooks"].check_compatible,
                               device=torch.device("cpu"), dtype=torch.float32, max_resident=64)  # fmt: skip
    weights = {n: registry.load(AdapterSource(n, p)) for n, p in files.items()}
    resident = copy.deepcopy(base)
    for name, path in files.items():
        resident.load_lora_weights(str(path), adapter_name=name)
    repeats = args.micro_repeats
    counter = iter(range(10**9))

    def activate(mode: str, fresh: bool, two: bool) -> None:
        lora = denoisers[mode].unet_lora
        i = next(counter)
        candidates = [s for s in stacks if (len(s) == 2) == two]
        stack = candidates[i % len(candidates)]
        jitter = 1e-6 * i if fresh else 0.0  # a weight never seen before misses the stack cache
        lora.activate([tuple((weights[n], w + jitter) for n, w in stack)], [0, 0])
        lora.deactivate()

    def set_adapters(two: bool) -> None:
        i = next(counter)
        candidates = [s for s in stacks if (len(s) == 2) == two]
        stack = candidates[i % len(candidates)]
        resident.set_adapters([n for n, _ in stack], [w + 1e-6 * i for _, w in stack])

    print(f"\nresident switch, {args.arch} UNet, rank {args.rank} attention adapters, median of {repeats}:")
    print("| switch | 1 adapter ms | 2 adapters ms |")
    print("|---|---:|---:|")
    for mode in ("hooks", "fused"):
        for two in (False, True):  # warm every stack into the cache
            for _ in range(len(stacks)):
                activate(mode, False, two)
    rows = {
        "PerSampleLora.activate+deactivate, cached stack (hooks)": lambda two: activate("hooks", False, two),
        "PerSampleLora.activate+deactivate, new stack (hooks)": lambda two: activate("hooks", True, two),
        "PerSampleLora.activate+deactivate, cached stack (fused)": lambda two: activate("fused", False, two),
        "PerSampleLora.activate+deactivate, new stack (fused)": lambda two: activate("fused", True, two),
        "diffusers set_adapters (resident)": set_adapters,
    }
    results = {name: [[], []] for name in rows}
    for _ in range(repeats):  # interleaved
        for name, fn in rows.items():
            for column, two in enumerate((False, True)):
                started = time.perf_counter()
                fn(two)
                results[name][column].append(time.perf_counter() - started)
    for name, (one, two) in results.items():
        print(f"| {name} | {1000 * statistics.median(one):.3f} | {1000 * statistics.median(two):.3f} |")


def section_step(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    """One UNet forward (CFG doubles the batch) with no adapter, a two-adapter stack, a mixed batch."""
    stacks = regional_stacks(max(args.stacks, args.max_batch))
    adapters = sorted({name for stack in stacks for name, _ in stack})
    files = {
        n: write_adapter(base.unet, folder / f"st-{n}.safetensors", args.rank, 90 + i)
        for i, n in enumerate(adapters)
    }
    ours = copy.deepcopy(base)  # both modes hook one copy: each activate is undone before the next
    denoiser = Denoiser(ours)
    fused = Denoiser(ours, fuse_shared_stacks=True)
    registry = AdapterRegistry(module_names=denoiser.module_names(), check=denoiser.check_compatible,
                               device=torch.device("cpu"), dtype=torch.float32, max_resident=64)  # fmt: skip
    weights = {n: registry.load(AdapterSource(n, p)) for n, p in files.items()}
    two = next(s for s in stacks if len(s) == 2)
    two_stack = tuple((weights[n], w) for n, w in two)
    unet = denoiser.pipeline.unet
    latent = args.size // 8
    cross = unet.config.cross_attention_dim
    print(f"\nUNet step, {args.arch} at {args.size} px, rank {args.rank}, median of {args.micro_repeats} "
          f"(interleaved), ratio to the base model:")  # fmt: skip
    print("| jobs in batch | arm | ms per step | x base |")
    print("|---:|---|---:|---:|")
    for n in args.step_batches:
        x = torch.randn(2 * n, 4, latent, latent)
        emb = torch.randn(2 * n, 77, cross)
        mixed = [tuple((weights[name], w) for name, w in stacks[i % len(stacks)]) for i in range(n)]
        arms = {
            "base (no adapter)": (denoiser, None),
            "2-adapter stack, hooks": (denoiser, ([two_stack], [0] * 2 * n)),
            "2-adapter stack, fused weights": (fused, ([two_stack], [0] * 2 * n)),
            f"{min(n, len(stacks))} different stacks, hooks": (denoiser, (mixed, list(range(n)) * 2)),
        }
        if n == 1:
            del arms[f"{min(n, len(stacks))} different stacks, hooks"]
        samples: dict[str, list[float]] = {name: [] for name in arms}
        with torch.inference_mode():
            for rep in range(args.micro_repeats + 1):
                for name, (owner, plan) in arms.items():
                    lora = owner.unet_lora
                    if plan is not None:
                        lora.activate(*plan)
                    started = time.perf_counter()
                    owner.pipeline.unet(x, 500, encoder_hidden_states=emb, return_dict=False)
                    if rep:
                        samples[name].append(time.perf_counter() - started)
                    lora.deactivate()
        base_ms = statistics.median(samples["base (no adapter)"])
        for name, values in samples.items():
            ms = statistics.median(values)
            print(f"| {n} | {name} | {1000 * ms:.1f} | {ms / base_ms:.3f} |")


def section_cold_load(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    """Reading a rank-16 attention adapter into the registry vs diffusers' load_lora_weights."""
    path = write_adapter(base.unet, folder / "cold-r16.safetensors", 16, 7)
    denoiser = Denoiser(base)
    registry = AdapterRegistry(module_names=denoiser.module_names(), check=denoiser.check_compatible,
                               device=torch.device("cpu"), dtype=torch.float32, max_resident=4)  # fmt: skip
    repeats = max(3, min(args.micro_repeats, 10))

    def ours() -> None:
        registry.load(AdapterSource("cold", path), replace=True)

    def theirs() -> None:
        base.load_lora_weights(str(path), adapter_name="cold")
        base.unload_lora_weights()  # back to plain modules, so later sections see the base model

    ours(), theirs()  # warm the file cache and imports
    ours_s = median_seconds(ours, repeats)
    theirs_s = median_seconds(theirs, repeats)
    print(f"\ncold load of a rank-16 attention adapter ({path.stat().st_size / 2**20:.1f} MiB) into the {args.arch} "
          f"architecture, median of {repeats}:")  # fmt: skip
    print("| loader | ms |")
    print("|---|---:|")
    print(f"| covergen AdapterRegistry.load (read, check, place) | {1000 * ours_s:.1f} |")
    print(f"| diffusers load_lora_weights (+ unload_lora_weights) | {1000 * theirs_s:.1f} |")


def section_rss(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    """RSS over 1,000 registry load/evict cycles, each also run through the engine's stack cache."""
    denoiser = Denoiser(copy.deepcopy(base))
    registry = AdapterRegistry(module_names=denoiser.module_names(), check=denoiser.check_compatible,
                               device=torch.device("cpu"), dtype=torch.float32, max_resident=4,
                               on_evict=denoiser.forget)  # fmt: skip
    files = [write_adapter(base.unet, folder / f"rss-{i}.safetensors", args.rank, 200 + i) for i in range(12)]
    process = psutil.Process()

    def cycle(i: int) -> None:
        weights = registry.load(AdapterSource(f"rss{i % len(files)}", files[i % len(files)]))
        denoiser.unet_lora.activate([((weights, 0.8),)], [0, 0])
        denoiser.unet_lora.deactivate()

    for i in range(100):  # warm-up: allocator pools settle
        cycle(i)
    gc.collect()
    start = process.memory_info().rss
    marks = []
    for i in range(1, args.rss_cycles + 1):
        cycle(i)
        if i % (args.rss_cycles // 5) == 0:
            gc.collect()
            marks.append((i, process.memory_info().rss))
    print(f"\nRSS over {args.rss_cycles} load/evict cycles (12 files, max_resident 4, rank {args.rank}, "
          f"each adapter also activated), after 100 warm-up cycles:")  # fmt: skip
    print("| cycles | RSS MiB | growth MiB |")
    print("|---:|---:|---:|")
    print(f"| 0 | {start / 2**20:.1f} | 0.0 |")
    for i, rss in marks:
        print(f"| {i} | {rss / 2**20:.1f} | {(rss - start) / 2**20:+.1f} |")
    print(f"resident adapters at the end: {len(registry.resident_names())}; "
          f"cached stacks: {len(denoiser.unet_lora._stack_cache)}")  # fmt: skip
    registry.close()


def section_speedups(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    """One UNet forward (one job, CFG) under attention processors and memory formats."""
    unet = copy.deepcopy(base.unet)
    latent = args.size // 8
    x = torch.randn(2, 4, latent, latent)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim)
    variants: dict[str, Callable[[], None]] = {
        "AttnProcessor2_0 (SDPA, default)": lambda: unet.set_attn_processor(AttnProcessor2_0()),
        "AttnProcessor (classic)": lambda: unet.set_attn_processor(AttnProcessor()),
        "SDPA + channels_last": lambda: (
            unet.set_attn_processor(AttnProcessor2_0()),
            unet.to(memory_format=torch.channels_last),
        ),  # fmt: skip
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for rep in range(args.micro_repeats + 1):
            for name, setup in variants.items():
                unet.to(memory_format=torch.contiguous_format)
                setup()
                inputs = x.to(memory_format=torch.channels_last) if "channels_last" in name else x
                started = time.perf_counter()
                unet(inputs, 500, encoder_hidden_states=emb, return_dict=False)
                if rep:
                    samples[name].append(time.perf_counter() - started)
    print(f"\nUNet forward settings, {args.arch} at {args.size} px, batch 2 (one job with CFG), "
          f"median of {args.micro_repeats} (interleaved):")  # fmt: skip
    print_against_default(samples, "AttnProcessor2_0 (SDPA, default)", "ms", 1000.0, ".1f")


def print_against_default(
    samples: dict[str, list[float]], default: str, unit: str, scale: float, number: str
) -> None:
    """A markdown table of each arm's median (seconds x `scale`, in `unit`) and its ratio to `default`."""
    base = statistics.median(samples[default])
    print(f"| setting | {unit} | x default |")
    print("|---|---:|---:|")
    for name, values in samples.items():
        value = statistics.median(values)
        print(f"| {name} | {format(scale * value, number)} | {value / base:.3f} |")


def section_settings(args: argparse.Namespace, base: StableDiffusionPipeline, folder: Path) -> None:
    """Whole covers through the engine (Denoiser.run) under each speed setting, vs the default.

    One job per batch with a one-adapter regional stack, `--steps` steps, guidance 5; the LCM
    arm runs at its own defaults (4 steps, guidance 1: no CFG half). Arms interleaved per rep."""
    from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny

    from covergen.adapters.files import read_lora_file
    from covergen.engine.speedups import apply_speedups
    from covergen.settings import LCM_DEFAULT_STEPS, Settings
    from trainer.embedded.demo_adapters import demo_state_dict

    taesd = folder / "taesd"  # taesd's architecture (the class defaults), random weights: times only
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(taesd, safe_serialization=True)
    metadata = {"lora_adapter_metadata": json.dumps({"unet.r": 4, "unet.lora_alpha": 4})}
    lcm_file, region_file = folder / "lcm.safetensors", folder / "region.safetensors"
    save_file(demo_state_dict(base.unet, "lcm-lora"), str(lcm_file), metadata=metadata)
    save_file(demo_state_dict(base.unet, "jiangnan"), str(region_file), metadata=metadata)
    arms: dict[str, tuple[dict[str, object], int, float]] = {  # settings, steps, guidance
        "default": ({}, args.steps, GUIDANCE),
        "fuse_shared_stacks=true": ({"fuse_shared_stacks": True}, args.steps, GUIDANCE),
        "attention=classic": ({"attention": "classic"}, args.steps, GUIDANCE),
        "channels_last=true": ({"channels_last": True}, args.steps, GUIDANCE),
        "tiny_vae (taesd architecture)": ({"tiny_vae": taesd}, args.steps, GUIDANCE),
        f"lcm_lora ({LCM_DEFAULT_STEPS} steps, guidance 1)": ({"lcm_lora": lcm_file}, LCM_DEFAULT_STEPS, 1.0),
    }
    denoisers = {
        name: apply_speedups(copy.deepcopy(base), Settings(**options)).denoiser  # type: ignore[arg-type]
        for name, (options, _, _) in arms.items()
    }
    region = read_lora_file(region_file, "jiangnan", denoisers["default"].module_names())
    samples: dict[str, list[float]] = {name: [] for name in arms}
    repeats = max(3, args.micro_repeats // 4)
    for rep in range(repeats + 1):
        for name, (_, steps, guidance) in arms.items():
            job = CoverJob(f"jiangnan canal cover, story {rep}", NEGATIVE, 1000 + rep, args.size, args.size,
                           steps, guidance, stack=((region, 0.8),))  # fmt: skip
            started = time.perf_counter()
            outcome = denoisers[name].run([job])[0]
            if rep:  # the first rep warms every arm
                samples[name].append(time.perf_counter() - started)
            assert isinstance(outcome, np.ndarray), outcome
    print(f"\nspeed settings, {args.arch} at {args.size} px, one cover per batch (1-adapter stack), "
          f"{args.steps} steps unless stated, median of {repeats} (interleaved):")  # fmt: skip
    print_against_default(samples, "default", "s per cover", 1.0, ".3f")
    print("| compile_unet=true | refused on a CPU (CUDA only) | - |")


SECTIONS: dict[str, Callable[[argparse.Namespace, StableDiffusionPipeline, Path], None]] = {
    "workload": run_workload,
    "switch": section_switch,
    "step": section_step,
    "coldload": section_cold_load,
    "rss": section_rss,
    "speedups": section_speedups,
    "settings": section_settings,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, choices=[64, 256, 512], default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--rank", type=int, help="adapter rank (default 8 tiny, 16 sd15)")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds the requests are split into"
    )
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--fuse-shared", action="store_true", help="Denoiser(fuse_shared_stacks=True) for (c)"
    )
    parser.add_argument("--arms", default="abcd", help="which workload arms to run, e.g. 'bcd'")
    parser.add_argument(
        "--ceiling-batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument("--step-batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--micro-repeats", type=int, default=20)
    parser.add_argument("--rss-cycles", type=int, default=1000)
    parser.add_argument("--sections", default="switch,step,coldload,rss,speedups,workload",
                        help=f"comma-separated, from {', '.join(SECTIONS)}")  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (2+ thrashes when other processes share the cores)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "covergen")
    args = parser.parse_args(argv)
    if args.stacks < 8:
        parser.error("--stacks must be at least 8")
    if args.rank is None:
        args.rank = 16 if args.arch == "sd15" else 8
    unknown = set(args.sections.split(",")) - SECTIONS.keys()
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = build_pipeline(args.arch, args.cache_dir)
    base.set_progress_bar_config(disable=True)
    print(f"# bench_engine {' '.join(sys.argv[1:])}")
    print(f"built the {args.arch} pipeline in {time.perf_counter() - started:.1f} s; "
          f"UNet {sum(p.numel() for p in base.unet.parameters()) / 1e6:.1f}M parameters; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for section in args.sections.split(","):
            SECTIONS[section](args, base, Path(tmp))
            gc.collect()  # drop the section's pipeline copies before the next one makes its own
            sys.stdout.flush()
    print(f"\ntotal {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
