"""A real Redis server for tests, on a free loopback port, that can go down and come back.

    with running_redis() as server:
        cache = ResultCache(server.url, metrics)
        server.stop()       # outage
        server.start()      # back on the same port, empty

Use it from a fixture:

    @pytest.fixture
    def redis_server() -> Iterator[EmbeddedRedis]:
        with running_redis() as server:
            yield server
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from covergen.redis_server import EmbeddedRedis


@contextmanager
def running_redis(maxmemory: str = "64mb") -> Iterator[EmbeddedRedis]:
    """Start a redis-server on a free 127.0.0.1 port; stop it (if still running) on exit."""
    server = EmbeddedRedis(maxmemory=maxmemory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
