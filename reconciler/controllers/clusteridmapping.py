"""ClusterIDMapping: which clusterID (and RBD pool IDs) of the other site stands for which here.

A mapping names two symmetric sides, siteA and siteB, so the same object is applied unchanged on
both sites; on each, the side whose clusterID is the local one (--local-cluster-id) is local and
the other remote. The reconciler here:

- marks mappings of the same pair of clusterIDs that disagree about a pool ID as Conflicting
  (neither is used for that pair);
- resolves each pool's IDs: an ID in the spec wins; else the local ID is the one regeneration
  looked up by the pool's name on the local Ceph cluster (VolumeHandleMapping status), and the
  remote ID is read from the old handles of the PVs being reconciled; the status says which;
- renders ceph-csi's own `cluster-mapping.json` from the Ready mappings (ClusterMappingRenderer),
  so an unmodified ceph-csi resolves old handles too.

The PV controller re-reconciles the PVs of a clusterID when a mapping for it changes readiness.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import ApiClient

from reconciler.controllers.kinds import (
    API_VERSION,
    CIDM_CLUSTER_INDEX,
    CLUSTER_ID_MAPPING_KIND,
    CLUSTER_ID_MAPPINGS,
    PV_POOL_INDEX,
    VHM_POOL_INDEX,
    pv_handle,
    pv_pool,
)
from reconciler.controllers.status import (
    COMPONENT,
    READY,
    Condition,
    EventRecorder,
    condition,
    find_condition,
    is_ready,
    merge_conditions,
    server_side_apply,
    transition,
)
from reconciler.errors import ClusterNotMapped, InvalidConfig
from reconciler.k8s import (
    ApiStatusError,
    Event,
    Informer,
    KubeObject,
    Result,
    TerminalError,
    request_json,
)

log = logging.getLogger(__name__)

CONFLICTING = "Conflicting"
#: The one key of the cluster-mapping.json renderer's queue: there is one file to render.
RENDER_KEY = "cluster-mapping.json"


@dataclass(frozen=True)
class PoolIDs:
    """One mirrored pool, by name, with the IDs the spec gives for each side."""

    name: str
    site_a: int | None
    site_b: int | None


@dataclass(frozen=True)
class MappingSpec:
    name: str
    site_a: str
    site_b: str
    pools: tuple[PoolIDs, ...]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> MappingSpec:
        spec = obj.get("spec") or {}
        return cls(
            name=str(obj["metadata"]["name"]),
            site_a=str((spec.get("siteA") or {}).get("clusterID", "")),
            site_b=str((spec.get("siteB") or {}).get("clusterID", "")),
            pools=tuple(
                PoolIDs(str(p["name"]), p.get("siteAPoolID"), p.get("siteBPoolID"))
                for p in spec.get("rbdPools") or []
            ),
        )

    @property
    def within_one_cluster(self) -> bool:
        """Both sites share one clusterID (Rook names it after its namespace on each site, e.g.
        "rook-ceph"): handles then differ by pool ID alone."""
        return self.site_a == self.site_b

    def counterpart(self, cluster_id: str) -> str | None:
        if cluster_id == self.site_a:
            return self.site_b
        if cluster_id == self.site_b:
            return self.site_a
        return None

    def pool_ids(self, cluster_id: str) -> dict[str, int]:
        """pool name -> the ID the spec gives for it on `cluster_id`'s side."""
        on_a = cluster_id == self.site_a
        ids = {p.name: p.site_a if on_a else p.site_b for p in self.pools}
        return {name: pool_id for name, pool_id in ids.items() if pool_id is not None}


def disagreement(one: MappingSpec, other: MappingSpec) -> str | None:
    """Why `one` and `other` cannot both be used, or None when they agree (or are unrelated).

    Only mappings of the same pair of clusterIDs (either way round) can disagree: about a pool's
    ID on one side, or about which pool an ID is. A clusterID paired with several others is a
    hub (one site mirrored to two), and each site uses only the pairs that include itself.
    """
    if {one.site_a, one.site_b} != {other.site_a, other.site_b}:
        return None
    for cluster_id in sorted({one.site_a, one.site_b}):
        mine, theirs = one.pool_ids(cluster_id), other.pool_ids(cluster_id)
        for pool in sorted(mine.keys() & theirs.keys()):
            if mine[pool] != theirs[pool]:
                return (
                    f"pool {pool!r} on {cluster_id!r} has ID {mine[pool]} here but "
                    f"{theirs[pool]} in ClusterIDMapping {other.name}"
                )
        mine_names = {pool_id: name for name, pool_id in mine.items()}
        for name, pool_id in sorted(theirs.items()):
            if mine_names.get(pool_id, name) != name:
                return (
                    f"pool ID {pool_id} on {cluster_id!r} is pool {mine_names[pool_id]!r} here "
                    f"but {name!r} in ClusterIDMapping {other.name}"
                )
    return None


def reconciled(obj: Mapping[str, Any]) -> bool:
    """Whether the mapping's status describes its current spec."""
    status = obj.get("status") or {}
    return bool(status.get("observedGeneration") == obj["metadata"].get("generation"))


def mapping_pending(mappings: Informer, cluster_id: str) -> bool:
    """Whether a mapping naming `cluster_id` awaits its reconcile: its status is not an answer."""
    return not all(reconciled(c) for c in mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id))


def mapped_through(mappings: Informer, cluster_id: str, local_cluster_id: str) -> list[str]:
    """Names of the Ready mappings that map remote `cluster_id` to the local cluster.

    Raises ClusterNotMapped naming what is missing or not Ready, for the PV's condition.
    """
    candidates = mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id)
    usable = [
        c["metadata"]["name"]
        for c in candidates
        if is_ready(c)
        and c["status"].get("localClusterID") == local_cluster_id
        and c["status"].get("remoteClusterID") == cluster_id
    ]
    if usable:
        return usable
    if not candidates:
        raise ClusterNotMapped(cluster_id, "no ClusterIDMapping names it")
    why = []
    for candidate in candidates:
        ready = find_condition(candidate, READY) or {}
        why.append(
            f"ClusterIDMapping {candidate['metadata']['name']} is not Ready "
            f"({ready.get('reason')}: {ready.get('message')})"
        )
    raise ClusterNotMapped(cluster_id, "; ".join(why))


def maps_within(mappings: Informer, cluster_id: str) -> bool:
    """Whether a Ready mapping maps `cluster_id` to itself: then PVs whose handle names the local
    clusterID may still come from the other site, and are regenerated like remote ones."""
    return any(
        is_ready(c)
        and c["status"].get("localClusterID") == cluster_id
        and c["status"].get("remoteClusterID") == cluster_id
        for c in mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id)
    )


def usability(obj: KubeObject) -> tuple[bool, str, str, str]:
    """What the PV controller reads of a mapping (the reason goes into PVs' ClusterNotMapped
    messages); PVs are re-queued only when this changes, not when pool IDs are learnt."""
    status = obj.get("status") or {}
    return (
        is_ready(obj),
        str(status.get("localClusterID", "")),
        str(status.get("remoteClusterID", "")),
        str((find_condition(obj, READY) or {}).get("reason", "")),
    )


class ClusterIDMappingReconciler:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        mappings: Informer,
        volumes: Informer,
        handle_mappings: Informer,
        events: EventRecorder,
        local_cluster_id: str,
    ) -> None:
        self.api_client = api_client
        self.mappings = mappings
        self.volumes = volumes
        self.handle_mappings = handle_mappings
        self.events = events
        self.local_cluster_id = local_cluster_id

    # event -> keys ------------------------------------------------------------------------------

    def all_mappings(self, event: Event) -> list[str]:
        """Any mapping's change can make others (non-)conflicting: look at all (they are few)."""
        return self.mappings.store.keys()

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
        for obj in self.mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id):
            if within_only and not MappingSpec.from_object(obj).within_one_cluster:
                continue
            pools = {p.get("name"): p for p in (obj.get("status") or {}).get("rbdPools") or []}
            if pool in pools and pools[pool].get(field) is None:
                keys.append(obj["metadata"]["name"])
        return keys

    # reconcile ----------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result | None:
        obj = self.mappings.store.get(key)
        if obj is None:
            return None  # deleted: the PVs it mapped are re-queued by the PV controller
        spec = MappingSpec.from_object(obj)
        generation = int(obj["metadata"].get("generation", 0))
        others = (MappingSpec.from_object(o) for o in self.mappings.store.objects() if o is not obj)
        conflicts = [why for other in others if (why := disagreement(spec, other))]
        local, remote = self._sides(spec)
        ready, conflicting = self._conditions(spec, conflicts, local, generation)
        old_status = obj.get("status") or {}
        status = {
            "observedGeneration": generation,
            "localClusterID": local,
            "remoteClusterID": remote,
            "rbdPools": self._pools(spec, local, remote) if local else [],
            "conditions": merge_conditions(
                old_status.get("conditions") or [], [ready, conflicting]
            ),
        }
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
            for vhm in self.handle_mappings.store.by_index(VHM_POOL_INDEX, f"{local}/{pool}")
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


#: Marks the entries this controller renders. ceph-csi ignores keys it does not know, and every
#: entry without it (an admin's own, say for CephFS) is kept as it is.
RENDERED_BY = "renderedBy"


def render_cluster_mapping(mappings: Iterable[KubeObject], existing: str | None = None) -> str:
    """ceph-csi's cluster-mapping.json from the Ready mappings, siteA as key, siteB as value,
    after the entries of `existing` (the file as it is) that this controller did not render.

    ceph-csi matches an entry by either side and reads the pool IDs in the matching direction,
    so the same file serves both sites. Pools whose IDs are not both known are left out.
    Raises InvalidConfig when `existing` is not a JSON list of objects: it is not overwritten.
    """
    entries = [entry for entry in _entries(existing) if RENDERED_BY not in entry]
    for obj in sorted(mappings, key=lambda o: str(o["metadata"]["name"])):
        if not is_ready(obj):
            continue
        spec = MappingSpec.from_object(obj)
        status = obj["status"]
        local_is_a = status.get("localClusterID") == spec.site_a
        pools = []
        for pool in status.get("rbdPools") or []:
            local_id, remote_id = pool.get("localPoolID"), pool.get("remotePoolID")
            if local_id is None or remote_id is None:
                continue
            a, b = (local_id, remote_id) if local_is_a else (remote_id, local_id)
            pools.append({str(a): str(b)})
        entries.append(
            {
                "clusterIDMapping": {spec.site_a: spec.site_b},
                "RBDPoolIDMapping": pools,
                RENDERED_BY: f"{COMPONENT}: ClusterIDMapping {spec.name}",
            }
        )
    return json.dumps(entries, indent=2) + "\n"


def _entries(existing: str | None) -> list[dict[str, Any]]:
    if not existing or not existing.strip():
        return []
    try:
        parsed = json.loads(existing)
    except ValueError as err:
        raise InvalidConfig(f"the cluster mapping in place is not JSON ({err})") from err
    if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
        raise InvalidConfig("the cluster mapping in place is not a JSON list of objects")
    return parsed


class ClusterMappingRenderer:
    """Keeps one key of one ConfigMap equal to `render_cluster_mapping` of the mappings."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        mappings: Informer,
        config_maps: Informer,
        namespace: str,
        name: str,
        key: str,
    ) -> None:
        self.api_client = api_client
        self.mappings = mappings
        self.config_maps = config_maps
        self.namespace = namespace
        self.name = name
        self.key = key

    @staticmethod
    def render_key(event: Event) -> list[str]:
        return [RENDER_KEY]

    async def reconcile(self, _: str) -> Result | None:
        cached = self.config_maps.store.get(f"{self.namespace}/{self.name}")
        in_place = None if cached is None else (cached.get("data") or {}).get(self.key)
        try:
            rendered = render_cluster_mapping(self.mappings.store.objects(), in_place)
        except InvalidConfig as err:
            # Only a human can fix the file; it is retried when the ConfigMap changes.
            raise TerminalError(
                f"ConfigMap {self.namespace}/{self.name} key {self.key}: {err}; left as it is"
            ) from err
        if in_place == rendered:
            return None
        path = f"/api/v1/namespaces/{self.namespace}/configmaps"
        if cached is None:
            body = {"metadata": {"name": self.name}, "data": {self.key: rendered}}
            try:
                await request_json(self.api_client, "POST", path, body)
            except ApiStatusError as err:
                if err.status != 409:  # created meanwhile: the cache will show it, look again
                    raise
                return Result(requeue=True)
        else:
            # A merge patch of our key alone leaves ceph-csi's config.json beside it untouched.
            await request_json(
                self.api_client,
                "PATCH",
                f"{path}/{self.name}",
                {"data": {self.key: rendered}},
                content_type="application/merge-patch+json",
            )
        log.info("rendered cluster mapping", extra={"configmap": f"{self.namespace}/{self.name}"})
        return None
