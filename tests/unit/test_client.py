"""The shared ApiClient's 429 handling and write throttling, against a local HTTP server that
answers like a loaded API server (Retry-After), and the health server's endpoints."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.client import Configuration
from prometheus_client import CollectorRegistry

from reconciler.k8s.client import ApiSettings, RateLimitedApiClient, request_json
from reconciler.k8s.errors import ApiStatusError
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.server import HealthServer, ServerSettings


class ThrottlingServer:
    """Answers the first `throttle` requests with 429 + Retry-After, then 200."""

    def __init__(self, throttle: int, retry_after: str) -> None:
        self.throttle = throttle
        self.retry_after = retry_after
        self.arrivals: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) <= self.throttle:
            return web.json_response(
                {"kind": "Status", "code": 429, "message": "too many requests"},
                status=429,
                headers={"Retry-After": self.retry_after},
            )
        return web.json_response({"ok": await request.json() if request.can_read_body else None})


@pytest.fixture
async def serve() -> AsyncIterator[list[web.AppRunner]]:
    runners: list[web.AppRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


async def start(runners: list[web.AppRunner], server: ThrottlingServer) -> str:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    runners.append(runner)
    return f"http://127.0.0.1:{runner.addresses[0][1]}"


def client_for(host: str, settings: ApiSettings) -> RateLimitedApiClient:
    configuration = Configuration(host=host)
    return RateLimitedApiClient(configuration, settings)


async def test_429_is_retried_after_the_servers_retry_after(
    serve: list[web.AppRunner],
) -> None:
    server = ThrottlingServer(throttle=2, retry_after="0.2")
    client = client_for(await start(serve, server), ApiSettings())
    try:
        answer = await request_json(client, "POST", "/api/v1/things", {"n": 1})
    finally:
        await client.close()
    assert answer == {"ok": {"n": 1}}
    assert len(server.arrivals) == 3
    assert client.throttled_total == 2
    gaps = [b - a for a, b in itertools.pairwise(server.arrivals)]
    assert all(gap >= 0.19 for gap in gaps), gaps  # the loop may wake a timer ~1 ms early


async def test_429_is_raised_once_the_retries_are_used_up(serve: list[web.AppRunner]) -> None:
    server = ThrottlingServer(throttle=100, retry_after="0")
    client = client_for(await start(serve, server), ApiSettings(max_throttle_retries=3))
    try:
        with pytest.raises(ApiStatusError) as raised:
            await request_json(client, "GET", "/api/v1/things")
    finally:
        await client.close()
    assert raised.value.status == 429
    assert raised.value.message == "too many requests"
    assert len(server.arrivals) == 4


async def test_writes_are_spaced_by_qps_once_the_burst_is_spent(
    serve: list[web.AppRunner],
) -> None:
    server = ThrottlingServer(throttle=0, retry_after="0")
    client = client_for(await start(serve, server), ApiSettings(qps=20.0, burst=2))
    try:
        began = time.monotonic()
        for n in range(6):
            await request_json(client, "PUT", "/api/v1/things/x", {"n": n})
        for _ in range(5):  # reads are not throttled
            await request_json(client, "GET", "/api/v1/things/x")
    finally:
        await client.close()
    writes = server.arrivals[:6]
    # Two at once (the burst), then one every 50 ms: the sixth cannot start before 4 x 50 ms.
    # Measured from before the first write: a slow first request lets tokens refill meanwhile.
    assert writes[-1] - began >= 0.2 * 0.95
    reads = server.arrivals[6:]
    assert reads[-1] - reads[0] < 0.2


async def test_health_server_answers_healthz_readyz_and_metrics() -> None:
    metrics = RuntimeMetrics(CollectorRegistry())
    metrics.for_controller("demo", max_concurrent=2)
    synced = False
    server = HealthServer(
        metrics.registry, {"informers": lambda: synced}, ServerSettings("127.0.0.1", 0)
    )
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as response:
                assert (response.status, await response.text()) == (200, "ok")
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 503
                assert "informers" in await response.text()
            synced = True
            async with http.get(f"{base}/readyz") as response:
                assert response.status == 200
            async with http.get(f"{base}/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
    finally:
        await server.stop()
    assert 'controller_runtime_max_concurrent_reconciles{controller="demo"} 2.0' in text


async def test_the_proxy_is_taken_from_the_environment_once_and_netrc_never_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    configuration = Configuration(host="https://api.example:6443")
    api = RateLimitedApiClient(configuration, ApiSettings())
    try:
        assert api.rest_client.proxy == "http://proxy.example:3128"
        assert api.rest_client.pool_manager.trust_env is False
    finally:
        await api.close()
    monkeypatch.setenv("NO_PROXY", "api.example")
    bypassed = RateLimitedApiClient(configuration, ApiSettings())
    try:
        assert bypassed.rest_client.proxy is None
    finally:
        await bypassed.close()
