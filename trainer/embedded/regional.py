"""The embedded regional base model: the tiny SD layout trained on drawn regional scenes.

`build` + `refine` reproduce the committed `covergen/embedded/regional-v2/` directory from nothing
but code (`make embedded-model` chains the three stages): `build` draws the scene mixture
(`trainer.scenes`), trains the tiny VAE (same architecture as `covergen.models.tiny`), sets its
`scaling_factor` to 1/std of the trained latents, then trains the tiny UNet on captions that name
the styles, through the embedded model's own frozen CLIP tokenizer and text encoder. `refine`
continues a built model on a fresh draw; the last stage switches the UNet to v-prediction at zero
terminal SNR (see `RegionalRecipe.objective`). The result is saved as an ordinary diffusers
directory in fp16 with a `covergen.json` beside `model_index.json` that records every stage and
asks for zero-mean starting noise (at 8x8 latents the noise's random per-channel mean would
otherwise decide the colour cast, not the prompt).

    python -m trainer.embedded.regional build --out .cache/regional-build/stage1

Training is single-threaded by default (`--threads 1`) so it is bit-reproducible on one CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from covergen.models.cache import default_cache_dir, publish_directory, staging_dir
from covergen.models.loading import COVERGEN_JSON
from covergen.models.tiny import EMBEDDED_SEED, REGIONAL_DIR, build_tiny_pipeline, tiny_unet, tiny_vae
from trainer.latents import CaptionEncoder
from trainer.loss import training_target
from trainer.scenes.captions import CaptionWriter
from trainer.scenes.dataset import base_scene
from trainer.scenes.render import REGIONAL_STYLES

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RegionalRecipe:
    """Every knob of the build; the defaults made stage 1 of the committed model."""

    seed: int = 20_261_106
    scenes: int = 4000  # drawn training images
    vae_steps: int = 350
    vae_batch: int = 16
    vae_crop: int = 32  # VAE trains on random crops: a quarter of the cost, colours are local
    vae_lr: float = 1e-3
    vae_kl: float = 1e-6
    unet_steps: int = 600
    unet_batch: int = 64  # per-step overhead dominates this tiny UNet on CPU: big batches pay
    unet_lr: float = 1e-3
    unet_warmup: int = 50
    caption_dropout: float = 0.10  # half empty captions, half served negative prompts
    # "epsilon" (SD 1.5's objective) or "v_zero_snr": v-prediction on a schedule rescaled to zero
    # terminal SNR, sampled with trailing timesteps (Lin et al. 2024, "Common Diffusion Noise
    # Schedules and Sample Steps are Flawed"). With epsilon the model cannot move an image's mean
    # away from mid-grey: dark styles (hotpot, night market) came out at brightness ~125 instead
    # of ~50 and scored 0/8. At zero terminal SNR the first step predicts the picture from the
    # prompt alone, so its overall colour comes from the prompt.
    objective: str = "epsilon"


V_ZERO_SNR = {
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}
OBJECTIVES: dict[str, dict[str, object]] = {"epsilon": {}, "v_zero_snr": V_ZERO_SNR}  # scheduler overrides


def _overrides(objective: str) -> dict[str, object]:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[objective]


def training_scheduler(config: dict, objective: str) -> DDPMScheduler:
    """The noise schedule the UNet trains on for `objective`, from a base scheduler's config."""
    return DDPMScheduler.from_config(config, **_overrides(objective))


def sampling_scheduler(base: ConfigMixin, objective: str) -> ConfigMixin:
    """The scheduler saved with the pipeline for `objective`: `base` itself for epsilon, DDIM with
    trailing timesteps on the zero-terminal-SNR schedule for v_zero_snr."""
    overrides = _overrides(objective)
    return DDIMScheduler.from_config(base.config, **overrides) if overrides else base


def _log_progress(what: str, step: int, total: int, loss: torch.Tensor, started: float) -> None:
    log.info(
        "%s step %d/%d loss %.4f (%.0f s)", what, step, total, loss.item(), time.perf_counter() - started
    )


def draw_training_set(recipe: RegionalRecipe, captions: CaptionWriter) -> tuple[torch.Tensor, list[str]]:
    """The scene mixture as pixels [n, 3, 64, 64] in -1..1 and their captions."""
    images, texts = [], []
    for index in range(recipe.scenes):
        scene = base_scene(index, recipe.seed, captions)
        images.append(scene.image)
        texts.append(scene.caption)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, texts


def train_vae(pixels: torch.Tensor, recipe: RegionalRecipe) -> AutoencoderKL:
    """The tiny VAE trained for reconstruction (MSE + a tiny KL term) on `pixels` [n, 3, 64, 64]."""
    torch.manual_seed(recipe.seed)
    vae = tiny_vae()
    optimizer = torch.optim.Adam(vae.parameters(), lr=recipe.vae_lr)
    generator = torch.Generator().manual_seed(recipe.seed)
    started = time.perf_counter()
    for step in range(recipe.vae_steps):
        top, left = torch.randint(
            0, pixels.shape[-1] - recipe.vae_crop + 1, (2,), generator=generator
        ).tolist()
        rows = torch.randint(0, len(pixels), (recipe.vae_batch,), generator=generator)
        batch = pixels[rows, :, top : top + recipe.vae_crop, left : left + recipe.vae_crop]  # [b, 3, c, c]
        posterior = vae.encode(batch).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latents).sample
        loss = F.mse_loss(recon, batch) + recipe.vae_kl * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        if step % 50 == 0 or step == recipe.vae_steps - 1:
            _log_progress("vae", step, recipe.vae_steps, loss, started)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """Posterior means of `pixels`: [n, 4, 8, 8], unscaled."""
    return torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])


@torch.no_grad()
def encode_texts(encoder: CaptionEncoder, texts: list[str]) -> torch.Tensor:
    """Frozen CLIP hidden states of `texts`: [n, 77, 32], through the trainer's caption encoder
    in chunks of 256 (the chunking the committed model was built with)."""
    return torch.cat([encoder.encode(texts[start : start + 256]) for start in range(0, len(texts), 256)])


def caption_embeddings(
    tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, captions: CaptionWriter, texts: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of `texts` and of what a dropped caption becomes: the empty prompt or one of the
    negative prompts the service sends (classifier-free guidance sees both at serving time)."""
    encoder = CaptionEncoder(tokenizer, text_encoder)
    negatives = ["", *sorted({captions.served_negative(style) for style in (*REGIONAL_STYLES, "default")})]
    return encode_texts(encoder, texts), encode_texts(encoder, negatives)


def train_unet(
    latents: torch.Tensor,
    embeds: torch.Tensor,
    dropout_embeds: torch.Tensor,
    scheduler: DDPMScheduler,
    recipe: RegionalRecipe,
    unet: UNet2DConditionModel | None = None,
) -> UNet2DConditionModel:
    """The tiny UNet (`unet` to continue one, else a fresh one) trained for epsilon prediction on
    scaled `latents` [n, 4, 8, 8] given `embeds` [n, 77, 32]; a `caption_dropout` share of each
    batch sees one of `dropout_embeds`."""
    torch.manual_seed(recipe.seed + 1)
    unet = tiny_unet() if unet is None else unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / recipe.unet_warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, step / recipe.unet_steps)))
        ),
    )
    generator = torch.Generator().manual_seed(recipe.seed + 2)
    started = time.perf_counter()
    for step in range(recipe.unet_steps):
        rows = torch.randint(0, len(latents), (recipe.unet_batch,), generator=generator)
        clean, context = latents[rows], embeds[rows].clone()  # [b, 4, 8, 8], [b, 77, 32]
        dropped = torch.rand(recipe.unet_batch, generator=generator) < recipe.caption_dropout
        choice = torch.randint(0, len(dropout_embeds), (recipe.unet_batch,), generator=generator)
        context[dropped] = dropout_embeds[choice[dropped]]
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(
            0, scheduler.config["num_train_timesteps"], (recipe.unet_batch,), generator=generator
        )
        noisy = scheduler.add_noise(clean, noise, timesteps)  # type: ignore[arg-type]  # long timesteps, as diffusers does
        target = training_target(scheduler, clean, noise, timesteps)  # epsilon or v, as the trainer
        predicted = unet(noisy, timesteps, encoder_hidden_states=context).sample
        loss = F.mse_loss(predicted, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == recipe.unet_steps - 1:
            _log_progress("unet", step, recipe.unet_steps, loss, started)
    return unet.eval()


def build_regional_pipeline(
    recipe: RegionalRecipe, styles_dir: Path, cache_dir: Path
) -> tuple[StableDiffusionPipeline, dict[str, float]]:
    """Draw, train and assemble the regional pipeline (fp32, in memory) and the build's timings."""
    timings: dict[str, float] = {}
    tiny = build_tiny_pipeline(cache_dir, EMBEDDED_SEED)  # its tokenizer, text encoder, scheduler
    tokenizer, text_encoder = tiny.tokenizer, tiny.text_encoder.eval()
    captions = CaptionWriter(styles_dir)  # the builder's conservative token estimate: fast, never over
    started = time.perf_counter()
    pixels, texts = draw_training_set(recipe, captions)
    timings["draw_s"] = time.perf_counter() - started

    started = time.perf_counter()
    vae = train_vae(pixels, recipe)
    timings["vae_s"] = time.perf_counter() - started
    raw = encode_latents(vae, pixels)  # [n, 4, 8, 8]
    scaling = 1.0 / float(raw.std())
    vae.register_to_config(scaling_factor=scaling)
    log.info("vae latents std %.4f -> scaling_factor %.4f", 1.0 / scaling, scaling)

    embeds, dropout_embeds = caption_embeddings(tokenizer, text_encoder, captions, texts)
    scheduler = training_scheduler(dict(tiny.scheduler.config), recipe.objective)
    started = time.perf_counter()
    unet = train_unet(raw * scaling, embeds, dropout_embeds, scheduler, recipe)
    timings["unet_s"] = time.perf_counter() - started
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampling_scheduler(tiny.scheduler, recipe.objective),  # type: ignore[arg-type]  # any SD scheduler
        safety_checker=None,  # type: ignore[arg-type]  # diffusers documents None as allowed
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    return pipeline, timings


def train_decoder(
    vae: AutoencoderKL, pixels: torch.Tensor, latents: torch.Tensor, recipe: RegionalRecipe, steps: int
) -> AutoencoderKL:
    """Sharpen the VAE decoder on (latent crop -> pixel crop) pairs; the encoder, and so the
    latent space the UNet learned, stays frozen. `latents` [n, 4, 8, 8] are `pixels`' unscaled means."""
    assert vae.post_quant_conv is not None  # the SD layout has one
    parameters = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=recipe.vae_lr / 2)
    generator = torch.Generator().manual_seed(recipe.seed + 5)
    crop = recipe.vae_crop // 8  # latent cells per crop side
    started = time.perf_counter()
    for step in range(steps):
        top, left = torch.randint(0, latents.shape[-1] - crop + 1, (2,), generator=generator).tolist()
        rows = torch.randint(0, len(latents), (recipe.vae_batch,), generator=generator)
        target = pixels[rows, :, 8 * top : 8 * (top + crop), 8 * left : 8 * (left + crop)]  # [b, 3, c, c]
        recon = vae.decode(latents[rows, :, top : top + crop, left : left + crop]).sample
        loss = F.mse_loss(recon, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            _log_progress("decoder", step, steps, loss, started)
    return vae.eval()


def refine_regional_pipeline(
    model: Path,
    recipe: RegionalRecipe,
    styles_dir: Path,
    decoder_steps: int,
    unet_steps: int,
    *,
    stage: int = 1,
    objective: str | None = None,
    unet_batch: int | None = None,
) -> StableDiffusionPipeline:
    """Continue a built model on a fresh draw of the mixture (seed + `stage`): the VAE decoder for
    `decoder_steps`, then the UNet for `unet_steps` on a new cosine cycle at half the build's lr,
    for `objective` (default: the recipe's; switching to v_zero_snr also switches the saved
    scheduler). Deterministic."""
    pipeline = StableDiffusionPipeline.from_pretrained(
        model,
        dtype=torch.float32,
        use_safetensors=True,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    fresh = replace(
        recipe,
        seed=recipe.seed + stage,
        unet_steps=unet_steps,
        unet_warmup=20,
        unet_lr=recipe.unet_lr / 2,
        objective=objective or recipe.objective,
        unet_batch=unet_batch or recipe.unet_batch,
    )
    captions = CaptionWriter(styles_dir)
    pixels, texts = draw_training_set(fresh, captions)
    raw = encode_latents(pipeline.vae.eval(), pixels)
    vae = train_decoder(pipeline.vae, pixels, raw, fresh, decoder_steps) if decoder_steps else pipeline.vae
    scaling = float(vae.config["scaling_factor"])
    embeds, dropout_embeds = caption_embeddings(pipeline.tokenizer, pipeline.text_encoder, captions, texts)
    scheduler = training_scheduler(dict(pipeline.scheduler.config), fresh.objective)
    train_unet(raw * scaling, embeds, dropout_embeds, scheduler, fresh, unet=pipeline.unet)
    pipeline.unet.eval()
    pipeline.scheduler = sampling_scheduler(pipeline.scheduler, fresh.objective)
    return pipeline


def save_regional_model(pipeline: StableDiffusionPipeline, target: Path, facts: dict[str, object]) -> Path:
    """Publish `pipeline` in fp16 safetensors at `target` with `covergen.json` holding `facts`.

    Every component loads as float32 unless the loader asks for another dtype: diffusers does
    that for the UNet and VAE by default, transformers follows the text encoder config's `dtype`,
    which is set back to float32 so a stock `from_pretrained(folder)` does not pair an fp16 text
    encoder with an fp32 UNet ("Half and Float" at inference). The stored values are fp16 either way.
    """
    staging = staging_dir(target)
    pipeline.to(dtype=torch.float16).save_pretrained(staging, safe_serialization=True)
    text_config = staging / "text_encoder" / "config.json"
    config = json.loads(text_config.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    text_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (staging / COVERGEN_JSON).write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if target.exists():
        raise FileExistsError(f"{target} exists; remove it to rebuild the regional model")
    publish_directory(staging, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the embedded regional base model.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="draw scenes, train VAE + UNet, save a diffusers dir")
    build.add_argument("--out", type=Path, default=REGIONAL_DIR)
    build.add_argument("--styles-dir", type=Path, default=REPO_ROOT / "styles")
    build.add_argument("--cache-dir", type=Path, default=None)
    build.add_argument("--threads", type=int, default=1, help="torch threads (1 is reproducible)")
    build.add_argument("--vae-steps", type=int, default=RegionalRecipe.vae_steps)
    build.add_argument("--unet-steps", type=int, default=RegionalRecipe.unet_steps)
    build.add_argument("--scenes", type=int, default=RegionalRecipe.scenes)
    sheet = commands.add_parser("sheet", help="render a contact sheet of region covers")
    sheet.add_argument("--model", type=Path, default=REGIONAL_DIR)
    sheet.add_argument("--styles-dir", type=Path, default=REPO_ROOT / "styles")
    sheet.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "contact-sheet.png")
    sheet.add_argument("--threads", type=int, default=1)
    refine = commands.add_parser("refine", help="continue a built model's decoder and UNet")
    refine.add_argument("--model", type=Path, required=True, help="a directory written by build")
    refine.add_argument("--out", type=Path, required=True)
    refine.add_argument("--styles-dir", type=Path, default=REPO_ROOT / "styles")
    refine.add_argument("--threads", type=int, default=1)
    refine.add_argument("--decoder-steps", type=int, default=200)
    refine.add_argument("--unet-steps", type=int, default=500)
    refine.add_argument("--unet-batch", type=int, default=None, help="default: the recipe's")
    refine.add_argument(
        "--objective", choices=tuple(OBJECTIVES), default=None, help="default: the model's"
    )
    args = parser.parse_args(argv)
    if args.command == "refine":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        torch.set_num_threads(args.threads)
        facts = json.loads((args.model / COVERGEN_JSON).read_text(encoding="utf-8"))
        for key in ("trained_as", "trained_as_note"):  # facts about that folder, not a refined one
            facts.pop(key, None)
        recipe = RegionalRecipe(**facts["recipe"])
        stages = facts.get("refined", [])
        current = stages[-1].get("objective", recipe.objective) if stages else recipe.objective
        objective = args.objective or current
        pipeline = refine_regional_pipeline(
            args.model,
            recipe,
            args.styles_dir,
            args.decoder_steps,
            args.unet_steps,
            stage=len(stages) + 1,
            objective=objective,
            unet_batch=args.unet_batch,
        )
        facts["refined"] = stages + [
            {
                "decoder_steps": args.decoder_steps,
                "unet_steps": args.unet_steps,
                "objective": objective,
                "unet_batch": args.unet_batch or recipe.unet_batch,
            }
        ]
        save_regional_model(pipeline, args.out, facts)
        log.info("wrote %s", args.out)
        return 0
    if args.command == "sheet":
        torch.set_num_threads(args.threads)
        from trainer.embedded.contact_sheet import render_contact_sheet

        print(f"wrote {render_contact_sheet(args.model, args.styles_dir, args.out)}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    recipe = RegionalRecipe(vae_steps=args.vae_steps, unet_steps=args.unet_steps, scenes=args.scenes)
    if args.out.exists():
        parser.error(f"{args.out} exists; remove it first to rebuild")
    pipeline, timings = build_regional_pipeline(
        recipe, args.styles_dir, args.cache_dir or default_cache_dir()
    )
    facts = {"zero_mean_noise": True, "default_size": 64, "recipe": recipe.__dict__}
    save_regional_model(pipeline, args.out, facts)
    log.info("wrote %s (%s)", args.out, ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
