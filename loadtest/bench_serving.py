"""Issue 12's serving targets, measured from a client outside the server, ratios in one run.

    .venv/bin/python loadtest/bench_serving.py                      # every section, 2 rounds
    .venv/bin/python loadtest/bench_serving.py --sections hits --rounds 3

Servers are `python -m covergen.cli` child processes with `make serve`'s defaults (the
embedded:regional base, the shipped adapters of styles/, embedded Redis, 64 px, 20 steps,
max_batch 4) and OMP_NUM_THREADS=1 (2 shared cores; see loadtest/RESULTS.md). Only
COVERGEN_BATCHING differs between the `step` and `static` servers. Arms are interleaved in
rounds, each round in rotated order, so the shared machine's load falls on every arm alike.

Sections (what each prints):
- `latency`: per batching mode, the unloaded p50 of single misses, the capacity (closed loop,
  `--callers` callers, unique titles, 8 regions), then Poisson arrivals at 70% of that capacity:
  p99 / unloaded p50 (target <= 3). Also step / static capacity at saturation (target >= 1).
- `regions`: covers/s with unique titles, all in one region vs spread over 8 (target >= 0.9).
- `hits`: cache-hit req/s from 16 callers vs a bare grpc.aio server (its own child process)
  answering the same reply bytes (target >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python loadtest/bench_serving.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc
from loadtest.loadgen import CHANNEL_OPTIONS, Budget, Shape, call_once, run_closed, run_open, warm_up
from loadtest.servers import ServerProcess, free_port, wait_serving
from loadtest.stats import RunStats, percentile
from loadtest.workload import Workload

# Eight region tags with eight different adapter stacks under the shipped regions.yaml (the last
# is unknown to the table: the default style, no adapter).
EIGHT_REGIONS = ["北京", "杭州", "成都", "广州", "厦门", "哈尔滨", "深圳", "火星"]
ONE_REGION = ["杭州"]
SHAPE = Shape()  # server defaults: 64 px, 20 steps


def _workload(regions: list[str], seed: int, repeat: float = 0.0) -> Workload:
    return Workload(regions=regions, zipf_s=0.0, repeat_fraction=repeat, seed=seed)


def _ok_rps(stats: RunStats) -> float:
    ok = sum(1 for o in stats.outcomes if o.code == "OK")
    return ok / stats.elapsed_s if stats.elapsed_s else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _p(stats: RunStats, q: float) -> float:
    return percentile(sorted(o.latency_s for o in stats.outcomes if o.code == "OK"), q)


class Arm:
    """One child server and a channel to it."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.server = ServerProcess(env, logs / f"{name}.log")
        self.channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> Arm:
        await self.server.start()
        self.channel = grpc.aio.insecure_channel(self.server.target, options=CHANNEL_OPTIONS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None:
            await self.channel.close()
        await self.server.terminate(30.0)

    @property
    def stub(self) -> pb_grpc.CoverServiceStub:
        assert self.channel is not None
        return pb_grpc.CoverServiceStub(self.channel)


async def unloaded_p50(arm: Arm, count: int, seed: int) -> float:
    workload = _workload(EIGHT_REGIONS, seed)
    stats = RunStats()
    for _ in range(count):
        stats.add(await call_once(arm.stub, workload.next(), SHAPE))
    return _p(stats, 50)


async def capacity(arm: Arm, regions: list[str], callers: int, requests: int, seed: int) -> float:
    stats = await run_closed(arm.stub, _workload(regions, seed), SHAPE, callers, Budget(requests=requests))
    return _ok_rps(stats)


async def section_latency(arms: list[Arm], args: argparse.Namespace) -> None:
    rows: dict[str, dict[str, list[float]]] = {a.name: {"p50": [], "cap": [], "p99": [], "ratio": []} for a in arms}
    for rnd in range(args.rounds):
        order = arms[rnd % len(arms) :] + arms[: rnd % len(arms)]
        for arm in order:
            seed = 1000 * rnd + 100 * arms.index(arm)
            p50 = await unloaded_p50(arm, args.unloaded, seed)
            cap = await capacity(arm, EIGHT_REGIONS, args.callers, args.requests, seed + 1)
            stats = await run_open(
                arm.stub, _workload(EIGHT_REGIONS, seed + 2), SHAPE, 0.7 * cap,
                Budget(requests=args.requests), poisson=True, seed=seed + 3,
            )  # fmt: skip
            p99 = _p(stats, 99)
            row = rows[arm.name]
            row["p50"].append(p50)
            row["cap"].append(cap)
            row["p99"].append(p99)
            row["ratio"].append(p99 / p50)
            print(
                f"  round {rnd + 1} {arm.name:>6}: unloaded p50 {p50:.2f} s, capacity {cap:.2f}/s, "
                f"Poisson at {0.7 * cap:.2f}/s: p50 {_p(stats, 50):.2f} s p99 {p99:.2f} s "
                f"-> p99/unloaded {p99 / p50:.2f} ({stats.failures} failed)",
                flush=True,
            )
    print("\n| batching | unloaded p50 s | capacity covers/s | p99 at 70% s | p99 / unloaded |")
    print("|---|---:|---:|---:|---:|")
    for name, row in rows.items():
        med = {k: statistics.median(v) for k, v in row.items()}
        print(f"| {name} | {med['p50']:.2f} | {med['cap']:.2f} | {med['p99']:.2f} | **{med['ratio']:.2f}** |")
    if "step" in rows and "static" in rows:
        ratios = [s / t for s, t in zip(rows["step"]["cap"], rows["static"]["cap"], strict=True)]
        print(f"\nstep / static capacity at saturation, per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median **{statistics.median(ratios):.2f}** (target >= 1.0)")  # fmt: skip


async def section_regions(arm: Arm, args: argparse.Namespace) -> None:
    one: list[float] = []
    eight: list[float] = []
    for rnd in range(args.rounds):
        pairs = [(ONE_REGION, one), (EIGHT_REGIONS, eight)]
        for regions, out in pairs if rnd % 2 == 0 else reversed(pairs):
            out.append(await capacity(arm, regions, args.callers, args.requests, 77 + rnd * 10 + len(regions)))
        print(f"  round {rnd + 1}: 1 region {one[-1]:.2f}/s, 8 regions {eight[-1]:.2f}/s "
              f"-> {eight[-1] / one[-1]:.2f}", flush=True)  # fmt: skip
    ratios = [e / o for e, o in zip(eight, one, strict=True)]
    print(f"\n8-region / 1-region covers/s ({arm.name} batching, {args.callers} callers, unique titles): "
          f"median **{statistics.median(ratios):.2f}** (target >= 0.9); 1 region {statistics.median(one):.2f}/s, "
          f"8 regions {statistics.median(eight):.2f}/s")  # fmt: skip


async def section_hits(arm: Arm, logs: Path, args: argparse.Namespace) -> None:
    workload = _workload(EIGHT_REGIONS, 4242, repeat=1.0)
    sample: list[pb.GenerateCoverResponse] = []
    await warm_up(arm.stub, workload, SHAPE, args.hit_pairs)
    await call_once(arm.stub, workload.next(), SHAPE, keep=sample.append)
    reply_file = logs / "reply.bin"
    reply_file.write_bytes(sample[0].SerializeToString())
    port = free_port()
    ceiling = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--ceiling-child", str(port), str(reply_file)
    )
    try:
        await wait_serving(f"127.0.0.1:{port}", 60.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            bare = pb_grpc.CoverServiceStub(channel)
            hits: list[float] = []
            ceil: list[float] = []
            cpu = {"hits": [0.0, 0], "bare": [0.0, 0]}  # server CPU seconds, requests
            for rnd in range(args.rounds):
                legs = [(arm.stub, hits, arm.server.pid, "hits"), (bare, ceil, ceiling.pid, "bare")]
                for stub, out, pid, name in legs if rnd % 2 == 0 else reversed(legs):
                    before = cpu_seconds(pid)
                    stats = await run_closed(stub, workload, SHAPE, 16, Budget(duration_s=args.hit_seconds))
                    cpu[name][0] += cpu_seconds(pid) - before
                    cpu[name][1] += len(stats.outcomes)
                    out.append(_ok_rps(stats))
                print(f"  round {rnd + 1}: hits {hits[-1]:.0f} req/s, bare gRPC {ceil[-1]:.0f} req/s "
                      f"-> {hits[-1] / ceil[-1]:.2f}", flush=True)  # fmt: skip
            per = {name: 1e6 * c / max(n, 1) for name, (c, n) in cpu.items()}
            print(f"  server CPU per call: covergen hit {per['hits']:.0f} us, bare gRPC {per['bare']:.0f} us "
                  f"-> bare/hit {per['bare'] / per['hits']:.2f} (less sensitive to other load)")  # fmt: skip
    finally:
        ceiling.terminate()
        await ceiling.wait()
    ratios = [h / c for h, c in zip(hits, ceil, strict=True)]
    print(f"\ncache-hit / bare gRPC req/s, 16 callers, {len(sample[0].image)} B image: "
          f"median **{statistics.median(ratios):.2f}** (target >= 0.8)")  # fmt: skip


async def ceiling_child(port: int, reply_file: Path) -> None:
    reply = pb.GenerateCoverResponse.FromString(reply_file.read_bytes())
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from loadtest.servers import _CannedCovers

    pb_grpc.add_CoverServiceServicer_to_server(_CannedCovers(reply), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


async def main_async(args: argparse.Namespace) -> None:
    sections = set(args.sections.split(","))
    logs = Path(tempfile.mkdtemp(prefix="covergen-bench-serving-"))
    print(f"server logs in {logs}", flush=True)
    wanted = ["step", "static"] if "latency" in sections else ["step"]
    arms = [Arm(name, {"COVERGEN_BATCHING": name}, logs) for name in wanted]
    for arm in arms:
        await arm.__aenter__()
    try:
        if "latency" in sections:
            print("\n## latency under Poisson load, and capacity (step vs static)", flush=True)
            await section_latency(arms, args)
        if "regions" in sections:
            print("\n## 8 regions vs 1 region, unique titles", flush=True)
            await section_regions(arms[0], args)
        if "hits" in sections:
            print("\n## cache hits vs bare gRPC", flush=True)
            await section_hits(arms[0], logs, args)
    finally:
        for arm in arms:
            await arm.__aexit__()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="latency,regions,hits", help="comma list of latency,regions,hits")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--callers", type=int, default=8, help="closed-loop callers for capacity runs")
    parser.add_argument("--requests", type=int, default=32, help="covers per capacity / Poisson run")
    parser.add_argument("--unloaded", type=int, default=6, help="single misses for the unloaded p50")
    parser.add_argument("--hit-pairs", type=int, default=32, help="covers painted before the hit runs")
    parser.add_argument("--hit-seconds", type=float, default=8.0)
    parser.add_argument("--ceiling-child", nargs=2, metavar=("PORT", "REPLY_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ceiling_child:
        asyncio.run(ceiling_child(int(args.ceiling_child[0]), Path(args.ceiling_child[1])))
        return 0
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
