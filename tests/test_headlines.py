"""The headline test set (tests/data/headlines.txt, 213 headlines, 8 news desks) as a regression
floor: the share of concept groups that reach the subject words must not fall.

Measured with `.venv/bin/python tests/headline_score.py`: 47.7% on the glossary-only builder
(main at 163e9e6), FLOOR below (81.2%) with glossary -> landmarks -> CC-CEDICT. A change that loses
more than MARGIN (about three concept groups of 612) fails; one that gains should raise FLOOR.
"""

from __future__ import annotations

from pathlib import Path

from headline_score import load_headlines, score

from covergen.prompts import PromptBuilder
from covergen.styles import StyleLibrary

STYLES_ROOT = Path(__file__).resolve().parents[1] / "styles"
FLOOR = 0.812
MARGIN = 0.005


def test_headlines_carry_their_concepts_at_least_as_well_as_measured() -> None:
    library = StyleLibrary.load(STYLES_ROOT)
    builder = PromptBuilder.load(STYLES_ROOT / "glossary.yaml", reserved_words=library.trigger_words())
    headlines = load_headlines()
    assert len(headlines) >= 200 and len({h.desk for h in headlines}) == 8
    hits, total, misses = score(builder.subject_words, headlines)
    print(f"headline score: {hits}/{total} = {hits / total:.1%} (floor {FLOOR:.1%})")
    assert hits / total >= FLOOR - MARGIN, "\n".join(misses)
