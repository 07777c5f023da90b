"""Shared fixtures: the embedded tiny model, a styles folder with demo adapters, a real Redis
server and a real grpc.aio server on a free loopback port. Nothing here talks to a model hub."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray reads its auth mode once, when its core is first imported, and a driver attaching to a cluster
# by address never turns token auth on by itself. `covergen-ray` starts its cluster with Ray's default
# token auth, so every Ray import in this session (test_deploy_ray imports it before
# test_ray_serve attaches) must already be in token mode: set here, before any test module loads.
os.environ.setdefault("RAY_AUTH_MODE", "token")
sys.path.insert(0, str(Path(__file__).parent))  # tests/redis_fixture.py and friends

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Two cores shared by the test process, its server threads and Redis: one intra-op thread
    # avoids OpenMP oversubscription (measured ~1 s vs ~0.13 s per tiny UNet step under load).
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The repo's model cache, so the embedded model is built once per machine, not per run."""
    path = Path(os.environ.get("COVERGEN_CACHE_DIR", REPO / ".cache" / "covergen"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def embedded_base(model_cache_dir: Path):
    from covergen.models import load_base_model

    return load_base_model("embedded", cache_dir=model_cache_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def styles_dir(tmp_path_factory: pytest.TempPathFactory, embedded_base) -> Path:
    """A private copy of styles/ with demo adapters for every style that lacks one."""
    from trainer.embedded.demo_adapters import ensure_demo_adapters

    target = tmp_path_factory.mktemp("styles") / "styles"
    shutil.copytree(REPO / "styles", target)
    ensure_demo_adapters(target, embedded_base.pipeline.unet)
    return target


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    from redis_fixture import running_redis

    with running_redis() as server:
        yield server


@pytest.fixture(scope="session")
def make_settings(model_cache_dir: Path) -> Callable[..., object]:
    """Build the `Settings` of a test server; keyword arguments override the defaults.

    Defaults: loopback host, free gRPC and metrics ports, the repo's model cache, CPU fp32, and
    no cache unless a `redis_url` is passed (so no test starts an embedded Redis by accident).
    """
    from covergen.settings import Settings

    def make(**overrides: Any) -> Settings:
        fields: dict[str, Any] = {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "metrics_port": 0,
            "cache_dir": model_cache_dir,
            "device": "cpu",
            "dtype": "fp32",
        }
        if "redis_url" not in overrides:
            fields["cache_enabled"] = False
        return Settings(**{**fields, **overrides})

    return make


@pytest.fixture(scope="session")
async def service(styles_dir: Path, redis_server, make_settings) -> AsyncIterator[object]:
    """A real covergen server on a free loopback port, cache on the session's Redis."""
    from covergen.server import start_service

    settings = make_settings(
        base_model="embedded",  # the random tiny model: fast, and what the equivalence tests use
        styles_dir=styles_dir,
        redis_url=redis_server.url,
        default_steps=4,
        max_size=256,
        max_batch=4,
        max_wait_ms=2.0,
        drain_grace_s=5.0,
        admin_token="test-admin-token",
    )
    svc = await start_service(settings)
    yield svc
    await svc.stop(1.0)


@pytest.fixture(scope="session")
async def channel(service) -> AsyncIterator[object]:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    from covergen.v1 import cover_pb2_grpc

    return cover_pb2_grpc.CoverServiceStub(channel)
