"""train.yaml validation: unknown keys and bad values fail early, naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from covergen.errors import ConfigError
from trainer.cli import main as train_main
from trainer.config import load_config

MINIMAL = {"train_data_dir": "data", "base_model": "embedded", "output_dir": "out"}


def write_yaml(folder: Path, values: dict[str, object]) -> Path:
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
    return path


def test_minimal_config_fills_defaults_and_resolves_paths(tmp_path: Path) -> None:
    config = load_config(write_yaml(tmp_path, MINIMAL))
    assert config.train_data_dir == tmp_path / "data"
    assert config.output_dir == tmp_path / "out"
    assert config.effective_resolution == 64  # the embedded base's size
    assert config.lr_scheduler == "constant"


def test_non_embedded_base_defaults_to_512(tmp_path: Path) -> None:
    config = load_config(write_yaml(tmp_path, {**MINIMAL, "base_model": "bases/sd15"}))
    assert config.effective_resolution == 512
    assert config.base_model == str(tmp_path / "bases" / "sd15")


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.yaml: unknown key 'lora_rnak'"):
        load_config(write_yaml(tmp_path, {**MINIMAL, "lora_rnak": 4}))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lora_rank", 0, r"train\.yaml: lora_rank must be 1\.\.256, got 0"),
        ("lora_rank", 512, r"lora_rank must be 1\.\.256, got 512"),
        ("learning_rate", -1e-4, r"learning_rate must be > 0"),
        ("batch_size", 0, r"batch_size must be >= 1, got 0"),
        ("lr_scheduler", "exponential", r"lr_scheduler"),
        ("mixed_precision", "fp8", r"mixed_precision"),
        ("caption_dropout", 1.5, r"caption_dropout must be in \[0, 1\)"),
        ("resolution", 100, r"resolution must be a multiple of 8"),
        ("snr_gamma", 0, r"snr_gamma must be > 0"),
        ("validation_split", 0.9, r"validation_split must be 0\.\.0\.5"),
        ("target_modules", [], r"target_modules must name at least one module"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(
    tmp_path: Path, key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(tmp_path, {**MINIMAL, key: value}))


def test_missing_required_key(tmp_path: Path) -> None:
    values = dict(MINIMAL)
    del values["base_model"]
    with pytest.raises(ConfigError, match=r"train\.yaml: required key 'base_model' is missing"):
        load_config(write_yaml(tmp_path, values))


def test_target_module_aliases_map_to_diffusers_names(tmp_path: Path) -> None:
    aliases = ["q_proj", "k_proj", "v_proj", "out_proj", "to_q"]
    config = load_config(write_yaml(tmp_path, {**MINIMAL, "target_modules": aliases}))
    assert config.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]


def test_validation_prompts_is_an_alias_of_sample_prompts(tmp_path: Path) -> None:
    config = load_config(write_yaml(tmp_path, {**MINIMAL, "validation_prompts": ["江南 白墙"]}))
    assert config.sample_prompts == ["江南 白墙"]


def test_cli_overrides_and_print_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path, MINIMAL)
    assert train_main(["--config", str(path), "--print-config", "--max-steps", "7", "--resume"]) == 0
    out = capsys.readouterr().out
    assert '"max_train_steps": 7' in out
    assert '"resume": true' in out
    assert '"resolution": 64' in out


def test_cli_reports_config_errors_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path, {**MINIMAL, "lora_rank": 0})
    assert train_main(["--config", str(path)]) == 2
    assert "lora_rank must be 1..256, got 0" in capsys.readouterr().err


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "trainer" / "examples" / "train.yaml"
    config = load_config(example)
    assert config.target_modules == ["to_q", "to_k", "to_v", "to_out.0"]
    assert config.lr_scheduler == "cosine"
