"""Aspect-ratio buckets: which training size each image gets, and how it is cut to that size.

Buckets hold about `resolution**2` pixels with sides that are multiples of `step`. An image goes
to the bucket whose aspect ratio is closest to its own (in log space), is resized uniformly until
it covers the bucket, then cropped. Images are never stretched: the uniform resize keeps the
aspect ratio, and only the overhang is cut away.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True, order=True)
class Bucket:
    """A training size in pixels."""

    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def make_buckets(resolution: int, *, step: int = 64, max_aspect_ratio: float = 2.0) -> list[Bucket]:
    """Every bucket of at most `resolution**2` pixels with sides that are multiples of `step`.

    For each width the height is the largest multiple of `step` that keeps the area in budget;
    the square bucket is always present.
    """
    if resolution % step:
        raise ValueError(f"resolution {resolution} is not a multiple of bucket_step {step}")
    area = resolution * resolution
    buckets = {Bucket(resolution, resolution)}
    width = step
    while width <= area // step:
        height = (area // width) // step * step
        if height >= step:
            ratio = max(width / height, height / width)
            if ratio <= max_aspect_ratio + 1e-9:
                buckets.add(Bucket(width, height))
                buckets.add(Bucket(height, width))
        width += step
    return sorted(buckets, key=lambda b: (b.aspect, b.width))


def assign_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest the image's (log distance; ties -> larger area)."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b.aspect) - target), -b.width * b.height))


@dataclass(frozen=True)
class CropBox:
    """Where the bucket-sized crop sits inside the uniformly resized image."""

    resized_width: int
    resized_height: int
    left: int
    top: int


def plan_crop(
    width: int, height: int, bucket: Bucket, *, rng: random.Random | None = None
) -> CropBox:
    """Resize-to-cover geometry: one scale factor for both sides, then a centre (or random) crop."""
    scale = max(bucket.width / width, bucket.height / height)
    resized_w = max(bucket.width, round(width * scale))
    resized_h = max(bucket.height, round(height * scale))
    spare_w, spare_h = resized_w - bucket.width, resized_h - bucket.height
    if rng is None:
        left, top = spare_w // 2, spare_h // 2
    else:
        left, top = rng.randint(0, spare_w), rng.randint(0, spare_h)
    return CropBox(resized_w, resized_h, left, top)


def fit_to_bucket(
    image: Image.Image, bucket: Bucket, *, rng: random.Random | None = None
) -> Image.Image:
    """The image resized to cover `bucket` with its aspect ratio kept, then cropped to it."""
    box = plan_crop(image.width, image.height, bucket, rng=rng)
    resized = image.resize((box.resized_width, box.resized_height), Image.Resampling.BICUBIC)
    return resized.crop((box.left, box.top, box.left + bucket.width, box.top + bucket.height))
