"""What the load generator sends: a Zipf mix of regions, synthetic news titles, and repeats.

Each request is a (region, title) pair. A fresh pair takes a region by Zipf rank from the region
list (or a whole pair by Zipf rank from a `region<TAB>title` file) and, for region lists, a new
title that no earlier request used, so it misses the result cache. With probability
`repeat_fraction` the pair is instead one that an earlier request used, which hits the cache
once that earlier request has finished.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REGIONS_FILE = Path(__file__).with_name("regions.txt")

# Title pieces: glossary words (so prompts differ) around a running number (so titles do).
_TOPICS = ("火锅", "早餐", "春天", "暴雨", "中秋节", "龙舟", "茶", "烤鸭", "高温", "庙会", "小龙虾", "雪")
_EVENTS = ("新店开张", "节日活动", "市民排队", "天气预警", "夜市升温", "游客增多")


@dataclass(frozen=True)
class Pair:
    """One request's region tag and title; `repeat` marks a deliberate reuse."""

    region: str
    title: str
    repeat: bool = False


def read_regions(path: Path) -> list[str]:
    """Region tags, one a line, most popular first; blank lines and `#` comments are skipped."""
    tags = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    tags = [tag for tag in tags if tag and not tag.startswith("#")]
    if not tags:
        raise ValueError(f"{path} lists no region tags; put one tag per line")
    return tags


def read_pairs(path: Path) -> list[Pair]:
    """`region<TAB>title` lines, most popular first."""
    pairs: list[Pair] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        region, tab, title = line.partition("\t")
        if not tab or not region.strip() or not title.strip():
            raise ValueError(f"{path}:{number}: expected 'region<TAB>title', got {line[:80]!r}")
        pairs.append(Pair(region.strip(), title.strip()))
    if not pairs:
        raise ValueError(f"{path} holds no region<TAB>title lines")
    return pairs


class ZipfRanks:
    """Draws ranks 0..n-1 with probability proportional to 1 / (rank + 1) ** s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        if n < 1:
            raise ValueError("ZipfRanks needs at least one rank")
        if s < 0:
            raise ValueError(f"zipf exponent {s} must be >= 0 (0 is uniform)")
        self._cumulative = list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(n)))
        self._rng = rng

    def draw(self) -> int:
        point = self._rng.random() * self._cumulative[-1]
        return min(bisect.bisect_right(self._cumulative, point), len(self._cumulative) - 1)


class Workload:
    """The stream of pairs one run sends. Not thread-safe; one event loop draws from it."""

    def __init__(
        self,
        *,
        regions: list[str] | None = None,
        pairs: list[Pair] | None = None,
        zipf_s: float = 1.1,
        repeat_fraction: float = 0.0,
        seed: int | None = None,
        history_limit: int = 10_000,
    ) -> None:
        if (regions is None) == (pairs is None):
            raise ValueError("pass exactly one of regions or pairs")
        if not 0.0 <= repeat_fraction <= 1.0:
            raise ValueError(f"repeat fraction {repeat_fraction} is outside [0, 1]")
        self._rng = random.Random(seed)
        self._regions = regions
        self._pairs = pairs
        self._ranks = ZipfRanks(len(regions or pairs or ()), zipf_s, self._rng)
        self.repeat_fraction = repeat_fraction
        self._history: list[Pair] = []
        self._history_limit = history_limit
        self._counter = itertools.count(1)
        self._run_tag = f"{self._rng.randrange(10**8):08d}"  # digits never reach the prompt

    @property
    def history(self) -> list[Pair]:
        """Pairs sent so far (the pool repeats are drawn from), oldest first."""
        return list(self._history)

    def next(self) -> Pair:
        """The next pair to send."""
        if self._history and self._rng.random() < self.repeat_fraction:
            earlier = self._history[self._rng.randrange(len(self._history))]
            return Pair(earlier.region, earlier.title, repeat=True)
        pair = self.fresh()
        if len(self._history) < self._history_limit:
            self._history.append(pair)
        return pair

    def fresh(self) -> Pair:
        """A pair chosen without regard to history (a new title unless pairs come from a file)."""
        rank = self._ranks.draw()
        if self._pairs is not None:
            return self._pairs[rank]
        assert self._regions is not None
        n = next(self._counter)
        topic = _TOPICS[n % len(_TOPICS)]
        event = _EVENTS[(n // len(_TOPICS)) % len(_EVENTS)]
        return Pair(self._regions[rank], f"{topic}{event} 第{n}期 {self._run_tag}")
