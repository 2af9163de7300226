"""Informer: a paginated list, then a watch from the list's resourceVersion, kept in a Store.

Like client-go's reflector:
- the watch asks for bookmarks and a random server-side timeout (300-600 s, so many informers
  do not reconnect in step); when it ends it is re-opened from the last resourceVersion seen;
- an inactivity timer re-opens a watch on which nothing (not even a bookmark) arrived for a
  while, since a half-open TCP connection would otherwise wait forever;
- 410 Gone (the server no longer has that resourceVersion) relists, and the diff against the
  cache becomes ADDED/MODIFIED/DELETED events, so objects that vanished meanwhile are not missed;
- any other failure is retried with jittered exponential backoff (0.8 s -> 30 s).

Objects stay plain JSON dicts as the API server sent them, for built-in kinds and CRDs alike.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.client import status_error
from reconciler.k8s.errors import ApiStatusError, WatchClosedEarly, WatchExpired
from reconciler.k8s.ratelimit import JitteredBackoff
from reconciler.k8s.store import Indexer, KubeObject, Store, object_key, resource_version

log = logging.getLogger(__name__)

# A watch that ends sooner than this without a single event counts as a failure (client-go's
# "very short watch").
SHORT_WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class Resource:
    """Which collection to watch: `Resource("", "v1", "configmaps")` is core/v1 ConfigMaps."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def collection_path(self, namespace: str | None = None) -> str:
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection_path(namespace)}/{name}"


@dataclass(frozen=True)
class WatchSettings:
    page_size: int = 500
    """Objects per list page; big collections are listed in pages instead of one huge answer."""
    server_timeout_range: tuple[int, int] = (300, 600)
    """The server ends each watch after a random number of seconds in this range."""
    inactivity_timeout: float = 70.0
    """Re-open a watch on which nothing arrived for this long (bookmarks come about a minute)."""
    connect_timeout: float = 10.0
    """Seconds to open the connection of a list or watch."""
    list_read_timeout: float = 60.0
    """Seconds without a byte from the server while reading a list page."""
    backoff_initial: float = 0.8
    """First wait after a failed list or watch; it doubles per failure ..."""
    backoff_cap: float = 30.0
    """... up to this, each wait stretched by up to 100 % jitter."""


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Event:
    type: EventType
    key: str
    obj: KubeObject
    """The new object; for DELETED the last state seen."""
    old: KubeObject | None = None
    """The previous cached object for MODIFIED (and DELETED)."""


Handler = Callable[[Event], None]
# Like client-go's SetTransform: applied to each object before it is stored and handed to
# handlers, so a cache that reads a few fields of many objects keeps only those. It must keep
# metadata.name, metadata.namespace and metadata.resourceVersion.
Transform = Callable[[KubeObject], KubeObject]


def strip_managed_fields(obj: KubeObject) -> KubeObject:
    """A Transform dropping metadata.managedFields (server-side-apply bookkeeping that readers
    of a cache rarely need): about half the memory of small objects such as ConfigMaps."""
    obj["metadata"].pop("managedFields", None)
    return obj


@dataclass
class InformerStats:
    """Counters for logs, tests and benchmarks."""

    lists: int = 0
    watches: int = 0
    expired: int = 0
    bookmarks: int = 0
    inactivity_restarts: int = 0
    failures: int = 0
    events: dict[EventType, int] = field(default_factory=lambda: dict.fromkeys(EventType, 0))


class Informer:
    def __init__(
        self,
        api_client: ApiClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, Indexer] | None = None,
        transform: Transform | None = None,
        settings: WatchSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.api_client = api_client
        self.resource = resource
        self.namespace = namespace
        self.settings = settings or WatchSettings()
        self.path = resource.collection_path(namespace)
        self.store = Store(indexers)
        self.transform = transform
        self.selectors = (label_selector, field_selector)
        self.stats = InformerStats()
        self.last_resource_version = ""
        self._selectors = [
            (name, value)
            for name, value in (
                ("labelSelector", label_selector),
                ("fieldSelector", field_selector),
            )
            if value
        ]
        self._rng = rng if rng is not None else random.Random()
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()

    def __repr__(self) -> str:
        return f"Informer({self.path})"

    # public ----------------------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        """Call `handler` for every change, including the ADDED events of the initial list.

        Handlers run inline on the informer's task: they must be quick (enqueue a key) and not
        raise; an exception is logged and the informer carries on.
        """
        self._handlers.append(handler)

    def has_synced(self) -> bool:
        """The initial list is in the store and its events were delivered."""
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = JitteredBackoff(
            initial=self.settings.backoff_initial, cap=self.settings.backoff_cap, rng=self._rng
        )
        need_list = True
        expired_in_a_row = 0
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                await self._watch()
                backoff.reset()
                expired_in_a_row = 0
            except WatchExpired as err:
                # Relist at once: waiting would only widen the gap to catch up on; but a server
                # that expires every fresh list's version too must not be hammered.
                self.stats.expired += 1
                expired_in_a_row += 1
                log.info("watch expired; relisting", extra={"path": self.path, "error": str(err)})
                need_list = True
                if expired_in_a_row > 1:
                    await asyncio.sleep(backoff.next_delay())
            except (
                aiohttp.ClientError,
                OSError,
                TimeoutError,
                ApiStatusError,
                WatchClosedEarly,
                ValueError,
            ) as err:
                self.stats.failures += 1
                delay = backoff.next_delay()
                log.warning(
                    "list/watch failed; retrying",
                    extra={"path": self.path, "error": repr(err), "retry_in": round(delay, 3)},
                )
                await asyncio.sleep(delay)

    # list ------------------------------------------------------------------------------------

    async def _list(self) -> None:
        items: list[KubeObject] = []
        continue_token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self.settings.page_size), *self._selectors]
            if continue_token:
                query.append(("continue", continue_token))
            timeout = aiohttp.ClientTimeout(
                connect=self.settings.connect_timeout,
                sock_connect=self.settings.connect_timeout,
                sock_read=self.settings.list_read_timeout,
            )
            response = await self._get(query, timeout)
            try:
                page = await response.json()
            finally:
                response.release()
            items.extend(map(self._transformed, page.get("items") or []))
            metadata = page.get("metadata", {})
            continue_token = metadata.get("continue", "")
            if not continue_token:
                break
        self.stats.lists += 1
        self._replace(items, str(metadata.get("resourceVersion", "")))

    def _replace(self, items: list[KubeObject], list_resource_version: str) -> None:
        """Make the store equal to a fresh list, emitting the differences as events."""
        listed: dict[str, KubeObject] = {object_key(obj): obj for obj in items}
        for key in sorted(set(self.store.keys()) - listed.keys()):
            old = self.store.delete(key)
            if old is not None:
                self._emit(Event(EventType.DELETED, key, old, old))
        for key, obj in listed.items():
            old = self.store.upsert(obj)
            if old is None:
                self._emit(Event(EventType.ADDED, key, obj))
            elif resource_version(old) != resource_version(obj):
                self._emit(Event(EventType.MODIFIED, key, obj, old))
        self.last_resource_version = list_resource_version
        self._synced.set()
        log.info(
            "listed",
            extra={
                "path": self.path,
                "objects": len(listed),
                "resource_version": list_resource_version,
            },
        )

    # watch -----------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """One watch from the last resourceVersion; returns when it ends or goes quiet."""
        low, high = self.settings.server_timeout_range
        server_timeout = self._rng.randint(low, high)
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self.last_resource_version),
            ("timeoutSeconds", server_timeout),
            *self._selectors,
        ]
        # The socket read timeout backs up the inactivity timer below; the total bound covers a
        # server that keeps the stream open past its own timeout.
        timeout = aiohttp.ClientTimeout(
            connect=self.settings.connect_timeout,
            sock_connect=self.settings.connect_timeout,
            sock_read=self.settings.inactivity_timeout + self.settings.connect_timeout,
            total=server_timeout + self.settings.inactivity_timeout,
        )
        started = time.monotonic()
        response = await self._get(query, timeout)
        self.stats.watches += 1
        try:
            delivered = await self._consume(response)
        finally:
            # Close rather than release: an unfinished stream cannot go back to the pool.
            response.close()
        seconds = time.monotonic() - started
        if not delivered and seconds < SHORT_WATCH_SECONDS:
            # Something between us and the server closes watches at once: back off, do not spin.
            raise WatchClosedEarly(self.path, seconds)

    async def _consume(self, response: aiohttp.ClientResponse) -> int:
        """Apply the watch's events until it ends or goes quiet; returns how many arrived."""
        pending = bytearray()
        delivered = 0
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the read as a separate
            # task and can lose a cancellation that races with it, leaving the informer running.
            try:
                async with asyncio.timeout(self.settings.inactivity_timeout):
                    chunk = await response.content.readany()
            except TimeoutError:
                self.stats.inactivity_restarts += 1
                log.info(
                    "watch silent; re-opening",
                    extra={"path": self.path, "seconds": self.settings.inactivity_timeout},
                )
                return delivered
            if not chunk:
                return delivered  # the server ended the watch (its timeout): re-watch from last RV
            pending.extend(chunk)
            # Objects can be far larger than one chunk: only complete lines are events.
            while (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end])
                del pending[: end + 1]
                if line.strip():
                    self._on_watch_event(json.loads(line))
                    delivered += 1

    def _on_watch_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj: KubeObject = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code", 0))
            message = str(obj.get("message", obj))
            if code == 410:
                raise WatchExpired(self.path, self.last_resource_version, message)
            raise ApiStatusError(self.path, code, message)
        if kind == "BOOKMARK":
            # Carries only a resourceVersion: nothing for handlers, but proof the stream lives.
            self.stats.bookmarks += 1
            self.last_resource_version = resource_version(obj)
            return
        obj = self._transformed(obj)
        key = object_key(obj)
        if kind == "DELETED":
            old = self.store.delete(key)
            self._emit(Event(EventType.DELETED, key, obj, old))
        elif kind in ("ADDED", "MODIFIED"):
            old = self.store.upsert(obj)
            event_type = EventType.ADDED if old is None else EventType.MODIFIED
            self._emit(Event(event_type, key, obj, old))
        else:
            raise ValueError(f"{self.path}: unknown watch event type {kind!r}")
        self.last_resource_version = resource_version(obj)

    # plumbing --------------------------------------------------------------------------------

    async def _get(
        self, query: list[tuple[str, Any]], client_timeout: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """A streaming GET on the collection; non-2xx answers become errors here."""
        response: aiohttp.ClientResponse = await self.api_client.call_api(
            self.path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=client_timeout,
        )
        if response.status == 200:
            return response
        error = await status_error(self.path, response)
        if error.status == 410:
            raise WatchExpired(self.path, self.last_resource_version, error.message)
        raise error

    def _transformed(self, obj: KubeObject) -> KubeObject:
        return obj if self.transform is None else self.transform(obj)

    def _emit(self, event: Event) -> None:
        self.stats.events[event.type] += 1
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                log.exception("event handler failed", extra={"path": self.path, "key": event.key})
