"""InformerSet: the informers of one process, shared by what they watch and run together.

Two readers of the same (resource, namespace, selectors) get the same Informer, so one list and
one watch feed both; each adds the indexes it needs. The set starts them, says which have not
synced (or died: informers retry every API failure themselves, so one that ends has a bug) and
stops them. The Manager and the CSI-side Resolver both hold one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping

from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.informer import Informer, Resource, Transform, WatchSettings
from reconciler.k8s.store import Indexer
from reconciler.k8s.tasks import cancel_and_wait

log = logging.getLogger(__name__)

InformerKey = tuple[Resource, str | None, str | None, str | None]


class InformerSet:
    def __init__(self, api_client: ApiClient, settings: WatchSettings | None = None) -> None:
        self.api_client = api_client
        self.settings = settings or WatchSettings()
        self._informers: dict[InformerKey, Informer] = {}
        self._tasks: dict[Informer, asyncio.Task[None]] = {}

    def __iter__(self) -> Iterator[Informer]:
        return iter(self._informers.values())

    def informer(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, Indexer] | None = None,
        transform: Transform | None = None,
    ) -> Informer:
        """The informer of these objects: made on first use, shared after (before `start`).

        ValueError when a second reader asks for another transform: both would see one cache.
        """
        key = (resource, namespace, label_selector, field_selector)
        found = self._informers.get(key)
        if found is None:
            if self._tasks:
                raise RuntimeError("informers are added before the set starts")
            found = Informer(
                self.api_client,
                resource,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                transform=transform,
                settings=self.settings,
            )
            self._informers[key] = found
        elif transform is not found.transform:
            raise ValueError(f"{found!r} is already cached with another transform")
        for name, indexer in (indexers or {}).items():
            found.store.add_indexer(name, indexer)
        return found

    def start(self) -> list[asyncio.Task[None]]:
        """Run every informer in a task of its own; the tasks end only when one dies."""
        if self._tasks:
            raise RuntimeError("the informers were already started")
        self._tasks = {
            informer: asyncio.create_task(informer.run(), name=repr(informer))
            for informer in self._informers.values()
        }
        for task in self._tasks.values():
            task.add_done_callback(_log_death)
        return list(self._tasks.values())

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        await cancel_and_wait(*tasks)

    def has_synced(self) -> bool:
        """Started, every informer has listed, and none has died."""
        return bool(self._tasks) and not self.waiting_for()

    def waiting_for(self) -> list[str]:
        """What keeps the set from being synced, for messages."""
        if not self._tasks:
            return ["the informers to be started"]
        return [
            f"{informer.path} (its watch ended)" if task.done() else informer.path
            for informer, task in self._tasks.items()
            if task.done() or not informer.has_synced()
        ]

    async def wait_synced(self) -> None:
        """Until every informer has listed (bound it with `asyncio.timeout`)."""
        await asyncio.gather(*(informer.wait_synced() for informer in self._informers.values()))


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("informer died", exc_info=task.exception(), extra={"informer": task.get_name()})
