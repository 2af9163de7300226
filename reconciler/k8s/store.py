"""The informer's in-memory cache: objects as the API server sent them (JSON dicts), by key,
with indexes so lookups by a field never list."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

KubeObject = dict[str, Any]
# An indexer maps an object to the index values it is found under (e.g. its volume handle).
Indexer = Callable[[KubeObject], Iterable[str]]


def object_key(obj: Mapping[str, Any]) -> str:
    """client-go's MetaNamespaceKeyFunc: "namespace/name", or "name" for cluster-scoped kinds."""
    metadata = obj["metadata"]
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata['name']}" if namespace else str(metadata["name"])


def split_key(key: str) -> tuple[str | None, str]:
    """(namespace, name) of a key made by `object_key`."""
    namespace, _, name = key.rpartition("/")
    return (namespace or None, name)


def resource_version(obj: Mapping[str, Any]) -> str:
    return str(obj["metadata"].get("resourceVersion", ""))


class Store:
    def __init__(self, indexers: Mapping[str, Indexer] | None = None) -> None:
        self._indexers = dict(indexers or {})
        self._objects: dict[str, KubeObject] = {}
        # index name -> index value -> keys
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}

    def add_indexer(self, name: str, indexer: Indexer) -> None:
        """Index by `indexer` too (objects already stored included). ValueError if `name` is
        taken by another indexer: two readers of one cache must agree on what an index means."""
        existing = self._indexers.get(name)
        if existing is not None:
            if existing is not indexer:
                raise ValueError(f"index {name!r} already exists with another indexer")
            return
        self._indexers[name] = indexer
        index: dict[str, set[str]] = {}
        for key, obj in self._objects.items():
            for value in indexer(obj):
                index.setdefault(value, set()).add(key)
        self._indices[name] = index

    def get(self, key: str) -> KubeObject | None:
        return self._objects.get(key)

    def keys(self) -> list[str]:
        return list(self._objects)

    def objects(self) -> list[KubeObject]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def by_index(self, index: str, value: str) -> list[KubeObject]:
        """Objects whose indexer `index` yields `value`. KeyError for an unknown index."""
        return [self._objects[key] for key in sorted(self._indices[index].get(value, ()))]

    def index_values(self, index: str) -> list[str]:
        """Every value indexer `index` yields for some object. KeyError for an unknown index."""
        return list(self._indices[index])

    def upsert(self, obj: KubeObject) -> KubeObject | None:
        """Store `obj`; returns the object it replaced, if any."""
        key = object_key(obj)
        old = self._objects.get(key)
        if old is not None:
            self._unindex(key, old)
        self._objects[key] = obj
        self._index(key, obj)
        return old

    def delete(self, key: str) -> KubeObject | None:
        old = self._objects.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _index(self, key: str, obj: KubeObject) -> None:
        for name, indexer in self._indexers.items():
            for value in indexer(obj):
                self._indices[name].setdefault(value, set()).add(key)

    def _unindex(self, key: str, obj: KubeObject) -> None:
        for name, indexer in self._indexers.items():
            index = self._indices[name]
            for value in indexer(obj):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]
