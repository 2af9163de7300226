"""What both reconcilers write to the API server, without one: each status, its conditions and
reasons, the Events, and that an unchanged status is not written again.

The API client is `RecordingApiClient` (tests/unit/conftest.py): it records every request and
answers as the API server would. The informers' stores are filled by hand, and after a write
they are given what the server then holds, as a watch would. Ceph, for the one success path, is
the in-memory store of the journal's unit tests behind a ConnectionPool that hands it out.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from reconciler.cephconn import Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.controllers.clusteridmapping import ClusterIDMappingReconciler
from reconciler.controllers.volumes import VolumeReconciler
from reconciler.errors import SecretNotFound
from reconciler.k8s import KubeObject, TerminalError
from reconciler.kinds import (
    API_VERSION,
    CLUSTER_ID_MAPPINGS,
    VOLUME_HANDLE_HASH_LABEL,
    VOLUME_HANDLE_MAPPINGS,
    volume_handle_hash,
)
from tests.unit.conftest import (
    CSI_NAMESPACE,
    LOCAL,
    UUID,
    RecordingApiClient,
    cluster_id_mapping,
    cluster_id_mapping_reconciler,
    condition,
    csi_config_map,
    handle,
    pv,
    volume_handle_mapping,
    volume_reconciler,
)
from tests.unit.test_regenerate import MemoryCluster

SECRET = "csi-rbd-secret"
SECRET_PATH = f"/api/v1/namespaces/{CSI_NAMESPACE}/secrets/{SECRET}"
#: A well-formed CephX key (the controller refuses anything else before librados sees it).
KEY = "AQCjtAxrXmteLhAAU+Qo+eqJWuNJPZz4uqi+SQ=="
VHM_PATH = VOLUME_HANDLE_MAPPINGS.object_path("pv-1")
#: Another volume's UUID: the handle pv-1 had before it was re-created.
OTHER_UUID = "5a5a5a5a-0000-4000-8000-000000000001"
CIDM_PATH = CLUSTER_ID_MAPPINGS.collection_path()


def secret(user: str = "csi-user", key: str = KEY) -> KubeObject:
    data = {"userID": user, "userKey": key}
    return {
        "metadata": {"name": SECRET, "namespace": CSI_NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def mapped(name: str = "site-a-to-b") -> KubeObject:
    """A Ready ClusterIDMapping of site-a to this site, as its reconciler wrote it."""
    return cluster_id_mapping(
        name,
        "site-a",
        LOCAL,
        {"name": "replicapool"},
        localClusterID=LOCAL,
        remoteClusterID="site-a",
        conditions=[condition(True, "Mapped")],
    )


class OneCluster(ConnectionPool):
    """Hands out one in-memory Ceph cluster, whatever the monitors, and records the credentials."""

    def __init__(self, ceph: MemoryCluster) -> None:
        super().__init__()
        self.ceph = ceph
        self.credentials: list[Credentials] = []

    async def get(self, mon_host: str, credentials: Credentials) -> Any:
        self.credentials.append(credentials)
        return self.ceph


def failed_over(
    api: RecordingApiClient, connections: ConnectionPool | None = None, **settings: Any
) -> VolumeReconciler:
    """site-b's PV controller with ceph-csi's config, a Ready mapping of site-a, and PV pv-1 of
    site-a whose Ceph credentials are in Secret ceph-csi/csi-rbd-secret."""
    reconciler = volume_reconciler(api, connections, **settings)
    reconciler.csi_config.store.upsert(csi_config_map(LOCAL))
    reconciler.cluster_id_mappings.store.upsert(mapped())
    secret_ref = {"name": SECRET, "namespace": CSI_NAMESPACE}
    reconciler.volumes.store.upsert(pv("pv-1", "site-a", controllerExpandSecretRef=secret_ref))
    return reconciler


def seen_by_informer(api: RecordingApiClient, reconciler: VolumeReconciler) -> None:
    """What a watch delivers after the writes: the mapping as the server now holds it."""
    reconciler.volume_handle_mappings.store.upsert(api.object(VHM_PATH))


def condition_of(status: dict[str, Any], kind: str) -> tuple[str, str, str]:
    """(status, reason, message) of the status' condition of type `kind`."""
    [found] = [c for c in status["conditions"] if c["type"] == kind]
    return found["status"], found["reason"], found["message"]


def ready_of(status: dict[str, Any]) -> dict[str, Any]:
    ready: list[dict[str, Any]] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert len(ready) == 1, status
    return ready[0]


# The PV controller -------------------------------------------------------------------------------


async def test_a_missing_secret_is_a_warning_on_the_pv_and_its_mapping_once(
    api: RecordingApiClient,
) -> None:
    reconciler = failed_over(api)
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")

    assert [(r.method, r.path) for r in api.requests] == [
        ("GET", SECRET_PATH),
        ("PATCH", VHM_PATH),  # the object and its status at once: one write
        ("POST", "/api/v1/namespaces/default/events"),
        ("POST", "/api/v1/namespaces/default/events"),
    ]
    mapping = api.object(VHM_PATH)
    assert mapping["spec"] == {"pvName": "pv-1", "volumeHandle": handle("site-a")}
    assert mapping["metadata"]["labels"] == {
        VOLUME_HANDLE_HASH_LABEL: volume_handle_hash(handle("site-a"))
    }
    [owner] = mapping["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("PersistentVolume", "pv-1", "uid-pv-1")
    [status] = api.status_applies()
    assert set(status) == {"conditions"}  # no result, no readySince
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotFound")
    assert ready["message"] == (
        f"Secret {CSI_NAMESPACE}/{SECRET} with the Ceph credentials does not exist"
    )
    events = api.events()
    assert [(e["involvedObject"]["kind"], e["involvedObject"]["name"]) for e in events] == [
        ("PersistentVolume", "pv-1"),
        ("VolumeHandleMapping", "pv-1"),
    ]
    assert {(e["type"], e["reason"], e["message"]) for e in events} == {
        ("Warning", "SecretNotFound", ready["message"])
    }
    assert events[1]["involvedObject"]["apiVersion"] == API_VERSION

    # Retried with backoff: the same outcome writes nothing and posts nothing again.
    seen_by_informer(api, reconciler)
    api.requests.clear()
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")
    assert [(r.method, r.path) for r in api.requests] == [("GET", SECRET_PATH)]


async def test_status_fields_another_field_manager_owns_are_removed_by_one_merge_patch(
    api: RecordingApiClient,
) -> None:
    """A mapping whose status the earlier, two-write version applied through the status
    subresource: that field manager still owns its fields, so an apply that leaves one out
    keeps it. The stale new handle of the PV's earlier handle must go, once."""
    reconciler = failed_over(api)
    earlier_handle = handle("site-a", object_uuid=OTHER_UUID)
    earlier = volume_handle_mapping(
        "pv-1", earlier_handle, newVolumeHandle="0001-stale", conditions=[]
    )
    api.objects[VHM_PATH] = copy.deepcopy(earlier)
    api.foreign_status[VHM_PATH] = {"newVolumeHandle": "0001-stale"}
    reconciler.volume_handle_mappings.store.upsert(earlier)
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")

    assert [(r.method, r.path) for r in api.writes()][:2] == [("PATCH", VHM_PATH)] * 2
    assert "newVolumeHandle" not in api.object(VHM_PATH)["status"]
    assert ready_of(api.object(VHM_PATH)["status"])["reason"] == "SecretNotFound"
    # Held as sent now: the next pass writes nothing.
    seen_by_informer(api, reconciler)
    api.requests.clear()
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")
    assert api.writes() == []


async def test_a_crd_still_with_the_status_subresource_is_named_and_not_retried(
    api: RecordingApiClient,
) -> None:
    """`helm upgrade` does not update CRDs: with the earlier CRD the status of a mapping is
    dropped whatever is written. That is said (a Warning Event, a terminal error), not retried
    for ever with nothing in the status."""
    api.vhm_status_subresource = True
    reconciler = failed_over(api)
    with pytest.raises(TerminalError, match="still has a status subresource; apply crds/"):
        await reconciler.reconcile("pv-1")
    assert "status" not in api.object(VHM_PATH)
    outdated = [e for e in api.events() if e["reason"] == "MappingCRDOutdated"]
    assert [(e["type"], e["involvedObject"]["kind"]) for e in outdated] == [
        ("Warning", "PersistentVolume")
    ]


async def test_a_regenerated_volume_is_ready_and_keeps_its_new_handle_through_an_outage(
    api: RecordingApiClient,
) -> None:
    ceph = MemoryCluster()
    connections = OneCluster(ceph)
    api.add_secret(secret())
    reconciler = failed_over(api, connections)
    assert await reconciler.reconcile("pv-1") is None

    assert connections.credentials == [Credentials("csi-user", KEY)]
    [status] = api.status_applies()
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("True", "JournalRegenerated")
    new_handle = handle(LOCAL, 2)  # the UUID kept, site-b's clusterID and pool ID
    assert ready["message"] == (
        f"{handle('site-a')} stands for {new_handle} here (image replicapool/csi-vol-{UUID})"
    )
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "newVolumeHandle": new_handle,
        "clusterID": LOCAL,
        "pool": "replicapool",
        "poolID": 2,
        "imageName": f"csi-vol-{UUID}",
        "journalPool": "replicapool",
        "radosNamespace": "",
        "clusterIDMappings": ["site-a-to-b"],
        "readySince": ready["lastTransitionTime"],
    }
    events = api.events()
    assert [(e["type"], e["reason"]) for e in events] == [("Normal", "JournalRegenerated")] * 2
    # The condition says what holds; the Event also says what this pass wrote.
    assert events[0]["message"].startswith(ready["message"] + "; wrote csi.volname")
    assert KEY not in repr(api.requests)

    # Converged: a second pass writes nothing to Ceph and nothing to the API server.
    seen_by_informer(api, reconciler)
    api.requests.clear()
    journal = copy.deepcopy(ceph.objects)
    assert await reconciler.reconcile("pv-1") is None
    assert api.writes() == []
    assert copy.deepcopy(ceph.objects) == journal

    # A transient failure of the same handle: the journal is still in place, so the mapping
    # stays Ready (the CSI side and ceph-csi's files keep serving it) and Degraded says what is
    # wrong. (The Secret's credentials are reused for a while: the deletion is seen once they
    # are read again.)
    del api.objects[SECRET_PATH]
    reconciler.credentials.forget(CSI_NAMESPACE, SECRET)
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")
    [outage] = api.status_applies()
    assert ready_of(outage) == ready
    assert condition_of(outage, "Degraded")[:2] == ("True", "SecretNotFound")
    assert outage["newVolumeHandle"] == new_handle
    assert outage["clusterIDMappings"] == ["site-a-to-b"]
    assert outage["readySince"] == ready["lastTransitionTime"]
    assert [(e["type"], e["reason"]) for e in api.events()] == [("Warning", "SecretNotFound")] * 2
    # Retried: the same trouble writes and posts nothing again.
    seen_by_informer(api, reconciler)
    api.requests.clear()
    reconciler.credentials.forget(CSI_NAMESPACE, SECRET)
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")
    assert api.writes() == []
    # Back: Degraded clears; Ready never moved.
    api.add_secret(secret())
    reconciler.credentials.forget(CSI_NAMESPACE, SECRET)
    assert await reconciler.reconcile("pv-1") is None
    [recovered] = api.status_applies()
    assert ready_of(recovered) == ready
    assert condition_of(recovered, "Degraded")[:2] == ("False", "Reconciled")


async def test_an_unmapped_cluster_is_terminal_with_cluster_not_mapped(
    api: RecordingApiClient,
) -> None:
    api.add_secret(secret())
    reconciler = failed_over(api)
    reconciler.cluster_id_mappings.store.delete("site-a-to-b")
    with pytest.raises(TerminalError):
        await reconciler.reconcile("pv-1")
    [status] = api.status_applies()
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("False", "ClusterNotMapped")
    assert ready["message"] == (
        "clusterID 'site-a' is neither local nor mapped: no ClusterIDMapping names it"
    )
    assert [(e["type"], e["reason"]) for e in api.events()] == [("Warning", "ClusterNotMapped")] * 2


async def test_a_dry_run_writes_nothing_to_the_api_server(api: RecordingApiClient) -> None:
    reconciler = failed_over(api, dry_run=True)
    with pytest.raises(SecretNotFound):
        await reconciler.reconcile("pv-1")
    assert api.writes() == []


# The ClusterIDMapping controller ------------------------------------------------------------------


async def reconcile_all(reconciler: ClusterIDMappingReconciler, api: RecordingApiClient) -> None:
    """Reconcile every mapping once, then let the informer see what the server holds."""
    names = reconciler.cluster_id_mappings.store.keys()
    for name in names:
        await reconciler.reconcile(name)
    for name in names:
        reconciler.cluster_id_mappings.store.upsert(api.object(f"{CIDM_PATH}/{name}"))


def with_server(
    api: RecordingApiClient, reconciler: ClusterIDMappingReconciler, obj: KubeObject
) -> None:
    """`obj` created: on the server and in the informer's store."""
    api.objects[f"{CIDM_PATH}/{obj['metadata']['name']}"] = copy.deepcopy(obj)
    reconciler.cluster_id_mappings.store.upsert(obj)


def conditions_of(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


async def test_mappings_that_disagree_are_both_conflicting_with_a_warning_each(
    api: RecordingApiClient,
) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    with_server(
        api,
        reconciler,
        cluster_id_mapping("first", "site-a", LOCAL, {"name": "rbd", "siteAPoolID": 1}),
    )
    with_server(
        api,
        reconciler,
        cluster_id_mapping("second", "site-a", LOCAL, {"name": "rbd", "siteAPoolID": 2}),
    )
    await reconcile_all(reconciler, api)

    statuses = dict(zip(("first", "second"), api.status_applies(), strict=True))
    for name, other in (("first", "second"), ("second", "first")):
        status = statuses[name]
        found = conditions_of(status)
        assert found["Ready"] == ("False", "Conflicting")
        assert found["Conflicting"] == ("True", "Disagrees")
        assert found["CephCSIConfigured"] == ("False", "NotReady")
        message = ready_of(status)["message"]
        assert f"in ClusterIDMapping {other}" in message
        assert message.endswith("neither mapping is used until they agree")
        assert (status["localClusterID"], status["remoteClusterID"]) == (LOCAL, "site-a")
    events = api.events()
    assert [(e["involvedObject"]["name"], e["type"], e["reason"]) for e in events] == [
        ("first", "Warning", "Conflicting"),
        ("second", "Warning", "Conflicting"),
    ]

    # Nothing changed: nothing is applied or posted again.
    api.requests.clear()
    await reconcile_all(reconciler, api)
    assert api.requests == []


async def test_a_mapping_of_this_site_is_mapped_and_learns_both_pool_ids(
    api: RecordingApiClient,
) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    with_server(
        api, reconciler, cluster_id_mapping("a-to-b", "site-a", LOCAL, {"name": "replicapool"})
    )
    # The remote ID from an old handle, the local one from a regeneration's status.
    reconciler.volumes.store.upsert(pv("pv-1", "site-a"))
    reconciler.volume_handle_mappings.store.upsert(
        volume_handle_mapping(
            "pv-1", handle("site-a"), clusterID=LOCAL, pool="replicapool", poolID=5
        )
    )
    await reconcile_all(reconciler, api)

    [status] = api.status_applies()
    assert (status["localClusterID"], status["remoteClusterID"]) == (LOCAL, "site-a")
    assert status["rbdPools"] == [
        {
            "name": "replicapool",
            "localPoolID": 5,
            "localPoolIDSource": "LocalCluster",
            "remotePoolID": 2,
            "remotePoolIDSource": "VolumeHandle",
        }
    ]
    found = conditions_of(status)
    assert found["Ready"] == ("True", "Mapped")
    assert found["Conflicting"] == ("False", "NoConflict")
    # ceph-csi's files are not in the store: the condition names what ceph-csi lacks.
    assert found["CephCSIConfigured"] == ("False", "MissingConfigEntry")
    assert (
        ready_of(status)["message"] == "volume handles of clusterID 'site-a' map to 'site-b' here"
    )
    [event] = api.events()
    assert (event["type"], event["reason"]) == ("Normal", "Mapped")


async def test_a_mapping_naming_neither_site_here_is_not_local(api: RecordingApiClient) -> None:
    reconciler = cluster_id_mapping_reconciler(api)
    with_server(api, reconciler, cluster_id_mapping("x-to-y", "site-x", "site-y", {"name": "rbd"}))
    await reconcile_all(reconciler, api)
    [status] = api.status_applies()
    assert (status["localClusterID"], status["remoteClusterID"], status["rbdPools"]) == ("", "", [])
    assert conditions_of(status)["Ready"] == ("False", "NotLocal")
    assert ready_of(status)["message"] == (
        "neither 'site-x' nor 'site-y' is this site's clusterID 'site-b'"
    )
    [event] = api.events()
    assert (event["type"], event["reason"]) == ("Warning", "NotLocal")
