"""Waiting for a condition with a deadline: one helper for plain code, one for asyncio.

Both call `probe` until it answers something truthy and return that answer. At the deadline the
test fails with a message naming what was awaited and the last answer seen, so a timeout says
how far things got. (The sandbox has its own, `reconciler.sandbox.process.poll_until`, which
raises a SandboxError instead of failing a test.)
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar, cast, overload

import pytest

T = TypeVar("T")

#: How much of the last answer a failure shows.
SHOWN = 2000


def _timed_out(timeout: float, what: str, last: object) -> NoReturn:
    shown = repr(last)
    if len(shown) > SHOWN:
        shown = shown[:SHOWN] + "..."
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} (last seen: {shown})")


def wait_for(
    probe: Callable[[], T | None], timeout: float, what: str, *, interval: float = 0.5
) -> T:
    """`probe()` once it is truthy; fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            _timed_out(timeout, what, last)
        time.sleep(interval)


# ASYNC109 prefers a caller's `asyncio.timeout`, which could say neither what was awaited nor
# what was last seen: the deadline is this helper's job.
@overload
async def async_wait_for(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,  # noqa: ASYNC109
    what: str,
    *,
    interval: float = ...,
) -> T: ...


@overload
async def async_wait_for(
    probe: Callable[[], T | None],
    timeout: float,  # noqa: ASYNC109
    what: str,
    *,
    interval: float = ...,
) -> T: ...


async def async_wait_for(
    probe: Callable[[], object],
    timeout: float,  # noqa: ASYNC109
    what: str,
    *,
    interval: float = 0.01,
) -> object:
    """`wait_for` in a coroutine: `probe` may be a plain function or a coroutine function, and
    the event loop runs between tries."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        last = await cast(Awaitable[object], answer) if inspect.isawaitable(answer) else answer
        if last:
            return last
        if time.monotonic() >= deadline:
            _timed_out(timeout, what, last)
        await asyncio.sleep(interval)
