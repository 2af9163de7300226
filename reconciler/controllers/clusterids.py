"""The ClusterIDMapping model and the queries the controllers make of its cache.

A mapping names two symmetric sides, siteA and siteB, so the same object is applied unchanged on
both sites; on each, the side whose clusterID is the local one (--local-cluster-id) is local and
the other remote. Mappings of the same pair of clusterIDs that disagree about a pool ID conflict:
about an ID in a spec or one learnt into a status (`effective_spec`).

A mapping that was Ready, through which volumes were remapped, and that conflicts later stays
Ready with Conflicting=True: it keeps serving those volumes (the resolver, the rendered ceph-csi
files) with the pool IDs it had, and `mapped_through` maps no new volume through it
(MappingConflicting). Under --dry-run the ClusterIDMapping controller does not run, so a mapping
without a status for its spec is evaluated in memory instead (`evaluate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from reconciler.errors import ClusterNotMapped, MappingConflicting, PoolNotMapped
from reconciler.k8s import Informer, KubeObject
from reconciler.k8s.conditions import READY, find_condition, is_ready
from reconciler.kinds import CIDM_CLUSTER_INDEX, CONFLICTING
from reconciler.volume import CSIVolume


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


def effective_spec(obj: Mapping[str, Any]) -> MappingSpec:
    """The mapping's spec with the pool IDs its status learnt filled in where the spec gives none:
    the IDs it is used with, which is what two mappings must agree on. A spec's ID of 7 beside a
    learnt 1 in another mapping is a conflict, not two entries of cluster-mapping.json. (A mapping
    of one clusterID to itself has no sides to put learnt IDs on: its spec alone counts.)"""
    spec = MappingSpec.from_object(obj)
    status = obj.get("status") or {}
    local, remote = status.get("localClusterID"), status.get("remoteClusterID")
    if spec.within_one_cluster or not local or {local, remote} != {spec.site_a, spec.site_b}:
        return spec
    learnt = {str(p.get("name")): p for p in status.get("rbdPools") or []}
    local_is_a = local == spec.site_a
    pools = []
    for pool in spec.pools:
        entry = learnt.get(pool.name) or {}
        ids = (entry.get("localPoolID"), entry.get("remotePoolID"))
        a_id, b_id = ids if local_is_a else ids[::-1]
        pools.append(
            PoolIDs(
                pool.name,
                pool.site_a if pool.site_a is not None else a_id,
                pool.site_b if pool.site_b is not None else b_id,
            )
        )
    return replace(spec, pools=tuple(pools))


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


def why_not_selected(pv: Mapping[str, Any], driver_name: str) -> str | None:
    """Why the PV controller does not take `pv`, or None when it does: it takes the driver's PVs
    with a claim, not being deleted, not `staticVolume: "true"` (ceph-csi keeps no journal for a
    static volume; it compares with "true" exactly). Remote pool IDs are learnt from these only."""
    spec = pv.get("spec") or {}
    csi = spec.get("csi") or {}
    if csi.get("driver") != driver_name:
        return f"its CSI driver is {csi.get('driver')!r}, not {driver_name!r}"
    if not spec.get("claimRef"):
        return "it has no claimRef"
    if pv["metadata"].get("deletionTimestamp"):
        return "it is being deleted"
    if (csi.get("volumeAttributes") or {}).get("staticVolume") == "true":
        return 'it is a static volume (volumeAttributes.staticVolume "true")'
    return None


def conflicting(obj: Mapping[str, Any]) -> bool:
    """Whether the mapping's status says it conflicts with another (Ready or not)."""
    found = find_condition(obj, CONFLICTING)
    return found is not None and found.get("status") == "True"


def mapping_pending(cluster_id_mappings: Informer, cluster_id: str) -> bool:
    """Whether a mapping naming `cluster_id` awaits its reconcile: its status is not an answer."""
    return not all(
        reconciled(c) for c in cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id)
    )


Use = Literal["usable", "serving", ""]
"""How a mapping may be used here: for any volume, only for those already remapped through it
(Ready but Conflicting), or not at all."""


def evaluate(
    obj: Mapping[str, Any], mappings: Iterable[Mapping[str, Any]], local_cluster_id: str
) -> tuple[Use, str, str]:
    """(use, remote clusterID, why not) of `obj` as the ClusterIDMapping controller would find it
    now, from specs alone: for --dry-run, where that controller does not run."""
    spec = MappingSpec.from_object(obj)
    remote = spec.counterpart(local_cluster_id)
    if remote is None:
        return "", "", f"neither side is this site's clusterID {local_cluster_id!r}"
    name = spec.name
    for other in mappings:
        if other["metadata"]["name"] == name:
            continue
        why = disagreement(spec, effective_spec(other))
        if why:
            return "", remote, f"Conflicting: {why}"
    return "usable", remote, ""


def use_of(obj: Mapping[str, Any], local_cluster_id: str) -> tuple[Use, str]:
    """(use, remote clusterID) of a mapping from its status."""
    status = obj.get("status") or {}
    if not is_ready(obj) or status.get("localClusterID") != local_cluster_id:
        return "", ""
    return ("serving" if conflicting(obj) else "usable"), str(status.get("remoteClusterID", ""))


def _uses(
    cluster_id_mappings: Informer, cluster_id: str, local_cluster_id: str, in_memory: bool
) -> list[tuple[KubeObject, Use, str, str]]:
    """(mapping, use, remote clusterID, why not) of each mapping naming `cluster_id`."""
    found = []
    for obj in cluster_id_mappings.store.by_index(CIDM_CLUSTER_INDEX, cluster_id):
        if in_memory and not reconciled(obj):
            use, remote, why = evaluate(obj, cluster_id_mappings.store.objects(), local_cluster_id)
        else:
            use, remote = use_of(obj, local_cluster_id)
            ready = find_condition(obj, READY) or {}
            why = f"{ready.get('reason')}: {ready.get('message')}"
        found.append((obj, use, remote, why))
    return found


def mapped_through(
    cluster_id_mappings: Informer,
    cluster_id: str,
    local_cluster_id: str,
    *,
    in_memory: bool = False,
) -> list[str]:
    """Names of the Ready mappings that map remote `cluster_id` to the local cluster.

    Raises ClusterNotMapped naming what is missing or not Ready, for the PV's condition, and
    MappingConflicting when the only Ready ones conflict (they map no new volume). With
    `in_memory`, a mapping without a status for its spec is evaluated from the specs (--dry-run).
    """
    uses = _uses(cluster_id_mappings, cluster_id, local_cluster_id, in_memory)
    usable = [
        o["metadata"]["name"]
        for o, use, remote, _ in uses
        if use == "usable" and remote == cluster_id
    ]
    if usable:
        return usable
    if not uses:
        raise ClusterNotMapped(cluster_id, "no ClusterIDMapping names it")
    serving = [o for o, use, remote, _ in uses if use == "serving" and remote == cluster_id]
    if serving:
        raise MappingConflicting(
            cluster_id,
            "; ".join(
                f"ClusterIDMapping {o['metadata']['name']} "
                f"({(find_condition(o, CONFLICTING) or {}).get('message')})"
                for o in serving
            ),
        )
    raise ClusterNotMapped(
        cluster_id,
        "; ".join(
            f"ClusterIDMapping {o['metadata']['name']} is not Ready ({why})"
            for o, _, _, why in uses
        ),
    )


def maps_within(
    cluster_id_mappings: Informer,
    cluster_id: str,
    pool: str | None = None,
    *,
    in_memory: bool = False,
) -> Use:
    """How a Ready mapping maps `cluster_id` to itself, listing `pool` if given: then PVs whose
    handle names the local clusterID may still come from the other site, and are regenerated
    like remote ones ("usable"), or left as they are while it conflicts ("serving")."""
    best: Use = ""
    for obj, use, remote, _ in _uses(cluster_id_mappings, cluster_id, cluster_id, in_memory):
        if not use or remote != cluster_id:
            continue
        if pool is not None and pool not in {p.name for p in MappingSpec.from_object(obj).pools}:
            continue
        if use == "usable":
            return use
        best = use
    return best


def check_pools(cluster_id_mappings: Informer, through: list[str], volume: CSIVolume) -> None:
    """Raise PoolNotMapped unless the volume's pool and journal pool are among the rbdPools of
    the mappings it is mapped through: a PV may not direct journal writes into other pools."""
    allowed: set[str] = set()
    for name in through:
        obj = cluster_id_mappings.store.get(name)
        if obj is not None:
            allowed |= {p.name for p in MappingSpec.from_object(obj).pools}
    described = ", ".join(f"ClusterIDMapping {n}" for n in through)
    for attribute, pool in (("pool", volume.pool), ("journalPool", volume.journal_pool)):
        if pool not in allowed:
            raise PoolNotMapped(volume.pv_name, attribute, pool, described)


def usability(obj: KubeObject) -> tuple[bool, str, str, str, bool, tuple[str, ...]]:
    """What the PV controller reads of a mapping (the reason goes into PVs' ClusterNotMapped
    messages; the pools decide which PVs it takes); PVs are re-queued only when this changes,
    not when pool IDs are learnt."""
    status = obj.get("status") or {}
    return (
        is_ready(obj),
        str(status.get("localClusterID", "")),
        str(status.get("remoteClusterID", "")),
        str((find_condition(obj, READY) or {}).get("reason", "")),
        conflicting(obj),
        tuple(sorted(p.name for p in MappingSpec.from_object(obj).pools)),
    )
