"""PrepareStream: prepare jobs on a Redis Stream with one consumer group shared by all replicas.

    covergen:prepare:jobs         the stream; one entry per cover to paint (PrepareJob fields)
    covergen:prepare:dead         the dead-letter stream: the job's fields + reason + consumer
    covergen:prepare:queued:<key> marker while a cover is on the stream (dedupes PrepareCovers)
    covergen:prepare:failed:<key> marker after a cover's job was dead-lettered (for count_only)

A replica takes new entries with XREADGROUP (">"), acknowledges an entry after its cover is
stored (XACK, then XDEL so the stream's length is its backlog), and takes over entries another
replica left pending for longer than the visibility timeout (XAUTOCLAIM). While a job runs its
holder refreshes the entry's idle time (XCLAIM JUSTID to itself), so a slow job is not stolen.
A job that fails is re-added with `attempts + 1`; at `max_attempts` failures, or when it has
been delivered that many times without an acknowledgement (replicas crashing on it), it moves
to the dead-letter stream with the reason. Redis errors surface as `QueueUnavailable`.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from covergen.errors import BackendUnavailable

T = TypeVar("T")
PREFIX = "covergen:prepare:"


class QueueUnavailable(BackendUnavailable):
    """The prepare queue's Redis cannot be reached (UNAVAILABLE); live serving is unaffected."""


@dataclass(frozen=True)
class PrepareJob:
    """One cover to paint ahead of readers: the request fields that decide it, and its cache key."""

    key: str  # the cache key computed when it was queued (markers are keyed on it)
    title: str
    region: str  # one of the regions sharing this cover
    variant: int = 0
    width: int = 0
    height: int = 0
    steps: int = 0
    format: str = "png"
    attempts: int = 0  # failures so far

    def fields(self) -> dict[str, str]:
        return {name: str(value) for name, value in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> PrepareJob:
        ints = ("variant", "width", "height", "steps", "attempts")
        return cls(
            key=fields["key"],
            title=fields["title"],
            region=fields["region"],
            format=fields.get("format", "png"),
            **{name: int(fields.get(name, 0)) for name in ints},
        )


@dataclass(frozen=True)
class Delivery:
    """A stream entry handed to this consumer."""

    entry_id: str
    job: PrepareJob
    times_delivered: int = 1


@dataclass(frozen=True)
class StreamStats:
    lag: int  # entries no replica has taken yet
    pending: int  # taken, not acknowledged
    oldest_age_s: float  # age of the oldest entry still on the stream
    dead_letters: int


def consumer_name() -> str:
    """A name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class PrepareStream:
    """The prepare queue in Redis (see the module docstring for the keys)."""

    def __init__(
        self,
        redis_url: str,
        *,
        group: str = "covergen-painters",
        consumer: str | None = None,
        visibility_timeout_s: float = 60.0,
        max_attempts: int = 3,
        marker_ttl_s: int = 86_400,
        connect_timeout_s: float = 0.5,
    ) -> None:
        self.stream = PREFIX + "jobs"
        self.dead_stream = PREFIX + "dead"
        self.group = group
        self.consumer = consumer or consumer_name()
        self.visibility_ms = int(visibility_timeout_s * 1000)
        self.max_attempts = max_attempts
        self.marker_ttl_s = marker_ttl_s
        # Socket timeout above the XREADGROUP block time; connects fail fast when Redis is down.
        self._redis = aioredis.Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=10.0, socket_connect_timeout=connect_timeout_s
        )
        self._group_ready = False

    async def _call(self, command: Awaitable[T]) -> Any:
        try:
            return await command
        except RedisError as exc:
            raise QueueUnavailable(
                f"the prepare queue's Redis is unreachable ({type(exc).__name__}: {exc}); PrepareCovers "
                "needs Redis (COVERGEN_REDIS_URL), live GenerateCover calls are unaffected; retry later"
            ) from exc

    async def ensure_group(self) -> None:
        """Create the stream and the consumer group if they do not exist yet (idempotent)."""
        if self._group_ready:
            return
        try:
            await self._call(self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except QueueUnavailable as exc:
            if not (isinstance(exc.__cause__, ResponseError) and "BUSYGROUP" in str(exc.__cause__)):
                raise
        self._group_ready = True

    # -- producing ----------------------------------------------------------------------------

    async def cached(self, keys: Sequence[str]) -> list[bool]:
        """Whether each cover key is in the result cache now."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [bool(n) for n in await self._call(pipe.execute())]

    async def enqueue(self, jobs: Sequence[PrepareJob]) -> tuple[int, int]:
        """Queue jobs not already on the stream; returns (queued now, already queued)."""
        await self.ensure_group()
        pipe = self._redis.pipeline(transaction=False)
        for job in jobs:
            pipe.set(self._queued(job.key), "1", nx=True, ex=self.marker_ttl_s)
        fresh = [job for job, set_now in zip(jobs, await self._call(pipe.execute()), strict=True) if set_now]
        pipe = self._redis.pipeline(transaction=False)
        for job in fresh:
            pipe.delete(self._failed(job.key))
            pipe.xadd(self.stream, job.fields())  # type: ignore[arg-type]
        await self._call(pipe.execute())
        return len(fresh), len(jobs) - len(fresh)

    async def progress(self, keys: Sequence[str]) -> tuple[int, int]:
        """(on the stream, dead-lettered) among `keys`."""
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.exists(self._queued(key))
            pipe.exists(self._failed(key))
        flags = await self._call(pipe.execute())
        return sum(map(bool, flags[0::2])), sum(map(bool, flags[1::2]))

    # -- consuming ----------------------------------------------------------------------------

    async def read(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to `count` new entries for this consumer, waiting up to `block_ms` for one."""
        await self.ensure_group()
        reply = await self._call(
            self._redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms)
        )
        return [
            Delivery(entry_id, PrepareJob.from_fields(fields))
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    async def reclaim(self, count: int) -> list[Delivery]:
        """Entries other consumers left pending past the visibility timeout, now ours."""
        await self.ensure_group()
        reply = await self._call(
            self._redis.xautoclaim(
                self.stream, self.group, self.consumer, self.visibility_ms, "0-0", count=count
            )
        )
        deliveries = []
        for entry_id, fields in reply[1]:
            if not fields:  # deleted while pending
                await self._call(self._redis.xack(self.stream, self.group, entry_id))
                continue
            info = await self._call(
                self._redis.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
            )
            times = int(info[0]["times_delivered"]) if info else 1
            deliveries.append(Delivery(entry_id, PrepareJob.from_fields(fields), times))
        return deliveries

    async def touch(self, entry_ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer is working on (a heartbeat)."""
        if entry_ids:
            await self._call(
                self._redis.xclaim(self.stream, self.group, self.consumer, 0, list(entry_ids), justid=True)
            )

    async def ack(self, delivery: Delivery) -> None:
        """The cover is stored: acknowledge and delete the entry, clear its queued marker."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, delivery.entry_id)
        pipe.xdel(self.stream, delivery.entry_id)
        pipe.delete(self._queued(delivery.job.key))
        await self._call(pipe.execute())

    async def fail(self, delivery: Delivery, reason: str, *, dead: bool = False) -> bool:
        """Record a failure: re-add with attempts + 1, or dead-letter it (at `max_attempts`, or
        at once with `dead`). True when dead-lettered."""
        job = delivery.job
        attempts = job.attempts + 1
        dead = dead or attempts >= self.max_attempts
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, delivery.entry_id)
        pipe.xdel(self.stream, delivery.entry_id)
        if dead:
            fields = {
                **job.fields(),
                "attempts": str(attempts),
                "reason": reason[:2000],
                "consumer": self.consumer,
            }
            pipe.xadd(self.dead_stream, fields)  # type: ignore[arg-type]
            pipe.delete(self._queued(job.key))
            pipe.set(self._failed(job.key), reason[:2000], ex=self.marker_ttl_s)
        else:
            retry = PrepareJob(**{**job.__dict__, "attempts": attempts})
            pipe.xadd(self.stream, retry.fields())  # type: ignore[arg-type]
        await self._call(pipe.execute())
        return dead

    async def dead_letters(self, count: int = 100) -> list[dict[str, str]]:
        """The oldest entries of the dead-letter stream."""
        entries = await self._call(self._redis.xrange(self.dead_stream, count=count))
        return [fields for _, fields in entries]

    async def stats(self) -> StreamStats:
        await self.ensure_group()
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(self.stream)
        pipe.xpending(self.stream, self.group)
        pipe.xrange(self.stream, count=1)
        pipe.xlen(self.dead_stream)
        length, pending, oldest, dead = await self._call(pipe.execute())
        pending_count = int(pending["pending"]) if isinstance(pending, dict) else 0
        age = 0.0
        if oldest:
            age = max(0.0, time.time() - int(oldest[0][0].split("-")[0]) / 1000)
        return StreamStats(max(0, int(length) - pending_count), pending_count, age, int(dead))

    async def close(self) -> None:
        await self._redis.aclose()

    def _queued(self, key: str) -> str:
        return f"{PREFIX}queued:{key}"

    def _failed(self, key: str) -> str:
        return f"{PREFIX}failed:{key}"

