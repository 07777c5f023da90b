"""The tone guard: a headline about a disaster, an accident, a death, a crime or mourning is not
painted as a cheerful regional scene.

`ToneGuard.load(styles/tone.yaml)` reads the sensitive terms (Chinese, matched as substrings of
the sanitised, simplified title), the festive overlay styles to drop and a restrained template.
`tone_of(title)` is "" (normal) or "restrained"; `restrain_stack` swaps a resolved stack for the
neutral `default` style at its default weight, keeping only non-festive overlays; `restrained_card`
is the base card with the restrained template and a negative prompt against festive imagery.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from covergen.errors import ConfigError
from covergen.regions import StyleWeight
from covergen.styles import PromptParts, StyleCard, StyleLibrary
from covergen.titles.script import to_simplified

RESTRAINED = "restrained"  # GenerateCoverResponse.tone when the guard applied; "" otherwise
_TERM = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff]{2,}$")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class ToneGuard:
    """Sensitive terms, festive overlays and the restrained template, from `tone.yaml`."""

    terms: frozenset[str]
    festive_styles: frozenset[str]
    template: PromptParts
    negative_prompt: str

    @classmethod
    def load(cls, path: Path) -> ToneGuard:
        """Read and check `tone.yaml` (`version: 1`, `topics`, `festive_styles`, `restrained`)."""
        try:
            raw: Any = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read tone guard {path}: {exc}") from exc
        if not isinstance(raw, Mapping) or raw.get("version") != 1:
            raise ConfigError(f"tone guard {path} must be a mapping with version: 1, topics and restrained")
        topics = raw.get("topics")
        if not isinstance(topics, Mapping) or not topics:
            raise ConfigError(f"tone guard {path} has no topics; add topics: {{disaster: [地震, ...]}}")
        terms: set[str] = set()
        for topic, listed in topics.items():
            if not isinstance(listed, list) or not listed:
                raise ConfigError(
                    f"tone guard {path} topic '{topic}' must be a non-empty list of Chinese terms"
                )
            for term in listed:
                text = unicodedata.normalize("NFKC", str(term)).strip()
                if not _TERM.fullmatch(text):
                    raise ConfigError(
                        f"tone guard {path} topic '{topic}' term {term!r} must be two or more Chinese "
                        f"characters (a single character would fire inside unrelated words)"
                    )
                terms.add(to_simplified(text))
        festive = raw.get("festive_styles", [])
        if not isinstance(festive, list) or not all(isinstance(name, str) for name in festive):
            raise ConfigError(
                f"tone guard {path} festive_styles must be a list of style names, e.g. [spring]"
            )
        try:
            template = PromptParts.model_validate(raw.get("restrained"))
        except ValidationError as exc:
            raise ConfigError(
                f"tone guard {path} restrained must have subject (with {{subject}}), scene, style "
                f"and details: {exc.errors()[0]['msg']}"
            ) from exc
        negative = raw.get("negative_prompt", "")
        if not isinstance(negative, str) or "{" in negative or "}" in negative:
            raise ConfigError(f"tone guard {path} negative_prompt must be plain text without braces")
        return cls(frozenset(terms), frozenset(festive), template, negative)

    def check_styles(self, library: StyleLibrary) -> None:
        """Every festive style must exist, so a typo does not silently keep an overlay."""
        known = {card.name for card in library}
        missing = sorted(self.festive_styles - known)
        if missing:
            raise ConfigError(
                f"tone guard festive_styles names {', '.join(missing)}, which is not a style; "
                f"known styles: {', '.join(sorted(known))}"
            )

    def tone_of(self, simplified_title: str) -> str:
        """RESTRAINED when the (sanitised, simplified) title holds a sensitive term, else ""."""
        return RESTRAINED if any(term in simplified_title for term in self.terms) else ""

    def tone_of_title(self, title: str) -> str:
        """`tone_of` for a raw title (NFKC, controls removed, traditional -> simplified)."""
        text = unicodedata.normalize("NFKC", title)
        text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
        return self.tone_of(to_simplified(text))

    def restrain_stack(self, stack: Sequence[StyleWeight], library: StyleLibrary) -> list[StyleWeight]:
        """The neutral default style at its default weight, plus the non-festive overlays."""
        base = library.get("default")
        kept = [StyleWeight(base.name, base.default_weight)]
        for item in stack:
            card = library.get(item.style)
            if card.kind == "overlay" and card.name not in self.festive_styles:
                kept.append(item)
        return kept

    def restrained_card(self, base: StyleCard) -> StyleCard:
        """`base` with the restrained template and a negative prompt against festive imagery."""
        negative = ", ".join(part for part in (base.negative_prompt, self.negative_prompt) if part)
        return base.model_copy(update={"prompt": self.template, "negative_prompt": negative})
