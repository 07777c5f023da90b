"""Datasets on disk: a folder of pictures plus the `metadata.csv` that `covergen-train` reads.

Uploads are checked one by one (a safe file name, an image suffix, a size limit, a full decode);
a refused file gets a reason and the rest of the batch is kept. Captions are edited one row at a
time with a version check: every row has a `version` (a hash of its caption and draft flag), an
edit names the version it started from, and a stale version is refused (`CaptionConflict`), so
two tabs editing one caption never overwrite each other silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from covergen.errors import ConfigError
from trainer.dataset import IMAGE_SUFFIXES, list_images, open_rgb, read_metadata
from trainer.label import analyse, draft_caption, parse_keywords
from trainer.lint import Finding, lint_folder

DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\u4e00-\u9fff-]+")
METADATA = "metadata.csv"


class CaptionConflict(Exception):
    """The caption changed since the editor loaded it; carries the current caption."""

    def __init__(self, current: str) -> None:
        super().__init__(current)
        self.current = current


@dataclass(frozen=True)
class UploadOutcome:
    """One uploaded file: the name it was stored under, or why it was refused."""

    original: str
    stored: str | None
    reason: str | None = None


@dataclass(frozen=True)
class Picture:
    """One picture of a dataset as the page shows it."""

    file: str
    caption: str
    draft: bool
    version: str
    findings: tuple[Finding, ...]


def caption_version(caption: str, draft: bool) -> str:
    return hashlib.sha256(f"{int(draft)}:{caption}".encode()).hexdigest()[:12]


def safe_file_name(name: str) -> str | None:
    """The last path part of an uploaded name with odd characters replaced; None if nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip("._")
    return base[:120] if base else None


class DatasetStore:
    """All datasets under one folder: `<root>/<name>/` with pictures and metadata.csv."""

    def __init__(self, root: Path, *, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        root.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and DATASET_NAME.match(p.name))

    def folder(self, name: str) -> Path:
        if not DATASET_NAME.fullmatch(name):
            raise ConfigError(
                f"dataset name {name[:64]!r} is not valid: use 1-64 of a-z, 0-9, '_' and '-', "
                "starting with a letter or digit (for example jiangnan_rain)"
            )
        return self.root / name

    def create(self, name: str) -> Path:
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def existing(self, name: str) -> Path:
        folder = self.folder(name)
        if not folder.is_dir():
            raise FileNotFoundError(f"no dataset {name!r}; create it on the datasets page")
        return folder

    def picture_path(self, name: str, file: str) -> Path:
        """The path of one picture; refuses names that are not a plain file inside the dataset."""
        folder = self.existing(name)
        path = (folder / file).resolve()
        if path.parent != folder.resolve() or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise FileNotFoundError(f"no picture {file[:120]!r} in dataset {name!r}")
        return path

    def save_upload(self, name: str, original: str, stream: BinaryIO) -> UploadOutcome:
        """Copy one uploaded file into the dataset if it is a readable picture within the limits."""
        folder = self.existing(name)
        stored = safe_file_name(original)
        if stored is None or Path(stored).suffix.lower() not in IMAGE_SUFFIXES:
            return UploadOutcome(original, None, f"not a picture file name; use {', '.join(sorted(IMAGE_SUFFIXES))}")
        if len(list_images(folder)) >= self.max_files:
            return UploadOutcome(original, None, f"the dataset already holds {self.max_files} pictures (the limit)")
        temp = folder / f".upload-{os.getpid()}-{stored}"
        size = 0
        with temp.open("wb") as out:
            while chunk := stream.read(1 << 16):
                size += len(chunk)
                if size > self.max_bytes:
                    break
                out.write(chunk)
        if size > self.max_bytes:
            temp.unlink(missing_ok=True)
            return UploadOutcome(original, None, f"larger than {self.max_bytes // 1024} KiB, the per-picture limit")
        try:
            with Image.open(temp) as image:
                image.load()
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            temp.unlink(missing_ok=True)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return UploadOutcome(original, None, f"not a readable picture ({reason})")
        target = self._free_name(folder, stored)
        os.replace(temp, target)
        return UploadOutcome(original, target.name)

    @staticmethod
    def _free_name(folder: Path, name: str) -> Path:
        target = folder / name
        stem, suffix = target.stem, target.suffix
        number = 1
        while target.exists():
            target = folder / f"{stem}-{number}{suffix}"
            number += 1
        return target

    def table(self, name: str) -> dict[str, tuple[str, bool]]:
        metadata = self.existing(name) / METADATA
        return read_metadata(metadata) if metadata.is_file() else {}

    def _write(self, name: str, rows: dict[str, tuple[str, bool]]) -> None:
        folder = self.existing(name)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["file", "caption", "draft"])
        for file in sorted(rows):
            caption, draft = rows[file]
            writer.writerow([file, caption, "yes" if draft else ""])
        temp = folder / f".{METADATA}.tmp{os.getpid()}"
        temp.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temp, folder / METADATA)

    def pictures(self, name: str, *, resolution: int) -> list[Picture]:
        """Every picture with its caption, version and lint findings (the CLI's `lint_folder`)."""
        folder = self.existing(name)
        rows = self.table(name)
        findings: dict[str, list[Finding]] = {}
        for finding in lint_folder(folder, resolution=resolution):
            findings.setdefault(finding.file, []).append(finding)
        pictures = []
        for path in list_images(folder):
            caption, draft = rows.get(path.name, ("", False))
            pictures.append(
                Picture(path.name, caption, draft, caption_version(caption, draft), tuple(findings.get(path.name, ())))
            )
        return pictures

    def edit_caption(self, name: str, file: str, caption: str, base_version: str) -> str:
        """Set one caption (reviewed: the draft flag clears); returns the new version."""
        self.picture_path(name, file)
        caption = " ".join(caption.split())
        if not caption:
            raise ConfigError("a caption cannot be empty; describe what the picture shows")
        rows = self.table(name)
        current, draft = rows.get(file, ("", False))
        if caption_version(current, draft) != base_version:
            raise CaptionConflict(current)
        rows[file] = (caption, False)
        self._write(name, rows)
        return caption_version(caption, False)

    def draft_captions(self, name: str, keywords: str, *, overwrite: bool = False) -> int:
        """Keyword-and-colour drafts (covergen-label's) for pictures without a caption; returns how many."""
        folder = self.existing(name)
        rows = self.table(name)
        words = parse_keywords(keywords)
        count = 0
        for path in list_images(folder):
            if path.name in rows and rows[path.name][0] and not overwrite:
                continue
            try:
                image = open_rgb(path)
            except (OSError, ValueError):
                continue
            rows[path.name] = (draft_caption(words, analyse(image)), True)
            count += 1
        self._write(name, rows)
        return count

    def delete_pictures(self, name: str, files: Iterable[str]) -> None:
        rows = self.table(name)
        for file in files:
            self.picture_path(name, file).unlink()
            rows.pop(file, None)
        self._write(name, rows)

    def remove(self, name: str) -> None:
        shutil.rmtree(self.existing(name))
