"""The ingress tier: covergen's own gRPC server (same servicers, health, reflection, status codes)
whose painter is the Ray Serve painter deployment.

It validates, resolves regions, builds prompts and seeds, and looks covers up in the shared
Redis exactly as the single-process server does (`server.build_front`, `covers.CoverMaker`);
only misses travel to a painter replica. It loads no model: the painter tier tells it the base
model id, scheduler, default size and tokenizer (`PainterReplica.describe`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from grpc_health.v1 import health_pb2

from covergen.adapters.files import file_version
from covergen.admin import ReloadReport, StyleLoader
from covergen.covers import CoverMaker
from covergen.errors import StyleNotFound
from covergen.metrics import Metrics
from covergen.rayserve.client import ServePainter
from covergen.rayserve.painter import PainterInfo
from covergen.server import SERVICE_NAMES, ModelFacts, Service, build_front
from covergen.settings import Settings

log = logging.getLogger(__name__)


class RemoteStyleAdmin:
    """AdminService behind Ray Serve: styles reload here; adapters live on the painters.

    A reload swaps the ingress's library, regions and glossary; a changed adapter file has a new
    version, hence a new stack id, so painters load it on its first request (no restart). Load
    and unload act on one process's memory and have no meaning here: load reports the version
    painters will load, unload reports that nothing was resident in the ingress.
    """

    def __init__(self, maker: CoverMaker, load_styles: StyleLoader) -> None:
        self.maker = maker
        self.load_styles = load_styles

    async def reload(self) -> ReloadReport:
        old = self.maker.library
        library, resolver, prompts = self.load_styles()
        report = ReloadReport(style_count=len(library))
        for card in library:
            path, before = library.adapter_path(card), None
            if card.name in {c.name for c in old}:
                old_path = old.adapter_path(old.get(card.name))
                before = file_version(old_path) if old_path is not None else ""
            if path is not None and before is not None and file_version(path) != before:
                report.reloaded.append(card.name)
        self.maker.replace_styles(library, resolver, prompts)
        return report

    async def load(self, style: str) -> tuple[str, float]:
        card = self.maker.library.get(style)
        path = self.maker.library.adapter_path(card)
        if path is None:
            raise StyleNotFound(f"style '{style}' has no adapter file to load")
        return file_version(path), 0.0

    def unload(self, style: str) -> bool:
        self.maker.library.get(style)  # NOT_FOUND for unknown styles
        return False


async def build_ingress(settings: Settings, painter_handle: Any) -> tuple[Service, ServePainter]:
    """The ingress service over `painter_handle` (bound, not yet serving)."""
    started = time.perf_counter()
    info: PainterInfo = await painter_handle.describe.remote()
    facts = ModelFacts(info.model_id, info.scheduler_name, info.default_size, info.tokenizer)
    metrics = Metrics(base_model=info.model_id, device="ray-serve", queue_capacity=settings.max_queue)
    painter = ServePainter(painter_handle)
    service = await build_front(settings, facts, metrics, painter, admin=RemoteStyleAdmin, started=started)
    return service, painter


class IngressReplica:
    """The Serve deployment class of the ingress tier (see `app.ingress_deployment`).

    It serves gRPC itself on `settings.grpc_port`; Serve only places, health-checks and stops it.
    """

    async def __init__(self, painter_handle: Any, overrides: dict[str, Any] | None = None) -> None:  # type: ignore[misc]
        settings = Settings(**(overrides or {}))
        self.service, self.painter = await build_ingress(settings, painter_handle)
        await self.service.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.service.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("covergen ingress serving gRPC on :%d", self.service.port)

    async def port(self) -> int:
        return self.service.port

    async def counters(self) -> dict[str, int]:
        """Paint calls this ingress sent to painter replicas (cache hits send none), and retries."""
        return {"sent": self.painter.sent, "retried": self.painter.retried}

    async def drain(self) -> None:
        """NOT_SERVING, refuse new calls, let in-flight ones finish (COVERGEN_DRAIN_GRACE_S)."""
        await self.service.stop()

    async def check_health(self) -> None:
        if self.service.state.draining:
            raise RuntimeError("the ingress is draining")

    async def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            await service.stop()
