"""Whether a PV's handle would be mapped to this site after a failover, judged from the
ClusterIDMappings' specs as the controller will judge them (its status may not exist yet: before
a failover the controller need not run, and the mappings may come from a file).

Pure: the local pool IDs are looked up on Ceph by the caller and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.controllers.cephcsi import missing_entries
from reconciler.controllers.clusterids import MappingSpec, disagreement
from reconciler.csiconfig import CSIConfigLayout
from reconciler.handle import VolumeHandle


@dataclass(frozen=True)
class MappingVerdict:
    ok: bool
    cell: str
    detail: str
    mapping: dict[str, Any] | None = None
    """The mapping as the controller's status would show it (Ready, this pool's IDs), for
    `missing_entries`; None when no mapping is needed or none is usable."""


def check_mapping(
    handle: VolumeHandle,
    pool: str,
    local_cluster_id: str,
    local_pool_id: int | None,
    mappings: Sequence[Mapping[str, Any]],
) -> MappingVerdict:
    """Whether a Ready, non-conflicting ClusterIDMapping maps the handle's clusterID and `pool`
    to this site, with pool IDs that agree with the handle and with this cluster."""
    remote = handle.cluster_id
    specs = sorted((MappingSpec.from_object(m) for m in mappings), key=lambda s: s.name)
    pair = {remote, local_cluster_id}
    candidates = [s for s in specs if {s.site_a, s.site_b} == pair]
    if not candidates:
        if remote == local_cluster_id:
            return MappingVerdict(
                True, "not needed", f"the handle names this site's clusterID {remote!r}"
            )
        return MappingVerdict(
            False,
            "none",
            f"no ClusterIDMapping maps clusterID {remote!r} to this site's {local_cluster_id!r}: "
            "the controller would leave the PV ClusterNotMapped",
        )
    for spec in candidates:
        for other in specs:
            if other.name != spec.name and (why := disagreement(spec, other)):
                return MappingVerdict(
                    False,
                    "conflict",
                    f"ClusterIDMapping {spec.name} conflicts with {other.name} ({why}): neither "
                    "is used",
                )
    spec = candidates[0]
    listed = {p.name: p for p in spec.pools}
    if pool not in listed:
        return MappingVerdict(
            False,
            "no pool",
            f"ClusterIDMapping {spec.name} does not list pool {pool!r} in spec.rbdPools: "
            "ceph-csi's cluster-mapping.json would not map its pool ID",
        )
    within = spec.within_one_cluster
    ids = listed[pool]
    given_remote = None if within else (ids.site_a if remote == spec.site_a else ids.site_b)
    given_local = None if within else (ids.site_b if remote == spec.site_a else ids.site_a)
    if given_remote is not None and given_remote != handle.pool_id:
        return MappingVerdict(
            False,
            "pool ID",
            f"ClusterIDMapping {spec.name} says pool {pool!r} has ID {given_remote} on "
            f"{remote!r}, but the PV's handle carries {handle.pool_id}",
        )
    if local_pool_id is None:
        return MappingVerdict(False, "no pool", f"pool {pool!r} does not exist on this cluster")
    if given_local is not None and given_local != local_pool_id:
        return MappingVerdict(
            False,
            "pool ID",
            f"ClusterIDMapping {spec.name} says pool {pool!r} has ID {given_local} on "
            f"{local_cluster_id!r}, but this cluster has it as {local_pool_id}",
        )
    if within and handle.pool_id == local_pool_id:
        return MappingVerdict(
            True, "not needed", f"the handle names this site's clusterID and pool ID {pool!r}"
        )
    status_pool = {"name": pool, "localPoolID": local_pool_id, "remotePoolID": handle.pool_id}
    synthesized = {
        "metadata": {"name": spec.name},
        "spec": {
            "siteA": {"clusterID": spec.site_a},
            "siteB": {"clusterID": spec.site_b},
            "rbdPools": [{"name": pool}],
        },
        "status": {
            "localClusterID": local_cluster_id,
            "remoteClusterID": remote,
            "rbdPools": [status_pool],
        },
    }
    return MappingVerdict(
        True,
        "ok",
        f"ClusterIDMapping {spec.name}: {remote!r} pool {pool!r} #{handle.pool_id} -> "
        f"{local_cluster_id!r} #{local_pool_id}",
        synthesized,
    )


def csi_config_gaps(
    verdict: MappingVerdict | None,
    config: str | None,
    cluster_mapping: str | None,
    layout: CSIConfigLayout,
    *,
    local: str | None,
) -> list[str]:
    """What ceph-csi's files lack for this PV's old handle (empty: nothing): an entry for this
    site (`local`: its clusterID when config.json has a usable one, else None), and the
    controller's `missing_entries` for the mapping as it will be."""
    gaps = []
    if local is None:
        gaps.append(f"{layout.config} has no usable entry for this site's clusterID")
    if verdict is not None and verdict.mapping is not None:
        gaps.extend(missing_entries(verdict.mapping, config, cluster_mapping, layout))
    return gaps
