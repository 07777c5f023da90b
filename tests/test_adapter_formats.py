"""Adapter files in formats that are not plain LoRA are refused, by name, and logged.

DoRA, LoCon with Tucker decomposition, LoHa and LoKr files (as kohya sd-scripts, LyCORIS and peft
write them) hold keys a plain LoRA reader would skip, then paint with the wrong effect. Each file
here is a real safetensors file written with `safetensors.torch.save_file`, in the key layout
those tools use, for one attention projection of the SD 1.5 UNet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from covergen.adapters.files import read_lora_file
from covergen.adapters.registry import AdapterRegistry, AdapterSource
from covergen.errors import AdapterRejected

MODULE = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
KOHYA = "lora_unet_" + MODULE.replace(".", "_")
MODULES = {"unet": [MODULE], "text_encoder": []}
RANK, WIDTH = 4, 32


def plain_kohya() -> dict[str, torch.Tensor]:
    return {
        f"{KOHYA}.lora_down.weight": torch.randn(RANK, WIDTH),  # [r, in]
        f"{KOHYA}.lora_up.weight": torch.randn(WIDTH, RANK),  # [out, r]
        f"{KOHYA}.alpha": torch.tensor(float(RANK)),
    }


def peft_lora() -> dict[str, torch.Tensor]:
    return {
        f"unet.{MODULE}.lora_A.weight": torch.randn(RANK, WIDTH),
        f"unet.{MODULE}.lora_B.weight": torch.randn(WIDTH, RANK),
    }


FORMATS = {
    # kohya / LyCORIS DoRA: plain factors plus a magnitude per output row
    "dora-kohya": ({**plain_kohya(), f"{KOHYA}.dora_scale": torch.ones(1, WIDTH)}, "DoRA"),
    # peft DoRA (use_dora=True), as diffusers' save_lora_weights writes it
    "dora-peft": ({**peft_lora(), f"unet.{MODULE}.lora_magnitude_vector": torch.ones(WIDTH)}, "DoRA"),
    # LoCon with use_tucker: a middle factor between down and up
    "locon-tucker": (
        {**plain_kohya(), f"{KOHYA}.lora_mid.weight": torch.randn(RANK, RANK, 3, 3)},
        "LoCon with Tucker decomposition",
    ),
    # LyCORIS LoHa: two Hadamard-multiplied low-rank pairs, no lora_down / lora_up at all
    "loha": (
        {
            f"{KOHYA}.hada_w1_a": torch.randn(WIDTH, RANK),
            f"{KOHYA}.hada_w1_b": torch.randn(RANK, WIDTH),
            f"{KOHYA}.hada_w2_a": torch.randn(WIDTH, RANK),
            f"{KOHYA}.hada_w2_b": torch.randn(RANK, WIDTH),
            f"{KOHYA}.alpha": torch.tensor(float(RANK)),
        },
        "LoHa",
    ),
    # LyCORIS LoKr: a Kronecker product of a small full factor and a low-rank pair
    "lokr": (
        {
            f"{KOHYA}.lokr_w1": torch.randn(4, 4),
            f"{KOHYA}.lokr_w2_a": torch.randn(8, RANK),
            f"{KOHYA}.lokr_w2_b": torch.randn(RANK, 8),
            f"{KOHYA}.alpha": torch.tensor(float(RANK)),
        },
        "LoKr",
    ),
}


def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def test_plain_kohya_and_peft_files_are_read(tmp_path: Path) -> None:
    for name, tensors in (("kohya", plain_kohya()), ("peft", peft_lora())):
        weights = read_lora_file(write(tmp_path / f"{name}.safetensors", tensors), name, MODULES)
        assert list(weights.factors["unet"]) == [MODULE]
        assert weights.factors["unet"][MODULE].rank == RANK


@pytest.mark.parametrize("kind", FORMATS)
def test_other_adapter_formats_are_refused_by_name(tmp_path: Path, kind: str) -> None:
    tensors, format_name = FORMATS[kind]
    path = write(tmp_path / f"{kind}.safetensors", tensors)
    with pytest.raises(AdapterRejected) as caught:
        read_lora_file(path, kind, MODULES)
    message = str(caught.value)
    assert f"is a {format_name} file" in message
    assert "plain LoRA" in message and "retrain or export it as a plain LoRA" in message


def test_an_unknown_kohya_key_is_refused(tmp_path: Path) -> None:
    tensors = {**plain_kohya(), f"{KOHYA}.lora_extra.weight": torch.randn(WIDTH)}
    path = write(tmp_path / "extra.safetensors", tensors)
    with pytest.raises(AdapterRejected, match=r"has key '.*\.lora_extra\.weight', which plain LoRA does not"):
        read_lora_file(path, "extra", MODULES)


def test_every_rejected_adapter_is_logged_at_warning_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = AdapterRegistry(
        module_names=MODULES, check=lambda _w: None, device=torch.device("cpu"), dtype=torch.float32
    )
    loha = write(tmp_path / "loha.safetensors", FORMATS["loha"][0])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with caplog.at_level(logging.WARNING, logger="covergen.adapters.registry"):
        for style, path in (("rain", loha), ("spring", corrupt)):
            with pytest.raises(AdapterRejected):
                registry.load(AdapterSource(style, path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "style rain" in warnings[0] and "LoHa" in warnings[0]
    assert "style spring" in warnings[1] and "corrupt or truncated" in warnings[1]
    assert registry.resident_names() == []
