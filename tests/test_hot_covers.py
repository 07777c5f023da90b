"""The in-process hot-cover cache: bounded in bytes, LRU, admitted on a second read, counted.

Unit checks on `HotCovers`, then through `ResultCache` against a real Redis: the second read
of a cover puts it in the hot cache, the third is served from memory without Redis (shown by
stopping Redis: the hit still comes back as HIT, not BYPASS).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis_fixture import running_redis

from covergen.cache import CachedCover, CacheOutcome, ResultCache, cache_key
from covergen.hot_covers import ENTRY_OVERHEAD_BYTES, HotCoverObserver, HotCovers
from covergen.metrics import Metrics
from covergen.redis_server import EmbeddedRedis
from covergen.server import _MetricsObserver


def cover(size: int, tag: str = "") -> CachedCover:
    return CachedCover(image=b"x" * size, metadata={"tag": tag})


def entry_size(key: str, size: int) -> int:
    return size + len(key) + ENTRY_OVERHEAD_BYTES


def test_the_byte_bound_evicts_the_least_recently_read() -> None:
    hot = HotCovers(max_bytes=2 * entry_size("a", 1000) + 10)
    hot.put("a", cover(1000, "a"))
    hot.put("b", cover(1000, "b"))
    assert hot.get("a") is not None  # a is now the most recent
    hot.put("c", cover(1000, "c"))
    assert hot.get("b") is None
    assert [hot.get(k).metadata["tag"] for k in ("a", "c")] == ["a", "c"]  # type: ignore[union-attr]
    assert hot.nbytes == 2 * entry_size("a", 1000) <= hot.max_bytes


def test_a_cover_larger_than_the_bound_is_not_kept() -> None:
    hot = HotCovers(max_bytes=500)
    hot.put("big", cover(1000))
    assert len(hot) == 0 and hot.nbytes == 0
    with pytest.raises(ValueError, match="0 turns the hot cache off"):
        HotCovers(max_bytes=-1)


def test_lookups_evictions_and_size_reach_the_metrics() -> None:
    metrics = Metrics()
    hot = HotCovers(max_bytes=entry_size("k1", 100) + 1, observer=_MetricsObserver(metrics))
    hot.put("k1", cover(100))
    hot.get("k1")
    hot.get("nope")
    hot.put("k2", cover(100))  # evicts k1
    sample = metrics.registry.get_sample_value
    assert sample("covergen_hot_cache_requests_total", {"outcome": "hit"}) == 1
    assert sample("covergen_hot_cache_requests_total", {"outcome": "miss"}) == 1
    assert sample("covergen_hot_cache_evictions_total") == 1
    assert sample("covergen_hot_cache_entries") == 1
    assert sample("covergen_hot_cache_bytes") == entry_size("k2", 100)


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    with running_redis() as server:
        yield server


async def test_a_hot_cover_is_served_from_memory_after_its_second_read(redis_server: EmbeddedRedis) -> None:
    hot = HotCovers(max_bytes=1 << 20, observer=HotCoverObserver())
    cache = ResultCache(redis_server.url, Metrics(), ttl_s=60, hot=hot)
    key = cache_key({"prompt": "hot", "seed": 1})
    calls = 0

    async def generate() -> CachedCover:
        nonlocal calls
        calls += 1
        return cover(64, "painted")

    try:
        outcomes = [(await cache.get_or_generate(key, generate))[1] for _ in range(2)]
        assert outcomes == [CacheOutcome.MISS, CacheOutcome.HIT]
        assert len(hot) == 1  # entered on the second read, not on the miss
        redis_server.stop()  # the third read needs no Redis
        third, outcome = await cache.get_or_generate(key, generate)
        assert outcome is CacheOutcome.HIT and third.metadata == {"tag": "painted"}
        assert calls == 1
    finally:
        await cache.close()
