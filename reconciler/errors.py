"""The errors rbd-mirror-reconciler raises. Each carries the facts a human needs to act.

ReconcilerError
├── InvalidInput          bad input only a human can fix (never retried)
│   ├── InvalidHandle     a volume handle that is not ceph-csi's encoding version 1
│   ├── InvalidConfig     a malformed ceph-csi config.json entry
│   ├── InvalidVolume     a PV that lacks what regeneration needs
│   ├── VolumeHandleTooLong  a handle longer than a VolumeHandleMapping can hold
│   └── InvalidCephKey    a key that is not a CephX key (what `ceph auth get-key` prints)
├── ClusterNotMapped      no local cluster for a handle's clusterID
│   └── MappingConflicting  only a conflicting mapping maps it: it serves what it served, no more
├── PoolNotMapped         the PV's pool is not among the pools its ClusterIDMappings name
├── JournalConflict       the journal on Ceph disagrees with the volume; nothing was written
├── SecretNotFound        the PV's Secret with the Ceph credentials does not exist (retried)
├── SecretForbidden       the controller may not read that Secret (403)
├── InvalidSecret         that Secret lacks base64 userID and userKey (retried)
├── CSIConfigUnavailable  ceph-csi-config is missing or unusable (retried)
└── CephError             talking to Ceph failed
    ├── CephBindingsMissing  Debian's python3-rados/python3-rbd are not importable
    ├── CephUnavailable   monitors unreachable or an operation timed out (retried)
    ├── CephPermissionDenied  the Ceph user's key or caps do not allow it (EPERM/EACCES)
    ├── ObjectExists      an exclusive create lost to another writer (the journal re-plans)
    ├── ObjectChanged     a conditional write found what it read changed (the journal re-plans)
    ├── PoolNotFound
    ├── ImageNotFound
    └── ImageNotPrimary   the mirrored image is not promoted here (yet): retried
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error this package raises on purpose."""

    #: A reason in CamelCase, as used in status conditions and Events.
    reason = "Error"
    #: Whether trying again later can help without a human changing something.
    retryable = False


class InvalidInput(ReconcilerError, ValueError):
    reason = "InvalidInput"


class InvalidHandle(InvalidInput):
    reason = "InvalidHandle"

    def __init__(self, handle: str, problem: str) -> None:
        self.handle = handle
        self.problem = problem
        super().__init__(f"invalid volume handle {handle!r}: {problem}")


class InvalidConfig(InvalidInput):
    reason = "InvalidConfig"


class InvalidVolume(InvalidInput):
    reason = "InvalidVolume"

    def __init__(self, volume: str, problem: str) -> None:
        self.volume = volume
        self.problem = problem
        super().__init__(f"volume {volume}: {problem}")


class VolumeHandleTooLong(InvalidInput):
    """A PV's handle longer than a VolumeHandleMapping's spec may hold (the API server would refuse
    the mapping with 422). ceph-csi's own handles are at most 128 bytes. Says so without quoting
    more than the handle's start."""

    reason = "VolumeHandleTooLong"

    def __init__(self, volume: str, length: int, limit: int, start: str) -> None:
        self.volume = volume
        self.length = length
        super().__init__(
            f"volume {volume}: its handle ({start!r}...) is {length} bytes long; a "
            f"VolumeHandleMapping holds at most {limit} and ceph-csi's handles are at most 128"
        )


class InvalidCephKey(InvalidInput):
    """A key that cannot be a CephX key. Says so without showing the key or any part of it."""

    reason = "InvalidCephKey"

    def __init__(self, user: str, problem: str) -> None:
        self.user = user
        super().__init__(f"the key of client.{user} is not a CephX key: {problem}")


class ClusterNotMapped(ReconcilerError):
    reason = "ClusterNotMapped"

    def __init__(self, cluster_id: str, detail: str = "") -> None:
        self.cluster_id = cluster_id
        suffix = f": {detail}" if detail else ""
        super().__init__(f"clusterID {cluster_id!r} is neither local nor mapped{suffix}")


class MappingConflicting(ClusterNotMapped):
    """The only Ready mappings of a clusterID conflict with another mapping: they keep serving the
    volumes remapped through them, but map no new one until the conflict is resolved."""

    reason = "MappingConflicting"

    def __init__(self, cluster_id: str, detail: str = "") -> None:
        self.cluster_id = cluster_id
        suffix = f": {detail}" if detail else ""
        ReconcilerError.__init__(
            self, f"clusterID {cluster_id!r} is mapped only by conflicting mappings{suffix}"
        )


class PoolNotMapped(ReconcilerError):
    """A PV's pool or journalPool that no ClusterIDMapping it is mapped through lists in
    spec.rbdPools: whoever can create a PV must not direct journal writes into any pool the CSI
    user may write. Retried when a mapping changes."""

    reason = "PoolNotMapped"

    def __init__(self, volume: str, attribute: str, pool: str, mappings: str) -> None:
        self.pool = pool
        super().__init__(
            f"volume {volume}: {attribute} {pool!r} is not among the rbdPools of {mappings}; "
            "nothing was written (add the pool there if its volumes fail over too)"
        )


class JournalConflict(ReconcilerError):
    """The OMAP journal holds something for this volume that contradicts it."""

    reason = "JournalConflict"

    def __init__(
        self,
        pool: str,
        obj: str,
        key: str,
        found: str,
        expected: str,
        *,
        note: str = "nothing was written",
    ) -> None:
        self.pool = pool
        self.object = obj
        self.key = key
        self.found = found
        self.expected = expected
        super().__init__(
            f"journal conflict in pool {pool!r}, object {obj!r}, key {key!r}: "
            f"found {found!r}, expected {expected!r}; {note}"
        )


class SecretNotFound(ReconcilerError):
    reason = "SecretNotFound"
    # Secrets are not watched (that would need list/watch on them): retry with backoff instead.
    retryable = True

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"Secret {namespace}/{name} with the Ceph credentials does not exist")


class SecretForbidden(ReconcilerError):
    """The API server refused to let the controller read the PV's Secret (403): its Role grants
    Secrets in ceph-csi's namespace only. Not retried until the PV changes or is annotated for a
    retry, since only a human can grant access (or point the PV at a readable Secret)."""

    reason = "SecretForbidden"

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(
            f"the controller may not read Secret {namespace}/{name} (403 Forbidden): its Role "
            "grants the Secrets of ceph-csi's namespace only"
        )


class InvalidSecret(ReconcilerError):
    reason = "InvalidSecret"
    retryable = True

    def __init__(self, namespace: str, name: str, problem: str) -> None:
        super().__init__(f"Secret {namespace}/{name}: {problem}")


class CSIConfigUnavailable(ReconcilerError):
    """ceph-csi-config is missing or unusable; ceph-csi cannot work either until it is fixed."""

    reason = "CSIConfigUnavailable"
    retryable = True


class CephError(ReconcilerError):
    reason = "CephError"
    retryable = True


class CephBindingsMissing(CephError):
    reason = "CephBindingsMissing"
    retryable = False


class ObjectExists(CephError):
    """Another writer created the object first. The journal re-plans at once (adopting the object
    or finding a real JournalConflict), so this never ends a reconcile; should it escape, trying
    again is exactly what helps."""

    reason = "ObjectExists"

    def __init__(self, pool: str, namespace: str, oid: str) -> None:
        self.pool = pool
        self.namespace = namespace
        self.oid = oid
        super().__init__(f"object {oid!r} already exists in pool {pool!r}")


class ObjectChanged(CephError):
    """A conditional write (RADOS omap_cmp in the same op) found a key no longer holding what was
    read when the write was planned: another writer got there first. Nothing was written by that
    op; the journal re-plans from what is there now."""

    reason = "ObjectChanged"

    def __init__(self, pool: str, namespace: str, oid: str) -> None:
        self.pool = pool
        self.namespace = namespace
        self.oid = oid
        super().__init__(
            f"object {oid!r} in pool {pool!r} changed since it was read: another writer"
        )


class CephUnavailable(CephError):
    reason = "CephUnavailable"


class CephPermissionDenied(CephError):
    """librados/librbd said EPERM or EACCES: a wrong key, an unknown user or missing caps. Trying
    again cannot help until someone changes the key or the caps."""

    reason = "CephPermissionDenied"
    retryable = False


class PoolNotFound(CephError):
    reason = "PoolNotFound"
    retryable = False

    def __init__(self, pool: str) -> None:
        self.pool = pool
        super().__init__(f"pool {pool!r} does not exist on the local Ceph cluster")


class ImageNotFound(CephError):
    reason = "ImageNotFound"

    def __init__(self, pool: str, namespace: str, image: str) -> None:
        self.pool = pool
        self.namespace = namespace
        self.image = image
        where = f"{pool}/{namespace}/{image}" if namespace else f"{pool}/{image}"
        super().__init__(f"RBD image {where} does not exist on the local Ceph cluster")


class ImageNotPrimary(CephError):
    """A mirrored image that is not primary here: ceph-csi must not map it, so it is not ready."""

    reason = "ImageNotPrimary"

    def __init__(self, pool: str, namespace: str, image: str) -> None:
        self.pool = pool
        self.namespace = namespace
        self.image = image
        where = f"{pool}/{namespace}/{image}" if namespace else f"{pool}/{image}"
        super().__init__(
            f"RBD image {where} is mirrored but not primary on the local Ceph cluster: "
            "promote it first; nothing was written"
        )
