"""The speed settings keep covers the same and independent of their batch-mates.

Each setting is applied through `apply_speedups` to a copy of the tiny embedded pipeline and
compared with the default engine: attention processors and channels_last (with conv adapters on
both the shared and the per-sample grouped-conv path) give the same cover; a tiny VAE built from
the real `AutoencoderTiny` class loads from a folder and decodes, bad folders fail naming the
setting; LCM few-step mode puts a real LoRA file under every stack and a job is the same alone
and in a mixed batch; compiling the UNet is refused on a CPU.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_lcm import LCMScheduler
from safetensors.torch import save_file

from covergen.adapters.files import LoraWeights, read_lora_file
from covergen.engine.denoise import CoverJob, Denoiser
from covergen.engine.lora_layers import StackItem
from covergen.engine.speedups import TunedEngine, apply_speedups
from covergen.errors import ConfigError
from covergen.settings import Settings
from trainer.embedded.demo_adapters import DEMO_RANK, demo_state_dict

MAX_PIXEL_DIFF = 2  # uint8 levels, as in test_engine
CONV_TARGETS = ("resnets.0.conv1", "conv_shortcut", "downsamplers.0.conv", "proj_in")


def job(seed: int, stack: tuple[StackItem, ...] = (), *, guidance: float = 5.0, steps: int = 2,
        width: int = 64, height: int = 64) -> CoverJob:  # fmt: skip
    return CoverJob(
        "a red lantern street at night", "blurry, watermark", seed, width, height, steps, guidance, stack
    )


def images(denoiser: Denoiser, jobs: list[CoverJob]) -> list[np.ndarray]:
    outcomes = denoiser.run(jobs)
    for outcome in outcomes:
        assert isinstance(outcome, np.ndarray), outcome
    return outcomes  # type: ignore[return-value]


def pixel_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def write_lora(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """A diffusers-layout file with the header `ensure_demo_adapters` writes (alpha = rank)."""
    metadata = {"lora_adapter_metadata": json.dumps({"unet.r": DEMO_RANK, "unet.lora_alpha": DEMO_RANK})}
    save_file(tensors, str(path), metadata=metadata)
    return path


def conv_state_dict(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on 1x1 and 3x3 convolutions (one with stride 2)."""
    generator = torch.Generator("cpu").manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Conv2d) and name.endswith(CONV_TARGETS):
            fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            down = torch.randn(DEMO_RANK, module.in_channels, *module.kernel_size, generator=generator)
            up = torch.randn(module.out_channels, DEMO_RANK, 1, 1, generator=generator) * 0.3
            tensors[f"unet.{name}.lora_A.weight"] = (down / fan_in**0.5).contiguous()
            tensors[f"unet.{name}.lora_B.weight"] = up.contiguous()
    return tensors


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(embedded_base) -> StableDiffusionPipeline:
    return copy.deepcopy(embedded_base.pipeline)


Tune = Callable[..., TunedEngine]


@pytest.fixture(scope="module")
def tune(pristine: StableDiffusionPipeline) -> Tune:
    """`tune(**settings)`: a fresh copy of the tiny pipeline shaped by those settings."""

    def build(**settings: object) -> TunedEngine:
        return apply_speedups(copy.deepcopy(pristine), Settings(**settings))  # type: ignore[arg-type]

    return build


@pytest.fixture(scope="module")
def default(tune: Tune) -> Denoiser:
    return tune().denoiser


@pytest.fixture(scope="module")
def lora_files(
    tmp_path_factory: pytest.TempPathFactory, pristine: StableDiffusionPipeline
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("speedup-adapters")
    unet = pristine.unet
    return {
        "lcm": write_lora(demo_state_dict(unet, "lcm-lora"), folder / "lcm.safetensors"),
        "jiangnan": write_lora(demo_state_dict(unet, "jiangnan"), folder / "jiangnan.safetensors"),
        "lingnan": write_lora(demo_state_dict(unet, "lingnan"), folder / "lingnan.safetensors"),
        "conv": write_lora(conv_state_dict(unet, 5), folder / "conv.safetensors"),
    }


@pytest.fixture(scope="module")
def adapters(lora_files: dict[str, Path], default: Denoiser) -> dict[str, LoraWeights]:
    return {name: read_lora_file(path, name, default.module_names()) for name, path in lora_files.items()}


def mixed_jobs(adapters: dict[str, LoraWeights]) -> list[CoverJob]:
    conv, jiangnan, lingnan = adapters["conv"], adapters["jiangnan"], adapters["lingnan"]
    return [
        job(3, ((conv, 1.0),)),
        job(4, ((jiangnan, 0.8), (conv, 0.6)), guidance=7.0),
        job(5, ()),
        job(6, ((lingnan, 1.1),), guidance=3.0),
    ]


# --- attention and memory format: kernels change, covers do not -------------------------------


def test_classic_attention_gives_the_same_covers_as_sdpa(
    tune: Tune, default: Denoiser, adapters: dict[str, LoraWeights]
) -> None:
    classic = tune(attention="classic").denoiser
    processors = {type(p) for p in classic.pipeline.unet.attn_processors.values()}
    processors |= {type(p) for p in classic.pipeline.vae.attn_processors.values()}
    assert processors == {AttnProcessor}
    assert {type(p) for p in default.pipeline.unet.attn_processors.values()} == {AttnProcessor2_0}
    jobs = mixed_jobs(adapters)
    for got, want in zip(images(classic, jobs), images(default, jobs), strict=True):
        assert pixel_diff(got, want) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("fuse", [False, True], ids=["hooks", "fused"])
def test_channels_last_gives_the_same_covers_with_conv_adapters(
    tune: Tune, default: Denoiser, adapters: dict[str, LoraWeights], fuse: bool
) -> None:
    fast = tune(channels_last=True, fuse_shared_stacks=fuse).denoiser
    conv_in = fast.pipeline.unet.conv_in.weight
    assert conv_in.is_contiguous(memory_format=torch.channels_last) and not conv_in.is_contiguous()
    conv = adapters["conv"]
    alone = job(3, ((conv, 1.0),))  # shared stack: conv hooks (or a fused channels_last copy)
    mixed = mixed_jobs(adapters)  # per-sample grouped convolutions
    want = images(default, [alone, *mixed])
    got = images(fast, [alone]) + images(fast, mixed)
    for g, w in zip(got, want, strict=True):
        assert pixel_diff(g, w) <= MAX_PIXEL_DIFF
    assert pixel_diff(got[0], images(default, [job(3)])[0]) > 10, "the conv adapter must matter"
    assert fast.pipeline.unet.conv_in.weight is conv_in, "a fused batch must put the weights back"


# --- tiny VAE ---------------------------------------------------------------------------------


def tiny_vae(blocks: int = 4) -> AutoencoderTiny:
    torch.manual_seed(0)
    return AutoencoderTiny(
        encoder_block_out_channels=(8,) * blocks,
        decoder_block_out_channels=(8,) * blocks,
        num_encoder_blocks=(1,) * blocks,
        num_decoder_blocks=(1,) * blocks,
    )


def test_tiny_vae_loads_from_its_folder_and_decodes(tmp_path: Path, tune: Tune) -> None:
    folder = tmp_path / "taesd"
    tiny_vae().save_pretrained(folder, safe_serialization=True)
    tuned = tune(tiny_vae=folder)
    assert isinstance(tuned.denoiser.pipeline.vae, AutoencoderTiny)
    assert tuned.model_id("base") != "base", "the result cache must not mix decoders"
    wide, square = images(tuned.denoiser, [job(7, width=128, height=64)]) + images(tuned.denoiser, [job(7)])
    assert wide.shape == (64, 128, 3) and wide.dtype == np.uint8
    assert square.shape == (64, 64, 3)


def bad_folder(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    if kind == "missing":
        return folder
    if kind == "scale-4":  # three blocks upsample 4x, the base model's latents need 8x
        tiny_vae(blocks=3).save_pretrained(folder, safe_serialization=True)
    elif kind == "not-tiny":
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
        (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    elif kind == "pickle-only":
        tiny_vae().save_pretrained(folder, safe_serialization=False)
    return folder


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "has no config.json"),
        ("pickle-only", "has no config.json and diffusion_pytorch_model.safetensors"),
        ("not-tiny", "holds a AutoencoderKL, not an AutoencoderTiny"),
        ("scale-4", r"decodes a 2x2 latent to \[3, 8, 8\]"),
    ],
)
def test_a_bad_tiny_vae_folder_fails_at_startup_naming_the_setting(
    tmp_path: Path, tune: Tune, kind: str, reason: str
) -> None:
    with pytest.raises(ConfigError, match=f"COVERGEN_TINY_VAE=.*{reason}"):
        tune(tiny_vae=bad_folder(tmp_path, kind))


# --- LCM few-step mode ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lcm(tune: Tune, lora_files: dict[str, Path]) -> TunedEngine:
    return tune(lcm_lora=lora_files["lcm"])


def test_lcm_mode_uses_the_lcm_scheduler_and_the_file_under_every_stack(
    lcm: TunedEngine, lora_files: dict[str, Path]
) -> None:
    denoiser = lcm.denoiser
    assert isinstance(denoiser.pipeline.scheduler, LCMScheduler)
    [(weights, weight)] = denoiser.base_stack
    assert weight == 1.0 and weights.path == lora_files["lcm"]
    assert lcm.model_id("base") == f"base+lcm:{weights.version}"
    settings = Settings(lcm_lora=lora_files["lcm"])
    assert (settings.resolved_default_steps(), settings.resolved_default_guidance()) == (4, 1.0)
    assert (Settings().resolved_default_steps(), Settings().resolved_default_guidance()) == (20, 5.0)
    assert Settings(lcm_lora=lora_files["lcm"], default_steps=6).resolved_default_steps() == 6


def test_lcm_job_is_the_same_alone_and_in_a_mixed_batch(
    lcm: TunedEngine, adapters: dict[str, LoraWeights]
) -> None:
    jiangnan, lingnan, conv = adapters["jiangnan"], adapters["lingnan"], adapters["conv"]
    jobs = [  # 4 steps, guidance 1 (no CFG) except one: that batch then runs CFG for all
        job(11, ((jiangnan, 0.8),), guidance=1.0, steps=4),
        job(12, ((lingnan, 1.0), (conv, 0.5)), guidance=1.0, steps=4),
        job(13, (), guidance=1.5, steps=4),
        job(14, ((jiangnan, 0.8),), guidance=1.0, steps=4),
    ]
    denoiser = lcm.denoiser
    batch = images(denoiser, jobs)
    uncfg = images(denoiser, [jobs[0], jobs[1], jobs[3]])  # guidance 1 everywhere: no CFG half
    for i, one in enumerate(jobs):
        alone = images(denoiser, [one])[0]
        assert pixel_diff(batch[i], alone) <= MAX_PIXEL_DIFF, f"job {i}"
    for got, i in zip(uncfg, (0, 1, 3), strict=True):
        assert pixel_diff(got, batch[i]) <= MAX_PIXEL_DIFF
    assert pixel_diff(batch[0], batch[3]) > 10, "seeds must matter"
    without_lcm = Denoiser(denoiser.pipeline)  # same pipeline and scheduler, no LCM-LoRA under the stack
    assert pixel_diff(images(without_lcm, [jobs[0]])[0], batch[0]) > 10, "the LCM-LoRA must apply"


def test_a_bad_lcm_lora_fails_at_startup_naming_the_setting(
    tmp_path: Path, tune: Tune, pristine: StableDiffusionPipeline
) -> None:
    pickle = tmp_path / "lcm.bin"
    pickle.write_bytes(b"not opened")
    with pytest.raises(ConfigError, match="COVERGEN_LCM_LORA: .*pickle checkpoint"):
        tune(lcm_lora=pickle)
    other = {k: torch.cat([v, v], dim=-1) if k.endswith("lora_A.weight") else v
             for k, v in demo_state_dict(pristine.unet, "other").items()}  # fmt: skip
    with pytest.raises(ConfigError, match="COVERGEN_LCM_LORA=.* does not fit the base model: unet"):
        tune(lcm_lora=write_lora(other, tmp_path / "other.safetensors"))


# --- compile ----------------------------------------------------------------------------------


def test_compile_unet_is_refused_on_a_cpu(tune: Tune) -> None:
    with pytest.raises(ConfigError, match="COVERGEN_COMPILE_UNET=true needs a CUDA device.*on cpu"):
        tune(compile_unet=True)
