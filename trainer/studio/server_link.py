"""The studio's calls to a running covergen server: covers, the style list, reloads.

Each call opens a short-lived channel and fails with `ServerUnavailable` saying which address
and setting to check, so a page shows the reason instead of a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from covergen.v1 import cover_pb2, cover_pb2_grpc


class ServerUnavailable(Exception):
    """The covergen server did not answer, or refused the call; the message says what to fix."""


@dataclass(frozen=True)
class ServedStyle:
    name: str
    kind: str
    version: str
    resident: bool


@dataclass(frozen=True)
class CoverImage:
    png: bytes
    adapters: tuple[tuple[str, str, float], ...]  # (style, version, weight) as the server applied them
    prompt: str


class ServerLink:
    """One covergen server at `address` (host:port), with the admin token for reloads."""

    def __init__(self, address: str, admin_token: str | None, *, timeout_s: float = 120.0) -> None:
        self.address = address
        self.admin_token = admin_token
        self.timeout_s = timeout_s

    def _fail(self, what: str, exc: grpc.RpcError) -> ServerUnavailable:
        code = exc.code() if hasattr(exc, "code") else None
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        hint = {
            grpc.StatusCode.UNAVAILABLE: f"is covergen-server running at {self.address}? set COVERGEN_STUDIO_SERVER",
            grpc.StatusCode.UNAUTHENTICATED: "set COVERGEN_STUDIO_ADMIN_TOKEN to the server's COVERGEN_ADMIN_TOKEN",
            grpc.StatusCode.PERMISSION_DENIED: "the server has admin RPCs switched off (no COVERGEN_ADMIN_TOKEN)",
        }.get(code, "")
        return ServerUnavailable(f"{what} at {self.address} failed ({code.name if code else 'error'}: {detail})"
                                 + (f"; {hint}" if hint else ""))

    def styles(self) -> dict[str, ServedStyle]:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = cover_pb2_grpc.CoverServiceStub(channel).ListStyles(
                    cover_pb2.ListStylesRequest(), timeout=10
                )
            except grpc.RpcError as exc:
                raise self._fail("ListStyles", exc) from None
        return {s.name: ServedStyle(s.name, s.kind, s.version, s.resident) for s in reply.styles}

    def cover(
        self,
        region: str,
        title: str,
        *,
        steps: int,
        themes: tuple[str, ...] = (),
        weights: dict[str, float] | None = None,
    ) -> CoverImage:
        request = cover_pb2.GenerateCoverRequest(
            region=region, title=title, steps=steps, themes=list(themes), adapter_weights=weights or {}
        )
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = cover_pb2_grpc.CoverServiceStub(channel).GenerateCover(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                raise self._fail("GenerateCover", exc) from None
        applied = tuple((a.name, a.version, round(a.weight, 3)) for a in reply.adapters)
        return CoverImage(reply.image, applied, reply.prompt)

    def reload(self) -> tuple[list[str], list[str]]:
        metadata = [("authorization", f"Bearer {self.admin_token}")] if self.admin_token else []
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = cover_pb2_grpc.AdminServiceStub(channel).ReloadStyles(
                    cover_pb2.ReloadStylesRequest(), metadata=metadata, timeout=60
                )
            except grpc.RpcError as exc:
                raise self._fail("ReloadStyles", exc) from None
        return list(reply.reloaded), list(reply.rejected)


def resolve_stack(link: ServerLink, region: str) -> list[str]:
    """The style names of a region's stack, as the server resolves it (ResolveRegion)."""
    with grpc.insecure_channel(link.address) as channel:
        try:
            reply = cover_pb2_grpc.CoverServiceStub(channel).ResolveRegion(
                cover_pb2.ResolveRegionRequest(region=region), timeout=10
            )
        except grpc.RpcError as exc:
            raise link._fail("ResolveRegion", exc) from None
    return [entry.style for entry in reply.stack]
