"""Regenerating ceph-csi's journal for one volume on the local (surviving) Ceph cluster.

The old handle's UUID is kept, so the image name `csi-vol-<uuid>` still matches the mirrored
image; the new handle carries the local clusterID and the local ID of the image pool (found by
the pool's *name*: pool IDs differ between sites). Running it again on a regenerated volume
writes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.cephconn import ImageInfo
from reconciler.errors import ImageNotPrimary
from reconciler.handle import VolumeHandle
from reconciler.journal import (
    DEFAULT_INSTANCE_ID,
    JournalPlan,
    OmapStore,
    VolumeJournal,
    VolumeReservation,
)
from reconciler.volume import CSIVolume

log = logging.getLogger(__name__)


class CephAccess(OmapStore, Protocol):
    """What regeneration needs of a Ceph connection beyond the journal's own operations."""

    async def pool_id(self, pool: str) -> int: ...

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo: ...


@dataclass(frozen=True)
class LocalCluster:
    """The identity of the cluster the journal is regenerated on."""

    cluster_id: str
    rados_namespace: str = ""
    instance_id: str = DEFAULT_INSTANCE_ID


@dataclass(frozen=True)
class Regeneration:
    old_handle: str
    new_handle: str
    image_name: str
    image_id: str
    image_pool: str
    image_pool_id: int
    journal_pool: str
    rados_namespace: str
    #: None when the image is not mirrored.
    image_primary: bool | None
    #: The keys written (or, in a dry run, that would be), in order.
    written: list[str]
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "oldHandle": self.old_handle,
            "newHandle": self.new_handle,
            "imageName": self.image_name,
            "imageID": self.image_id,
            "pool": self.image_pool,
            "poolID": self.image_pool_id,
            "journalPool": self.journal_pool,
            "radosNamespace": self.rados_namespace,
            "imagePrimary": self.image_primary,
            "written": self.written,
            "dryRun": self.dry_run,
        }


async def plan_regeneration(
    ceph: CephAccess,
    volume: CSIVolume,
    local: LocalCluster,
) -> tuple[JournalPlan, ImageInfo, str]:
    """Read the local cluster and plan the journal writes; returns (plan, image, new handle)."""
    old = VolumeHandle.decode(volume.volume_handle)
    image_name = volume.image_name(old.object_uuid)
    kms_id, encryption_type = volume.encryption()
    # ceph-csi on this site reads the namespace from its config alone, so the journal must be
    # there. A PV attribute naming another one describes the old site (rbd-mirror may map
    # namespaces between sites): it is followed by nothing ceph-csi does here, so it is not an
    # error, but the divergence is logged rather than passed over.
    namespace = local.rados_namespace
    pv_namespace = volume.attributes.get("radosNamespace")
    if pv_namespace is not None and pv_namespace != namespace:
        log.warning(
            "PV %s: volumeAttributes.radosNamespace %r is not %r, the namespace in ceph-csi's "
            "config for %s; the journal follows the config, which is what ceph-csi reads",
            volume.pv_name,
            pv_namespace,
            namespace,
            local.cluster_id,
        )
    image_pool_id = await ceph.pool_id(volume.pool)
    journal_pool_id = (
        image_pool_id
        if volume.journal_pool == volume.pool
        else await ceph.pool_id(volume.journal_pool)
    )
    image = await ceph.image_info(volume.pool, namespace, image_name)
    new_handle = VolumeHandle(local.cluster_id, image_pool_id, old.object_uuid).encode()
    reservation = VolumeReservation(
        request_name=volume.pv_name,
        object_uuid=old.object_uuid,
        image_name=image_name,
        image_id=image.id,
        image_pool=volume.pool,
        image_pool_id=image_pool_id,
        journal_pool=volume.journal_pool,
        journal_pool_id=journal_pool_id,
        namespace=namespace,
        instance_id=local.instance_id,
        owner=volume.claim_namespace,
        encryption_kms_id=kms_id,
        encryption_type=encryption_type,
    )
    return await VolumeJournal(ceph).plan(reservation), image, new_handle


async def regenerate(
    ceph: CephAccess,
    volume: CSIVolume,
    local: LocalCluster,
    *,
    dry_run: bool = False,
    require_primary: bool = False,
) -> Regeneration:
    """Make the local journal describe `volume`; with `dry_run`, only say what that writes.

    With `require_primary`, a mirrored image that is not primary here raises ImageNotPrimary
    before anything is written (the controller waits for the promotion; an admin may not).
    """
    plan, image, new_handle = await plan_regeneration(ceph, volume, local)
    r = plan.reservation
    if require_primary and image.mirror_primary is False:
        raise ImageNotPrimary(r.image_pool, r.namespace, r.image_name)
    written = plan.keys
    if not dry_run and not plan.empty:
        # Another writer may get there first: the journal then re-plans, and writes less.
        written = await VolumeJournal(ceph).apply(plan)
    return Regeneration(
        old_handle=volume.volume_handle,
        new_handle=new_handle,
        image_name=r.image_name,
        image_id=r.image_id,
        image_pool=r.image_pool,
        image_pool_id=r.image_pool_id,
        journal_pool=r.journal_pool,
        rados_namespace=r.namespace,
        image_primary=image.mirror_primary,
        written=written,
        dry_run=dry_run,
    )
