"""The prompt builder: a news title plus a stack of style cards -> a CLIP-sized English prompt.

Titles are mostly Chinese and SD 1.5's text encoder reads English. A title (NFKC, control and
format characters removed, traditional script read as simplified through OpenCC) contributes
English subject words from, in this order (`covergen.titles.reader`):

    glossary (styles/glossary.yaml, curated, wins)
      -> landmarks (styles/landmarks.yaml: 黄鹤楼 -> "yellow crane tower, multi-eaved pavilion ...")
      -> dictionary (CC-CEDICT: one concrete sense per jieba word, by part of speech; numbers,
         dates and function words dropped) or, when configured, a local MarianMT translator
      -> plain ASCII words (`[A-Za-z][A-Za-z0-9-]*`, lower-cased, minus a stop-list).

Every contributed word is whitelisted (letters, digits, spaces, apostrophes, hyphens), so prompt
syntax in a title or a dictionary sense (`<lora:x:1>`, `(word:1.5)`, `{scene}`, `[`, `|`,
control and bidi characters, emoji) never reaches the prompt and a title cannot pick adapters.
Subject words are ordered by how paintable they are (glossary and landmarks, then nouns and
places, then activities, then the rest; title order within a rank; a title's own ASCII words rank
with the glossary), then the style's template.

The prompt must fit CLIP's 77-token window (75 plus BOS/EOS). The caller passes a token counter
(the pipeline's CLIP tokenizer); without one a conservative estimate is used. Over budget, the
builder drops subject words from the end (keeping the first), then the primary style's details,
then its scene, then the subject itself; style parts and trigger words are never dropped.

The tone guard (`covergen.titles.tone`, styles/tone.yaml) marks titles about disasters,
accidents, deaths, crimes and mourning; `guard_tone` and `build(..., tone=...)` then paint them
with the neutral default style and a restrained template.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from covergen.errors import ConfigError
from covergen.plain_text import plain_text
from covergen.regions import StyleWeight
from covergen.styles import SUBJECT_PLACEHOLDER, StyleCard, StyleLibrary
from covergen.titles.dictionary import Dictionary
from covergen.titles.landmarks import Landmarks
from covergen.titles.reader import RANK_CURATED, RANK_NOUN, TitleReader
from covergen.titles.script import to_simplified
from covergen.titles.tone import ToneGuard
from covergen.titles.translator import MarianTranslator

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in

CLIP_MAX_TOKENS = 75  # 77 positions minus BOS and EOS
NEUTRAL_SUBJECT = "news story"
MAX_ASCII_WORD = 32  # longer runs of letters are not words a title means

_HAN_RUN = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
_ASCII_RUN = r"[A-Za-z0-9_-]+"
_TITLE_PIECES = re.compile(f"({_HAN_RUN})|({_ASCII_RUN})")
_HAN_TERM = re.compile(f"^{_HAN_RUN}$")
_HAN_PIECE = re.compile(_HAN_RUN)
_NOT_PLAIN = re.compile(r"[^a-z0-9' -]+")
MAX_TRANSLATION_WORDS = 24
_PLAIN_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
_ASCII_TERM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_GLOSSARY_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 '-]*$")
_SUBJECT_ITEM = re.compile(r"^[a-z0-9][a-z0-9 '-]*$")
_CLIP_PIECES = re.compile(r"[A-Za-z]+|[0-9]|\S")

# ASCII title words that add nothing to a picture, and words of prompt-weighting syntaxes.
# fmt: off
STOP_WORDS = frozenset(
    {
        "a", "an", "the", "and", "or", "but", "nor", "of", "to", "in", "on", "at", "for",
        "with", "by", "from", "as", "into", "onto", "over", "under", "about", "after", "before",
        "since", "until", "via", "vs", "per", "than", "then", "so", "if", "is", "are", "was",
        "were", "be", "been", "being", "am", "it", "its", "this", "that", "these", "those",
        "he", "she", "they", "we", "you", "i", "me", "my", "our", "your", "his", "her", "their",
        "them", "us", "has", "have", "had", "do", "does", "did", "will", "would", "can",
        "could", "should", "may", "might", "must", "shall", "not", "no", "yes", "says", "say",
        "said", "amid", "also", "just", "more", "most", "very", "up", "down", "out", "off",
        "new", "lora", "lyco", "lycoris", "hypernet", "embedding", "negative", "break",
        "addnet",
    }
)
# fmt: on
SYNTAX_WORDS = frozenset({"lora", "lyco", "lycoris", "hypernet", "embedding", "negative", "addnet"})


def estimate_clip_tokens(text: str) -> int:
    """A conservative stand-in for CLIP's BPE count: ceil(len/5) per run of ASCII letters, one
    per digit or punctuation mark, one per UTF-8 byte of anything else.

    On 800 prompts built from the starter cards and glossary it over-counted the real CLIP
    vocabulary by 1.10x to 1.5x (never under). Rare letter strings from titles (`xzqj` is four
    CLIP tokens) can be under-counted: pass the real tokenizer wherever one is loaded.
    """
    total = 0
    for piece in _CLIP_PIECES.findall(text):
        if piece.isascii() and piece.isalpha():
            total += math.ceil(len(piece) / 5)
        else:
            total += len(piece.encode("utf-8", errors="replace"))
    return total


def sanitize_title(title: str) -> str:
    """NFKC, with control, format (bidi, zero-width), surrogate and private-use characters
    removed. Everything the prompt takes from a title is later whitelisted again."""
    return plain_text(title)


@dataclass(frozen=True)
class BuiltPrompt:
    """The prompts for one cover."""

    prompt: str
    negative_prompt: str
    subject_words: tuple[str, ...]  # what the title contributed (after budget trimming)


def load_glossary(path: Path) -> dict[str, str]:
    """Read `glossary.yaml` (`version: 1`, `terms: {section: {中文: english words}}`) into one
    flat mapping, rejecting duplicate keys and values that are not plain English words."""
    try:
        raw: Any = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read glossary {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"glossary {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, Mapping) or raw.get("version") != 1:
        raise ConfigError(f"glossary {path} must be a mapping with version: 1 and terms")
    sections = raw.get("terms")
    if not isinstance(sections, Mapping) or not sections:
        raise ConfigError(f"glossary {path} has no terms; add terms: {{section: {{中文: english}}}}")
    glossary: dict[str, str] = {}
    seen_in: dict[str, str] = {}
    for section, terms in sections.items():
        if not isinstance(terms, Mapping):
            raise ConfigError(f"glossary {path} section '{section}' must map Chinese terms to English words")
        for key, value in terms.items():
            term = unicodedata.normalize("NFKC", str(key)).strip()
            if term in seen_in:
                raise ConfigError(
                    f"glossary {path} defines '{term}' in sections '{seen_in[term]}' and "
                    f"'{section}'; keep one"
                )
            seen_in[term] = str(section)
            glossary[term] = str(value) if value is not None else ""
    _check_glossary(glossary, str(path))
    return glossary


def _check_glossary(glossary: Mapping[str, str], where: str) -> None:
    for term, english in glossary.items():
        if not (_HAN_TERM.fullmatch(term) or _ASCII_TERM.fullmatch(term)):
            raise ConfigError(
                f"glossary {where} term {term!r} must be all Chinese characters or one plain "
                f"ASCII word such as '5G' or 'GDP'; split or rename it"
            )
        if not _GLOSSARY_VALUE.fullmatch(english):
            raise ConfigError(
                f"glossary {where} term '{term}' maps to {english!r}; use plain English words "
                f"(letters, digits, spaces, apostrophes, hyphens; no prompt syntax)"
            )


class PromptBuilder:
    """Builds prompts from titles and style cards; one instance is shared by all requests."""

    def __init__(
        self,
        glossary: Mapping[str, str],
        count_tokens: Callable[[str], int] | None = None,
        max_tokens: int = CLIP_MAX_TOKENS,
        reserved_words: Iterable[str] = (),
        *,
        landmarks: Landmarks | None = None,
        dictionary: Dictionary | None = None,
        tone_guard: ToneGuard | None = None,
        translator: MarianTranslator | None = None,
    ) -> None:
        """`reserved_words`: words a title may never contribute, e.g. every style's trigger
        words (`StyleLibrary.trigger_words()`), so a title cannot spell another style's trigger.
        `landmarks`, `dictionary` and `tone_guard` are optional layers behind the glossary;
        a `translator`, when given, replaces the dictionary for titles it translates in time.
        """
        if max_tokens < 1:
            raise ConfigError(f"max_tokens {max_tokens} must be at least 1; CLIP's window is 75")
        glossary = {unicodedata.normalize("NFKC", k).strip(): v for k, v in glossary.items()}
        _check_glossary(glossary, "<mapping>")
        han_terms = {k: v.lower() for k, v in glossary.items() if _HAN_TERM.fullmatch(k)}
        self._ascii_terms = {
            k.casefold(): v.lower() for k, v in glossary.items() if not _HAN_TERM.fullmatch(k)
        }
        self._count_tokens = count_tokens or estimate_clip_tokens
        self._max_tokens = max_tokens
        self._reserved = frozenset(_words_of(reserved_words))
        self.landmarks = landmarks or Landmarks.empty()
        self.dictionary = dictionary
        self.tone_guard = tone_guard
        self.translator = translator
        self._reader = TitleReader(
            han_terms, self.landmarks.pictures, dictionary, places=self.landmarks.by_place
        )

    @classmethod
    def load(
        cls,
        glossary_path: Path,
        count_tokens: Callable[[str], int] | None = None,
        max_tokens: int = CLIP_MAX_TOKENS,
        reserved_words: Iterable[str] = (),
        *,
        dictionary: bool = True,
        translator: MarianTranslator | None = None,
    ) -> PromptBuilder:
        """A builder over the glossary file at `glossary_path`, with the `landmarks.yaml` and
        `tone.yaml` beside it when they exist and (unless `dictionary=False`) the bundled CC-CEDICT."""
        folder = Path(glossary_path).parent
        landmarks_path, tone_path = folder / "landmarks.yaml", folder / "tone.yaml"
        return cls(
            load_glossary(glossary_path),
            count_tokens,
            max_tokens,
            reserved_words,
            landmarks=Landmarks.load(landmarks_path) if landmarks_path.is_file() else None,
            dictionary=Dictionary.bundled() if dictionary else None,
            tone_guard=ToneGuard.load(tone_path) if tone_path.is_file() else None,
            translator=translator,
        )

    def with_budget(
        self, count_tokens: Callable[[str], int] | None, max_tokens: int = CLIP_MAX_TOKENS
    ) -> PromptBuilder:
        """The same builder with another token counter or budget, sharing the glossary and the
        (already initialised) jieba segmenter, e.g. once the pipeline's CLIP tokenizer is loaded.
        """
        if max_tokens < 1:
            raise ConfigError(f"max_tokens {max_tokens} must be at least 1; CLIP's window is 75")
        twin = copy.copy(self)
        twin._count_tokens = count_tokens or estimate_clip_tokens
        twin._max_tokens = max_tokens
        return twin

    def with_translator(self, translator: MarianTranslator | None) -> PromptBuilder:
        """The same builder (sharing glossary, dictionary and jieba) with another translator."""
        twin = copy.copy(self)
        twin.translator = translator
        return twin

    def warm_up(self) -> None:
        """Initialise jieba now (about 1.5 s, CPU-bound) instead of during the first request."""
        self._reader.warm_up()

    # ---- the tone guard ----------------------------------------------------------------------

    def tone_of(self, title: str) -> str:
        """RESTRAINED ("restrained") when the tone guard holds a sensitive term of `title`, else ""."""
        return self.tone_guard.tone_of_title(title) if self.tone_guard else ""

    def guard_tone(
        self, title: str, stack: Sequence[StyleWeight], library: StyleLibrary
    ) -> tuple[list[StyleWeight], str]:
        """The stack to paint `title` with and its tone: a sensitive title gets the neutral
        default style at its default weight and only non-festive overlays."""
        tone = self.tone_of(title)
        if not tone or self.tone_guard is None:
            return list(stack), ""
        return self.tone_guard.restrain_stack(stack, library), tone

    # ---- the title -> subject words ----------------------------------------------------------

    def subject_words(self, title: str) -> tuple[str, ...]:
        """English words the title contributes, most paintable first, deduplicated."""
        return self._subject_words(title, self._reserved)

    def _subject_words(self, title: str, reserved: frozenset[str]) -> tuple[str, ...]:
        text = to_simplified(sanitize_title(title))
        translated = self._translated(text)
        ranked: dict[str, int] = {}
        found = self._title_words(text, reserved, curated_only=translated is not None)
        for word, rank in itertools.chain(found, _translation_items(translated or "", reserved)):
            if word not in ranked:
                ranked[word] = rank
                if len(ranked) >= 2 * self._max_tokens:  # each word costs at least one token
                    break
        ordered = sorted(ranked, key=ranked.__getitem__)  # stable: title order within a rank
        return tuple(ordered[: self._max_tokens])

    def _translated(self, text: str) -> str | None:
        """The translator's English for a title holding Chinese, or None (none, failed, slow)."""
        if self.translator is None or not _HAN_PIECE.search(text):
            return None
        return self.translator.translate([text])[0]

    def _title_words(
        self, text: str, reserved: frozenset[str], curated_only: bool = False
    ) -> Iterator[tuple[str, int]]:
        for match in _TITLE_PIECES.finditer(text):
            han, ascii_run = match.groups()
            if han:
                for reading in self._reader.read(han):
                    if curated_only and reading.rank != RANK_CURATED:
                        continue  # the translator speaks for everything but glossary and landmarks
                    for item in reading.english.split(","):
                        word = _clean_item(item, reserved)
                        if word:
                            yield word, reading.rank
            else:
                english = self._ascii_terms.get(ascii_run.casefold())
                if english is not None:
                    yield english, RANK_CURATED
                    continue
                word = ascii_run.strip("-").lower()
                if (
                    _PLAIN_WORD.fullmatch(word)
                    and len(word) <= MAX_ASCII_WORD
                    and word not in STOP_WORDS
                    and word not in reserved
                ):
                    yield word, RANK_CURATED  # the title's own English (names, acronyms)

    # ---- cards + subject -> prompt -----------------------------------------------------------

    def build(self, title: str, base: StyleCard, stack: Sequence[StyleCard], tone: str = "") -> BuiltPrompt:
        """The prompt for `title` under `stack` (in order; `base` when it holds no non-overlay).

        The first non-overlay card of `stack` (else `base`) gives the four template parts;
        every other stacked card adds its style part and trigger words. The negative prompt is
        the union of all cards' negative prompts, `base` included. With `tone` "restrained"
        (from `guard_tone`) `base` and its place in `stack` take the tone guard's template.
        """
        if tone and self.tone_guard is not None:
            restrained = self.tone_guard.restrained_card(base)
            stack = [restrained if card.name == base.name else card for card in stack]
            base = restrained
        primary = next((card for card in stack if card.kind != "overlay"), base)
        further = [card for card in _unique(stack) if card.name != primary.name]
        reserved = self._reserved | frozenset(
            _words_of(w for card in (primary, *further) for w in card.trigger_words)
        )
        words = self._subject_words(title, reserved)
        prompt, kept = self._fit(primary, further, words)
        negative = self._negative(_unique([*stack, base]))
        return BuiltPrompt(prompt=prompt, negative_prompt=negative, subject_words=kept)

    def _compose(
        self,
        primary: StyleCard,
        further: Sequence[StyleCard],
        words: Sequence[str] | None,
        details: bool,
        scene: bool,
    ) -> str:
        parts = list(primary.trigger_words)
        if words is not None:
            subject = ", ".join(words) if words else NEUTRAL_SUBJECT
            parts.append(primary.prompt.subject.replace(SUBJECT_PLACEHOLDER, subject))
        if scene:
            parts.append(primary.prompt.scene)
        parts.append(primary.prompt.style)
        if details:
            parts.append(primary.prompt.details)
        for card in further:
            parts.append(card.prompt.style)
            parts.extend(card.trigger_words)
        return ", ".join(part.strip() for part in parts if part.strip())

    def _fits(self, prompt: str) -> bool:
        return self._count_tokens(prompt) <= self._max_tokens

    def _fit(
        self, primary: StyleCard, further: Sequence[StyleCard], words: tuple[str, ...]
    ) -> tuple[str, tuple[str, ...]]:
        # Most subject words that fit with every part present (binary search; fits is monotone).
        low, high = 0, len(words)
        while low < high:
            middle = (low + high + 1) // 2
            if self._fits(self._compose(primary, further, words[:middle], True, True)):
                low = middle
            else:
                high = middle - 1
        if low > 0 or not words:
            prompt = self._compose(primary, further, words[:low], True, True)
            if self._fits(prompt):
                return prompt, words[:low]
        keep = words[:1]
        for details, scene in ((False, True), (False, False)):
            prompt = self._compose(primary, further, keep, details, scene)
            if self._fits(prompt):
                return prompt, keep
        prompt = self._compose(primary, further, None, False, False)
        if self._fits(prompt):
            return prompt, ()
        names = ", ".join(card.name for card in (primary, *further))
        raise ConfigError(
            f"the style parts and trigger words of {names} alone take "
            f"{self._count_tokens(prompt)} tokens, over the budget of {self._max_tokens}; "
            f"shorten prompt.style or trigger_words in their style.yaml files"
        )

    def _negative(self, cards: Iterable[StyleCard]) -> str:
        terms: dict[str, str] = {}
        for card in cards:
            for term in card.negative_prompt.split(","):
                term = term.strip()
                if term:
                    terms.setdefault(term.casefold(), term)
        kept = list(terms.values())
        while kept and not self._fits(", ".join(kept)):
            kept.pop()
        return ", ".join(kept)


def _unique(cards: Iterable[StyleCard]) -> list[StyleCard]:
    seen: dict[str, StyleCard] = {}
    for card in cards:
        seen.setdefault(card.name, card)
    return list(seen.values())


def _clean_item(item: str, reserved: frozenset[str]) -> str:
    """One subject item as whitelisted lower-case words, minus reserved (trigger) words; empty
    when nothing is left but stop words."""
    words = [w for w in item.lower().split() if w not in reserved and w not in SYNTAX_WORDS]
    if all(w in STOP_WORDS for w in words):
        return ""
    text = " ".join(words).strip(" '-")
    return text if _SUBJECT_ITEM.fullmatch(text) and len(text) <= 4 * MAX_ASCII_WORD else ""


def _translation_items(text: str, reserved: frozenset[str]) -> Iterator[tuple[str, int]]:
    """A translation as subject items (split at punctuation and "and"), plain words only, stop
    and reserved words out, at most MAX_TRANSLATION_WORDS words in all."""
    budget = MAX_TRANSLATION_WORDS
    for piece in re.split(r"[,;.:!?()\[\]]| and ", text.lower()):
        words = [w for w in _NOT_PLAIN.sub(" ", piece).split() if w not in STOP_WORDS]
        words = [w for w in words if w not in reserved and w not in SYNTAX_WORDS][:budget]
        item = _clean_item(" ".join(words), reserved)
        if item:
            budget -= len(words)
            yield item, RANK_NOUN
        if budget <= 0:
            return


def _words_of(phrases: Iterable[str]) -> Iterator[str]:
    for phrase in phrases:
        yield from (word.lower() for word in re.findall(r"[A-Za-z0-9-]+", phrase))
