"""The CSI side: what a driver needs to use a volume whose handle names the failed site.

A CSI request (DeleteVolume, ControllerExpandVolume, CreateSnapshot, NodeStage, ...) may carry a
pre-failover handle. `Resolver` finds the volume on this site from the VolumeHandleMappings,
ClusterIDMappings and ceph-csi-config, all cached by informers: resolving never contacts any Ceph
cluster, so a dead site cannot make it hang (ceph-csi issue #4493). `rwo_image_use` is ceph-csi's
watcher rule for staging RWO volumes of mirrored images. Errors: reconciler.csi.errors.
"""

from reconciler.csi.errors import (
    LocalClusterNotConfigured,
    NotPrimary,
    ResolveError,
    ResolverUnavailable,
    VolumeNotFound,
)
from reconciler.csi.resolution import How, ResolvedVolume
from reconciler.csi.resolver import Resolver, SyncResolver
from reconciler.csi.watchers import ImageUse, MirrorRole, rwo_image_use

__all__ = [
    "How",
    "ImageUse",
    "LocalClusterNotConfigured",
    "MirrorRole",
    "NotPrimary",
    "ResolveError",
    "ResolvedVolume",
    "Resolver",
    "ResolverUnavailable",
    "SyncResolver",
    "VolumeNotFound",
    "rwo_image_use",
]
