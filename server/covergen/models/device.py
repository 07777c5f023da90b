"""Choosing the torch device and dtype the base model runs on.

"auto" means CUDA in fp16 when a GPU is present, else Apple's MPS, else CPU, in fp32 off CUDA.
The server and the trainer both resolve devices here. Either can be overridden:
a device string torch understands ("cpu", "cuda", "cuda:1", "mps") and a dtype name
("fp32", "fp16", "bf16"). A request the machine cannot honour is a ConfigError at start-up,
not a silent fallback.
"""

from __future__ import annotations

import torch

from covergen.errors import ConfigError

DEVICE_SETTING = "COVERGEN_DEVICE"
DTYPE_SETTING = "COVERGEN_DTYPE"

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def torch_device(device: str, setting: str = DEVICE_SETTING) -> torch.device:
    """The torch device `device` names ("auto": cuda, then mps, then cpu); ConfigError naming
    `setting` (the knob to change) when this machine cannot run it."""
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"device {device!r} is not a torch device; set {setting} to auto, cpu, cuda or cuda:N"
        ) from exc
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {device!r} asks for CUDA but this machine has no usable GPU; "
                f"set {setting}=cpu (or auto)"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {count} GPU(s), "
                f"cuda:0..cuda:{count - 1}; set {setting} to one of those"
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} is not available here; set {setting}=cpu")
    return resolved


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    name = dtype.strip().lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(
            f"dtype {dtype!r} is not supported; set {DTYPE_SETTING} to auto, fp32, fp16 or bf16"
        )
    resolved = DTYPES[name]
    if resolved is torch.float16 and device.type == "cpu":
        raise ConfigError(
            f"dtype {dtype!r} on the CPU is slow and unsupported by some layers; "
            f"set {DTYPE_SETTING}=fp32 (or bf16) for CPU, or run on a GPU"
        )
    return resolved


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The (device, dtype) to run on: auto is CUDA+fp16 if available, else CPU+fp32."""
    resolved = torch_device(device)
    return resolved, _resolve_dtype(dtype, resolved)
