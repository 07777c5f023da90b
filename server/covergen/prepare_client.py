"""`covergen prepare`: queue covers ahead of readers from a publishing pipeline or a daily job.

    covergen prepare --title "西湖边的早茶新店开张"                 every region
    covergen prepare --title "..." --regions 杭州,苏州,成都          some regions
    covergen prepare --file titles.txt --variants 2                one title per line

Titles go to the server in chunks (PrepareCovers, at most --chunk titles per call); then, unless
--no-wait, a progress bar follows the covers until each is cached or dead-lettered (by calling
PrepareCovers with count_only every --poll seconds). Exit code 0 when every cover is cached,
1 when some failed (their jobs are on the dead-letter stream), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

FORMATS = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG, "webp": pb.IMAGE_FORMAT_WEBP}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    prepare = sub.add_parser("prepare", help="queue covers ahead of readers (PrepareCovers)")
    prepare.add_argument("--title", action="append", default=[], help="article title, repeatable")
    prepare.add_argument("--file", type=Path, help="a file of titles, one per line (blank lines skipped)")
    prepare.add_argument("--regions", default="", help="comma-separated geo tags (default: every region)")
    prepare.add_argument("--variants", type=int, default=0, help="covers per region (default 1)")
    prepare.add_argument("--width", type=int, default=0)
    prepare.add_argument("--height", type=int, default=0)
    prepare.add_argument("--steps", type=int, default=0)
    prepare.add_argument("--format", choices=sorted(FORMATS), default="png")
    prepare.add_argument("--chunk", type=int, default=20, help="titles per PrepareCovers call (default 20)")
    prepare.add_argument("--no-wait", action="store_true", help="queue and exit without following progress")
    prepare.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    prepare.add_argument(
        "--progress-timeout", type=float, default=3600.0, help="give up following after this"
    )


@dataclass
class _Totals:
    regions: int = 0
    covers: int = 0
    cached: int = 0
    queued: int = 0
    in_progress: int = 0
    failed: int = 0
    chunks: list[list[str]] = field(default_factory=list)

    def add(self, reply: pb.PrepareCoversResponse) -> None:
        for name in ("regions", "covers", "cached", "queued", "in_progress", "failed"):
            setattr(self, name, getattr(self, name) + getattr(reply, name))


def read_titles(args: argparse.Namespace) -> list[str]:
    titles = [t.strip() for t in args.title if t.strip()]
    if args.file is not None:
        titles += [
            line.strip() for line in args.file.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return list(dict.fromkeys(titles))


def run(stub: pb_grpc.CoverServiceStub, args: argparse.Namespace) -> int:
    titles = read_titles(args)
    if not titles:
        print("covergen prepare: give --title or --file", file=sys.stderr)
        return 2
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    totals = _Totals()
    for start in range(0, len(titles), max(1, args.chunk)):
        chunk = titles[start : start + max(1, args.chunk)]
        totals.add(stub.PrepareCovers(_request(args, chunk, regions), timeout=args.timeout))
        totals.chunks.append(chunk)
    summary = {k: getattr(totals, k) for k in ("regions", "covers", "cached", "queued", "in_progress")}
    print(json.dumps({"titles": len(titles), **summary}, ensure_ascii=False))
    if args.no_wait:
        return 0
    done, failed = _follow(stub, args, regions, totals)
    print(json.dumps({"covers": totals.covers, "cached": done, "failed": failed}, ensure_ascii=False))
    return 0 if failed == 0 and done == totals.covers else 1


def _request(
    args: argparse.Namespace, titles: list[str], regions: list[str], count_only: bool = False
) -> pb.PrepareCoversRequest:
    return pb.PrepareCoversRequest(
        titles=titles,
        regions=regions,
        variants=args.variants,
        width=args.width,
        height=args.height,
        steps=args.steps,
        format=FORMATS[args.format],
        count_only=count_only,
    )


def _follow(
    stub: pb_grpc.CoverServiceStub, args: argparse.Namespace, regions: list[str], totals: _Totals
) -> tuple[int, int]:
    """Poll count_only until every cover is cached or failed; returns (cached, failed)."""
    give_up = time.monotonic() + args.progress_timeout
    cached = failed = 0
    with tqdm(total=totals.covers, unit="cover", desc="preparing", file=sys.stderr) as bar:
        while True:
            now = _Totals()
            for chunk in totals.chunks:
                now.add(
                    stub.PrepareCovers(_request(args, chunk, regions, count_only=True), timeout=args.timeout)
                )
            cached, failed = now.cached, now.failed
            bar.update(cached + failed - bar.n)
            bar.set_postfix(failed=failed)
            if cached + failed >= totals.covers or time.monotonic() > give_up:
                return cached, failed
            time.sleep(args.poll)  # a remote service's progress: nothing to wait on but time
