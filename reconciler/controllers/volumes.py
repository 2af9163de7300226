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

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kubernetes_asyncio.client import ApiClient
from prometheus_client import Histogram

from reconciler.catalog import ImageCatalog
from reconciler.cephconn import Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.controllers.clusterids import (
    MappingSpec,
    check_pools,
    mapped_through,
    mapping_pending,
    maps_within,
    reconciled,
    usability,
    why_not_selected,
)
from reconciler.controllers.credentials import CredentialsCache
from reconciler.controllers.mappingrecords import MAX_HANDLE_BYTES, MappingRecords
from reconciler.controllers.progress import BurstProgress
from reconciler.controllers.recorder import StatusRecorder
from reconciler.csiconfig import ClusterConfig, ConfigKey, CSIConfig
from reconciler.errors import (
    CephPermissionDenied,
    CephUnavailable,
    CSIConfigUnavailable,
    InvalidInput,
    InvalidVolume,
    ReconcilerError,
    VolumeHandleTooLong,
)
from reconciler.handle import VolumeHandle
from reconciler.journal import DEFAULT_INSTANCE_ID
from reconciler.k8s import (
    Event,
    EventType,
    Informer,
    KubeObject,
    Result,
    TerminalError,
)
from reconciler.k8s.conditions import (
    READY,
    find_condition,
    is_ready,
)
from reconciler.k8s.events import EventRecorder
from reconciler.k8s.ratelimit import (
    BucketRateLimiter,
    ItemExponentialBackoff,
    MaxOfRateLimiter,
    TokenBucket,
)
from reconciler.kinds import (
    PV_CLUSTER_INDEX,
)
from reconciler.kubeinputs import secret_credentials
from reconciler.regenerate import LocalCluster, Regeneration, regenerate
from reconciler.volume import CSIVolume

log = logging.getLogger(__name__)

DEFAULT_DRIVER = "rbd.csi.ceph.com"
#: The longest a PV's regeneration may take, the Secret's read included: a librados call that
#: ignores its own timeout is abandoned (its thread runs on) rather than pin the worker.
RECONCILE_TIMEOUT = 120.0
#: The longest wait between two tries of a PV (client-go's default is 1000 s): a PV waiting for
#: Ceph, a Secret or ceph-csi-config is tried again within a minute of the fault's end.
RETRY_CAP = 60.0


def volume_rate_limiter() -> MaxOfRateLimiter:
    """The PV controller's retries: client-go's default limiter with the per-item backoff capped
    at RETRY_CAP instead of 1000 s (the overall 10/s bucket still bounds a storm of retries)."""
    return MaxOfRateLimiter(
        ItemExponentialBackoff(base=0.005, cap=RETRY_CAP),
        BucketRateLimiter(TokenBucket(rate=10.0, burst=100)),
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
    reconcile_timeout: float = RECONCILE_TIMEOUT
    """The deadline of one PV's regeneration (Secret, connect, reads and writes)."""


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
        self.settings = settings
        self.records = MappingRecords(
            api_client,
            events=events,
            local_cluster_id=settings.local_cluster_id,
            driver_name=settings.driver_name,
            dry_run=settings.dry_run,
            remap_duration=remap_duration,
        )
        # (resourceVersion, parsed): ceph-csi-config is parsed once per change, not per PV.
        self._parsed_config: tuple[str, CSIConfig] | None = None
        self.requeue: Callable[[Iterable[str]], None] = lambda keys: None
        """Queues PVs again at once (run wires the controller's enqueue): those that waited for
        Ceph, as soon as another PV reached it."""
        # PVs that last failed on Ceph being unreachable, and on ceph-csi-config.
        self._waiting_for_ceph: set[str] = set()
        self._failed_on_config: set[str] = set()
        # A burst of PVs reads each Secret once and each pool's images once (their modules).
        self.credentials = CredentialsCache()
        self.catalog = ImageCatalog()
        self.backlog: Callable[[], int] = lambda: 0
        """How many PVs are about to be reconciled (`run` sets it to the work queue's depth)."""
        self.recorder: StatusRecorder | None = None
        """Takes mapping writes off the workers during a burst (`run` sets it; its module)."""
        self.progress: BurstProgress | None = None
        """Counts the journals written, for the progress log and /metrics (`run` sets it)."""

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

    def volumes_of_csi_config(self, event: Event) -> list[str]:
        """When ceph-csi's config changes: the PVs that failed on it (CSIConfigUnavailable), and
        those whose Ready mapping recorded another radosNamespace than the local entry now has
        (their journal belongs in the new one). A scan of the mappings' cache, per change of
        that one ConfigMap."""
        where = self.settings.csi_config
        if event.key != f"{where.namespace}/{where.name}":
            return []
        keys = set(self._failed_on_config)
        try:
            namespace: str | None = self._local_config().rados_namespace
        except CSIConfigUnavailable:
            namespace = None
        for vhm in self.volume_handle_mappings.store.objects():
            status = vhm.get("status") or {}
            failed = (find_condition(vhm, READY) or {}).get("reason") == CSIConfigUnavailable.reason
            moved = (
                namespace is not None
                and status.get("clusterID") == self.settings.local_cluster_id
                and str(status.get("radosNamespace") or "") != namespace
                and is_ready(vhm)
            )
            if failed or moved:
                keys.add(str(vhm["metadata"]["name"]))
        return sorted(keys)

    @staticmethod
    def volume_of_deleted_mapping(event: Event) -> list[str]:
        """A mapping deleted by hand is made again (its PV still needs it)."""
        if event.type is not EventType.DELETED:
            return []
        return [str((event.obj.get("spec") or {}).get("pvName") or event.key)]

    # reconcile ----------------------------------------------------------------------------------

    def selected(self, pv: KubeObject) -> bool:
        """The configured driver's PVs with a claim, not being deleted, not static volumes."""
        return why_not_selected(pv, self.settings.driver_name) is None

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
        if pv is None:
            return None  # a deleted PV's mapping goes with it (garbage collector)
        existing = self.volume_handle_mappings.store.get(key)
        if not self.selected(pv):
            await self.records.not_selected(pv, existing)
            return None
        # --dry-run: the ClusterIDMapping controller does not run, so mappings without a status
        # for their spec are evaluated in memory instead of waited for.
        in_memory = self.settings.dry_run
        try:
            volume = CSIVolume.from_pv(pv)
            _check_length(volume)
            handle = VolumeHandle.decode(volume.volume_handle)
            local_handle = handle.cluster_id == self.settings.local_cluster_id
            if local_handle:
                within = maps_within(
                    self.cluster_id_mappings,
                    handle.cluster_id,
                    volume.attributes.get("pool", ""),
                    in_memory=in_memory,
                )
                if within == "serving":
                    return None  # its mapping conflicts: left as it is until that is resolved
                if not within:
                    await self.records.delete_stale(existing)
                    return None
            if not in_memory and mapping_pending(self.cluster_id_mappings, handle.cluster_id):
                # Its status will say; the status write's event brings this PV back.
                return None
            through = mapped_through(
                self.cluster_id_mappings,
                handle.cluster_id,
                self.settings.local_cluster_id,
                in_memory=in_memory,
            )
            check_pools(self.cluster_id_mappings, through, volume)
            regeneration = await self._regenerate_within_deadline(volume)
        except ReconcilerError as err:
            self._note_failure(key, err)
            if self.settings.dry_run:
                log.warning("dry run: would fail", extra={"pv": key, "error": str(err)})
            else:
                await self.records.failure(pv, existing, err)
            if err.retryable:
                raise
            raise TerminalError(str(err)) from err
        self._note_success(key)
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
            if self.progress is not None:
                self.progress.journal_written()
        if self.recorder is not None and self.recorder.takes(self.backlog()):
            # A burst: the next journal does not wait for this one's mapping.
            self.recorder.submit(
                key, lambda: self.records.success(pv, existing, regeneration, through)
            )
            return None
        await self.records.success(pv, existing, regeneration, through)
        return None

    async def _regenerate_within_deadline(self, volume: CSIVolume) -> Regeneration:
        """`_regenerate` within the reconcile's deadline: a call that ignores its own timeout
        (librados has been seen to) is abandoned, its outcome unknown, and tried again later."""
        deadline = asyncio.timeout(self.settings.reconcile_timeout)
        try:
            async with deadline:
                return await self._regenerate(volume)
        except TimeoutError as err:
            if not deadline.expired():
                raise
            raise CephUnavailable(
                f"no answer within the reconcile's deadline of "
                f"{self.settings.reconcile_timeout:.0f} s: abandoned, to be tried again"
            ) from err

    def _note_failure(self, key: str, err: ReconcilerError) -> None:
        if isinstance(err, CephUnavailable):
            self._waiting_for_ceph.add(key)
        if isinstance(err, CSIConfigUnavailable):
            self._failed_on_config.add(key)
        else:
            self._failed_on_config.discard(key)

    def _note_success(self, key: str) -> None:
        """`key` reached Ceph: so may the PVs that waited for it, now rather than after their
        backoff (which may have grown long during an outage)."""
        self._failed_on_config.discard(key)
        self._waiting_for_ceph.discard(key)
        if self._waiting_for_ceph:
            waiting, self._waiting_for_ceph = self._waiting_for_ceph, set()
            log.info("Ceph answers again: retrying the PVs waiting", extra={"pvs": len(waiting)})
            self.requeue(sorted(waiting))

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
        return await self.credentials.get(
            namespace, name, lambda ns, n: secret_credentials(self.api_client, n, ns)
        )


def _content(obj: KubeObject) -> KubeObject:
    metadata = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}
    return {**obj, "metadata": metadata}


def _check_length(volume: CSIVolume) -> None:
    """VolumeHandleTooLong for a handle a mapping cannot hold, before anything quotes it whole."""
    length = len(volume.volume_handle.encode())
    if length > MAX_HANDLE_BYTES:
        start = volume.volume_handle[:64]
        raise VolumeHandleTooLong(volume.pv_name, length, MAX_HANDLE_BYTES, start)
