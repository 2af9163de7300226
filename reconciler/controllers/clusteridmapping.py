"""The ClusterIDMapping reconciler: each mapping's status on this site.

- marks mappings of the same pair of clusterIDs that disagree about a pool ID as Conflicting
  (neither is used for that pair);
- resolves each pool's IDs: an ID in the spec wins; else the local ID is the one regeneration
  looked up by the pool's name on the local Ceph cluster (VolumeHandleMapping status), and the
  remote ID is read from the old handles of the PVs the PV controller takes (`why_not_selected`);
  the status says which. A learnt ID is kept in the status until a human changes it (an ID in
  the spec, or the status edited): a later PV or mapping that carries another one makes it
  ambiguous, which the PoolIDsAmbiguous condition says, but does not unset it;
- a mapping that was Ready and through which volumes were remapped keeps serving them when it
  later conflicts: Ready stays True (reason Conflicting, so the conflict still alerts), its pool
  IDs stay as they were, and the PV controller maps no new volume through it.

The PV controller re-reconciles the PVs of a clusterID when a mapping for it changes readiness;
`csimapping` renders ceph-csi's own cluster-mapping.json from the Ready mappings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from reconciler.controllers.cephcsi import missing_entries
from reconciler.controllers.clusterids import (
    MappingSpec,
    disagreement,
    effective_spec,
    why_not_selected,
)
from reconciler.controllers.regenerator import RegeneratorWatch
from reconciler.csiconfig import ConfigKey, CSIConfigLayout
from reconciler.k8s import Event, Informer, KubeObject, Result
from reconciler.k8s.apply import server_side_apply
from reconciler.k8s.conditions import (
    READY,
    Condition,
    condition,
    find_condition,
    is_ready,
    merge_conditions,
    transition,
)
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

#: A ClusterIDMapping's condition: PVs or regenerations carry several IDs for one of its pools.
POOL_IDS_AMBIGUOUS = "PoolIDsAmbiguous"
DEFAULT_DRIVER = "rbd.csi.ceph.com"


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
        driver_name: str = DEFAULT_DRIVER,
    ) -> None:
        self.regenerator = regenerator
        self.driver_name = driver_name
        """Remote pool IDs are learnt from the PVs the PV controller takes: this driver's."""
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

    def selected(self, pv: KubeObject) -> bool:
        return why_not_selected(pv, self.driver_name) is None

    def mappings_learning_from_volume(self, event: Event) -> list[str]:
        """Mappings of this PV's clusterID and pool whose remote ID it may teach, contradict (an
        ambiguity to report) or stop contradicting: only PVs the PV controller takes count."""
        handle = pv_handle(event.obj)
        pool = pv_pool(event.obj)
        taken = self.selected(event.obj) or (event.old is not None and self.selected(event.old))
        if handle is None or not pool or not taken:
            return []
        # A local handle can only teach a mapping of the local clusterID to itself.
        within_only = handle.cluster_id == self.local_cluster_id
        return self._concerned(
            handle.cluster_id, pool, "remotePoolID", handle.pool_id, within_only=within_only
        )

    def mappings_learning_from_handle_mapping(self, event: Event) -> list[str]:
        """Mappings whose local ID of the pool this VolumeHandleMapping resolved it may teach or
        contradict."""
        status = event.obj.get("status") or {}
        if status.get("clusterID") != self.local_cluster_id or not status.get("pool"):
            return []
        return self._concerned(
            self.local_cluster_id, str(status["pool"]), "localPoolID", status.get("poolID")
        )

    def _concerned(
        self, cluster_id: str, pool: str, field: str, value: Any, *, within_only: bool = False
    ) -> list[str]:
        """Mappings of `cluster_id` listing `pool` whose `field` is unset or other than `value`,
        or that report an ambiguity: once learnt and agreed, a PV event costs no reconcile."""
        keys = []
        for obj in self.cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id):
            if within_only and not MappingSpec.from_object(obj).within_one_cluster:
                continue
            pools = {p.get("name"): p for p in (obj.get("status") or {}).get("rbdPools") or []}
            ambiguous = (find_condition(obj, POOL_IDS_AMBIGUOUS) or {}).get("status") == "True"
            if pool in pools and (ambiguous or pools[pool].get(field) != value):
                keys.append(obj["metadata"]["name"])
        return keys

    # reconcile ----------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        obj = self.cluster_id_mappings.store.get(key)
        if obj is None:
            return None  # deleted: the PVs it mapped are re-queued by the PV controller
        spec = MappingSpec.from_object(obj)
        generation = int(obj["metadata"].get("generation", 0))
        local, remote = self._sides(spec)
        old_status = obj.get("status") or {}
        notes: list[str] = []
        pools = self._pools(spec, local, remote, old_status, notes) if local else []
        # Compared as used: with the IDs learnt, this mapping's fresh ones and the others' kept.
        mine = effective_spec(
            {
                **obj,
                "status": {"localClusterID": local, "remoteClusterID": remote, "rbdPools": pools},
            }
        )
        conflicts = [
            why
            for other in self.cluster_id_mappings.store.objects()
            if other is not obj and (why := disagreement(mine, effective_spec(other)))
        ]
        serving = self._remapped_through(obj, local, remote) if conflicts else 0
        if serving:
            pools = list(old_status.get("rbdPools") or [])  # as they were, for those volumes
        ready, conflicting = self._conditions(spec, conflicts, local, generation, serving)
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "localClusterID": local,
            "remoteClusterID": remote,
            "rbdPools": pools,
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
        ambiguity = (
            condition(POOL_IDS_AMBIGUOUS, True, "SeveralPoolIDs", "; ".join(notes), generation)
            if notes
            else condition(
                POOL_IDS_AMBIGUOUS, False, "Unambiguous", "one ID seen per pool", generation
            )
        )
        status["conditions"] = merge_conditions(
            old_status.get("conditions") or [],
            [ready, conflicting, ambiguity, configured, regenerator],
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
                warning=ready["status"] != "True" or ready["reason"] == CONFLICTING,
                reason=ready["reason"],
                message=ready["message"],
            )
        return None

    def _remapped_through(self, obj: KubeObject, local: str, remote: str) -> int:
        """How many Ready VolumeHandleMappings were remapped through `obj`, if it was Ready for
        the same clusterIDs: it keeps serving those through a conflict. (A scan of the cache,
        made only while the mapping conflicts.)"""
        old = obj.get("status") or {}
        was_ready = (find_condition(obj, READY) or {}).get("status") == "True"
        if (
            not local
            or not was_ready
            or (old.get("localClusterID"), old.get("remoteClusterID"))
            != (
                local,
                remote,
            )
        ):
            return 0
        name = obj["metadata"]["name"]
        return sum(
            1
            for vhm in self.volume_handle_mappings.store.objects()
            if name in ((vhm.get("status") or {}).get("clusterIDMappings") or []) and is_ready(vhm)
        )

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
        self, spec: MappingSpec, conflicts: list[str], local: str, generation: int, serving: int
    ) -> tuple[Condition, Condition]:
        if conflicts and serving:
            message = (
                "; ".join(conflicts) + f"; it keeps serving the {serving} volume(s) remapped "
                "through it, with the pool IDs it had, and maps no new one until they agree"
            )
            return (
                condition(READY, True, CONFLICTING, message, generation),
                condition(CONFLICTING, True, "Disagrees", message, generation),
            )
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

    def _pools(
        self,
        spec: MappingSpec,
        local: str,
        remote: str,
        old_status: dict[str, Any],
        notes: list[str],
    ) -> list[dict[str, Any]]:
        """The pools' IDs; `notes` gets what makes one ambiguous."""
        same_sides = (old_status.get("localClusterID"), old_status.get("remoteClusterID")) == (
            local,
            remote,
        )
        kept = {str(p.get("name")): p for p in (old_status.get("rbdPools") or []) if same_sides}
        if spec.within_one_cluster:
            return self._pools_within(spec, local, kept, notes)
        local_ids, remote_ids = spec.pool_ids(local), spec.pool_ids(remote)
        pools = []
        for pool in spec.pools:
            entry: dict[str, Any] = {"name": pool.name}
            old = kept.get(pool.name) or {}
            if pool.name in local_ids:
                entry |= {"localPoolID": local_ids[pool.name], "localPoolIDSource": "Spec"}
            else:
                found = self._learnt_local_ids(local, pool.name)
                _learn(entry, old, "local", "LocalCluster", found=found, notes=notes)
            if pool.name in remote_ids:
                entry |= {"remotePoolID": remote_ids[pool.name], "remotePoolIDSource": "Spec"}
            else:
                found = self._learnt_remote_ids(remote, pool.name)
                _learn(entry, old, "remote", "VolumeHandle", found=found, notes=notes)
            pools.append(entry)
        return pools

    def _pools_within(
        self,
        spec: MappingSpec,
        cluster_id: str,
        kept: dict[str, Any],
        notes: list[str],
    ) -> list[dict[str, Any]]:
        """Pools of a mapping of `cluster_id` to itself. The spec's sides cannot say which site
        is this one, so the local ID is always the one regeneration looked up here; the remote
        ID is then the spec's other ID, else the one other pool ID the PVs' handles carry."""
        pools = []
        for pool in spec.pools:
            entry: dict[str, Any] = {"name": pool.name}
            old = kept.get(pool.name) or {}
            found = self._learnt_local_ids(cluster_id, pool.name)
            local_id = _learn(entry, old, "local", "LocalCluster", found=found, notes=notes)
            if local_id is not None:
                given = (pool.site_a, pool.site_b)
                if None not in given and local_id in given:
                    remote_id = given[1] if given[0] == local_id else given[0]
                    entry |= {"remotePoolID": remote_id, "remotePoolIDSource": "Spec"}
                else:
                    found = self._learnt_remote_ids(cluster_id, pool.name, local_id)
                    _learn(entry, old, "remote", "VolumeHandle", found=found, notes=notes)
            pools.append(entry)
        return pools

    def _learnt_local_ids(self, local: str, pool: str) -> set[int]:
        return {
            int(vhm["status"]["poolID"])
            for vhm in self.volume_handle_mappings.store.by_index(VHM_POOL_INDEX, f"{local}/{pool}")
        }

    def _learnt_remote_ids(self, remote: str, pool: str, local_id: int | None = None) -> set[int]:
        """The pool IDs the handles of `remote`'s PVs carry (only PVs the PV controller takes: an
        unclaimed or static one was never reconciled); with `local_id`, other than it (the
        handles of a clusterID mapped to itself include the volumes provisioned here)."""
        found = set()
        for pv in self.volumes.store.by_index(PV_POOL_INDEX, f"{remote}/{pool}"):
            handle = pv_handle(pv)
            if handle is not None and handle.pool_id != local_id and self.selected(pv):
                found.add(handle.pool_id)
        return found


_SEEN_IN = {"local": "the VolumeHandleMappings here", "remote": "the PVs' old handles"}


def _learn(
    entry: dict[str, Any],
    old: dict[str, Any],
    side: str,
    source: str,
    *,
    found: Iterable[int],
    notes: list[str],
) -> int | None:
    """Put the learnt `side` ID of pool `entry` into it: the one learnt before (`old`, still of
    `source`) if any, else the one ID `found`; never a guess between several, which goes to
    `notes`. Returns the ID put in, if any."""
    field, source_field = f"{side}PoolID", f"{side}PoolIDSource"
    seen = sorted(set(found))
    kept = old.get(field) if old.get(source_field) == source else None
    pool = entry["name"]
    if kept is not None:
        entry |= {field: kept, source_field: source}
        others = [i for i in seen if i != kept]
        if others:
            notes.append(
                f"pool {pool!r}: {_SEEN_IN[side]} also carry {side} pool ID(s) "
                f"{', '.join(map(str, others))}; {kept}, learnt first, is kept (give the ID in "
                "the spec to choose another)"
            )
        return int(kept)
    if len(seen) == 1:
        entry |= {field: seen[0], source_field: source}
        return seen[0]
    if seen:
        notes.append(
            f"pool {pool!r}: {_SEEN_IN[side]} carry {side} pool IDs "
            f"{', '.join(map(str, seen))}; none is used until the spec gives one"
        )
    return None
