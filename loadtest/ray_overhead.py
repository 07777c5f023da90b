"""The Ray Serve path against the single-process server, in one run: start-up, misses, hits.

    python -m loadtest.ray_overhead --requests 12

Starts `covergen-server` and then `covergen-ray` (two painter replicas) as child processes on
the same settings (embedded regional model, 64 px, few steps), one after the other so they do
not share the CPU, and sends each the same sequence from one caller: `--requests` misses
(distinct titles over four regions), then the same requests again (cache hits). Prints
medians, p90 and the Ray path's overhead per request (median difference and ratio).
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


async def _timed_calls(target: str, requests: list[pb.GenerateCoverRequest]) -> tuple[list[float], list[str]]:
    latencies, served_by = [], []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.CoverServiceStub(channel)
        for request in requests:
            started = time.perf_counter()
            reply = await stub.GenerateCover(request, timeout=300)
            latencies.append((time.perf_counter() - started) * 1000)
            served_by.append(reply.served_by)
    return latencies, served_by


async def measure(name: str, module: str, env: dict[str, str], n: int, log_dir: Path) -> dict[str, object]:
    server = ServerProcess(env, log_dir / f"{name}.log", module=module)
    started = time.perf_counter()
    await server.start(timeout_s=900)
    startup_s = time.perf_counter() - started
    requests = [
        pb.GenerateCoverRequest(region=REGIONS[i % len(REGIONS)], title=f"overhead {name} {i}")
        for i in range(n)
    ]
    try:
        await _timed_calls(server.target, requests[:1])  # first call: connection set-up
        misses, painted_by = await _timed_calls(server.target, requests[1:])
        hits, hit_by = await _timed_calls(server.target, requests[1:])
    finally:
        await server.terminate(120)
    assert set(hit_by) == {"cache"}, hit_by
    return {"name": name, "startup_s": startup_s, "misses": sorted(misses), "hits": sorted(hits),
            "painters": sorted(set(painted_by))}  # fmt: skip


def _row(result: dict[str, object], kind: str) -> str:
    values = result[kind]
    assert isinstance(values, list)
    return f"{result['name']:>6} {kind:>6}: median {statistics.median(values):8.1f} ms  p90 {percentile(values, 0.9):8.1f} ms"


async def run(n: int, steps: int) -> None:
    styles = prepare_styles()
    env = {
        "COVERGEN_STYLES_DIR": str(styles),
        "COVERGEN_DEFAULT_STEPS": str(steps),
        "COVERGEN_TORCH_THREADS": "1",
        "COVERGEN_DEVICE": "cpu",
    }
    log_dir = Path(tempfile.mkdtemp(prefix="covergen-ray-overhead-"))
    local = await measure("local", "covergen.cli", env, n, log_dir)
    ray = await measure("ray", "covergen.rayserve.cli", env, n, log_dir)
    print(
        f"{n - 1} misses then the same {n - 1} as hits, one caller, {steps} steps at 64 px; logs in {log_dir}"
    )
    for result in (local, ray):
        print(f"{result['name']:>6} start-up {result['startup_s']:.1f} s, painted by {result['painters']}")
        print(_row(result, "misses"))
        print(_row(result, "hits"))
    for kind in ("misses", "hits"):
        a, b = statistics.median(local[kind]), statistics.median(ray[kind])  # type: ignore[arg-type]
        print(f"ray/local {kind}: {b / a:.2f}x, overhead {b - a:+.1f} ms per request (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=13, help="calls per phase, the first one a warm-up")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.steps))


if __name__ == "__main__":
    main()
