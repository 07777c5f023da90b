"""The covergen exception tree, and its one mapping onto gRPC status codes.

    CovergenError                 base; never raised directly
    ├── InvalidRequest            the caller sent a bad value      -> INVALID_ARGUMENT
    ├── StyleNotFound             unknown style / adapter name     -> NOT_FOUND
    ├── AdapterRejected           an adapter file failed checks    -> FAILED_PRECONDITION
    ├── Overloaded                admission queue full, or OOM     -> RESOURCE_EXHAUSTED
    ├── Draining                  server is shutting down          -> UNAVAILABLE
    ├── DeadlineExceeded          client deadline passed           -> DEADLINE_EXCEEDED
    ├── Cancelled                 client went away                 -> CANCELLED
    ├── Unauthenticated           admin RPC without a valid token  -> UNAUTHENTICATED
    ├── PermissionDenied          admin RPCs are switched off      -> PERMISSION_DENIED
    └── ConfigError               bad settings or style files at start-up (never sent to clients)

Anything else that escapes a handler is a bug and becomes INTERNAL. Every message should say
what was wrong and which value or flag fixes it.
"""

from __future__ import annotations

import grpc


class CovergenError(Exception):
    """Base class of every error covergen raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(CovergenError):
    """A request field is out of range or malformed; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class StyleNotFound(CovergenError):
    """A style or adapter name that the library does not hold."""

    code = grpc.StatusCode.NOT_FOUND


class AdapterRejected(CovergenError):
    """An adapter file is corrupt, truncated, not safetensors, or does not fit the base model."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(CovergenError):
    """The admission queue is full, or the device ran out of memory for this request."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Draining(CovergenError):
    """The server is shutting down and takes no new work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(CovergenError):
    """The client's deadline passed before the cover was finished."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(CovergenError):
    """The client cancelled the call."""

    code = grpc.StatusCode.CANCELLED


class Unauthenticated(CovergenError):
    """An admin RPC arrived without the configured bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CovergenError):
    """Admin RPCs are disabled because no admin token is configured."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ConfigError(CovergenError):
    """Settings, style cards or the regions table are invalid; raised at start-up."""


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code for an exception: ours map by class, anything else is INTERNAL."""
    if isinstance(exc, CovergenError):
        return exc.code
    return grpc.StatusCode.INTERNAL
