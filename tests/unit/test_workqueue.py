"""Work queue semantics (client-go's): de-dup, exclusive processing, re-queue on done, delays,
rate-limited retries, shutdown and metrics. Time is a ManualClock: nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from reconciler.k8s.clock import ManualClock
from reconciler.k8s.errors import QueueShutDown
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.ratelimit import ItemExponentialBackoff
from reconciler.k8s.workqueue import WorkQueue


def make_queue(clock: ManualClock | None = None) -> WorkQueue[str]:
    return WorkQueue("test", clock=clock or ManualClock())


def drain(queue: WorkQueue[str]) -> list[str]:
    """Every ready key, in order, each marked processing."""
    keys = []
    while (key := queue.get_nowait()) is not None:
        keys.append(key)
    return keys


def test_keys_come_out_in_fifo_order_once_each() -> None:
    queue = make_queue()
    for key in ["a", "b", "a", "c", "b", "a"]:
        queue.add(key)
    assert len(queue) == 3
    assert drain(queue) == ["a", "b", "c"]


def test_key_being_processed_is_not_handed_out_again() -> None:
    queue = make_queue()
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.add("a")
    queue.add("a")
    assert queue.is_processing("a")
    assert queue.get_nowait() is None
    assert len(queue) == 0


def test_key_added_while_processing_is_requeued_once_on_done() -> None:
    queue = make_queue()
    queue.add("a")
    queue.add("b")
    assert queue.get_nowait() == "a"
    queue.add("a")
    queue.add("a")
    queue.done("a")
    # Behind "b", which was waiting first; and only once however often it was added.
    assert drain(queue) == ["b", "a"]


def test_done_without_readd_does_not_requeue() -> None:
    queue = make_queue()
    queue.add("a")
    assert queue.get_nowait() == "a"
    queue.done("a")
    assert queue.get_nowait() is None
    assert not queue.is_processing("a")


def test_delayed_keys_come_out_in_ready_time_order() -> None:
    clock = ManualClock()
    queue = make_queue(clock)
    queue.add_after("late", 3.0)
    queue.add_after("early", 1.0)
    queue.add_after("middle", 2.0)
    assert queue.get_nowait() is None
    assert queue.next_ready_in() == pytest.approx(1.0)
    clock.advance(2.5)
    assert drain(queue) == ["early", "middle"]
    assert queue.next_ready_in() == pytest.approx(0.5)
    clock.advance(0.5)
    assert drain(queue) == ["late"]
    assert queue.next_ready_in() is None


def test_readding_a_parked_key_keeps_the_earlier_time() -> None:
    clock = ManualClock()
    queue = make_queue(clock)
    queue.add_after("a", 5.0)
    queue.add_after("a", 10.0)  # later: ignored
    assert queue.next_ready_in() == pytest.approx(5.0)
    queue.add_after("a", 1.0)  # earlier: wins
    assert queue.next_ready_in() == pytest.approx(1.0)
    assert queue.waiting_delayed() == 1
    clock.advance(1.0)
    assert drain(queue) == ["a"]
    # The superseded 5 s entry does not bring the key back.
    clock.advance(10.0)
    assert queue.get_nowait() is None
    assert queue.next_ready_in() is None


def test_zero_delay_adds_immediately_and_dedups_with_waiting_key() -> None:
    queue = make_queue()
    queue.add("a")
    queue.add_after("a", 0)
    assert drain(queue) == ["a"]


def test_rate_limited_retries_back_off_exponentially_until_forget() -> None:
    clock = ManualClock()
    queue: WorkQueue[str] = WorkQueue(
        "test", clock=clock, rate_limiter=ItemExponentialBackoff(base=1.0, cap=8.0)
    )
    waits = []
    for _ in range(5):
        queue.add_rate_limited("a")
        waits.append(queue.next_ready_in())
        clock.advance(queue.next_ready_in() or 0.0)
        assert queue.get_nowait() == "a"
        queue.done("a")
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert queue.num_requeues("a") == 5
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    queue.add_rate_limited("a")
    assert queue.next_ready_in() == 1.0


def test_shut_down_drops_waiting_keys_and_refuses_new_ones() -> None:
    queue = make_queue()
    queue.add("a")
    queue.shut_down()
    queue.add("b")
    with pytest.raises(QueueShutDown):
        queue.get_nowait()


async def test_get_waits_for_an_add_and_shut_down_releases_waiters() -> None:
    queue: WorkQueue[str] = WorkQueue("test")
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.add("a")
    assert await asyncio.wait_for(getter, 5) == "a"

    waiters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    queue.shut_down()
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert all(isinstance(result, QueueShutDown) for result in results)


async def test_concurrent_workers_never_share_a_key() -> None:
    queue: WorkQueue[str] = WorkQueue("test")
    in_flight: set[str] = set()
    overlaps: list[str] = []
    processed: list[str] = []

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            if key in in_flight:
                overlaps.append(key)
            in_flight.add(key)
            # Re-add while processing: must come back later, not to another worker now.
            queue.add(key)
            await asyncio.sleep(0)
            in_flight.discard(key)
            processed.append(key)
            queue.done(key)
            if len(processed) >= 200:
                queue.shut_down()

    for i in range(5):
        queue.add(f"k{i}")
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 10)
    assert overlaps == []
    assert len(processed) >= 200
    assert set(processed) == {f"k{i}" for i in range(5)}


def test_metrics_track_adds_depth_retries_and_in_flight_work() -> None:
    clock = ManualClock()
    metrics = RuntimeMetrics(CollectorRegistry())
    queue: WorkQueue[str] = WorkQueue("q", clock=clock, metrics=metrics)
    value = metrics.registry.get_sample_value
    labels = {"name": "q"}
    assert value("workqueue_adds_total", labels) == 0
    assert value("workqueue_depth", labels) == 0
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert value("workqueue_adds_total", labels) == 3
    assert value("workqueue_depth", labels) == 2
    clock.advance(2.0)
    assert queue.get_nowait() == "a"
    assert value("workqueue_queue_duration_seconds_sum", labels) == pytest.approx(2.0)
    clock.advance(3.0)
    assert value("workqueue_longest_running_processor_seconds", labels) == pytest.approx(3.0)
    assert queue.get_nowait() == "b"
    clock.advance(1.0)
    assert value("workqueue_unfinished_work_seconds", labels) == pytest.approx(4.0 + 1.0)
    queue.done("a")
    assert value("workqueue_work_duration_seconds_count", labels) == 1
    assert value("workqueue_work_duration_seconds_sum", labels) == pytest.approx(4.0)
    queue.add_rate_limited("a")
    assert value("workqueue_retries_total", labels) == 1
