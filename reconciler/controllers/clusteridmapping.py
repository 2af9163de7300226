"""The ClusterIDMapping reconciler: each mapping's status on this site.

- marks mappings of the same pair of clusterIDs that disagree about a pool ID as Conflicting
  (neither is used for that pair);
- resolves each pool's IDs: an ID in the spec wins; else the local ID is the one regeneration
  looked up by the pool's name on the local Ceph cluster (VolumeHandleMapping status), and the
  remote ID is read from the old handles of the PVs being reconciled; the status says which.

The PV controller re-reconciles the PVs of a clusterID when a mapping for it changes readiness;
`csimapping` renders ceph-csi's own cluster-mapping.json from the Ready mappings.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client import ApiClient

from reconciler.controllers.cephcsi import missing_entries
from reconciler.controllers.clusterids import MappingSpec, disagreement
from reconciler.controllers.regenerator import RegeneratorWatch
from reconciler.csiconfig import ConfigKey, CSIConfigLayout
from reconciler.k8s import Event, Informer, KubeObject, Result
from reconciler.k8s.apply import server_side_apply
from reconciler.k8s.conditions import READY, Condition, condition, merge_conditions, transition
from reconciler.k8s.events import EventRecorder
from reconciler.kinds import (
    API_VERSION,
    CEPH_CSI_CONFIGURED,
    CEPH_CSI_REGENERATOR,
    CIDM_CLUSTER_INDEX,
    CLUSTER_ID_MAPPING_KIND,
    CLUSTER_ID_MAPPINGS,
    CONFLICTING,
    FIELD_MANAGER,
    PV_POOL_INDEX,
    VHM_POOL_INDEX,
    pv_handle,
    pv_pool,
)


class ClusterIDMappingReconciler:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        cluster_id_mappings: Informer,
        volumes: Informer,
        volume_handle_mappings: Informer,
        events: EventRecorder,
        local_cluster_id: str,
        csi_config_files: tuple[Informer, Informer],
        layout: CSIConfigLayout,
        regenerator: RegeneratorWatch,
    ) -> None:
        self.regenerator = regenerator
        self.api_client = api_client
        self.csi_config_files = csi_config_files
        """The informers of the ConfigMaps of ceph-csi's config.json and cluster-mapping.json."""
        self.layout = layout
        self.cluster_id_mappings = cluster_id_mappings
        self.volumes = volumes
        self.volume_handle_mappings = volume_handle_mappings
        self.events = events
        self.local_cluster_id = local_cluster_id

    # event -> keys ------------------------------------------------------------------------------

    def all_mappings(self, event: Event) -> list[str]:
        """Any mapping's change can make others (non-)conflicting: look at all (they are few)."""
        return self.cluster_id_mappings.store.keys()

    def mappings_learning_from_volume(self, event: Event) -> list[str]:
        """Mappings that still lack the remote ID of this PV's pool (learnt from its handle)."""
        handle = pv_handle(event.obj)
        pool = pv_pool(event.obj)
        if handle is None or not pool:
            return []
        # A local handle can only teach a mapping of the local clusterID to itself.
        within_only = handle.cluster_id == self.local_cluster_id
        return self._lacking(handle.cluster_id, pool, "remotePoolID", within_only=within_only)

    def mappings_learning_from_handle_mapping(self, event: Event) -> list[str]:
        """Mappings that still lack the local ID of the pool this VolumeHandleMapping resolved."""
        status = event.obj.get("status") or {}
        if status.get("clusterID") != self.local_cluster_id or not status.get("pool"):
            return []
        return self._lacking(self.local_cluster_id, str(status["pool"]), "localPoolID")

    def _lacking(
        self, cluster_id: str, pool: str, field: str, *, within_only: bool = False
    ) -> list[str]:
        keys = []
        for obj in self.cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id):
            if within_only and not MappingSpec.from_object(obj).within_one_cluster:
                continue
            pools = {p.get("name"): p for p in (obj.get("status") or {}).get("rbdPools") or []}
            if pool in pools and pools[pool].get(field) is None:
                keys.append(obj["metadata"]["name"])
        return keys

    # reconcile ----------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        obj = self.cluster_id_mappings.store.get(key)
        if obj is None:
            return None  # deleted: the PVs it mapped are re-queued by the PV controller
        spec = MappingSpec.from_object(obj)
        generation = int(obj["metadata"].get("generation", 0))
        others = (
            MappingSpec.from_object(o)
            for o in self.cluster_id_mappings.store.objects()
            if o is not obj
        )
        conflicts = [why for other in others if (why := disagreement(spec, other))]
        local, remote = self._sides(spec)
        ready, conflicting = self._conditions(spec, conflicts, local, generation)
        old_status = obj.get("status") or {}
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "localClusterID": local,
            "remoteClusterID": remote,
            "rbdPools": self._pools(spec, local, remote) if local else [],
        }
        configured = self._configured({**obj, "status": status}, ready, generation)
        peer = self.regenerator.state
        regenerator = condition(
            CEPH_CSI_REGENERATOR,
            peer.active,
            "Running" if peer.active else "NotRunning",
            peer.message,
            generation,
        )
        status["conditions"] = merge_conditions(
            old_status.get("conditions") or [], [ready, conflicting, configured, regenerator]
        )
        if status == old_status:
            return None
        await server_side_apply(
            self.api_client,
            CLUSTER_ID_MAPPINGS,
            {
                "apiVersion": API_VERSION,
                "kind": "ClusterIDMapping",
                "metadata": {"name": key},
                "status": status,
            },
            field_manager=FIELD_MANAGER,
            subresource="status",
        )
        if transition(obj, ready):
            await self.events.record(
                obj,
                CLUSTER_ID_MAPPING_KIND,
                warning=ready["status"] != "True",
                reason=ready["reason"],
                message=ready["message"],
            )
        return None

    def _configured(self, obj: KubeObject, ready: Condition, generation: int) -> Condition:
        """Whether ceph-csi's own files carry what the old handles of this mapping need."""
        if ready["status"] != "True":
            message = "the mapping is not Ready: ceph-csi is not to use it"
            return condition(CEPH_CSI_CONFIGURED, False, "NotReady", message, generation)
        texts = [
            self._file(informer, where)
            for informer, where in zip(
                self.csi_config_files,
                (self.layout.config, self.layout.cluster_mapping),
                strict=True,
            )
        ]
        missing = missing_entries(obj, texts[0], texts[1], self.layout)
        if missing:
            message = "; ".join(missing)
            return condition(CEPH_CSI_CONFIGURED, False, "MissingConfigEntry", message, generation)
        message = f"{self.layout.config} and {self.layout.cluster_mapping} resolve its old handles"
        return condition(CEPH_CSI_CONFIGURED, True, "Configured", message, generation)

    @staticmethod
    def _file(informer: Informer, where: ConfigKey) -> str | None:
        config_map = informer.store.get(f"{where.namespace}/{where.name}")
        return None if config_map is None else (config_map.get("data") or {}).get(where.key)

    def _sides(self, spec: MappingSpec) -> tuple[str, str]:
        """(local, remote) clusterIDs on this site; ("", "") when neither side is local."""
        remote = spec.counterpart(self.local_cluster_id)
        return (self.local_cluster_id, remote) if remote is not None else ("", "")

    def _conditions(
        self, spec: MappingSpec, conflicts: list[str], local: str, generation: int
    ) -> tuple[Condition, Condition]:
        if conflicts:
            message = "; ".join(conflicts) + "; neither mapping is used until they agree"
            return (
                condition(READY, False, CONFLICTING, message, generation),
                condition(CONFLICTING, True, "Disagrees", message, generation),
            )
        agreed = condition(
            CONFLICTING, False, "NoConflict", "no other mapping disagrees", generation
        )
        if not local:
            message = (
                f"neither {spec.site_a!r} nor {spec.site_b!r} is this site's clusterID "
                f"{self.local_cluster_id!r}"
            )
            return condition(READY, False, "NotLocal", message, generation), agreed
        remote = spec.counterpart(local)
        message = f"volume handles of clusterID {remote!r} map to {local!r} here"
        return condition(READY, True, "Mapped", message, generation), agreed

    def _pools(self, spec: MappingSpec, local: str, remote: str) -> list[dict[str, Any]]:
        if spec.within_one_cluster:
            return self._pools_within(spec, local)
        local_ids, remote_ids = spec.pool_ids(local), spec.pool_ids(remote)
        pools = []
        for pool in spec.pools:
            entry: dict[str, Any] = {"name": pool.name}
            if pool.name in local_ids:
                entry |= {"localPoolID": local_ids[pool.name], "localPoolIDSource": "Spec"}
            elif (found := self._learnt_local_id(local, pool.name)) is not None:
                entry |= {"localPoolID": found, "localPoolIDSource": "LocalCluster"}
            if pool.name in remote_ids:
                entry |= {"remotePoolID": remote_ids[pool.name], "remotePoolIDSource": "Spec"}
            elif (found := self._learnt_remote_id(remote, pool.name)) is not None:
                entry |= {"remotePoolID": found, "remotePoolIDSource": "VolumeHandle"}
            pools.append(entry)
        return pools

    def _pools_within(self, spec: MappingSpec, cluster_id: str) -> list[dict[str, Any]]:
        """Pools of a mapping of `cluster_id` to itself. The spec's sides cannot say which site
        is this one, so the local ID is always the one regeneration looked up here; the remote
        ID is then the spec's other ID, else the one other pool ID the PVs' handles carry."""
        pools = []
        for pool in spec.pools:
            entry: dict[str, Any] = {"name": pool.name}
            local_id = self._learnt_local_id(cluster_id, pool.name)
            if local_id is not None:
                entry |= {"localPoolID": local_id, "localPoolIDSource": "LocalCluster"}
                given = (pool.site_a, pool.site_b)
                if None not in given and local_id in given:
                    remote_id = given[1] if given[0] == local_id else given[0]
                    entry |= {"remotePoolID": remote_id, "remotePoolIDSource": "Spec"}
                elif (found := self._learnt_remote_id(cluster_id, pool.name, local_id)) is not None:
                    entry |= {"remotePoolID": found, "remotePoolIDSource": "VolumeHandle"}
            pools.append(entry)
        return pools

    def _learnt_local_id(self, local: str, pool: str) -> int | None:
        found = {
            vhm["status"]["poolID"]
            for vhm in self.volume_handle_mappings.store.by_index(VHM_POOL_INDEX, f"{local}/{pool}")
        }
        return _only(found)

    def _learnt_remote_id(self, remote: str, pool: str, local_id: int | None = None) -> int | None:
        """The pool ID the handles of `remote`'s PVs carry; with `local_id`, other than it (the
        handles of a clusterID mapped to itself include the volumes provisioned here)."""
        found = set()
        for pv in self.volumes.store.by_index(PV_POOL_INDEX, f"{remote}/{pool}"):
            handle = pv_handle(pv)
            if handle is not None and handle.pool_id != local_id:
                found.add(handle.pool_id)
        return _only(found)


def _only(ids: set[int]) -> int | None:
    """The one ID seen; none when unseen or ambiguous (e.g. a pool re-created), so no guessing."""
    return next(iter(ids)) if len(ids) == 1 else None
