"""The covergen exception tree. Domain errors know nothing of any transport.

    CovergenError                 base; never raised directly
    ├── InvalidRequest            the caller sent a bad value      -> INVALID_ARGUMENT
    ├── StyleNotFound             unknown style / adapter name     -> NOT_FOUND
    ├── AdapterRejected           an adapter file failed checks    -> FAILED_PRECONDITION
    ├── Overloaded                admission queue full, or OOM     -> RESOURCE_EXHAUSTED
    ├── Draining                  server is shutting down          -> UNAVAILABLE
    ├── BackendUnavailable        a store the call needs is down   -> UNAVAILABLE
    ├── DeadlineExceeded          client deadline passed           -> DEADLINE_EXCEEDED
    ├── Cancelled                 client went away                 -> CANCELLED
    ├── Unauthenticated           admin RPC without a valid token  -> UNAUTHENTICATED
    ├── PermissionDenied          admin RPCs are switched off      -> PERMISSION_DENIED
    └── ConfigError               bad settings or style files at start-up (never sent to clients)

The status codes on the right are what the RPC edge sends; the one table that maps them is
`covergen.rpc.status.STATUS_BY_ERROR`. Anything else that escapes a handler is a bug and becomes
INTERNAL. Every message should say what was wrong and which value or flag fixes it.
"""

from __future__ import annotations


class CovergenError(Exception):
    """Base class of every error covergen raises on purpose."""


class InvalidRequest(CovergenError):
    """A request field is out of range or malformed; the message names the field."""


class StyleNotFound(CovergenError):
    """A style or adapter name that the library does not hold."""


class AdapterRejected(CovergenError):
    """An adapter file is corrupt, truncated, not safetensors, or does not fit the base model."""


class Overloaded(CovergenError):
    """The admission queue is full, or the device ran out of memory for this request."""


class Draining(CovergenError):
    """The server is shutting down and takes no new work."""


class BackendUnavailable(CovergenError):
    """A store the call cannot do without (the prepare queue's Redis) is unreachable; retry later."""


class DeadlineExceeded(CovergenError):
    """The client's deadline passed before the cover was finished."""


class Cancelled(CovergenError):
    """The client cancelled the call."""


class Unauthenticated(CovergenError):
    """An admin RPC arrived without the configured bearer token."""


class PermissionDenied(CovergenError):
    """Admin RPCs are disabled because no admin token is configured."""


class ConfigError(CovergenError):
    """Settings, style cards or the regions table are invalid; raised at start-up."""
