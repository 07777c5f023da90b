"""Reading a run of Chinese characters into ranked English subject words.

`TitleReader.read(han_run)` segments with jieba's part-of-speech tokenizer (glossary and landmark
terms added as whole words) and maps each segment through, in order:

  1. the glossary (curated; always wins); a one-character entry is the news sense of a
     morpheme (面 noodles, 店 shop) and ranks as a noun;
  2. the landmark table (a picture phrase for a named place or thing); a curated term that
     starts with a city (淄博烧烤, 柳州螺蛳粉) also brings the city;
  3. the dictionary (CC-CEDICT, `Dictionary.sense`), by part of speech:
     nouns, places, names and verbal nouns take a noun sense (a noun with only verb senses reads
     like a verb); verbs a noun sense, else their first verb sense, never a name reading, and a
     bare verb only when it paints (倒塌 "collapse", not 举办 "conduct"); one-character verbs only
     from a short list of actions (跑 run, 摘 pick); time words only when they paint
     (festivals, night, seasons, weekend); direction words only when they name a region (北方
     north, 沿海 coastal); numbers, quantities, dates, pronouns, prepositions, conjunctions,
     particles and adverbs are dropped, and so are abstract senses (问题 "question, problem");
  4. a segment none of them holds is split into the longest known words inside it (forward
     maximum matching over all three); a single character left over counts only with a noun sense.

Each word comes with a rank (0 glossary/landmark, 1 noun or place, 2 activity, 3 other) so the
prompt keeps the most paintable words when CLIP's window is short.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import jieba
import jieba.posseg

from covergen.titles.dictionary import Dictionary, clean_sense

RANK_CURATED, RANK_NOUN, RANK_ACTIVITY, RANK_OTHER = 0, 1, 2, 3

_NOUNS = frozenset({"n", "nr", "nr1", "nr2", "nrj", "nrf", "nrt", "ns", "nsf", "nt", "nz", "nw", "nl",
                    "ng", "s", "j", "an", "vn", "i", "l", "x", "eng"})  # fmt: skip
_VERBS = frozenset({"v", "vd", "vg", "vi", "vl", "vf", "vx"})
_ADJECTIVES = frozenset({"a", "ad", "ag", "al", "b", "bl", "z"})
_TIME = frozenset({"t", "tg"})
_PAINTABLE_TIME = re.compile(r"\b(festival|night|nighttime|evening|dawn|dusk|sunrise|sunset|spring|summer|"
                             r"autumn|winter|new year|lantern|solstice|equinox|morning|afternoon|noon|midday|"
                             r"midnight|weekend|holiday|holidays|vacation|season|frost|snow|rain|dew|heat|cold)\b")  # fmt: skip
# One-character adjectives and time words that still paint (红 red, 夜 night, 热 hot).
_PAINTABLE_SINGLE = frozenset({"red", "green", "blue", "yellow", "white", "black", "golden", "gold", "purple",
                               "pink", "grey", "gray", "hot", "cold", "night", "evening", "morning", "dawn",
                               "spring", "summer", "autumn", "winter", "old", "ancient", "snow", "rain"})  # fmt: skip
# One-character verbs that paint an action (跑 run, 摘 pick, 淹 flood); any sense of the
# character may match, so 摘 "to take/to borrow/to pick (flowers, fruit etc)" gives "pick".
_PAINTABLE_VERBS = frozenset({"run", "swim", "dance", "sing", "fly", "ride", "climb", "fish", "pick", "pluck",
                              "cook", "burn", "flood", "drown", "rise", "collapse", "explode", "skate", "ski",
                              "row", "paint", "plant", "harvest", "cheer", "march", "parade",
                              "race", "jump", "dive", "bloom", "blossom", "melt", "freeze"})  # fmt: skip
# Bare verb senses that paint nothing (举办 "conduct", 开幕 "open", 吸引 "attract"): a verb whose
# chosen sense is one of these is dropped unless it has a sense with an object.
_ABSTRACT_VERBS = frozenset({"hold", "conduct", "open", "start", "begin", "launch", "become", "enter", "attract",
                             "influence", "affect", "promote", "implement", "carry", "achieve", "complete",
                             "finish", "improve", "develop", "use", "make",
                             "take", "get", "give", "have", "be", "go", "come", "welcome", "receive", "cause",
                             "lead", "bring", "push", "help", "assist", "support", "continue", "appear",
                             "raise", "set", "put", "let", "allow", "provide", "issue", "publish", "announce",
                             "release", "expand", "upgrade", "extend", "prolong", "lengthen", "operate",
                             "inaugurate", "realize", "reach", "arrive", "return", "pass", "experience",
                             "face", "meet", "encounter", "benefit", "profit", "obtain", "gain", "attend",
                             "participate", "join", "plan", "decide", "seal", "indicate", "require", "need",
                             "accept", "adopt", "change", "turn", "keep", "maintain", "stay", "remain",
                             "introduce", "present", "express", "strengthen", "ensure", "guarantee",
                             "exist", "occur", "happen", "follow", "stimulate", "drive", "boost", "push out",
                             "establish", "strike a pose", "put online", "spur"})  # fmt: skip
# Abstract noun senses that paint nothing and crowd CLIP's window (问题 "question, problem").
_ABSTRACT_NOUNS = frozenset({"question", "problem", "issue", "influence", "effect", "aspect", "situation",
                             "circumstance", "way", "method", "means", "period", "level", "degree",
                             "phenomenon", "process", "mechanism", "measure", "matter", "thing", "affair",
                             "content", "factor", "element", "principle", "concept", "idea", "meaning",
                             "significance", "role", "function", "capacity", "policy", "standard", "norm",
                             "result", "consequence", "reason", "cause", "purpose", "aim", "goal", "trend",
                             "tendency", "status", "condition", "basis", "scope", "range", "scale",
                             "direction", "innovation", "personality", "item", "thread", "face", "time",
                             "comprehensive", "all-around", "open-minded", "sustainable", "frequently"})  # fmt: skip
# Direction words (方位词) that name a region: 北方 north, 沿海 coastal, 海外 overseas.
_REGION_SENSE = re.compile(r"\b(north|south|east|west|northern|southern|eastern|western|northeast|northwest|"
                           r"southeast|southwest|coastal|coast|inland|overseas|abroad|border|frontier)\b")  # fmt: skip
_NUMERAL = re.compile(r"^[零〇一二三四五六七八九十百千万亿两几第多余数半]+.?$")
_DIGIT = re.compile(r"[零〇一二三四五六七八九十百千万亿两]")
_QUANTITY_TAGS = frozenset({"m", "mq", "q"})


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
        places: Iterable[str] = (),
    ) -> None:
        """`places`: names of cities and provinces (landmarks.yaml's `places`); a curated term
        that starts with one (淄博烧烤, 柳州螺蛳粉) also contributes the place."""
        self._glossary = dict(glossary)
        self._landmarks = dict(landmarks)
        self._dictionary = dictionary
        self._places = frozenset(place for place in places if len(place) > 1)
        self._longest = max(
            [max(map(len, self._glossary), default=0), max(map(len, self._landmarks), default=0),
             dictionary.longest if dictionary else 0]
        )  # fmt: skip
        self._tokenizer: jieba.posseg.POSTokenizer | None = None
        self._solar_terms: frozenset[str] = frozenset()  # filled with the tokenizer
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
            yield from self._place_of(segment, curated.english)
            yield curated
            return
        if self._quantity(segment, flag):
            return
        word = self._looked_up(segment, flag)
        if word is not None:
            yield word
            return
        if len(segment) > 1 and (
            flag in _NOUNS or flag in _VERBS or flag in _ADJECTIVES or flag in _TIME or flag == "f"
        ):
            yield from self._split(segment)

    def _quantity(self, segment: str, flag: str) -> bool:
        """Numbers, dates and quantities (三十度, 第三届, 十分) paint nothing. A word that only
        looks like one is kept when the dictionary knows it and jieba does not call it a
        quantity (三亚 Sanya, 余震 aftershock), or when it holds no digit (多云 cloudy, 数字 digital)."""
        known = self._dictionary is not None and segment in self._dictionary
        if flag in _QUANTITY_TAGS:
            return not known or _DIGIT.search(segment) is not None
        return _NUMERAL.fullmatch(segment) is not None and not known

    def _curated(self, text: str) -> Reading | None:
        """Glossary, then landmarks. A one-character glossary entry (面 noodles, 店 shop) is the
        news sense of a morpheme, ranked as a noun, not as a curated term."""
        english = self._glossary.get(text)
        if english is None:
            english = self._landmarks.get(text)
        if english is None:
            return None
        return Reading(english, RANK_NOUN if len(text) == 1 else RANK_CURATED)

    def _place_of(self, term: str, english: str) -> Iterator[Reading]:
        """The place a curated term starts with (淄博烧烤 -> zibo), unless its English names it."""
        for length in (3, 2):
            place = term[:length]
            if len(term) > length and place in self._places:
                reading = self._curated(place)
                if reading is None and self._dictionary is not None:
                    sense = self._dictionary.sense(place)
                    reading = Reading(sense, RANK_CURATED) if sense else None
                if reading is not None and reading.english not in english:
                    yield Reading(reading.english, RANK_CURATED)
                return

    def _looked_up(self, segment: str, flag: str) -> Reading | None:
        dictionary = self._dictionary
        if dictionary is None:
            return None
        single = len(segment) == 1
        if flag in _NOUNS:
            sense = dictionary.sense(segment, allow_bare_verb=flag == "vn" and not single, synonym=not single)
            if sense is None and not single:  # a noun in use with only verb senses: 结冰 "freeze"
                return self._verb(segment)
            sense = _concrete(sense)
            return Reading(sense, RANK_NOUN) if sense else None
        if single:  # one-character verbs, adjectives and time words: only the few that paint
            if flag in _VERBS:
                verb = self._paintable_verb(segment)
                return Reading(verb, RANK_OTHER) if verb else None
            sense = dictionary.sense(segment) if flag in _ADJECTIVES or flag in _TIME else None
            return Reading(sense, RANK_OTHER) if sense in _PAINTABLE_SINGLE else None
        if flag in _VERBS:
            return self._verb(segment)
        if flag in _TIME:
            sense = dictionary.sense(segment, names=False)
            paints = sense is not None and (_PAINTABLE_TIME.search(sense) or segment in self._solar_terms)
            return Reading(sense, RANK_ACTIVITY) if paints and sense else None
        if flag in _ADJECTIVES:
            sense = _concrete(dictionary.sense(segment, names=False))
            return Reading(sense, RANK_OTHER) if sense else None
        if flag == "f":  # direction words only when they name a region (北方 north, 沿海 coastal)
            sense = dictionary.sense(segment)
            return Reading(sense, RANK_NOUN) if sense and _REGION_SENSE.search(sense) else None
        return None  # pronouns, prepositions, conjunctions, particles, adverbs, ...

    def _verb(self, segment: str) -> Reading | None:
        """A verb's noun sense (表演 "play, show"), else its first verb sense, bare or with an
        object (倒塌 "collapse", 排队 "line up"); a bare verb that paints nothing (举办 "conduct")
        gives way to a sense with an object, or to nothing."""
        dictionary = self._dictionary
        assert dictionary is not None
        sense = _concrete(dictionary.sense(segment, allow_bare_verb=True, synonym=True, names=False))
        if sense is None:
            sense = _concrete(dictionary.sense(segment, names=False))
        return Reading(sense, RANK_ACTIVITY) if sense else None

    def _paintable_verb(self, character: str) -> str | None:
        """The first sense of a one-character verb that paints an action (摘 -> "pick")."""
        assert self._dictionary is not None
        for sense in self._dictionary.senses(character):
            cleaned = clean_sense(sense)
            if cleaned is not None and cleaned[0] in _PAINTABLE_VERBS:
                return cleaned[0]
        return None

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
                    yield curated
                    break
                if dictionary is not None and piece in dictionary:
                    if not self._quantity(piece, tags.get(piece, "n")) and (
                        word := self._looked_up(piece, tags.get(piece, "n"))
                    ):
                        yield word
                    break
            else:
                end = start + 1
                yield from self._single(segment[start], tags)
            start = end

    def _single(self, character: str, tags: Mapping[str, str]) -> Iterator[Reading]:
        """A character left alone: its glossary sense, else the part-of-speech rules with
        jieba's tag for it alone (人 a noun: yes; 被 "quilt", a preposition: no; 红 "red": yes)."""
        curated = self._curated(character)
        if curated is not None:
            yield curated
            return
        tag = tags.get(character, "x")
        if tag not in {"x", "eng", "m", "q"} and not _NUMERAL.fullmatch(character):
            word = self._looked_up(character, tag)
            if word is not None:
                yield Reading(word.english, RANK_OTHER)

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
                self._solar_terms = frozenset(self._dictionary.solar_terms() if self._dictionary else ())
                for term in self._solar_terms - self._glossary.keys():  # 白露 is cut 白 + 露 without this
                    frequency = max(tokenizer.suggest_freq(term, False), self.TERM_FREQUENCY_FLOOR)
                    tokenizer.add_word(term, freq=frequency, tag="t")
                self._tokenizer = jieba.posseg.POSTokenizer(tokenizer)
            return self._tokenizer


def _concrete(sense: str | None) -> str | None:
    """`sense` without its abstract items (季节 "time, season" -> "season"); None when nothing
    is left (问题 "question, problem")."""
    if not sense:
        return None
    items = [item.strip() for item in sense.split(",")]
    kept = [item for item in items if item not in _ABSTRACT_NOUNS and item not in _ABSTRACT_VERBS]
    return ", ".join(kept) if kept else None
