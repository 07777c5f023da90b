"""The speed settings (`COVERGEN_ATTENTION`, `CHANNELS_LAST`, `COMPILE_UNET`, `TINY_VAE`,
`LCM_LORA`, `FUSE_SHARED_STACKS`) applied to a loaded pipeline, and the Denoiser built over it.

Every setting keeps a cover independent of its batch-mates and of adapter switches:

- attention processors and channels_last change kernels, not results (the LoRA hooks add their
  deltas in place, whatever the memory format);
- the compiled UNet has a hook on every Linear/Conv2d before it is compiled, and the hooks read
  their plan as tensors, so switching to another stack of the same shape reuses the graph; a new
  batch size, adapter rank or set of adapted modules compiles once more. CUDA only;
- the tiny VAE only decodes; its file identity joins the model id the result cache keys on;
- the LCM-LoRA is read by `read_lora_file` like any adapter and put under every job's stack at
  weight 1.0 (`Denoiser(base_stack=...)`), so it reaches the UNet through the same per-sample
  hooks or fused copies as the regional adapters. The scheduler becomes `LCMScheduler`; its
  per-step noise comes from each job's own generator.

    tuned = apply_speedups(base.pipeline, settings)
    engine = Engine(tuned.denoiser, ...); cache key base: tuned.model_id(base.content_id)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTiny
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_lcm import LCMScheduler
from torch import nn

from covergen.adapters.files import file_version, read_lora_file
from covergen.engine.denoise import Denoiser
from covergen.engine.lora_layers import PerSampleLora
from covergen.errors import AdapterRejected, ConfigError
from covergen.settings import Settings

log = logging.getLogger(__name__)
LCM_ADAPTER_NAME = "@lcm-lora"  # "@" cannot start a style name, so no style can shadow it
TINY_VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass(frozen=True)
class TunedEngine:
    """The Denoiser with every speed setting applied, and what in it changes the images."""

    denoiser: Denoiser
    image_parts: tuple[str, ...] = ()  # e.g. ("lcm:<version>", "tiny-vae:<version>")

    def model_id(self, base_content_id: str) -> str:
        """The id the result cache keys on: the base model plus any LCM-LoRA or tiny VAE."""
        return "+".join((base_content_id, *self.image_parts))


def apply_speedups(
    pipeline: StableDiffusionPipeline, settings: Settings, *, zero_mean_noise: bool = False
) -> TunedEngine:
    """Shape `pipeline` (in place) by the speed settings and build the Denoiser that runs it.

    Raises ConfigError naming the setting when a path is wrong or a setting cannot apply here."""
    set_attention(pipeline, settings.attention)
    parts: list[str] = []
    if settings.tiny_vae is not None:
        pipeline.vae = load_tiny_vae(settings.tiny_vae, pipeline)
        parts.append(f"tiny-vae:{file_version(settings.tiny_vae / TINY_VAE_WEIGHTS)}")
    if settings.channels_last:
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
    denoiser = Denoiser(
        pipeline, zero_mean_noise=zero_mean_noise, fuse_shared_stacks=settings.fuse_shared_stacks
    )
    if settings.lcm_lora is not None:
        use_lcm_lora(denoiser, settings.lcm_lora)
        parts.append(f"lcm:{denoiser.base_stack[0][0].version}")
    if settings.compile_unet:
        if denoiser.device.type != "cuda":
            raise ConfigError(
                f"COVERGEN_COMPILE_UNET=true needs a CUDA device, but the UNet is on {denoiser.device}: on a "
                "CPU, tracing alone took 22-36 s per graph on the tiny model and every new batch size or "
                "adapter shape needs another graph; unset COVERGEN_COMPILE_UNET or set COVERGEN_DEVICE=cuda"
            )
        compile_unet(pipeline.unet, denoiser.unet_lora)
    log.info(
        "speedups: attention=%s channels_last=%s compile_unet=%s tiny_vae=%s lcm_lora=%s fuse_shared_stacks=%s",
        settings.attention,
        settings.channels_last,
        settings.compile_unet,
        settings.tiny_vae,
        settings.lcm_lora,
        settings.fuse_shared_stacks,
    )
    return TunedEngine(denoiser, tuple(parts))


def set_attention(pipeline: StableDiffusionPipeline, attention: str) -> None:
    """`"sdpa"`: torch's fused scaled_dot_product_attention; `"classic"`: diffusers' matmul-softmax."""
    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    for model in (pipeline.unet, pipeline.vae):
        if getattr(model, "attn_processors", None):  # AutoencoderTiny has no attention
            model.set_attn_processor(processor())


def load_tiny_vae(path: Path, pipeline: StableDiffusionPipeline) -> AutoencoderTiny:
    """A local AutoencoderTiny that decodes this pipeline's latents to the same size; never downloads."""
    hint = "point COVERGEN_TINY_VAE at a local diffusers AutoencoderTiny folder (e.g. a copy of madebyollin/taesd)"
    config = path / "config.json"
    if not config.is_file() or not (path / TINY_VAE_WEIGHTS).is_file():
        raise ConfigError(f"COVERGEN_TINY_VAE={path} has no config.json and {TINY_VAE_WEIGHTS}; {hint}")
    class_name = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    if class_name != "AutoencoderTiny":
        raise ConfigError(f"COVERGEN_TINY_VAE={path} holds a {class_name}, not an AutoencoderTiny; {hint}")
    unet = pipeline.unet
    try:
        vae = AutoencoderTiny.from_pretrained(
            path, local_files_only=True, use_safetensors=True, torch_dtype=unet.dtype
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"COVERGEN_TINY_VAE={path} does not load: {exc}; {hint}") from exc
    vae = vae.to(unet.device).eval()
    latent = torch.zeros(1, unet.config.out_channels, 2, 2, device=unet.device, dtype=unet.dtype)
    scale = int(pipeline.vae_scale_factor)
    try:
        with torch.inference_mode():
            pixels = vae.decode(latent, return_dict=False)[0]  # [1, 3, 2 * scale, 2 * scale]
    except RuntimeError as exc:
        raise ConfigError(
            f"COVERGEN_TINY_VAE={path} cannot decode this model's latents: {exc}; {hint}"
        ) from exc
    if tuple(pixels.shape) != (1, 3, 2 * scale, 2 * scale):
        raise ConfigError(
            f"COVERGEN_TINY_VAE={path} decodes a 2x2 latent to {list(pixels.shape[1:])}, but the base model "
            f"needs [3, {2 * scale}, {2 * scale}] (scale factor {scale}); {hint}"
        )
    return vae


def use_lcm_lora(denoiser: Denoiser, path: Path) -> None:
    """Few-step mode: the LCM-LoRA under every job's stack at weight 1.0 and the LCMScheduler."""
    try:
        weights = read_lora_file(path, LCM_ADAPTER_NAME, denoiser.module_names())
    except AdapterRejected as exc:
        raise ConfigError(f"COVERGEN_LCM_LORA: {exc}") from exc
    problem = denoiser.check_compatible(weights)
    if problem is not None:
        raise ConfigError(f"COVERGEN_LCM_LORA={path} does not fit the base model: {problem}")
    denoiser.base_stack = ((weights.to(denoiser.device, denoiser.dtype), 1.0),)
    pipeline = denoiser.pipeline
    pipeline.scheduler = LCMScheduler.from_config(pipeline.scheduler.config)


def compile_unet(unet: nn.Module, lora: PerSampleLora, *, backend: str = "inductor") -> None:
    """`torch.compile` the UNet in place, after putting every LoRA hook on it (see `hook_all`)."""
    lora.hook_all()
    unet.compile(backend=backend)
