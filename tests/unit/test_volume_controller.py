"""The PV controller's decisions that need no API server: which PVs it takes, which PVs a
ClusterIDMapping change re-queues, and that a local PV costs no I/O at all.

The informers here are never run: their stores are filled by hand. The API client is one whose
every call fails the test, so "no I/O" is checked, not assumed.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from reconciler.controllers.volumes import VolumeReconciler
from reconciler.k8s import Event, EventType, KubeObject
from reconciler.kinds import RETRY_ANNOTATION, VHM_HANDLE_INDEX, pv_trimmer
from reconciler.volume import CSIVolume
from tests.unit.conftest import (
    LOCAL,
    NoCalls,
    cluster_id_mapping,
    condition,
    handle,
    pv,
    volume_handle_mapping,
    volume_reconciler,
)


def mapping(name: str, site_a: str, *, ready: bool | None, generation: int = 1) -> KubeObject:
    """A ClusterIDMapping of `site_a` to this site: not reconciled yet (`ready` None), Ready, or
    not Ready (Conflicting)."""
    if ready is None:
        return cluster_id_mapping(name, site_a, generation=generation)
    return cluster_id_mapping(
        name,
        site_a,
        generation=generation,
        localClusterID=LOCAL,
        remoteClusterID=site_a,
        conditions=[condition(ready, "Mapped" if ready else "Conflicting")],
    )


@pytest.fixture
async def reconciler() -> AsyncIterator[VolumeReconciler]:
    api = NoCalls()
    reconciler = volume_reconciler(api)
    for obj in (pv("a-1", "site-a"), pv("a-2", "site-a"), pv("c-1", "site-c"), pv("b-1", LOCAL)):
        reconciler.volumes.store.upsert(obj)
    yield reconciler
    await api.close()


@pytest.mark.parametrize(
    ("change", "taken"),
    [
        ({}, True),
        ({"driver": "other.csi.example.com"}, False),
        ({"volumeAttributes": {"pool": "p", "staticVolume": "true"}}, False),
        # ceph-csi compares with "true" exactly: it regenerates this one, and so do we.
        ({"volumeAttributes": {"pool": "p", "staticVolume": "True"}}, True),
        ({"claimRef": None}, False),
        ({"deletionTimestamp": "2026-01-01T00:00:00Z"}, False),
    ],
    ids=["taken", "other-driver", "static", "static-not-exactly", "unclaimed", "deleting"],
)
def test_which_pvs_are_taken(
    reconciler: VolumeReconciler, change: dict[str, Any], taken: bool
) -> None:
    obj = pv("x", "site-a")
    for key, value in change.items():
        if key == "claimRef":
            del obj["spec"]["claimRef"]
        elif key == "deletionTimestamp":
            obj["metadata"][key] = value
        else:
            obj["spec"]["csi"][key] = value
    assert reconciler.selected(obj) is taken


async def test_a_local_pv_costs_no_api_call_and_no_ceph_io(reconciler: VolumeReconciler) -> None:
    assert await reconciler.reconcile("b-1") is None
    assert len(reconciler.connections) == 0


async def test_a_pv_waits_without_a_condition_while_its_mapping_is_being_reconciled(
    reconciler: VolumeReconciler,
) -> None:
    pending = mapping("m", "site-a", ready=None)
    reconciler.cluster_id_mappings.store.upsert(pending)
    # No API call (NoCalls would raise) and no requeue: the status write's event brings it back.
    assert await reconciler.reconcile("a-1") is None
    written = mapping("m", "site-a", ready=True)
    assert reconciler.volumes_of_mapping(event(EventType.MODIFIED, written, pending)) == [
        "a-1",
        "a-2",
    ]
    # A pending spec edit of a mapping already written waits for its new status, too.
    edited = mapping("m", "site-a", ready=True, generation=2)
    rewritten = {**edited, "status": {**edited["status"], "observedGeneration": 2}}
    assert reconciler.volumes_of_mapping(event(EventType.MODIFIED, edited, written)) == []
    assert reconciler.volumes_of_mapping(event(EventType.MODIFIED, rewritten, edited)) == [
        "a-1",
        "a-2",
    ]


def event(kind: EventType, obj: KubeObject, old: KubeObject | None = None) -> Event:
    return Event(kind, obj["metadata"]["name"], obj, old)


def test_a_mapping_change_re_queues_only_the_pvs_of_its_remote_cluster(
    reconciler: VolumeReconciler,
) -> None:
    before = mapping("m", "site-a", ready=False)
    after = mapping("m", "site-a", ready=True)
    assert reconciler.volumes_of_mapping(event(EventType.MODIFIED, after, before)) == [
        "a-1",
        "a-2",
    ]
    assert reconciler.volumes_of_mapping(event(EventType.DELETED, after, after)) == ["a-1", "a-2"]


def test_a_mapping_change_that_changes_nothing_for_pvs_re_queues_none(
    reconciler: VolumeReconciler,
) -> None:
    ready = mapping("m", "site-a", ready=True)
    learnt = copy.deepcopy(ready)
    learnt["status"]["rbdPools"] = [{"name": "replicapool", "remotePoolID": 1}]
    assert reconciler.volumes_of_mapping(event(EventType.MODIFIED, learnt, ready)) == []
    # A spec edit not yet reconciled: its status is stale and not acted on.
    edited = mapping("m", "site-a", ready=True, generation=2)
    assert reconciler.volumes_of_mapping(event(EventType.MODIFIED, edited, ready)) == []


def test_a_mapping_is_found_by_old_handle_in_one_index_lookup(
    reconciler: VolumeReconciler,
) -> None:
    store = reconciler.volume_handle_mappings.store
    for name, cluster_id in (("a-1", "site-a"), ("c-1", "site-c")):
        store.upsert({"metadata": {"name": name}, "spec": {"volumeHandle": handle(cluster_id)}})
    [found] = store.by_index(VHM_HANDLE_INDEX, handle("site-c"))
    assert found["metadata"]["name"] == "c-1"
    assert store.by_index(VHM_HANDLE_INDEX, handle("site-z")) == []


def test_the_pv_transform_keeps_what_the_controllers_read_and_little_else(
    reconciler: VolumeReconciler,
) -> None:
    full = pv("a-9", "site-a", controllerExpandSecretRef={"name": "s", "namespace": "ns"})
    full["metadata"] |= {"managedFields": [{"manager": "kubectl"}], "annotations": {"a": "b"}}
    full["spec"] |= {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}
    full["spec"]["claimRef"] |= {"uid": "u", "resourceVersion": "7"}
    full["status"] = {"phase": "Available"}
    trim = pv_trimmer("rbd.csi.ceph.com")
    kept = trim(copy.deepcopy(full))
    assert CSIVolume.from_pv(kept) == CSIVolume.from_pv(full)
    assert reconciler.selected(kept) and kept["metadata"]["uid"] == "uid-a-9"
    assert "status" not in kept and "managedFields" not in kept["metadata"]

    other = copy.deepcopy(full)
    other["spec"]["csi"]["driver"] = "other.csi.example.com"
    assert trim(other) == {
        "metadata": {"name": "a-9", "uid": "uid-a-9", "resourceVersion": "1"},
        "spec": {"csi": {"driver": "other.csi.example.com"}},
    }


def test_a_pv_change_outside_the_cached_fields_queues_nothing(
    reconciler: VolumeReconciler,
) -> None:
    trim = pv_trimmer("rbd.csi.ceph.com")
    before = pv("a-1", "site-a")
    bound = copy.deepcopy(before)
    bound["metadata"]["resourceVersion"] = "2"
    bound["status"] = {"phase": "Bound"}
    assert reconciler.volume_if_changed(event(EventType.MODIFIED, trim(bound), trim(before))) == []
    moved = copy.deepcopy(bound)
    moved["spec"]["claimRef"]["namespace"] = "apps-v2"
    changed = event(EventType.MODIFIED, trim(moved), trim(before))
    assert reconciler.volume_if_changed(changed) == ["a-1"]
    assert reconciler.volume_if_changed(event(EventType.ADDED, trim(before))) == ["a-1"]
    kicked = copy.deepcopy(bound)
    kicked["metadata"]["annotations"] = {RETRY_ANNOTATION: "1", "kubectl.kubernetes.io/x": "y"}
    assert trim(kicked)["metadata"]["annotations"] == {RETRY_ANNOTATION: "1"}
    assert reconciler.volume_if_changed(event(EventType.MODIFIED, trim(kicked), trim(bound))) == [
        "a-1"
    ]


def ready_mapping(name: str, volume_handle: str, *, ready: bool = True) -> KubeObject:
    return volume_handle_mapping(name, volume_handle, conditions=[condition(ready)])


def test_pending_volumes_are_remote_pvs_without_a_ready_mapping_for_their_handle(
    reconciler: VolumeReconciler,
) -> None:
    def pending() -> list[str]:
        return sorted(pv["metadata"]["name"] for pv in reconciler.pending_volumes())

    assert pending() == ["a-1", "a-2", "c-1"]  # b-1 is local: nothing to remap
    store = reconciler.volume_handle_mappings.store
    store.upsert(ready_mapping("a-1", handle("site-a")))
    store.upsert(ready_mapping("a-2", handle("site-a"), ready=False))
    store.upsert(ready_mapping("c-1", handle("site-c", pool_id=9)))  # an earlier handle
    assert pending() == ["a-2", "c-1"]


def test_a_mapping_of_the_local_clusterid_to_itself_re_queues_the_local_pvs(
    reconciler: VolumeReconciler,
) -> None:
    within = mapping("rook", LOCAL, ready=True)
    within["status"]["remoteClusterID"] = LOCAL
    assert reconciler.volumes_of_mapping(event(EventType.ADDED, within)) == ["b-1"]
