"""Informer protocol details against a scripted list/watch server: pagination, the watch
parameters, relist-and-diff on 410 (as an ERROR event), and backoff instead of spinning when
watches end at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator

from reconciler.k8s.informer import (
    Event,
    EventType,
    Informer,
    Resource,
    WatchSettings,
    strip_managed_fields,
)
from reconciler.k8s.store import KubeObject
from reconciler.k8s.tasks import cancel_and_wait
from tests.support.polling import async_wait_for
from tests.unit.listwatch_server import ListWatchServer, config_map, serving

CONFIG_MAPS = Resource("", "v1", "configmaps")
EXPIRED = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}


@contextlib.asynccontextmanager
async def informing(
    server: ListWatchServer, settings: WatchSettings | None = None
) -> AsyncIterator[tuple[Informer, list[Event]]]:
    async with serving(server) as api:
        informer = Informer(api, CONFIG_MAPS, namespace="ns", settings=settings)
        events: list[Event] = []
        informer.add_handler(events.append)
        task = asyncio.create_task(informer.run())
        try:
            yield informer, events
        finally:
            await cancel_and_wait(task)


async def test_list_is_paginated_then_watched_from_the_lists_version() -> None:
    server = ListWatchServer()
    server.list_page([config_map("a", "1"), config_map("b", "2")], rv="7", continue_token="p2")
    server.list_page([config_map("c", "3")], rv="7")
    async with informing(server, WatchSettings(page_size=2)) as (informer, events):
        await asyncio.wait_for(informer.wait_synced(), 10)
        await async_wait_for(lambda: len(server.watch_queries) == 1, 10, "the first watch")
    assert [query.get("limit") for query in server.list_queries] == ["2", "2"]
    assert "continue" not in server.list_queries[0]
    assert server.list_queries[1]["continue"] == "p2"
    assert [(e.type, e.key) for e in events] == [
        (EventType.ADDED, "ns/a"),
        (EventType.ADDED, "ns/b"),
        (EventType.ADDED, "ns/c"),
    ]
    watch = server.watch_queries[0]
    assert watch["resourceVersion"] == "7"
    assert watch["allowWatchBookmarks"] == "true"
    assert 300 <= int(watch["timeoutSeconds"]) <= 600


async def test_watch_resumes_from_the_last_version_seen() -> None:
    server = ListWatchServer()
    server.list_page([], rv="5")
    server.watch(
        {"type": "ADDED", "object": config_map("a", "6")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
        hold_open=False,
    )
    async with informing(server) as (informer, events):
        await async_wait_for(lambda: len(server.watch_queries) == 2, 10, "a second watch")
        assert informer.stats.bookmarks == 1
    assert server.watch_queries[1]["resourceVersion"] == "9"
    assert [(e.type, e.key) for e in events] == [(EventType.ADDED, "ns/a")]
    assert len(server.list_queries) == 1


async def test_410_relists_and_turns_the_difference_into_events() -> None:
    server = ListWatchServer()
    server.list_page([config_map("a", "1"), config_map("b", "2")], rv="3")
    server.watch(EXPIRED, hold_open=False)
    # Meanwhile: "a" vanished, "b" changed, "c" appeared.
    server.list_page([config_map("b", "4"), config_map("c", "5")], rv="6")
    async with informing(server) as (informer, events):
        await async_wait_for(lambda: len(events) == 5, 10, "five events")
        await async_wait_for(lambda: len(server.watch_queries) == 2, 10, "a second watch")
        assert informer.stats.expired == 1
    assert [(e.type, e.key) for e in events[2:]] == [
        (EventType.DELETED, "ns/a"),
        (EventType.MODIFIED, "ns/b"),
        (EventType.ADDED, "ns/c"),
    ]
    deleted = next(e for e in events if e.type is EventType.DELETED)
    assert deleted.obj["metadata"]["resourceVersion"] == "1"  # the last state the cache had
    assert server.watch_queries[1]["resourceVersion"] == "6"


async def test_transform_applies_to_listed_and_watched_objects_before_handlers() -> None:
    server = ListWatchServer()
    fat = config_map("a", "1") | {"data": {"keep": "x", "drop": "y" * 1000}}
    server.list_page([fat], rv="2")
    server.watch({"type": "MODIFIED", "object": config_map("a", "3") | {"data": {"keep": "z"}}})

    def slim(obj: KubeObject) -> KubeObject:
        return {"metadata": obj["metadata"], "keep": obj.get("data", {}).get("keep")}

    async with serving(server) as api:
        informer = Informer(api, CONFIG_MAPS, namespace="ns", transform=slim)
        events: list[Event] = []
        informer.add_handler(events.append)
        task = asyncio.create_task(informer.run())
        try:
            await async_wait_for(lambda: len(events) == 2, 10, "two events")
        finally:
            await cancel_and_wait(task)
    assert [e.obj["keep"] for e in events] == ["x", "z"]
    assert events[1].old == slim(fat)
    assert informer.store.get("ns/a") == {"metadata": config_map("a", "3")["metadata"], "keep": "z"}


def test_strip_managed_fields_keeps_everything_else() -> None:
    obj = config_map("a", "1")
    obj["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Apply"}]
    obj["data"] = {"k": "v"}
    assert strip_managed_fields(obj) == {
        "metadata": config_map("a", "1")["metadata"],
        "data": {"k": "v"},
    }


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_repeated_expiry_backs_off_instead_of_spinning() -> None:
    server = ListWatchServer()
    server.list_page([], rv="1")
    for _ in range(100):
        server.watch(EXPIRED, hold_open=False)
    settings = WatchSettings(backoff_initial=0.1, backoff_cap=0.1)
    async with informing(server, settings):
        await async_wait_for(lambda: len(server.list_times) >= 5, 10, "five lists")
    # The first relist is immediate; while every fresh version expires too, each waits.
    assert all(gap >= 0.1 * 0.95 for gap in gaps(server.list_times)[1:]), server.list_times


async def test_watches_that_end_at_once_back_off() -> None:
    server = ListWatchServer()
    server.list_page([], rv="1")
    for _ in range(100):
        server.watch(hold_open=False)
    settings = WatchSettings(backoff_initial=0.1, backoff_cap=0.1)
    async with informing(server, settings) as (informer, _):
        await async_wait_for(lambda: len(server.watch_times) >= 5, 10, "five watches")
        assert informer.stats.failures >= 4
    assert all(gap >= 0.1 * 0.95 for gap in gaps(server.watch_times)), server.watch_times
    assert len(server.list_times) == 1  # a closed watch resumes; only 410 relists
