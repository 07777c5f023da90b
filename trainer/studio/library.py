"""The style library as the studio sees it: cards, regions using each style, version history.

Publishing goes through `trainer.publish.publish` (the CLI's code). Before and after each publish
the style's adapter and card are copied into `<history>/<style>/<NNNN>/` (once per version), so
any earlier version can be put back with one click (`rollback`). A preview stages the candidate
adapter as a hidden-by-name overlay `studio-preview`, which the server applies through its
ordinary `themes` and `adapter_weights` fields; publishing removes it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from covergen.errors import ConfigError
from covergen.styles import StyleCard, StyleLibrary
from trainer.publish import ADAPTER_FILE_NAME, CARD_FILE_NAME, find_adapter, publish

PREVIEW_STYLE = "studio-preview"


@dataclass(frozen=True)
class Version:
    """One entry of a style's history."""

    number: int
    version: str  # sha256[:16] of the adapter, as the server reports it
    published: float
    note: str
    folder: Path


@dataclass(frozen=True)
class StyleEntry:
    card: StyleCard
    version: str
    regions: tuple[str, ...]


def file_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def regions_by_style(styles_dir: Path) -> dict[str, list[str]]:
    """Style name -> region names whose stack names it (macro-regions, provinces, cities)."""
    path = styles_dir / "regions.yaml"
    table: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    found: dict[str, list[str]] = {}

    def visit(entry: dict[str, Any], name: str) -> None:
        for item in entry.get("stack") or []:
            found.setdefault(str(item.get("style")), []).append(name)

    visit(table.get("default") or {}, "default")
    for macro in table.get("macro_regions") or []:
        visit(macro, str(macro.get("name")))
    for province in table.get("provinces") or []:
        visit(province, str(province.get("name")))
        for city in province.get("cities") or []:
            visit(city, str(city.get("name")))
    return found


class StyleShelf:
    """Reads `styles/`, keeps the history, publishes, rolls back and stages previews."""

    def __init__(self, styles_dir: Path, history_dir: Path) -> None:
        self.styles_dir = styles_dir
        self.history_dir = history_dir

    def entries(self) -> list[StyleEntry]:
        library = StyleLibrary.load(self.styles_dir)
        regions = regions_by_style(self.styles_dir)
        out = []
        for card in library:
            if card.name == PREVIEW_STYLE:
                continue
            path = library.adapter_path(card)
            version = file_version(path) if path is not None and path.is_file() else ""
            out.append(StyleEntry(card, version, tuple(regions.get(card.name, ()))))
        return out

    def history(self, style: str) -> list[Version]:
        folder = self.history_dir / style
        if not folder.is_dir():
            return []
        versions = []
        for entry in sorted(folder.iterdir()):
            meta_path = entry / "meta.json"
            if entry.is_dir() and meta_path.is_file():
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                versions.append(Version(int(entry.name), meta["version"], meta["published"], meta["note"], entry))
        return versions

    def _record(self, style: str, note: str) -> None:
        """Copy the style's current adapter and card into its history unless that version is there."""
        folder = self.styles_dir / style
        adapter, card = folder / ADAPTER_FILE_NAME, folder / CARD_FILE_NAME
        if not adapter.is_file() or not card.is_file():
            return
        version = file_version(adapter)
        past = self.history(style)
        if any(v.version == version for v in past):
            return
        target = self.history_dir / style / f"{(past[-1].number if past else 0) + 1:04d}"
        target.mkdir(parents=True)
        shutil.copyfile(adapter, target / ADAPTER_FILE_NAME)
        shutil.copyfile(card, target / CARD_FILE_NAME)
        meta = {"version": version, "published": time.time(), "note": note}
        (target / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    def publish(self, output_dir: Path, style: str, note: str) -> str:
        """Install a run's adapter as `style` (the CLI's publish); returns the new version."""
        if style == PREVIEW_STYLE:
            raise ConfigError(f"'{PREVIEW_STYLE}' is the studio's staging name; pick the style's own name")
        self._record(style, "before the studio's first publish")
        result = publish(output_dir, style, self.styles_dir)
        self._record(style, note)
        self.unstage()
        return file_version(result.adapter_path)

    def rollback(self, style: str, number: int) -> str:
        """Put history entry `number` back as the style's adapter and card; returns its version."""
        match = [v for v in self.history(style) if v.number == number]
        if not match:
            raise ConfigError(f"style {style!r} has no version #{number}; pick one from its history")
        folder = self.styles_dir / style
        for name in (CARD_FILE_NAME, ADAPTER_FILE_NAME):
            temp = folder / f".{name}.rollback{os.getpid()}"
            shutil.copyfile(match[0].folder / name, temp)
            os.replace(temp, folder / name)
        return match[0].version

    def stage(self, output_dir: Path) -> str:
        """Put a run's adapter into `styles/studio-preview/` as an overlay; returns its version."""
        source = find_adapter(output_dir)
        folder = self.styles_dir / PREVIEW_STYLE
        folder.mkdir(parents=True, exist_ok=True)
        card = {
            "name": PREVIEW_STYLE,
            "display_name": "studio preview (staging, not published)",
            "kind": "overlay",
            "adapter": ADAPTER_FILE_NAME,
            "default_weight": 0.0,
            "prompt": {"subject": "{subject}", "scene": "", "style": "", "details": ""},
            "aliases": [PREVIEW_STYLE],
        }
        temp = folder / f".{ADAPTER_FILE_NAME}.tmp{os.getpid()}"
        shutil.copyfile(source, temp)
        os.replace(temp, folder / ADAPTER_FILE_NAME)
        (folder / CARD_FILE_NAME).write_text(yaml.safe_dump(card, allow_unicode=True), encoding="utf-8")
        return file_version(folder / ADAPTER_FILE_NAME)

    def unstage(self) -> None:
        shutil.rmtree(self.styles_dir / PREVIEW_STYLE, ignore_errors=True)
