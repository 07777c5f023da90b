"""Feed-time serving, measured: answers under a backlog with a budget, and a full prepare.

    python -m loadtest.feed_bench                       # default model (embedded:regional), 64 px
    python -m loadtest.feed_bench --budget-ms 300 --calls 40 --backlog 6

Spawns one covergen-server child (ServerProcess) on a fresh embedded Redis and prints:

1. Under a backlog (`--backlog` live no-budget calls kept in flight, each a fresh title, so every
   one is a miss): the answer time of GenerateCover calls with `budget_ms` (fresh titles: the
   regional cover is never ready, the answer is a fallback) against the same calls without a
   budget (they wait for the cover) in the same run: p50/p99 and the ratio.
2. PrepareCovers for one title over every region of the table: regions, distinct covers, their
   share, and the wall time until every cover was cached (followed with count_only), against
   painting one cover per region at the same per-cover rate (no grouping).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from covergen.redis_server import EmbeddedRedis
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc
from loadtest.servers import FAST_RECONNECT, ServerProcess, prepare_styles
from loadtest.stats import percentile

REGIONS = ("杭州", "成都", "广州", "北京", "厦门", "哈尔滨", "西安", "武汉")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-model", default="embedded:regional")
    parser.add_argument("--steps", type=int, default=0, help="0: the server default (20)")
    parser.add_argument("--budget-ms", type=int, default=300)
    parser.add_argument("--calls", type=int, default=40, help="budgeted calls (and as many without a budget)")
    parser.add_argument("--backlog", type=int, default=6, help="live no-budget calls kept in flight")
    parser.add_argument("--prepare-title", default="全国早餐地图发布")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


class _Backlog:
    """Keeps `size` no-budget misses in flight until stopped."""

    def __init__(self, stub: pb_grpc.CoverServiceStub, size: int, steps: int) -> None:
        self.stub, self.size, self.steps = stub, size, steps
        self._titles = (f"积压新闻第{i}条" for i in itertools.count())
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _loop(self, lane: int) -> None:
        while not self._stop.is_set():
            request = pb.GenerateCoverRequest(
                region=REGIONS[lane % len(REGIONS)], title=next(self._titles), steps=self.steps
            )
            with contextlib.suppress(grpc.aio.AioRpcError):  # RESOURCE_EXHAUSTED is part of a backlog
                await self.stub.GenerateCover(request, timeout=600)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.size)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def _timed(
    stub: pb_grpc.CoverServiceStub, request: pb.GenerateCoverRequest
) -> tuple[float, pb.GenerateCoverResponse]:
    started = time.perf_counter()
    reply = await stub.GenerateCover(request, timeout=600)
    return time.perf_counter() - started, reply


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "n": len(ordered),
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
    }


async def _backlog_phase(stub: pb_grpc.CoverServiceStub, args: argparse.Namespace) -> dict[str, Any]:
    backlog = _Backlog(stub, args.backlog, args.steps)
    backlog.start()
    budgeted: list[float] = []
    waited: list[float] = []
    reasons: dict[str, int] = {}
    try:
        for i in range(args.calls):
            region = REGIONS[i % len(REGIONS)]
            seconds, reply = await _timed(stub, pb.GenerateCoverRequest(
                region=region, title=f"预算新闻{i}", steps=args.steps, budget_ms=args.budget_ms))  # fmt: skip
            budgeted.append(seconds)
            reasons[reply.fallback_reason or "regional"] = (
                reasons.get(reply.fallback_reason or "regional", 0) + 1
            )
            seconds, _ = await _timed(
                stub, pb.GenerateCoverRequest(region=region, title=f"无预算新闻{i}", steps=args.steps)
            )
            waited.append(seconds)
    finally:
        await backlog.stop()
    with_budget, without = _summary(budgeted), _summary(waited)
    return {
        "budget_ms": args.budget_ms,
        "backlog_in_flight": args.backlog,
        "with_budget": with_budget,
        "answers": reasons,
        "without_budget": without,
        "p50_ratio_without_over_with": without["p50_ms"] / with_budget["p50_ms"],
        "p99_ratio_without_over_with": without["p99_ms"] / with_budget["p99_ms"],
        "miss_p50_ms": without["p50_ms"],
    }


async def _prepare_phase(stub: pb_grpc.CoverServiceStub, args: argparse.Namespace) -> dict[str, Any]:
    request = pb.PrepareCoversRequest(title=args.prepare_title, steps=args.steps)
    started = time.perf_counter()
    report = await stub.PrepareCovers(request, timeout=600)
    queued_s = time.perf_counter() - started
    count = pb.PrepareCoversRequest(title=args.prepare_title, steps=args.steps, count_only=True)
    while True:
        now = await stub.PrepareCovers(count, timeout=600)
        if now.cached + now.failed >= report.covers:
            break
        await asyncio.sleep(0.25)
    full_s = time.perf_counter() - started
    per_cover_s = full_s / max(1, report.covers)
    return {
        "regions": report.regions,
        "covers": report.covers,
        "share_of_regions": report.covers / report.regions,
        "failed": now.failed,
        "queue_call_s": queued_s,
        "full_prepare_s": full_s,
        "per_cover_s": per_cover_s,
        "one_cover_per_region_at_that_rate_s": per_cover_s * report.regions,
        "regions_per_cover": report.regions / max(1, report.covers),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="covergen-feed-bench-"))
    redis = EmbeddedRedis(maxmemory="256mb")
    url = redis.start()
    server = ServerProcess(
        {"COVERGEN_BASE_MODEL": args.base_model, "COVERGEN_REDIS_URL": url,
         "COVERGEN_STYLES_DIR": str(prepare_styles()), "COVERGEN_MAX_QUEUE": "64"},
        work / "server.log",
    )  # fmt: skip
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.target, options=FAST_RECONNECT) as channel:
            stub = pb_grpc.CoverServiceStub(channel)
            backlog = await _backlog_phase(stub, args)
            prepare = await _prepare_phase(stub, args)
    finally:
        await server.terminate(30)
        redis.stop()
    return {
        "base_model": args.base_model,
        "steps": args.steps or "default",
        "backlog": backlog,
        "prepare": prepare,
    }


def main() -> None:
    args = _parser().parse_args()
    results = asyncio.run(main_async(args))
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
