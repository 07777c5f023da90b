"""Titles through the full reading stack: glossary -> landmarks -> CC-CEDICT -> template, the
sense rule, the landmark table's coverage of the regions table, the tone guard and bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from headline_score import load_headlines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from covergen.errors import ConfigError
from covergen.prompts import NEUTRAL_SUBJECT, PromptBuilder, estimate_clip_tokens
from covergen.regions import RegionResolver, StyleWeight
from covergen.styles import StyleLibrary
from covergen.titles.dictionary import Dictionary, paintable_sense
from covergen.titles.landmarks import Landmarks
from covergen.titles.tone import RESTRAINED, ToneGuard

STYLES_ROOT = Path(__file__).resolve().parents[1] / "styles"
SYNTAX = set("<>{}[]()|:")
ITEM = re.compile(r"[a-z0-9][a-z0-9 '-]*")


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load(STYLES_ROOT)


@pytest.fixture(scope="module")
def builder(library: StyleLibrary) -> PromptBuilder:
    return PromptBuilder.load(STYLES_ROOT / "glossary.yaml", reserved_words=library.trigger_words())


# --- the sense rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("senses", "expected"),
    [
        (["surname Zeng", "to appreciate (beauty)", "flower"], "flower"),
        (["(literary) to grow", "show (loanword)"], "show"),
        (["variant of 線|线[xian4]", "thread", "CL:條|条[tiao2]"], "thread"),
        (["classifier for banks", "CL:家[jia1]", "bank"], "bank"),
        (["abbr. for Shanghai", "short name for Shanghai"], None),
        (["to hold", "to conduct"], None),
        (["to go to some place at night", "to take a night trip to (a place)"], "night trip"),
        (["Hangzhou subprovincial city and capital of Zhejiang province"], "hangzhou"),
        (["<lora:x:1> (masterpiece:1.5) {scene} [a|b]"], "lora x 1 scene"),  # syntax gone, words plain
        (["fish caught far away beyond seas near distant northern islands"], None),  # too long
        # a solar term by its English name, not its pinyin; a register mark is not a word
        (["Shuangjiang or Frost Descends, 18th of the 24 solar terms 二十四節氣|二十四节气 23rd October"],
         "frost descends"),
        (["fig. to win a championship"], "win a championship"),
    ],
)  # fmt: skip
def test_the_paintable_sense_rule(senses: list[str], expected: str | None) -> None:
    assert paintable_sense(senses) == expected


@pytest.mark.parametrize(
    ("senses", "expected"),
    [
        (["chauffeur", "driver"], "chauffeur, driver"),
        (["row", "to walk", "line"], "row"),  # a verb sense between: the next noun is another meaning
        (["sand and dust storm", "dust"], "sand and dust storm"),  # too long to take a synonym
    ],
)
def test_a_short_noun_sense_brings_one_synonym(senses: list[str], expected: str) -> None:
    assert paintable_sense(senses, synonym=True) == expected


def test_verbs_do_not_read_as_names() -> None:
    dictionary = Dictionary.bundled()
    assert dictionary.sense("延长") == "yanchang"  # the county, after the verb senses that paint nothing
    assert dictionary.sense("延长", allow_bare_verb=True, names=False) == "prolong"


def test_bare_verbs_only_when_asked() -> None:
    assert paintable_sense(["to collapse"]) is None
    assert paintable_sense(["to collapse"], allow_bare_verb=True) == "collapse"


def test_the_bundled_cedict_is_loaded_once_and_reads_common_news_words() -> None:
    dictionary = Dictionary.bundled()
    assert Dictionary.bundled() is dictionary
    assert len(dictionary) > 100_000
    assert dictionary.sense("地震") == "earthquake"
    assert dictionary.sense("杭州") == "hangzhou"
    assert dictionary.sense("步行街") == "car-free zone"
    assert dictionary.sense("赏") != "appreciate"


# --- titles through the whole stack ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "wanted", "unwanted"),
    [
        ("黄鹤楼夜游灯光秀", ["yellow crane tower", "night", "light show"], []),
        ("南京路步行街年货市集", ["nanjing road", "pedestrian street", "market"], []),
        ("游客赏花打卡", ["tourists", "flowers"], ["appreciate", "reward"]),
        ("西湖边的柳树发芽了", ["west lake", "willow"], ["xihu"]),  # the glossary wins over CEDICT
        ("2024年3月5日第三届三万人5号", [], ["2024", "three", "third", "march"]),
        ("四川地震救援进行中", ["sichuan", "earthquake"], []),
        ("霜降后枫叶红了", ["maple", "red", "frost"], ["shuangjiang"]),  # 红: a one-character adjective that paints
        # every solar term is one time word, read by its English name (白露 is not 白 "white" + 露)
        ("白露时节惊蛰春雷", ["white dew", "insects wake", "thunder"], []),
        # a curated term that starts with a city also brings the city
        ("淄博烧烤火出圈", ["zibo", "barbecue"], []),
        # looks like a number, is a word: 三亚 Sanya, 余震 aftershock, 多云 cloudy; 三十度 is a number
        ("三亚海边余震不断多云", ["sanya", "aftershock", "cloudy"], []),
        ("哈尔滨零下三十度", ["harbin", "below zero"], ["thirty", "degree"]),
        # abstract words out (问题 "question, problem"), region words in (北方 north)
        ("共享单车乱停放问题整治", ["shared bicycles", "parking"], ["question", "problem"]),
        ("沙尘暴影响北方城市", ["sand and dust storm", "north", "city"], ["influence", "effect"]),
        # a one-character verb that paints (跑 run); a morpheme's news sense (面 noodles, not face)
        ("长沙市民夜跑湘江边", ["night", "run", "xiang river"], []),
        ("兰州牛肉面馆", ["lanzhou", "beef", "noodle"], ["face"]),
    ],
)  # fmt: skip
def test_titles_carry_their_story(
    builder: PromptBuilder, title: str, wanted: list[str], unwanted: list[str]
) -> None:
    words = builder.subject_words(title)
    joined = " | ".join(words)
    for word in wanted:
        assert word in joined, f"{title}: {word!r} missing from {words}"
    for word in unwanted:
        assert word not in joined, f"{title}: {word!r} should not be in {words}"
    assert all(ITEM.fullmatch(w) for w in words)


def test_traditional_titles_read_like_simplified_ones(builder: PromptBuilder) -> None:
    assert builder.subject_words("黃鶴樓夜遊燈光秀") == builder.subject_words("黄鹤楼夜游灯光秀")
    assert builder.tone_of("四川地震救援進行中") == RESTRAINED


def test_landmarks_and_nouns_come_before_activities(builder: PromptBuilder) -> None:
    words = builder.subject_words("参观兵马俑")  # 参观: "to look around" (an activity, CEDICT)
    assert words == ("terracotta warriors", "look around")


def test_subject_words_come_before_the_template(builder: PromptBuilder, library: StyleLibrary) -> None:
    built = builder.build("黄鹤楼夜游灯光秀", library.get("default"), [library.get("night_market_bbq")])
    card = library.get("night_market_bbq")
    assert built.prompt.index("yellow crane tower") < built.prompt.index(card.prompt.scene)


# --- the landmark table ---------------------------------------------------------------------------


def _places_with_a_style(library: StyleLibrary) -> list[str]:
    """Every city of regions.yaml (or province-level division without cities) whose region
    resolves to a style other than the neutral default."""
    raw = yaml.safe_load((STYLES_ROOT / "regions.yaml").read_text(encoding="utf-8"))
    resolver = RegionResolver.load(STYLES_ROOT / "regions.yaml", library)
    places = []
    for province in raw["provinces"]:
        cities = province.get("cities") or []
        for entry in cities or [province]:
            tag = entry.get("code") or entry["name"]  # Taiwan's cities have no GB/T 2260 code
            if any(item.style != "default" for item in resolver.resolve(tag).stack):
                places.append(entry["name"])
    return places


def test_every_city_with_a_style_has_a_landmark(library: StyleLibrary) -> None:
    landmarks = Landmarks.load(STYLES_ROOT / "landmarks.yaml")
    places = _places_with_a_style(library)
    assert len(places) > 300
    missing = [place for place in places if not landmarks.by_place.get(place)]
    assert not missing, f"add landmarks for {missing} to styles/landmarks.yaml"
    unknown = set(landmarks.by_place) - set(places) - {"things"}
    assert not unknown, f"landmarks.yaml places {sorted(unknown)} are not cities of regions.yaml"


@pytest.mark.parametrize(
    ("places", "message"),
    [
        ({"武汉": {"黄鹤楼": "<lora:x:1>"}}, r"use plain English words"),
        ({"武汉": {"黄鹤楼": "tower {scene}"}}, r"use plain English words"),
        ({"武汉": {"楼": "tower"}}, r"two or more Chinese characters"),
        ({"武汉": {"黄鹤楼": "tower"}, "长沙": {"黄鹤楼": "tower"}}, r"lists '黄鹤楼' twice"),
    ],
)
def test_bad_landmark_tables_are_rejected(tmp_path: Path, places: dict, message: str) -> None:
    path = tmp_path / "landmarks.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "places": places}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        Landmarks.load(path)


# --- the tone guard -------------------------------------------------------------------------------

HEADLINES = load_headlines()


@pytest.mark.parametrize("headline", HEADLINES, ids=lambda h: h.title)
def test_the_tone_guard_holds_on_disasters_and_only_there(builder: PromptBuilder, headline) -> None:
    expected = RESTRAINED if headline.desk == "disaster" else ""
    assert builder.tone_of(headline.title) == expected


def test_a_restrained_title_gets_the_neutral_style_without_festive_overlays(
    builder: PromptBuilder, library: StyleLibrary
) -> None:
    title = "四川地震救援进行中"
    stack = [StyleWeight("jiangnan", 0.8), StyleWeight("spring", 0.8), StyleWeight("rain", 0.6)]
    guarded, tone = builder.guard_tone(title, stack, library)
    default = library.get("default")
    assert tone == RESTRAINED
    assert guarded == [StyleWeight("default", default.default_weight), StyleWeight("rain", 0.6)]
    built = builder.build(title, default, [library.get(item.style) for item in guarded], tone)
    assert "documentary news illustration of sichuan, earthquake" in built.prompt
    for card in (library.get("jiangnan"), library.get("spring")):
        assert card.prompt.style not in built.prompt
        assert not [w for w in card.trigger_words if w in built.prompt]
    assert default.prompt.scene not in built.prompt
    assert "festive" in built.negative_prompt
    assert builder.guard_tone("杭州西湖春游", stack, library) == (stack, "")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"topics": {"disaster": ["震"]}}, r"two or more Chinese characters"),
        ({"topics": {}}, r"has no topics"),
        ({"topics": {"death": ["死亡"]}, "restrained": {"subject": "no placeholder", "scene": "", "style": "", "details": ""}},
         r"restrained must have subject"),
    ],
)  # fmt: skip
def test_bad_tone_files_are_rejected(tmp_path: Path, raw: dict, message: str) -> None:
    path = tmp_path / "tone.yaml"
    path.write_text(yaml.safe_dump({"version": 1, **raw}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        ToneGuard.load(path)


def test_festive_styles_must_exist(tmp_path: Path, library: StyleLibrary) -> None:
    guard = ToneGuard.load(STYLES_ROOT / "tone.yaml")
    guard.check_styles(library)
    typo = ToneGuard(guard.terms, frozenset({"sprnig"}), guard.template, guard.negative_prompt)
    with pytest.raises(ConfigError, match="festive_styles names sprnig"):
        typo.check_styles(library)


# --- bad input ------------------------------------------------------------------------------------

BAD_TITLES = [
    "！！！？？？…… —— 。。。",
    "\U0001f600\U0001f525\U0001f389" * 20,
    "1234567890 2024-03-05 3.14",
    "Breaking news from the city council",
    "杭州West Lake灯光秀2024🎉",
    "\x00\x1b[31m\x07\u202e\u200b",
    "火" * 170,  # 510 bytes of one character
    "a" * 512,
    "<lora:jiangnan:2>(masterpiece:1.5){scene}[x|y]",
    "一二三四五六七八九十百千万",
]


@pytest.mark.parametrize("title", BAD_TITLES)
def test_bad_titles_still_make_a_valid_prompt(
    builder: PromptBuilder, library: StyleLibrary, title: str
) -> None:
    built = builder.build(title, library.get("default"), [library.get("jiangnan"), library.get("spring")])
    assert not SYNTAX & set(built.prompt)
    assert built.prompt.isascii()
    assert estimate_clip_tokens(built.prompt) <= 75
    assert all(ITEM.fullmatch(w) for w in built.subject_words)
    if not built.subject_words:
        assert f"of {NEUTRAL_SUBJECT}" in built.prompt


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    title=st.one_of(
        st.text(max_size=200),
        st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), max_size=60),
        st.lists(st.sampled_from([h.title for h in HEADLINES] + BAD_TITLES), max_size=6).map("".join),
    )
)
def test_any_title_gives_a_clean_prompt(builder: PromptBuilder, library: StyleLibrary, title: str) -> None:
    built = builder.build(title, library.get("default"), [library.get("lingnan_arcade"), library.get("rain")])
    assert not SYNTAX & set(built.prompt)
    assert built.prompt.isascii()
    assert estimate_clip_tokens(built.prompt) <= 75
    assert all(ITEM.fullmatch(w) and w in built.prompt for w in built.subject_words)
