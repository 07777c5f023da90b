"""Bounded waits on a condition, for tests that must pass on any machine of this kind.

A test waits for the state it needs (a flight started, a subscriber listening, a lock gone)
rather than sleeping for a time that happens to be long enough here:

    await eventually(lambda: redis_has_no_lock(), "the lock is released")

The bound is generous (it only ends a test that would otherwise hang) and is never a claim
about speed; the poll interval only sets how soon a met condition is noticed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

GENEROUS_S = 60.0  # far above anything these conditions take on a loaded 2-core machine
_POLL_S = 0.01


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = GENEROUS_S
) -> None:
    """Return once `condition()` (sync or async) is true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout_s:.0f} s and {what} never happened")
        await asyncio.sleep(_POLL_S)


async def wait_for_event(event: asyncio.Event, what: str, timeout_s: float = GENEROUS_S) -> None:
    """Wait for `event`; fail the test (instead of hanging) after `timeout_s`."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"waited {timeout_s:.0f} s and {what} never happened") from None
