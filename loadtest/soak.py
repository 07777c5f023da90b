"""Soak: a sustained hit/miss mix against covergen-server in a child process, watching it leak.

    python -m loadtest.soak                      # 10 min at 4 req/s, 70% repeats, tiny model
    python -m loadtest.soak --duration 60 --rate 8 --json

The server runs as `python -m covergen.cli` (embedded model, embedded Redis, demo adapters in a
private styles copy). Every `--sample-every` seconds the script reads the server's RSS, open file
descriptors and threads from /proc/<pid>, with the latency and failures of the window. The
baseline is the first sample after `--warmup` seconds (allocators and caches fill up first).
At the end the server gets SIGTERM and must exit 0. Exit status 1 when any call failed, the
server did not exit cleanly, or RSS, fds or threads grew beyond the thresholds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python loadtest/soak.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from covergen.v1 import cover_pb2_grpc as pb_grpc
from loadtest.loadgen import CHANNEL_OPTIONS, Budget, Shape, run_open, warm_up
from loadtest.servers import ServerProcess, open_fds, prepare_styles, rss_bytes, thread_count
from loadtest.stats import RunStats, percentile
from loadtest.workload import DEFAULT_REGIONS_FILE, Workload, read_regions

MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """The server process at one moment, and the calls that finished since the last sample."""

    t_s: float
    rss_mb: float
    fds: int
    threads: int
    calls: int
    failures: int
    p50_ms: float
    p99_ms: float


def take_sample(pid: int, started: float, stats: RunStats, since: int) -> Sample:
    window = stats.outcomes[since:]
    latencies = sorted(o.latency_s * 1000 for o in window)
    return Sample(
        t_s=round(time.monotonic() - started, 1),
        rss_mb=round(rss_bytes(pid) / MB, 1),
        fds=open_fds(pid),
        threads=thread_count(pid),
        calls=len(window),
        failures=sum(1 for o in window if o.code != "OK"),
        p50_ms=round(percentile(latencies, 50), 1) if latencies else 0.0,
        p99_ms=round(percentile(latencies, 99), 1) if latencies else 0.0,
    )


def rss_slope_mb_per_min(samples: list[Sample]) -> float:
    """Least-squares slope of RSS over time: a steady leak shows here before it shows as growth."""
    if len(samples) < 3:
        return 0.0
    ts = [s.t_s / 60 for s in samples]
    ys = [s.rss_mb for s in samples]
    mean_t, mean_y = sum(ts) / len(ts), sum(ys) / len(ys)
    spread = sum((t - mean_t) ** 2 for t in ts)
    return sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys, strict=True)) / spread if spread else 0.0


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="covergen-soak-"))
    styles = prepare_styles()
    server = ServerProcess(
        {
            "COVERGEN_STYLES_DIR": str(styles),
            "COVERGEN_DEFAULT_STEPS": str(args.steps),
            "COVERGEN_DRAIN_GRACE_S": "10",
            "COVERGEN_LOG_LEVEL": "WARNING",
        },
        workdir / "server.log",
    )
    await server.start()
    workload = Workload(
        regions=read_regions(DEFAULT_REGIONS_FILE), zipf_s=args.zipf_s, repeat_fraction=args.repeat_fraction
    )
    shape = Shape(args.steps, args.width, args.height, args.deadline_ms / 1000 if args.deadline_ms else None)
    stats = RunStats()
    samples: list[Sample] = []
    try:
        async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.CoverServiceStub(channel)
            await warm_up(stub, workload, shape, 16)  # something to repeat from the first second
            started = time.monotonic()
            load = asyncio.ensure_future(
                run_open(stub, workload, shape, args.rate, Budget(duration_s=args.duration), poisson=True, stats=stats)
            )
            seen = 0
            while not load.done():
                await asyncio.wait({load}, timeout=args.sample_every)
                sample = take_sample(server.pid, started, stats, seen)
                seen += sample.calls
                samples.append(sample)
                if not args.json:
                    print(json.dumps(asdict(sample)), flush=True)
            load.result()
    finally:
        exit_code = await server.terminate(timeout_s=30)
    return report(args, stats, samples, exit_code, server.log_path)


def report(
    args: argparse.Namespace, stats: RunStats, samples: list[Sample], exit_code: int, log_path: Path
) -> dict[str, Any]:
    measured = [s for s in samples if s.t_s >= args.warmup] or samples[-1:]
    base, end = measured[0], samples[-1]
    growth = {
        "rss_mb": round(end.rss_mb - base.rss_mb, 1),
        "rss_pct": round(100 * (end.rss_mb - base.rss_mb) / base.rss_mb, 2),
        "fds": end.fds - base.fds,
        "threads": end.threads - base.threads,
        "rss_slope_mb_per_min": round(rss_slope_mb_per_min(measured), 3),
    }
    problems = []
    if stats.failures:
        problems.append(f"{stats.failures} failed calls")
    if exit_code != 0:
        problems.append(f"server exited with {exit_code} after SIGTERM (log: {log_path})")
    if growth["rss_mb"] > args.max_rss_growth_mb:
        problems.append(f"RSS grew {growth['rss_mb']} MB > {args.max_rss_growth_mb} MB")
    if growth["fds"] > args.max_fd_growth:
        problems.append(f"open fds grew by {growth['fds']} > {args.max_fd_growth}")
    if growth["threads"] > args.max_thread_growth:
        problems.append(f"threads grew by {growth['threads']} > {args.max_thread_growth}")
    return {
        "duration_s": args.duration,
        "rate": args.rate,
        "repeat_fraction": args.repeat_fraction,
        "run": stats.summary(),
        "baseline": asdict(base),
        "end": asdict(end),
        "first": asdict(samples[0]),
        "growth_since_baseline": growth,
        "server_exit_code": exit_code,
        "samples": [asdict(s) for s in samples],
        "problems": problems,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m loadtest.soak", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second, Poisson arrivals (default 4)")
    parser.add_argument("--repeat-fraction", type=float, default=0.7, help="share of repeats, i.e. cache hits (0.7)")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--deadline-ms", type=float, default=60_000)
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between /proc samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the baseline sample")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    parser.add_argument("--max-fd-growth", type=int, default=8)
    parser.add_argument("--max-thread-growth", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="print one JSON report (no per-sample lines)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        run, growth = result["run"], result["growth_since_baseline"]
        lat = run["latency_ms"]
        print(
            f"soak {args.duration:.0f} s at {args.rate}/s: {run['requests']} calls, {run['ok']} OK, "
            f"codes {run['codes']}, cache hits {run['cache_hit_ratio'] * 100:.1f}%, "
            f"p50 {lat.get('p50', 0):.1f} ms p99 {lat.get('p99', 0):.1f} ms max {lat.get('max', 0):.1f} ms"
        )
        print(
            f"server RSS {result['first']['rss_mb']} MB at start, {result['baseline']['rss_mb']} MB at baseline "
            f"(t={result['baseline']['t_s']} s), {result['end']['rss_mb']} MB at end: {growth['rss_mb']:+} MB "
            f"({growth['rss_pct']:+}%), slope {growth['rss_slope_mb_per_min']:+} MB/min; fds "
            f"{result['baseline']['fds']} -> {result['end']['fds']}; threads "
            f"{result['baseline']['threads']} -> {result['end']['threads']}; exit code {result['server_exit_code']}"
        )
        for problem in result["problems"]:
            print(f"SOAK FAILED: {problem}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
