"""`covergen-server`: run the service with settings from COVERGEN_* variables and flags."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from covergen.errors import ConfigError
from covergen.logs import configure_logging
from covergen.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="covergen-server",
        description="Serve regional covers over gRPC. Every flag also reads COVERGEN_<NAME>.",
    )
    parser.add_argument("--base-model", help='"embedded", a diffusers directory or a .safetensors file')
    parser.add_argument("--styles-dir", help="folder of style cards, regions.yaml and glossary.yaml")
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--redis-url", help="unset: an embedded Redis server is started")
    parser.add_argument("--device", help='"auto", "cpu", "cuda", "cuda:1"')
    parser.add_argument("--log-format", choices=["text", "json"])
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = Settings(**overrides)
    except Exception as exc:  # pydantic's message names the bad variable
        print(f"covergen-server: invalid settings: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # load-time progress bars would garble JSON logs
    from covergen.server import serve  # heavy imports only after settings are valid

    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"covergen-server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
