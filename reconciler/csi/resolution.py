"""Resolving a pre-failover volume handle from cached API state. Pure: no I/O, no Ceph.

Order, first answer wins:

1. `mapping`: a Ready VolumeHandleMapping whose spec.volumeHandle is exactly the handle; its
   status is the answer (journal regenerated here, new handle, pool name and ID, image name).
2. `cluster-mapping`: Ready, non-conflicting ClusterIDMappings whose status maps the handle's
   clusterID (as remote) to the local one, and its pool ID to a local pool ID. The object UUID
   is kept, as regeneration keeps it, so the image is `csi-vol-<uuid>`.
3. `local`: the handle's clusterID is in the local ceph-csi config: the handle is used as-is.

Monitors always come from the local ceph-csi config, as ceph-csi reads them; the RADOS namespace
comes from a mapping's status (where the journal was regenerated), else from that config.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from reconciler.csi.errors import LocalClusterNotConfigured, VolumeNotFound
from reconciler.csiconfig import ClusterConfig, CSIConfig
from reconciler.errors import InvalidConfig
from reconciler.handle import VolumeHandle
from reconciler.k8s import KubeObject, Store
from reconciler.k8s.conditions import READY, find_condition, is_ready
from reconciler.kinds import CONFLICTING, index_cidm_clusters

How = Literal["mapping", "cluster-mapping", "local"]

#: The compact cache entry of a VolumeHandleMapping, under this key of its trimmed object.
ENTRY = "handleMapping"
#: Trimmed VolumeHandleMappings by their old handle (spec.volumeHandle).
HANDLE_INDEX = "volumeHandle"


@dataclass(frozen=True, slots=True)
class ResolvedVolume:
    volume_handle: str
    """The handle of the volume on this site (the given one when `how` is `local`)."""
    how: How
    via: str
    """What resolved it: the VolumeHandleMapping, the ClusterIDMapping or the config."""
    cluster_id: str
    monitors: tuple[str, ...]
    rados_namespace: str
    mirror_daemon_count: int
    """rbd.mirrorDaemonCount of the local cluster, for the RWO watcher rule."""
    pool: str | None
    """None for a `local` handle whose pool no ClusterIDMapping names: ceph-csi looks the name
    up by ID on Ceph, which this resolver never contacts."""
    pool_id: int
    image_name: str
    """As recorded by the mapping; otherwise ceph-csi's default `csi-vol-<uuid>`."""
    journal_pool: str | None
    """Only a VolumeHandleMapping records it; otherwise the per-volume object's
    `csi.journalpool` says, and without it the journal is in the image pool."""

    def to_json(self) -> dict[str, object]:
        return {
            "volumeHandle": self.volume_handle,
            "how": self.how,
            "via": self.via,
            "clusterID": self.cluster_id,
            "monitors": list(self.monitors),
            "radosNamespace": self.rados_namespace,
            "mirrorDaemonCount": self.mirror_daemon_count,
            "pool": self.pool,
            "poolID": self.pool_id,
            "imageName": self.image_name,
            "journalPool": self.journal_pool,
        }


# VolumeHandleMappings -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandleMapping:
    """What the resolver keeps of one VolumeHandleMapping (a few hundred bytes, not ~12 KiB)."""

    name: str
    volume_handle: str
    why_unusable: str
    """"" when Ready with a complete status; else why the mapping cannot be used."""
    new_volume_handle: str = ""
    cluster_id: str = ""
    pool: str = ""
    pool_id: int = 0
    image_name: str = ""
    journal_pool: str = ""
    rados_namespace: str = ""


_MAPPED_FIELDS = ("newVolumeHandle", "clusterID", "pool", "poolID", "imageName")


def trim_handle_mapping(obj: KubeObject) -> KubeObject:
    """The informer transform: the object reduced to its key, version and HandleMapping."""
    metadata = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    name = str(metadata["name"])
    old_handle = str(spec.get("volumeHandle", ""))
    why_unusable = _why_unusable(obj)
    if why_unusable:
        entry = HandleMapping(name, old_handle, why_unusable)
    else:
        # Pools, clusterIDs and namespaces repeat across thousands of mappings: share them.
        entry = HandleMapping(
            name,
            old_handle,
            "",
            new_volume_handle=str(status["newVolumeHandle"]),
            cluster_id=sys.intern(str(status["clusterID"])),
            pool=sys.intern(str(status["pool"])),
            pool_id=int(status["poolID"]),
            image_name=str(status["imageName"]),
            journal_pool=sys.intern(str(status.get("journalPool") or status["pool"])),
            rados_namespace=sys.intern(str(status.get("radosNamespace") or "")),
        )
    return {
        "metadata": {"name": name, "resourceVersion": metadata.get("resourceVersion", "")},
        ENTRY: entry,
    }


def _why_unusable(obj: KubeObject) -> str:
    why = _why_not_ready(obj)
    if why:
        return why
    status = obj.get("status") or {}
    lacking = [f for f in _MAPPED_FIELDS if status.get(f) in (None, "")]
    return f"is Ready but its status lacks {', '.join(lacking)}" if lacking else ""


def _why_not_ready(obj: KubeObject) -> str:
    """Why `obj` is not Ready for its current generation, to follow its name; "" when it is."""
    if is_ready(obj):
        return ""
    ready = find_condition(obj, READY)
    if ready is None:
        return "is not reconciled yet"
    if ready.get("status") == "True":
        return "has a status for an older generation of its spec"
    return f"is not Ready ({ready.get('reason')}: {ready.get('message')})"


def index_trimmed_handle(obj: KubeObject) -> list[str]:
    return [obj[ENTRY].volume_handle]


# ClusterIDMappings --------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRoute:
    name: str
    local_pool_id: int | None


@dataclass(frozen=True)
class ClusterRoute:
    """One Ready ClusterIDMapping's status: a remote clusterID's pools as the local ones."""

    mapping: str
    local_cluster_id: str
    pools: Mapping[int, PoolRoute]
    """By remote pool ID."""


@dataclass(frozen=True)
class ClusterRoutes:
    """The ClusterIDMappings as this site uses them, rebuilt whenever one changes (they are few)."""

    routes: Mapping[str, tuple[ClusterRoute, ...]] = field(default_factory=dict)
    """Remote clusterID -> the Ready, non-conflicting mappings of it, by name."""
    unused: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """clusterID -> why each mapping naming it (either side) is not used."""
    local_pool_names: Mapping[tuple[str, int], str] = field(default_factory=dict)
    """(local clusterID, local pool ID) -> pool name."""

    @classmethod
    def from_objects(cls, objects: Iterable[KubeObject]) -> ClusterRoutes:
        routes: dict[str, list[ClusterRoute]] = {}
        unused: dict[str, list[str]] = {}
        local_pool_names: dict[tuple[str, int], str] = {}
        for obj in sorted(objects, key=lambda o: str(o["metadata"]["name"])):
            name = str(obj["metadata"]["name"])
            status = obj.get("status") or {}
            why_not = _why_unused(obj)
            if why_not:
                for cluster_id in index_cidm_clusters(obj):
                    unused.setdefault(cluster_id, []).append(f"ClusterIDMapping {name} {why_not}")
                continue
            local = str(status["localClusterID"])
            pools: dict[int, PoolRoute] = {}
            for pool in status.get("rbdPools") or []:
                local_id = None if pool.get("localPoolID") is None else int(pool["localPoolID"])
                if local_id is not None:
                    local_pool_names[(local, local_id)] = str(pool["name"])
                if pool.get("remotePoolID") is not None:
                    pools[int(pool["remotePoolID"])] = PoolRoute(str(pool["name"]), local_id)
            route = ClusterRoute(name, local, pools)
            routes.setdefault(str(status["remoteClusterID"]), []).append(route)
        return cls(
            routes={k: tuple(v) for k, v in routes.items()},
            unused={k: tuple(v) for k, v in unused.items()},
            local_pool_names=local_pool_names,
        )


def _why_unused(obj: KubeObject) -> str:
    conflicting = find_condition(obj, CONFLICTING)
    if conflicting is not None and conflicting.get("status") == "True":
        return f"is Conflicting: {conflicting.get('message')}"
    why = _why_not_ready(obj)
    if why:
        return why
    status = obj.get("status") or {}
    if not status.get("localClusterID") or not status.get("remoteClusterID"):
        return "is Ready but its status names no local and remote clusterID"
    return ""


# ceph-csi-config ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalClusters:
    """The local ceph-csi config, or why there is none to use."""

    source: str
    """Where it was read, for messages: "ConfigMap <ns>/<name> key config.json"."""
    clusters: CSIConfig
    problem: str = ""

    @classmethod
    def from_config_map(
        cls, source: str, config_map: KubeObject | None, key: str = "config.json"
    ) -> LocalClusters:
        if config_map is None:
            return cls(source, CSIConfig([]), "it does not exist")
        text = (config_map.get("data") or {}).get(key)
        if text is None:
            return cls(source, CSIConfig([]), f"it has no key {key}")
        try:
            return cls(source, CSIConfig.parse(text))
        except InvalidConfig as err:
            return cls(source, CSIConfig([]), f"it is invalid: {err}")

    def cluster(self, handle: str, cluster_id: str, via: str) -> ClusterConfig:
        found = self.clusters.get(cluster_id)
        if found is None:
            raise LocalClusterNotConfigured(handle, cluster_id, via, self.why_absent(cluster_id))
        return found

    def why_absent(self, cluster_id: str) -> str:
        if self.problem:
            return f"{self.source} is unusable: {self.problem}"
        entry_problem = self.clusters.problem(cluster_id)
        if entry_problem:
            return f"{self.source}: {entry_problem}"
        return f"{self.source} has no entry for clusterID {cluster_id!r}"


# resolution ---------------------------------------------------------------------------------


def resolve(
    handle: str,
    handle_mappings: Store,
    cluster_routes: ClusterRoutes,
    local: LocalClusters,
) -> ResolvedVolume:
    """The local volume `handle` stands for; see the module docstring for the order.

    Raises VolumeNotFound naming what was looked for, LocalClusterNotConfigured, and InvalidHandle
    for a handle that no mapping names and that does not decode.
    """
    entries: list[HandleMapping] = [
        obj[ENTRY] for obj in handle_mappings.by_index(HANDLE_INDEX, handle)
    ]
    usable = [e for e in entries if not e.why_unusable]
    if usable:
        return _from_handle_mapping(handle, usable, local)
    missing = [f"VolumeHandleMapping {e.name} {e.why_unusable}" for e in entries] or [
        "no VolumeHandleMapping names it"
    ]
    decoded = VolumeHandle.decode(handle)
    found = _from_cluster_mappings(handle, decoded, cluster_routes, local, missing)
    if found is not None:
        return found
    config = local.clusters.get(decoded.cluster_id)
    if config is not None:
        return ResolvedVolume(
            volume_handle=handle,
            how="local",
            via=local.source,
            cluster_id=decoded.cluster_id,
            monitors=config.monitors,
            rados_namespace=config.rados_namespace,
            mirror_daemon_count=config.mirror_daemon_count,
            pool=cluster_routes.local_pool_names.get((decoded.cluster_id, decoded.pool_id)),
            pool_id=decoded.pool_id,
            image_name=decoded.image_name(),
            journal_pool=None,
        )
    missing.append(local.why_absent(decoded.cluster_id))
    raise VolumeNotFound(handle, missing)


def _from_handle_mapping(
    handle: str, usable: list[HandleMapping], local: LocalClusters
) -> ResolvedVolume:
    entry = usable[0]
    via = f"VolumeHandleMapping {entry.name}"
    disagreeing = [e.name for e in usable if e.new_volume_handle != entry.new_volume_handle]
    if disagreeing:
        raise VolumeNotFound(
            handle,
            [f"{via} and VolumeHandleMapping {', '.join(disagreeing)} map it to different handles"],
        )
    config = local.cluster(handle, entry.cluster_id, via)
    return ResolvedVolume(
        volume_handle=entry.new_volume_handle,
        how="mapping",
        via=via,
        cluster_id=entry.cluster_id,
        monitors=config.monitors,
        rados_namespace=entry.rados_namespace,
        mirror_daemon_count=config.mirror_daemon_count,
        pool=entry.pool,
        pool_id=entry.pool_id,
        image_name=entry.image_name,
        journal_pool=entry.journal_pool,
    )


def _from_cluster_mappings(
    handle: str,
    decoded: VolumeHandle,
    cluster_routes: ClusterRoutes,
    local: LocalClusters,
    missing: list[str],
) -> ResolvedVolume | None:
    """The first Ready mapping (by name) that maps the pool, as ceph-csi tries each in turn.
    Appends to `missing` why the others did not."""
    remote = decoded.cluster_id
    routes = cluster_routes.routes.get(remote, ())
    for route in routes:
        via = f"ClusterIDMapping {route.mapping}"
        pool = route.pools.get(decoded.pool_id)
        if pool is None:
            missing.append(f"{via} maps clusterID {remote!r} but not its pool ID {decoded.pool_id}")
            continue
        if pool.local_pool_id is None:
            missing.append(f"{via} does not know the local ID of pool {pool.name!r} yet")
            continue
        config = local.cluster(handle, route.local_cluster_id, via)
        new = VolumeHandle(route.local_cluster_id, pool.local_pool_id, decoded.object_uuid)
        return ResolvedVolume(
            volume_handle=new.encode(),
            how="cluster-mapping",
            via=via,
            cluster_id=route.local_cluster_id,
            monitors=config.monitors,
            rados_namespace=config.rados_namespace,
            mirror_daemon_count=config.mirror_daemon_count,
            pool=pool.name,
            pool_id=pool.local_pool_id,
            image_name=new.image_name(),
            journal_pool=None,
        )
    unused = cluster_routes.unused.get(remote, ())
    missing.extend(unused)
    if not routes and not unused:
        missing.append(f"no ClusterIDMapping names clusterID {remote!r}")
    return None
