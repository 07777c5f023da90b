"""Capacity on paper: how many painter replicas (GPUs) a feed needs for a latency target.

    python -m loadtest.capacity --seconds-per-cover 0.9 --articles-per-day 30000 --regions 34 \
        --looks-per-article 8 --variants 2 --reads-per-day 6000000 --hit-ratio 0.98 \
        --prepare all --latency-target-s 5

The model, stated (every assumption is printed with the answer):
- Covers an article can need: `looks_per_article` distinct adapter stacks (the `regions` a feed
  serves collapse onto fewer looks: provinces share macro-region styles) x `variants`.
- Prepare policy `all`: PrepareCovers paints every one of them when the article is published,
  spread over `publish_hours`; readers then mostly hit. `none`: nothing is painted ahead.
- Reader requests miss the cache at (1 - hit_ratio); each miss is painted while the reader
  waits. Cache hits never reach a painter (tests/test_ray_serve.py checks it).
- Traffic peaks at `peak_factor` x the day's average rate.
- A painter replica paints one cover per `seconds_per_cover` (the engine's batching gains,
  if any, are folded into that figure: pass the measured per-cover time at your batch size).
- Painters are c servers fed by one queue with the engine's admission priorities: readers'
  misses (LIVE) go before prepared covers (PREPARE), non-preemptively. A miss waits as in
  M/M/c with priority (Cobham): P(wait > t) ~ ErlangC(c, all load) * exp(-c mu (1 - rho_live) t);
  its latency is that wait plus its painting, and the target holds at `percentile`.
- Prepared covers only need the throughput: all load stays under `max_utilisation` of c.
- Routing by stack adds no adapter loads while every look fits: replicas x stacks per replica
  >= looks in use (printed as a check).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Scenario:
    seconds_per_cover: float
    articles_per_day: int
    regions: int
    looks_per_article: int
    variants: int
    reads_per_day: int
    hit_ratio: float
    prepare: str  # "all" or "none"
    publish_hours: float
    peak_factor: float
    latency_target_s: float
    percentile: float
    stacks_per_replica: int
    distinct_looks: int
    max_utilisation: float = 0.9

    def prepared_per_day(self) -> int:
        if self.prepare == "none":
            return 0
        return self.articles_per_day * self.looks_per_article * self.variants

    def misses_per_day(self) -> float:
        return self.reads_per_day * (1.0 - self.hit_ratio)

    def peak_rates(self) -> tuple[float, float]:
        """Covers per second at the peak: (readers' misses, prepared in the publish window)."""
        prepared = self.prepared_per_day() / (self.publish_hours * 3600.0)
        misses = self.misses_per_day() / SECONDS_PER_DAY
        return misses * self.peak_factor, prepared * self.peak_factor

    def peak_rate(self) -> float:
        return sum(self.peak_rates())


def erlang_c(servers: int, offered: float) -> float:
    """Probability that a job waits, M/M/c with `offered` = lambda / mu Erlangs (< servers)."""
    term, total = 1.0, 1.0  # a^k / k!, summed for k < servers
    for k in range(1, servers):
        term *= offered / k
        total += term
    last = term * offered / servers  # a^c / c!
    rho = offered / servers
    waiting = last / (1.0 - rho)
    return waiting / (total + waiting)


def latency_quantile_met(servers: int, s: Scenario) -> bool:
    """Whether a live miss meets P(wait + painting <= target) >= percentile on `servers`, and
    all the load (misses + prepared) stays under `max_utilisation`."""
    live, prepared = s.peak_rates()
    mu = 1.0 / s.seconds_per_cover
    offered = (live + prepared) / mu
    if offered >= servers * s.max_utilisation:
        return False
    budget = s.latency_target_s - s.seconds_per_cover
    rho_live = live / (servers * mu)
    p_wait_longer = erlang_c(servers, offered) * math.exp(-servers * mu * (1.0 - rho_live) * budget)
    return p_wait_longer <= 1.0 - s.percentile


def replicas_needed(s: Scenario) -> int:
    rate = s.peak_rate()
    if rate == 0:
        return 1
    if s.latency_target_s < s.seconds_per_cover:
        raise SystemExit(
            f"latency target {s.latency_target_s} s is below one cover's painting time "
            f"({s.seconds_per_cover} s): no number of replicas meets it; lower steps/size or raise the target"
        )
    servers = max(1, math.ceil(rate * s.seconds_per_cover))
    while not latency_quantile_met(servers, s):
        servers += 1
    return servers


def report(s: Scenario) -> str:
    n = replicas_needed(s)
    rate = s.peak_rate()
    live, prepared = s.peak_rates()
    busy = rate * s.seconds_per_cover
    lines = [
        "assumptions:",
        f"  seconds per cover on one painter replica: {s.seconds_per_cover}",
        f"  articles/day {s.articles_per_day:,}, regions {s.regions}, distinct looks per article "
        f"{s.looks_per_article}, variants {s.variants}",
        f"  prepare policy '{s.prepare}': {s.prepared_per_day():,} covers/day painted ahead over "
        f"{s.publish_hours:g} publishing hours",
        f"  reader requests/day {s.reads_per_day:,} at hit ratio {s.hit_ratio:.3f}: "
        f"{s.misses_per_day():,.0f} misses/day painted while the reader waits",
        f"  peak factor {s.peak_factor:g} over the average rate; misses before prepared covers "
        f"(engine priority), all load under {s.max_utilisation:.0%} of the painters",
        f"  latency target: {s.percentile:.0%} of misses within {s.latency_target_s:g} s (wait + painting)",
        "answer:",
        f"  peak painting rate {rate:.2f} covers/s ({live:.2f} misses + {prepared:.2f} prepared) = "
        f"{busy:.1f} replicas kept busy",
        f"  painter replicas needed: {n} (one GPU each), utilisation at peak {busy / n:.0%}",
        f"  GPU-hours/day at that size: {n * 24}; painting alone needs "
        f"{(s.prepared_per_day() + s.misses_per_day()) * s.seconds_per_cover / 3600:,.0f}",
    ]
    held = n * s.stacks_per_replica
    verdict = "fits" if held >= s.distinct_looks else "does NOT fit: expect adapter loads on misses"
    lines.append(
        f"  routing by stack: {s.distinct_looks} looks in use vs {n} replicas x {s.stacks_per_replica} "
        f"stacks each = {held}: {verdict}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds-per-cover", type=float, required=True,
                        help="measured painting time of one cover on one replica (GPU), seconds")  # fmt: skip
    parser.add_argument("--articles-per-day", type=int, default=30_000)
    parser.add_argument("--regions", type=int, default=34, help="regions the feed serves")
    parser.add_argument("--looks-per-article", type=int, default=8, help="distinct stacks per article")
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--reads-per-day", type=int, default=6_000_000, help="reader cover requests")
    parser.add_argument("--hit-ratio", type=float, default=0.98)
    parser.add_argument("--prepare", choices=["all", "none"], default="all")
    parser.add_argument("--publish-hours", type=float, default=16.0)
    parser.add_argument("--peak-factor", type=float, default=2.5)
    parser.add_argument("--latency-target-s", type=float, default=5.0)
    parser.add_argument("--percentile", type=float, default=0.95)
    parser.add_argument("--max-utilisation", type=float, default=0.9, help="of all painters, at the peak")
    parser.add_argument("--stacks-per-replica", type=int, default=10,
                        help="Serve max_num_models_per_replica (COVERGEN_MAX_RESIDENT_ADAPTERS // 3)")  # fmt: skip
    parser.add_argument("--distinct-looks", type=int, default=None,
                        help="stacks in use across the feed (default: looks per article x 4 theme mixes)")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0.0 <= args.hit_ratio <= 1.0:
        parser.error(f"--hit-ratio {args.hit_ratio} is outside [0, 1]")
    scenario = Scenario(
        seconds_per_cover=args.seconds_per_cover,
        articles_per_day=args.articles_per_day,
        regions=args.regions,
        looks_per_article=args.looks_per_article,
        variants=args.variants,
        reads_per_day=args.reads_per_day,
        hit_ratio=args.hit_ratio,
        prepare=args.prepare,
        publish_hours=args.publish_hours,
        peak_factor=args.peak_factor,
        latency_target_s=args.latency_target_s,
        percentile=args.percentile,
        stacks_per_replica=args.stacks_per_replica,
        distinct_looks=args.distinct_looks or args.looks_per_article * 4,
        max_utilisation=args.max_utilisation,
    )
    print(report(scenario))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
