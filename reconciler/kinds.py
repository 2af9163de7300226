"""The API vocabulary of rbd-mirror-reconciler: the kinds it reads and writes, how they are
addressed, indexed, labelled and trimmed. Both the controllers and the CSI-side client use it."""

from __future__ import annotations

import hashlib

from reconciler.errors import InvalidHandle
from reconciler.handle import VolumeHandle
from reconciler.k8s import KubeObject, Resource, Transform

GROUP = "rbdmirror.csi.ceph.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

PERSISTENT_VOLUMES = Resource("", "v1", "persistentvolumes", namespaced=False)
CONFIG_MAPS = Resource("", "v1", "configmaps")
SECRETS = Resource("", "v1", "secrets")
CLUSTER_ID_MAPPINGS = Resource(GROUP, VERSION, "clusteridmappings", namespaced=False)
VOLUME_HANDLE_MAPPINGS = Resource(GROUP, VERSION, "volumehandlemappings", namespaced=False)

#: (apiVersion, kind) of the objects Events are about: listed objects carry neither.
PERSISTENT_VOLUME_KIND = ("v1", "PersistentVolume")
CLUSTER_ID_MAPPING_KIND = (API_VERSION, "ClusterIDMapping")
VOLUME_HANDLE_MAPPING_KIND = (API_VERSION, "VolumeHandleMapping")

#: Who writes: the field manager of every server-side apply (so the API server knows what is
#: ours) and the reporting component of every Event.
COMPONENT = "rbd-mirror-reconciler"
FIELD_MANAGER = COMPONENT

#: A ClusterIDMapping's condition: it disagrees with another mapping of the same clusterIDs.
CONFLICTING = "Conflicting"
#: A ClusterIDMapping's condition: ceph-csi's own files have what its old handles need.
CEPH_CSI_CONFIGURED = "CephCSIConfigured"
#: A ClusterIDMapping's condition: ceph-csi's own journal regenerator runs beside this controller.
CEPH_CSI_REGENERATOR = "CephCSIRegenerator"

#: On each VolumeHandleMapping: a digest of its old handle (handles may hold characters a label
#: cannot), so a CSI-side lookup by old handle is one request selecting one object.
VOLUME_HANDLE_HASH_LABEL = f"{GROUP}/volume-handle-hash"


def volume_handle_hash(handle: str) -> str:
    """sha224 in hex: 56 characters, within a label value's 63."""
    return hashlib.sha224(handle.encode()).hexdigest()


def volume_handle_selector(handle: str) -> str:
    """The label selector of the one VolumeHandleMapping of old handle `handle` (one request)."""
    return f"{VOLUME_HANDLE_HASH_LABEL}={volume_handle_hash(handle)}"


# Informer indexes: every lookup by a field is one dict access, never a scan of all objects.

#: PVs by the clusterID of their (decodable ceph-csi) volume handle.
PV_CLUSTER_INDEX = "handleClusterID"
#: PVs by "<handle clusterID>/<volumeAttributes.pool>": where remote pool IDs are learnt.
PV_POOL_INDEX = "handlePool"
#: VolumeHandleMappings by their old handle: the CSI-side lookup.
VHM_HANDLE_INDEX = "volumeHandle"
#: VolumeHandleMappings by "<local clusterID>/<pool>" of their status: where local IDs are learnt.
VHM_POOL_INDEX = "localPool"
#: ClusterIDMappings by the clusterIDs of both sides.
CIDM_CLUSTER_INDEX = "clusterID"


def pv_handle(pv: KubeObject) -> VolumeHandle | None:
    """The PV's ceph-csi volume handle, or None when it has none that decodes."""
    csi = (pv.get("spec") or {}).get("csi") or {}
    handle = csi.get("volumeHandle")
    if not isinstance(handle, str):
        return None
    try:
        return VolumeHandle.decode(handle)
    except InvalidHandle:
        return None


def pv_pool(pv: KubeObject) -> str:
    csi = (pv.get("spec") or {}).get("csi") or {}
    return str((csi.get("volumeAttributes") or {}).get("pool") or "")


def index_pv_cluster(pv: KubeObject) -> list[str]:
    handle = pv_handle(pv)
    return [handle.cluster_id] if handle is not None else []


def index_pv_pool(pv: KubeObject) -> list[str]:
    handle = pv_handle(pv)
    pool = pv_pool(pv)
    return [f"{handle.cluster_id}/{pool}"] if handle is not None and pool else []


def index_vhm_handle(vhm: KubeObject) -> list[str]:
    handle = (vhm.get("spec") or {}).get("volumeHandle")
    return [handle] if isinstance(handle, str) else []


def index_vhm_pool(vhm: KubeObject) -> list[str]:
    status = vhm.get("status") or {}
    if status.get("poolID") is None or not status.get("clusterID") or not status.get("pool"):
        return []
    return [f"{status['clusterID']}/{status['pool']}"]


def index_cidm_clusters(cidm: KubeObject) -> list[str]:
    spec = cidm.get("spec") or {}
    return [
        str(side["clusterID"])
        for side in (spec.get("siteA"), spec.get("siteB"))
        if isinstance(side, dict) and side.get("clusterID")
    ]


# Informer transforms: each cached object keeps only what the controllers read, so 10k PVs
# (of other drivers, or already local) and their managedFields do not fill the memory.

#: creationTimestamp: when the PV was (re-)applied, where the failover lag is counted from.
PV_METADATA = ("name", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp")
#: Annotating a PV with this (any new value) retries it after a terminal error whose cause was
#: fixed outside Kubernetes, e.g. a journal conflict cleared on Ceph. Only annotations of our
#: group are cached: kubectl's last-applied-configuration alone is the size of the PV.
RETRY_ANNOTATION = f"{GROUP}/retry"


def pv_trimmer(driver: str) -> Transform:
    """A PV reduced to its identity, claim and CSI source; other drivers' PVs to their driver."""

    def trim(pv: KubeObject) -> KubeObject:
        metadata = pv["metadata"]
        spec = pv.get("spec") or {}
        csi = spec.get("csi") or {}
        kept: KubeObject = {"metadata": {k: metadata[k] for k in PV_METADATA if k in metadata}}
        ours = {k: v for k, v in (metadata.get("annotations") or {}).items() if k.startswith(GROUP)}
        if ours:
            kept["metadata"]["annotations"] = ours
        if csi.get("driver") != driver:
            kept["spec"] = {"csi": {"driver": csi["driver"]}} if csi else {}
            return kept
        kept["spec"] = {"csi": csi}
        claim = spec.get("claimRef")
        if claim:
            kept["spec"]["claimRef"] = {k: claim[k] for k in ("name", "namespace") if k in claim}
        return kept

    return trim


def without_managed_fields(obj: KubeObject) -> KubeObject:
    """The object without metadata.managedFields (server-side apply's bookkeeping)."""
    metadata = {k: v for k, v in obj["metadata"].items() if k != "managedFields"}
    return {**obj, "metadata": metadata}
