"""Reading a run of Chinese characters into ranked English subject words.

`TitleReader.read(han_run)` segments with jieba's part-of-speech tokenizer (glossary and landmark
terms added as whole words) and maps each segment through, in order:

  1. the glossary (curated; always wins),
  2. the landmark table (a picture phrase for a named place or thing),
  3. the dictionary (CC-CEDICT, `Dictionary.sense`), by part of speech:
     nouns, places, names and verbal nouns take a noun sense; verbs only a sense with an object
     ("night trip", "line up"), never a bare verb; time words only when they paint (festivals,
     night, seasons); numbers, quantities, dates, pronouns, prepositions, conjunctions, particles,
     adverbs and direction words are dropped;
  4. a segment none of them holds is split into the longest known words inside it (forward
     maximum matching over all three); a single character left over counts only with a noun sense.

Each word comes with a rank (0 glossary/landmark, 1 noun or place, 2 activity, 3 other) so the
prompt keeps the most paintable words when CLIP's window is short.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import jieba
import jieba.posseg

from covergen.titles.dictionary import Dictionary

RANK_CURATED, RANK_NOUN, RANK_ACTIVITY, RANK_OTHER = 0, 1, 2, 3

_NOUNS = frozenset({"n", "nr", "nr1", "nr2", "nrj", "nrf", "nrt", "ns", "nsf", "nt", "nz", "nw", "nl",
                    "ng", "s", "j", "an", "vn", "i", "l", "x", "eng"})  # fmt: skip
_VERBS = frozenset({"v", "vd", "vg", "vi", "vl", "vf", "vx"})
_ADJECTIVES = frozenset({"a", "ad", "ag", "al", "b", "bl", "z"})
_TIME = frozenset({"t", "tg"})
_PAINTABLE_TIME = re.compile(r"\b(festival|night|nighttime|evening|dawn|dusk|sunrise|sunset|spring|summer|"
                             r"autumn|winter|new year|lantern|solstice|equinox)\b")  # fmt: skip
# One-character adjectives and time words that still paint (红 red, 夜 night, 热 hot).
_PAINTABLE_SINGLE = frozenset({"red", "green", "blue", "yellow", "white", "black", "golden", "gold", "purple",
                               "pink", "grey", "gray", "hot", "cold", "night", "evening", "morning", "dawn",
                               "spring", "summer", "autumn", "winter", "old", "ancient", "snow", "rain"})  # fmt: skip
_NUMERAL = re.compile(r"^[零〇一二三四五六七八九十百千万亿两几第多余数半]+.?$")


@dataclass(frozen=True)
class Reading:
    """One English word or phrase a title contributes, and how paintable it is (0 best)."""

    english: str
    rank: int


class TitleReader:
    """Glossary, landmarks and dictionary over jieba; one instance is shared by all requests."""

    # jieba's own dictionary has common words at frequencies in the thousands to hundreds of
    # thousands; this floor makes a glossary term win over a longer or shorter dictionary word
    # in context (龙井 + 茶园, not 龙井茶 + 园). Landmarks get more: they name the whole place.
    TERM_FREQUENCY_FLOOR = 20_000
    LANDMARK_FREQUENCY_FLOOR = 200_000

    def __init__(
        self,
        glossary: Mapping[str, str],
        landmarks: Mapping[str, str],
        dictionary: Dictionary | None,
    ) -> None:
        self._glossary = dict(glossary)
        self._landmarks = dict(landmarks)
        self._dictionary = dictionary
        self._longest = max(
            [max(map(len, self._glossary), default=0), max(map(len, self._landmarks), default=0),
             dictionary.longest if dictionary else 0]
        )  # fmt: skip
        self._tokenizer: jieba.posseg.POSTokenizer | None = None
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Initialise jieba now (about 1.5 s, CPU-bound) instead of during the first request."""
        self._ready()

    def read(self, han_run: str) -> Iterator[Reading]:
        """Ranked English words of a run of Chinese characters, in title order."""
        for segment, flag in self._ready().cut(han_run, HMM=False):
            yield from self._segment(segment, flag)

    def _segment(self, segment: str, flag: str) -> Iterator[Reading]:
        curated = self._curated(segment)
        if curated is not None:
            yield Reading(curated, RANK_CURATED)
            return
        if _NUMERAL.fullmatch(segment) or flag in ("m", "mq", "q"):
            return
        word = self._looked_up(segment, flag)
        if word is not None:
            yield word
            return
        if len(segment) > 1 and (flag in _NOUNS or flag in _VERBS or flag in _ADJECTIVES):
            yield from self._split(segment)

    def _curated(self, text: str) -> str | None:
        english = self._glossary.get(text)
        return english if english is not None else self._landmarks.get(text)

    def _looked_up(self, segment: str, flag: str) -> Reading | None:
        dictionary = self._dictionary
        if dictionary is None:
            return None
        single = len(segment) == 1
        if flag in _NOUNS:
            sense = dictionary.sense(segment, allow_bare_verb=flag == "vn" and not single, synonym=not single)
            return Reading(sense, RANK_NOUN) if sense else None
        if single:  # one-character verbs, adjectives and time words: only the few that paint
            sense = dictionary.sense(segment) if flag in _ADJECTIVES or flag in _TIME else None
            return Reading(sense, RANK_OTHER) if sense in _PAINTABLE_SINGLE else None
        if flag in _VERBS:
            sense = dictionary.sense(segment)
            if sense:
                return Reading(sense, RANK_ACTIVITY)
            bare = dictionary.sense(segment, allow_bare_verb=True)  # "collapse", "search"
            return Reading(bare, RANK_OTHER) if bare else None
        if flag in _TIME:
            sense = dictionary.sense(segment)
            return Reading(sense, RANK_ACTIVITY) if sense and _PAINTABLE_TIME.search(sense) else None
        if flag in _ADJECTIVES:
            sense = dictionary.sense(segment)
            return Reading(sense, RANK_OTHER) if sense else None
        return None  # pronouns, prepositions, conjunctions, particles, adverbs, directions, ...

    def _split(self, segment: str) -> Iterator[Reading]:
        """Forward maximum matching over glossary, landmarks and dictionary inside a segment;
        each piece then goes through the part-of-speech rules with jieba's tag for it alone."""
        dictionary = self._dictionary
        tags = self._ready().word_tag_tab
        start = 0
        while start < len(segment):
            for end in range(min(len(segment), start + self._longest), start + 1, -1):
                piece = segment[start:end]
                curated = self._curated(piece)
                if curated is not None:
                    yield Reading(curated, RANK_CURATED)
                    break
                if dictionary is not None and piece in dictionary:
                    if not _NUMERAL.fullmatch(piece) and (
                        word := self._looked_up(piece, tags.get(piece, "n"))
                    ):
                        yield word
                    break
            else:
                end = start + 1
                character = segment[start]
                curated = self._curated(character)
                if curated is not None:
                    yield Reading(curated, RANK_CURATED)
                    start = end
                    continue
                # A character left alone goes through the part-of-speech rules with jieba's tag
                # for it alone (人 a noun: yes; 被 "quilt", a preposition: no; 红 "red": yes).
                tag = tags.get(character, "x")
                if tag not in {"x", "eng", "m", "q"} and not _NUMERAL.fullmatch(character):
                    word = self._looked_up(character, tag)
                    if word is not None:
                        yield Reading(word.english, RANK_OTHER)
            start = end

    def _ready(self) -> jieba.posseg.POSTokenizer:
        with self._lock:
            if self._tokenizer is None:
                jieba.setLogLevel(logging.WARNING)
                tokenizer = jieba.Tokenizer()
                tokenizer.initialize()
                for term in self._glossary:
                    if len(term) > 1:
                        frequency = max(tokenizer.suggest_freq(term, False), self.TERM_FREQUENCY_FLOOR)
                        tokenizer.add_word(term, freq=frequency, tag="n")
                for term in self._landmarks:
                    if len(term) > 1:
                        frequency = max(tokenizer.suggest_freq(term, False), self.LANDMARK_FREQUENCY_FLOOR)
                        tokenizer.add_word(term, freq=frequency, tag="ns")
                self._tokenizer = jieba.posseg.POSTokenizer(tokenizer)
            return self._tokenizer
