"""The status recorder: writes off the workers during a burst, latest per PV, failures retried."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from reconciler.controllers.recorder import (
    MIN_BACKLOG,
    WHILE_JOURNALS_WAIT,
    StatusRecorder,
    Write,
)
from reconciler.k8s import TerminalError
from tests.support.polling import async_wait_for


class Running:
    def __init__(self) -> None:
        self.failures: list[tuple[str, Exception]] = []
        self.recorder = StatusRecorder(
            lambda key, err: self.failures.append((key, err)), concurrency=4
        )
        self.stop = asyncio.Event()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    world = Running()
    task = asyncio.create_task(world.recorder.run(world.stop))
    await asyncio.sleep(0)
    try:
        yield world
    finally:
        world.stop.set()
        await task


async def test_only_a_burst_is_handed_over_and_only_while_running() -> None:
    recorder = StatusRecorder(lambda key, err: None)
    assert not recorder.takes(1000)  # not running: workers record inline
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    await asyncio.sleep(0)
    assert recorder.takes(MIN_BACKLOG) and not recorder.takes(MIN_BACKLOG - 1)
    stop.set()
    await task
    assert not recorder.takes(1000)


async def test_the_latest_write_of_a_pv_wins_and_one_pvs_writes_never_overlap(
    running: Running,
) -> None:
    written: list[str] = []
    writing: set[str] = set()
    release = asyncio.Event()

    def write(key: str, what: str) -> Write:
        async def run() -> None:
            assert key not in writing, "two writes of one PV at once"
            writing.add(key)
            await release.wait()
            written.append(what)
            writing.discard(key)

        return run

    running.recorder.submit("pv-1", write("pv-1", "first"))
    await async_wait_for(lambda: writing, 5, "the first write to start")
    running.recorder.submit("pv-1", write("pv-1", "second"))
    running.recorder.submit("pv-1", write("pv-1", "third"))
    running.recorder.submit("pv-2", write("pv-2", "other"))
    release.set()
    await async_wait_for(lambda: len(running.recorder) == 0, 5, "every write")
    assert sorted(written) == ["first", "other", "third"]
    assert running.recorder.recorded == 3


async def test_a_failed_write_goes_back_to_the_controller_with_its_error(
    running: Running,
) -> None:
    away = RuntimeError("the API server is away")
    rejected = TerminalError("422")

    async def fails() -> None:
        raise away

    async def refused() -> None:
        raise rejected

    running.recorder.submit("pv-1", fails)
    running.recorder.submit("pv-2", refused)
    await async_wait_for(lambda: running.recorder.failed == 2, 5, "both writes")
    # The controller decides: retried (pv-1) or left and counted as terminal (pv-2).
    assert sorted(running.failures, key=lambda f: f[0]) == [("pv-1", away), ("pv-2", rejected)]


async def test_while_journals_wait_only_a_few_writers_write() -> None:
    backlog = [MIN_BACKLOG]
    recorder = StatusRecorder(lambda key, err: None, concurrency=8, backlog=lambda: backlog[0])
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    release = asyncio.Event()
    writing: set[str] = set()
    most = 0

    def write(key: str) -> Write:
        async def run() -> None:
            nonlocal most
            writing.add(key)
            most = max(most, len(writing))
            await release.wait()
            writing.discard(key)

        return run

    for i in range(8):
        recorder.submit(f"pv-{i}", write(f"pv-{i}"))
    await async_wait_for(lambda: len(writing) == WHILE_JOURNALS_WAIT, 5, "the first writers")
    await asyncio.sleep(0.3)
    assert most == WHILE_JOURNALS_WAIT  # the others wait for the journals
    backlog[0] = 0
    await async_wait_for(lambda: len(writing) == 8, 5, "every writer, journals done")
    release.set()
    await async_wait_for(lambda: len(recorder) == 0, 5, "every write")
    stop.set()
    await task
