"""CallEdge: what happens around every RPC, whatever the servicer and whatever the ingress.

For one call it refuses new work while the server drains, counts the call as in flight (for
`ServingState.wait_idle` and the in-flight gauge), maps a domain error to its status code through
the one table (`covergen.rpc.status`), counts the call by rpc, code and style, and writes one log
line. `CallEdge.call` does all of that and raises `Refusal` (status code + message) on failure, so
any ingress can send it its own way; `CallEdge.run` is the grpc.aio form, which aborts the call's
context with the refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from covergen.errors import Cancelled, CovergenError, DeadlineExceeded, Draining
from covergen.metrics import Metrics
from covergen.rpc.status import status_for

log = logging.getLogger("covergen.requests")
T = TypeVar("T")


@dataclass
class ServingState:
    """Shared by the call edge and the composition root: set `draining` to refuse new work, then
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


class Refusal(Exception):
    """A call that ended in a non-OK status: the code and the message to send the caller."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class CallEdge:
    """Drain refusal, status mapping, request metrics and request logs for every RPC."""

    def __init__(self, metrics: Metrics, state: ServingState, log_titles: bool) -> None:
        self.metrics = metrics
        self.state = state
        self.log_titles = log_titles

    async def run(
        self,
        rpc: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[], Awaitable[T]],
        fields: Mapping[str, Any],
        style_of: Callable[[T], str] = lambda _r: "",
    ) -> T:
        """`call`, for a grpc.aio servicer: a refusal aborts `context` with its code and message."""
        try:
            return await self.call(rpc, body, fields, style_of)
        except Refusal as refusal:
            await context.abort(refusal.code, refusal.details)
            raise  # abort raises; this keeps type checkers satisfied

    async def call(
        self,
        rpc: str,
        body: Callable[[], Awaitable[T]],
        fields: Mapping[str, Any],
        style_of: Callable[[T], str] = lambda _r: "",
    ) -> T:
        """Run `body` as the call `rpc`; its result, or `Refusal` with the status to send.

        `fields` go into the log line; the body may add to it while it runs (a request id, the
        cache outcome). `style_of(result)` labels the request metric of a successful call.
        """
        started = time.perf_counter()
        with self.metrics.track_inflight():
            try:
                if self.state.draining:
                    raise Draining("the server is draining for shutdown; retry on another replica")
                with self.state.admitted():
                    result = await body()
            except asyncio.CancelledError:
                self.metrics.count_cancelled("cancelled")
                self._record(rpc, grpc.StatusCode.CANCELLED, "", started, fields)
                raise
            except CovergenError as exc:
                code = status_for(exc)
                if isinstance(exc, DeadlineExceeded):
                    self.metrics.count_cancelled("deadline")
                elif isinstance(exc, Cancelled):
                    self.metrics.count_cancelled("cancelled")
                self._record(rpc, code, "", started, fields)
                raise Refusal(code, str(exc)) from exc
            except Exception as exc:
                log.exception("%s failed with an unexpected error", rpc)
                self._record(rpc, grpc.StatusCode.INTERNAL, "", started, fields)
                raise Refusal(
                    grpc.StatusCode.INTERNAL, f"internal error in {rpc}; the server logs have the traceback"
                ) from exc
            self._record(rpc, grpc.StatusCode.OK, style_of(result), started, fields)
            return result

    def _record(
        self, rpc: str, code: grpc.StatusCode, style: str, started: float, fields: Mapping[str, Any]
    ) -> None:
        # recorded before the status goes out, so a client that reads /metrics right after its
        # call returns sees the call counted
        seconds = time.perf_counter() - started
        self.metrics.observe_request(rpc, code.name, style, seconds)
        logged = fields if self.log_titles else {k: v for k, v in fields.items() if k != "title"}
        log.info(
            "%s %s",
            rpc,
            code.name,
            extra={"rpc": rpc, "code": code.name, "style": style, "ms": round(seconds * 1000, 2), **logged},
        )
