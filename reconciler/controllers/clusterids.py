"""The ClusterIDMapping model and the queries the controllers make of its cache.

A mapping names two symmetric sides, siteA and siteB, so the same object is applied unchanged on
both sites; on each, the side whose clusterID is the local one (--local-cluster-id) is local and
the other remote. Mappings of the same pair of clusterIDs that disagree about a pool ID conflict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ClusterNotMapped
from reconciler.k8s import Informer, KubeObject
from reconciler.k8s.conditions import READY, find_condition, is_ready
from reconciler.kinds import CIDM_CLUSTER_INDEX


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


def mapping_pending(cluster_id_mappings: Informer, cluster_id: str) -> bool:
    """Whether a mapping naming `cluster_id` awaits its reconcile: its status is not an answer."""
    return not all(
        reconciled(c) for c in cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id)
    )


def mapped_through(
    cluster_id_mappings: Informer, cluster_id: str, local_cluster_id: str
) -> list[str]:
    """Names of the Ready mappings that map remote `cluster_id` to the local cluster.

    Raises ClusterNotMapped naming what is missing or not Ready, for the PV's condition.
    """
    candidates = cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id)
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


def maps_within(cluster_id_mappings: Informer, cluster_id: str) -> bool:
    """Whether a Ready mapping maps `cluster_id` to itself: then PVs whose handle names the local
    clusterID may still come from the other site, and are regenerated like remote ones."""
    return any(
        is_ready(c)
        and c["status"].get("localClusterID") == cluster_id
        and c["status"].get("remoteClusterID") == cluster_id
        for c in cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id)
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
