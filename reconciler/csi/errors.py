"""The errors of the CSI-side client. Each says what a driver should answer and why.

ReconcilerError
├── ResolveError
│   ├── ResolverUnavailable        the caches have not synced yet: retry, never "not found"
│   ├── VolumeNotFound             neither mapped nor local; names everything that was missing
│   └── LocalClusterNotConfigured  mapped to a local clusterID ceph-csi-config does not describe
└── NotPrimary                     a mirrored image that is not primary here must not be mapped

A malformed handle that no mapping names raises reconciler.errors.InvalidHandle.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.errors import ReconcilerError


class ResolveError(ReconcilerError):
    reason = "ResolveError"


class ResolverUnavailable(ResolveError):
    reason = "ResolverUnavailable"
    retryable = True

    def __init__(self, waiting_for: Sequence[str]) -> None:
        self.waiting_for = tuple(waiting_for)
        super().__init__(
            "the resolver's caches have not synced yet (waiting for "
            + ", ".join(self.waiting_for)
            + "); try again"
        )


class VolumeNotFound(ResolveError):
    reason = "VolumeNotFound"

    def __init__(self, handle: str, missing: Sequence[str]) -> None:
        self.handle = handle
        self.missing = tuple(missing)
        super().__init__(
            f"volume handle {handle!r} resolves to no local volume: " + "; ".join(missing)
        )


class LocalClusterNotConfigured(ResolveError):
    """ceph-csi cannot reach the volume either until ceph-csi-config is fixed: not "not found"."""

    reason = "LocalClusterNotConfigured"
    retryable = True

    def __init__(self, handle: str, cluster_id: str, via: str, problem: str) -> None:
        self.handle = handle
        self.cluster_id = cluster_id
        self.via = via
        super().__init__(
            f"volume handle {handle!r} maps to local clusterID {cluster_id!r} ({via}), "
            f"but {problem}"
        )


class NotPrimary(ReconcilerError):
    """ceph-csi refuses to stage a non-primary mirrored image: an error, not "in use"."""

    reason = "ImageNotPrimary"

    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(
            f"RBD image {image} is mirrored but not primary on this cluster: "
            "it must not be mapped until it is promoted"
        )
