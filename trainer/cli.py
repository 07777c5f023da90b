"""`covergen-train`: train a style adapter, merge it into a base, or publish it to styles/.

    covergen-train --config styles/jiangnan/train.yaml [--resume] [--print-config] [--max-steps N]
                   [--events progress.jsonl]
    covergen-train merge --base SPEC --lora FILE --weight 0.8 --out merged.safetensors
    covergen-train publish --output-dir OUT --style NAME --styles-dir styles/ [--server H:P --token T]

Mistakes in the config or the data end the run with one line per problem and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from covergen.errors import ConfigError

_SUBCOMMANDS = ("train", "merge", "publish")


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covergen-train", description="Train a style LoRA adapter.")
    parser.add_argument("--config", type=Path, required=True, help="styles/<name>/train.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the effective config, exit")
    parser.add_argument("--max-steps", type=int, help="stop after N optimizer steps (max_train_steps)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--events", type=Path, help="append progress events as JSON lines to this file (the studio reads it)"
    )
    return parser


def _event_writer(path: Path) -> Callable[[str, dict[str, Any]], None]:
    """A `train(on_event=...)` hook appending `{"kind": ..., "t": unix time, ...}` lines, flushed each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", encoding="utf-8")

    def write(kind: str, fields: dict[str, Any]) -> None:
        handle.write(json.dumps({"kind": kind, "t": time.time(), **fields}, ensure_ascii=False) + "\n")
        handle.flush()

    return write


def _merge_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covergen-train merge", description="Fuse an adapter into a base model (one file)."
    )
    parser.add_argument("--base", required=True, help="'embedded', a diffusers folder or a .safetensors")
    parser.add_argument("--lora", type=Path, required=True, help="adapter .safetensors")
    parser.add_argument("--weight", type=float, default=1.0, help="adapter strength, 0..2")
    parser.add_argument("--out", type=Path, required=True, help="merged .safetensors to write")
    return parser


def _publish_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covergen-train publish", description="Install a trained adapter as a style."
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="output_dir of the run")
    parser.add_argument("--style", required=True, help="style name, e.g. jiangnan")
    parser.add_argument("--styles-dir", type=Path, default=Path("styles"), help="styles library root")
    parser.add_argument("--server", help="host:port of a running server to reload")
    parser.add_argument("--token", help="admin token (COVERGEN_ADMIN_TOKEN of the server)")
    return parser


def _run_train(argv: list[str]) -> int:
    from .config import load_config

    args = _train_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.resume:
        overrides["resume"] = True
    if args.max_steps is not None:
        overrides["max_train_steps"] = args.max_steps
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config.to_json())
        return 0
    from .train import train

    if args.events is not None:
        result = train(config, show_progress=not args.quiet, on_event=_event_writer(args.events))
    else:
        result = train(config, show_progress=not args.quiet)
    final = result.final_validation_loss
    start = result.start_validation_loss
    print(f"trained {result.global_step} steps on {result.num_train_images} images")
    if final is not None and start is not None:
        print(f"held-out loss {start:.4f} -> {final:.4f}")
    print(f"diffusers adapter: {result.diffusers_path}")
    print(f"kohya/WebUI adapter: {result.kohya_path}")
    if result.skipped:
        print(f"{len(result.skipped)} files skipped (listed above)")
    return 0


def _run_merge(argv: list[str]) -> int:
    from .merge import merge_adapter

    args = _merge_parser().parse_args(argv)
    out = merge_adapter(args.base, args.lora, args.weight, args.out)
    print(f"merged model: {out}")
    return 0


def _run_publish(argv: list[str]) -> int:
    from .publish import notify_server, publish

    args = _publish_parser().parse_args(argv)
    result = publish(args.output_dir, args.style, args.styles_dir)
    print(f"adapter: {result.adapter_path}")
    print(f"style card: {result.card_path} ({'written' if result.card_written else 'kept as is'})")
    if args.server:
        reloaded, rejected = notify_server(args.server, args.token, args.style)
        print(f"server reloaded: {', '.join(reloaded) or 'nothing'}")
        for line in rejected:
            print(f"server rejected: {line}", file=sys.stderr)
        return 1 if any(line.startswith(f"{args.style}:") for line in rejected) else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `covergen-train` and `python -m trainer`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    command = argv[0] if argv and argv[0] in _SUBCOMMANDS else "train"
    if argv and argv[0] in _SUBCOMMANDS:
        argv = argv[1:]
    runner = {"train": _run_train, "merge": _run_merge, "publish": _run_publish}[command]
    try:
        return runner(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
