"""Shared pytest set-up: warnings are errors (pyproject) and no test may leak asyncio tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running: they would outlive it silently."""
    before = asyncio.all_tasks()
    yield
    leaked = [
        t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()
    ]
    if leaked:
        for task in leaked:
            task.cancel()
        pytest.fail(f"test left {len(leaked)} asyncio task(s) running: {leaked}")
