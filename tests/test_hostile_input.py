"""Hostile input, generated: request validation, region resolution, prompt building and the
trainer's config and caption files never fail in any way but their one documented error, and
whatever they accept is inside the documented bounds."""

from __future__ import annotations

import csv
import io
import math
import re
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from covergen.errors import ConfigError, InvalidRequest
from covergen.requests import (
    FORMATS,
    MAX_REGION_BYTES,
    MAX_THEME_BYTES,
    MAX_THEMES,
    MAX_WEIGHT_OVERRIDES,
    CoverRequest,
    Limits,
    validate,
)

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROMPT_BUDGET = 75  # CLIP's 77 positions minus BOS and EOS
PROMPT_ALPHABET = set(string.ascii_letters + string.digits + " ,'-")

# Pieces attackers and careless editors put in titles.
HOSTILE_PIECES = [
    "<lora:hutong_breakfast:9>", "<lora:x:9>", "<lyco:ink_wash:2>", "{scene}", "{subject}", "{{", "}}",
    "(masterpiece:1.5)", "[cat|dog]", "BREAK", "AND", "negative:", "embedding:evil", "lora",
    "\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\U000e0041",
    "🔥", "👩\u200d👩\u200d👧", "🇨🇳", "江南", "火锅", "春节", "杭州", "hotpot", "jiangnan style",
    "hutong breakfast style", "ink wash", "ÅÄÖ", "مرحبا", "שלום", "Ωmega", "ｆｕｌｌｗｉｄｔｈ", "x" * 40,
]  # fmt: skip
hostile_titles = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=12)), min_size=1, max_size=40
).map("".join)
REGIONS = ["杭州", "成都", "北京", "广州", "厦门", "哈尔滨", "330100", "CN-SC", "hangzhou", "浙江省", "Atlantis", "x"]


# --- request validation ---------------------------------------------------------------------------

LIMITS = Limits(max_title_bytes=512, max_size=512, default_size=64, default_steps=20, default_guidance=5.0)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32) | st.floats(-3, 25)
sizes = st.sampled_from([0, 8, 56, 64, 65, 72, 512, 520, 1024]) | st.integers(-(2**31), 2**32)
requests = st.builds(
    CoverRequest,
    region=st.text(max_size=40) | st.sampled_from(REGIONS),
    title=hostile_titles | st.text(max_size=600),
    seed=st.none() | st.integers(-(2**64), 2**64),
    variant=st.integers(-5, 1500),
    width=sizes,
    height=sizes,
    steps=st.integers(-5, 150),
    guidance_scale=st.none() | floats,
    format=st.sampled_from([*FORMATS, "gif", "", "PNG", "unknown(7)"]),
    themes=st.lists(st.text(max_size=40), max_size=6).map(tuple),
    adapter_weights=st.dictionaries(st.text(max_size=70) | st.sampled_from(["jiangnan", "spring"]), floats, max_size=10),
)


@SETTINGS
@given(requests)
@example(CoverRequest(region="杭州", title="t", adapter_weights={"jiangnan\n": 1.0}))
@example(CoverRequest(region="杭州", title="t", guidance_scale=math.nan, adapter_weights={"jiangnan": math.nan}))
@example(CoverRequest(region="\u200b", title="\u202e"))
def test_validate_raises_only_invalid_request_and_accepts_only_in_bounds(request: CoverRequest) -> None:
    try:
        accepted = validate(request, LIMITS)
    except InvalidRequest as exc:
        assert str(exc), "an InvalidRequest must say what was wrong"
        return
    assert 0 < len(request.region.encode()) <= MAX_REGION_BYTES and request.region.strip()
    assert 0 < len(request.title.encode()) <= LIMITS.max_title_bytes and request.title.strip()
    for size in (accepted.width, accepted.height):
        assert 64 <= size <= LIMITS.max_size and size % 8 == 0
    assert 1 <= accepted.steps <= 100
    assert 1.0 <= accepted.guidance_scale <= 20.0
    assert accepted.format in FORMATS
    assert request.seed is None or 0 <= request.seed <= 2**63 - 1
    assert 0 <= request.variant <= 1000
    assert len(request.themes) <= MAX_THEMES
    assert all(0 < len(t.encode()) <= MAX_THEME_BYTES and t.strip() for t in request.themes)
    assert len(request.adapter_weights) <= MAX_WEIGHT_OVERRIDES
    for name, weight in request.adapter_weights.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name), f"accepted style name {name!r}"
        assert 0.0 <= weight <= 2.0 and not math.isnan(weight)


# --- region resolution ----------------------------------------------------------------------------

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202a", "\u202e", "\u2066", "\u2069", "\x00", "\x1f"]


@SETTINGS
@given(tag=st.text(max_size=80) | hostile_titles | st.sampled_from(REGIONS))
def test_resolve_raises_only_invalid_request_and_returns_known_styles(service, tag: str) -> None:
    resolver, library = service.maker.resolver, service.maker.library
    try:
        resolution = resolver.resolve(tag)
    except InvalidRequest as exc:
        assert "region" in str(exc)
        return
    known = set(library.names())
    assert resolution.stack, "every tag resolves to some stack (the default one at least)"
    assert all(item.style in known and 0.0 <= item.weight <= 2.0 for item in resolution.stack)
    assert resolution.fallback == (resolution.level == "default" and not resolution.path)


@SETTINGS
@given(
    region=st.sampled_from(REGIONS[:-2]),
    marks=st.lists(st.tuples(st.integers(0, 8), st.sampled_from(INVISIBLE)), min_size=1, max_size=4),
)
def test_invisible_characters_never_change_where_a_tag_resolves(service, region: str, marks: list) -> None:
    resolver = service.maker.resolver
    marked = region
    for position, mark in marks:
        cut = min(position, len(marked))
        marked = marked[:cut] + mark + marked[cut:]
    assert resolver.resolve(marked).stack == resolver.resolve(region).stack


# --- prompts --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def count_tokens(service):
    from covergen.clip_tokens import clip_token_counter

    return clip_token_counter(service.base.pipeline.tokenizer)  # a private copy: the engine uses the original


@SETTINGS
@given(title=hostile_titles, stack=st.lists(st.sampled_from(["jiangnan", "hutong_breakfast", "spring", "rain", "ink_wash"]), max_size=4))
@example(title="🔥" * 10_000, stack=["jiangnan"])
@example(title="<lora:hutong_breakfast:9>" * 400, stack=["jiangnan", "spring"])
@example(title="火锅 hotpot " * 2_000, stack=["chuanyu_hotpot"])
@example(title="\u202e\u2066" * 5_000 + "江南", stack=[])
def test_prompt_is_clean_and_within_the_token_budget(service, count_tokens, title: str, stack: list[str]) -> None:
    library, prompts = service.maker.library, service.maker.prompts
    built = prompts.build(title, library.get("default"), [library.get(name) for name in stack])
    assert count_tokens(built.prompt) <= PROMPT_BUDGET
    assert set(built.prompt) <= PROMPT_ALPHABET, sorted(set(built.prompt) - PROMPT_ALPHABET)
    assert "lora" not in built.prompt.split() and not any(
        unicodedata.category(ch)[0] == "C" for ch in built.negative_prompt
    )
    other_triggers = {w for card in library for w in card.trigger_words} - {
        w for name in stack for w in library.get(name).trigger_words
    }
    primary = next((library.get(n) for n in stack if library.get(n).kind != "overlay"), library.get("default"))
    for trigger in other_triggers - set(primary.trigger_words):
        assert trigger not in built.prompt, f"the title spelled another style's trigger {trigger!r}"


@SETTINGS
@given(region=st.sampled_from(REGIONS), title=hostile_titles, themes=st.sampled_from([(), ("spring",), ("雨", "ink")]))
def test_the_title_never_changes_which_adapters_apply(service, region: str, title: str, themes: tuple) -> None:
    maker = service.maker
    baseline = maker.plan(CoverRequest(region=region, title="城市新闻", themes=themes))
    try:
        plan = maker.plan(CoverRequest(region=region, title=title, themes=themes))
    except InvalidRequest as exc:
        assert "title" in str(exc)
        assert not title.strip() or len(title.encode()) > maker.limits.max_title_bytes
        return
    if plan.tone:  # a sensitive title (tone guard): the neutral default style, never another adapter
        assert plan.stack[0].style == "default" and all(c.kind == "overlay" for c in plan.cards[1:])
        return
    assert plan.stack == baseline.stack
    assert [c.name for c in plan.cards] == [c.name for c in baseline.cards]


# --- the trainer's files --------------------------------------------------------------------------

TRAIN_KEYS = [
    "train_data_dir", "base_model", "output_dir", "metadata_path", "lora_rank", "lora_alpha", "target_modules",
    "batch_size", "epochs", "max_train_steps", "learning_rate", "lr_scheduler", "lr_warmup_steps",
    "caption_dropout", "resolution", "validation_split", "snr_gamma", "mixed_precision", "seed", "lora_rnak",
]  # fmt: skip
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | floats | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@SETTINGS
@given(raw=st.dictionaries(st.sampled_from(TRAIN_KEYS) | st.text(max_size=12), yaml_values, max_size=12))
@example(raw={"train_data_dir": "data", "base_model": "embedded", "output_dir": "out"})
@example(raw={"train_data_dir": "data", "base_model": "embedded", "output_dir": "out", "lora_rank": 0})
def test_train_config_raises_only_config_error_and_accepts_only_in_bounds(
    raw: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from trainer.config import config_from_mapping

    folder = tmp_path_factory.getbasetemp()
    try:
        config = config_from_mapping(dict(raw), folder=folder, source="train.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("train.yaml"), "the message must name the file"
        return
    assert 1 <= config.lora_rank <= 256 and config.lora_alpha > 0
    assert config.batch_size >= 1 and config.epochs >= 1 and config.learning_rate > 0
    assert 0 <= config.caption_dropout < 1 and 0 <= config.validation_split <= 0.5
    assert config.effective_resolution % 8 == 0 and config.target_modules
    assert config.train_data_dir.is_absolute() and config.output_dir.is_absolute()


csv_cells = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20) | st.sampled_from(
    ["a.png", "../secret.png", "/etc/passwd", "", "杭州西湖.png", "draft", "true", '"', ",", "\n"]
)


@SETTINGS
@given(
    header=st.sampled_from([["file", "caption"], ["file", "caption", "draft"], ["caption", "file"], ["name", "text"], []]),
    rows=st.lists(st.lists(csv_cells, max_size=4), max_size=8),
    bom=st.booleans(),
)
def test_caption_csv_raises_only_config_error(header: list[str], rows: list[list[str]], bom: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    from trainer.dataset import read_metadata

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("csv") / "metadata.csv"
    path.write_text(("\ufeff" if bom else "") + buffer.getvalue(), encoding="utf-8")
    try:
        parsed = read_metadata(path)
    except ConfigError as exc:
        assert "metadata.csv" in str(exc) and "file,caption" in str(exc)
        return
    assert {"file", "caption"} <= set(header)
    for name, (caption, draft) in parsed.items():
        assert name == name.strip() and name and isinstance(caption, str) and isinstance(draft, bool)


def test_a_gbk_caption_file_is_a_config_error_naming_the_encoding(tmp_path: Path) -> None:
    from trainer.dataset import read_metadata

    path = tmp_path / "metadata.csv"
    path.write_bytes("file,caption\na.png,杭州西湖的早晨\n".encode("gbk"))  # what Excel on a Chinese Windows saves
    with pytest.raises(ConfigError, match="UTF-8"):
        read_metadata(path)


def test_caption_rows_cannot_pull_in_files_outside_the_data_folder(tmp_path: Path) -> None:
    from trainer.dataset import read_records

    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "private.png").write_bytes(b"not for training")
    (data / "metadata.csv").write_text("file,caption\n../private.png,leaked\n", encoding="utf-8")
    records, problems = read_records(data, data / "metadata.csv")
    assert records == [] and any("private.png" in line for line in problems)
