"""ResultCache against a real redis-server: keys, hits, TTL, single flight, locks, outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_fixture import running_redis
from waiting import eventually, wait_for_event

from covergen.cache import CachedCover, CacheOutcome, ResultCache, cache_key
from covergen.errors import ConfigError
from covergen.metrics import Metrics
from covergen.redis_server import EmbeddedRedis

KEY_PARTS: dict[str, Any] = {
    "base_model": "sha256:base",
    "adapters": [["jiangnan", "sha256:aaa", 0.8], ["ink", "sha256:bbb", 0.5]],
    "prompt": "a river town at dawn",
    "negative_prompt": "blurry",
    "seed": 42,
    "width": 512,
    "height": 512,
    "steps": 25,
    "guidance": 7.5,
    "scheduler": "dpmsolver++",
    "output_format": "webp",
}

CHANGED_FIELDS = [
    ("base_model", "sha256:other-base"),
    ("adapters", [["jiangnan", "sha256:aaa", 0.9], ["ink", "sha256:bbb", 0.5]]),
    ("adapters", [["jiangnan", "sha256:ccc", 0.8], ["ink", "sha256:bbb", 0.5]]),
    ("adapters", [["lingnan", "sha256:aaa", 0.8], ["ink", "sha256:bbb", 0.5]]),
    ("adapters", [["ink", "sha256:bbb", 0.5], ["jiangnan", "sha256:aaa", 0.8]]),
    ("adapters", [["jiangnan", "sha256:aaa", 0.8]]),
    ("prompt", "a river town at dusk"),
    ("negative_prompt", ""),
    ("seed", 43),
    ("width", 768),
    ("height", 768),
    ("steps", 30),
    ("guidance", 7.0),
    ("scheduler", "euler"),
    ("output_format", "png"),
]


@pytest.mark.parametrize(("field", "value"), CHANGED_FIELDS)
def test_cache_key_changes_with_every_field(field: str, value: object) -> None:
    changed = {**KEY_PARTS, field: value}
    assert cache_key(changed) != cache_key(KEY_PARTS)


def test_cache_key_is_versioned_and_ignores_dict_order() -> None:
    reordered = dict(reversed(list(KEY_PARTS.items())))
    assert cache_key(reordered) == cache_key(KEY_PARTS)
    assert cache_key(KEY_PARTS).startswith("covergen:v1:")
    with pytest.raises(ValueError, match="empty"):
        cache_key({})


def test_cached_cover_round_trips_and_rejects_garbage() -> None:
    cover = CachedCover(image=b"\x89PNG\x00\xff", metadata={"style": "江南", "seed": 1})
    assert CachedCover.decode(cover.encode()) == cover
    with pytest.raises(ValueError, match="CGC1"):
        CachedCover.decode(b"not a cover")


def test_bad_ttl_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="COVERGEN_CACHE_TTL_S"):
        ResultCache("redis://127.0.0.1:1/0", Metrics(), ttl_s=0)


# -- against a real Redis ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[EmbeddedRedis]:
    with running_redis() as server:
        yield server


@pytest.fixture
async def raw(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def cache(
    redis_server: EmbeddedRedis, raw: aioredis.Redis, metrics: Metrics
) -> AsyncIterator[ResultCache]:
    # Depends on `raw`, which empties the database: every test starts without cached covers.
    result_cache = ResultCache(redis_server.url, metrics, ttl_s=60)
    yield result_cache
    await result_cache.close()


class CountingGenerator:
    """generate() for get_or_generate: counts calls, sets `started` when called, optionally
    waits for a release event."""

    def __init__(self, image: bytes = b"image-bytes", error: Exception | None = None) -> None:
        self.calls = 0
        self.image = image
        self.error = error
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self) -> CachedCover:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return CachedCover(image=self.image, metadata={"call": self.calls, "style": "jiangnan"})


def cache_count(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("covergen_cache_requests_total", {"outcome": outcome})
    return value or 0.0


async def test_miss_then_hit_returns_identical_cover(cache: ResultCache, metrics: Metrics) -> None:
    generate = CountingGenerator()
    first, first_outcome = await cache.get_or_generate(cache_key(KEY_PARTS), generate)
    second, second_outcome = await cache.get_or_generate(cache_key(KEY_PARTS), generate)
    assert (first_outcome, second_outcome) == (CacheOutcome.MISS, CacheOutcome.HIT)
    assert second == first
    assert second.image == b"image-bytes"
    assert second.metadata == {"call": 1, "style": "jiangnan"}
    assert generate.calls == 1
    assert (cache_count(metrics, "miss"), cache_count(metrics, "hit")) == (1, 1)


async def test_value_is_stored_with_the_ttl(cache: ResultCache, raw: aioredis.Redis) -> None:
    key = cache_key(KEY_PARTS)
    await cache.get_or_generate(key, CountingGenerator())
    ttl_ms = await raw.pttl(key)
    assert 55_000 < ttl_ms <= 60_000
    assert await raw.exists(f"lock:{key}") == 0


async def test_concurrent_identical_calls_generate_once(cache: ResultCache, metrics: Metrics) -> None:
    generate = CountingGenerator()
    generate.release.clear()
    calls = [cache.get_or_generate(cache_key(KEY_PARTS), generate) for _ in range(20)]
    pending = asyncio.gather(*calls)
    # every caller joins the flight on its first step, before the flight's own first step runs
    await wait_for_event(generate.started, "the generation started")
    generate.release.set()
    results = await pending
    assert generate.calls == 1
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count(CacheOutcome.MISS) == 1
    assert outcomes.count(CacheOutcome.COALESCED) == 19
    assert {cover.image for cover, _ in results} == {b"image-bytes"}
    assert cache_count(metrics, "coalesced") == 19


async def test_two_replicas_generate_once_through_the_redis_lock(
    redis_server: EmbeddedRedis, raw: aioredis.Redis
) -> None:
    replica_a = ResultCache(redis_server.url, Metrics())
    replica_b = ResultCache(redis_server.url, Metrics())
    generate = CountingGenerator()
    generate.release.clear()
    key = cache_key(KEY_PARTS)
    try:
        pending = asyncio.gather(
            replica_a.get_or_generate(key, generate), replica_b.get_or_generate(key, generate)
        )
        await wait_for_event(generate.started, "one replica started generating")
        await eventually(
            lambda: _subscribers(raw, f"done:{key}"), "the other replica subscribed to the done channel"
        )
        # Hold the generation past the 0.1 s socket timeout the waiter reads with: a minimum
        # hold that the waiter must survive, not a wait for anything (slower only holds longer).
        await asyncio.sleep(0.3)
        generate.release.set()
        (cover_a, outcome_a), (cover_b, outcome_b) = await pending
    finally:
        await replica_a.close()
        await replica_b.close()
    assert generate.calls == 1
    assert sorted([outcome_a.value, outcome_b.value]) == ["coalesced", "miss"]
    assert cover_a == cover_b
    assert await raw.exists(f"lock:{key}") == 0


async def test_waiting_replica_takes_over_when_the_lock_holder_dies(
    cache: ResultCache, raw: aioredis.Redis
) -> None:
    key = cache_key(KEY_PARTS)
    # A replica took the lock and died: the lock expires and no value ever appears.
    await raw.set(f"lock:{key}", "dead-replica", px=300)
    lock_while_generating: list[bytes | None] = []

    async def generate() -> CachedCover:
        lock_while_generating.append(await raw.get(f"lock:{key}"))
        return CachedCover(image=b"image-bytes")

    cover, outcome = await cache.get_or_generate(key, generate)
    assert outcome is CacheOutcome.MISS
    # It generated once, holding a lock of its own: taken only after the dead one expired.
    assert len(lock_while_generating) == 1
    assert lock_while_generating[0] not in (None, b"dead-replica")
    stored = await raw.get(key)
    assert isinstance(stored, bytes)
    assert CachedCover.decode(stored) == cover


async def test_release_never_deletes_another_replicas_lock(cache: ResultCache, raw: aioredis.Redis) -> None:
    key = cache_key(KEY_PARTS)
    generate = CountingGenerator()
    generate.release.clear()
    pending = asyncio.ensure_future(cache.get_or_generate(key, generate))
    await wait_for_event(generate.started, "the generation started")  # after taking the lock
    ours = await raw.get(f"lock:{key}")
    assert ours is not None
    # Our lock "expires" and another replica takes it over before we finish.
    await raw.set(f"lock:{key}", "successor-token", px=10_000)
    generate.release.set()
    _, outcome = await pending
    assert outcome is CacheOutcome.MISS
    assert await raw.get(f"lock:{key}") == b"successor-token"


async def test_generate_error_reaches_every_waiter_and_releases_the_lock(
    cache: ResultCache, raw: aioredis.Redis
) -> None:
    key = cache_key(KEY_PARTS)
    failing = CountingGenerator(error=RuntimeError("out of memory on cuda:0"))
    failing.release.clear()
    pending = asyncio.gather(*[cache.get_or_generate(key, failing) for _ in range(5)], return_exceptions=True)
    await wait_for_event(failing.started, "the generation started")
    failing.release.set()
    results = await pending
    assert failing.calls == 1
    assert all(isinstance(result, RuntimeError) for result in results)
    assert await raw.exists(f"lock:{key}") == 0
    assert await raw.exists(key) == 0
    _, outcome = await cache.get_or_generate(key, CountingGenerator())
    assert outcome is CacheOutcome.MISS


async def test_cancelling_every_caller_cancels_the_generation_and_frees_the_lock(
    cache: ResultCache, raw: aioredis.Redis
) -> None:
    key = cache_key(KEY_PARTS)
    generate = CountingGenerator()
    generate.release.clear()
    callers = [asyncio.ensure_future(cache.get_or_generate(key, generate)) for _ in range(3)]
    await wait_for_event(generate.started, "the generation started")
    callers[0].cancel()
    await asyncio.wait([callers[0]])  # the first caller has left
    assert await raw.exists(f"lock:{key}") == 1  # two callers still wait
    for caller in callers[1:]:
        caller.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(result, asyncio.CancelledError) for result in results)
    await eventually(lambda: _lock_gone(raw, key), "the cancelled flight released its lock")
    assert generate.calls == 1


async def test_outage_bypasses_logs_once_and_recovers_on_the_same_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    key = cache_key(KEY_PARTS)
    now = [0.0]  # the breaker's clock, advanced by hand: no call's speed can outrun a cool-down
    with running_redis() as server:
        cache = ResultCache(server.url, metrics, breaker_cooldown_s=1.0, clock=lambda: now[0])
        try:
            assert await cache.ping()
            generate = CountingGenerator()
            assert (await cache.get_or_generate(key, generate))[1] is CacheOutcome.MISS

            server.stop()
            with caplog.at_level(logging.INFO, logger="covergen.cache"):
                outcomes = [(await cache.get_or_generate(key, generate))[1] for _ in range(5)]
                assert outcomes == [CacheOutcome.BYPASS] * 5
                assert generate.calls == 6
                # Only the first call reached Redis; the breaker skipped it for the other four.
                assert metrics.registry.get_sample_value("covergen_cache_errors_total") == 1
                now[0] += 1.0  # the cool-down has passed: Redis is tried again
                assert (await cache.get_or_generate(key, generate))[1] is CacheOutcome.BYPASS
                assert metrics.registry.get_sample_value("covergen_cache_errors_total") == 2
                assert not await cache.ping()

                server.start()
                now[0] += 1.0  # past the cool-down the failed ping started
                _, after_restart = await cache.get_or_generate(key, generate)
                _, then = await cache.get_or_generate(key, generate)
        finally:
            await cache.close()

    assert (after_restart, then) == (CacheOutcome.MISS, CacheOutcome.HIT)
    assert server.port is not None and server.url.endswith(f":{server.port}/0")
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    recoveries = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert len(recoveries) == 1
    assert cache_count(metrics, "bypass") == 6


async def _subscribers(raw: aioredis.Redis, channel: str) -> bool:
    [(_, count)] = await raw.pubsub_numsub(channel)
    return bool(count)


async def _lock_gone(raw: aioredis.Redis, key: str) -> bool:
    return await raw.exists(f"lock:{key}") == 0
