"""The health and metrics endpoint: one small aiohttp server.

- /healthz  200 while the event loop answers at all (no API call: a slow API server must not
            get a healthy process restarted);
- /readyz   200 once every informer has synced (and, if given, the extra checks pass);
- /metrics  the runtime's Prometheus registry in the text exposition format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadinessCheck = Callable[[], bool]


@dataclass(frozen=True)
class ServerSettings:
    host: str = "0.0.0.0"
    """Address to listen on: all, since probes and Prometheus come from outside the pod."""
    port: int = 8080
    """Port to listen on; 0 picks a free one (see HealthServer.port)."""


class HealthServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Mapping[str, ReadinessCheck],
        settings: ServerSettings | None = None,
    ) -> None:
        self.registry = registry
        self.readiness = readiness
        self.settings = settings or ServerSettings()
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port actually bound (after `start`)."""
        if self._port is None:
            raise RuntimeError("the health server is not started")
        return self._port

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        address = self._runner.addresses[0]
        self._port = int(address[1])

    async def stop(self) -> None:
        await self._runner.cleanup()
        self._port = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        failing = sorted(name for name, check in self.readiness.items() if not check())
        if failing:
            return web.Response(status=503, text="not ready: " + ", ".join(failing))
        return web.Response(text="ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
