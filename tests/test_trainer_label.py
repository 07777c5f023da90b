"""covergen-label: drafted captions, never overwriting edits, and lint catching each problem."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from trainer.dataset import read_records
from trainer.label import analyse, draft_caption, parse_keywords
from trainer.label_cli import main as label_main
from trainer.lint import estimate_tokens, laplacian_variance, lint_folder


def scene(seed: int, size: int = 96) -> Image.Image:
    """A sharp random-rectangles image; different seeds give perceptually different images."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), 235, dtype=np.uint8)
    for _ in range(12):
        x, y = rng.integers(0, size - 8, 2)
        w, h = rng.integers(6, size // 2, 2)
        pixels[y : y + h, x : x + w] = rng.integers(0, 255, 3)
    return Image.fromarray(pixels)


def write_rows(folder: Path, rows: list[tuple[str, str]]) -> None:
    with (folder / "metadata.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        writer.writerows(rows)


def test_analyse_names_colours_brightness_and_orientation() -> None:
    red_white = Image.new("RGB", (120, 60), (250, 250, 250))
    red_white.paste((200, 20, 30), (0, 0, 60, 60))
    traits = analyse(red_white)
    assert set(traits.colours) == {"red", "white"}
    assert traits.orientation == "landscape"
    assert analyse(Image.new("RGB", (50, 80), (10, 10, 10))).brightness == "dark"
    caption = draft_caption(parse_keywords("jiangnan，white walls"), traits)
    assert caption.startswith("jiangnan, white walls, ")


def test_label_drafts_captions_and_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        scene(i).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    output = tmp_path / "metadata.csv"
    assert label_main(["--input", str(tmp_path), "--style-keywords", "jiangnan, canal"]) == 0
    records, _ = read_records(tmp_path, output)
    assert [r.path.name for r in records] == ["0.png", "1.png", "2.png"]
    assert all(r.draft and r.caption.startswith("jiangnan, canal, ") for r in records)
    assert "bad.png: unreadable image" in capsys.readouterr().err
    output.write_text("file,caption\n0.png,edited by hand\n", encoding="utf-8")
    assert label_main(["--input", str(tmp_path), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert output.read_text(encoding="utf-8") == "file,caption\n0.png,edited by hand\n"
    assert label_main(["--input", str(tmp_path), "--output", str(output), "--force"]) == 0
    assert "edited by hand" not in output.read_text(encoding="utf-8")


def problems_by_file(folder: Path, resolution: int = 64) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for finding in lint_folder(folder, resolution=resolution):
        found.setdefault(finding.file, []).append(f"{finding.severity}: {finding.problem}")
    return found


def test_lint_catches_each_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene(1).save(tmp_path / "ok.png")
    scene(2).save(tmp_path / "vague.png")
    scene(3).save(tmp_path / "vague_zh.png")
    scene(4).save(tmp_path / "long.png")
    scene(5).save(tmp_path / "tiny_source.png")
    scene(11).resize((40, 40)).save(tmp_path / "small.png")
    scene(6).filter(ImageFilter.GaussianBlur(6)).save(tmp_path / "blurry.png")
    scene(7).save(tmp_path / "dup_a.png")
    scene(7).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "not_dup.png")
    scene(7).resize((90, 90)).resize((96, 96)).save(tmp_path / "dup_b.png")
    scene(8).save(tmp_path / "nocaption.png")
    scene(9).save(tmp_path / "same_1.png")
    scene(10).save(tmp_path / "same_2.png")
    write_rows(tmp_path, [
        ("ok.png", "white walls and black tiles by a canal"),
        ("vague.png", "a beautiful nice view"),
        ("vague_zh.png", "很漂亮的江南"),
        ("long.png", " ".join(["misty canal with arched stone bridges"] * 12)),
        ("tiny_source.png", "orange blocks on grey"),
        ("small.png", "small blocks"),
        ("blurry.png", "soft shapes"),
        ("dup_a.png", "blocks one"),
        ("not_dup.png", "blocks mirrored"),
        ("dup_b.png", "blocks two"),
        ("same_1.png", "identical words"),
        ("same_2.png", "Identical words"),
        ("gone.png", "a missing file"),
    ])
    found = problems_by_file(tmp_path)
    assert "ok.png" not in found and "tiny_source.png" not in found, found
    assert any("vague words: beautiful, nice view, nice" in p for p in found["vague.png"])
    assert any("漂亮" in p for p in found["vague_zh.png"])
    assert any("tokens; CLIP reads only 77" in p for p in found["long.png"])
    assert any("40x40 is under 64 px" in p for p in found["small.png"])
    assert any("blurry" in p for p in found["blurry.png"])
    assert any("near-duplicate of dup_a.png" in p for p in found["dup_b.png"])
    assert "not_dup.png" not in found
    assert found["nocaption.png"] == ["error: missing caption"]
    assert any("same caption as same_2.png" in p for p in found["same_1.png"])
    assert any(p.startswith("error: listed in metadata.csv but the file is missing") for p in found["gone.png"])
    assert label_main(["lint", str(tmp_path), "--resolution", "64"]) == 1
    table = capsys.readouterr().out
    assert "how to fix" in table and "nocaption.png" in table


def test_lint_warnings_only_exit_zero(tmp_path: Path) -> None:
    scene(1).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a nice canal", encoding="utf-8")
    assert label_main(["lint", str(tmp_path), "--resolution", "64"]) == 0
    (tmp_path / "a.txt").unlink()
    assert label_main(["lint", str(tmp_path), "--resolution", "64"]) == 1


def test_token_estimate_is_conservative_for_chinese_and_english() -> None:
    assert 7 <= estimate_tokens("a photo of a cat") <= 9  # exact CLIP count: 7
    assert estimate_tokens("江南" * 40) > 77


def test_sharpness_separates_sharp_from_blurred() -> None:
    sharp = scene(3)
    assert laplacian_variance(sharp) > 100 > laplacian_variance(sharp.filter(ImageFilter.GaussianBlur(6)))
