"""`covergen`: call a running server from the shell and write the cover to a file.

covergen cover --region 杭州 --title "西湖边的早茶新店开张" -o cover.png
covergen styles
covergen resolve 成都
covergen prepare --title "西湖边的早茶新店开张" [--regions 杭州,苏州] [--file titles.txt]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from covergen import prepare_client
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

_FORMATS = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG, "webp": pb.IMAGE_FORMAT_WEBP}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covergen", description="Call a covergen server.")
    parser.add_argument("--server", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    cover = sub.add_parser("cover", help="generate one cover and write it to a file")
    cover.add_argument("--region", required=True, help="geo tag: 杭州, 330100, CN-ZJ, hangzhou")
    cover.add_argument("--title", required=True, help="article title (Chinese is fine)")
    cover.add_argument("-o", "--out", type=Path, default=Path("cover.png"), help="output file")
    cover.add_argument(
        "--format", choices=sorted(_FORMATS), help="default: from the file extension, else png"
    )
    cover.add_argument("--seed", type=int)
    cover.add_argument("--variant", type=int, default=0)
    cover.add_argument("--width", type=int, default=0)
    cover.add_argument("--height", type=int, default=0)
    cover.add_argument("--steps", type=int, default=0)
    cover.add_argument("--guidance", type=float)
    cover.add_argument(
        "--theme", action="append", default=[], help="overlay tag, repeatable: spring, rain, ink"
    )
    cover.add_argument("--weight", action="append", default=[], metavar="STYLE=W", help="reweight an adapter")
    sub.add_parser("styles", help="list the server's styles")
    resolve = sub.add_parser("resolve", help="show how a geo tag resolves")
    resolve.add_argument("region")
    prepare_client.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with grpc.insecure_channel(
        args.server, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as ch:
        stub = pb_grpc.CoverServiceStub(ch)
        try:
            if args.command == "cover":
                return _cover(stub, args)
            if args.command == "prepare":
                return prepare_client.run(stub, args)
            if args.command == "styles":
                for s in stub.ListStyles(pb.ListStylesRequest(), timeout=args.timeout).styles:
                    flag = "resident" if s.resident else ""
                    print(
                        f"{s.name:20} {s.kind:9} w={s.default_weight:<4g} {s.version or '-':16} {s.display_name} {flag}"
                    )
                return 0
            reply = stub.ResolveRegion(pb.ResolveRegionRequest(region=args.region), timeout=args.timeout)
            stack = " + ".join(f"{e.style} {e.weight:g}" for e in reply.stack) or "(no adapters)"
            suffix = " (unknown tag: default)" if reply.fallback else ""
            print(f"{' -> '.join(reply.region_path)} [{reply.level}]: {stack}{suffix}")
            return 0
        except grpc.RpcError as exc:
            print(f"covergen: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1


def _cover(stub: pb_grpc.CoverServiceStub, args: argparse.Namespace) -> int:
    fmt = args.format or {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(
        args.out.suffix.lower(), "png"
    )
    weights: dict[str, float] = {}
    for item in args.weight:
        name, _, value = item.partition("=")
        weights[name] = float(value)
    request = pb.GenerateCoverRequest(
        region=args.region,
        title=args.title,
        variant=args.variant,
        width=args.width,
        height=args.height,
        steps=args.steps,
        format=_FORMATS[fmt],
        themes=args.theme,
        adapter_weights=weights,
    )
    if args.seed is not None:
        request.seed = args.seed
    if args.guidance is not None:
        request.guidance_scale = args.guidance
    reply = stub.GenerateCover(request, timeout=args.timeout)
    args.out.write_bytes(reply.image)
    summary = {
        "file": str(args.out),
        "size": f"{reply.width}x{reply.height}",
        "region": " -> ".join(reply.region_path) + (" (fallback)" if reply.region_fallback else ""),
        "adapters": [f"{a.name}@{a.weight:g} ({a.version})" for a in reply.adapters],
        "prompt": reply.prompt,
        "seed": reply.seed,
        "cache_hit": reply.cache_hit,
        "total_ms": round(reply.timings.total_ms, 1),
    }
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
