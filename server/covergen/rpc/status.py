"""The one table from domain errors (`covergen.errors`) to gRPC status codes.

A subclass of an error in the table maps like its nearest listed ancestor; anything that is not
a `CovergenError` is a bug and maps to INTERNAL.
"""

from __future__ import annotations

import grpc

from covergen import errors

STATUS_BY_ERROR: dict[type[errors.CovergenError], grpc.StatusCode] = {
    errors.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    errors.StyleNotFound: grpc.StatusCode.NOT_FOUND,
    errors.AdapterRejected: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.BackendUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    # start-up errors never reach a client; one that escapes a handler is a bug
    errors.ConfigError: grpc.StatusCode.INTERNAL,
    errors.CovergenError: grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception: the table entry of its nearest listed class, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
