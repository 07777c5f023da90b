"""The Ray Serve path against the single-process server, in one run: start-up, misses, hits.

    python -m loadtest.ray_overhead --requests 25

Starts `covergen-server` and `covergen-ray` (two painter replicas) as child processes on the
same settings (embedded regional model, 64 px, few steps, one torch thread each), each with its
own embedded Redis, and sends both the same sequence from one caller, alternating request by
request so both see the same machine load: `--requests` misses (distinct titles over four
regions), then the same requests again (cache hits). Prints medians, p90 and the Ray path's
overhead per request (median difference and ratio).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc
from loadtest.servers import ServerProcess, prepare_styles
from loadtest.stats import percentile

REGIONS = ("杭州", "成都", "北京", "广州")
SERVERS = {"local": "covergen.cli", "ray": "covergen.rayserve.cli"}


async def _timed(stub: pb_grpc.CoverServiceStub, request: pb.GenerateCoverRequest) -> tuple[float, str]:
    started = time.perf_counter()
    reply = await stub.GenerateCover(request, timeout=300)
    return (time.perf_counter() - started) * 1000, reply.served_by


async def _alternate(
    stubs: dict[str, pb_grpc.CoverServiceStub], requests: list[pb.GenerateCoverRequest]
) -> dict[str, tuple[list[float], set[str]]]:
    out: dict[str, tuple[list[float], set[str]]] = {name: ([], set()) for name in stubs}
    for request in requests:
        for name, stub in stubs.items():
            ms, served_by = await _timed(stub, request)
            out[name][0].append(ms)
            out[name][1].add(served_by)
    return out


def _line(name: str, kind: str, values: list[float]) -> str:
    ordered = sorted(values)
    return f"{name:>6} {kind:>6}: median {statistics.median(ordered):8.1f} ms  p90 {percentile(ordered, 90):8.1f} ms"


async def run(n: int, steps: int) -> None:
    env = {
        "COVERGEN_STYLES_DIR": str(prepare_styles()),
        "COVERGEN_DEFAULT_STEPS": str(steps),
        "COVERGEN_TORCH_THREADS": "1",
        "COVERGEN_DEVICE": "cpu",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="covergen-ray-overhead-"))
    servers = {
        name: ServerProcess(env, log_dir / f"{name}.log", module=module) for name, module in SERVERS.items()
    }
    startup: dict[str, float] = {}
    try:
        for name, server in servers.items():  # one at a time, so neither slows the other's start
            started = time.perf_counter()
            await server.start(timeout_s=900)
            startup[name] = time.perf_counter() - started
        channels = {name: grpc.aio.insecure_channel(s.target) for name, s in servers.items()}
        stubs = {name: pb_grpc.CoverServiceStub(ch) for name, ch in channels.items()}
        requests = [
            pb.GenerateCoverRequest(region=REGIONS[i % 4], title=f"overhead {i}") for i in range(n + 1)
        ]
        await _alternate(stubs, requests[:1])  # connections, first-call set-up
        misses = await _alternate(stubs, requests[1:])
        hits = await _alternate(stubs, requests[1:])
        for channel in channels.values():
            await channel.close()
    finally:
        for server in servers.values():
            if server.process is not None:
                await server.terminate(120)
    print(f"{n} misses, then the same {n} as hits; one caller alternating local/ray; {steps} steps at 64 px")
    for name in servers:
        print(f"{name:>6} start-up to SERVING {startup[name]:.1f} s; painted by {sorted(misses[name][1])}")
        print(_line(name, "misses", misses[name][0]))
        print(_line(name, "hits", hits[name][0]))
    assert hits["local"][1] == hits["ray"][1] == {"cache"}, (hits["local"][1], hits["ray"][1])
    for kind, result in (("misses", misses), ("hits", hits)):
        local, ray = statistics.median(result["local"][0]), statistics.median(result["ray"][0])
        print(f"ray/local {kind}: {ray / local:.2f}x, overhead {ray - local:+.1f} ms per request (median)")
    print(f"logs in {log_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=25, help="misses (and then hits) per server")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.steps))


if __name__ == "__main__":
    main()
