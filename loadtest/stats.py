"""What a load run measured: latency percentiles, throughput, status codes, cache hits, SLOs.

`RunStats` collects one `Outcome` per finished call; `summary()` turns them into the plain dict
that is printed (or written as JSON). `Slo.parse("p99_ms=250,error_rate=0.01")` checks a summary
and names every objective it missed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

OK = "OK"


@dataclass(frozen=True)
class Outcome:
    """One finished call as the client saw it."""

    latency_s: float
    code: str  # grpc.StatusCode name, e.g. "OK", "RESOURCE_EXHAUSTED"
    cache_hit: bool = False
    repeat: bool = False  # the workload sent a pair it had sent before


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of an ascending list; NaN when it is empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class RunStats:
    """Outcomes of one run, plus how long it ran."""

    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    dropped: int = 0  # open loop only: arrivals not sent because too many calls were outstanding

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    @property
    def failures(self) -> int:
        return sum(1 for o in self.outcomes if o.code != OK)

    def summary(self) -> dict[str, Any]:
        """Counts, rates and latency percentiles (ms, over every finished call)."""
        latencies = sorted(o.latency_s * 1000.0 for o in self.outcomes)
        ok = [o for o in self.outcomes if o.code == OK]
        ok_latencies = sorted(o.latency_s * 1000.0 for o in ok)
        hits = sum(1 for o in ok if o.cache_hit)
        total = len(self.outcomes)
        return {
            "requests": total,
            "ok": len(ok),
            "dropped": self.dropped,
            "elapsed_s": round(self.elapsed_s, 3),
            "rps": round(total / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "ok_rps": round(len(ok) / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "error_rate": round((total - len(ok)) / total, 6) if total else 0.0,
            "codes": dict(sorted(Counter(o.code for o in self.outcomes).items())),
            "cache_hit_ratio": round(hits / len(ok), 4) if ok else 0.0,
            "latency_ms": _latency_block(latencies),
            "ok_latency_ms": _latency_block(ok_latencies),
        }


def _latency_block(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "p50": round(percentile(values, 50), 3),
        "p95": round(percentile(values, 95), 3),
        "p99": round(percentile(values, 99), 3),
        "max": round(values[-1], 3),
        "mean": round(sum(values) / len(values), 3),
    }


_OBJECTIVES = {
    "p50_ms": ("latency_ms", "p50", "max"),
    "p95_ms": ("latency_ms", "p95", "max"),
    "p99_ms": ("latency_ms", "p99", "max"),
    "max_ms": ("latency_ms", "max", "max"),
    "error_rate": (None, "error_rate", "max"),
    "min_rps": (None, "ok_rps", "min"),
    "min_cache_hit_ratio": (None, "cache_hit_ratio", "min"),
}


@dataclass(frozen=True)
class Slo:
    """Service-level objectives, e.g. `p99_ms=250,error_rate=0.01,min_rps=50`."""

    targets: dict[str, float]

    @classmethod
    def parse(cls, text: str) -> Slo:
        targets: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, eq, value = item.partition("=")
            name = name.strip()
            if not eq or name not in _OBJECTIVES:
                raise ValueError(
                    f"SLO item {item!r} is not NAME=VALUE with NAME one of {', '.join(_OBJECTIVES)}"
                )
            try:
                targets[name] = float(value)
            except ValueError:
                raise ValueError(f"SLO {name} value {value!r} is not a number") from None
        if not targets:
            raise ValueError("empty SLO; pass e.g. --slo p99_ms=250,error_rate=0.01")
        return cls(targets)

    def misses(self, summary: dict[str, Any]) -> list[str]:
        """One line per objective the summary missed; empty when every objective was met."""
        missed: list[str] = []
        for name, target in self.targets.items():
            block, key, direction = _OBJECTIVES[name]
            source = summary[block] if block else summary
            measured = source.get(key, math.nan)
            if measured != measured:  # NaN: nothing finished, nothing was measured
                missed.append(f"{name}: nothing measured (no finished calls)")
            elif direction == "max" and measured > target:
                missed.append(f"{name}: measured {measured:g} > target {target:g}")
            elif direction == "min" and measured < target:
                missed.append(f"{name}: measured {measured:g} < target {target:g}")
        return missed


def format_summary(title: str, summary: dict[str, Any]) -> str:
    """A few human-readable lines for one run's summary."""
    lat = summary["latency_ms"]
    lines = [
        f"{title}: {summary['requests']} calls in {summary['elapsed_s']:.2f} s = {summary['rps']:.1f} req/s "
        f"({summary['ok_rps']:.1f} OK/s)",
    ]
    if lat:
        lines.append(
            f"  latency ms: p50 {lat['p50']:.2f}  p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  max {lat['max']:.2f}"
        )
    codes = "  ".join(f"{code} {count}" for code, count in summary["codes"].items()) or "-"
    lines.append(f"  codes: {codes}   error rate {summary['error_rate']:.4f}")
    lines.append(f"  cache hits: {summary['cache_hit_ratio'] * 100:.1f}% of OK calls")
    if summary["dropped"]:
        lines.append(f"  dropped arrivals (client at its outstanding limit): {summary['dropped']}")
    return "\n".join(lines)
