"""Measure how far one cover moves with its batch: the spread tests/test_engine.py's tolerances
come from.

For each way of applying a stack (LoRA hooks, fused copies), each guidance scale and each batch
size 1-8, a probe job runs alone and inside a batch (mates with other stacks, seeds and guidance,
or mates sharing its stack, which takes the fused path); the largest latent and pixel difference
is printed per guidance scale, and the same against diffusers' own LoRA path and hand-fused
weights. Other CPUs' kernels can be imitated on this one:

    .venv/bin/python loadtest/batch_spread.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2 .venv/bin/python ...
    ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 DNNL_MAX_CPU_ISA=SSE41 ...

Not part of `make test` (~1-2 min here).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

from covergen.adapters.files import read_lora_file
from covergen.engine.denoise import Denoiser
from covergen.models import load_base_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_engine as te  # the test's own adapters, jobs and references

REPO = Path(__file__).resolve().parents[1]
GUIDANCE = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 9.0, 10.0)
MATE_GUIDANCE = (5.0, 7.5, 3.0, 1.0, 9.0, 6.0, 10.0)


def differences(got: te.Covers, want: te.Covers, got_index: int) -> tuple[float, int]:
    latent = float((got.latents[got_index] - want.latents[0]).abs().max())
    return latent, te.pixel_diff(got.images[got_index], want.images[0])


def batch_spread(denoiser: Denoiser, weights: dict, sizes: range) -> dict[float, tuple[float, int]]:
    """Per guidance: the largest (latent, pixel) difference of the probe over sizes and mates."""
    a, b, conv, text = weights["a"], weights["b"], weights["conv"], weights["text"]
    probe_stack = ((a, 0.8),)
    other_stacks = [((b, 1.0),), (), ((a, 0.7), (b, 0.4)), ((conv, 1.0), (text, 0.9)), probe_stack]
    worst: dict[float, tuple[float, int]] = {}
    for g in GUIDANCE:
        probe = te.job(100 + int(g * 2), probe_stack, guidance=g)
        alone = te.run(denoiser, [probe])
        latent_max, pixel_max = 0.0, 0
        for n in sizes:
            for shared in (False, True):
                mates = [
                    te.job(
                        200 + k, probe_stack if shared else other_stacks[k % 5], guidance=MATE_GUIDANCE[k % 7]
                    )
                    for k in range(n - 1)
                ]
                at = (n * 3 + int(shared)) % n  # the probe's place moves through the batch
                batch = te.run(denoiser, [*mates[:at], probe, *mates[at:]])
                latent, pixel = differences(batch, alone, at)
                latent_max, pixel_max = max(latent_max, latent), max(pixel_max, pixel)
        worst[g] = (latent_max, pixel_max)
    return worst


def reference_spread(
    pristine, denoiser: Denoiser, weights: dict, files: dict, specs: dict
) -> dict[str, tuple]:
    """The test cases that compare against diffusers' LoRA path and against hand-fused weights."""
    out: dict[str, tuple] = {}
    reference = te.DiffusersReference(pristine, {n: p for n, p in files.items() if n != "conv"})
    for names, ws in (
        (["a"], [0.8]),
        (["a-kohya"], [0.8]),
        (["a", "b"], [0.7, 0.4]),
        (["text"], [0.9]),
        (["text-kohya", "b"], [1.1, -0.5]),
    ):
        cover = te.job(11, tuple((weights[n], w) for n, w in zip(names, ws, strict=True)), guidance=6.0)
        theirs = reference.cover(names, ws, cover, denoiser.initial_latents(cover))
        out["diffusers " + "+".join(names)] = differences(te.run(denoiser, [cover]), theirs, 0)
    for stack_id, stack in te.HAND_FUSED_STACKS.items():
        want = te.run(
            Denoiser(te.fused_copy(pristine, [(specs[n], w) for n, w in stack])), [te.job(21, guidance=4.0)]
        )
        cover = te.job(21, tuple((weights[n], w) for n, w in stack), guidance=4.0)
        mixed = te.run(denoiser, [te.job(22, ((weights["b"], 1.0),)), cover, te.job(23)])
        out[f"hand-fused {stack_id} alone"] = differences(te.run(denoiser, [cover]), want, 0)
        out[f"hand-fused {stack_id} mixed"] = differences(mixed, want, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the test suite uses 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    capability = os.environ.get("ATEN_CPU_CAPABILITY", "auto")
    print(
        f"cpu capability {torch.backends.cpu.get_cpu_capability()} (ATEN_CPU_CAPABILITY={capability}), "
        f"threads {args.threads}"
    )
    base = load_base_model("embedded", cache_dir=REPO / ".cache" / "covergen", device="cpu", dtype="fp32")
    pristine = copy.deepcopy(base.pipeline)
    denoisers = {
        "hooks": Denoiser(copy.deepcopy(pristine)),
        "fused": Denoiser(copy.deepcopy(pristine), fuse_shared_stacks=True),
    }
    specs = te.specs.__wrapped__(pristine)  # the test fixture's factors
    folder = REPO / ".cache" / "batch-spread"
    folder.mkdir(parents=True, exist_ok=True)
    files = {n: te.write_diffusers(s, folder / f"{n}.safetensors") for n, s in specs.items()}
    files["a-kohya"] = te.write_kohya(specs["a"], folder / "a-kohya.safetensors")
    files["text-kohya"] = te.write_kohya(specs["text"], folder / "text-kohya.safetensors")
    names = denoisers["hooks"].module_names()
    weights = {n: read_lora_file(p, n, names) for n, p in files.items()}
    for mode, denoiser in denoisers.items():
        print(
            f"\n{mode}: probe alone vs in batches of 1-{args.max_batch} (max |latent diff|, max pixel levels)"
        )
        for g, (latent, pixel) in batch_spread(denoiser, weights, range(1, args.max_batch + 1)).items():
            print(
                f"  guidance {g:4.1f}: latent {latent:.2e} ({latent / max(g, 1.0):.2e} per unit guidance), "
                f"pixels {pixel}"
            )
        for case, (latent, pixel) in reference_spread(pristine, denoiser, weights, files, specs).items():
            print(f"  {case:42s} latent {latent:.2e}, pixels {pixel}")


if __name__ == "__main__":
    main()
