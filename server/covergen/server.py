"""The composition root: `build_service` wires settings into running parts, `serve` runs them.

Settings -> `build_painting` (base model -> Denoiser + Engine -> AdapterRegistry; also what a
Ray Serve painter replica runs) -> style library, regions,
prompts -> ResultCache (Redis, embedded unless COVERGEN_REDIS_URL) -> Metrics -> CoverMaker ->
servicers + health + reflection on one grpc.aio server. `Service.stop` drains: health turns
NOT_SERVING, new calls get UNAVAILABLE, in-flight calls get `drain_grace_s` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from covergen import __version__
from covergen.adapters.registry import AdapterRegistry, RegistryObserver
from covergen.admin import StyleAdmin, StyleLoader
from covergen.cache import ResultCache
from covergen.clip_tokens import clip_token_counter
from covergen.covers import CoverMaker
from covergen.engine.batcher import Engine, EngineObserver
from covergen.engine.denoise import CoverJob
from covergen.engine.speedups import apply_speedups
from covergen.engine.step_batcher import StepEngine
from covergen.errors import ConfigError
from covergen.feed.parts import FeedParts, build_feed
from covergen.hot_covers import HotCoverObserver, HotCovers
from covergen.metrics import Metrics
from covergen.models import LoadedBase, load_base_model
from covergen.painters import LocalPainter, Painter
from covergen.planning import load_styles
from covergen.redis_server import EmbeddedRedis
from covergen.requests import Limits
from covergen.rpc import CallEdge, ServingState
from covergen.service import SERVICE_NAMES, AdminServicer, CoverServicer
from covergen.settings import Settings
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class _MetricsObserver(EngineObserver, RegistryObserver, HotCoverObserver):
    """Forwards engine and registry events to Prometheus."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def queue_depth(self, depth: int) -> None:
        self.metrics.set_queue_depth(depth)

    def batch_ran(self, size: int, seconds: float) -> None:
        self.metrics.observe_generation(seconds, batch_size=size)

    def queue_wait(self, seconds: float) -> None:
        self.metrics.observe_queue_wait(seconds)

    def adapter_loaded(self, name: str, seconds: float) -> None:
        self.metrics.observe_adapter_load(seconds)

    def adapter_evicted(self, name: str) -> None:
        self.metrics.count_adapter_eviction()

    def resident_count(self, count: int) -> None:
        self.metrics.set_adapters_resident(count)

    def hot_lookup(self, hit: bool) -> None:
        self.metrics.observe_hot_lookup(hit)

    def hot_evicted(self, count: int) -> None:
        self.metrics.count_hot_evictions(count)

    def hot_size(self, entries: int, nbytes: int) -> None:
        self.metrics.set_hot_size(entries, nbytes)


@dataclass
class Service:
    """Everything `serve` started, so tests and the CLI can stop it in order."""

    settings: Settings
    server: grpc.aio.Server
    port: int
    metrics_port: int
    painting: PaintingParts | None  # None where painters are elsewhere (the Ray Serve ingress)
    maker: CoverMaker
    metrics: Metrics
    health: health.aio.HealthServicer
    state: ServingState
    cache: ResultCache | None
    embedded_redis: EmbeddedRedis | None
    feed: FeedParts | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def _local(self) -> PaintingParts:
        if self.painting is None:
            raise AttributeError("this service paints on remote painters; it has no local model")
        return self.painting

    @property
    def base(self) -> LoadedBase:
        return self._local.base

    @property
    def engine(self) -> Engine:
        return self._local.engine

    @property
    def registry(self) -> AdapterRegistry:
        return self._local.registry

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: NOT_SERVING, refuse new calls, let in-flight ones finish."""
        if self.state.draining:
            await self.stopped.wait()
            return
        grace = self.settings.drain_grace_s if grace is None else grace
        self.state.draining = True
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("draining: up to %.1f s for in-flight requests", grace)
        started = time.monotonic()
        # The port stays open until in-flight calls finish, so health checks read NOT_SERVING
        # and new calls get UNAVAILABLE from the servicer rather than a refused connection.
        await self.state.wait_idle(grace)
        await self.server.stop(max(0.0, grace - (time.monotonic() - started)))
        if self.feed is not None:
            await self.feed.close()
        if self.painting is not None:
            await asyncio.to_thread(self.painting.close)
        if self.cache is not None:
            await self.cache.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()
        self.metrics.stop_http_server()
        self.stopped.set()
        log.info("stopped")


@dataclass(frozen=True)
class ModelFacts:
    """What planning needs to know of the base model, wherever the model itself is loaded."""

    model_id: str  # what the result cache keys on: the base model plus image-changing speedups
    scheduler_name: str
    default_size: int  # pixels
    tokenizer: Any  # the base model's CLIP tokenizer: prompts are fitted to its 77-token window


@dataclass
class PaintingParts:
    """The painting half of a server: the loaded base model, its engine (started, warmed up) and
    adapter registry. `covergen-server` builds one; so does each Ray Serve painter replica."""

    base: LoadedBase
    metrics: Metrics
    engine: Engine
    registry: AdapterRegistry
    model_id: str  # what the result cache keys on: the base model plus image-changing speedups

    def facts(self) -> ModelFacts:
        pipeline = self.base.pipeline
        return ModelFacts(
            self.model_id, type(pipeline.scheduler).__name__, self.base.default_size, pipeline.tokenizer
        )

    def close(self) -> None:
        self.engine.close(5.0)
        self.registry.close()


async def build_painting(settings: Settings) -> PaintingParts:
    """Load the base model, apply the speed settings, start the engine and warm it up."""
    base = await asyncio.to_thread(
        load_base_model,
        settings.base_model,
        cache_dir=settings.resolved_cache_dir(),
        device=settings.device,
        dtype=settings.dtype,
        config_dir=settings.base_model_config,
    )
    log.info("base model %s (%s) on %s/%s", base.source, base.content_id, base.device, base.dtype)
    metrics = Metrics(base_model=base.content_id, device=str(base.device), queue_capacity=settings.max_queue)
    observer = _MetricsObserver(metrics)
    zero_mean = bool(getattr(base, "zero_mean_noise", False))
    tuned = apply_speedups(base.pipeline, settings, zero_mean_noise=zero_mean)
    denoiser = tuned.denoiser
    engine_class = StepEngine if settings.batching == "step" else Engine
    engine = engine_class(
        denoiser,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        max_queue=settings.max_queue,
        observer=observer,
    )
    registry = AdapterRegistry(
        module_names=denoiser.module_names(),
        check=denoiser.check_compatible,
        device=base.device,
        dtype=base.dtype,
        max_resident=settings.max_resident_adapters,
        observer=observer,
        on_evict=lambda name: engine.run_on_worker(lambda: denoiser.forget(name)),
    )
    engine.start()
    # one tiny generation, so the first real request does not pay for lazy set-up
    await engine.submit(CoverJob("warm up", "", 0, 64, 64, 1, settings.resolved_default_guidance()))
    return PaintingParts(base, metrics, engine, registry, tuned.model_id(base.content_id))


async def build_service(settings: Settings) -> Service:
    """Load the model and styles, start Redis and metrics, bind the gRPC port (not yet serving)."""
    started = time.perf_counter()
    painting = await build_painting(settings)
    painter = LocalPainter(painting.engine, painting.registry)
    return await build_front(
        settings, painting.facts(), painting.metrics, painter, painting=painting, started=started
    )


AdminFactory = Callable[[CoverMaker, StyleLoader], Any]


async def build_front(
    settings: Settings,
    facts: ModelFacts,
    metrics: Metrics,
    painter: Painter,
    *,
    painting: PaintingParts | None = None,
    admin: AdminFactory | None = None,
    started: float | None = None,
) -> Service:
    """Everything but the model: styles, cache, a CoverMaker over `painter`, servicers, health,
    reflection, the bound port. `admin` builds AdminService's operations where `painting` is
    None (default: StyleAdmin over the local registry)."""
    started = time.perf_counter() if started is None else started
    count_tokens = clip_token_counter(facts.tokenizer)
    translator = None
    if settings.translator is not None:  # COVERGEN_TRANSLATOR: a local MarianMT folder
        from covergen.titles.translator import MarianTranslator

        translator = MarianTranslator.load(
            settings.translator, settings.device, budget_s=settings.translator_budget_ms / 1000
        )
    library, resolver, prompts = load_styles(settings.styles_dir, count_tokens, translator)

    embedded_redis: EmbeddedRedis | None = None
    cache: ResultCache | None = None
    cache_url: str | None = None  # also the prepare stream's Redis
    if settings.cache_enabled:
        url = settings.redis_url
        if url is None:
            embedded_redis = EmbeddedRedis(
                maxmemory=settings.embedded_redis_maxmemory, data_dir=settings.resolved_cache_dir() / "redis"
            )
            url = await asyncio.to_thread(embedded_redis.start)
            log.info("embedded Redis at %s", url)
        cache_url = url
        cache = ResultCache(
            url,
            metrics,
            ttl_s=settings.cache_ttl_s,
            lock_ttl_s=settings.cache_lock_ttl_s,
            socket_timeout_s=settings.redis_timeout_s,
            connect_timeout_s=settings.redis_timeout_s,
            hot=HotCovers(settings.hot_cache_bytes, _MetricsObserver(metrics)) if settings.hot_cache_bytes else None,
        )
    limits = Limits(
        max_title_bytes=settings.max_title_bytes,
        max_size=settings.max_size,
        default_size=facts.default_size,
        default_steps=settings.resolved_default_steps(),
        default_guidance=settings.resolved_default_guidance(),
    )
    maker = CoverMaker(
        library=library,
        resolver=resolver,
        prompts=prompts,
        registry=painting.registry if painting is not None else None,
        engine=painting.engine if painting is not None else None,
        cache=cache,
        limits=limits,
        base_model_id=facts.model_id,
        scheduler_name=facts.scheduler_name,
        painter=painter,
    )
    feed = build_feed(settings, maker, painting.engine if painting is not None else None, metrics, cache_url)
    await feed.start()

    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", 1024 * 1024),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    state = ServingState()
    calls = CallEdge(metrics, state, settings.log_titles)
    pb_grpc.add_CoverServiceServicer_to_server(CoverServicer(maker, calls, feed), server)
    reload_styles: StyleLoader = lambda: load_styles(settings.styles_dir, count_tokens, translator)  # noqa: E731
    if painting is not None:
        operations: Any = StyleAdmin(maker, painting.registry, reload_styles, after_reload=feed.after_reload)
    elif admin is not None:
        operations = admin(maker, reload_styles)
    else:
        raise ConfigError("a service without a local model needs an admin factory")
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(operations, calls, settings.admin_token), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.grpc_port}"
    port = _bind(server, address, settings)
    metrics_port = metrics.start_http_server(settings.metrics_port, settings.host)
    log.info("ready in %.1f s", time.perf_counter() - started)
    return Service(
        settings=settings,
        server=server,
        port=port,
        metrics_port=metrics_port,
        painting=painting,
        maker=maker,
        metrics=metrics,
        health=health_servicer,
        state=state,
        cache=cache,
        embedded_redis=embedded_redis,
        feed=feed,
    )


def _bind(server: grpc.aio.Server, address: str, settings: Settings) -> int:
    if settings.tls_cert is None and settings.tls_key is None:
        port = server.add_insecure_port(address)
    else:
        if settings.tls_cert is None or settings.tls_key is None:
            raise ConfigError("TLS needs both COVERGEN_TLS_CERT and COVERGEN_TLS_KEY")
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise ConfigError(f"cannot listen on {address}; set COVERGEN_GRPC_PORT to a free port")
    return port


async def start_service(settings: Settings) -> Service:
    """Build the service and start serving; health turns SERVING."""
    service = await build_service(settings)
    await service.server.start()
    for name in ("", *SERVICE_NAMES):
        await service.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "covergen %s serving gRPC on :%d, metrics on :%d", __version__, service.port, service.metrics_port
    )
    return service


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain and exit."""
    service = await start_service(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()


__all__ = ["Service", "build_service", "pb", "serve", "start_service"]
