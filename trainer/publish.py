"""Putting a trained adapter into the style library, and telling a running server about it.

`publish` copies the run's adapter to `styles/<name>/adapter.safetensors` (temp file + rename,
so a server reading the folder never sees half a file) and writes a minimal `style.yaml` card
when the style has none yet; an existing card, possibly edited by staff, is left alone.
`notify_server` calls the admin RPC `ReloadStyles` so the server picks the new adapter up.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from covergen.errors import ConfigError
from covergen.styles import CARD_FILE_NAME

from .export import DIFFUSERS_WEIGHT_NAME

ADAPTER_FILE_NAME = "adapter.safetensors"


@dataclass
class PublishResult:
    """Where the adapter went, whether a card was written, and what the server said."""

    adapter_path: Path
    card_path: Path
    card_written: bool
    reloaded: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)


def find_adapter(output_dir: Path) -> Path:
    """The adapter a run wrote: the kohya file named in training.json, else the diffusers file."""
    summary = output_dir / "training.json"
    if summary.is_file():
        name = json.loads(summary.read_text(encoding="utf-8")).get("kohya_file")
        if name and (output_dir / name).is_file():
            return output_dir / name
    if (output_dir / DIFFUSERS_WEIGHT_NAME).is_file():
        return output_dir / DIFFUSERS_WEIGHT_NAME
    raise ConfigError(
        f"no trained adapter in {output_dir} (no training.json or {DIFFUSERS_WEIGHT_NAME}); "
        "pass the output_dir of a finished covergen-train run"
    )


def minimal_card(style: str) -> dict[str, object]:
    """A valid starting `style.yaml` for a new regional style; staff refine the prompt."""
    return {
        "name": style,
        "display_name": style.replace("_", " ").replace("-", " ").title(),
        "kind": "regional",
        "adapter": ADAPTER_FILE_NAME,
        "default_weight": 0.8,
        "prompt": {
            "subject": "{subject}",
            "scene": "",
            "style": f"{style} style",
            "details": "",
        },
        "negative_prompt": "blurry, low quality, text, watermark",
        "trigger_words": [],
        "aliases": [],
    }


def _copy_atomically(source: Path, target: Path) -> None:
    temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(source, temp)
    os.replace(temp, target)


def publish(output_dir: Path, style: str, styles_dir: Path) -> PublishResult:
    """Install the adapter of `output_dir` as style `style` under `styles_dir`."""
    from covergen.styles import STYLE_NAME_PATTERN, load_card

    if not STYLE_NAME_PATTERN.fullmatch(style):
        raise ConfigError(
            f"--style {style!r} is not a valid style name: use a-z, 0-9, '_' and '-' "
            "(for example --style jiangnan)"
        )
    source = find_adapter(output_dir)
    folder = styles_dir / style
    folder.mkdir(parents=True, exist_ok=True)
    adapter_path = folder / ADAPTER_FILE_NAME
    card_path = folder / CARD_FILE_NAME
    written = False
    if not card_path.exists():
        text = yaml.safe_dump(minimal_card(style), allow_unicode=True, sort_keys=False)
        temp = card_path.with_name(f".{CARD_FILE_NAME}.tmp{os.getpid()}")
        temp.write_text(text, encoding="utf-8")
        os.replace(temp, card_path)
        written = True
    card = load_card(card_path)  # the server's own rules: a card it would reject fails here
    if card.adapter not in (None, ADAPTER_FILE_NAME):
        adapter_path = folder / card.adapter
    _copy_atomically(source, adapter_path)
    return PublishResult(adapter_path=adapter_path, card_path=card_path, card_written=written)


def notify_server(address: str, token: str | None, style: str) -> tuple[list[str], list[str]]:
    """Ask the server at `address` to reload styles; returns (reloaded, rejected).

    `style` is only used in the error message: ReloadStyles reloads every changed style.
    """
    import grpc

    from covergen.v1 import cover_pb2, cover_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = cover_pb2_grpc.AdminServiceStub(channel)
        try:
            reply = stub.ReloadStyles(cover_pb2.ReloadStylesRequest(), metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            hint = {
                grpc.StatusCode.UNAUTHENTICATED: "pass --token with the server's COVERGEN_ADMIN_TOKEN",
                grpc.StatusCode.PERMISSION_DENIED: "the server has admin RPCs switched off",
                grpc.StatusCode.UNAVAILABLE: f"is the server running at {address}?",
            }.get(code, "see the server log")
            raise ConfigError(
                f"published '{style}' but ReloadStyles at {address} failed ({code}): {hint}"
            ) from None
    return list(reply.reloaded), list(reply.rejected)
