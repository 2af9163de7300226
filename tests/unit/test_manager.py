"""Manager lifecycle against a scripted list/watch server: controllers see the listed and
watched objects, /readyz follows the caches, `stop` shuts everything down, and an informer that
dies by a bug stops the manager instead of leaving a stale cache."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from reconciler.k8s.controller import Result
from reconciler.k8s.informer import Resource
from reconciler.k8s.manager import Manager, ManagerSettings
from reconciler.k8s.server import ServerSettings
from tests.support.polling import async_wait_for
from tests.unit.listwatch_server import ListWatchServer, config_map, serving

CONFIG_MAPS = Resource("", "v1", "configmaps")


async def test_manager_runs_controllers_on_listed_and_watched_objects_then_stops() -> None:
    server = ListWatchServer()
    server.list_page([config_map("a", "8"), config_map("b", "9")], rv="10")
    server.watch(
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "11"}}},
        {"type": "ADDED", "object": config_map("c", "12")},
    )
    reconciled: list[str] = []

    async def reconcile(key: str) -> Result:
        reconciled.append(key)
        return Result()

    async with serving(server) as api:
        manager = Manager(api, ManagerSettings(server=ServerSettings("127.0.0.1", 0)))
        informer = manager.informer(CONFIG_MAPS, namespace="ns")
        manager.controller("recorder", reconcile).watch(informer)
        stop = asyncio.Event()
        running = asyncio.create_task(manager.run(stop, handle_signals=False))
        try:
            await async_wait_for(
                lambda: sorted(reconciled) == ["ns/a", "ns/b", "ns/c"],
                10,
                "ns/a, ns/b and ns/c reconciled",
            )
            assert informer.last_resource_version == "12"
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{manager.server_port}/readyz") as response,
            ):
                assert response.status == 200
        finally:
            stop.set()
            await asyncio.wait_for(running, 10)


async def test_manager_stops_when_an_informer_dies() -> None:
    server = ListWatchServer()
    # An item without metadata cannot be keyed: the informer's task dies with KeyError.
    server.list_page([{"data": {}}], rv="1")
    async with serving(server) as api:
        manager = Manager(api, ManagerSettings(server=ServerSettings("127.0.0.1", 0)))
        manager.informer(CONFIG_MAPS, namespace="ns")
        with pytest.raises(KeyError):
            await asyncio.wait_for(manager.run(handle_signals=False), 10)
