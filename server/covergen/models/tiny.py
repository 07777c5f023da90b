"""The embedded tiny base model: SD 1.5's layout at toy size, built from a seed, cached on disk.

It lets the service, the trainer and the tests run end to end with no downloaded weights. Same
component classes and block layout as SD 1.5 (4 UNet levels with cross-attention on the first
three, 2 layers per block, a 4-level VAE so the VAE scale factor is 8, a CLIP text encoder over
the real 49,408-token vocabulary, PNDM with SD 1.5's schedule), only narrow. Its weights are
random: images are noise-like until someone trains it. Default size 64 px (8x8 latents).

Users select it with the base model spec `"embedded"` (or `"embedded:tiny"`). It is built once
into `<cache>/embedded-tiny-v1/` as an ordinary diffusers directory; two builds from the same seed
are bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import torch

# diffusers' lazy package __init__ shows mypy its dummy classes; import from the modules
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from covergen.models.cache import publish_directory, staging_dir
from covergen.models.clip_vocab import write_tokenizer_files
from covergen.models.config_dirs import SD15_CONFIG_DIR

REGIONAL_SPEC = "embedded:regional"  # trained on drawn regional scenes; see trainer.embedded.regional
REGIONAL_DIR = Path(__file__).resolve().parents[1] / "embedded" / "regional-v2"  # committed weights
EMBEDDED_SPECS = frozenset({"embedded", "embedded:tiny", REGIONAL_SPEC})
EMBEDDED_DIR_NAME = "embedded-tiny-v1"  # bump the suffix whenever the architecture or seed changes
EMBEDDED_SEED = 20_241_125


def is_embedded_spec(spec: str) -> bool:
    """Whether a base model spec names the embedded tiny model."""
    return spec.strip().lower() in EMBEDDED_SPECS


def tiny_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet layout with channels (32, 32, 64, 64) and 32-wide cross-attention."""
    return UNet2DConditionModel(
        sample_size=8,  # latents [batch, 4, 8, 8] -> 64 px images
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        cross_attention_dim=32,
        attention_head_dim=2,  # heads per attention layer, as SD 1.5's config names it
        norm_num_groups=32,
    )


def tiny_vae() -> AutoencoderKL:
    """A 4-level KL autoencoder (scale factor 8, 4 latent channels) with channels (32, 32, 64, 64)."""
    return AutoencoderKL(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=0.18215,
    )


def tiny_text_encoder() -> CLIPTextModel:
    """A 5-layer, 32-wide CLIP text encoder over the full CLIP vocabulary and 77-token context."""
    config = CLIPTextConfig(
        vocab_size=49_408,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=5,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="quick_gelu",
        bos_token_id=49_406,
        eos_token_id=49_407,
        pad_token_id=49_407,
    )
    return CLIPTextModel(config)


def build_tiny_pipeline(cache_dir: Path, seed: int = EMBEDDED_SEED) -> StableDiffusionPipeline:
    """The tiny pipeline in memory, weights drawn from `seed` without touching the global RNG."""
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_files(cache_dir))
    scheduler = PNDMScheduler.from_pretrained(SD15_CONFIG_DIR, subfolder="scheduler")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = tiny_unet()
        vae = tiny_vae()
        text_encoder = tiny_text_encoder()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,  # type: ignore[arg-type]  # diffusers documents None as allowed
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )


def save_tiny_model(target: Path, cache_dir: Path, seed: int = EMBEDDED_SEED) -> Path:
    """Build the tiny model and publish it as a diffusers directory at `target` (atomically)."""
    staging = staging_dir(target)
    build_tiny_pipeline(cache_dir, seed).save_pretrained(staging, safe_serialization=True)
    publish_directory(staging, target)
    return target


def ensure_embedded_model(cache_dir: Path, spec: str = "embedded") -> Path:
    """The diffusers directory of embedded `spec`: the committed regional model, or the tiny
    model under `cache_dir`, built on first use."""
    if spec.strip().lower() == REGIONAL_SPEC:
        return REGIONAL_DIR
    target = cache_dir / EMBEDDED_DIR_NAME
    if not (target / "model_index.json").is_file():
        save_tiny_model(target, cache_dir)
    return target
