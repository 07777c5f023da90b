"""The adapter-aware batching engine, proved against references built from real parts.

A cover must not depend on its batch-mates: a job gives the same image alone and in a mixed batch
(other stacks, seeds, guidance), through `Engine` batching, and the same as diffusers' own LoRA
path (`load_lora_weights` + `set_adapters`) or a hand-fused copy of the model. Weight 0 is no
adapter, stacks add up, and nothing is left behind in the model after a batch. Every check runs
on both ways a shared stack can be applied: forward hooks and fused weight copies.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from safetensors.torch import save_file
from waiting import eventually

from covergen.adapters.files import LoraWeights, read_lora_file
from covergen.engine.batcher import Engine, EngineObserver
from covergen.engine.denoise import CoverJob, Denoiser
from covergen.engine.lora_layers import StackItem
from covergen.errors import DeadlineExceeded

STEPS = 2
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# How far one cover may move with its batch-mates or LoRA path: float rounding only, which
# differs between CPUs of one kind. Measured by `loadtest/batch_spread.py` (a probe alone vs in
# batches of 1-8 with mixed or shared stacks, guidance 1-10, hooks and fused; the diffusers and
# hand-fused cases below), with this CPU's AVX512 kernels and with AVX2 forced (ATEN_CPU_CAPABILITY):
#   latents: worst 5.2e-3 (guidance 7.5); at most 1.0e-3 per unit of guidance (guidance 3);
#            another machine of this kind failed the old 1e-3 bound with 2.1e-3 at guidance 7.5.
#            diffusers' LoRA path and hand-fused weights: <= 6e-5. Latent std is ~2.
#   pixels:  1 level here, 2 on that other machine.
# CFG multiplies rounding in the two halves by the guidance, so the latent bound scales with it:
# 4x the worst per-unit spread. It still fails a 1% adapter-weight error (latents move 6e-3 at
# guidance 1, 5e-2 at 5), which the pixel bound alone would pass (1-3 levels); a dropped
# adapter moves pixels by 20-50 levels.
MAX_PIXEL_DIFF = 3  # uint8 levels
LATENT_ATOL_PER_GUIDANCE = 4e-3

# module path -> (down [r, in(, kh, kw)], up [out, r(, 1, 1)])
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]


# --- adapters written from known factors ------------------------------------------------------


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter's factors per target and its alpha: the truth every reference is built from."""

    factors: dict[str, Factors]  # "unet" / "text_encoder" -> factors
    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def random_factors(
    model: torch.nn.Module, wanted: Callable[[str, torch.nn.Module], bool], rank: int, seed: int, gain: float
) -> Factors:
    generator = torch.Generator("cpu").manual_seed(seed)
    factors: Factors = {}
    for name, module in model.named_modules():
        if not wanted(name, module):
            continue
        if isinstance(module, torch.nn.Conv2d):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=generator)
            up = torch.randn(module.out_channels, rank, 1, 1, generator=generator)
        else:
            fan_in = module.in_features
            down = torch.randn(rank, module.in_features, generator=generator)
            up = torch.randn(module.out_features, rank, generator=generator)
        factors[name] = ((down / fan_in**0.5).contiguous(), (up * gain).contiguous())
    return factors


def write_diffusers(spec: AdapterSpec, path: Path) -> Path:
    """peft keys plus the `lora_adapter_metadata` header diffusers' `save_lora_weights` writes."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, object] = {}
    for target, factors in spec.factors.items():
        for module, (down, up) in factors.items():
            tensors[f"{target}.{module}.lora_A.weight"] = down
            tensors[f"{target}.{module}.lora_B.weight"] = up
        metadata |= {
            f"{target}.r": spec.rank,
            f"{target}.lora_alpha": spec.alpha,
            f"{target}.target_modules": sorted({m.rsplit(".", 1)[-1] for m in factors}),
        }
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(metadata)})
    return path


def write_kohya(spec: AdapterSpec, path: Path, text_prefix: str = "lora_te_") -> Path:
    """The same factors as kohya / A1111 keys: `lora_unet_<module_with_underscores>.lora_down...`.

    kohya names text-encoder modules `lora_te_text_model_encoder_...`, from transformers' old
    module paths; transformers >= 5.6 dropped `text_model.`, so `text_prefix="lora_te_text_model_"`
    writes what real files hold, the default what today's module paths give."""
    prefixes = {"unet": "lora_unet_", "text_encoder": text_prefix}
    tensors: dict[str, torch.Tensor] = {}
    for target, factors in spec.factors.items():
        for module, (down, up) in factors.items():
            stem = prefixes[target] + module.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = down
            tensors[f"{stem}.lora_up.weight"] = up
            tensors[f"{stem}.alpha"] = torch.tensor(spec.alpha)
    save_file(tensors, str(path))
    return path


def fused_copy(
    pipeline: StableDiffusionPipeline, stack: Sequence[tuple[AdapterSpec, float]]
) -> StableDiffusionPipeline:
    """A copy of `pipeline` with W + sum_i w_i s_i B_i A_i written into its weights, by hand."""
    fused = copy.deepcopy(pipeline)
    models = {"unet": fused.unet, "text_encoder": fused.text_encoder}
    with torch.no_grad():
        for spec, weight in stack:
            for target, factors in spec.factors.items():
                modules = dict(models[target].named_modules())
                for name, (down, up) in factors.items():
                    w = modules[name].weight
                    delta = up.flatten(1) @ down.flatten(1)  # [out, in * kh * kw]
                    w += (weight * spec.scale) * delta.view_as(w)
    return fused


# --- running covers ---------------------------------------------------------------------------


@dataclass
class Covers:
    images: list[np.ndarray]  # each [64, 64, 3] uint8
    latents: torch.Tensor  # [n, 4, 8, 8]: what the VAE decoded
    guidance: list[float]  # each cover's guidance scale: what its latent tolerance scales with


@contextmanager
def tap_latents(pipeline: StableDiffusionPipeline) -> Iterator[list[torch.Tensor]]:
    """Record the latents every VAE decode receives (post_quant_conv sees latents / scaling)."""
    seen: list[torch.Tensor] = []
    scaling = pipeline.vae.config.scaling_factor

    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen.append(inputs[0].detach().clone() * scaling)

    handle = pipeline.vae.post_quant_conv.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def run(denoiser: Denoiser, jobs: Sequence[CoverJob]) -> Covers:
    with tap_latents(denoiser.pipeline) as seen:
        outcomes = denoiser.run(jobs)
    images = []
    for outcome in outcomes:
        assert isinstance(outcome, np.ndarray), outcome
        images.append(outcome)
    return Covers(images, torch.cat(seen), [j.guidance_scale for j in jobs])


def job(
    seed: int,
    stack: tuple[StackItem, ...] = (),
    *,
    guidance: float = 5.0,
    prompt: str = "a red lantern street at night",
    steps: int = STEPS,
    deadline: float | None = None,
) -> CoverJob:
    return CoverJob(
        prompt=prompt,
        negative_prompt="blurry, watermark",
        seed=seed,
        width=64,
        height=64,
        steps=steps,
        guidance_scale=guidance,
        stack=stack,
        deadline=deadline,
    )


def pixel_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def assert_same_cover(got: Covers, want: Covers, got_index: int = 0, want_index: int = 0) -> None:
    guidance = max(got.guidance[got_index], want.guidance[want_index], 1.0)
    assert pixel_diff(got.images[got_index], want.images[want_index]) <= MAX_PIXEL_DIFF
    torch.testing.assert_close(
        got.latents[got_index], want.latents[want_index], rtol=0.0, atol=LATENT_ATOL_PER_GUIDANCE * guidance
    )


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(embedded_base) -> StableDiffusionPipeline:
    """A private copy of the tiny pipeline that no test hooks or loads adapters into."""
    return copy.deepcopy(embedded_base.pipeline)


@pytest.fixture(scope="module")
def denoisers(pristine: StableDiffusionPipeline) -> dict[str, Denoiser]:
    """One denoiser per way of applying a shared stack, each over its own pipeline copy."""
    return {
        "hooks": Denoiser(copy.deepcopy(pristine)),
        "fused": Denoiser(copy.deepcopy(pristine), fuse_shared_stacks=True),
    }


@pytest.fixture(params=["hooks", "fused"])
def denoiser(request: pytest.FixtureRequest, denoisers: dict[str, Denoiser]) -> Denoiser:
    """Both modes, for the tests whose jobs run alone (where the modes differ)."""
    return denoisers[request.param]


@pytest.fixture
def hooks_denoiser(denoisers: dict[str, Denoiser]) -> Denoiser:
    return denoisers["hooks"]


@pytest.fixture(scope="module")
def specs(pristine: StableDiffusionPipeline) -> dict[str, AdapterSpec]:
    unet, text = pristine.unet, pristine.text_encoder
    linear = torch.nn.Linear
    conv_targets = ("proj_in", "proj_out", "resnets.0.conv1", "conv_shortcut", "downsamplers.0.conv")
    return {
        # attention only, alpha != rank so the scale matters
        "a": AdapterSpec(
            {
                "unet": random_factors(
                    unet, lambda n, m: isinstance(m, linear) and n.endswith(ATTENTION), 4, 1, 0.6
                )
            },
            rank=4,
            alpha=2.0,
        ),
        # feed-forward and the time-embedding projection (a 2-D input) as well
        "b": AdapterSpec(
            {
                "unet": random_factors(
                    unet,
                    lambda n, m: isinstance(m, linear) and n.endswith(("to_k", "ff.net.2", "time_emb_proj")),
                    8,
                    2,
                    0.5,
                )
            },
            rank=8,
            alpha=8.0,
        ),
        # text encoder and cross-attention
        "text": AdapterSpec(
            {
                "text_encoder": random_factors(
                    text,
                    lambda n, m: isinstance(m, linear) and n.endswith(("q_proj", "v_proj", "out_proj")),
                    4,
                    3,
                    1.5,
                ),
                "unet": random_factors(
                    unet,
                    lambda n, m: isinstance(m, linear) and n.endswith(("attn2.to_k", "attn2.to_v")),
                    4,
                    4,
                    0.6,
                ),
            },
            rank=4,
            alpha=4.0,
        ),
        # 1x1 and 3x3 convolutions, one with stride 2
        "conv": AdapterSpec(
            {
                "unet": random_factors(
                    unet, lambda n, m: isinstance(m, torch.nn.Conv2d) and n.endswith(conv_targets), 4, 5, 0.3
                )
            },
            rank=4,
            alpha=4.0,
        ),
    }


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory: pytest.TempPathFactory, specs: dict[str, AdapterSpec]) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("engine-adapters")
    files = {name: write_diffusers(spec, folder / f"{name}.safetensors") for name, spec in specs.items()}
    files["a-kohya"] = write_kohya(specs["a"], folder / "a-kohya.safetensors")
    files["text-kohya"] = write_kohya(specs["text"], folder / "text-kohya.safetensors")
    return files


@pytest.fixture(scope="module")
def weights(adapter_files: dict[str, Path], denoisers: dict[str, Denoiser]) -> dict[str, LoraWeights]:
    module_names = denoisers["hooks"].module_names()
    return {name: read_lora_file(path, name, module_names) for name, path in adapter_files.items()}


# --- a cover does not depend on its batch-mates -----------------------------------------------


def test_job_is_the_same_alone_and_in_a_mixed_batch(
    denoiser: Denoiser, weights: dict[str, LoraWeights]
) -> None:
    a, b, conv, text = weights["a"], weights["b"], weights["conv"], weights["text"]
    jobs = [
        job(3, ((a, 0.8),)),
        job(4, (), guidance=7.5),
        job(5, ((a, 0.7), (b, 0.4)), guidance=3.0),
        job(6, ((b, 1.2),), prompt="quiet harbour, fishing boats"),
        job(7, ((a, 0.8),)),  # the first job's stack again, another seed
        job(8, ((conv, 1.0), (text, 0.9)), guidance=6.0),
    ]
    batch = run(denoiser, jobs)
    for i, one in enumerate(jobs):
        alone = run(denoiser, [one])
        assert_same_cover(batch, alone, got_index=i)
    assert pixel_diff(batch.images[0], batch.images[4]) > 10, "seeds must matter"
    assert pixel_diff(run(denoiser, [job(3)]).images[0], batch.images[0]) > 10, "the adapter must matter"


# --- the same as diffusers' own LoRA path -----------------------------------------------------


class DiffusersReference:
    """diffusers' own LoRA path on a copy of the pipeline: every file loaded once with
    `load_lora_weights(adapter_name=...)`, `set_adapters` per cover. Covers are memoised, so
    both denoiser modes compare against one reference run."""

    def __init__(self, pipeline: StableDiffusionPipeline, files: dict[str, Path]) -> None:
        self.pipeline = copy.deepcopy(pipeline)
        self.pipeline.set_progress_bar_config(disable=True)
        for name, path in files.items():
            self.pipeline.load_lora_weights(str(path), adapter_name=name.replace("-", "_"))
        self._covers: dict[tuple, Covers] = {}

    def cover(
        self, names: Sequence[str], weights: Sequence[float], cover: CoverJob, latents: torch.Tensor
    ) -> Covers:
        key = (tuple(names), tuple(weights), cover.seed, cover.guidance_scale)
        if key not in self._covers:
            self.pipeline.set_adapters([n.replace("-", "_") for n in names], list(weights))
            with tap_latents(self.pipeline) as seen:
                pixels = self.pipeline(
                    prompt=cover.prompt,
                    negative_prompt=cover.negative_prompt,
                    latents=latents,
                    guidance_scale=cover.guidance_scale,
                    num_inference_steps=cover.steps,
                    output_type="np",
                ).images
            images = [(image * 255).round().astype("uint8") for image in pixels]
            self._covers[key] = Covers(images, torch.cat(seen), [cover.guidance_scale])
        return self._covers[key]


@pytest.fixture(scope="module")
def diffusers_reference(
    pristine: StableDiffusionPipeline, adapter_files: dict[str, Path]
) -> DiffusersReference:
    # diffusers cannot load the conv adapter in this layout (see the hand-fused tests below)
    return DiffusersReference(pristine, {n: p for n, p in adapter_files.items() if n != "conv"})


@pytest.mark.parametrize(
    ("names", "stack_weights"),
    [
        pytest.param(["a"], [0.8], id="diffusers-file"),
        pytest.param(["a-kohya"], [0.8], id="kohya-file"),
        pytest.param(["a", "b"], [0.7, 0.4], id="two-adapter-stack"),
        pytest.param(["text"], [0.9], id="text-encoder"),
        pytest.param(["text-kohya", "b"], [1.1, -0.5], id="kohya-text-encoder-and-negative-weight"),
    ],
)
def test_matches_diffusers_set_adapters(
    diffusers_reference: DiffusersReference,
    denoiser: Denoiser,
    weights: dict[str, LoraWeights],
    names: list[str],
    stack_weights: list[float],
) -> None:
    cover = job(11, tuple((weights[n], w) for n, w in zip(names, stack_weights, strict=True)), guidance=6.0)
    theirs = diffusers_reference.cover(names, stack_weights, cover, denoiser.initial_latents(cover))
    assert_same_cover(run(denoiser, [cover]), theirs)
    assert pixel_diff(run(denoiser, [job(11, guidance=6.0)]).images[0], theirs.images[0]) > 10


def test_a_new_weight_for_a_cached_stack_takes_effect(
    diffusers_reference: DiffusersReference, denoiser: Denoiser, weights: dict[str, LoraWeights]
) -> None:
    run(denoiser, [job(12, ((weights["a"], 0.8),))])  # caches the stack at 0.8
    cover = job(12, ((weights["a"], 0.3),))
    theirs = diffusers_reference.cover(["a"], [0.3], cover, denoiser.initial_latents(cover))
    assert_same_cover(run(denoiser, [cover]), theirs)
    both = run(denoiser, [job(12, ((weights["a"], 0.8),)), cover])  # one adapter at two weights
    assert_same_cover(both, theirs, got_index=1)


# --- convolutions and stacks against hand-fused weights ---------------------------------------

HAND_FUSED_STACKS = {
    "conv": [("conv", 1.0)],
    "two-adapters": [("a", 0.7), ("b", 0.4)],
    "linear-conv-and-text-encoder": [("a", 0.5), ("conv", 0.8), ("text", 1.0)],
}


@pytest.fixture(scope="module")
def hand_fused_covers(pristine: StableDiffusionPipeline, specs: dict[str, AdapterSpec]) -> dict[str, Covers]:
    """Per stack, the cover of job 21 from a copy with the stack's deltas written into its weights."""
    covers = {}
    for stack_id, stack in HAND_FUSED_STACKS.items():
        reference = Denoiser(fused_copy(pristine, [(specs[name], w) for name, w in stack]))
        covers[stack_id] = run(reference, [job(21, guidance=4.0)])
    return covers


@pytest.mark.parametrize("stack_id", HAND_FUSED_STACKS)
def test_stack_equals_its_deltas_fused_by_hand(
    denoiser: Denoiser,
    weights: dict[str, LoraWeights],
    hand_fused_covers: dict[str, Covers],
    stack_id: str,
) -> None:
    want = hand_fused_covers[stack_id]
    cover = job(21, tuple((weights[name], w) for name, w in HAND_FUSED_STACKS[stack_id]), guidance=4.0)
    alone = run(denoiser, [cover])
    # in a mixed batch the stack goes through the per-sample (padded bmm / grouped conv) path
    mixed = run(denoiser, [job(22, ((weights["b"], 1.0),)), cover, job(23)])
    assert_same_cover(alone, want)
    assert_same_cover(mixed, want, got_index=1)
    assert pixel_diff(run(denoiser, [job(21, guidance=4.0)]).images[0], want.images[0]) > 10


def test_weight_zero_is_exactly_no_adapter(hooks_denoiser: Denoiser, weights: dict[str, LoraWeights]) -> None:
    denoiser = hooks_denoiser
    a, b = weights["a"], weights["b"]
    none = run(denoiser, [job(31)])
    zero = run(denoiser, [job(31, ((a, 0.0),))])
    np.testing.assert_array_equal(zero.images[0], none.images[0])
    assert torch.equal(zero.latents, none.latents)
    only_b = run(denoiser, [job(32, ((b, 0.6),))])
    zero_a_then_b = run(denoiser, [job(32, ((a, 0.0), (b, 0.6)))])
    np.testing.assert_array_equal(zero_a_then_b.images[0], only_b.images[0])


def test_kohya_file_reads_as_the_same_adapter(
    weights: dict[str, LoraWeights], hooks_denoiser: Denoiser
) -> None:
    denoiser = hooks_denoiser
    for plain, kohya in (("a", "a-kohya"), ("text", "text-kohya")):
        want, got = weights[plain].factors, weights[kohya].factors
        assert want.keys() == got.keys()
        for target in want:
            assert want[target].keys() == got[target].keys()
            for module, factor in want[target].items():
                assert torch.equal(factor.down, got[target][module].down)
                assert torch.equal(factor.up, got[target][module].up)
                assert factor.scale == got[target][module].scale
    from_plain = run(denoiser, [job(41, ((weights["text"], 0.9),))])
    from_kohya = run(denoiser, [job(41, ((weights["text-kohya"], 0.9),))])
    np.testing.assert_array_equal(from_kohya.images[0], from_plain.images[0])


def test_real_kohya_text_encoder_names_are_read(
    tmp_path: Path, specs: dict[str, AdapterSpec], weights: dict[str, LoraWeights], hooks_denoiser: Denoiser
) -> None:
    path = write_kohya(specs["text"], tmp_path / "real-kohya.safetensors", text_prefix="lora_te_text_model_")
    real = read_lora_file(path, "real", hooks_denoiser.module_names())
    assert real.factors["text_encoder"].keys() == weights["text"].factors["text_encoder"].keys()


# --- nothing leaks between batches ------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_plain_covers(pristine: StableDiffusionPipeline) -> Covers:
    """Two adapter-free covers from a denoiser that has never seen an adapter."""
    return run(Denoiser(copy.deepcopy(pristine)), [job(53), job(54, guidance=8.0)])


@pytest.mark.parametrize(
    "previous",
    [
        pytest.param(lambda w: [job(51, ((w["a"], 0.8), (w["text"], 1.0)))], id="shared-stack"),
        pytest.param(lambda w: [job(51, ((w["conv"], 1.0),)), job(52, ((w["a"], 1.0),))], id="mixed-batch"),
        pytest.param(
            lambda w: [job(51, ((w["b"], 1.0),), deadline=time.monotonic() - 1.0)],
            id="batch-that-ended-early",
        ),
    ],
)
def test_adapters_do_not_leak_into_the_next_batch(
    fresh_plain_covers: Covers,
    denoiser: Denoiser,
    weights: dict[str, LoraWeights],
    previous: Callable[[dict[str, LoraWeights]], list[CoverJob]],
) -> None:
    fresh = fresh_plain_covers
    denoiser.run(previous(weights))
    after = run(denoiser, [job(53), job(54, guidance=8.0)])
    for i in range(2):
        np.testing.assert_array_equal(after.images[i], fresh.images[i])
    assert torch.equal(after.latents, fresh.latents)


def test_a_job_past_its_deadline_is_refused(
    hooks_denoiser: Denoiser, weights: dict[str, LoraWeights]
) -> None:
    outcomes = hooks_denoiser.run([job(61, ((weights["a"], 1.0),), deadline=time.monotonic() - 1.0)])
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], DeadlineExceeded)


# --- Engine: concurrent requests are batched and each equals its solo run ---------------------


class BatchLog(EngineObserver):
    """Records each batch size the engine ran (called on the worker thread)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch_ran(self, size: int, seconds: float) -> None:
        self.sizes.append(size)


@contextmanager
def running_engine(denoiser: Denoiser, **options: float) -> Iterator[tuple[Engine, BatchLog]]:
    log = BatchLog()
    engine = Engine(denoiser, observer=log, **options)  # type: ignore[arg-type]
    engine.start()
    try:
        yield engine, log
    finally:
        engine.close(timeout=30)


async def run_queued(denoiser: Denoiser, jobs: Sequence[CoverJob], max_batch: int) -> tuple[list[np.ndarray], BatchLog]:
    """Every job queued before the worker starts (and no gathering window): what the engine
    batches then depends only on batch keys and `max_batch`, never on this machine's speed."""
    log = BatchLog()
    engine = Engine(denoiser, observer=log, max_batch=max_batch, max_wait_ms=0.0)
    submitted = [asyncio.ensure_future(engine.submit(j)) for j in jobs]
    await eventually(lambda: engine.depth == len(jobs), "every job is queued")
    engine.start()
    try:
        return list(await asyncio.gather(*submitted)), log
    finally:
        engine.close(timeout=30)


async def test_engine_batches_concurrent_jobs_and_each_equals_its_solo_run(
    hooks_denoiser: Denoiser, weights: dict[str, LoraWeights]
) -> None:
    denoiser = hooks_denoiser
    a, b, conv = weights["a"], weights["b"], weights["conv"]
    jobs = [
        job(71, ((a, 0.8),)),
        job(72, ((b, 1.0),), guidance=7.0),
        job(73, ((a, 0.5), (conv, 0.9))),
        job(74, (), prompt="mountain village, morning fog"),
    ]
    solo = [run(denoiser, [j]).images[0] for j in jobs]
    images, log = await run_queued(denoiser, jobs, max_batch=4)
    assert log.sizes == [4]
    for got, want in zip(images, solo, strict=True):
        assert pixel_diff(got, want) <= MAX_PIXEL_DIFF


async def test_engine_batches_only_jobs_with_the_same_size_and_steps(
    hooks_denoiser: Denoiser, weights: dict[str, LoraWeights]
) -> None:
    denoiser = hooks_denoiser
    jobs = [
        job(81, ((weights["a"], 1.0),)),
        job(82, steps=STEPS + 1),
        job(83),
        job(84, ((weights["b"], 1.0),), steps=STEPS + 1),
    ]
    solo = [run(denoiser, [j]).images[0] for j in jobs]
    images, log = await run_queued(denoiser, jobs, max_batch=8)
    assert log.sizes == [2, 2]  # (81, 83) at STEPS, then (82, 84) at STEPS + 1
    for got, want in zip(images, solo, strict=True):
        assert pixel_diff(got, want) <= MAX_PIXEL_DIFF


async def test_worker_tasks_run_outside_the_engine_lock(hooks_denoiser: Denoiser) -> None:
    """A worker task (e.g. forgetting an evicted adapter) may block; submit and depth must not."""
    lock_free: list[bool] = []

    def probe() -> None:  # another thread tries the engine's lock while the task runs
        got = engine._cond.acquire(blocking=False)
        if got:
            engine._cond.release()
        lock_free.append(got)

    def task() -> None:
        other = threading.Thread(target=probe)
        other.start()
        other.join()

    with running_engine(hooks_denoiser) as (engine, log):
        engine.run_on_worker(task)
        await engine.submit(job(91))  # tasks run before the next batch: this one ran before the job
    assert lock_free == [True]
    assert log.sizes == [1]
