"""ConnectionPool: one `CephConnection` per (monitors, user, key), shared by every caller.

Connections do not outlive their use: the pool closes one unused for `idle_timeout` seconds, and
the connections of a user's old key once a new key of that user connects (a rotated key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from reconciler.cephconn import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_THREADS,
    DEFAULT_TIMEOUT,
    CephConnection,
    Credentials,
)

log = logging.getLogger(__name__)


class ConnectionPool:
    """One `CephConnection` per (monitors, user, key), shared by every caller.

    A connection unused for `idle_timeout` seconds is closed, and so are the connections of a
    user's other keys once a new key of that user connects to the same monitors: Ceph keeps one
    key per user, so a new one that works means the old one was rotated. Closing happens in the
    background and waits for the calls still running (`CephConnection.aclose`).
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        threads: int = DEFAULT_THREADS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.threads = threads
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._connections: dict[tuple[str, str, str], asyncio.Task[CephConnection]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    async def get(self, mon_host: str, credentials: Credentials) -> CephConnection:
        key = (mon_host, credentials.user, credentials.fingerprint())
        task = self._connections.get(key)
        if task is None:
            # Concurrent callers for one cluster share a single connect attempt.
            task = asyncio.ensure_future(self._open(mon_host, credentials))
            self._connections[key] = task
        try:
            connection = await asyncio.shield(task)
        except Exception:
            # A failed attempt (CephError, InvalidCephKey, ...) is not cached: the next caller
            # tries afresh.
            if self._connections.get(key) is task:
                del self._connections[key]
            raise
        connection.last_used = self._clock()
        self.evict(fresh=key)
        self._start_reaper()
        return connection

    async def _open(self, mon_host: str, credentials: Credentials) -> CephConnection:
        connection = CephConnection(
            mon_host, credentials, self.timeout, self.threads, clock=self._clock
        )
        try:
            await connection.connect()
        except BaseException:
            await connection.aclose()
            raise
        return connection

    def evict(self, fresh: tuple[str, str, str] | None = None) -> int:
        """Close (in the background) the connections idle for `idle_timeout` and without a call
        running, and, given the key `fresh` of a connection that just served, the others of its
        monitors and user: their key was rotated. Returns how many were closed."""
        now = self._clock()
        evicted = 0
        for key, task in list(self._connections.items()):
            if key == fresh or not task.done() or task.cancelled() or task.exception():
                continue
            connection = task.result()
            rotated = fresh is not None and key[:2] == fresh[:2]
            idle = not connection.busy and now - connection.last_used >= self.idle_timeout
            if rotated or idle:
                del self._connections[key]
                log.info(
                    "closing a Ceph connection",
                    extra={
                        "mon_host": key[0],
                        "user": key[1],
                        "why": "its user's key was rotated" if rotated else "unused",
                    },
                )
                closing = asyncio.create_task(connection.aclose())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
                evicted += 1
        return evicted

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="ceph-connection-reaper")

    async def _reap(self) -> None:
        """Evict idle connections while there are any (the next `get` starts it again)."""
        while self._connections:
            await asyncio.sleep(max(self.idle_timeout / 2, 0.01))
            self.evict()

    def __len__(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        tasks = list(self._connections.values())
        self._connections.clear()
        closing: list[Any] = list(self._closing)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                closing.append(task.result().aclose())
            else:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await asyncio.gather(*closing, return_exceptions=True)
