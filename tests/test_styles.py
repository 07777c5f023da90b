"""Style cards and the style library: the starter cards, teaching errors, theme tags, adapter paths."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from covergen.errors import AdapterRejected, ConfigError, StyleNotFound
from covergen.styles import StyleLibrary, normalize_tag

STYLES_ROOT = Path(__file__).resolve().parents[1] / "styles"

STARTER_STYLES = {
    "jiangnan": "regional",
    "chuanyu_hotpot": "regional",
    "hutong_breakfast": "regional",
    "lingnan_arcade": "regional",
    "minnan_redbrick": "regional",
    "night_market_bbq": "regional",
    "ink_wash": "overlay",
    "spring": "overlay",
    "rain": "overlay",
    "default": "base",
}

WriteCard = Callable[..., Path]


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load(STYLES_ROOT)


@pytest.fixture
def write_card(tmp_path: Path) -> WriteCard:
    """Writes a styles root holding one card: the real jiangnan card with `changes` applied."""

    def write(folder: str = "jiangnan", drop: tuple[str, ...] = (), **changes: Any) -> Path:
        card = yaml.safe_load((STYLES_ROOT / "jiangnan" / "style.yaml").read_text(encoding="utf-8"))
        card["name"] = folder
        card.update(changes)
        for key in drop:
            del card[key]
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "style.yaml").write_text(yaml.safe_dump(card, allow_unicode=True))
        return tmp_path

    return write


def test_library_holds_exactly_the_starter_styles(library: StyleLibrary) -> None:
    assert set(library.names()) == set(STARTER_STYLES)
    assert len(library) == len(STARTER_STYLES)


@pytest.mark.parametrize(("name", "kind"), sorted(STARTER_STYLES.items()))
def test_every_starter_card_loads(library: StyleLibrary, name: str, kind: str) -> None:
    card = library.get(name)
    assert card.name == name
    assert card.kind == kind
    assert card.display_name
    assert "{subject}" in card.prompt.subject
    assert 0 <= card.default_weight <= 2
    path = library.adapter_path(card)
    if name == "default":
        assert card.adapter is None and path is None
    else:
        assert path == (STYLES_ROOT / name / "adapter.safetensors").resolve()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"default_weight": 3.0},
            r"style 'jiangnan' default_weight 3\.0 is outside \[0, 2\]; set default_weight in "
            r".*jiangnan/style\.yaml",
        ),
        ({"default_weight": -0.5}, r"default_weight -0\.5 is outside \[0, 2\]"),
        ({"colour": "red"}, r"style 'jiangnan' has unknown key 'colour'; remove it from .*style\.yaml"),
        ({"name": "../jiangnan"}, r"not a valid style name"),
        ({"name": "jiang..nan"}, r"not a valid style name"),
        ({"name": "hutong_breakfast"}, r"has name 'hutong_breakfast' but lives in folder 'jiangnan'"),
        ({"adapter": "../x.safetensors"}, r"adapter '\.\./x\.safetensors' must be a plain file name"),
        ({"adapter": "/etc/x.safetensors"}, r"must be a plain file name"),
        ({"adapter": "..\\x.safetensors"}, r"must be a plain file name"),
        ({"adapter": "sub/x.safetensors"}, r"must be a plain file name"),
        ({"kind": "regoinal"}, r"style 'jiangnan' kind"),
        (
            {"prompt": {"subject": "no placeholder", "scene": "a", "style": "b", "details": "c"}},
            r"prompt\.subject must contain the placeholder \{subject\} exactly once",
        ),
        (
            {"prompt": {"subject": "{subject}", "scene": "{scene}", "style": "b", "details": "c"}},
            r"prompt\.scene must not contain",
        ),
        (
            {"prompt": {"subject": "{subject}", "scene": "a", "style": "b"}},
            r"style 'jiangnan' is missing 'prompt\.details'",
        ),
        (
            {"trigger_words": ["<lora:x:1>"]},
            r"style 'jiangnan' trigger_words '<lora:x:1>' must be plain words",
        ),
    ],
)
def test_bad_cards_are_rejected_with_a_teaching_message(
    write_card: WriteCard, changes: dict[str, Any], message: str
) -> None:
    root = write_card(**changes)
    with pytest.raises(ConfigError, match=message):
        StyleLibrary.load(root)


def test_missing_required_key_names_it(write_card: WriteCard) -> None:
    with pytest.raises(ConfigError, match=r"style 'jiangnan' is missing 'display_name'; add"):
        StyleLibrary.load(write_card(drop=("display_name",)))


def test_a_card_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "style.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        StyleLibrary.load(tmp_path)


def test_a_folder_without_a_card_is_rejected(write_card: WriteCard) -> None:
    root = write_card()
    (root / "orphan").mkdir()
    with pytest.raises(ConfigError, match=r"style folder .*orphan has no style\.yaml"):
        StyleLibrary.load(root)


def test_an_adapter_symlink_escaping_the_root_is_rejected(write_card: WriteCard, tmp_path: Path) -> None:
    root = write_card()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.safetensors"
    outside.write_bytes(b"not really an adapter")
    (root / "jiangnan" / "adapter.safetensors").symlink_to(outside)
    with pytest.raises(ConfigError, match=r"style 'jiangnan' adapter 'adapter\.safetensors' resolves to"):
        StyleLibrary.load(root)


def test_a_style_folder_symlinked_from_outside_is_rejected(write_card: WriteCard, tmp_path: Path) -> None:
    real = write_card()
    other = tmp_path.parent / f"{tmp_path.name}-other"
    other.mkdir()
    (other / "jiangnan").symlink_to(real / "jiangnan", target_is_directory=True)
    with pytest.raises(ConfigError, match="outside"):
        StyleLibrary.load(other)


def test_adapter_path_rejects_a_symlink_created_after_load(write_card: WriteCard, tmp_path: Path) -> None:
    root = write_card()
    library = StyleLibrary.load(root)
    outside = tmp_path.parent / f"{tmp_path.name}-late.safetensors"
    outside.write_bytes(b"x")
    (root / "jiangnan" / "adapter.safetensors").symlink_to(outside)
    with pytest.raises(AdapterRejected, match="outside"):
        library.adapter_path(library.get("jiangnan"))


def test_adapter_path_allows_a_symlink_inside_the_style_folder(write_card: WriteCard) -> None:
    root = write_card()
    target = root / "jiangnan" / "v2.safetensors"
    target.write_bytes(b"x")
    (root / "jiangnan" / "adapter.safetensors").symlink_to(target)
    library = StyleLibrary.load(root)
    assert library.adapter_path(library.get("jiangnan")) == target.resolve()


def test_unknown_style_lists_the_known_names(library: StyleLibrary) -> None:
    with pytest.raises(
        StyleNotFound, match=r"unknown style 'jiangnna'; known styles: chuanyu_hotpot, default"
    ):
        library.get("jiangnna")


@pytest.mark.parametrize(
    ("tag", "overlay"),
    [
        ("spring", "spring"),
        ("春", "spring"),
        ("春天", "spring"),
        (" SPRING ", "spring"),
        ("rain", "rain"),
        ("雨", "rain"),
        ("暴雨", "rain"),
        ("ink", "ink_wash"),
        ("水墨", "ink_wash"),
        ("ink_wash", "ink_wash"),
        ("Ink-Wash", "ink_wash"),
        ("水\u200b墨", "ink_wash"),
    ],
)
def test_overlay_for_theme(library: StyleLibrary, tag: str, overlay: str) -> None:
    card = library.overlay_for_theme(tag)
    assert card.name == overlay
    assert card.kind == "overlay"


def test_unknown_theme_lists_the_known_theme_tags(library: StyleLibrary) -> None:
    with pytest.raises(StyleNotFound, match=r"no overlay style for theme 'snow'; known themes: .*spring"):
        library.overlay_for_theme("snow")


def test_a_regional_style_is_not_a_theme(library: StyleLibrary) -> None:
    with pytest.raises(StyleNotFound):
        library.overlay_for_theme("jiangnan")


def test_two_overlays_claiming_one_theme_tag_are_rejected(tmp_path: Path) -> None:
    for name in ("rain", "spring"):
        shutil.copytree(STYLES_ROOT / name, tmp_path / name)
    card = yaml.safe_load((tmp_path / "spring" / "style.yaml").read_text(encoding="utf-8"))
    card["aliases"] = [*card["aliases"], "雨"]
    (tmp_path / "spring" / "style.yaml").write_text(yaml.safe_dump(card, allow_unicode=True))
    with pytest.raises(ConfigError, match=r"theme tag '雨' is claimed by overlays 'rain' and 'spring'"):
        StyleLibrary.load(tmp_path)


def test_trigger_words_of_the_library(library: StyleLibrary) -> None:
    assert "jiangnan style" in library.trigger_words()
    assert len(library.trigger_words()) == len(set(library.trigger_words()))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Hang Zhou", "hangzhou"),
        ("hang-zhou", "hangzhou"),
        ("ＣＮ－ＺＪ", "cnzj"),
        ("\u202e杭州\u200f", "杭州"),
        ("Xi'an", "xian"),
        ("\x00\x1f", ""),
        ("  ", ""),
    ],
)
def test_normalize_tag(raw: str, normal: str) -> None:
    assert normalize_tag(raw) == normal
