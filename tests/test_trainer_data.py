"""Training data: captions from metadata.csv or sidecars, buckets that never stretch, bad files."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covergen.errors import ConfigError
from trainer.buckets import assign_bucket, fit_to_bucket, make_buckets, plan_crop
from trainer.dataset import epoch_batches, read_records, scan, split_validation


def save_image(path: Path, width: int, height: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def write_metadata(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "metadata.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("resolution", [64, 256, 512, 768])
def test_buckets_are_multiples_of_the_step_and_within_area(resolution: int) -> None:
    step = 8 if resolution == 64 else 64
    buckets = make_buckets(resolution, step=step)
    assert any(b.width == b.height == resolution for b in buckets)
    for bucket in buckets:
        assert bucket.width % step == 0 and bucket.height % step == 0
        assert bucket.width * bucket.height <= resolution * resolution
        assert max(bucket.aspect, 1 / bucket.aspect) <= 2.0


@pytest.mark.parametrize(
    ("width", "height"), [(1920, 1080), (1080, 1920), (800, 800), (333, 1000), (2000, 999), (37, 53)]
)
def test_resize_keeps_aspect_and_only_crops(width: int, height: int) -> None:
    buckets = make_buckets(512, step=64)
    bucket = assign_bucket(width, height, buckets)
    box = plan_crop(width, height, bucket)
    # One scale for both sides: the resized image has the source's aspect ratio (rounding aside).
    assert box.resized_width / box.resized_height == pytest.approx(width / height, rel=0.02)
    assert box.resized_width >= bucket.width and box.resized_height >= bucket.height
    assert 0 <= box.left <= box.resized_width - bucket.width
    image = Image.new("RGB", (width, height))
    assert fit_to_bucket(image, bucket).size == (bucket.width, bucket.height)
    assert fit_to_bucket(image, bucket, rng=random.Random(1)).size == (bucket.width, bucket.height)


def test_wide_image_goes_to_a_wide_bucket() -> None:
    buckets = make_buckets(512, step=64)
    assert assign_bucket(1920, 1080, buckets).aspect > 1.4
    assert assign_bucket(1080, 1920, buckets).aspect < 1 / 1.4
    assert assign_bucket(500, 510, buckets).aspect == 1.0


def test_fit_to_bucket_does_not_stretch_content() -> None:
    # A circle drawn on a wide canvas must stay round after fitting into a square bucket.
    image = Image.new("L", (200, 100), 0)
    yy, xx = np.mgrid[0:100, 0:200]
    mask = ((xx - 100) ** 2 + (yy - 50) ** 2) < 40**2
    image = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    fitted = np.asarray(fit_to_bucket(image, make_buckets(64, step=64)[0]).convert("L")) > 127
    rows, cols = np.nonzero(fitted)
    assert (rows.max() - rows.min()) == pytest.approx(cols.max() - cols.min(), abs=2)


def test_metadata_with_chinese_captions_and_corrupt_image(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 96, 64)
    save_image(tmp_path / "b.jpg", 64, 96, seed=1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    save_image(tmp_path / "unlisted.png", 64, 64)
    write_metadata(
        tmp_path,
        [("a.png", "江南水乡，白墙黑瓦"), ("b.jpg", "canal at dusk"), ("broken.png", "x"), ("gone.png", "y")],
    )
    records, problems = read_records(tmp_path, tmp_path / "metadata.csv")
    assert [r.caption for r in records] == ["江南水乡，白墙黑瓦", "canal at dusk", "x"]
    assert any("gone.png" in p and "missing" in p for p in problems)
    assert any("unlisted.png" in p and "not listed" in p for p in problems)
    report = scan(records, make_buckets(64, step=8))
    assert [img.record.path.name for img in report.images] == ["a.png", "b.jpg"]
    assert len(report.problems) == 1
    assert report.problems[0].startswith("broken.png: unreadable image, skipped")
    wide, tall = report.images
    assert wide.bucket.aspect > 1 > tall.bucket.aspect


def test_sidecar_captions_and_missing_caption(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 64, 64)
    save_image(tmp_path / "b.png", 64, 64)
    (tmp_path / "a.txt").write_text("white walls, black tiles\n", encoding="utf-8")
    records, problems = read_records(tmp_path, None)
    assert [(r.path.name, r.caption) for r in records] == [("a.png", "white walls, black tiles")]
    assert problems == ["b.png: no caption (write b.txt or a metadata.csv)"]


def test_draft_column_is_read(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", 64, 64)
    (tmp_path / "metadata.csv").write_text("file,caption,draft\na.png,red stripes,yes\n", encoding="utf-8")
    records, _ = read_records(tmp_path, tmp_path / "metadata.csv")
    assert records[0].draft


def test_bad_metadata_header_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("image,text\na.png,x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="header must start with 'file,caption'"):
        read_records(tmp_path, tmp_path / "metadata.csv")


def test_split_and_epoch_order_are_seeded(tmp_path: Path) -> None:
    for i in range(10):
        save_image(tmp_path / f"{i}.png", 64 if i % 2 else 96, 64, seed=i)
        (tmp_path / f"{i}.txt").write_text(f"image {i}", encoding="utf-8")
    records, _ = read_records(tmp_path, None)
    images = scan(records, make_buckets(64, step=8)).images
    train, held = split_validation(images, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8
    assert split_validation(images, 0.2, seed=3) == (train, held)
    batches = epoch_batches(train, 3, seed=3, epoch=0)
    assert batches == epoch_batches(train, 3, seed=3, epoch=0)
    assert batches != epoch_batches(train, 3, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for batch in batches:
        assert len({train[i].bucket for i in batch}) == 1
