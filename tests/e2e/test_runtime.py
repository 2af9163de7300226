"""The k8s runtime against the real API server of the `kube` fixture. No fakes: informers,
leader election and the HTTP server talk to a real kube-apiserver backed by etcd."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio.client import CoreV1Api, V1ConfigMap, V1Namespace, V1ObjectMeta

from reconciler.k8s.client import RateLimitedApiClient, make_api_client
from reconciler.k8s.informer import Event, EventType, Informer, Resource, WatchSettings
from reconciler.sandbox.kube import KubeSandbox

pytestmark = pytest.mark.e2e

T = TypeVar("T")
CONFIG_MAPS = Resource("", "v1", "configmaps")


async def eventually(
    probe: Callable[[], T | Awaitable[T | None] | None], within: float, what: str
) -> T:
    """Poll `probe` until it answers something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {within:.0f} s waiting for {what} (last: {last!r})")


@pytest.fixture
async def api(kube: KubeSandbox) -> AsyncIterator[RateLimitedApiClient]:
    client = await make_api_client(kube.kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def namespace(api: RateLimitedApiClient) -> AsyncIterator[str]:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    core = CoreV1Api(api)
    await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
    yield name
    await core.delete_namespace(name)


def config_map(name: str, **data: str) -> V1ConfigMap:
    return V1ConfigMap(metadata=V1ObjectMeta(name=name), data=data)


class Running:
    """Runs coroutines as tasks for the length of a test and cancels them all at the end."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    tasks = Running()
    try:
        yield tasks
    finally:
        await tasks.stop()


async def test_informer_sees_creates_updates_and_deletes(
    api: RateLimitedApiClient, namespace: str, running: Running
) -> None:
    core = CoreV1Api(api)
    await core.create_namespaced_config_map(namespace, config_map("before", v="0"))
    informer = Informer(
        api,
        CONFIG_MAPS,
        namespace=namespace,
        indexers={"v": lambda obj: [obj.get("data", {}).get("v", "")]},
    )
    events: list[tuple[EventType, str]] = []
    informer.add_handler(lambda event: events.append((event.type, event.key)))
    running.start(informer.run())
    await asyncio.wait_for(informer.wait_synced(), 30)
    assert informer.has_synced()
    assert events == [(EventType.ADDED, f"{namespace}/before")]

    await core.create_namespaced_config_map(namespace, config_map("a", v="1"))
    await core.patch_namespaced_config_map("a", namespace, {"data": {"v": "2"}})
    await core.delete_namespaced_config_map("before", namespace)
    expected = [
        (EventType.ADDED, f"{namespace}/before"),
        (EventType.ADDED, f"{namespace}/a"),
        (EventType.MODIFIED, f"{namespace}/a"),
        (EventType.DELETED, f"{namespace}/before"),
    ]
    await eventually(lambda: events == expected, 30, f"events {expected}, got {events}")
    assert informer.store.keys() == [f"{namespace}/a"]
    assert [o["metadata"]["name"] for o in informer.store.by_index("v", "2")] == ["a"]
    assert informer.store.by_index("v", "1") == []


async def test_informer_relists_after_apiserver_restart_and_loses_no_change(
    kube: KubeSandbox, api: RateLimitedApiClient, namespace: str, running: Running
) -> None:
    core = CoreV1Api(api)
    for name in ("keep", "gone"):
        await core.create_namespaced_config_map(namespace, config_map(name, v="0"))
    # A long reconnect backoff: the changes below land while the informer is not watching,
    # and the restarted server's fresh watch cache no longer has the informer's
    # resourceVersion, so only a 410 and a relist can reveal them.
    informer = Informer(
        api,
        CONFIG_MAPS,
        namespace=namespace,
        settings=WatchSettings(backoff_initial=15.0, backoff_cap=15.0),
    )
    events: list[Event] = []
    informer.add_handler(events.append)
    running.start(informer.run())
    await asyncio.wait_for(informer.wait_synced(), 30)

    await asyncio.to_thread(kube.restart_apiserver)
    await core.create_namespaced_config_map(namespace, config_map("new", v="0"))
    await core.patch_namespaced_config_map("keep", namespace, {"data": {"v": "1"}})
    await core.delete_namespaced_config_map("gone", namespace)

    expected = {f"{namespace}/keep": "1", f"{namespace}/new": "0"}
    await eventually(
        lambda: (
            {
                o["metadata"]["namespace"] + "/" + o["metadata"]["name"]: o["data"]["v"]
                for o in informer.store.objects()
            }
            == expected
        ),
        60,
        "the informer's cache to match the server after the restart",
    )
    assert informer.stats.expired >= 1, informer.stats
    assert informer.stats.lists >= 2, informer.stats
    after_sync = [(e.type, e.key) for e in events[2:]]
    assert sorted(after_sync) == sorted(
        [
            (EventType.ADDED, f"{namespace}/new"),
            (EventType.MODIFIED, f"{namespace}/keep"),
            (EventType.DELETED, f"{namespace}/gone"),
        ]
    )
    # The relist's DELETED carries the last state the cache had.
    gone = next(e for e in events if e.type is EventType.DELETED)
    assert gone.obj["metadata"]["name"] == "gone"


async def test_informer_reopens_a_silent_watch(
    api: RateLimitedApiClient, namespace: str, running: Running
) -> None:
    core = CoreV1Api(api)
    informer = Informer(
        api, CONFIG_MAPS, namespace=namespace, settings=WatchSettings(inactivity_timeout=1.0)
    )
    running.start(informer.run())
    await asyncio.wait_for(informer.wait_synced(), 30)
    await eventually(lambda: informer.stats.inactivity_restarts >= 2, 30, "two inactivity restarts")
    # The re-opened watch still delivers.
    await core.create_namespaced_config_map(namespace, config_map("late", v="0"))
    await eventually(lambda: f"{namespace}/late" in informer.store, 30, "the late ConfigMap")
    assert informer.stats.lists == 1
    assert informer.stats.failures == 0
