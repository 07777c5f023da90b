"""Demo adapters for the random `embedded` model, so adapter stacking is real on it.

Each style card whose adapter file is missing gets a small deterministic LoRA (rank 4 on the
UNet's attention projections), seeded from the style's name, written in the diffusers layout.
They are not trained: they give each region a different, repeatable look on the tiny model and
exercise the same loading and stacking code that trained adapters use. Real styles come from
`covergen-train`.

    python -m trainer.embedded.demo_adapters [--styles-dir styles]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from safetensors.torch import save_file

from covergen.styles import StyleLibrary

DEMO_RANK = 4
DEMO_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def demo_state_dict(unet: UNet2DConditionModel, name: str, rank: int = DEMO_RANK) -> dict[str, torch.Tensor]:
    """A deterministic LoRA state dict for `unet`, different for every style name."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") & (2**63 - 1)
    generator = torch.Generator("cpu").manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module_name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not module_name.endswith(DEMO_TARGETS):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
        up = torch.randn(module.out_features, rank, generator=generator) * 0.6
        tensors[f"unet.{module_name}.lora_A.weight"] = down.contiguous()
        tensors[f"unet.{module_name}.lora_B.weight"] = up.contiguous()
    return tensors


def ensure_demo_adapters(styles_dir: Path, unet: UNet2DConditionModel) -> list[Path]:
    """Write a demo adapter for every style whose adapter file is missing; returns what was written."""
    library = StyleLibrary.load(styles_dir)
    written: list[Path] = []
    for card in library:
        if card.adapter is None:
            continue
        path = styles_dir / card.name / card.adapter
        if path.exists():
            continue
        metadata = {
            "lora_adapter_metadata": json.dumps({"unet.r": DEMO_RANK, "unet.lora_alpha": DEMO_RANK}),
            "covergen_demo": "untrained demo adapter for the embedded tiny model",
        }
        tmp = path.with_suffix(".tmp")
        save_file(demo_state_dict(unet, card.name), str(tmp), metadata=metadata)
        tmp.replace(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    from covergen.models import load_base_model
    from covergen.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles-dir", type=Path)
    args = parser.parse_args(argv)
    settings = Settings() if args.styles_dir is None else Settings(styles_dir=args.styles_dir)
    if settings.base_model not in ("embedded", "embedded:tiny"):
        print(
            f"no demo adapters for base model {settings.base_model!r} (they are for the random 'embedded' model)"
        )
        return 0
    base = load_base_model("embedded", cache_dir=settings.resolved_cache_dir(), device="cpu", dtype="fp32")
    for path in ensure_demo_adapters(settings.styles_dir, base.pipeline.unet):
        print(f"wrote demo adapter {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
