"""What the frozen parts of the base compute once: VAE latents and caption embeddings.

`LatentCache` encodes each training image once (and its mirror image when `random_flip` is on)
and keeps the result in memory and on disk under `output_dir/cache`, keyed by the file's hash,
the bucket, and the base model's content id, so a second run (or a resume) skips the VAE.
`CaptionEncoder` turns captions into the UNet's conditioning, memoised while the text encoder
is frozen.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from .buckets import Bucket, fit_to_bucket
from .dataset import TrainImage, open_rgb


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> [3, h, w] float tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # [h, w, 3]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_pixels(image: TrainImage, *, rng: random.Random | None = None) -> torch.Tensor:
    """The image fitted to its bucket (centre crop, or random crop with `rng`): [3, h, w]."""
    return image_to_tensor(fit_to_bucket(open_rgb(image.record.path), image.bucket, rng=rng))


@torch.no_grad()
def encode_pixels(vae: AutoencoderKL, pixels: torch.Tensor) -> torch.Tensor:
    """[b, 3, h, w] in [-1, 1] -> scaled latents [b, 4, h/8, w/8] (distribution mean)."""
    device, dtype = vae.device, vae.dtype
    latents = vae.encode(pixels.to(device, dtype)).latent_dist.mean
    shift = vae.config.get("shift_factor") or 0.0
    return ((latents - shift) * vae.config["scaling_factor"]).float()


class LatentCache:
    """Latents of centre-cropped training images, computed once per (file, bucket, base)."""

    def __init__(self, vae: AutoencoderKL, cache_dir: Path, base_content_id: str, *, flips: bool):
        self._vae = vae
        self._dir = cache_dir
        self._base = base_content_id[:16]
        self._flips = flips
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _key(self, image: TrainImage) -> str:
        b = image.bucket
        return f"{image.sha256[:24]}-{b.width}x{b.height}-{self._base}"

    def prepare(self, images: list[TrainImage], *, batch_size: int = 1, show_progress: bool = True) -> None:
        """Encode every image not yet cached (in memory, else on disk, else with the VAE).

        Images of one bucket go through the VAE `batch_size` at a time: the same batch the
        training step uses, so caching never needs more memory than a step of a loop that
        encodes every step.
        """
        self._dir.mkdir(parents=True, exist_ok=True)
        todo: dict[Bucket, dict[str, TrainImage]] = {}
        for image in images:
            key = self._key(image)
            if key in self._memory:
                continue
            path = self._dir / f"{key}.safetensors"
            tensors = load_file(path) if path.is_file() else {}
            if "latent" in tensors and (not self._flips or "flipped" in tensors):
                self._memory[key] = (tensors["latent"], tensors.get("flipped"))
            else:
                todo.setdefault(image.bucket, {})[key] = image
        count = sum(len(group) for group in todo.values())
        with tqdm(total=count, desc="caching latents", disable=not show_progress, leave=False) as bar:
            for group in todo.values():
                keys = list(group)
                for start in range(0, len(keys), batch_size):
                    chunk = keys[start : start + batch_size]
                    self._encode(chunk, [group[key] for key in chunk])
                    bar.update(len(chunk))

    def _encode(self, keys: list[str], images: list[TrainImage]) -> None:
        """Encode one same-bucket chunk with the VAE; keep it in memory and write it to disk."""
        pixels = torch.stack([load_pixels(image) for image in images])  # [n, 3, h, w]
        latents = encode_pixels(self._vae, pixels).cpu()  # [n, 4, h/8, w/8]
        mirrors = encode_pixels(self._vae, pixels.flip(-1)).cpu() if self._flips else None
        for row, key in enumerate(keys):
            tensors = {"latent": latents[row].clone(memory_format=torch.contiguous_format)}
            if mirrors is not None:
                tensors["flipped"] = mirrors[row].clone(memory_format=torch.contiguous_format)
            path = self._dir / f"{key}.safetensors"
            temp = path.with_suffix(f".tmp{os.getpid()}")
            save_file(tensors, str(temp))
            os.replace(temp, path)
            self._memory[key] = (tensors["latent"], tensors.get("flipped"))

    def get(self, image: TrainImage, *, flipped: bool = False) -> torch.Tensor:
        """The cached latent [4, h/8, w/8] of `image` (its mirror image when `flipped`)."""
        latent, mirror = self._memory[self._key(image)]
        if flipped:
            if mirror is None:
                raise KeyError("flipped latents were not cached; build the cache with flips=True")
            return mirror
        return latent


class CaptionEncoder:
    """Captions -> CLIP hidden states [b, 77, dim]; memoised unless the text encoder trains."""

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel):
        self._tokenizer = tokenizer
        self._text_encoder = text_encoder
        self._memo: dict[str, torch.Tensor] = {}

    def token_ids(self, captions: list[str]) -> torch.Tensor:
        """[b, model_max_length] token ids, truncated to the CLIP window."""
        return self._tokenizer(
            captions,
            padding="max_length",
            max_length=self._tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Hidden states with gradients (use while training the text encoder)."""
        ids = self.token_ids(captions).to(self._text_encoder.device)
        return self._text_encoder(ids)[0]

    @torch.no_grad()
    def encode_frozen(self, captions: list[str]) -> torch.Tensor:
        """Hidden states from the frozen text encoder, each caption encoded once."""
        missing = [c for c in dict.fromkeys(captions) if c not in self._memo]
        if missing:
            hidden = self.encode(missing)
            for caption, row in zip(missing, hidden, strict=True):
                self._memo[caption] = row
        return torch.stack([self._memo[c] for c in captions])
