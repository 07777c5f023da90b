"""Reading LoRA adapter files: safetensors only, checked, normalised to one layout.

Three on-disk layouts are understood, all in `.safetensors`:

- diffusers / peft (what `save_lora_weights` writes): `unet.<module>.lora_A.weight` [r, in],
  `unet.<module>.lora_B.weight` [out, r]; alpha from the `lora_adapter_metadata` header
  (`unet.lora_alpha`, `unet.r`, patterns), else alpha = r;
- kohya / A1111 (`lora_unet_<module with . -> _>.lora_down.weight`, `.lora_up.weight`, `.alpha`),
  text encoder under `lora_te_`;
- text encoder keys `text_encoder.<module>.lora_A.weight` in the diffusers layout.

Every layout becomes a `LoraWeights`: per target (`unet` or `text_encoder`) and module path, the
down factor A, the up factor B and the scale alpha / r. Pickle checkpoints are never opened.

Only plain LoRA is applied. Files of the other LyCORIS / peft formats (DoRA, LoCon with Tucker
decomposition, LoHa, LoKr) hold keys a plain reader would skip and then paint with the wrong
effect, so any key beyond down, up and alpha refuses the file, naming the format when it is known.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes

from covergen.errors import AdapterRejected

# pickle checkpoints, refused unopened everywhere (adapters and base models)
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
# `.lora_A.weight` / `.lora_B.weight` (peft) or `.lora.down.weight` / `.lora.up.weight` (what the
# diffusers training examples save after convert_state_dict_to_diffusers)
_DIFFUSERS_KEY = re.compile(r"\.(lora_A|lora_B|lora\.down|lora\.up)(\.[^.]+)?\.weight$")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder"}
_KOHYA_PARTS = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})

# Key fragments of adapter formats that are not plain LoRA -> (format, what it adds).
_OTHER_FORMATS = {
    "dora_scale": ("DoRA", "a per-module magnitude vector (.dora_scale)"),
    "lora_magnitude_vector": ("DoRA", "a per-module magnitude vector (peft lora_magnitude_vector)"),
    "lora_mid": ("LoCon with Tucker decomposition", "a middle convolution factor (.lora_mid)"),
    "hada_": ("LoHa", "Hadamard-product factors (.hada_w1_a, .hada_w2_b, ...)"),
    "lokr_": ("LoKr", "Kronecker-product factors (.lokr_w1, .lokr_w2, ...)"),
}


@dataclass(frozen=True)
class LoraFactor:
    """One adapted module: y += scale * B(A(x))."""

    down: torch.Tensor  # [r, in] (Linear) or [r, in, kh, kw] (Conv2d)
    up: torch.Tensor  # [out, r] (Linear) or [out, r, 1, 1] (Conv2d)
    scale: float  # alpha / r

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class LoraWeights:
    """An adapter file in memory, independent of its on-disk layout."""

    name: str
    version: str  # first 16 hex digits of the file's sha256
    path: Path | None
    factors: dict[str, dict[str, LoraFactor]] = field(default_factory=dict)  # target -> module -> factor
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(
            f.down.numel() * f.down.element_size() + f.up.numel() * f.up.element_size()
            for modules in self.factors.values()
            for f in modules.values()
        )

    def to(self, device: torch.device, dtype: torch.dtype) -> LoraWeights:
        moved = {
            target: {
                name: LoraFactor(f.down.to(device, dtype), f.up.to(device, dtype), f.scale)
                for name, f in modules.items()
            }
            for target, modules in self.factors.items()
        }
        return LoraWeights(self.name, self.version, self.path, moved, dict(self.metadata))


def content_version(raw: bytes) -> str:
    """An adapter's version as reported to clients: the first 16 hex digits of its sha256."""
    return hashlib.sha256(raw).hexdigest()[:16]


def file_version(path: Path) -> str:
    """`content_version` of a file on disk; empty when it cannot be read."""
    try:
        return content_version(path.read_bytes())
    except OSError:
        return ""


def read_lora_file(
    path: Path, name: str, module_names: Mapping[str, Iterable[str]] | None = None
) -> LoraWeights:
    """Read, check and normalise one adapter file.

    `module_names` maps a target ("unet", "text_encoder") to the module paths of the base model;
    it is needed to turn kohya's underscored names back into module paths. Raises
    `AdapterRejected` with the reason for anything that is not a well-formed LoRA safetensors.
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterRejected(
            f"adapter '{name}': {path.name} is a pickle checkpoint, which covergen never opens; "
            "convert it to .safetensors (e.g. with the trainer's export) and point the style card at it"
        )
    if path.suffix.lower() != ".safetensors":
        raise AdapterRejected(
            f"adapter '{name}': {path.name} is not a .safetensors file; adapters must be safetensors"
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AdapterRejected(f"adapter '{name}': cannot read {path}: {exc.strerror}") from exc
    try:
        tensors = load_safetensors_bytes(raw)
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for corrupt or truncated files
        raise AdapterRejected(
            f"adapter '{name}': {path.name} is corrupt or truncated ({exc}); re-export it from the trainer"
        ) from exc
    version = content_version(raw)
    factors = normalise_state_dict(tensors, metadata, name, module_names or {})
    return LoraWeights(name=name, version=version, path=path, factors=factors, metadata=metadata)


def normalise_state_dict(
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    name: str,
    module_names: Mapping[str, Iterable[str]],
) -> dict[str, dict[str, LoraFactor]]:
    """Turn a LoRA state dict in any understood layout into target -> module -> factor."""
    if not tensors:
        raise AdapterRejected(f"adapter '{name}': the file holds no tensors")
    _refuse_other_formats(tensors, name)
    if all(any(k.startswith(p) for p in _KOHYA_PREFIXES) for k in tensors):
        factors = _from_kohya(tensors, name, module_names)
    elif all(_DIFFUSERS_KEY.search(k) or k.endswith(".alpha") for k in tensors):
        factors = _from_diffusers(tensors, metadata, name)
    else:
        sample = next(iter(tensors))
        raise AdapterRejected(
            f"adapter '{name}': unrecognised LoRA key layout (e.g. '{sample}'); expected diffusers "
            "'unet.<module>.lora_A.weight' or kohya 'lora_unet_<module>.lora_down.weight' keys"
        )
    for target, modules in factors.items():
        for module, factor in modules.items():
            if factor.down.shape[0] != factor.up.shape[1]:
                raise AdapterRejected(
                    f"adapter '{name}': {target}.{module} has down rank {factor.down.shape[0]} "
                    f"but up rank {factor.up.shape[1]}; the file is inconsistent"
                )
            if not (torch.isfinite(factor.down).all() and torch.isfinite(factor.up).all()):
                raise AdapterRejected(f"adapter '{name}': {target}.{module} holds NaN or inf weights")
    return factors


def _refuse_other_formats(tensors: Mapping[str, torch.Tensor], name: str) -> None:
    """AdapterRejected for a DoRA, LoCon-Tucker, LoHa or LoKr file: served as plain LoRA, its
    extra factors would be dropped and the cover painted with the wrong effect."""
    for key in tensors:
        for fragment, (format_name, extra) in _OTHER_FORMATS.items():
            if fragment in key:
                raise AdapterRejected(
                    f"adapter '{name}': this is a {format_name} file (key '{key}' holds {extra}); "
                    "covergen applies plain LoRA only (down, up and alpha per module) and would paint "
                    f"it with the wrong effect; retrain or export it as a plain LoRA (covergen-train, "
                    "or kohya/LyCORIS with algo=lora and no DoRA or Tucker), or merge it into the base model"
                )


def _from_diffusers(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], name: str
) -> dict[str, dict[str, LoraFactor]]:
    configs = _peft_configs(metadata)
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        target, _, rest = key.partition(".")
        if target not in ("unet", "text_encoder"):
            raise AdapterRejected(
                f"adapter '{name}': key '{key}' targets '{target}'; only unet and text_encoder are supported"
            )
        if rest.endswith(".alpha"):
            pairs.setdefault((target, rest[: -len(".alpha")]), {})["alpha"] = tensor
            continue
        match = _DIFFUSERS_KEY.search(rest)
        assert match is not None  # guaranteed by the layout check
        kind = "A" if match.group(1) in ("lora_A", "lora.down") else "B"
        pairs.setdefault((target, rest[: match.start()]), {})[kind] = tensor.float()
    out: dict[str, dict[str, LoraFactor]] = {}
    for (target, module), parts in pairs.items():
        if "A" not in parts or "B" not in parts:
            raise AdapterRejected(f"adapter '{name}': {target}.{module} lacks its down (A) or up (B) weight")
        rank = int(parts["A"].shape[0])
        config = configs.get(target, {})
        if "alpha" in parts:
            alpha: object = float(parts["alpha"].item())
            rank_cfg: object = rank
        else:
            alpha = _pattern_value(config.get("alpha_pattern", {}), module, config.get("lora_alpha", rank))
            rank_cfg = _pattern_value(config.get("rank_pattern", {}), module, config.get("r", rank))
        scale = float(alpha) / float(rank_cfg)  # type: ignore[arg-type]
        out.setdefault(target, {})[module] = LoraFactor(parts["A"], parts["B"], scale)
    return out


def _peft_configs(metadata: dict[str, str]) -> dict[str, dict[str, object]]:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    flat = json.loads(raw)
    configs: dict[str, dict[str, object]] = {}
    for key, value in flat.items():
        target, _, option = key.partition(".")
        configs.setdefault(target, {})[option] = value
    return configs


def _pattern_value(pattern: object, module: str, default: object) -> object:
    if isinstance(pattern, dict):
        for key, value in pattern.items():
            if module == key or module.endswith("." + key):
                return value
    return default


def _from_kohya(
    tensors: dict[str, torch.Tensor], name: str, module_names: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, LoraFactor]]:
    lookup: dict[str, dict[str, str]] = {}
    for target, modules in module_names.items():
        names = lookup.setdefault(target, {})
        for module in modules:
            names[module.replace(".", "_")] = module
            if target == "text_encoder" and not module.startswith("text_model."):
                # kohya/A1111 files name CLIP modules `text_model_encoder_...`; transformers >= 5.6
                # dropped the `text_model.` level from CLIPTextModel's module paths
                names["text_model_" + module.replace(".", "_")] = module
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        stem, _, kind = key.partition(".")
        groups.setdefault(stem, {})[kind] = tensor
    out: dict[str, dict[str, LoraFactor]] = {}
    for stem, parts in groups.items():
        prefix = next(p for p in _KOHYA_PREFIXES if stem.startswith(p))
        target = _KOHYA_PREFIXES[prefix]
        flat = stem[len(prefix) :]
        if target not in lookup:
            raise AdapterRejected(f"adapter '{name}': cannot map kohya key '{stem}' without module names")
        module_path = lookup[target].get(flat)
        if module_path is None:
            raise AdapterRejected(
                f"adapter '{name}': kohya module '{stem}' does not exist in the base model's {target}; "
                "was it trained for another base architecture?"
            )
        unknown = sorted(set(parts) - _KOHYA_PARTS)
        if unknown:
            raise AdapterRejected(
                f"adapter '{name}': kohya module '{stem}' has key '{stem}.{unknown[0]}', which plain LoRA "
                "does not have (only .lora_down.weight, .lora_up.weight and .alpha); covergen would ignore "
                "it and paint with the wrong effect; export the adapter as a plain LoRA"
            )
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise AdapterRejected(f"adapter '{name}': '{stem}' lacks lora_down or lora_up weights")
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        rank = int(down.shape[0])
        alpha = float(parts["alpha"].item()) if "alpha" in parts else float(rank)
        out.setdefault(target, {})[module_path] = LoraFactor(down, up, alpha / rank)
    return out
