"""Controller worker loop: results, errors, terminal errors, concurrency and graceful shutdown.
The reconcilers here are plain coroutines; the queue and metrics are the real ones."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from reconciler.k8s.controller import Controller, ControllerSettings, Reconcile, Result
from reconciler.k8s.errors import TerminalError
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.ratelimit import ItemExponentialBackoff
from tests.support.polling import async_wait_for


class Harness:
    def __init__(self, controller: Controller, metrics: RuntimeMetrics) -> None:
        self.controller = controller
        self.metrics = metrics
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.controller.run(self.stop))

    async def shut_down(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"controller": "c", **labels})


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(reconcile: Reconcile, workers: int = 1, shutdown_timeout: float = 5.0) -> Harness:
        metrics = RuntimeMetrics(CollectorRegistry())
        controller = Controller(
            "c",
            reconcile,
            settings=ControllerSettings(workers=workers, shutdown_timeout=shutdown_timeout),
            metrics=metrics,
            # Fast retries so the tests do not wait on 5 ms .. doubling delays for long.
            rate_limiter=ItemExponentialBackoff(base=0.001, cap=0.01),
        )
        harness = Harness(controller, metrics)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        await harness.shut_down()


async def test_metric_series_exist_at_zero_before_any_reconcile(
    make: Callable[..., Harness],
) -> None:
    async def reconcile(key: str) -> None:
        return None

    h = make(reconcile, workers=3)
    for result in ("success", "error", "requeue", "requeue_after"):
        assert h.value("controller_runtime_reconcile_total", result=result) == 0
    assert h.value("controller_runtime_reconcile_errors_total") == 0
    assert h.value("controller_runtime_terminal_reconcile_errors_total") == 0
    assert h.value("controller_runtime_active_workers") == 0
    assert h.value("controller_runtime_max_concurrent_reconciles") == 3
    assert h.value("controller_runtime_reconcile_time_seconds_count") == 0


async def test_errors_retry_with_backoff_until_success(make: Callable[..., Harness]) -> None:
    calls: Counter[str] = Counter()

    async def reconcile(key: str) -> Result:
        calls[key] += 1
        if calls[key] < 4:
            raise RuntimeError("not yet")
        return Result()

    h = make(reconcile)
    h.start()
    h.controller.queue.add("a")
    await async_wait_for(
        lambda: h.value("controller_runtime_reconcile_total", result="success") == 1,
        5,
        "one successful reconcile",
    )
    assert calls["a"] == 4
    assert h.value("controller_runtime_reconcile_errors_total") == 3
    assert h.value("controller_runtime_reconcile_total", result="error") == 3
    # Success forgot the backoff.
    assert h.controller.queue.num_requeues("a") == 0


async def test_terminal_error_is_counted_and_not_retried(make: Callable[..., Harness]) -> None:
    calls: Counter[str] = Counter()

    async def reconcile(key: str) -> None:
        calls[key] += 1
        raise TerminalError("spec.pool is empty")

    h = make(reconcile)
    h.start()
    h.controller.queue.add("bad")
    await async_wait_for(
        lambda: h.value("controller_runtime_terminal_reconcile_errors_total") == 1,
        5,
        "one terminal error counted",
    )
    # Give a retry every chance to happen (backoff here is at most 10 ms): none does.
    h.controller.queue.add("other")
    await async_wait_for(lambda: calls["other"] == 1, 5, "the other key reconciled once")
    await async_wait_for(
        lambda: h.controller.queue.next_ready_in() is None and len(h.controller.queue) == 0,
        5,
        "an empty queue with nothing parked",
    )
    assert calls["bad"] == 1
    assert h.value("controller_runtime_reconcile_errors_total") == 2
    assert h.controller.queue.num_requeues("bad") == 0


async def test_a_failure_of_handed_off_work_counts_and_retries_as_the_reconciles_own(
    make: Callable[..., Harness],
) -> None:
    """A deferred write that fails after its reconcile succeeded (controllers.recorder) is
    the reconcile's failure: counted, and retried unless it is terminal."""
    calls: Counter[str] = Counter()

    async def reconcile(key: str) -> None:
        calls[key] += 1

    h = make(reconcile)
    h.start()
    h.controller.fail("rejected", TerminalError("422"))
    h.controller.fail("away", RuntimeError("the API server is away"))
    await async_wait_for(lambda: calls["away"] == 1, 5, "the failed key reconciled again")
    assert h.value("controller_runtime_reconcile_errors_total") == 2
    assert h.value("controller_runtime_terminal_reconcile_errors_total") == 1
    assert calls["rejected"] == 0 and h.controller.queue.num_requeues("rejected") == 0


async def test_requeue_after_brings_the_key_back_later(make: Callable[..., Harness]) -> None:
    seen: list[float] = []

    async def reconcile(key: str) -> Result:
        seen.append(time.monotonic())
        return Result(requeue_after=0.2) if len(seen) == 1 else Result()

    h = make(reconcile)
    h.start()
    h.controller.queue.add("a")
    await async_wait_for(lambda: len(seen) == 2, 5, "two reconciles")
    assert seen[1] - seen[0] >= 0.2
    assert h.value("controller_runtime_reconcile_total", result="requeue_after") == 1
    assert h.value("controller_runtime_reconcile_total", result="success") == 1


async def test_workers_run_concurrently_but_never_on_one_key(
    make: Callable[..., Harness],
) -> None:
    running: set[str] = set()
    peak = 0
    overlap: list[str] = []
    done: Counter[str] = Counter()
    release = asyncio.Event()

    async def reconcile(key: str) -> None:
        nonlocal peak
        if key in running:
            overlap.append(key)
        running.add(key)
        peak = max(peak, len(running))
        await release.wait()
        running.discard(key)
        done[key] += 1

    h = make(reconcile, workers=4)
    h.start()
    for key in ("a", "b", "c", "d", "e"):
        h.controller.queue.add(key)
    await async_wait_for(lambda: len(running) == 4, 5, "four reconciles running at once")
    assert h.value("controller_runtime_active_workers") == 4
    h.controller.queue.add("a")  # while "a" is in flight
    release.set()
    await async_wait_for(lambda: sum(done.values()) == 6, 5, "six reconciles done")
    assert peak == 4
    assert overlap == []
    assert done["a"] == 2


async def test_shutdown_lets_in_flight_work_finish_within_the_bound(
    make: Callable[..., Harness],
) -> None:
    finished: list[str] = []
    started = asyncio.Event()

    async def reconcile(key: str) -> None:
        started.set()
        await asyncio.sleep(0.1)
        finished.append(key)

    h = make(reconcile, workers=1)
    h.start()
    h.controller.queue.add("a")
    await asyncio.wait_for(started.wait(), 5)
    h.controller.queue.add("never")  # waiting, not in flight: dropped on shutdown
    await h.shut_down()
    assert finished == ["a"]


async def test_shutdown_abandons_work_that_outlives_the_bound(
    make: Callable[..., Harness],
) -> None:
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def reconcile(key: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a reconcile stuck forever
        except asyncio.CancelledError:
            cancelled.set()
            raise

    h = make(reconcile, shutdown_timeout=0.2)
    h.start()
    h.controller.queue.add("stuck")
    await asyncio.wait_for(started.wait(), 5)
    began = time.monotonic()
    await h.shut_down()
    assert cancelled.is_set()
    assert 0.2 <= time.monotonic() - began < 5
    assert h.value("controller_runtime_active_workers") == 0
