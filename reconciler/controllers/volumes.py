"""The PV controller: a static PV re-applied after failover gets its ceph-csi journal regenerated
on the local Ceph cluster and a VolumeHandleMapping saying which new handle its old one stands for.

Which PVs: those of the configured driver with a claimRef, not being deleted, not
`staticVolume: "true"`. A PV whose handle already names the local clusterID needs nothing (ceph-csi
provisioned it here) and gets no mapping: no object, no API call and no Ceph I/O, so 10k local PVs
cost a handle decode each. Should a mapping exist for it from an earlier, remote handle, it is
deleted, since it no longer describes the PV. The exception is a clusterID that both sites share
(Rook names it after its namespace, "rook-ceph", on each): once a Ready ClusterIDMapping maps it to
itself, its PVs may come from either site, so each is regenerated; one whose journal is in place
and whose handle is unchanged was provisioned here and still gets no mapping.

For the others: the handle's clusterID is mapped through Ready ClusterIDMappings, monitors and
radosNamespace come from ceph-csi-config, credentials from the PV's controllerExpandSecretRef
(else nodeStageSecretRef), then `regenerate`. The mapping is named after the PV and owned by it
(the garbage collector deletes it with the PV); a PV re-applied with another handle updates it.

Outcomes become the mapping's Ready condition, and an Event on the PV and the mapping when Ready
changes. Bad input (the reason says which) is a terminal error: nothing is written to Ceph and
only a change to the PV (or to the ClusterIDMappings) brings it back. Missing Secrets, Ceph
outages and images not yet promoted are retried with backoff. Secrets' contents never appear in
logs, Events, status or metrics.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import ApiClient
from prometheus_client import Histogram

from reconciler.catalog import ImageCatalog
from reconciler.cephconn import ConnectionPool, Credentials, cephx_key_problem
from reconciler.controllers.clusterids import (
    MappingSpec,
    mapped_through,
    mapping_pending,
    maps_within,
    reconciled,
    usability,
)
from reconciler.controllers.credentials import CredentialsCache
from reconciler.controllers.metrics import age_seconds
from reconciler.csiconfig import ClusterConfig, ConfigKey, CSIConfig
from reconciler.errors import (
    CephPermissionDenied,
    CSIConfigUnavailable,
    InvalidInput,
    InvalidSecret,
    InvalidVolume,
    ReconcilerError,
    SecretNotFound,
)
from reconciler.handle import VolumeHandle
from reconciler.journal import DEFAULT_INSTANCE_ID
from reconciler.k8s import (
    ApiStatusError,
    Event,
    EventType,
    Informer,
    KubeObject,
    Result,
    TerminalError,
    request_json,
)
from reconciler.k8s.apply import server_side_apply
from reconciler.k8s.conditions import READY, condition, is_ready, merge_conditions, transition
from reconciler.k8s.events import EventRecorder
from reconciler.kinds import (
    API_VERSION,
    FIELD_MANAGER,
    PERSISTENT_VOLUME_KIND,
    PV_CLUSTER_INDEX,
    SECRETS,
    VOLUME_HANDLE_HASH_LABEL,
    VOLUME_HANDLE_MAPPING_KIND,
    VOLUME_HANDLE_MAPPINGS,
    volume_handle_hash,
)
from reconciler.regenerate import LocalCluster, Regeneration, regenerate
from reconciler.volume import CSIVolume

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "rbd.csi.ceph.com"
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


@dataclass(frozen=True)
class VolumeSettings:
    local_cluster_id: str
    """This site's clusterID in ceph-csi-config (--local-cluster-id)."""
    csi_config: ConfigKey
    """Where ceph-csi's config.json is (--csi-config-layout and its overrides)."""
    driver_name: str = DEFAULT_DRIVER
    instance_id: str = DEFAULT_INSTANCE_ID
    """ceph-csi's --instanceid: names the journal's directory object."""
    dry_run: bool = False
    """Plan against Ceph and log; write nothing to Ceph or the API server."""


class VolumeReconciler:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        volumes: Informer,
        volume_handle_mappings: Informer,
        cluster_id_mappings: Informer,
        csi_config: Informer,
        connections: ConnectionPool,
        events: EventRecorder,
        settings: VolumeSettings,
        remap_duration: Histogram | None = None,
    ) -> None:
        self.api_client = api_client
        self.volumes = volumes
        self.volume_handle_mappings = volume_handle_mappings
        self.cluster_id_mappings = cluster_id_mappings
        self.csi_config = csi_config
        self.connections = connections
        self.events = events
        self.settings = settings
        self.remap_duration = remap_duration
        # (resourceVersion, parsed): ceph-csi-config is parsed once per change, not per PV.
        self._parsed_config: tuple[str, CSIConfig] | None = None
        # A burst of PVs reads each Secret once and each pool's images once (their modules).
        self.credentials = CredentialsCache()
        self.catalog = ImageCatalog()
        self.backlog: Callable[[], int] = lambda: 0
        """How many PVs are about to be reconciled (`run` sets it to the work queue's depth)."""

    # event -> keys ------------------------------------------------------------------------------

    def volumes_of_mapping(self, event: Event) -> list[str]:
        """The PVs of the remote clusterIDs a ClusterIDMapping names, when its usability changed.

        A spec change is only acted on once its status is written: PVs reconciled meanwhile
        wait (see `reconcile`) rather than flap to ClusterNotMapped and back, and come back here
        when that status is written.
        """
        if event.type is not EventType.DELETED and (
            not reconciled(event.obj)
            or (
                event.old is not None
                and reconciled(event.old)
                and usability(event.old) == usability(event.obj)
            )
        ):
            return []
        spec = MappingSpec.from_object(event.obj)
        clusters = {spec.site_a, spec.site_b}
        if not spec.within_one_cluster:
            clusters.discard(self.settings.local_cluster_id)
        return sorted(
            {
                pv["metadata"]["name"]
                for cluster_id in clusters
                for pv in self.volumes.store.by_index(PV_CLUSTER_INDEX, cluster_id)
            }
        )

    @staticmethod
    def volume_if_changed(event: Event) -> list[str]:
        """The PV's key, unless only its resourceVersion moved: the informer's transform keeps
        just what reconciling reads, so status updates (binding) cost no Ceph round trip."""
        if (
            event.type is EventType.MODIFIED
            and event.old is not None
            and _content(event.old) == _content(event.obj)
        ):
            return []
        return [event.key]

    @staticmethod
    def volume_of_deleted_mapping(event: Event) -> list[str]:
        """A mapping deleted by hand is made again (its PV still needs it)."""
        if event.type is not EventType.DELETED:
            return []
        return [str((event.obj.get("spec") or {}).get("pvName") or event.key)]

    # reconcile ----------------------------------------------------------------------------------

    def selected(self, pv: KubeObject) -> bool:
        """The configured driver's PVs with a claim, not being deleted, not static volumes."""
        spec = pv.get("spec") or {}
        csi = spec.get("csi") or {}
        return (
            csi.get("driver") == self.settings.driver_name
            and bool(spec.get("claimRef"))
            and not pv["metadata"].get("deletionTimestamp")
            and (csi.get("volumeAttributes") or {}).get("staticVolume") != "true"
        )

    def pending_volumes(self) -> list[KubeObject]:
        """Selected PVs with a remote handle whose mapping is not Ready for that handle (yet)."""
        store = self.volumes.store
        return [
            pv
            for cluster_id in store.index_values(PV_CLUSTER_INDEX)
            if cluster_id != self.settings.local_cluster_id
            for pv in store.by_index(PV_CLUSTER_INDEX, cluster_id)
            if self.selected(pv) and not self._remapped(pv)
        ]

    def _remapped(self, pv: KubeObject) -> bool:
        mapping = self.volume_handle_mappings.store.get(pv["metadata"]["name"])
        return (
            mapping is not None
            and is_ready(mapping)
            and (mapping.get("spec") or {}).get("volumeHandle") == pv["spec"]["csi"]["volumeHandle"]
        )

    async def reconcile(self, key: str) -> Result | None:
        pv = self.volumes.store.get(key)
        if pv is None or not self.selected(pv):
            return None  # a deleted PV's mapping goes with it (garbage collector)
        existing = self.volume_handle_mappings.store.get(key)
        try:
            volume = CSIVolume.from_pv(pv)
            handle = VolumeHandle.decode(volume.volume_handle)
            local_handle = handle.cluster_id == self.settings.local_cluster_id
            if local_handle and not maps_within(self.cluster_id_mappings, handle.cluster_id):
                await self._delete_stale(existing)
                return None
            if mapping_pending(self.cluster_id_mappings, handle.cluster_id):
                # Its status will say; the status write's event brings this PV back.
                return None
            through = mapped_through(
                self.cluster_id_mappings, handle.cluster_id, self.settings.local_cluster_id
            )
            regeneration = await self._regenerate(volume)
        except ReconcilerError as err:
            if self.settings.dry_run:
                log.warning("dry run: would fail", extra={"pv": key, "error": str(err)})
            else:
                await self._record_failure(pv, existing, err)
            if err.retryable:
                raise
            raise TerminalError(str(err)) from err
        if (
            local_handle
            and existing is None
            and not regeneration.written
            and regeneration.new_handle == volume.volume_handle
        ):
            return None  # provisioned here: journal in place, handle already local
        if self.settings.dry_run:
            log.info("dry run: would regenerate", extra={"pv": key, **regeneration.to_json()})
            return None
        if regeneration.written:
            log.info(
                "journal written",
                extra={
                    "pv": key,
                    "new_handle": regeneration.new_handle,
                    "written": regeneration.written,
                },
            )
        await self._record_success(pv, existing, regeneration, through)
        return None

    async def _regenerate(self, volume: CSIVolume) -> Regeneration:
        local = self._local_config()
        credentials = await self._credentials(volume)
        try:
            ceph = await self.connections.get(local.mon_host, credentials)
        except CephPermissionDenied:
            if volume.secret_ref is not None:  # the key may have been rotated: read it again
                self.credentials.forget(volume.secret_ref[1], volume.secret_ref[0])
            raise
        return await regenerate(
            self.catalog.view(ceph, local.mon_host, self.backlog),
            volume,
            LocalCluster(local.cluster_id, local.rados_namespace, self.settings.instance_id),
            dry_run=self.settings.dry_run,
            require_primary=True,
        )

    def _local_config(self) -> ClusterConfig:
        where = self.settings.csi_config
        config_map = self.csi_config.store.get(f"{where.namespace}/{where.name}")
        if config_map is None:
            raise CSIConfigUnavailable(f"ConfigMap {where.namespace}/{where.name} does not exist")
        version = str(config_map["metadata"].get("resourceVersion", ""))
        if self._parsed_config is None or self._parsed_config[0] != version:
            text = (config_map.get("data") or {}).get(where.key)
            if text is None:
                raise CSIConfigUnavailable(f"{where} does not exist")
            try:
                self._parsed_config = (version, CSIConfig.parse(text))
            except InvalidInput as err:
                raise CSIConfigUnavailable(f"{where}: {err}") from err
        config = self._parsed_config[1]
        local = config.get(self.settings.local_cluster_id)
        if local is None:
            problem = config.problem(self.settings.local_cluster_id)
            raise CSIConfigUnavailable(
                f"{where}: {problem}"
                if problem
                else f"{where} has no entry for this site's clusterID "
                f"{self.settings.local_cluster_id!r} (--local-cluster-id)"
            )
        return local

    async def _credentials(self, volume: CSIVolume) -> Credentials:
        if volume.secret_ref is None:
            raise InvalidVolume(
                volume.pv_name, "neither controllerExpandSecretRef nor nodeStageSecretRef is set"
            )
        name, namespace = volume.secret_ref
        if not namespace:
            raise InvalidVolume(volume.pv_name, f"the Secret reference {name!r} has no namespace")
        return await self.credentials.get(namespace, name, self._read_secret)

    async def _read_secret(self, namespace: str, name: str) -> Credentials:
        try:
            secret = await request_json(
                self.api_client, "GET", SECRETS.object_path(name, namespace)
            )
        except ApiStatusError as err:
            if err.status == 404:
                raise SecretNotFound(namespace, name) from err
            raise
        data = secret.get("data") or {}
        try:
            user = base64.b64decode(data["userID"], validate=True).decode()
            key = base64.b64decode(data["userKey"], validate=True).decode()
        except (KeyError, binascii.Error, UnicodeDecodeError):
            # Never say more than which keys are expected: the values are secret.
            raise InvalidSecret(namespace, name, "needs base64 keys userID and userKey") from None
        # Checked before librados sees it (librados logs a key it cannot decode). Surrounding
        # whitespace is dropped, as ceph-csi's key file drops it.
        key = key.strip()
        problem = cephx_key_problem(key)
        if problem is not None:
            raise InvalidSecret(namespace, name, f"userKey is not a CephX key: {problem}")
        return Credentials(user, key)

    # recording ----------------------------------------------------------------------------------

    async def _record_success(
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
            "clusterID": self.settings.local_cluster_id,
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

    async def _record_failure(
        self, pv: KubeObject, existing: KubeObject | None, err: ReconcilerError
    ) -> None:
        await self._record(
            pv, existing, ready=False, reason=err.reason, message=str(err), fields={}
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
        mapping = await self._ensure_mapping(pv, existing, handle)
        generation = int(mapping["metadata"].get("generation", 0))
        old_status = mapping.get("status") or {}
        if not ready and (existing or {}).get("spec", {}).get("volumeHandle") == handle:
            fields = {k: old_status[k] for k in RESULT_FIELDS if k in old_status}
        ready_condition = condition(READY, ready, reason, message, generation)
        conditions = merge_conditions(old_status.get("conditions") or [], [ready_condition])
        status: dict[str, Any] = {"observedGeneration": generation, **fields}
        if ready:
            status["readySince"] = conditions[0]["lastTransitionTime"]
        status["conditions"] = conditions
        if status != old_status:
            await server_side_apply(
                self.api_client,
                VOLUME_HANDLE_MAPPINGS,
                {**_identity(pv["metadata"]["name"]), "status": status},
                field_manager=FIELD_MANAGER,
                subresource="status",
            )
        if transition(mapping, ready_condition):
            if ready and self.remap_duration is not None:
                age = age_seconds(pv)
                if age is not None:
                    self.remap_duration.observe(age)
            for obj, kind in ((pv, PERSISTENT_VOLUME_KIND), (mapping, VOLUME_HANDLE_MAPPING_KIND)):
                await self.events.record(
                    obj, kind, warning=not ready, reason=reason, message=event_message or message
                )

    async def _ensure_mapping(
        self, pv: KubeObject, existing: KubeObject | None, handle: str
    ) -> KubeObject:
        """The mapping with the PV's current handle, its label and owner: applied if they differ."""
        desired = _mapping_for(pv, handle)
        if existing is not None and all(
            _subset(desired[part], existing.get(part) or {}) for part in ("metadata", "spec")
        ):
            return existing
        return await server_side_apply(
            self.api_client, VOLUME_HANDLE_MAPPINGS, desired, field_manager=FIELD_MANAGER
        )

    async def _delete_stale(self, existing: KubeObject | None) -> None:
        if existing is None or self.settings.dry_run:
            return
        name = existing["metadata"]["name"]
        try:
            await request_json(self.api_client, "DELETE", VOLUME_HANDLE_MAPPINGS.object_path(name))
        except ApiStatusError as err:
            if err.status != 404:
                raise
        log.info("deleted the mapping of a PV whose handle is now local", extra={"pv": name})


def _content(obj: KubeObject) -> KubeObject:
    metadata = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**obj, "metadata": metadata}


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
    mapping["spec"] = {"pvName": metadata["name"], "volumeHandle": handle}
    return mapping


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
