"""The Ceph connection pool's lifecycle, without a cluster: closing waits for the librados calls
still running on a connection's threads (librados shut down under a call crashes the process),
idle connections and those of a rotated key are closed, and nothing outlives `close()`.

The connections are real `CephConnection`s whose librados client is a stand-in that records when
it is shut down and whether a call was running then.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from typing import Any

import pytest

from reconciler.cephconn import CephConnection, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.errors import CephUnavailable

KEY = "AQCjtAxrXmteLhAAU+Qo+eqJWuNJPZz4uqi+SQ=="
ROTATED = "AQDtzA1rAAAAABAAk4N0a9o3OAZ0oz3+JptbSQ=="
MONS = "v2:127.0.0.1:1"


class Client:
    """Stands in for rados.Rados: records its shutdown and the calls running at that moment."""

    def __init__(self) -> None:
        self.running = 0
        self.shut_down_while: list[int] = []

    def shutdown(self) -> None:
        self.shut_down_while.append(self.running)


def connection(
    key: str = KEY, timeout: float = 5.0, clock: Any = None
) -> tuple[CephConnection, Client]:
    kwargs = {"clock": clock} if clock is not None else {}
    conn = CephConnection(MONS, Credentials("csi", key), timeout, threads=2, **kwargs)
    client = Client()
    conn._rados = client
    return conn, client


def blocking_call(client: Client, release: threading.Event) -> Any:
    """A librados call that runs until `release` is set (or 10 s pass)."""

    def call() -> str:
        client.running += 1
        try:
            release.wait(10)
            return "answered"
        finally:
            client.running -= 1

    return call


async def test_close_waits_for_a_running_call_before_shutting_librados_down() -> None:
    conn, client = connection()
    release = threading.Event()
    call = asyncio.ensure_future(conn._call(blocking_call(client, release)))
    await asyncio.sleep(0.05)
    assert conn.busy == 1
    # What used to crash: close() while a thread is inside librados. It now waits for the call.
    threading.Timer(0.2, release.set).start()
    conn.close()
    assert client.shut_down_while == [0]
    assert await call == "answered"


async def test_aclose_waits_without_blocking_the_loop() -> None:
    conn, client = connection()
    release = threading.Event()
    call = asyncio.ensure_future(conn._call(blocking_call(client, release)))
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(conn.aclose())
    await asyncio.sleep(0.1)
    assert not closing.done() and client.shut_down_while == []
    release.set()
    await closing
    assert client.shut_down_while == [0]
    assert await call == "answered"
    # Closed: a new call is refused, retryably, instead of reaching a shut-down client.
    with pytest.raises(CephUnavailable, match="was closed"):
        await conn._call(lambda: None)


async def test_aclose_leaves_no_unretrieved_error_of_a_call_it_waited_for() -> None:
    """A call failing while aclose() waits for it (a stale leader's refused write, at exit) was
    logged by asyncio as "Future exception was never retrieved": its caller is gone (cancelled),
    and aclose() only waits. Its error belongs to its caller; aclose() must not leave it behind,
    neither for a call that ends within the grace nor for one that ends after it."""
    conn, _ = connection()
    release = threading.Event()
    late = threading.Event()

    def refused() -> None:
        release.wait(10)
        raise OSError("Failed to operate write op for oid csi.volumes.default")

    def refused_late() -> None:
        late.wait(10)
        raise OSError("refused after the grace")

    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    callers = [asyncio.ensure_future(conn._call(fn)) for fn in (refused, refused_late)]
    await asyncio.sleep(0.05)
    for caller in callers:  # the callers are gone, as when leadership is lost
        caller.cancel()
    threading.Timer(0.1, release.set).start()
    await conn.aclose(grace=0.5)
    late.set()
    await asyncio.sleep(0.2)  # the late call ends, and its answer reaches the loop
    del callers
    gc.collect()
    await asyncio.sleep(0)
    assert unretrieved == []


async def test_a_call_that_outlasts_the_grace_keeps_its_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn, client = connection()
    release = threading.Event()
    call = asyncio.ensure_future(conn._call(blocking_call(client, release)))
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="reconciler.cephconn"):
        await conn.aclose(grace=0.1)
    assert client.shut_down_while == []  # left as it is, not shut down under the call
    assert "left as it is" in caplog.text
    release.set()
    assert await call == "answered"


class StubPool(ConnectionPool):
    """Hands out unconnected CephConnections with stand-in clients, one per key."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clients: dict[str, Client] = {}

    async def _open(self, mon_host: str, credentials: Credentials) -> CephConnection:
        conn, client = connection(credentials.key, clock=self._clock)
        self.clients[credentials.key] = client
        return conn


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    """Let the background closes run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_idle_connection_is_closed_and_a_busy_one_kept() -> None:
    clock = Clock()
    pool = StubPool(idle_timeout=300, clock=clock)
    try:
        first = await pool.get(MONS, Credentials("csi", KEY))
        other = await pool.get("v2:127.0.0.2:1", Credentials("csi", KEY))
        assert len(pool) == 2
        clock.now = 299
        assert pool.evict() == 0
        clock.now = 301
        release = threading.Event()
        client = pool.clients[KEY]
        call = asyncio.ensure_future(other._call(blocking_call(client, release)))
        await asyncio.sleep(0.05)
        assert pool.evict() == 1  # `first` went; `other` has a call running
        await settle()
        assert len(pool) == 1
        with pytest.raises(CephUnavailable):
            await first._call(lambda: None)
        release.set()
        await call
        # A new get of the evicted cluster connects afresh.
        again = await pool.get(MONS, Credentials("csi", KEY))
        assert again is not first
    finally:
        await pool.close()


async def test_a_rotated_key_closes_the_old_keys_connection() -> None:
    pool = StubPool()
    try:
        old = await pool.get(MONS, Credentials("csi", KEY))
        new = await pool.get(MONS, Credentials("csi", ROTATED))
        await settle()
        assert len(pool) == 1
        assert pool.clients[KEY].shut_down_while == [0]
        assert pool.clients[ROTATED].shut_down_while == []
        with pytest.raises(CephUnavailable):
            await old._call(lambda: None)
        assert await new._call(lambda: "ok") == "ok"
        # Another user's connection on the same monitors is not touched.
        await pool.get(MONS, Credentials("other", KEY))
        assert len(pool) == 2
    finally:
        await pool.close()


async def test_the_reaper_evicts_in_the_background_and_ends_with_the_pool() -> None:
    pool = StubPool(idle_timeout=0.05)
    try:
        await pool.get(MONS, Credentials("csi", KEY))
        for _ in range(100):
            if len(pool) == 0:
                break
            await asyncio.sleep(0.02)
        assert len(pool) == 0
        await settle()
        assert pool.clients[KEY].shut_down_while == [0]
    finally:
        await pool.close()
    # The autouse fixture of tests/conftest.py fails the test if the reaper were still running.
