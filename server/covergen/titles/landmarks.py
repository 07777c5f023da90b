"""The landmark table (`styles/landmarks.yaml`): named places and things that need a picture,
not a word. 黄鹤楼 is not "yellow crane" plus "building" but "yellow crane tower, multi-eaved
pavilion on a hill".

    version: 1
    places:                # keyed by the city (or municipality/province) name in regions.yaml
      武汉: {黄鹤楼: "yellow crane tower, multi-eaved pavilion on a hill", ...}
    things:                # entities that belong to no one city
      大熊猫: giant panda eating bamboo

Keys are runs of Chinese characters (two or more); values plain English (letters, digits,
spaces, apostrophes, hyphens, commas), never prompt syntax. A name may appear only once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from covergen.errors import ConfigError

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff]{2,}$")
_PICTURE = re.compile(r"^[a-z0-9][a-z0-9 ',-]*[a-z0-9]$")


@dataclass(frozen=True)
class Landmarks:
    """Name -> picture phrase, and which landmark names each place lists."""

    pictures: Mapping[str, str]
    by_place: Mapping[str, tuple[str, ...]]

    @classmethod
    def empty(cls) -> Landmarks:
        return cls({}, {})

    @classmethod
    def load(cls, path: Path) -> Landmarks:
        """Read and check `landmarks.yaml`."""
        try:
            raw: Any = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read landmarks {path}: {exc}") from exc
        if not isinstance(raw, Mapping) or raw.get("version") != 1:
            raise ConfigError(f"landmarks {path} must be a mapping with version: 1, places and things")
        pictures: dict[str, str] = {}
        by_place: dict[str, tuple[str, ...]] = {}
        sections = {**(raw.get("places") or {}), "things": raw.get("things") or {}}
        for place, entries in sections.items():
            if not isinstance(entries, Mapping):
                raise ConfigError(f"landmarks {path} place '{place}' must map names to picture phrases")
            names = []
            for key, value in entries.items():
                name = unicodedata.normalize("NFKC", str(key)).strip()
                picture = " ".join(str(value or "").lower().split())
                if not _NAME.fullmatch(name):
                    raise ConfigError(
                        f"landmarks {path} name {key!r} under '{place}' must be two or more Chinese characters"
                    )
                if not _PICTURE.fullmatch(picture):
                    raise ConfigError(
                        f"landmarks {path} '{name}' maps to {value!r}; use plain English words "
                        f"(letters, digits, spaces, apostrophes, hyphens, commas; no prompt syntax)"
                    )
                if name in pictures:
                    raise ConfigError(f"landmarks {path} lists '{name}' twice; keep one")
                pictures[name] = picture
                names.append(name)
            by_place[str(place)] = tuple(names)
        return cls(pictures, by_place)
