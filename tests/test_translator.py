"""The local translator path (COVERGEN_TRANSLATOR): a tiny random MarianMT model and a Marian
tokenizer built offline (sentencepiece trains both vocabularies in-process from a few lines),
batched and memoised per title, whitelisted like every other subject word, and the dictionary
path whenever the translator is broken or over its time budget."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from covergen.errors import ConfigError
from covergen.prompts import PromptBuilder
from covergen.styles import StyleLibrary
from covergen.titles.translator import MarianTranslator

STYLES_ROOT = Path(__file__).resolve().parents[1] / "styles"
ITEM = re.compile(r"[a-z0-9][a-z0-9 '-]*")
ZH = ["黄鹤楼夜游灯光秀", "南京路步行街年货市集", "四川地震救援进行中", "杭州西湖龙井茶园迎来春茶"]
EN = ["yellow crane tower night tour light show", "nanjing road pedestrian street market",
      "sichuan earthquake rescue under way", "hangzhou west lake tea garden spring tea"]  # fmt: skip


def _spm(lines: list[str], path: Path) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 5), model_writer=model, vocab_size=40, character_coverage=1.0,
        bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, hard_vocab_limit=False,
    )  # fmt: skip
    path.write_bytes(model.getvalue())


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder = tmp_path_factory.mktemp("opus-mt-tiny")
    _spm(ZH, folder / "source.spm")
    _spm(EN, folder / "target.spm")
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for name in ("source.spm", "target.spm"):
        pieces = spm.SentencePieceProcessor(model_file=str(folder / name))
        for index in range(pieces.get_piece_size()):
            vocab.setdefault(pieces.id_to_piece(index), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(
        source_spm=str(folder / "source.spm"), target_spm=str(folder / "target.spm"),
        vocab=str(folder / "vocab.json"), source_lang="zh", target_lang="en", model_max_length=64,
    )  # fmt: skip
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=2, eos_token_id=0, decoder_start_token_id=2, forced_eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def library() -> StyleLibrary:
    return StyleLibrary.load(STYLES_ROOT)


@pytest.fixture(scope="module")
def plain(library: StyleLibrary) -> PromptBuilder:
    """The dictionary path: the builder without a translator (twins share its jieba)."""
    return PromptBuilder.load(STYLES_ROOT / "glossary.yaml", reserved_words=library.trigger_words())


def test_titles_go_through_the_translator_batched_and_memoised(
    marian_dir: Path, library: StyleLibrary, plain: PromptBuilder
) -> None:
    translator = MarianTranslator.load(marian_dir, "cpu", budget_s=60)
    texts = translator.translate([ZH[0], ZH[1], ZH[0]])
    assert translator.calls == 1 and texts[0] == texts[2] and all(isinstance(t, str) for t in texts)
    builder = plain.with_translator(translator)
    words = builder.subject_words(ZH[0])
    assert translator.calls == 1  # memoised per title
    assert words[:2] == ("yellow crane tower", "multi-eaved pavilion on a hill")  # the landmark still wins
    assert all(ITEM.fullmatch(w) for w in words)  # random model output, whitelisted
    assert "night trip" in plain.subject_words(ZH[0]) and "night trip" not in words  # no dictionary words
    built = builder.build(ZH[2], library.get("default"), [library.get("jiangnan")])
    assert built.prompt.isascii() and not set("<>{}[]()|:") & set(built.prompt)
    translator.close()


def test_a_slow_translator_falls_back_to_the_dictionary_then_serves_from_its_memo(
    marian_dir: Path, plain: PromptBuilder
) -> None:
    translator = MarianTranslator.load(marian_dir, "cpu", budget_s=0.05)
    builder = plain.with_translator(translator)
    with translator.model_lock:  # the model is busy: this title cannot be translated in time
        assert builder.subject_words(ZH[3]) == plain.subject_words(ZH[3])
    translator._pool.submit(lambda: None).result(timeout=120)  # one worker, in order: the translation is done
    calls = translator.calls
    assert builder.subject_words(ZH[3]) != plain.subject_words(ZH[3])  # now the translator's words
    assert translator.calls == calls  # from the memo, no new generate()
    translator.close()


def test_a_broken_translator_falls_back_to_the_dictionary(marian_dir: Path, plain: PromptBuilder) -> None:
    loaded = MarianTranslator.load(marian_dir, "cpu")
    broken = MarianTranslator(
        loaded._model, None, loaded._device, budget_s=60
    )  # no tokenizer: every call fails
    assert broken.translate([ZH[1]]) == [None]
    assert plain.with_translator(broken).subject_words(ZH[1]) == plain.subject_words(ZH[1])


def test_a_folder_without_a_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is not a MarianMT folder .*unset it to use the dictionary"):
        MarianTranslator.load(tmp_path)
