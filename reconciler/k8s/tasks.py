"""asyncio task helpers shared by the controller, the elector and the manager."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel `tasks` and wait until they have finished, so none outlives its owner."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def wait_set(event: asyncio.Event) -> None:
    """`event.wait()` as a coroutine returning None, to race it against other tasks."""
    await event.wait()
