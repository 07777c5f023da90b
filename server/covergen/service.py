"""Thin gRPC servicers: copy the request into domain types, call one object, build the reply.

Errors are mapped to status codes in one place (`covergen.errors.status_for`) by `_rpc`, which
also counts the call, logs it and refuses new work while the server drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from covergen.adapters.files import file_version
from covergen.covers import Cover, CoverMaker
from covergen.errors import (
    AdapterRejected,
    Cancelled,
    ConfigError,
    CovergenError,
    DeadlineExceeded,
    Draining,
    InvalidRequest,
    PermissionDenied,
    Unauthenticated,
    status_for,
)
from covergen.feed.budget import FeedRequest
from covergen.feed.parts import FeedParts
from covergen.feed.prepare import PrepareRequest
from covergen.metrics import Metrics
from covergen.requests import CoverRequest
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

log = logging.getLogger("covergen.requests")
T = TypeVar("T")

_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: "png",
    pb.IMAGE_FORMAT_PNG: "png",
    pb.IMAGE_FORMAT_JPEG: "jpeg",
    pb.IMAGE_FORMAT_WEBP: "webp",
}


@dataclass
class ServingState:
    """Shared by servicers and the composition root: set `draining` to refuse new work, then
    `wait_idle` until the calls already admitted have finished."""

    draining: bool = False
    inflight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self._idle.set()

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count one call as in flight for the duration of the block."""
        self.inflight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for no admitted call to be in flight; True when idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class _Calls:
    """Error mapping, metrics and logs shared by both servicers."""

    def __init__(self, metrics: Metrics, state: ServingState, log_titles: bool) -> None:
        self.metrics = metrics
        self.state = state
        self.log_titles = log_titles

    async def run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[], Awaitable[T]],
        fields: dict[str, Any],
        style_of: Callable[[T], str] = lambda _r: "",
    ) -> T:
        started = time.perf_counter()
        style = ""

        def record(code: grpc.StatusCode) -> None:
            # recorded before the status goes out, so a client that reads /metrics right after
            # its call returns sees the call counted
            seconds = time.perf_counter() - started
            self.metrics.observe_request(rpc, code.name, style, seconds)
            logged = fields if self.log_titles else {k: v for k, v in fields.items() if k != "title"}
            log.info(
                "%s %s",
                rpc,
                code.name,
                extra={
                    "rpc": rpc,
                    "code": code.name,
                    "style": style,
                    "ms": round(seconds * 1000, 2),
                    **logged,
                },
            )

        with self.metrics.track_inflight():
            try:
                if self.state.draining:
                    raise Draining("the server is draining for shutdown; retry on another replica")
                with self.state.admitted():
                    result = await body()
            except asyncio.CancelledError:
                self.metrics.count_cancelled("cancelled")
                record(grpc.StatusCode.CANCELLED)
                raise
            except CovergenError as exc:
                code = status_for(exc)
                if isinstance(exc, DeadlineExceeded):
                    self.metrics.count_cancelled("deadline")
                elif isinstance(exc, Cancelled):
                    self.metrics.count_cancelled("cancelled")
                record(code)
                await context.abort(code, str(exc))
                raise  # abort raises; this keeps type checkers satisfied
            except Exception:
                log.exception("%s failed with an unexpected error", rpc)
                record(grpc.StatusCode.INTERNAL)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error in {rpc}; the server logs have the traceback"
                )
                raise
            style = style_of(result)
            record(grpc.StatusCode.OK)
            return result


_ARMS: dict[int, str | None] = {pb.ARM_UNSPECIFIED: None, pb.ARM_REGIONAL: "regional", pb.ARM_GENERIC: "generic"}
_ARM_VALUES = {"regional": pb.ARM_REGIONAL, "generic": pb.ARM_GENERIC}


def _arm_of(value: int) -> str | None:
    if value not in _ARMS:
        raise InvalidRequest(
            f"arm {value} is not one of ARM_UNSPECIFIED (0), ARM_REGIONAL (1), ARM_GENERIC (2)"
        )
    return _ARMS[value]


class CoverServicer(pb_grpc.CoverServiceServicer):
    def __init__(self, maker: CoverMaker, calls: _Calls, feed: FeedParts) -> None:
        self.maker = maker
        self.calls = calls
        self.feed = feed

    async def GenerateCover(
        self, request: pb.GenerateCoverRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateCoverResponse:
        cover_request = CoverRequest(
            region=request.region,
            title=request.title,
            seed=request.seed if request.HasField("seed") else None,
            variant=request.variant,
            width=request.width,
            height=request.height,
            steps=request.steps,
            guidance_scale=request.guidance_scale if request.HasField("guidance_scale") else None,
            format=_FORMATS.get(request.format, f"unknown({request.format})"),
            themes=tuple(request.themes),
            adapter_weights=dict(request.adapter_weights),
        )
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        fields: dict[str, Any] = {"region": request.region[:64], "title": request.title[:128]}

        async def body() -> pb.GenerateCoverResponse:
            feed_request = FeedRequest(
                cover_request, budget_ms=request.budget_ms, arm=_arm_of(request.arm), unit_id=request.unit_id
            )
            cover = await self.feed.covers.make(feed_request, deadline)
            if cover.tone:
                self.calls.metrics.count_tone(cover.tone)
            fields.update(
                request_id=cover.request_id,
                cache=cover.cache_outcome.value if cover.cache_outcome else "off",
                timings=cover.timings_ms,
                arm=cover.arm,
            )
            if cover.fallback:
                fields["fallback"] = cover.fallback_reason
            return _cover_response(cover)

        return await self.calls.run("GenerateCover", context, body, fields, _style_of_response)

    async def ListStyles(
        self, request: pb.ListStylesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStylesResponse:
        async def body() -> pb.ListStylesResponse:
            maker = self.maker
            registry = maker.registry  # None behind Ray Serve: nothing is resident in the ingress
            names = registry.resident_names() if registry is not None else []
            resident = {w: registry.get_resident(w) for w in names} if registry is not None else {}
            styles = []
            for card in sorted(maker.library, key=lambda c: c.name):
                weights = resident.get(card.name)
                path = maker.library.adapter_path(card)
                version = weights.version if weights else (file_version(path) if path else "")
                styles.append(
                    pb.Style(
                        name=card.name,
                        display_name=card.display_name,
                        kind=card.kind,
                        default_weight=card.default_weight,
                        version=version,
                        aliases=list(card.aliases),
                        resident=weights is not None,
                        usable=(reason := self.feed.health.reason(card.name)) is None,
                        unusable_reason=reason or "",
                    )
                )
            return pb.ListStylesResponse(styles=styles)

        return await self.calls.run("ListStyles", context, body, {})

    async def ResolveRegion(
        self, request: pb.ResolveRegionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResolveRegionResponse:
        async def body() -> pb.ResolveRegionResponse:
            resolution = self.maker.resolver.resolve(request.region)
            return pb.ResolveRegionResponse(
                region_path=list(resolution.path) or ["default"],
                level=resolution.level,
                stack=[pb.StackEntry(style=i.style, weight=i.weight) for i in resolution.stack],
                fallback=resolution.fallback,
            )

        return await self.calls.run("ResolveRegion", context, body, {"region": request.region[:64]})


    async def PrepareCovers(  # noqa: N802
        self, request: pb.PrepareCoversRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrepareCoversResponse:
        prepare = PrepareRequest(
            titles=tuple(t for t in (request.title, *request.titles) if t),
            regions=tuple(request.regions),
            variants=request.variants,
            width=request.width,
            height=request.height,
            steps=request.steps,
            format=_FORMATS.get(request.format, f"unknown({request.format})"),
            count_only=request.count_only,
        )

        async def body() -> pb.PrepareCoversResponse:
            report = await self.feed.preparer.prepare(prepare)
            return pb.PrepareCoversResponse(
                regions=report.regions, covers=report.covers, cached=report.cached, queued=report.queued,
                in_progress=report.in_progress, failed=report.failed,
            )  # fmt: skip

        fields = {"title": request.title[:128], "titles": len(request.titles), "regions": len(request.regions)}
        return await self.calls.run("PrepareCovers", context, body, fields)


def _style_of_response(response: pb.GenerateCoverResponse) -> str:
    return response.adapters[0].name if response.adapters else "default"


def _cover_response(cover: Cover) -> pb.GenerateCoverResponse:
    t = cover.timings_ms
    return pb.GenerateCoverResponse(
        image=cover.image,
        mime_type=cover.mime_type,
        width=cover.width,
        height=cover.height,
        region_path=list(cover.region_path),
        region_fallback=cover.region_fallback,
        adapters=[pb.AppliedAdapter(name=a.name, version=a.version, weight=a.weight) for a in cover.adapters],
        prompt=cover.prompt,
        negative_prompt=cover.negative_prompt,
        seed=cover.seed,
        steps=cover.steps,
        guidance_scale=cover.guidance_scale,
        cache_hit=cover.cache_hit,
        timings=pb.Timings(
            queue_ms=t.get("queue_ms", 0.0),
            generate_ms=t.get("generate_ms", 0.0),
            encode_ms=t.get("encode_ms", 0.0),
            total_ms=t.get("total_ms", 0.0),
        ),
        base_model=cover.base_model,
        request_id=cover.request_id,
        fallback=cover.fallback,
        fallback_reason=cover.fallback_reason,
        arm=_ARM_VALUES[cover.arm],
        served_by=cover.served_by,
        tone=cover.tone,
    )


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Style administration; every call checks the bearer token first."""

    def __init__(self, admin: Any, calls: _Calls, token: str | None) -> None:
        self.admin = admin  # covergen.admin.StyleAdmin
        self.calls = calls
        self.token = token

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self.token:
            raise PermissionDenied(
                "admin RPCs are disabled; set COVERGEN_ADMIN_TOKEN on the server to enable them"
            )
        metadata = dict(context.invocation_metadata() or ())
        header = metadata.get("authorization", "")
        presented = header[7:] if isinstance(header, str) and header.startswith("Bearer ") else ""
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
            raise Unauthenticated("admin RPCs need 'authorization: Bearer <COVERGEN_ADMIN_TOKEN>' metadata")

    async def ReloadStyles(
        self, request: pb.ReloadStylesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReloadStylesResponse:
        async def body() -> pb.ReloadStylesResponse:
            self._authorize(context)
            try:
                report = await self.admin.reload()
            except ConfigError as exc:  # a broken styles/ is the caller's to fix, not a server bug
                raise AdapterRejected(f"reload refused, the previous styles keep serving: {exc}") from exc
            return pb.ReloadStylesResponse(
                reloaded=report.reloaded, rejected=report.rejected, style_count=report.style_count
            )

        return await self.calls.run("ReloadStyles", context, body, {})

    async def LoadAdapter(
        self, request: pb.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadAdapterResponse:
        async def body() -> pb.LoadAdapterResponse:
            self._authorize(context)
            version, load_ms = await self.admin.load(request.style)
            return pb.LoadAdapterResponse(version=version, load_ms=load_ms)

        return await self.calls.run("LoadAdapter", context, body, {"style": request.style[:64]})

    async def UnloadAdapter(
        self, request: pb.UnloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadAdapterResponse:
        async def body() -> pb.UnloadAdapterResponse:
            self._authorize(context)
            return pb.UnloadAdapterResponse(unloaded=self.admin.unload(request.style))

        return await self.calls.run("UnloadAdapter", context, body, {"style": request.style[:64]})
