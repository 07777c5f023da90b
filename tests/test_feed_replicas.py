"""Two real replica processes share one prepare stream; one is SIGKILLed in the middle of its
jobs and the other finishes them: every cover ends up cached, none is lost and none is written
to the cache twice (counted with Redis keyspace notifications on SET).

The prepare is queued with the `covergen prepare` CLI against replica A and followed to the end
with the same CLI (progress bar) against replica B.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from waiting import eventually

from covergen.redis_server import free_loopback_port

WAIT_S = 180.0  # generous bound on every wait; start-up of a replica takes ~10-20 s here
TITLES = ("夜市烧烤节开幕",)
# A dead replica's jobs are reclaimed after VISIBILITY_S and the cover it was painting is free to
# paint again after LOCK_TTL_S. Live holders renew both (heartbeat, lock renewal every third), so
# these bound only how long recovery takes, not whether a slow host paints a cover twice.
VISIBILITY_S = 5.0
LOCK_TTL_S = 8.0


class Replica:
    """A `covergen-server` process on free loopback ports; its log lines are kept."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_loopback_port()
        self.metrics_port = free_loopback_port()
        self.env = {**env, "COVERGEN_GRPC_PORT": str(self.port), "COVERGEN_METRICS_PORT": str(self.metrics_port)}
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "covergen.cli", env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            if "serving gRPC on" in line:
                self._ready.set()

    async def ready(self) -> None:
        waiter = asyncio.create_task(self._ready.wait())
        assert self.process is not None
        exited = asyncio.create_task(self.process.wait())
        done, _ = await asyncio.wait({waiter, exited}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        waiter.cancel()
        assert self._ready.is_set(), "replica did not start:\n" + "\n".join(self.lines[-30:])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()


async def cli(*args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run `covergen ...`; returns its exit code and the JSON lines it printed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "covergen.client", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode is not None
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines, f"covergen {' '.join(args)} printed no summary: {err.decode()[-2000:]}"
    return process.returncode, lines


@pytest.fixture
def stream_redis() -> Iterator[Any]:
    from redis_fixture import running_redis

    with running_redis() as server:
        redis.Redis.from_url(server.url).config_set("notify-keyspace-events", "E$")  # SETs -> keyevents
        yield server


@pytest.fixture
async def replicas(stream_redis: Any, styles_dir: Path, model_cache_dir: Path) -> AsyncIterator[list[Replica]]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "COVERGEN_BASE_MODEL": "embedded",
        "COVERGEN_STYLES_DIR": str(styles_dir),
        "COVERGEN_CACHE_DIR": str(model_cache_dir),
        "COVERGEN_REDIS_URL": stream_redis.url,
        "COVERGEN_HOST": "127.0.0.1",
        "COVERGEN_DEVICE": "cpu",
        "COVERGEN_DTYPE": "fp32",
        "COVERGEN_TORCH_THREADS": "1",
        "COVERGEN_DEFAULT_STEPS": "4",
        "COVERGEN_MAX_BATCH": "1",  # one cover at a time, so each replica holds several jobs pending
        "COVERGEN_PREPARE_CONCURRENCY": "3",
        "COVERGEN_PREPARE_VISIBILITY_TIMEOUT_S": str(VISIBILITY_S),
        "COVERGEN_CACHE_LOCK_TTL_S": str(LOCK_TTL_S),
        "COVERGEN_STANDING_COVERS": "false",
        "COVERGEN_DRAIN_GRACE_S": "1",
    }
    started = [Replica(env), Replica(env)]
    try:
        await asyncio.gather(*(r.start() for r in started))
        await asyncio.gather(*(r.ready() for r in started))
        yield started
    finally:
        await asyncio.gather(*(r.stop() for r in started))


async def count_cover_writes(url: str, counts: Counter[str], subscribed: asyncio.Event) -> None:
    """Count SETs per result-cache key (lock keys and prepare markers are not covers)."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe("__keyevent@0__:set")
    subscribed.set()
    try:
        async for message in pubsub.listen():
            key = message.get("data")
            if message["type"] == "message" and isinstance(key, str) and key.startswith("covergen:v1:"):
                counts[key] += 1
    finally:
        await pubsub.aclose()
        await client.aclose()


def pending_of(client: redis.Redis, pid: int) -> tuple[str | None, list[str]]:
    """The consumer name of process `pid` and the entry ids it holds unacknowledged."""
    for consumer in client.xinfo_consumers("covergen:prepare:jobs", "covergen-painters"):
        if f"-{pid}-" in consumer["name"]:
            entries = client.xpending_range(
                "covergen:prepare:jobs", "covergen-painters", "-", "+", 1000, consumername=consumer["name"]
            )
            return consumer["name"], [e["message_id"] for e in entries]
    return None, []


async def test_killed_replica_jobs_are_finished_by_the_other_once_each(
    stream_redis: Any, replicas: list[Replica]
) -> None:
    a, b = replicas
    writes: Counter[str] = Counter()
    subscribed = asyncio.Event()
    listener = asyncio.create_task(count_cover_writes(stream_redis.url, writes, subscribed))
    await asyncio.wait_for(subscribed.wait(), WAIT_S)
    client = redis.Redis.from_url(stream_redis.url, decode_responses=True)
    try:
        args = [f"--title={t}" for t in TITLES]
        code, (queued,) = await cli("--server", a.address, "prepare", *args, "--no-wait")
        assert code == 0 and queued["queued"] == queued["covers"] > 5

        assert a.process is not None
        pid = a.process.pid
        # A is in the middle of its jobs
        await eventually(lambda: len(pending_of(client, pid)[1]) >= 2, "replica A taking two jobs", WAIT_S)
        a.process.send_signal(signal.SIGKILL)
        await a.process.wait()
        name, held = pending_of(client, a.process.pid)
        assert held, "A died holding jobs"

        code, lines = await cli("--server", b.address, "--timeout", "60", "prepare", *args, "--poll", "0.2")
        assert code == 0, lines
        assert lines[-1] == {"covers": queued["covers"], "cached": queued["covers"], "failed": 0}

        left = client.xpending_range("covergen:prepare:jobs", "covergen-painters", "-", "+", 1000)
        assert left == [], "every job acknowledged, A's included"
        assert client.xlen("covergen:prepare:dead") == 0
        await _until_writes_settle(client, writes, queued["covers"])
        assert len(writes) == queued["covers"], "every cover stored"
        assert max(writes.values()) == 1, f"painted twice into the cache: {[k for k, n in writes.items() if n > 1]}"
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{b.metrics_port}/metrics", timeout=10).read().decode()
        reclaimed = [line for line in scraped.splitlines() if line.startswith('covergen_prepare_jobs_total{outcome="reclaimed"}')]
        assert reclaimed and float(reclaimed[0].split()[-1]) >= 1, "B took over A's jobs"
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        client.close()


async def _until_writes_settle(client: redis.Redis, writes: Counter[str], covers: int) -> None:
    """Keyspace events travel on their own connection: wait until the listener saw every stored key."""
    stored = {k for k in client.scan_iter("covergen:v1:*")}
    await eventually(lambda: stored <= set(writes), "keyspace events arriving for every stored cover", WAIT_S)
    assert len(stored) == covers
