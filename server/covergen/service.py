"""Thin gRPC servicers: copy the request into domain types, call one object, build the reply.

Every call runs through `covergen.rpc.CallEdge`, which maps domain errors to status codes (one
table, `covergen.rpc.status`), counts and logs the call and refuses new work while the server
drains. The service names come from the proto descriptors.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import grpc

from covergen.catalogue import list_styles
from covergen.covers import Cover, CoverMaker
from covergen.errors import AdapterRejected, ConfigError, InvalidRequest, PermissionDenied, Unauthenticated
from covergen.feed.budget import FeedRequest
from covergen.feed.parts import FeedParts
from covergen.feed.prepare import PrepareRequest
from covergen.requests import CoverRequest
from covergen.rpc import CallEdge
from covergen.v1 import cover_pb2 as pb
from covergen.v1 import cover_pb2_grpc as pb_grpc

COVER_SERVICE = pb.DESCRIPTOR.services_by_name["CoverService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
SERVICE_NAMES = (COVER_SERVICE, ADMIN_SERVICE)

_FORMATS = {
    pb.IMAGE_FORMAT_UNSPECIFIED: "png",
    pb.IMAGE_FORMAT_PNG: "png",
    pb.IMAGE_FORMAT_JPEG: "jpeg",
    pb.IMAGE_FORMAT_WEBP: "webp",
}


_ARMS: dict[int, str | None] = {pb.ARM_UNSPECIFIED: None, pb.ARM_REGIONAL: "regional", pb.ARM_GENERIC: "generic"}
_ARM_VALUES = {"regional": pb.ARM_REGIONAL, "generic": pb.ARM_GENERIC}


def _arm_of(value: int) -> str | None:
    if value not in _ARMS:
        raise InvalidRequest(
            f"arm {value} is not one of ARM_UNSPECIFIED (0), ARM_REGIONAL (1), ARM_GENERIC (2)"
        )
    return _ARMS[value]


class CoverServicer(pb_grpc.CoverServiceServicer):
    def __init__(self, maker: CoverMaker, calls: CallEdge, feed: FeedParts) -> None:
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
            # registry is None behind Ray Serve: nothing is resident in the ingress
            entries = await list_styles(self.maker.library, self.maker.registry, self.feed.health.reason)
            return pb.ListStylesResponse(
                styles=[
                    pb.Style(
                        name=e.name,
                        display_name=e.display_name,
                        kind=e.kind,
                        default_weight=e.default_weight,
                        version=e.version,
                        aliases=list(e.aliases),
                        resident=e.resident,
                        usable=e.unusable_reason is None,
                        unusable_reason=e.unusable_reason or "",
                    )
                    for e in entries
                ]
            )

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


    async def PrepareCovers(
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

    def __init__(self, admin: Any, calls: CallEdge, token: str | None) -> None:
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
