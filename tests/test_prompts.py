"""The prompt builder: Chinese titles become English words, prompts stay in CLIP's window, and
nothing a title holds can inject prompt syntax or change the stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covergen.errors import ConfigError
from covergen.prompts import (
    NEUTRAL_SUBJECT,
    PromptBuilder,
    estimate_clip_tokens,
    load_glossary,
    sanitize_title,
)
from covergen.regions import RegionResolver
from covergen.styles import StyleCard, StyleLibrary

STYLES_ROOT = Path(__file__).resolve().parents[1] / "styles"
GLOSSARY = STYLES_ROOT / "glossary.yaml"
SYNTAX = set("<>{}[]()|:")


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load(STYLES_ROOT)


@pytest.fixture(scope="module")
def glossary() -> dict[str, str]:
    return load_glossary(GLOSSARY)


@pytest.fixture(scope="module")
def builder(glossary: dict[str, str], library: StyleLibrary) -> PromptBuilder:
    return PromptBuilder(glossary, reserved_words=library.trigger_words())


def _words(count_tokens_text: str) -> int:
    """A strict counter for tests: one token per word and one per comma."""
    return len(re.findall(r"[^\s,]+|,", count_tokens_text))


def test_the_glossary_has_a_few_hundred_plain_english_entries(glossary: dict[str, str]) -> None:
    assert len(glossary) >= 300
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9 '-]*", english) for english in glossary.values())


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        # 龙井茶园 is cut 龙井 + 茶园 (glossary terms win); 春茶, not in the glossary, is scanned inside
        # (one-character glossary senses rank as nouns, after the whole terms).
        (
            "杭州西湖龙井茶园迎来春茶采摘",
            ("hangzhou", "west lake", "longjing green tea", "tea plantation", "picking", "spring", "tea"),
        ),
        ("成都火锅店夜宵排起长队", ("chengdu", "hotpot", "late night snacks", "long queue", "shop")),
        # Multi-character glossary terms stay whole: not "renewable energy" + "cars".
        ("新能源汽车充电桩建设提速", ("electric cars", "charging station")),
        ("乡村振兴", ("rural revitalization",)),
        ("厦门鼓浪屿红砖厝", ("xiamen", "gulangyu island", "red brick houses")),
        ("暴雨暴雨暴雨", ("heavy rainstorm",)),
        ("The Economy of Chengdu GDP", ("economy", "chengdu", "gdp")),
        ("COVID-19 疫苗", ("covid-19", "vaccine")),
        ("5G网络覆盖乡村", ("5g network", "countryside village")),
        ("！！！？？？", ()),
    ],
)
def test_titles_become_english_subject_words(
    builder: PromptBuilder, title: str, expected: tuple[str, ...]
) -> None:
    assert builder.subject_words(title) == expected


def test_subject_words_are_deduplicated_in_title_order(builder: PromptBuilder) -> None:
    assert builder.subject_words("下雨 地铁 下雨 高铁 地铁") == ("rain", "subway train", "high-speed train")


def test_control_and_bidi_characters_do_not_split_words(builder: PromptBuilder) -> None:
    assert builder.subject_words("杭\x00州\u202e西\u200b湖") == ("hangzhou", "west lake")


def test_a_title_cannot_spell_a_style_trigger(builder: PromptBuilder, library: StyleLibrary) -> None:
    built = builder.build("hutong style hutong", library.get("default"), [library.get("jiangnan")])
    assert "hutong" not in built.prompt
    assert built.subject_words == ()


def test_the_prompt_is_the_primary_template_plus_overlay_styles(
    builder: PromptBuilder, library: StyleLibrary
) -> None:
    hotpot, rain = library.get("chuanyu_hotpot"), library.get("rain")
    built = builder.build("成都火锅", library.get("default"), [hotpot, rain])
    expected = ", ".join(
        [
            *hotpot.trigger_words,
            hotpot.prompt.subject.replace("{subject}", "chengdu, hotpot"),
            hotpot.prompt.scene,
            hotpot.prompt.style,
            hotpot.prompt.details,
            rain.prompt.style,
            *rain.trigger_words,
        ]
    )
    assert built.prompt == expected
    assert built.subject_words == ("chengdu", "hotpot")
    assert rain.prompt.scene not in built.prompt


def test_the_negative_prompt_is_the_union_of_the_cards(builder: PromptBuilder, library: StyleLibrary) -> None:
    cards = [library.get("jiangnan"), library.get("rain")]
    built = builder.build("杭州", library.get("default"), cards)
    terms = built.negative_prompt.split(", ")
    assert len(terms) == len({t.casefold() for t in terms})
    for card in [*cards, library.get("default")]:
        for term in card.negative_prompt.split(","):
            assert term.strip() in terms
    assert terms.count("watermark") == 1


def test_an_empty_stack_uses_the_base_template(builder: PromptBuilder, library: StyleLibrary) -> None:
    default = library.get("default")
    built = builder.build("杭州", default, [])
    assert built.prompt.startswith(default.prompt.subject.replace("{subject}", "hangzhou"))


def test_an_overlay_only_stack_keeps_the_base_template(builder: PromptBuilder, library: StyleLibrary) -> None:
    default, ink = library.get("default"), library.get("ink_wash")
    built = builder.build("西湖", default, [ink])
    assert default.prompt.scene in built.prompt
    assert ink.prompt.style in built.prompt
    assert ink.prompt.scene not in built.prompt


@pytest.mark.parametrize("title", ["", "!!!", "\U0001f600" * 10_000, "\u202e\x00", "a the of"])
def test_a_title_with_nothing_usable_gets_the_neutral_subject(
    builder: PromptBuilder, library: StyleLibrary, title: str
) -> None:
    built = builder.build(title, library.get("default"), [library.get("jiangnan")])
    assert built.subject_words == ()
    assert f"of {NEUTRAL_SUBJECT}" in built.prompt


def _long_title(glossary: dict[str, str]) -> str:
    return "，".join(term for term in glossary if not term.isascii())


def test_a_long_title_stays_within_the_default_budget(
    builder: PromptBuilder, library: StyleLibrary, glossary: dict[str, str]
) -> None:
    stack = [library.get("hutong_breakfast"), library.get("spring"), library.get("rain")]
    built = builder.build(_long_title(glossary), library.get("default"), stack)
    assert estimate_clip_tokens(built.prompt) <= 75
    assert estimate_clip_tokens(built.negative_prompt) <= 75
    assert 1 <= len(built.subject_words) < 20
    for card in stack:
        assert card.prompt.style in built.prompt
        assert all(word in built.prompt for word in card.trigger_words)


def test_a_long_title_stays_within_a_strict_counter(
    builder: PromptBuilder, library: StyleLibrary, glossary: dict[str, str]
) -> None:
    strict = builder.with_budget(_words, 40)
    stack = [library.get("jiangnan"), library.get("ink_wash")]
    built = strict.build(_long_title(glossary), library.get("default"), stack)
    assert _words(built.prompt) <= 40
    assert library.get("ink_wash").prompt.style in built.prompt


def test_subject_words_are_dropped_from_the_end_first(builder: PromptBuilder, library: StyleLibrary) -> None:
    jiangnan, default = library.get("jiangnan"), library.get("default")
    title = "杭州 西湖 龙井 茶园 乌镇"
    unlimited = builder.with_budget(_words, 10_000).build(title, default, [jiangnan])
    assert len(unlimited.subject_words) == 5
    # Room for exactly two subject words ("west lake" is two words plus one comma).
    two = _words(unlimited.prompt) - _words(", longjing green tea, tea plantation, wuzhen water town")
    built = builder.with_budget(_words, two).build(title, default, [jiangnan])
    assert built.subject_words == ("hangzhou", "west lake")
    assert jiangnan.prompt.details in built.prompt


def test_then_details_then_scene_are_dropped_but_never_style_or_triggers(
    builder: PromptBuilder, library: StyleLibrary
) -> None:
    jiangnan, rain, default = library.get("jiangnan"), library.get("rain"), library.get("default")
    title = "杭州 西湖 龙井"
    full = builder.with_budget(_words, 10_000).build(title, default, [jiangnan, rain])
    no_details = (
        _words(full.prompt)
        - _words(", west lake, longjing green tea")
        - _words(", " + jiangnan.prompt.details)
    )
    built = builder.with_budget(_words, no_details).build(title, default, [jiangnan, rain])
    assert built.subject_words == ("hangzhou",)
    assert jiangnan.prompt.details not in built.prompt
    assert jiangnan.prompt.scene in built.prompt
    no_scene = builder.with_budget(_words, no_details - 1).build(title, default, [jiangnan, rain])
    assert jiangnan.prompt.scene not in no_scene.prompt
    for kept in (jiangnan.prompt.style, rain.prompt.style, *jiangnan.trigger_words, *rain.trigger_words):
        assert kept in no_scene.prompt


def test_a_budget_too_small_for_the_styles_is_a_config_error(
    builder: PromptBuilder, library: StyleLibrary
) -> None:
    tiny = builder.with_budget(_words, 5)
    with pytest.raises(ConfigError, match=r"style parts and trigger words of jiangnan alone take \d+ tokens"):
        tiny.build("杭州", library.get("default"), [library.get("jiangnan")])


INJECTIONS = [
    "<lora:hutong_breakfast:2>",
    "杭州<lora:hutong_breakfast:2>西湖",
    "{scene}",
    "{subject}{{subject}}",
    "{{",
    "[cat:dog:0.5]",
    "(masterpiece:1.5)",
    "((best quality))",
    "negative: ugly | nsfw",
    "AND BREAK",
    "\u202e西湖\u202c",
    "\x00\x1b[31m杭州\x07",
    "\U0001f600" * 10_000,
    "ｌｏｒａ：＜ｘ：９＞",
    "杭州\n\nNegative prompt: blurry",
]


@pytest.mark.parametrize("title", INJECTIONS)
def test_injection_titles_never_reach_the_prompt_or_the_stack(
    builder: PromptBuilder, library: StyleLibrary, title: str
) -> None:
    resolver = RegionResolver.load(STYLES_ROOT / "regions.yaml", library)
    resolution = resolver.resolve("杭州")
    cards = [library.get(item.style) for item in resolution.stack]
    built = builder.build(title, library.get("default"), cards)
    assert not SYNTAX & set(built.prompt)
    assert "lora" not in built.prompt
    assert "negative" not in built.prompt.lower()
    assert "hutong" not in built.prompt
    assert "\n" not in built.prompt and "\u202e" not in built.prompt
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9 '-]*", word) for word in built.subject_words)
    others = [card for card in library if card.name not in {c.name for c in cards}]
    assert not [word for card in others for word in card.trigger_words if word in built.prompt]
    assert estimate_clip_tokens(built.prompt) <= 75


def test_sanitize_title_removes_control_and_format_characters() -> None:
    assert sanitize_title("a\u202eb\u200bc\x00d\ufeff") == "abcd"
    assert sanitize_title("ＡＢＣ") == "ABC"


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"food": {"火锅": "<lora:x:1>"}}, r"term '火锅' maps to '<lora:x:1>'; use plain English words"),
        ({"food": {"火锅": "hot (pot:1.5)"}}, r"use plain English words"),
        (
            {"food": {"G20峰会": "summit"}},
            r"term 'G20峰会' must be all Chinese characters or one plain ASCII word",
        ),
        (
            {"food": {"火锅": "hotpot"}, "city": {"火锅": "hotpot"}},
            r"defines '火锅' in sections 'food' and 'city'",
        ),
    ],
)
def test_bad_glossaries_are_rejected(tmp_path: Path, terms: dict[str, dict[str, str]], message: str) -> None:
    path = tmp_path / "glossary.yaml"
    path.write_text(
        yaml.safe_dump({"version": 1, "terms": terms}, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=message):
        PromptBuilder.load(path)


_GLOSSARY_TERMS = sorted(load_glossary(GLOSSARY))
_TITLE_PARTS = st.one_of(
    st.sampled_from(_GLOSSARY_TERMS),
    st.sampled_from(INJECTIONS[:12]),
    st.text(max_size=20),
    st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=10),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(title=st.one_of(st.text(max_size=300), st.lists(_TITLE_PARTS, max_size=30).map("".join)))
def test_build_never_raises_and_stays_clean_for_any_title(
    builder: PromptBuilder, library: StyleLibrary, title: str
) -> None:
    stack: list[StyleCard] = [library.get("lingnan_arcade"), library.get("spring"), library.get("rain")]
    built = builder.build(title, library.get("default"), stack)
    assert not SYNTAX & set(built.prompt)
    assert not SYNTAX & set(built.negative_prompt)
    assert estimate_clip_tokens(built.prompt) <= 75
    assert built.prompt.isascii()
    assert all(word in built.prompt for word in built.subject_words)
