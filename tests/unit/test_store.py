"""The informer's cache: keys like client-go's and indexes that follow updates and deletes."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.k8s.store import KubeObject, Store, object_key, split_key


def config_map(name: str, namespace: str | None = "ns", **labels: str) -> KubeObject:
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"metadata": metadata}


def by_team(obj: KubeObject) -> list[str]:
    team = obj["metadata"]["labels"].get("team")
    return [team] if team else []


def test_keys_are_namespace_slash_name_or_name_alone() -> None:
    assert object_key(config_map("a")) == "ns/a"
    assert object_key(config_map("pv-1", namespace=None)) == "pv-1"
    assert split_key("ns/a") == ("ns", "a")
    assert split_key("pv-1") == (None, "pv-1")


def test_index_follows_updates_and_deletes() -> None:
    store = Store({"team": by_team})
    store.upsert(config_map("a", team="red"))
    store.upsert(config_map("b", team="red"))
    store.upsert(config_map("c"))
    assert [object_key(o) for o in store.by_index("team", "red")] == ["ns/a", "ns/b"]

    old = store.upsert(config_map("a", team="blue"))
    assert old is not None and old["metadata"]["labels"] == {"team": "red"}
    assert [object_key(o) for o in store.by_index("team", "red")] == ["ns/b"]
    assert [object_key(o) for o in store.by_index("team", "blue")] == ["ns/a"]

    assert store.delete("ns/b") is not None
    assert store.by_index("team", "red") == []
    assert store.delete("ns/b") is None
    assert sorted(store.keys()) == ["ns/a", "ns/c"]
    assert len(store) == 2 and "ns/c" in store


def test_unknown_index_is_an_error() -> None:
    with pytest.raises(KeyError):
        Store().by_index("nope", "x")
