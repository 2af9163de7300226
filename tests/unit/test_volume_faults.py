"""The PV controller under faults and bad input, without an API server or Ceph: what each ends as
on the VolumeHandleMapping, what it keeps serving, and when it is tried again.

The API client is tests/unit/conftest.py's RecordingApiClient (`Refusing` below makes it answer
some requests as a real API server refuses them); Ceph is the journal's in-memory store behind a
pool that hands it out (tests/unit/test_reconcile_status.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any

import pytest

from reconciler.controllers.volumes import (
    RETRY_CAP,
    VolumeReconciler,
    volume_rate_limiter,
)
from reconciler.errors import CephUnavailable, CSIConfigUnavailable
from reconciler.k8s import Event, EventType, KubeObject, TerminalError
from reconciler.kinds import VOLUME_HANDLE_HASH_LABEL, volume_handle_hash
from tests.unit.conftest import (
    CSI_NAMESPACE,
    LOCAL,
    UUID,
    Answer,
    RecordingApiClient,
    cluster_id_mapping,
    condition,
    csi_config_map,
    handle,
    pv,
)
from tests.unit.test_reconcile_status import (
    SECRET,
    SECRET_PATH,
    VHM_PATH,
    OneCluster,
    condition_of,
    failed_over,
    mapped,
    ready_of,
    secret,
    seen_by_informer,
)
from tests.unit.test_regenerate import MemoryCluster


class Refusing(RecordingApiClient):
    """Answers GET of `forbidden` paths with 403 and applies of `invalid` paths with 422, as the
    API server does when RBAC denies a read and when a CRD's schema refuses an object."""

    def __init__(self) -> None:
        super().__init__()
        self.forbidden: set[str] = set()
        self.invalid: set[str] = set()

    async def call_api(self, resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        path = resource_path.partition("?")[0]
        if method == "GET" and path in self.forbidden:
            return Answer(403, {"kind": "Status", "code": 403, "message": "secrets is forbidden"})
        if method == "PATCH" and path in self.invalid:
            message = "spec.volumeHandle: Too long: may not be more than 4096 bytes"
            return Answer(422, {"kind": "Status", "code": 422, "message": message})
        return await super().call_api(resource_path, method, *args, **kwargs)


@pytest.fixture
async def refusing() -> Any:
    client = Refusing()
    try:
        yield client
    finally:
        await client.close()


def regenerated(api: RecordingApiClient, **settings: Any) -> tuple[VolumeReconciler, MemoryCluster]:
    """pv-1 regenerated and its mapping Ready, as the informer then sees it."""
    ceph = MemoryCluster()
    api.add_secret(secret())
    reconciler = failed_over(api, OneCluster(ceph), **settings)
    return reconciler, ceph


async def converge(api: RecordingApiClient, reconciler: VolumeReconciler) -> dict[str, Any]:
    assert await reconciler.reconcile("pv-1") is None
    seen_by_informer(api, reconciler)
    api.requests.clear()
    status: dict[str, Any] = api.object(VHM_PATH)["status"]
    assert ready_of(status)["status"] == "True"
    return status


# item 7: bad input gets its reason, a Warning, and is not retried forever ------------------------


async def test_a_secret_the_controller_may_not_read_is_terminal_with_its_reason(
    refusing: Refusing,
) -> None:
    refusing.forbidden.add(SECRET_PATH)
    reconciler = failed_over(refusing)
    with pytest.raises(TerminalError, match="may not read Secret"):
        await reconciler.reconcile("pv-1")
    [status] = refusing.status_applies()
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("False", "SecretForbidden")
    assert ready["message"] == (
        f"the controller may not read Secret {CSI_NAMESPACE}/{SECRET} (403 Forbidden): its Role "
        "grants the Secrets of ceph-csi's namespace only"
    )
    assert {(e["type"], e["reason"]) for e in refusing.events()} == {("Warning", "SecretForbidden")}


async def test_a_handle_too_long_for_a_mapping_is_recorded_without_it(
    api: RecordingApiClient,
) -> None:
    reconciler = failed_over(api)
    long_handle = "0001-" + "x" * 5000
    obj = reconciler.volumes.store.get("pv-1")
    assert obj is not None
    obj["spec"]["csi"]["volumeHandle"] = long_handle
    with pytest.raises(TerminalError):
        await reconciler.reconcile("pv-1")
    assert [r.method for r in api.requests if r.method == "GET"] == []  # no Secret, no Ceph
    mapping = api.object(VHM_PATH)
    # What the API server would refuse is not sent: the spec has no handle, its label the hash.
    assert mapping["spec"] == {"pvName": "pv-1"}
    assert mapping["metadata"]["labels"] == {
        VOLUME_HANDLE_HASH_LABEL: volume_handle_hash(long_handle)
    }
    ready = ready_of(mapping["status"])
    assert (ready["status"], ready["reason"]) == ("False", "VolumeHandleTooLong")
    assert "5005 bytes long" in ready["message"] and len(ready["message"]) < 400
    assert long_handle not in json.dumps(api.requests, default=str)
    assert {(e["type"], e["reason"]) for e in api.events()} == {("Warning", "VolumeHandleTooLong")}


async def test_a_mapping_the_api_server_refuses_is_a_warning_and_terminal(
    refusing: Refusing,
) -> None:
    refusing.invalid.add(VHM_PATH)
    reconciler = failed_over(refusing)
    with pytest.raises(TerminalError, match="refused its VolumeHandleMapping"):
        await reconciler.reconcile("pv-1")
    [event] = refusing.events()
    assert (event["type"], event["reason"]) == ("Warning", "MappingRejected")
    assert event["involvedObject"]["kind"] == "PersistentVolume"


# item 4: Ready stays Ready through trouble that is not about the journal --------------------------


async def test_ceph_unreachable_keeps_a_ready_mapping_ready_and_degraded(
    api: RecordingApiClient,
) -> None:
    reconciler, ceph = regenerated(api)
    before = await converge(api, reconciler)

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise CephUnavailable("monitors do not answer")

    ceph.omap_get = unreachable  # type: ignore[method-assign]
    with pytest.raises(CephUnavailable):
        await reconciler.reconcile("pv-1")
    [status] = api.status_applies()
    assert ready_of(status) == ready_of(before)
    assert condition_of(status, "Degraded")[:2] == ("True", "CephUnavailable")
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        k: v for k, v in before.items() if k != "conditions"
    }


async def test_a_later_conflict_degrades_a_ready_mapping_and_blocks_new_ones(
    api: RecordingApiClient,
) -> None:
    reconciler, _ = regenerated(api)
    await converge(api, reconciler)
    # Its ClusterIDMapping conflicts now, and keeps serving the volumes it served.
    serving = mapped()
    serving["status"]["conditions"] = [
        condition(True, "Conflicting"),
        condition(True, "Disagrees", "pool 'replicapool'...", condition_type="Conflicting"),
    ]
    reconciler.cluster_id_mappings.store.upsert(serving)
    with pytest.raises(TerminalError):
        await reconciler.reconcile("pv-1")
    [status] = api.status_applies()
    assert ready_of(status)["reason"] == "JournalRegenerated"
    assert condition_of(status, "Degraded")[:2] == ("True", "MappingConflicting")
    # A PV not remapped yet is not regenerated through it.
    secret_ref = {"name": SECRET, "namespace": CSI_NAMESPACE}
    other = pv("pv-2", "site-a", controllerExpandSecretRef=secret_ref)
    other["spec"]["csi"]["volumeHandle"] = handle(
        "site-a", 2, "1c23de1c-18fb-11eb-a903-0242ac110005"
    )
    reconciler.volumes.store.upsert(other)
    api.requests.clear()
    with pytest.raises(TerminalError):
        await reconciler.reconcile("pv-2")
    [fresh] = api.status_applies()
    assert (ready_of(fresh)["status"], ready_of(fresh)["reason"]) == ("False", "MappingConflicting")


async def test_a_fact_about_the_volume_still_makes_it_not_ready(api: RecordingApiClient) -> None:
    reconciler, _ = regenerated(api)
    await converge(api, reconciler)
    reconciler.cluster_id_mappings.store.delete("site-a-to-b")  # a human removed the mapping
    with pytest.raises(TerminalError):
        await reconciler.reconcile("pv-1")
    [status] = api.status_applies()
    assert (ready_of(status)["status"], ready_of(status)["reason"]) == (
        "False",
        "ClusterNotMapped",
    )
    assert "Degraded" not in {c["type"] for c in status["conditions"]}


# item 4/10: recovery is not waited out; a stuck call does not pin the worker --------------------


async def test_pvs_that_waited_for_ceph_are_requeued_when_it_answers(
    api: RecordingApiClient,
) -> None:
    reconciler, ceph = regenerated(api)
    requeued: list[list[str]] = []
    reconciler.requeue = lambda keys: requeued.append(list(keys))
    real = ceph.omap_get

    async def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise CephUnavailable("monitors do not answer")

    ceph.omap_get = unreachable  # type: ignore[method-assign]
    with pytest.raises(CephUnavailable):
        await reconciler.reconcile("pv-1")
    assert requeued == []
    ceph.omap_get = real  # type: ignore[method-assign]
    secret_ref = {"name": SECRET, "namespace": CSI_NAMESPACE}
    other = pv("pv-2", "site-a", controllerExpandSecretRef=secret_ref)
    other["spec"]["csi"]["volumeHandle"] = handle(
        "site-a", 2, "1c23de1c-18fb-11eb-a903-0242ac110005"
    )
    reconciler.volumes.store.upsert(other)
    assert await reconciler.reconcile("pv-2") is None
    assert requeued == [["pv-1"]]


def test_the_backoff_of_a_pv_is_capped_at_a_minute() -> None:
    limiter = volume_rate_limiter()
    delays = [limiter.when("pv-1") for _ in range(40)]
    assert max(delays) <= RETRY_CAP < 1000
    assert delays[-1] == pytest.approx(RETRY_CAP, abs=1)


async def test_a_call_that_ignores_its_timeout_is_abandoned_at_the_deadline(
    api: RecordingApiClient,
) -> None:
    reconciler, ceph = regenerated(api, reconcile_timeout=0.2)
    stuck = asyncio.Event()

    async def never(*args: Any, **kwargs: Any) -> Any:
        await stuck.wait()

    ceph.omap_get = never  # type: ignore[method-assign]
    with pytest.raises(CephUnavailable, match="deadline of 0 s"):
        await asyncio.wait_for(reconciler.reconcile("pv-1"), 5)
    [status] = api.status_applies()
    assert ready_of(status)["reason"] == "CephUnavailable"


# item 8: --dry-run plans PVs of a mapping nobody has written a status for -------------------------


async def test_dry_run_plans_a_pv_of_a_mapping_without_status(
    api: RecordingApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    reconciler, ceph = regenerated(api, dry_run=True)
    reconciler.cluster_id_mappings.store.upsert(
        cluster_id_mapping("site-a-to-b", "site-a", LOCAL, {"name": "replicapool"})
    )
    with caplog.at_level(logging.INFO, logger="reconciler.controllers.volumes"):
        assert await reconciler.reconcile("pv-1") is None
    assert "dry run: would regenerate" in caplog.text
    assert api.writes() == [] and ceph.objects == {}


# item 9: a ceph-csi-config change re-queues what depends on it ----------------------------------


def config_event(obj: KubeObject) -> Event:
    return Event(EventType.MODIFIED, f"{CSI_NAMESPACE}/ceph-csi-config", obj, None)


async def test_a_csi_config_change_requeues_pvs_that_failed_on_it(api: RecordingApiClient) -> None:
    api.add_secret(secret())
    reconciler = failed_over(api)
    reconciler.csi_config.store.delete(f"{CSI_NAMESPACE}/ceph-csi-config")
    with pytest.raises(CSIConfigUnavailable):
        await reconciler.reconcile("pv-1")
    fixed = csi_config_map(LOCAL)
    fixed["metadata"]["resourceVersion"] = "2"
    reconciler.csi_config.store.upsert(fixed)
    assert reconciler.volumes_of_csi_config(config_event(fixed)) == ["pv-1"]
    # Another ConfigMap of the informer (Rook's mapping file) is not ceph-csi's config.
    other = Event(EventType.MODIFIED, f"{CSI_NAMESPACE}/other", fixed, None)
    assert reconciler.volumes_of_csi_config(other) == []


async def test_a_new_rados_namespace_refreshes_ready_mappings(api: RecordingApiClient) -> None:
    reconciler, ceph = regenerated(api)
    before = await converge(api, reconciler)
    assert before["radosNamespace"] == ""
    moved = csi_config_map(LOCAL)
    entries = json.loads(moved["data"]["config.json"])
    entries[0]["rbd"] = {"radosNamespace": "tenant"}
    moved["data"]["config.json"] = json.dumps(entries)
    moved["metadata"]["resourceVersion"] = "2"
    reconciler.csi_config.store.upsert(moved)
    assert reconciler.volumes_of_csi_config(config_event(moved)) == ["pv-1"]
    assert await reconciler.reconcile("pv-1") is None
    [status] = api.status_applies()
    assert status["radosNamespace"] == "tenant"
    assert ("replicapool", "tenant", f"csi.volume.{UUID}") in ceph.objects
    seen_by_informer(api, reconciler)
    assert reconciler.volumes_of_csi_config(config_event(moved)) == []


# item 11: pools a PV may direct journal writes into; PVs no longer taken -------------------------


@pytest.mark.parametrize("attribute", ["pool", "journalPool"])
async def test_a_pool_no_mapping_lists_is_refused(api: RecordingApiClient, attribute: str) -> None:
    reconciler, ceph = regenerated(api)
    obj = reconciler.volumes.store.get("pv-1")
    assert obj is not None
    obj["spec"]["csi"]["volumeAttributes"][attribute] = "kube-system-pool"
    with pytest.raises(TerminalError):
        await reconciler.reconcile("pv-1")
    assert [r for r in api.requests if r.method == "GET"] == []  # not even the Secret
    assert ceph.objects == {} and ceph.reads == 0
    [status] = api.status_applies()
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("False", "PoolNotMapped")
    assert f"{attribute} 'kube-system-pool' is not among the rbdPools" in ready["message"]


@pytest.mark.parametrize("change", ["static", "unclaimed"])
async def test_a_pv_no_longer_taken_keeps_its_mapping_not_ready(
    api: RecordingApiClient, change: str
) -> None:
    reconciler, ceph = regenerated(api)
    before = await converge(api, reconciler)
    obj = copy.deepcopy(reconciler.volumes.store.get("pv-1"))
    assert obj is not None
    if change == "static":
        obj["spec"]["csi"]["volumeAttributes"]["staticVolume"] = "true"
    else:
        del obj["spec"]["claimRef"]
    reconciler.volumes.store.upsert(obj)
    journal = copy.deepcopy(ceph.objects)
    assert await reconciler.reconcile("pv-1") is None
    [status] = api.status_applies()
    ready = ready_of(status)
    assert (ready["status"], ready["reason"]) == ("False", "NotSelected")
    assert "journal on Ceph is left as it is" in ready["message"]
    assert status["newVolumeHandle"] == before["newVolumeHandle"]  # the record of what was written
    assert ceph.objects == journal
    assert {(e["type"], e["reason"]) for e in api.events()} == {("Warning", "NotSelected")}
    # Taken again: Ready again, nothing rewritten.
    reconciler.volumes.store.upsert(failed_over_pv())
    seen_by_informer(api, reconciler)
    assert await reconciler.reconcile("pv-1") is None
    assert ready_of(api.object(VHM_PATH)["status"])["status"] == "True"
    assert ceph.objects == journal


def failed_over_pv() -> KubeObject:
    secret_ref = {"name": SECRET, "namespace": CSI_NAMESPACE}
    return pv("pv-1", "site-a", controllerExpandSecretRef=secret_ref)
