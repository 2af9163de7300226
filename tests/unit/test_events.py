"""Events during a burst: the first of each group one by one, the rest summed up."""

from __future__ import annotations

import asyncio

from reconciler.k8s import ManualClock
from reconciler.k8s.events import SUMMARY_PREFIX, EventRecorder, EventSettings
from tests.support.polling import async_wait_for
from tests.unit.conftest import RecordingApiClient

PV_KIND = ("v1", "PersistentVolume")


def pv(name: str) -> dict[str, object]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"}}


def recorder(api: RecordingApiClient, clock: ManualClock) -> EventRecorder:
    return EventRecorder(api, "test", "test-0", EventSettings(burst=3, window=60), clock)


async def test_a_burst_posts_a_few_events_then_one_summary_per_flush(
    api: RecordingApiClient,
) -> None:
    events = recorder(api, ManualClock())
    for i in range(10):
        await events.record(pv(f"pv-{i}"), PV_KIND, warning=False, reason="Done", message=f"m{i}")
    assert [e["involvedObject"]["name"] for e in api.events()] == ["pv-0", "pv-1", "pv-2"]
    assert events.summed_up == 7

    await events.flush()
    summary = api.events()[-1]
    assert summary["count"] == 7
    assert summary["involvedObject"]["name"] == "pv-9"  # the latest
    assert summary["message"].startswith(SUMMARY_PREFIX + "7 more PersistentVolumes had Done: ")
    assert "pv-3, pv-4, pv-5, pv-6, pv-7 and 2 more; the latest: m9" in summary["message"]
    await events.flush()
    assert len(api.events()) == 4  # nothing new: no summary


async def test_groups_are_by_type_and_reason_and_last_a_window(api: RecordingApiClient) -> None:
    clock = ManualClock()
    events = recorder(api, clock)
    for reason in ("Done", "Done", "Done", "Done", "Failed"):
        await events.record(pv("pv-1"), PV_KIND, warning=False, reason=reason, message="m")
    await events.record(pv("pv-1"), PV_KIND, warning=True, reason="Done", message="m")
    assert [(e["type"], e["reason"]) for e in api.events()] == [
        ("Normal", "Done"),
        ("Normal", "Done"),
        ("Normal", "Done"),
        ("Normal", "Failed"),
        ("Warning", "Done"),
    ]
    clock.advance(60)
    # A new window: the waiting one is summed up first, then Events go one by one again.
    await events.record(pv("pv-2"), PV_KIND, warning=False, reason="Done", message="m2")
    assert [(e["count"], e["involvedObject"]["name"]) for e in api.events()[-2:]] == [
        (1, "pv-1"),
        (1, "pv-2"),
    ]
    assert api.events()[-2]["message"].startswith(SUMMARY_PREFIX)


async def test_run_flushes_until_stopped_and_once_more(api: RecordingApiClient) -> None:
    events = EventRecorder(api, "test", "test-0", EventSettings(burst=0, flush_interval=0.01))
    stop = asyncio.Event()
    running = asyncio.create_task(events.run(stop))
    await events.record(pv("pv-1"), PV_KIND, warning=False, reason="Done", message="m")
    await async_wait_for(api.events, 5, "the first flush")
    await events.record(pv("pv-2"), PV_KIND, warning=False, reason="Done", message="m")
    stop.set()
    await running
    assert [e["involvedObject"]["name"] for e in api.events()] == ["pv-1", "pv-2"]
    assert events.posted == 2
