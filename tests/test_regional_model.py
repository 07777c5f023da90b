"""The embedded regional base (`embedded:regional`, committed under covergen/embedded/): drawn
scenes, the coarse classifier, and what the trained model paints for regions, through the
engine's Denoiser with the real regions table, style cards and prompt builder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covergen.scenes import (
    REGIONAL_STYLES,
    CaptionWriter,
    brightness,
    classify,
    draw_scene,
    saturation,
    write_style_folder,
)
from covergen.scenes.captions import CAPTION_VARIANTS
from covergen.scenes.classifier import grid_features

REPO = Path(__file__).resolve().parents[1]
STYLES = REPO / "styles"

# One region per regional style: (region tag, style its stack starts with).
REGION_OF_STYLE = {
    "jiangnan": "杭州",
    "chuanyu_hotpot": "成都",
    "hutong_breakfast": "北京",
    "lingnan_arcade": "广州",
    "minnan_redbrick": "厦门",
    "night_market_bbq": "哈尔滨",
}
SEEDS = tuple(range(100, 108))  # 8 seeds per style


@pytest.fixture(scope="module")
def painter(model_cache_dir: Path):  # noqa: ANN201
    from covergen.models import load_base_model
    from covergen.models.regional_check import RegionPainter

    base = load_base_model("embedded:regional", cache_dir=model_cache_dir, device="cpu", dtype="fp32")
    return RegionPainter(base, STYLES)


@pytest.fixture(scope="module")
def covers(painter) -> dict[str, list[np.ndarray]]:  # noqa: ANN001
    """8 covers per region, neutral title, base model only (no adapters)."""
    return {style: painter.paint(region, SEEDS) for style, region in REGION_OF_STYLE.items()}


# ---- drawn scenes and the classifier ---------------------------------------------------------


def test_drawn_scenes_are_deterministic_per_seed() -> None:
    assert np.array_equal(draw_scene("jiangnan", 3, ("rain",)), draw_scene("jiangnan", 3, ("rain",)))
    assert not np.array_equal(draw_scene("jiangnan", 3), draw_scene("jiangnan", 4))
    assert draw_scene("minnan_redbrick", 0).shape == (64, 64, 3)


def test_unknown_scene_style_is_refused_with_the_known_ones() -> None:
    with pytest.raises(KeyError, match="drawn styles are jiangnan"):
        draw_scene("sahara", 0)


def test_classifier_recognises_drawn_scenes() -> None:
    hits = [classify(draw_scene(style, seed)) == style for style in REGIONAL_STYLES for seed in range(40)]
    assert np.mean(hits) >= 0.9


def test_variant_captions_lead_with_the_style_cards_trigger_words() -> None:
    writer = CaptionWriter(STYLES)
    rng = np.random.default_rng(0)
    for style in CAPTION_VARIANTS:
        trigger = writer.library.get(style).trigger_words[0]
        assert writer.variant(style, (), rng).startswith(trigger)
        assert trigger in writer.served_prompt(style, (), rng)


def test_style_folder_has_metadata_for_every_image(tmp_path: Path) -> None:
    folder = write_style_folder("rain", tmp_path / "rain", 3, seed=1, captions=CaptionWriter(STYLES))
    lines = (folder / "metadata.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "file,caption"
    assert [line.split(",")[0] for line in lines[1:]] == ["0000.png", "0001.png", "0002.png"]
    assert all("rainy style" in line for line in lines[1:])


# ---- the committed model ---------------------------------------------------------------------


def test_regional_base_loads_with_zero_mean_noise_and_its_own_latent_scale(painter) -> None:  # noqa: ANN001
    assert painter.denoiser.zero_mean_noise is True
    assert painter.size == 64
    assert painter.denoiser.pipeline.vae.config.scaling_factor != pytest.approx(0.18215)


def test_tiny_embedded_base_keeps_the_pipelines_noise(embedded_base) -> None:  # noqa: ANN001
    assert embedded_base.zero_mean_noise is False


def test_region_templates_paint_their_own_style(covers: dict[str, list[np.ndarray]]) -> None:
    """Measured on regional-v1: 26/48 (jiangnan 6, hutong 4, lingnan 8, minnan 8, hotpot 0,
    night market 0; chance is 8/48). The issue's target of 80% is NOT met yet: the two dark
    styles come out light. This floor guards against regressions until a longer build lands."""
    own = {style: sum(classify(image) == style for image in images) for style, images in covers.items()}
    total = sum(own.values()) / sum(len(images) for images in covers.values())
    assert total >= 0.45, own
    assert sum(count >= 6 for count in own.values()) >= 3, own  # three regions solidly their own


def test_two_cities_of_one_macro_region_look_alike(painter) -> None:  # noqa: ANN001
    """Different news in 杭州 and 苏州 (both 长三角: jiangnan) is closer than 杭州 vs 成都."""

    def features(region: str, seeds: range) -> np.ndarray:
        return np.stack([grid_features(image) for image in painter.paint(region, seeds, title="地铁 开通")])

    hangzhou, suzhou, chengdu = features("杭州", range(0, 6)), features("苏州", range(6, 12)), features("成都", range(12, 18))

    def mean_gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.linalg.norm(a[:, None] - b[None], axis=2)))

    assert mean_gap(hangzhou, suzhou) < mean_gap(hangzhou, chengdu)
    assert mean_gap(hangzhou, suzhou) < mean_gap(suzhou, chengdu)


OVERLAY_GAP = (
    "measured on regional-v1: overlay prompt words barely move the picture (saturation 0.265 -> "
    "0.260 with 水墨, brightness 131.2 -> 131.7 with 下雨); the frozen 32-wide text encoder "
    "embeds the long regional prompt and its overlay words alike, and no overlay adapter is trained yet"
)


@pytest.mark.xfail(strict=True, reason=OVERLAY_GAP)
def test_ink_wash_theme_lowers_saturation(painter, covers: dict[str, list[np.ndarray]]) -> None:  # noqa: ANN001
    inked = painter.paint("杭州", SEEDS, themes=("水墨",))
    plain = covers["jiangnan"]
    assert np.mean([saturation(i) for i in inked]) < np.mean([saturation(i) for i in plain]) - 0.03


@pytest.mark.xfail(strict=True, reason=OVERLAY_GAP)
def test_rain_theme_darkens(painter, covers: dict[str, list[np.ndarray]]) -> None:  # noqa: ANN001
    rainy = painter.paint("广州", SEEDS, themes=("下雨",))
    plain = covers["lingnan_arcade"]
    assert np.mean([brightness(i) for i in rainy]) < np.mean([brightness(i) for i in plain]) - 5
