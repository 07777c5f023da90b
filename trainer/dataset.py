"""The training set on disk: which images, which captions, and which ones cannot be used.

Captions come from `metadata.csv` (header `file,caption`, optional `draft` column written by
`covergen-label`; UTF-8, any language) or, without one, from `<image>.txt` sidecar files.
Every image is opened and decoded once while scanning; unreadable files and images without a
caption are reported one line each and skipped, never silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from covergen.errors import ConfigError

from .buckets import Bucket, assign_bucket

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
DRAFT_KEYWORDS = "yes"  # `draft` value covergen-label writes for a keyword-and-colour draft
DRAFT_MODEL = "model"  # ... and for a caption written by a captioning model
DRAFT_TRUE = frozenset({"1", "true", "yes", "draft", DRAFT_MODEL})


@dataclass(frozen=True)
class Record:
    """One image file and its caption, as written by staff (or drafted by the labeller)."""

    path: Path
    caption: str
    draft: bool = False


@dataclass(frozen=True)
class TrainImage:
    """A usable image: its record, size, training bucket and content hash (the cache key)."""

    record: Record
    width: int
    height: int
    bucket: Bucket
    sha256: str


@dataclass
class ScanReport:
    """What the scan kept and, one line each, what it skipped and why."""

    images: list[TrainImage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def drafts(self) -> int:
        return sum(1 for image in self.images if image.record.draft)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_metadata(metadata_path: Path) -> dict[str, tuple[str, bool]]:
    """`file -> (caption, draft)` from a `file,caption[,draft]` CSV (UTF-8, with or without BOM)."""
    try:
        text = metadata_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{metadata_path} is not UTF-8 (byte {exc.start} cannot be decoded); save it as "
            "'CSV UTF-8' (Excel) or convert it, e.g. iconv -f GBK -t UTF-8"
        ) from exc
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        if not {"file", "caption"} <= columns:
            raise ConfigError(
                f"{metadata_path}: header must start with 'file,caption', got "
                f"{','.join(reader.fieldnames or [])!r}; run covergen-label to write one"
            )
        rows: dict[str, tuple[str, bool]] = {}
        for row in reader:
            name = (row.get("file") or "").strip()
            if name:
                draft = (row.get("draft") or "").strip().lower() in DRAFT_TRUE
                rows[name] = ((row.get("caption") or "").strip(), draft)
    return rows


def read_records(train_data_dir: Path, metadata_path: Path | None) -> tuple[list[Record], list[str]]:
    """Pair every image with its caption; returns the records and one problem line per miss."""
    if not train_data_dir.is_dir():
        raise ConfigError(f"train_data_dir {train_data_dir} is not a folder; fix train_data_dir")
    problems: list[str] = []
    records: list[Record] = []
    if metadata_path is not None:
        if not metadata_path.is_file():
            raise ConfigError(f"metadata_path {metadata_path} does not exist; fix metadata_path")
        rows = read_metadata(metadata_path)
        for name, (caption, draft) in rows.items():
            path = train_data_dir / name
            if Path(name).name != name:
                problems.append(
                    f"{name}: file names in {metadata_path.name} must not contain folders; skipped"
                )
            elif not path.is_file():
                problems.append(f"{name}: listed in {metadata_path.name} but the file is missing")
            elif not caption:
                problems.append(f"{name}: empty caption in {metadata_path.name}; write one")
            else:
                records.append(Record(path, caption, draft))
        for path in list_images(train_data_dir):
            if path.name not in rows:
                problems.append(f"{path.name}: not listed in {metadata_path.name}; add a row")
        return sorted(records, key=lambda r: r.path.name), problems
    for path in list_images(train_data_dir):
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        if caption:
            records.append(Record(path, caption))
        else:
            problems.append(f"{path.name}: no caption (write {sidecar.name} or a metadata.csv)")
    return records, problems


def open_rgb(path: Path) -> Image.Image:
    """Decode an image fully and convert it to RGB (raises on truncated or corrupt files)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def scan(records: list[Record], buckets: list[Bucket]) -> ScanReport:
    """Open every image once: keep the readable ones with their bucket, report the rest."""
    report = ScanReport()
    for record in records:
        try:
            data = record.path.read_bytes()
            image = open_rgb(record.path)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report.problems.append(f"{record.path.name}: unreadable image, skipped ({reason})")
            continue
        bucket = assign_bucket(image.width, image.height, buckets)
        report.images.append(
            TrainImage(record, image.width, image.height, bucket, hashlib.sha256(data).hexdigest())
        )
    return report


def split_validation(
    images: list[TrainImage], fraction: float, seed: int
) -> tuple[list[TrainImage], list[TrainImage]]:
    """A seeded hold-out split: (train, validation). At least one image each way when possible."""
    if fraction <= 0 or len(images) < 2:
        return list(images), []
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    count = min(len(images) - 1, max(1, round(len(images) * fraction)))
    held = set(order[:count])
    train = [img for i, img in enumerate(images) if i not in held]
    validation = [img for i, img in enumerate(images) if i in held]
    return train, validation


def epoch_batches(images: list[TrainImage], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices into `images`, grouped into single-bucket batches, in a seeded order per epoch.

    The order depends only on (seed, epoch), so a resumed run replays the same batches.
    """
    rng = random.Random(seed * 100_003 + epoch)
    by_bucket: dict[Bucket, list[int]] = {}
    for index, image in enumerate(images):
        by_bucket.setdefault(image.bucket, []).append(index)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches
