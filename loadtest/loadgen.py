"""Load generator for covergen's GenerateCover: closed or open loop, Zipf regions, cache control.

    python -m loadtest.loadgen --target 127.0.0.1:50051 --concurrency 16 --duration 30
    python -m loadtest.loadgen --spawn-server --rate 20 --poisson --requests 500 --repeat-fraction 0.8
    python -m loadtest.loadgen --spawn-server --concurrency 16 --duration 20 --warmup 64 \\
        --repeat-fraction 1.0 --ceiling --slo p99_ms=50,error_rate=0

Closed loop (`--concurrency N`): N callers, each sends its next request when the last returns.
Open loop (`--rate R`): arrivals at R per second, fixed or Poisson (`--poisson`), regardless of
how fast the server answers; arrivals beyond `--max-outstanding` are counted as dropped.
`--warmup N` sends N fresh pairs first (not measured) so that `--repeat-fraction 1.0` measures
pure cache hits. `--ceiling` then drives a bare in-process gRPC server that answers at once with
a reply of the same size and reports throughput as a ratio to it. Exit status: 0, 1 when an SLO
(`--slo`) was missed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python loadtest/loadgen.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc
from loadtest.servers import CeilingServer, canned_response, prepare_styles, start_inprocess_service
from loadtest.stats import Outcome, RunStats, Slo, format_summary
from loadtest.workload import DEFAULT_REGIONS_FILE, Pair, Workload, read_pairs, read_regions

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


@dataclass(frozen=True)
class Shape:
    """The generation knobs every request carries (0 = server default)."""

    steps: int = 0
    width: int = 0
    height: int = 0
    deadline_s: float | None = None

    def request(self, pair: Pair) -> pb.GenerateCoverRequest:
        return pb.GenerateCoverRequest(
            region=pair.region, title=pair.title, steps=self.steps, width=self.width, height=self.height
        )


@dataclass
class Budget:
    """When a run stops: after `requests` calls were started or `duration_s` passed."""

    requests: int | None = None
    duration_s: float | None = None
    _started: int = 0
    _deadline: float | None = None

    def begin(self) -> None:
        self._started = 0
        self._deadline = time.monotonic() + self.duration_s if self.duration_s is not None else None

    def take(self) -> bool:
        """Claim one call; False once the budget is spent."""
        if self.requests is not None and self._started >= self.requests:
            return False
        if self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        self._started += 1
        return True


async def call_once(
    stub: pb_grpc.CoverServiceStub,
    pair: Pair,
    shape: Shape,
    keep: Callable[[pb.GenerateCoverResponse], None] | None = None,
) -> Outcome:
    """One GenerateCover; every status is an outcome, never an exception."""
    started = time.perf_counter()
    try:
        reply = await stub.GenerateCover(shape.request(pair), timeout=shape.deadline_s)
    except grpc.aio.AioRpcError as exc:
        return Outcome(time.perf_counter() - started, exc.code().name, repeat=pair.repeat)
    if keep is not None:
        keep(reply)
    return Outcome(time.perf_counter() - started, "OK", cache_hit=reply.cache_hit, repeat=pair.repeat)


async def run_closed(
    stub: pb_grpc.CoverServiceStub, workload: Workload, shape: Shape, concurrency: int, budget: Budget
) -> RunStats:
    """`concurrency` callers, each sending its next request as soon as the last one returns."""
    stats = RunStats()

    async def caller() -> None:
        while budget.take():
            stats.add(await call_once(stub, workload.next(), shape))

    budget.begin()
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    stats.elapsed_s = time.perf_counter() - started
    return stats


async def run_open(
    stub: pb_grpc.CoverServiceStub,
    workload: Workload,
    shape: Shape,
    rate: float,
    budget: Budget,
    *,
    poisson: bool = False,
    max_outstanding: int = 1000,
    seed: int | None = None,
    stats: RunStats | None = None,
) -> RunStats:
    """Arrivals at `rate` per second (fixed spacing, or exponential gaps with `poisson`).

    Pass `stats` to watch outcomes arrive while the run goes on (the soak script does)."""
    stats = stats if stats is not None else RunStats()
    rng = random.Random(seed)
    outstanding: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def send(pair: Pair) -> None:
        stats.add(await call_once(stub, pair, shape))

    budget.begin()
    started = time.perf_counter()
    next_at = loop.time()
    while budget.take():
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        pair = workload.next()
        if len(outstanding) >= max_outstanding:
            stats.dropped += 1
        else:
            task = asyncio.create_task(send(pair))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        next_at += rng.expovariate(rate) if poisson else 1.0 / rate
    if outstanding:
        await asyncio.gather(*outstanding)
    stats.elapsed_s = time.perf_counter() - started
    return stats


async def warm_up(stub: pb_grpc.CoverServiceStub, workload: Workload, shape: Shape, count: int) -> RunStats:
    """Send `count` fresh pairs (8 at a time) so later repeats of them hit the cache."""
    stats = RunStats()
    pairs = [workload.next() for _ in range(count)]
    gate = asyncio.Semaphore(8)

    async def send(pair: Pair) -> None:
        async with gate:
            stats.add(await call_once(stub, pair, shape))

    await asyncio.gather(*(send(p) for p in pairs))
    return stats


def check_loopback(target: str, allow_remote: bool) -> None:
    """Refuse a target that is not this machine unless `allow_remote` (a load test is an attack)."""
    if allow_remote:
        return
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"target {target!r} is not a loopback address; pass --allow-remote to load a remote server")


def _slo(text: str) -> Slo:
    try:
        return Slo.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.loadgen", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    where = parser.add_argument_group("target")
    where.add_argument("--target", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051)")
    where.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    where.add_argument("--spawn-server", action="store_true", help="start covergen in this process on a free port")
    where.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the server")
    where.add_argument("--torch-threads", type=int, help="--spawn-server: torch intra-op threads (default: torch's)")
    mode = parser.add_argument_group("arrivals (one of)").add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int, help="closed loop with N callers (default 8)")
    mode.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--poisson", action="store_true", help="open loop: exponential gaps (default fixed)")
    parser.add_argument("--max-outstanding", type=int, default=1000, help="open loop: drop arrivals beyond this")
    stop = parser.add_argument_group("length (one or both; default --duration 10)")
    stop.add_argument("--duration", type=float, help="seconds")
    stop.add_argument("--requests", type=int, help="number of calls")
    mix = parser.add_argument_group("workload")
    mix.add_argument("--regions", type=Path, default=DEFAULT_REGIONS_FILE, help="region tags, one a line")
    mix.add_argument("--pairs", type=Path, help="region<TAB>title file (instead of --regions)")
    mix.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent over region rank (0: uniform)")
    mix.add_argument("--repeat-fraction", type=float, default=0.0, help="share of calls reusing an earlier pair")
    mix.add_argument("--warmup", type=int, default=0, help="fresh pairs sent before measuring")
    mix.add_argument("--seed", type=int, help="workload seed (default: random)")
    knobs = parser.add_argument_group("request")
    knobs.add_argument("--deadline-ms", type=float, help="per-call deadline")
    knobs.add_argument("--steps", type=int, default=0)
    knobs.add_argument("--width", type=int, default=0)
    knobs.add_argument("--height", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--ceiling", action="store_true", help="also measure a bare gRPC server; report the ratio")
    out.add_argument("--slo", type=_slo, help="e.g. p99_ms=250,error_rate=0.01,min_rps=50")
    out.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


async def _drive(
    target: str, args: argparse.Namespace, workload: Workload, shape: Shape, budget: Budget
) -> tuple[RunStats, pb.GenerateCoverResponse | None]:
    sample: list[pb.GenerateCoverResponse] = []
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), args.connect_timeout)
        except TimeoutError:
            raise SystemExit(f"loadgen: nothing answered at {target} within {args.connect_timeout:g} s") from None
        stub = pb_grpc.CoverServiceStub(channel)
        if args.warmup:
            warm = await warm_up(stub, workload, shape, args.warmup)
            if warm.failures:
                print(f"loadgen: {warm.failures} of {args.warmup} warm-up calls failed", file=sys.stderr)
        # Keep one real reply (for the ceiling's reply size), then measure.
        await call_once(stub, workload.fresh(), shape, keep=sample.append)
        stats = await _measure(stub, args, workload, shape, budget)
    return stats, (sample[0] if sample else None)


async def _measure(
    stub: pb_grpc.CoverServiceStub, args: argparse.Namespace, workload: Workload, shape: Shape, budget: Budget
) -> RunStats:
    if args.rate is not None:
        return await run_open(
            stub, workload, shape, args.rate, budget, poisson=args.poisson,
            max_outstanding=args.max_outstanding, seed=args.seed,
        )  # fmt: skip
    return await run_closed(stub, workload, shape, args.concurrency or 8, budget)


async def _ceiling(
    args: argparse.Namespace, workload: Workload, shape: Shape, budget: Budget, sample: pb.GenerateCoverResponse | None
) -> RunStats:
    response = canned_response(sample, shape.width or 64, shape.height or 64)
    async with CeilingServer(response) as ceiling, grpc.aio.insecure_channel(
        ceiling.target, options=CHANNEL_OPTIONS
    ) as channel:
        return await _measure(pb_grpc.CoverServiceStub(channel), args, workload, shape, budget)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `main` does, returning the report (also used by the soak script)."""
    workload = Workload(
        regions=None if args.pairs else read_regions(args.regions),
        pairs=read_pairs(args.pairs) if args.pairs else None,
        zipf_s=args.zipf_s,
        repeat_fraction=args.repeat_fraction,
        seed=args.seed,
    )
    shape = Shape(args.steps, args.width, args.height, args.deadline_ms / 1000 if args.deadline_ms else None)
    duration = args.duration if args.duration is not None or args.requests is not None else 10.0
    service = None
    target = args.target
    if args.spawn_server:
        service = await start_inprocess_service(prepare_styles())
        target = f"127.0.0.1:{service.port}"
    try:
        stats, sample = await _drive(target, args, workload, shape, Budget(args.requests, duration))
    finally:
        if service is not None:
            await service.stop(5.0)
    report: dict[str, Any] = {
        "target": "spawned in-process" if args.spawn_server else target,
        "mode": f"open {args.rate}/s {'poisson' if args.poisson else 'fixed'}"
        if args.rate is not None
        else f"closed x{args.concurrency or 8}",
        "repeat_fraction": args.repeat_fraction,
        "run": stats.summary(),
    }
    if args.ceiling:
        ceiling = (await _ceiling(args, workload, shape, Budget(args.requests, duration), sample)).summary()
        report["ceiling"] = ceiling
        report["ratio_to_ceiling"] = round(report["run"]["ok_rps"] / ceiling["ok_rps"], 4) if ceiling["ok_rps"] else 0.0
    return report


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.spawn_server and args.target != "127.0.0.1:50051":
        print("loadgen: --spawn-server ignores --target", file=sys.stderr)
    try:
        check_loopback(args.target, args.allow_remote)
    except ValueError as exc:
        parser.error(str(exc))
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be > 0 requests per second")
    if not 0.0 <= args.repeat_fraction <= 1.0:
        parser.error("--repeat-fraction must be in [0, 1]")
    if args.torch_threads is not None:
        import torch  # only an in-process server computes here

        torch.set_num_threads(args.torch_threads)
    report = asyncio.run(run(args))
    missed = args.slo.misses(report["run"]) if args.slo else []
    report["slo_missed"] = missed
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(format_summary(f"{report['target']} ({report['mode']})", report["run"]))
        if "ceiling" in report:
            print(format_summary("ceiling (bare grpc.aio, same load)", report["ceiling"]))
            note = "" if args.rate is None else " (open loop: both runs are paced by --rate)"
            print(f"  throughput vs ceiling: {report['ratio_to_ceiling'] * 100:.1f}%{note}")
        for line in missed:
            print(f"SLO missed: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
