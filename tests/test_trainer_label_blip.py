"""covergen-label with a local captioning model: a tiny BLIP built from the real transformers
classes, saved to a folder and loaded back offline by the label CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.dataset import read_records
from trainer.label import analyse, draft_caption
from trainer.label_cli import main as label_main

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = ["a", "red", "lantern", "over", "the", "canal", "night", "market", "white", "wall", "boat", "rain"]
IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~100k-parameter BlipForConditionalGeneration with a BERT word-piece tokenizer."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]", model_max_length=40)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    config = BlipConfig(
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 8,
        },
        text_config={
            "vocab_size": len(ids), "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "encoder_hidden_size": 32,
            "max_position_embeddings": 40, "pad_token_id": ids["[PAD]"],
            "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"],
        },
    )  # fmt: skip
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # never stop early or emit a special token: every caption has words
        model.text_decoder.cls.predictions.bias[: len(SPECIAL)] = -1e4
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def expected_caption(model_dir: Path, image: Image.Image) -> str:
    """What the saved model says about `image`, asked directly (the label tool must agree)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(model_dir, local_files_only=True)
    model = BlipForConditionalGeneration.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.no_grad():
        ids = model.generate(**processor(images=image, return_tensors="pt"), max_new_tokens=30)
    return str(processor.decode(ids[0], skip_special_tokens=True)).strip()


def draw_images(folder: Path) -> dict[str, Image.Image]:
    """Three differently coloured noisy pictures, one of them landscape."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    images: dict[str, Image.Image] = {}
    for i, (colour, size) in enumerate(
        [((200, 30, 30), (48, 48)), ((30, 60, 200), (64, 40)), ((240, 240, 240), (40, 40))]
    ):
        noise = rng.integers(-40, 40, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(colour)[None, None] + noise, 0, 255).astype(np.uint8)
        images[f"{i}.png"] = Image.fromarray(pixels)
        images[f"{i}.png"].save(folder / f"{i}.png")
    return images


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_label_with_blip_model_writes_model_captions(
    blip_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    images = draw_images(data)
    (data / "broken.png").write_bytes(b"not an image")
    output = data / "metadata.csv"
    argv = ["--input", str(data), "--captioner", str(blip_dir), "--style-keywords", "nightmarket"]

    assert label_main(argv) == 0
    assert "broken.png: unreadable image" in capsys.readouterr().err
    rows = read_rows(output)
    assert [row["file"] for row in rows] == sorted(images)
    for row in rows:
        image = images[row["file"]]
        model_words = expected_caption(blip_dir, image)
        assert model_words and set(model_words.split()) <= set(WORDS)
        assert row["caption"] == f"nightmarket, {model_words}"
        assert row["caption"] != draft_caption(["nightmarket"], analyse(image))
        assert row["draft"] == "model"  # keyword drafts say "yes"
    records, problems = read_records(data, output)
    assert len(records) == 3 and all(r.draft for r in records), "still reviewed before training"
    assert problems == ["broken.png: not listed in metadata.csv; add a row"]

    # An existing (possibly edited) file is kept unless --force, and the model is not even loaded.
    output.write_text("file,caption\n0.png,edited by hand\n", encoding="utf-8")
    assert label_main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert output.read_text(encoding="utf-8") == "file,caption\n0.png,edited by hand\n"
    assert label_main([*argv, "--force"]) == 0
    assert read_rows(output) == rows
    assert "3 by the captioning model" in capsys.readouterr().out
    # Without the model: keyword drafts, marked differently.
    assert label_main(["--input", str(data), "--style-keywords", "nightmarket", "--force"]) == 0
    assert {row["draft"] for row in read_rows(output)} == {"yes"}


def test_label_rejects_a_folder_that_is_not_a_captioning_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    draw_images(data)
    not_a_model = tmp_path / "empty-model"
    not_a_model.mkdir()
    assert label_main(["--input", str(data), "--captioner", str(not_a_model)]) == 2
    err = capsys.readouterr().err
    assert str(not_a_model) in err and "BLIP" in err
    assert not (data / "metadata.csv").exists()
