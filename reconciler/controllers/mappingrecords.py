"""A PV's VolumeHandleMapping as the PV controller records it: the object (named after the PV,
owned by it, labelled by its old handle's digest), its status, its Ready and Degraded conditions,
and the Events on a transition. Only writes; what to record is the PV controller's decision."""

from __future__ import annotations

import logging
from typing import Any

from kubernetes_asyncio.client import ApiClient
from prometheus_client import Histogram

from reconciler.controllers.clusterids import why_not_selected
from reconciler.controllers.metrics import age_seconds
from reconciler.errors import (
    CephBindingsMissing,
    CephError,
    CephPermissionDenied,
    CephUnavailable,
    CSIConfigUnavailable,
    InvalidCephKey,
    InvalidSecret,
    MappingConflicting,
    ObjectChanged,
    ObjectExists,
    ReconcilerError,
    SecretForbidden,
    SecretNotFound,
)
from reconciler.k8s import ApiStatusError, KubeObject, TerminalError, request_json
from reconciler.k8s.apply import server_side_apply
from reconciler.k8s.conditions import (
    READY,
    condition,
    find_condition,
    is_ready,
    merge_conditions,
    transition,
)
from reconciler.k8s.events import EventRecorder
from reconciler.kinds import (
    API_VERSION,
    FIELD_MANAGER,
    PERSISTENT_VOLUME_KIND,
    VOLUME_HANDLE_HASH_LABEL,
    VOLUME_HANDLE_MAPPING_KIND,
    VOLUME_HANDLE_MAPPINGS,
    volume_handle_hash,
)
from reconciler.regenerate import Regeneration

log = logging.getLogger(__name__)

REGENERATED = "JournalRegenerated"
#: Status fields that describe a regeneration: kept through a later transient failure of the
#: same handle, so a CSI-side lookup still finds the new handle during a Ceph outage.
RESULT_FIELDS = (
    "newVolumeHandle",
    "clusterID",
    "pool",
    "poolID",
    "imageName",
    "journalPool",
    "radosNamespace",
    "clusterIDMappings",
)
#: The mapping's condition for trouble that says nothing about its journal (Ceph unreachable, the
#: Secret gone, ceph-csi-config unusable, its ClusterIDMapping conflicting): a Ready mapping
#: stays Ready through it, with the trouble here, and serves on.
DEGRADED = "Degraded"
#: Failures that leave a Ready mapping Ready (and Degraded): reaching Ceph or being let in, not
#: facts about the volume. Anything else (the image or pool gone, a journal conflict, the PV
#: changed or no longer taken) makes it not Ready.
KEEPS_READY: tuple[type[ReconcilerError], ...] = (
    CephUnavailable,
    CephPermissionDenied,
    CephBindingsMissing,
    ObjectExists,
    ObjectChanged,
    SecretNotFound,
    SecretForbidden,
    InvalidSecret,
    InvalidCephKey,
    CSIConfigUnavailable,
    MappingConflicting,
)
#: The Ready reason of a mapping whose PV this controller no longer takes (staticVolume, claim
#: removed): it records what was written, but ceph-csi is not to be pointed at it.
NOT_SELECTED = "NotSelected"
#: spec.volumeHandle's maxLength in crds/volumehandlemappings.yaml: a longer handle is not stored.
MAX_HANDLE_BYTES = 4096


class MappingRecords:
    """Writes VolumeHandleMappings for the PV controller (one shared instance)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        events: EventRecorder,
        local_cluster_id: str,
        driver_name: str,
        dry_run: bool,
        remap_duration: Histogram | None = None,
    ) -> None:
        self.api_client = api_client
        self.events = events
        self.local_cluster_id = local_cluster_id
        self.driver_name = driver_name
        self.dry_run = dry_run
        self.remap_duration = remap_duration

    # recording ----------------------------------------------------------------------------------

    async def success(
        self,
        pv: KubeObject,
        existing: KubeObject | None,
        regeneration: Regeneration,
        through: list[str],
    ) -> None:
        # The condition says what holds (the same on every pass); the Event also says what
        # this pass wrote.
        message = (
            f"{regeneration.old_handle} stands for {regeneration.new_handle} here "
            f"(image {regeneration.image_pool}/{regeneration.image_name})"
        )
        wrote = ", ".join(regeneration.written) or "nothing: the journal was in place"
        fields = {
            "newVolumeHandle": regeneration.new_handle,
            "clusterID": self.local_cluster_id,
            "pool": regeneration.image_pool,
            "poolID": regeneration.image_pool_id,
            "imageName": regeneration.image_name,
            "journalPool": regeneration.journal_pool,
            "radosNamespace": regeneration.rados_namespace,
            "clusterIDMappings": through,
        }
        await self._record(
            pv,
            existing,
            ready=True,
            reason=REGENERATED,
            message=message,
            fields=fields,
            event_message=f"{message}; wrote {wrote}",
        )

    async def failure(
        self, pv: KubeObject, existing: KubeObject | None, err: ReconcilerError
    ) -> None:
        if keeps_ready(pv, existing, err):
            assert existing is not None
            await self._degraded(pv, existing, err)
            return
        await self._record(
            pv, existing, ready=False, reason=err.reason, message=str(err), fields={}
        )

    async def _degraded(self, pv: KubeObject, existing: KubeObject, err: ReconcilerError) -> None:
        """A Ready mapping of the PV's handle hit trouble that says nothing about its journal:
        it stays Ready (the resolver and ceph-csi's files keep serving it) and Degraded says
        what is wrong; no new write is made until the trouble is over."""
        old_status = existing.get("status") or {}
        ready = find_condition(existing, READY)
        assert ready is not None
        degraded = condition(DEGRADED, True, err.reason, str(err))
        conditions = merge_conditions(old_status.get("conditions") or [], [ready, degraded])
        await self._write(pv, existing, {**old_status, "conditions": conditions})
        before = find_condition(existing, DEGRADED) or {}
        if (before.get("status"), before.get("reason")) != ("True", err.reason):
            for obj, kind in ((pv, PERSISTENT_VOLUME_KIND), (existing, VOLUME_HANDLE_MAPPING_KIND)):
                await self.events.record(
                    obj,
                    kind,
                    warning=True,
                    reason=err.reason,
                    message=f"{err}; the mapping stays Ready and in use",
                )

    async def not_selected(self, pv: KubeObject, existing: KubeObject | None) -> None:
        """A PV this controller no longer takes (made static, its claim removed) keeps its mapping
        as a record of what was written on Ceph, but not Ready: nothing is to be resolved
        through it any more. A PV being deleted takes its mapping along (garbage collector)."""
        csi = (pv.get("spec") or {}).get("csi") or {}
        if (
            existing is None
            or self.dry_run
            or pv["metadata"].get("deletionTimestamp")
            or not csi.get("volumeHandle")  # another driver's: the informer keeps no handle
        ):
            return
        why = why_not_selected(pv, self.driver_name)
        await self._record(
            pv,
            existing,
            ready=False,
            reason=NOT_SELECTED,
            message=f"this controller no longer remaps the PV: {why}; the journal on Ceph is "
            "left as it is",
            fields={},
        )

    async def _record(
        self,
        pv: KubeObject,
        existing: KubeObject | None,
        *,
        ready: bool,
        reason: str,
        message: str,
        fields: dict[str, Any],
        event_message: str = "",
    ) -> None:
        handle = str(pv["spec"]["csi"]["volumeHandle"])
        old_status = (existing or {}).get("status") or {}
        if not ready and (existing or {}).get("spec", {}).get("volumeHandle") == handle:
            fields = {k: old_status[k] for k in RESULT_FIELDS if k in old_status}
        ready_condition = condition(READY, ready, reason, message)
        wanted = [ready_condition]
        if ready:
            wanted.append(condition(DEGRADED, False, "Reconciled", "the last pass reached Ceph"))
        conditions = merge_conditions(old_status.get("conditions") or [], wanted)
        status: dict[str, Any] = dict(fields)
        if ready:
            status["readySince"] = conditions[0]["lastTransitionTime"]
        status["conditions"] = conditions
        mapping = await self._write(pv, existing, status)
        if transition(existing or {}, ready_condition):
            if ready and self.remap_duration is not None:
                age = age_seconds(pv)
                if age is not None:
                    self.remap_duration.observe(age)
            for obj, kind in ((pv, PERSISTENT_VOLUME_KIND), (mapping, VOLUME_HANDLE_MAPPING_KIND)):
                await self.events.record(
                    obj, kind, warning=not ready, reason=reason, message=event_message or message
                )

    async def _write(
        self, pv: KubeObject, existing: KubeObject | None, status: dict[str, Any]
    ) -> KubeObject:
        """The whole mapping (labels, owner, spec and status) in one server-side apply, unless the
        server holds it already; returns what the server holds. One write per PV, not two: the
        kind has no status subresource, as the controller alone writes spec and status, and a
        failover writes thousands at once."""
        desired = _mapping_for(pv, str(pv["spec"]["csi"]["volumeHandle"]))
        desired["status"] = status
        if existing is not None and _held(desired, existing):
            return existing
        try:
            held = await server_side_apply(
                self.api_client, VOLUME_HANDLE_MAPPINGS, desired, field_manager=FIELD_MANAGER
            )
        except ApiStatusError as err:
            await self._rejected(pv, err)
            raise
        if held.get("status") != status:
            held = await self._replace_status(pv, held, status)
        return held

    async def _replace_status(
        self, pv: KubeObject, held: KubeObject, status: dict[str, Any]
    ) -> KubeObject:
        """The server kept another status than the one applied. Fields another field manager
        owns survive an apply that leaves them out: those of a mapping whose status an earlier
        version wrote through a status subresource. One merge patch makes the status what was
        sent. If it still is not, the server keeps no status with the object: the CRD installed
        still has the status subresource (`helm upgrade` does not update CRDs)."""
        stale = {key: None for key in held.get("status") or {} if key not in status}
        name = pv["metadata"]["name"]
        try:
            held = await request_json(
                self.api_client,
                "PATCH",
                f"{VOLUME_HANDLE_MAPPINGS.object_path(name)}?fieldManager={FIELD_MANAGER}",
                {"status": {**stale, **status}},
                content_type="application/merge-patch+json",
            )
        except ApiStatusError as err:
            await self._rejected(pv, err)
            raise
        if held.get("status") == status:
            return held
        message = (
            "the API server does not keep a VolumeHandleMapping's status with the object: its "
            "CRD still has a status subresource; apply crds/volumehandlemappings.yaml (helm "
            "upgrade does not update CRDs)"
        )
        await self.events.record(
            pv, PERSISTENT_VOLUME_KIND, warning=True, reason="MappingCRDOutdated", message=message
        )
        raise TerminalError(message)

    async def _rejected(self, pv: KubeObject, err: ApiStatusError) -> None:
        """The API server refused the mapping as invalid (422): retrying cannot help, and what it
        refused is not stored anywhere. A Warning Event on the PV says so, and the PV is not tried
        again until it changes (TerminalError)."""
        if err.status != 422:
            return
        message = f"the API server refused its VolumeHandleMapping (422): {err.message}"
        await self.events.record(
            pv, PERSISTENT_VOLUME_KIND, warning=True, reason="MappingRejected", message=message
        )
        raise TerminalError(message) from err

    async def delete_stale(self, existing: KubeObject | None) -> None:
        if existing is None or self.dry_run:
            return
        name = existing["metadata"]["name"]
        try:
            await request_json(self.api_client, "DELETE", VOLUME_HANDLE_MAPPINGS.object_path(name))
        except ApiStatusError as err:
            if err.status != 404:
                raise
        log.info("deleted the mapping of a PV whose handle is now local", extra={"pv": name})


def _identity(name: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "VolumeHandleMapping", "metadata": {"name": name}}


def _mapping_for(pv: KubeObject, handle: str) -> KubeObject:
    metadata = pv["metadata"]
    mapping = _identity(metadata["name"])
    mapping["metadata"] |= {
        "labels": {VOLUME_HANDLE_HASH_LABEL: volume_handle_hash(handle)},
        "ownerReferences": [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "name": metadata["name"],
                "uid": metadata["uid"],
                "controller": True,
            }
        ],
    }
    mapping["spec"] = {"pvName": metadata["name"]}
    if len(handle.encode()) <= MAX_HANDLE_BYTES:
        mapping["spec"]["volumeHandle"] = handle
    return mapping


def keeps_ready(pv: KubeObject, existing: KubeObject | None, err: ReconcilerError) -> bool:
    """Whether `err` leaves the PV's mapping Ready (and Degraded): it is Ready for the PV's
    current handle and `err` is trouble reaching or being let in, not a fact about the volume."""
    return (
        existing is not None
        and is_ready(existing)
        and (existing.get("spec") or {}).get("volumeHandle") == pv["spec"]["csi"]["volumeHandle"]
        and (isinstance(err, KEEPS_READY) or type(err) is CephError)
    )


def _held(desired: KubeObject, existing: KubeObject) -> bool:
    """Whether the server holds `desired` already: its labels and owner among the object's, and
    the same spec (a handle too long to be stored is left out: one stored earlier must go) and
    status."""
    return (
        _subset(desired["metadata"], existing["metadata"])
        and existing.get("spec") == desired["spec"]
        and existing.get("status") == desired["status"]
    )


def _subset(wanted: Any, actual: Any) -> bool:
    """Whether `actual` holds everything in `wanted` (the server adds fields of its own)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            _subset(value, actual.get(key)) for key, value in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(_subset(w, a) for w, a in zip(wanted, actual, strict=True))
        )
    return bool(wanted == actual)
