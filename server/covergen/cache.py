"""The result cache: finished covers in Redis, generated at most once per key.

`ResultCache.get_or_generate(key, generate)` returns a cached cover or runs `generate` once:

- in this process, concurrent calls for one key share a single flight (one task, one future);
- across replicas, the flight that misses takes a Redis lock (`SET lock:<key> <token> NX PX`);
  replicas that lose the race subscribe to `done:<key>` and read the value when the holder
  publishes, or take the lock over if it expires with no value (the holder died);
- the holder renews its lock while it generates (so only a dead holder's lock expires), stores
  the value with a TTL, then releases the lock with a compare-and-delete
  script that also publishes `done:<key>`, so a late holder never deletes a successor's lock.

Redis is an optimisation, never a dependency: every call has short socket and connect timeouts,
and on any Redis error the cover is generated uncached (`CacheOutcome.BYPASS`). A circuit
breaker then skips Redis for `breaker_cooldown_s` so an outage does not cost a connect timeout
per request; the outage is logged once when it starts and once when it ends.

A value is one Redis string: `CGC1`, a 4-byte big-endian metadata length, the metadata as JSON,
then the encoded image bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from covergen.errors import ConfigError
from covergen.hot_covers import HotCovers
from covergen.metrics import Metrics

log = logging.getLogger(__name__)

KEY_PREFIX = "covergen:v1:"
_MAGIC = b"CGC1"
_HEADER = struct.Struct(">I")  # metadata length in bytes

# KEYS[1] = lock key; ARGV[1] = our token; ARGV[2] = done channel.
_RELEASE_AND_NOTIFY = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    redis.call('PUBLISH', ARGV[2], '1')
    return 1
end
return 0
"""

# KEYS[1] = lock key; ARGV[1] = our token; ARGV[2] = new TTL in ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

T = TypeVar("T")


def cache_key(parts: Mapping[str, object]) -> str:
    """A versioned sha256 of every input that changes the output image.

    Pass the base model's content id, each adapter as (name, content hash, weight), the final
    prompt and negative prompt, seed, width, height, steps, guidance, scheduler and output
    format. Keys are canonical JSON (sorted, compact), so dict order never matters; 1 and 1.0
    differ, so pass numbers with consistent types.
    """
    if not parts:
        raise ValueError("cache_key needs the generation inputs; got an empty mapping")
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return KEY_PREFIX + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedCover:
    """An encoded cover image and the response metadata that goes with it."""

    image: bytes
    metadata: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        header = json.dumps(self.metadata, separators=(",", ":"), ensure_ascii=False).encode()
        return _MAGIC + _HEADER.pack(len(header)) + header + self.image

    @classmethod
    def decode(cls, raw: bytes) -> CachedCover:
        """Parse a stored value; ValueError if it is not one `encode` wrote."""
        start = len(_MAGIC) + _HEADER.size
        if len(raw) < start or not raw.startswith(_MAGIC):
            raise ValueError("cached value does not start with the CGC1 header")
        (header_len,) = _HEADER.unpack_from(raw, len(_MAGIC))
        if start + header_len > len(raw):
            raise ValueError(f"cached value is truncated: metadata claims {header_len} bytes")
        metadata = json.loads(raw[start : start + header_len])
        if not isinstance(metadata, dict):
            raise ValueError("cached metadata is not a JSON object")
        return cls(image=raw[start + header_len :], metadata=metadata)


class CacheOutcome(enum.Enum):
    """How `get_or_generate` produced its cover (also the `outcome` metric label)."""

    HIT = "hit"  # read from Redis
    MISS = "miss"  # generated here and stored
    COALESCED = "coalesced"  # shared another caller's or another replica's generation
    BYPASS = "bypass"  # Redis unavailable: generated here, not stored


class _RedisUnavailable(Exception):
    """A Redis call failed; already counted and logged by the breaker."""


class _OutageBreaker:
    """Skips Redis for a cool-down after a failure; logs outage start and end once each."""

    def __init__(
        self, where: str, cooldown_s: float, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._where = where
        self._cooldown_s = cooldown_s
        self._metrics = metrics
        self._clock = clock
        self._retry_at = 0.0
        self._down = False

    def allows_call(self) -> bool:
        return self._clock() >= self._retry_at

    def record_failure(self, exc: BaseException) -> None:
        self._metrics.count_cache_error()
        self._retry_at = self._clock() + self._cooldown_s
        if not self._down:
            self._down = True
            log.warning(
                "result cache: Redis at %s is unavailable (%s: %s); serving covers uncached "
                "and retrying every %.1f s",
                self._where, type(exc).__name__, exc, self._cooldown_s,
            )  # fmt: skip

    def record_success(self) -> None:
        if self._down:
            self._down = False
            log.info("result cache: Redis at %s is reachable again; caching resumed", self._where)


@dataclass
class _Flight:
    """One in-process generation for a key and how many callers still await it."""

    task: asyncio.Task[tuple[CachedCover, CacheOutcome]]
    waiters: int = 0


def _unless_cancelled(generate: Callable[[], Awaitable[CachedCover]]) -> Callable[[], Awaitable[CachedCover]]:
    """`generate`, refusing to start in a task whose cancellation was dropped.

    redis-py sends commands through `asyncio.wait_for`, which on Python 3.11 returns the result
    and drops a cancellation that arrives as the send completes. A flight cancelled there (all its
    callers left) would otherwise go on to generate a cover nobody waits for.
    """

    async def run() -> CachedCover:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        return await generate()

    return run


def _redacted(url: str) -> str:
    """host:port/db of a redis URL, without credentials, for logs."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


class ResultCache:
    """Finished covers in Redis with single-flight generation in-process and across replicas.

    Args:
        redis_url: e.g. "redis://127.0.0.1:6379/0" (COVERGEN_REDIS_URL).
        metrics: receives `covergen_cache_requests_total{outcome}` and `cache_errors_total`.
        ttl_s: how long a cover stays cached (COVERGEN_CACHE_TTL_S).
        lock_ttl_s: how long a replica's generation lock lives; longer than a slow generation,
            or a second replica starts the same work when it expires.
        wait_timeout_s: the longest a replica waits for another's generation before doing it.
        socket_timeout_s, connect_timeout_s: per Redis call; keep them short, Redis is local.
        breaker_cooldown_s: after a Redis failure, skip Redis this long before trying again.
        clock: the breaker's clock in seconds (time.monotonic; tests pass one they advance).
    """

    def __init__(
        self,
        redis_url: str,
        metrics: Metrics,
        *,
        ttl_s: float = 86_400.0,
        lock_ttl_s: float = 120.0,
        wait_timeout_s: float = 150.0,
        socket_timeout_s: float = 0.1,
        connect_timeout_s: float = 0.1,
        breaker_cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        hot: HotCovers | None = None,
    ) -> None:
        for name, value in (("ttl_s", ttl_s), ("lock_ttl_s", lock_ttl_s),
                            ("wait_timeout_s", wait_timeout_s),
                            ("socket_timeout_s", socket_timeout_s),
                            ("connect_timeout_s", connect_timeout_s)):  # fmt: skip
            if value <= 0:
                hint = "; set COVERGEN_CACHE_TTL_S" if name == "ttl_s" else ""
                raise ConfigError(f"ResultCache {name}={value} must be > 0{hint}")
        self._metrics = metrics
        self._ttl_ms = int(ttl_s * 1000)
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._wait_timeout_s = wait_timeout_s
        # One retry on a fresh connection: a pooled connection left dead by a Redis restart
        # fails once and the retry reconnects; a real outage fails twice, fast, and trips
        # the breaker.
        self._redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._release_script = self._redis.register_script(_RELEASE_AND_NOTIFY)
        self._renew_script = self._redis.register_script(_RENEW)
        self._breaker = _OutageBreaker(_redacted(redis_url), breaker_cooldown_s, metrics, clock)
        self._flights: dict[str, _Flight] = {}
        self._hot = hot  # in-process covers read more than once (hot_covers.py); None: off

    async def get_or_generate(
        self, key: str, generate: Callable[[], Awaitable[CachedCover]]
    ) -> tuple[CachedCover, CacheOutcome]:
        """The cover for `key`, from Redis or from `generate()`, run once per key at a time.

        Callers that arrive while a flight for `key` is running share it (COALESCED) and see
        its exception if it fails. A caller that is cancelled leaves the flight running for the
        others; when the last one leaves, the generation is cancelled.
        """
        if self._hot is not None:
            hot = self._hot.get(key)
            if hot is not None:  # no task, no Redis round trip
                self._metrics.observe_cache(CacheOutcome.HIT.value)
                return hot, CacheOutcome.HIT
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            task = asyncio.create_task(self._resolve(key, generate), name=f"cover-flight {key}")
            flight = _Flight(task)
            self._flights[key] = flight
            task.add_done_callback(lambda done: self._flight_done(key, flight, done))
        flight.waiters += 1
        try:
            cover, outcome = await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._forget(key, flight)
                flight.task.cancel()
        if outcome is CacheOutcome.HIT and self._hot is not None:
            self._hot.put(key, cover)  # a second read: it is hot
        if joined:
            outcome = CacheOutcome.COALESCED
        self._metrics.observe_cache(outcome.value)
        return cover, outcome

    async def peek(self, key: str) -> CachedCover | None:
        """The cover cached at `key`, or None (also while Redis is unavailable); never generates
        and is not counted as a lookup (fallback choosers use it)."""
        if not self._breaker.allows_call():
            return None
        try:
            return await self._read(key)
        except _RedisUnavailable:
            return None

    async def ping(self) -> bool:
        """Whether Redis answers now (ignores the breaker; a success ends a logged outage)."""
        try:
            return bool(await self._call(self._redis.ping()))
        except _RedisUnavailable:
            return False

    async def close(self) -> None:
        """Cancel running flights and close the Redis connections."""
        for flight in list(self._flights.values()):
            flight.task.cancel()
        self._flights.clear()
        await self._redis.aclose()

    # -- one flight ---------------------------------------------------------------------------

    async def _resolve(
        self, key: str, generate: Callable[[], Awaitable[CachedCover]]
    ) -> tuple[CachedCover, CacheOutcome]:
        generate = _unless_cancelled(generate)
        if not self._breaker.allows_call():
            return await generate(), CacheOutcome.BYPASS
        token = secrets.token_hex(16)
        try:
            cached = await self._read(key)
            if cached is not None:
                return cached, CacheOutcome.HIT
            locked = await self._try_lock(key, token)
        except _RedisUnavailable:
            return await generate(), CacheOutcome.BYPASS
        if locked:
            return await self._generate_and_store(key, generate, token)
        return await self._wait_for_other_replica(key, generate, token)

    async def _wait_for_other_replica(
        self, key: str, generate: Callable[[], Awaitable[CachedCover]], token: str
    ) -> tuple[CachedCover, CacheOutcome]:
        """Another replica holds the lock: wait for its `done` message, or take over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_timeout_s
        pubsub = self._redis.pubsub()
        try:
            await self._call(pubsub.subscribe(_done_channel(key)))
            while True:
                # Checked after subscribing, so a `done` published before we listened is seen.
                cached = await self._read(key)
                if cached is not None:
                    return cached, CacheOutcome.COALESCED
                if await self._try_lock(key, token):
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.warning(
                        "result cache: waited %.0f s for another replica to generate %s; "
                        "generating here (raise lock_ttl_s/wait_timeout_s if covers are slow)",
                        self._wait_timeout_s, key,
                    )  # fmt: skip
                    return await self._generate_and_store(key, generate, token=None)
                lock_left_ms = await self._call(self._redis.pttl(_lock_key(key)))
                wait_s = min(remaining, max(lock_left_ms, 10) / 1000)
                await self._call(pubsub.get_message(ignore_subscribe_messages=True,
                                                    timeout=wait_s))  # fmt: skip
        except _RedisUnavailable:
            return await generate(), CacheOutcome.BYPASS
        finally:
            try:
                await pubsub.aclose()
            except RedisError as exc:
                log.debug("result cache: closing pub/sub failed: %s", exc)
        return await self._generate_and_store(key, generate, token)

    async def _generate_and_store(
        self, key: str, generate: Callable[[], Awaitable[CachedCover]], token: str | None
    ) -> tuple[CachedCover, CacheOutcome]:
        """Generate, store with the TTL, then release our lock (if we hold one).

        The lock is renewed while we generate, so only a holder that died lets it expire: a slow
        generation (a long queue, a loaded host) is never painted a second time by another replica.
        """
        renewal = asyncio.create_task(self._keep_lock(key, token)) if token is not None else None
        try:
            cover = await generate()
            try:
                await self._call(self._redis.set(key, cover.encode(), px=self._ttl_ms))
                stored = True
            except _RedisUnavailable:
                stored = False
        finally:
            if renewal is not None:
                renewal.cancel()
            if token is not None:
                await self._release(key, token)
        return cover, CacheOutcome.MISS if stored else CacheOutcome.BYPASS

    async def _keep_lock(self, key: str, token: str) -> None:
        """Extend our lock to a full lock_ttl every third of it, while it still holds our token."""
        while True:
            await asyncio.sleep(self._lock_ttl_ms / 3000)
            with contextlib.suppress(_RedisUnavailable):
                await self._call(self._renew_script(keys=[_lock_key(key)], args=[token, self._lock_ttl_ms]))

    # -- Redis calls ------------------------------------------------------------------------

    async def _call(self, command: Awaitable[T]) -> T:
        """Await one Redis command, feeding the breaker; RedisError becomes _RedisUnavailable."""
        try:
            result = await command
        except RedisError as exc:
            self._breaker.record_failure(exc)
            raise _RedisUnavailable from exc
        self._breaker.record_success()
        return result

    async def _read(self, key: str) -> CachedCover | None:
        # decode_responses is off: values come back as bytes.
        raw = cast("bytes | None", await self._call(self._redis.get(key)))
        if raw is None:
            return None
        try:
            return CachedCover.decode(raw)
        except ValueError as exc:
            log.warning("result cache: dropping unreadable value at %s: %s", key, exc)
            return None

    async def _try_lock(self, key: str, token: str) -> bool:
        try:
            locked = await self._call(self._redis.set(_lock_key(key), token, nx=True, px=self._lock_ttl_ms))
        except asyncio.CancelledError:
            # The SET may have reached Redis: free the lock if it is ours, or the caller's retry of
            # this very cover would wait out lock_ttl_s for a holder that is gone.
            await asyncio.shield(self._release(key, token))
            raise
        return bool(locked)

    async def _release(self, key: str, token: str) -> None:
        """Delete our lock only if it still holds our token, and wake waiting replicas."""
        # If Redis is down the lock expires by itself after lock_ttl_s.
        with contextlib.suppress(_RedisUnavailable):
            await self._call(self._release_script(keys=[_lock_key(key)], args=[token, _done_channel(key)]))

    # -- flight bookkeeping -----------------------------------------------------------------

    def _forget(self, key: str, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _flight_done(
        self, key: str, flight: _Flight, task: asyncio.Task[tuple[CachedCover, CacheOutcome]]
    ) -> None:
        self._forget(key, flight)
        if not task.cancelled():
            task.exception()  # retrieved here, so a flight every caller left does not warn


def _lock_key(key: str) -> str:
    return f"lock:{key}"


def _done_channel(key: str) -> str:
    return f"done:{key}"
