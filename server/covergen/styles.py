"""Style cards and the library that holds them.

A style is one folder under the styles root, `styles/<name>/style.yaml`, optionally next to the
LoRA adapter file the card names. This module owns reading and validating those cards, looking
them up by name or by theme tag, and turning a card's adapter name into a path that is
guaranteed to stay inside the styles root. It also owns `normalize_tag`, the one rule by which
free-form tags (region tags, theme tags) are compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from covergen.config_files import Problem, describe_validation_error, load_yaml_mapping
from covergen.errors import AdapterRejected, ConfigError, StyleNotFound
from covergen.plain_text import plain_text

STYLE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
CARD_FILE_NAME = "style.yaml"
SUBJECT_PLACEHOLDER = "{subject}"
MIN_WEIGHT = 0.0
MAX_WEIGHT = 2.0

# Separators people put in pinyin, codes and theme tags: "Hang Zhou", "CN-ZJ", "ink_wash", "Xi'an".
_TAG_SEPARATORS = re.compile(r"[\s\-_'’·.]+")


def _invalid(error_type: str, reason: str) -> PydanticCustomError:
    """A pydantic error whose message is exactly `reason` (pydantic templates know no `!r`)."""
    return PydanticCustomError(error_type, "{reason}", {"reason": reason})


def normalize_tag(tag: str) -> str:
    """The comparison form of a tag: NFKC, no control/format/bidi characters, case-folded,
    with whitespace and the separators `- _ ' · .` removed.

    `" Hang-Zhou\\u202e "` and `"hangzhou"` compare equal; so do `"ＣＮ－ＺＪ"` and `"cn-zj"`.
    """
    return _TAG_SEPARATORS.sub("", plain_text(tag).casefold())


class PromptParts(BaseModel):
    """The four parts of a style's positive prompt, in the order they are joined."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: str
    scene: str
    style: str
    details: str

    @field_validator("subject")
    @classmethod
    def _subject_has_placeholder(cls, value: str) -> str:
        if value.count(SUBJECT_PLACEHOLDER) != 1:
            raise _invalid(
                "subject_placeholder",
                f"must contain the placeholder {SUBJECT_PLACEHOLDER} exactly once (got {value!r})",
            )
        return value

    @field_validator("scene", "style", "details")
    @classmethod
    def _no_braces(cls, value: str) -> str:
        if "{" in value or "}" in value:
            raise _invalid("braces", f"must not contain '{{' or '}}' (got {value!r})")
        return value


class StyleCard(BaseModel):
    """One validated `style.yaml`: what a style is called, what adapter it uses, how it prompts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    display_name: str
    kind: Literal["regional", "overlay", "base"]
    adapter: str | None = None
    default_weight: float = 1.0
    prompt: PromptParts
    negative_prompt: str = ""
    trigger_words: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name_is_safe(cls, value: str) -> str:
        if not STYLE_NAME_PATTERN.fullmatch(value):
            raise _invalid(
                "style_name",
                f"{value!r} is not a valid style name: use 1-64 characters from a-z, 0-9, '_' "
                "and '-', starting with a letter or digit (no '/', '\\' or '..')",
            )
        return value

    @field_validator("adapter")
    @classmethod
    def _adapter_is_a_plain_file_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if (
            not value
            or "/" in value
            or "\\" in value
            or ".." in value
            or Path(value).is_absolute()
            or value.startswith("~")
        ):
            raise _invalid(
                "adapter_name",
                f"{value!r} must be a plain file name inside the style folder, such as "
                "'adapter.safetensors' (no '/', '\\', '..' or absolute paths)",
            )
        return value

    @field_validator("default_weight")
    @classmethod
    def _weight_in_range(cls, value: float) -> float:
        if not MIN_WEIGHT <= value <= MAX_WEIGHT:
            raise _invalid("weight_range", f"{value} is outside [{MIN_WEIGHT:g}, {MAX_WEIGHT:g}]")
        return value

    @field_validator("trigger_words")
    @classmethod
    def _trigger_words_are_plain(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for word in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _-]*", word):
                raise _invalid(
                    "trigger_word",
                    f"{word!r} must be plain words (letters, digits, spaces, '_' and '-')",
                )
        return value

    @field_validator("aliases")
    @classmethod
    def _aliases_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for alias in value:
            if not normalize_tag(alias):
                raise _invalid("alias", f"{alias!r} is empty after normalisation")
        return value


def _phrase_card_problem(style: str, card_path: Path) -> Callable[[Problem], str]:
    """One teaching sentence per card problem: what is wrong and where to fix it."""

    def phrase(problem: Problem) -> str:
        field = problem.key or "<card>"
        if problem.kind == "unknown":
            known = ", ".join(StyleCard.model_fields)
            return (
                f"style '{style}' has unknown key '{field}'; remove it from {card_path} "
                f"(known keys: {known}; prompt has subject, scene, style, details)"
            )
        if problem.kind == "missing":
            return f"style '{style}' is missing '{field}'; add {field} to {card_path}"
        if problem.type == "weight_range":
            return f"style '{style}' {field} {problem.input} is outside [0, 2]; set {field} in {card_path}"
        return f"style '{style}' {field} {problem.message}; set {field} in {card_path}"

    return phrase


def load_card(card_path: Path) -> StyleCard:
    """Read and validate one `style.yaml`; the card's name must equal its folder's name."""
    folder = card_path.parent.name
    raw = load_yaml_mapping(card_path, what="style card", holds="name, display_name, kind, prompt, ...")
    try:
        card = StyleCard.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, _phrase_card_problem(folder, card_path))) from exc
    if card.name != folder:
        raise ConfigError(
            f"style card {card_path} has name '{card.name}' but lives in folder '{folder}'; "
            f"set name: {folder} or rename the folder"
        )
    if card.kind == "overlay" and not card.aliases:
        raise ConfigError(
            f"overlay style '{card.name}' has no aliases, so no theme tag can select it; "
            f"add aliases (e.g. [{card.name}]) to {card_path}"
        )
    return card


@dataclass(frozen=True)
class StyleLibrary:
    """Every style card under one root, by name and by theme tag."""

    root: Path
    _cards: Mapping[str, StyleCard]
    _themes: Mapping[str, str]  # normalised theme tag -> overlay style name

    @classmethod
    def load(cls, root: Path) -> StyleLibrary:
        """Load `root/<name>/style.yaml` for every folder under `root` (hidden folders skipped).

        Raises ConfigError naming the file and the value to fix when a card is invalid, two
        overlays claim the same theme tag, or an adapter path would escape `root`.
        """
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"styles root {root} is not a directory; point styles_dir at it")
        cards: dict[str, StyleCard] = {}
        themes: dict[str, str] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.name.startswith((".", "__")):
                continue
            card_path = folder / CARD_FILE_NAME
            if not card_path.is_file():
                raise ConfigError(
                    f"style folder {folder} has no {CARD_FILE_NAME}; add a card or move the "
                    f"folder out of {root}"
                )
            card = load_card(card_path)
            cards[card.name] = card
            if card.kind != "overlay":
                continue
            for alias in (card.name, *card.aliases):
                key = normalize_tag(alias)
                owner = themes.setdefault(key, card.name)
                if owner != card.name:
                    raise ConfigError(
                        f"theme tag '{alias}' is claimed by overlays '{owner}' and "
                        f"'{card.name}'; remove it from aliases in one of their style.yaml files"
                    )
        if not cards:
            raise ConfigError(f"styles root {root} holds no style cards; add styles/<name>/")
        library = cls(root=root, _cards=cards, _themes=themes)
        for card in cards.values():
            try:
                library.adapter_path(card)
            except AdapterRejected as exc:
                raise ConfigError(str(exc)) from exc
        return library

    def get(self, name: str) -> StyleCard:
        """The card called `name`; StyleNotFound lists the known names."""
        card = self._cards.get(name)
        if card is None:
            raise StyleNotFound(f"unknown style {name!r}; known styles: {', '.join(self.names())}")
        return card

    def names(self) -> tuple[str, ...]:
        """Every style name, sorted."""
        return tuple(sorted(self._cards))

    def __iter__(self) -> Iterator[StyleCard]:
        return iter(self._cards[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._cards)

    def trigger_words(self) -> tuple[str, ...]:
        """Every trigger word of every card, for `PromptBuilder(reserved_words=...)`."""
        return tuple(dict.fromkeys(w for card in self for w in card.trigger_words))

    def theme_tags(self) -> tuple[str, ...]:
        """Every theme tag (normalised) that selects an overlay, sorted."""
        return tuple(sorted(self._themes))

    def overlay_for_theme(self, tag: str) -> StyleCard:
        """The overlay whose name or aliases match `tag` (compared by `normalize_tag`)."""
        name = self._themes.get(normalize_tag(tag))
        if name is None:
            raise StyleNotFound(
                f"no overlay style for theme {tag!r}; known themes: {', '.join(self.theme_tags())}"
            )
        return self._cards[name]

    def adapter_path(self, card: StyleCard) -> Path | None:
        """Where `card`'s adapter file lives (it may not exist yet), or None if it has none.

        The path is resolved, symlinks included, and must stay inside the styles root;
        otherwise AdapterRejected says which card to fix.
        """
        if card.adapter is None:
            return None
        root = self.root.resolve()
        candidate = (root / card.name / card.adapter).resolve()
        if not candidate.is_relative_to(root / card.name):
            raise AdapterRejected(
                f"style '{card.name}' adapter '{card.adapter}' resolves to {candidate}, outside "
                f"{root / card.name}; replace the symlink with the real file or fix adapter in "
                f"{self.root / card.name / CARD_FILE_NAME}"
            )
        return candidate
