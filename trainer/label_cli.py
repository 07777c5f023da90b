"""`covergen-label`: draft captions for a folder of images, or lint a training folder.

    covergen-label --input DIR --output DIR/metadata.csv [--style-keywords "jiangnan, white walls"]
                   [--captioner /path/to/blip-dir] [--force]
    covergen-label lint DIR [--resolution 512] [--tokenizer DIR]

Lint exits 1 when it finds errors, 0 when there are only warnings (or nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from covergen.errors import ConfigError


def _label_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covergen-label", description="Draft captions for images.")
    parser.add_argument("--input", type=Path, required=True, help="folder of images")
    parser.add_argument("--output", type=Path, help="metadata.csv to write (default: DIR/metadata.csv)")
    parser.add_argument("--style-keywords", help='words every caption starts with, "a, b"')
    parser.add_argument("--captioner", type=Path, help="local BLIP captioning model folder")
    parser.add_argument("--force", action="store_true", help="replace an existing metadata file")
    return parser


def _lint_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covergen-label lint", description="Check a training folder.")
    parser.add_argument("folder", type=Path, help="folder of images with metadata.csv or .txt captions")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution in px")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        help="CLIP tokenizer folder (or a diffusers base folder) for exact token counts",
    )
    return parser


def _run_label(argv: list[str]) -> int:
    from .dataset import DRAFT_MODEL
    from .label import blip_captioner, label_folder, parse_keywords, write_metadata

    args = _label_parser().parse_args(argv)
    if not args.input.is_dir():
        raise ConfigError(f"--input {args.input} is not a folder of images")
    output = args.output or args.input / "metadata.csv"
    if output.exists() and not args.force:  # fail before the (slow) captioning
        write_metadata(output, [], force=False)
    captioner = blip_captioner(args.captioner) if args.captioner else None
    rows, problems = label_folder(args.input, parse_keywords(args.style_keywords), captioner)
    for line in problems:
        print(line, file=sys.stderr)
    write_metadata(output, rows, force=args.force)
    by_model = sum(1 for _, _, draft in rows if draft == DRAFT_MODEL)
    source = f" ({by_model} by the captioning model)" if args.captioner else ""
    print(f"wrote {len(rows)} draft captions{source} to {output}; review them, then clear the draft column")
    return 0


def _run_lint(argv: list[str]) -> int:
    from .lint import TokenCounter, estimate_tokens, format_table, lint_folder, tokenizer_counter

    args = _lint_parser().parse_args(argv)
    if not args.folder.is_dir():
        raise ConfigError(f"{args.folder} is not a folder; pass the training image folder")
    counter: TokenCounter = estimate_tokens
    if args.tokenizer is not None:
        from transformers import CLIPTokenizer

        folder = args.tokenizer / "tokenizer" if (args.tokenizer / "tokenizer").is_dir() else args.tokenizer
        counter = tokenizer_counter(CLIPTokenizer.from_pretrained(folder, local_files_only=True))
    findings = lint_folder(args.folder, resolution=args.resolution, count_tokens=counter)
    print(format_table(findings))
    return 1 if any(f.severity == "error" for f in findings) else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `covergen-label`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "lint":
            return _run_lint(argv[1:])
        return _run_label(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
