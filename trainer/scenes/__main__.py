"""Write the drawn scenes of each style to a folder that covergen-train reads.

    python -m trainer.scenes --out .cache/scenes [--styles jiangnan rain] [--count 256]

Each style gets `<out>/<style>/NNNN.png` and `<out>/<style>/metadata.csv`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.scenes.captions import CaptionWriter
from trainer.scenes.dataset import write_style_folder
from trainer.scenes.render import OVERLAY_STYLES, REGIONAL_STYLES

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".cache" / "scenes")
    parser.add_argument("--styles", nargs="*", default=[*REGIONAL_STYLES, *OVERLAY_STYLES])
    parser.add_argument("--count", type=int, default=256, help="images per style")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--styles-dir", type=Path, default=REPO_ROOT / "styles")
    args = parser.parse_args(argv)
    captions = CaptionWriter(args.styles_dir)
    for style in args.styles:
        folder = write_style_folder(style, args.out / style, args.count, args.seed, captions)
        print(f"wrote {args.count} scenes of {style} to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
