"""A local HTTP server that answers the Kubernetes list/watch protocol from a script, for unit
tests of the informer and the manager (the e2e suite uses the real API server instead)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import Configuration

from reconciler.k8s.client import ApiSettings, RateLimitedApiClient


def config_map(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}


@dataclass
class ScriptedWatch:
    events: list[dict[str, Any]] = field(default_factory=list)
    hold_open: bool = True
    """Keep the stream open after the events (a quiet watch) instead of ending it."""


class ListWatchServer:
    """List answers and watches are served in the order scripted; once a script runs out, the
    last list answer repeats and watches stay open and quiet."""

    def __init__(self) -> None:
        self.list_answers: deque[dict[str, Any]] = deque()
        self.watches: deque[ScriptedWatch] = deque()
        self.list_queries: list[dict[str, str]] = []
        self.watch_queries: list[dict[str, str]] = []
        self.list_times: list[float] = []
        self.watch_times: list[float] = []
        self._last_list: dict[str, Any] | None = None

    def list_page(self, items: list[dict[str, Any]], rv: str, continue_token: str = "") -> None:
        metadata = {"resourceVersion": rv}
        if continue_token:
            metadata["continue"] = continue_token
        self.list_answers.append({"kind": "List", "metadata": metadata, "items": items})

    def watch(self, *events: dict[str, Any], hold_open: bool = True) -> None:
        self.watches.append(ScriptedWatch(list(events), hold_open))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            self.list_queries.append(dict(request.query))
            self.list_times.append(time.monotonic())
            if self.list_answers:
                self._last_list = self.list_answers.popleft()
            return web.json_response(self._last_list)
        self.watch_queries.append(dict(request.query))
        self.watch_times.append(time.monotonic())
        script = self.watches.popleft() if self.watches else ScriptedWatch()
        response = web.StreamResponse()
        await response.prepare(request)
        for event in script.events:
            await response.write(json.dumps(event).encode() + b"\n")
        if script.hold_open:
            await asyncio.Event().wait()  # until the client goes away
        return response


@contextlib.asynccontextmanager
async def serving(server: ListWatchServer) -> AsyncIterator[RateLimitedApiClient]:
    """An ApiClient talking to `server`, which listens on a free loopback port meanwhile."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    # Cancel a held-open watch handler when the informer disconnects.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        client = RateLimitedApiClient(
            Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}"), ApiSettings()
        )
        try:
            yield client
        finally:
            await client.close()
    finally:
        await runner.cleanup()
