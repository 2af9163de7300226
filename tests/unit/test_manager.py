"""Manager lifecycle against a local HTTP server speaking the list/watch protocol: controllers
see the listed and watched objects, /readyz follows the caches, `stop` shuts everything down,
and an informer that dies by a bug stops the manager instead of leaving a stale cache."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration

from reconciler.k8s.client import ApiSettings, RateLimitedApiClient
from reconciler.k8s.controller import Result
from reconciler.k8s.informer import Resource
from reconciler.k8s.manager import Manager, ManagerSettings
from reconciler.k8s.server import ServerSettings

CONFIG_MAPS = Resource("", "v1", "configmaps")


def config_map(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


class ListWatchServer:
    """Lists `items`; the first watch sends `watch_events` and stays open, later ones too."""

    def __init__(self, items: list[dict[str, Any]], watch_events: list[dict[str, Any]]) -> None:
        self.items = items
        self.watch_events = watch_events
        self.watch_queries: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            return web.json_response(
                {
                    "kind": "ConfigMapList",
                    "metadata": {"resourceVersion": "10"},
                    "items": self.items,
                }
            )
        self.watch_queries.append(dict(request.query))
        response = web.StreamResponse()
        await response.prepare(request)
        for event in self.watch_events if len(self.watch_queries) == 1 else []:
            await response.write(json.dumps(event).encode() + b"\n")
        await asyncio.Event().wait()  # held open until the client goes away
        return response


@pytest.fixture
async def api_for() -> AsyncIterator[Callable[[ListWatchServer], Any]]:
    runners: list[web.AppRunner] = []
    clients: list[RateLimitedApiClient] = []

    async def make(server: ListWatchServer) -> RateLimitedApiClient:
        app = web.Application()
        app.router.add_get("/{tail:.*}", server.handle)
        # Cancel the held-open watch handler when the informer disconnects.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        client = RateLimitedApiClient(
            Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}"), ApiSettings()
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


async def until(probe: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


async def test_manager_runs_controllers_on_listed_and_watched_objects_then_stops(
    api_for: Callable[[ListWatchServer], Any],
) -> None:
    server = ListWatchServer(
        items=[config_map("a", "8"), config_map("b", "9")],
        watch_events=[
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "11"}}},
            {"type": "ADDED", "object": config_map("c", "12")},
        ],
    )
    api = await api_for(server)
    manager = Manager(api, ManagerSettings(server=ServerSettings("127.0.0.1", 0)))
    informer = manager.informer(CONFIG_MAPS, namespace="ns")
    reconciled: list[str] = []

    async def reconcile(key: str) -> Result:
        reconciled.append(key)
        return Result()

    manager.controller("recorder", reconcile).watch(informer)
    stop = asyncio.Event()
    running = asyncio.create_task(manager.run(stop, handle_signals=False))
    try:
        await until(lambda: sorted(reconciled) == ["ns/a", "ns/b", "ns/c"])
        assert server.watch_queries[0]["resourceVersion"] == "10"
        assert server.watch_queries[0]["allowWatchBookmarks"] == "true"
        assert 300 <= int(server.watch_queries[0]["timeoutSeconds"]) <= 600
        assert informer.last_resource_version == "12"
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{manager.server_port}/readyz") as response,
        ):
            assert response.status == 200
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)


async def test_manager_stops_when_an_informer_dies(
    api_for: Callable[[ListWatchServer], Any],
) -> None:
    # An item without metadata cannot be keyed: the informer's task dies with KeyError.
    api = await api_for(ListWatchServer(items=[{"data": {}}], watch_events=[]))
    manager = Manager(api, ManagerSettings(server=ServerSettings("127.0.0.1", 0)))
    manager.informer(CONFIG_MAPS, namespace="ns")
    with pytest.raises(KeyError):
        await asyncio.wait_for(manager.run(handle_signals=False), 10)
