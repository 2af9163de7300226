"""Resolution from cached state, without an API server: the order mapping -> cluster mapping ->
local, what makes a mapping unusable, and that "not found" names everything it looked for; then
the resolver's informers against a scripted list/watch server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from reconciler.csi import (
    LocalClusterNotConfigured,
    ResolvedVolume,
    Resolver,
    ResolverUnavailable,
    VolumeNotFound,
)
from reconciler.csi.resolution import (
    ENTRY,
    HANDLE_INDEX,
    ClusterRoutes,
    LocalClusters,
    index_trimmed_handle,
    resolve,
    trim_handle_mapping,
)
from reconciler.errors import InvalidHandle
from reconciler.handle import VolumeHandle
from reconciler.k8s import Informer, KubeObject, Store
from reconciler.kinds import VOLUME_HANDLE_MAPPINGS
from tests.support.polling import async_wait_for
from tests.unit.conftest import UUID, cluster_id_mapping, condition, volume_handle_mapping
from tests.unit.listwatch_server import ListWatchServer, serving

OLD = VolumeHandle("site-a", 2, UUID).encode()
NEW = VolumeHandle("site-b", 5, UUID).encode()
SOURCE = "ConfigMap ceph-csi/ceph-csi-config"


def ready_condition(status: bool = True, reason: str = "Regenerated") -> dict[str, Any]:
    return condition(status, reason, "why")


def handle_mapping(
    name: str, old: str = OLD, *, condition: dict[str, Any] | None = None, **status: Any
) -> KubeObject:
    """A VolumeHandleMapping as the PV controller writes it: Ready, `old` stands for NEW."""
    return volume_handle_mapping(
        name,
        old,
        resource_version="7",
        **{
            "newVolumeHandle": NEW,
            "clusterID": "site-b",
            "pool": "replicapool",
            "poolID": 5,
            "imageName": f"csi-vol-{UUID}",
            "journalPool": "replicapool",
            "radosNamespace": "",
            "conditions": [condition or ready_condition()],
            **status,
        },
    )


def cluster_mapping(
    name: str,
    *pools: dict[str, Any],
    remote: str = "site-a",
    condition: dict[str, Any] | None = None,
    conflicting: bool = False,
) -> KubeObject:
    """A ClusterIDMapping of `remote` to site-b as its reconciler writes it (status `pools`)."""
    return cluster_id_mapping(
        name,
        remote,
        "site-b",
        localClusterID="site-b",
        remoteClusterID=remote,
        rbdPools=list(pools),
        conditions=[
            condition or ready_condition(reason="Mapped"),
            {**ready_condition(conflicting, "Disagrees"), "type": "Conflicting"},
        ],
    )


def csi_config(*cluster_ids: str, namespace: str = "") -> LocalClusters:
    entries = [
        {"clusterID": c, "monitors": [f"{c}:6789"], "rbd": {"radosNamespace": namespace}}
        for c in cluster_ids
    ]
    config_map = {
        "metadata": {"name": "ceph-csi-config"},
        "data": {"config.json": json.dumps(entries)},
    }
    return LocalClusters.from_config_map(SOURCE, config_map)


def store_of(*mappings: KubeObject) -> Store:
    store = Store({HANDLE_INDEX: index_trimmed_handle})
    for obj in mappings:
        store.upsert(trim_handle_mapping(obj))
    return store


POOL = {"name": "replicapool", "localPoolID": 5, "remotePoolID": 2}


def test_a_ready_handle_mapping_is_the_answer() -> None:
    found = resolve(
        OLD,
        store_of(handle_mapping("pv-1", radosNamespace="ns1")),
        ClusterRoutes(),
        csi_config("site-b"),
    )
    assert found == ResolvedVolume(
        volume_handle=NEW,
        how="mapping",
        via="VolumeHandleMapping pv-1",
        cluster_id="site-b",
        monitors=("site-b:6789",),
        rados_namespace="ns1",
        mirror_daemon_count=1,
        pool="replicapool",
        pool_id=5,
        image_name=f"csi-vol-{UUID}",
        journal_pool="replicapool",
    )


def test_the_cache_keeps_only_what_resolving_reads() -> None:
    trimmed = trim_handle_mapping(handle_mapping("pv-1"))
    assert trimmed["metadata"] == {"name": "pv-1", "resourceVersion": "7"}
    assert set(trimmed) == {"metadata", ENTRY}


def test_a_cluster_mapping_computes_the_handle_keeping_the_uuid() -> None:
    mappings = ClusterRoutes.from_objects(
        [
            cluster_mapping("m2-knows-the-pool", POOL),
            cluster_mapping("m1-other-pool", {**POOL, "name": "other", "remotePoolID": 9}),
        ]
    )
    found = resolve(OLD, store_of(), mappings, csi_config("site-b"))
    assert (found.how, found.via, found.volume_handle) == (
        "cluster-mapping",
        "ClusterIDMapping m2-knows-the-pool",
        NEW,
    )
    assert (found.pool, found.pool_id, found.image_name) == ("replicapool", 5, f"csi-vol-{UUID}")
    assert found.journal_pool is None


@pytest.mark.parametrize(
    ("mapping", "why"),
    [
        (
            handle_mapping("pv-1", condition=ready_condition(False, "ImageNotPrimary")),
            "VolumeHandleMapping pv-1 is not Ready (ImageNotPrimary: why)",
        ),
        (
            handle_mapping("pv-1", observedGeneration=0),
            "VolumeHandleMapping pv-1 has a status for an older generation",
        ),
        (
            handle_mapping("pv-1", newVolumeHandle=""),
            "VolumeHandleMapping pv-1 is Ready but its status lacks newVolumeHandle",
        ),
    ],
    ids=["not-ready", "stale", "incomplete"],
)
def test_an_unusable_handle_mapping_falls_through_and_is_named(
    mapping: KubeObject, why: str
) -> None:
    store = store_of(mapping)
    mappings = ClusterRoutes.from_objects([cluster_mapping("m1", POOL)])
    assert resolve(OLD, store, mappings, csi_config("site-b")).how == "cluster-mapping"
    with pytest.raises(VolumeNotFound) as raised:
        resolve(OLD, store, ClusterRoutes(), csi_config("site-b"))
    assert any(m.startswith(why) for m in raised.value.missing), raised.value.missing


def test_not_found_names_every_mapping_it_tried_and_the_config() -> None:
    mappings = ClusterRoutes.from_objects(
        [
            cluster_mapping("m1-no-pool", {**POOL, "remotePoolID": 3}),
            cluster_mapping("m2-no-local-id", {"name": "replicapool", "remotePoolID": 2}),
            cluster_mapping("m3-conflicting", POOL, conflicting=True),
            cluster_mapping("m4-not-ready", POOL, condition=ready_condition(False, "NotLocal")),
        ]
    )
    with pytest.raises(VolumeNotFound) as raised:
        resolve(OLD, store_of(), mappings, csi_config("site-b"))
    assert raised.value.handle == OLD
    assert raised.value.missing == (
        "no VolumeHandleMapping names it",
        "ClusterIDMapping m1-no-pool maps clusterID 'site-a' but not its pool ID 2",
        "ClusterIDMapping m2-no-local-id does not know the local ID of pool 'replicapool' yet",
        "ClusterIDMapping m3-conflicting is Conflicting: why",
        "ClusterIDMapping m4-not-ready is not Ready (NotLocal: why)",
        f"{SOURCE} has no entry for clusterID 'site-a'",
    )


def test_an_unknown_cluster_without_config_is_not_found_saying_so() -> None:
    no_config = LocalClusters.from_config_map(SOURCE, None)
    with pytest.raises(VolumeNotFound) as raised:
        resolve(OLD, store_of(), ClusterRoutes(), no_config)
    assert raised.value.missing == (
        "no VolumeHandleMapping names it",
        "no ClusterIDMapping names clusterID 'site-a'",
        f"{SOURCE} is unusable: it does not exist",
    )


def test_a_local_handle_is_used_as_is_with_the_pool_name_when_a_mapping_knows_it() -> None:
    local = VolumeHandle("site-b", 5, UUID).encode()
    found = resolve(local, store_of(), ClusterRoutes(), csi_config("site-b", namespace="ns"))
    assert (found.how, found.volume_handle, found.via) == ("local", local, SOURCE)
    assert (found.cluster_id, found.rados_namespace, found.pool, found.pool_id) == (
        "site-b",
        "ns",
        None,
        5,
    )
    mappings = ClusterRoutes.from_objects([cluster_mapping("m1", POOL)])
    assert resolve(local, store_of(), mappings, csi_config("site-b")).pool == "replicapool"


def test_a_mapping_to_a_cluster_the_config_lacks_is_not_not_found() -> None:
    with pytest.raises(LocalClusterNotConfigured) as raised:
        resolve(OLD, store_of(handle_mapping("pv-1")), ClusterRoutes(), csi_config("site-c"))
    assert raised.value.retryable
    assert "has no entry for clusterID 'site-b'" in str(raised.value)
    broken = LocalClusters.from_config_map(
        SOURCE, {"metadata": {"name": "x"}, "data": {"config.json": "[{"}}
    )
    with pytest.raises(LocalClusterNotConfigured, match="is unusable: it is invalid"):
        resolve(OLD, store_of(handle_mapping("pv-1")), ClusterRoutes(), broken)


def test_ready_handle_mappings_that_disagree_are_used_for_neither() -> None:
    other = VolumeHandle("site-b", 6, UUID).encode()
    store = store_of(handle_mapping("pv-1"), handle_mapping("pv-2", newVolumeHandle=other))
    with pytest.raises(VolumeNotFound, match="map it to different handles"):
        resolve(OLD, store, ClusterRoutes(), csi_config("site-b"))


def test_a_malformed_handle_no_mapping_names_is_invalid() -> None:
    with pytest.raises(InvalidHandle):
        resolve("not-a-handle", store_of(), ClusterRoutes(), csi_config("site-b"))


async def test_the_informer_stores_mappings_trimmed_and_indexed_through_changes() -> None:
    """The transform applies to listed objects and to watch events alike."""
    server = ListWatchServer()
    listed = handle_mapping("pv-1", condition=ready_condition(False, "ImageNotPrimary"))
    server.list_page([listed], rv="7")
    now_ready = handle_mapping("pv-1")
    now_ready["metadata"]["resourceVersion"] = "8"
    server.watch({"type": "MODIFIED", "object": now_ready})
    async with serving(server) as api:
        informer = Informer(
            api,
            VOLUME_HANDLE_MAPPINGS,
            indexers={HANDLE_INDEX: index_trimmed_handle},
            transform=trim_handle_mapping,
        )
        task = asyncio.create_task(informer.run())
        try:
            await async_wait_for(
                lambda: informer.last_resource_version == "8", 10, "the MODIFIED event"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    [stored] = informer.store.by_index(HANDLE_INDEX, OLD)
    assert set(stored) == {"metadata", ENTRY}
    assert stored[ENTRY].why_unusable == ""
    assert stored[ENTRY].new_volume_handle == NEW


async def test_a_dead_informer_makes_the_resolver_unavailable_not_stale() -> None:
    server = ListWatchServer()
    server.list_page([], rv="1")
    # An object without metadata is a bug no retry fixes: the informer's task ends.
    server.watch({"type": "ADDED", "object": {"kind": "Broken"}})
    async with serving(server) as api, Resolver(api, csi_config_namespace="ns") as resolver:
        await asyncio.wait_for(resolver.wait_synced(), 10)
        await async_wait_for(
            lambda: not resolver.has_synced(), 10, "the broken watch event to end the informer"
        )
        with pytest.raises(ResolverUnavailable, match="its watch ended"):
            await resolver.resolve(OLD)
