"""Scoring the prompt builder on tests/data/headlines.txt: the share of concept groups whose
English reaches the subject words. Used by tests/test_headlines.py; also runnable on its own:

    .venv/bin/python tests/headline_score.py [--misses] [--heldout] [--window]

(`--heldout`: tests/data/headlines_heldout.txt, the generalisation set nobody tunes on;
`--window`: only the subject words that survive CLIP's 75-token window in a built prompt under
the jiangnan + spring stack, counted by the CLIP tokenizer in $COVERGEN_CACHE_DIR/clip-tokenizer
when present, else by the builder's conservative estimate) prints the score of the builder importable as `covergen.prompts` (on any checkout: put that
checkout's `server/` first on PYTHONPATH to score it).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADLINES = Path(__file__).resolve().parent / "data" / "headlines.txt"
HELDOUT = HEADLINES.with_name("headlines_heldout.txt")
STYLES = Path(__file__).resolve().parents[1] / "styles"


@dataclass(frozen=True)
class Headline:
    desk: str
    title: str
    groups: tuple[tuple[str, ...], ...]  # each group: acceptable English words or phrases


def load_headlines(path: Path = HEADLINES) -> list[Headline]:
    headlines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        desk, title, groups = (part.strip() for part in line.split("|"))
        parsed = tuple(tuple(w.strip().lower() for w in g.split("/") if w.strip()) for g in groups.split(";"))
        if not desk or not title or not all(parsed):
            raise ValueError(f"{path}:{number}: want `desk | title | words/words; words`")
        headlines.append(Headline(desk, title, parsed))
    return headlines


def carried(group: tuple[str, ...], subject: str) -> bool:
    """True when one of the group's words or phrases is in `subject` as whole words (+s/es)."""
    return any(re.search(rf"(?<![a-z0-9]){re.escape(word)}(?:s|es)?(?![a-z0-9])", subject) for word in group)


def score(subject_of: object, headlines: list[Headline]) -> tuple[int, int, list[str]]:
    """(groups carried, groups in all, one line per miss); `subject_of(title)` -> words."""
    hits, total, misses = 0, 0, []
    for headline in headlines:
        subject = " | ".join(subject_of(headline.title))  # type: ignore[operator]
        for group in headline.groups:
            total += 1
            if carried(group, subject):
                hits += 1
            else:
                misses.append(f"{headline.title}: missing {'/'.join(group)} in [{subject}]")
    return hits, total, misses


def windowed(builder: Any, library: Any) -> Callable[[str], tuple[str, ...]]:
    """title -> the subject words kept in a prompt built under jiangnan + spring (the bench's
    stack: the longest regional template plus an overlay), i.e. what CLIP actually reads."""
    base, stack = library.get("default"), [library.get("jiangnan"), library.get("spring")]
    return lambda title: builder.build(title, base, stack).subject_words


def _clip_counter() -> Callable[[str], int] | None:
    folder = Path(os.environ.get("COVERGEN_CACHE_DIR", "")) / "clip-tokenizer"
    if not (folder / "vocab.json").is_file():
        return None
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    return lambda text: len(tokenizer(text, truncation=False).input_ids) - 2


def main() -> None:
    from covergen.prompts import PromptBuilder
    from covergen.styles import StyleLibrary

    library = StyleLibrary.load(STYLES)
    builder = PromptBuilder.load(STYLES / "glossary.yaml", reserved_words=library.trigger_words())
    subject_of = builder.subject_words
    if "--window" in sys.argv:
        counter = _clip_counter()
        print(f"window counted by {'the CLIP tokenizer' if counter else 'the conservative estimate'}")
        subject_of = windowed(builder.with_budget(counter), library)
    hits, total, misses = score(subject_of, load_headlines(HELDOUT if "--heldout" in sys.argv else HEADLINES))
    import covergen.prompts

    print(f"{covergen.prompts.__file__}: {hits}/{total} concept groups = {hits / total:.1%}")
    if "--misses" in sys.argv:
        print("\n".join(misses))


if __name__ == "__main__":
    main()
