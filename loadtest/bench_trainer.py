"""Benchmark of covergen's LoRA trainer against a plain diffusers + peft training loop.

One command runs the arms on the same data, config, batch size and seed, interleaved, each in a
fresh process (so each peak RSS starts from the same state), and prints a table (not collected by
pytest):

    .venv/bin/python loadtest/bench_trainer.py --arch tiny --size 64 --steps 40 --repeats 3
    .venv/bin/python loadtest/bench_trainer.py --arch sd15 --size 256 --steps 8 --batch-size 1 --repeats 1

Arms, each on a base built in memory in its own process:

  covergen       `trainer.train.train(config)` into an empty output_dir: latents cached up front
                 (the VAE runs here, once per image), frozen caption embeddings memoised,
                 TensorBoard logging, both export formats at the end.
  covergen-warm  the same run again into the cold run's output_dir: the latent cache on disk
                 (keyed by image hash, bucket and base) is reused, as on a second or resumed run.
  plain          the loop of diffusers' `train_text_to_image_lora.py`: `unet.add_adapter(LoraConfig)`,
                 a shuffled DataLoader of normalised pixels and token ids, the VAE encoding and the
                 text encoder run every step, DDPM noise at random timesteps, MSE on epsilon, AdamW,
                 grad clipping, `save_lora_weights` at the end.

Reported per arm (median over repeats): steady steps/s (the step-to-step interval after the first
step), whole-run steps/s (the whole call: setup, latent caching, steps and export; building the
base excluded, it is the same for all) and peak RSS growth during the run over the RSS after the
build (VmRSS sampled every 2 ms in a thread; torch's CPU allocations are invisible to tracemalloc).
The SD 1.5 arch is the real architecture with random weights, built in memory (~13 s, ~4.8 GiB)
and never saved; covergen's `train` gets it by replacing `trainer.train.load_base` for the run,
which is benchmark-only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python loadtest/bench_trainer.py` from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline  # noqa: E402
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import trainer.loop as loop_module  # noqa: E402
import trainer.train as train_module  # noqa: E402
from covergen.models import LoadedBase  # noqa: E402
from loadtest.bench_engine import build_pipeline  # noqa: E402
from trainer.config import TrainConfig, config_from_mapping  # noqa: E402

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
ARMS = ("covergen", "covergen-warm", "plain")


# --- memory -----------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss_growth(interval_s: float = 0.002) -> Iterator[list[int]]:
    """Yields a one-item list that holds, on exit, the peak RSS minus the RSS at entry."""
    start = rss_bytes()
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], rss_bytes())

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    out = [0]
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out[0] = max(peak[0], rss_bytes()) - start


# --- data -------------------------------------------------------------------------------------


def draw_dataset(folder: Path, count: int, size: int) -> Path:
    """`count` lantern scenes at `size` px with distinct captions in metadata.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        image = Image.new("RGB", (size, size), (18, 22, int(rng.integers(40, 70))))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(4, 9))):
            x, y, r = (int(v) for v in rng.integers(0, size, 3))
            draw.ellipse((x, y, x + r // 4 + 4, y + r // 3 + 6), fill=(220, int(rng.integers(20, 90)), 30))
        image.save(folder / f"img_{i:03d}.png")
        rows.append((f"img_{i:03d}.png", f"nightmarket style, red lanterns, stall {i}"))
    with (folder / "metadata.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return folder


# --- the arms ---------------------------------------------------------------------------------


@dataclass
class Run:
    arm: str
    wall_s: float  # the whole call: setup, steps, export
    step_starts: list[float] = field(default_factory=list)  # perf_counter at each step's loss
    peak_rss: int = 0
    cpu_s: float = 0.0  # the main thread's CPU time over the whole call
    step_cpu: list[float] = field(default_factory=list)  # its thread_time at each step's loss

    def end_to_end(self) -> float:
        return len(self.step_starts) / self.wall_s

    def steady(self) -> float:
        """Steps/s over full step cycles after the first (warm-up) step."""
        t = self.step_starts
        return (len(t) - 2) / (t[-1] - t[1]) if len(t) > 2 else float("nan")

    def steady_cpu(self) -> float:
        """Steps per CPU second of the training thread, after the first step (robust to load)."""
        t = self.step_cpu
        return (len(t) - 2) / (t[-1] - t[1]) if len(t) > 2 else float("nan")

    def end_to_end_cpu(self) -> float:
        return len(self.step_cpu) / self.cpu_s if self.cpu_s else float("nan")


def run_covergen(base: LoadedBase, config: TrainConfig) -> Run:
    """`trainer.train.train` on `base`, timing each step at its call to `denoising_loss`."""
    starts: list[float] = []
    cpu: list[float] = []
    real_loss = loop_module.denoising_loss
    real_load = train_module.load_base

    def timed_loss(*args: object, **kwargs: object) -> torch.Tensor:
        starts.append(time.perf_counter())
        cpu.append(time.thread_time())
        return real_loss(*args, **kwargs)  # type: ignore[arg-type]

    loop_module.denoising_loss = timed_loss  # type: ignore[assignment]
    train_module.load_base = lambda spec, *, device: base  # type: ignore[assignment]
    try:
        started, started_cpu = time.perf_counter(), time.thread_time()
        result = train_module.train(config, show_progress=False)
        wall, cpu_s = time.perf_counter() - started, time.thread_time() - started_cpu
    finally:
        loop_module.denoising_loss = real_loss
        train_module.load_base = real_load
    assert result.global_step == config.max_train_steps
    return Run("covergen", wall, starts, cpu_s=cpu_s, step_cpu=cpu)


def _pixels(path: Path, size: int) -> torch.Tensor:
    """The example's transforms: Resize, CenterCrop, ToTensor, Normalize([0.5], [0.5])."""
    image = Image.open(path).convert("RGB")
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32) / 255.0  # [h, w, 3]
    return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5  # [3, h, w] in [-1, 1]


def run_plain(pipe: StableDiffusionPipeline, config: TrainConfig) -> Run:
    """The diffusers example's training loop (no accelerate: on one CPU it only forwards)."""
    starts: list[float] = []
    cpu: list[float] = []
    started, started_cpu = time.perf_counter(), time.thread_time()
    torch.manual_seed(config.seed)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            init_lora_weights="gaussian",  # type: ignore[arg-type]
            target_modules=list(config.target_modules),
        )
    )
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=config.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-08)  # fmt: skip

    size = config.effective_resolution
    with (config.train_data_dir / "metadata.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    examples = [
        {
            "pixel_values": _pixels(config.train_data_dir / row["file"], size),
            "input_ids": tokenizer(
                row["caption"],
                max_length=tokenizer.model_max_length,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).input_ids[0],
        }  # fmt: skip
        for row in rows
    ]

    def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": torch.stack([b["pixel_values"] for b in batch]).contiguous().float(),
            "input_ids": torch.stack([b["input_ids"] for b in batch]),
        }

    loader = torch.utils.data.DataLoader(
        examples,
        shuffle=True,
        collate_fn=collate,
        batch_size=config.batch_size,
        num_workers=0,  # type: ignore[arg-type]
    )
    unet.train()
    step = 0
    while step < (config.max_train_steps or 0):
        for batch in loader:
            latents = vae.encode(batch["pixel_values"]).latent_dist.sample()  # [b, 4, h/8, w/8]
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,)).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]  # [b, 77, d]
            starts.append(time.perf_counter())
            cpu.append(time.thread_time())
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_layers, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step >= (config.max_train_steps or 0):
                break
    unet_lora_state_dict = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        save_directory=config.output_dir, unet_lora_layers=unet_lora_state_dict, safe_serialization=True
    )
    wall, cpu_s = time.perf_counter() - started, time.thread_time() - started_cpu
    return Run("plain", wall, starts, cpu_s=cpu_s, step_cpu=cpu)


# --- main -------------------------------------------------------------------------------------


def make_config(data: Path, out: Path, args: argparse.Namespace) -> TrainConfig:
    return config_from_mapping(
        {
            "train_data_dir": str(data),
            "base_model": "embedded",
            "output_dir": str(out),
            "resolution": args.size,
            "lora_rank": args.rank,
            "lora_alpha": args.rank,
            "target_modules": TARGETS,
            "batch_size": args.batch_size,
            "max_train_steps": args.steps,
            "learning_rate": 1e-4,
            "lr_scheduler": "constant",
            "validation_split": 0.0,
            "save_steps": 10**6,
            "seed": 42,
        },  # fmt: skip
        folder=data.parent,
        source="bench",
    )


def worker(args: argparse.Namespace) -> int:
    """One arm in this (fresh) process: build the base, run once, print one JSON line."""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with peak_rss_growth() as built:
        pipe = build_pipeline(args.arch, REPO / ".cache" / "covergen")
    build_s = time.perf_counter() - started
    config = make_config(args.data, args.out, args)
    if args.worker == "plain":
        arm: Callable[[], Run] = lambda: run_plain(pipe, config)  # noqa: E731
    else:  # covergen (cold: empty output_dir) or covergen-warm (the cold run's latent cache)
        base = LoadedBase(
            pipeline=pipe, content_id=f"bench-{args.arch}", source=f"bench:{args.arch}",
            default_size=args.size, device=torch.device("cpu"), dtype=torch.float32,
        )  # fmt: skip
        arm = lambda: run_covergen(base, config)  # noqa: E731
    with peak_rss_growth() as peak:
        run = arm()
    print(json.dumps({
        "arm": args.worker, "wall_s": run.wall_s, "step_starts": run.step_starts,
        "cpu_s": run.cpu_s, "step_cpu": run.step_cpu, "peak_rss": peak[0],
        "build_s": build_s, "build_rss": built[0],
    }))  # fmt: skip
    return 0


def spawn(arm: str, data: Path, out: Path, args: argparse.Namespace) -> Run:
    """Run one arm in a fresh interpreter, so each peak RSS starts from the same state."""
    command = [
        sys.executable, __file__, "--worker", arm, "--data", str(data), "--out", str(out),
        "--arch", args.arch, "--size", str(args.size), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--rank", str(args.rank), "--threads", str(args.threads),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{arm} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run = Run(arm, result["wall_s"], result["step_starts"], result["peak_rss"], result["cpu_s"],
              result["step_cpu"])  # fmt: skip
    print(f"  {arm:13s} {run.wall_s:7.2f} s ({run.cpu_s:.2f} CPU s), steady {run.steady():.3f} "
          f"steps/s ({run.steady_cpu():.3f} per CPU s), "
          f"peak +{run.peak_rss / 2**20:.0f} MiB (built in {result['build_s']:.1f} s, "
          f"+{result['build_rss'] / 2**30:.2f} GiB)", flush=True)  # fmt: skip
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--size", type=int, help="training resolution (default 64 tiny, 256 sd15)")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 40 tiny, 8 sd15)")
    parser.add_argument("--images", type=int, help="training images (default 32 tiny, 8 sd15)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per arm")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tiny = args.arch == "tiny"
    args.size = args.size or (64 if tiny else 256)
    args.steps = args.steps or (40 if tiny else 8)
    args.images = args.images or (32 if tiny else 8)
    if args.worker:
        return worker(args)

    print(f"{args.arch}: {args.images} images at {args.size} px, batch {args.batch_size}, rank "
          f"{args.rank}, {args.steps} steps, {args.threads} threads, each arm in a fresh process")  # fmt: skip
    runs: dict[str, list[Run]] = {name: [] for name in ARMS}
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        data = draw_dataset(Path(tmp) / "data", args.images, args.size)
        for repeat in range(args.repeats):
            order = ["covergen", "plain"] if repeat % 2 == 0 else ["plain", "covergen"]
            for name in order:
                out = Path(tmp) / f"{name}-{repeat}"  # a fresh output_dir: no latent cache yet
                runs[name].append(spawn(name, data, out, args))
                if name == "covergen":  # again into the same output_dir: the cache is reused
                    runs["covergen-warm"].append(spawn("covergen-warm", data, out, args))

    def median(name: str, what: Callable[[Run], float]) -> float:
        return statistics.median(what(r) for r in runs[name])

    table = [
        ("steady steps/s", Run.steady),
        ("whole-run steps/s", Run.end_to_end),
        ("steady steps/CPU-s", Run.steady_cpu),
        ("whole-run steps/CPU-s", Run.end_to_end_cpu),
        ("peak RSS growth MiB", lambda r: r.peak_rss / 2**20),
    ]
    print()
    print(
        f"{'':22s}" + "".join(f"{name:>15s}" for name in ARMS) + f"{'covergen/plain':>16s}{'warm/plain':>12s}"
    )
    for label, what in table:
        values = {name: median(name, what) for name in ARMS}
        print(f"{label:22s}" + "".join(f"{values[name]:15.3f}" for name in ARMS)
              + f"{values['covergen'] / values['plain']:15.2f}x{values['covergen-warm'] / values['plain']:11.2f}x")  # fmt: skip
    print("target: covergen/plain >= 1.5x steps/s at <= 1x peak RSS growth")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
