"""A stand-in for ceph-csi's provisioner on site-a: volumes made and read the way ceph-csi does.

This is the tests' own statement of ceph-csi's behaviour (CreateVolume's reservation order,
its key names and value bytes, the handle layout), written independently of the product's
`handle` and `journal` modules, so that a bug shared by the product and its tests cannot hide.
Admin credentials, straight librados. Test-only: the demo provisions with the product's own
journal code instead (reconciler/sandbox/demo.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import rados
import rbd

from reconciler.sandbox.ceph import CephCluster
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.site import static_pv

#: Bounds on every librados wait, in seconds: a stalled OSD fails the test that met it instead
#: of hanging the session in a C call no test timeout can interrupt.
TIMEOUTS = {
    "client_mount_timeout": "30",
    "rados_mon_op_timeout": "60",
    "rados_osd_op_timeout": "60",
}


@contextmanager
def ioctx(site: CephCluster, pool: str, namespace: str = "") -> Iterator[Any]:
    client = rados.Rados(conffile=str(site.conf), conf=TIMEOUTS)
    client.connect()
    try:
        io = client.open_ioctx(pool)
        io.set_namespace(namespace)
        try:
            yield io
        finally:
            io.close()
    finally:
        client.shutdown()


def omap(site: CephCluster, pool: str, oid: str, namespace: str = "") -> dict[str, bytes] | None:
    """All omap pairs of an object, or None if it does not exist."""
    with ioctx(site, pool, namespace) as io, rados.ReadOpCtx() as op:
        pairs, _ = io.get_omap_vals(op, "", "", 1000)
        try:
            io.operate_read_op(op, oid)
        except rados.ObjectNotFound:
            return None
        return dict(pairs)


def nothing_written_for(pair: SitePair, pv_name: str, object_uuid: str) -> bool:
    """Whether site-b holds no journal of the volume: no directory key, no per-volume object."""
    directory = omap(pair.site_b, pair.pool, "csi.volumes.default") or {}
    return (
        f"csi.volume.{pv_name}" not in directory
        and omap(pair.site_b, pair.pool, f"csi.volume.{object_uuid}") is None
    )


def objects(site: CephCluster, pool: str, prefix: str, namespace: str = "") -> set[str]:
    with ioctx(site, pool, namespace) as io:
        return {o.key for o in io.list_objects() if o.key.startswith(prefix)}


def ceph_csi_handle(cluster_id: str, pool_id: int, object_uuid: str) -> str:
    """As ceph-csi composes it: Go's len() counts the clusterID in bytes, and the int64 pool ID
    is written as a uint64."""
    cluster_bytes = len(cluster_id.encode())
    pool_uint64 = pool_id & 0xFFFFFFFFFFFFFFFF
    return f"0001-{cluster_bytes:04x}-{cluster_id}-{pool_uint64:016x}-{object_uuid}"


@dataclass(frozen=True)
class Provisioned:
    pv_name: str
    cluster_id: str
    claim_name: str
    namespace: str
    object_uuid: str
    image_name: str
    handle: str
    pool: str

    def pv(self, driver: str = "rbd.csi.ceph.com", **attributes: str) -> dict[str, Any]:
        """The static PV an admin re-creates on the secondary site (design doc's sample)."""
        return static_pv(
            self.pv_name,
            self.handle,
            cluster_id=self.cluster_id,
            pool=self.pool,
            image_name=self.image_name,
            claim=(self.claim_name, self.namespace),
            driver=driver,
            attributes=attributes,
        )


def reserve(io: Any, pv_name: str, object_uuid: str, image_name: str, owner: str) -> None:
    """ceph-csi's ReserveName, in its order: exclusive-create the UUID object (what reserves the
    UUID), point the directory key at it, then set the UUID object's keys."""
    with rados.WriteOpCtx() as op:
        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
        io.operate_write_op(op, f"csi.volume.{object_uuid}")
    with rados.WriteOpCtx() as op:
        io.set_omap(op, (f"csi.volume.{pv_name}",), (object_uuid.encode(),))
        io.operate_write_op(op, "csi.volumes.default")
    with rados.WriteOpCtx() as op:
        keys = ("csi.volname", "csi.imagename", "csi.volume.owner")
        io.set_omap(op, keys, (pv_name.encode(), image_name.encode(), owner.encode()))
        io.operate_write_op(op, f"csi.volume.{object_uuid}")


def provision(
    site: CephCluster, cluster_id: str, pool: str, pv_name: str, namespace: str = "apps"
) -> Provisioned:
    """ceph-csi's CreateVolume: reserve the name, create the image, store its ID."""
    object_uuid = str(uuid.uuid4())
    image_name = f"csi-vol-{object_uuid}"
    with ioctx(site, pool) as io:
        reserve(io, pv_name, object_uuid, image_name, namespace)
        rbd.RBD().create(
            io,
            image_name,
            16 * 1024 * 1024,
            old_format=False,
            features=rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK,
        )
        with rbd.Image(io, image_name) as image:
            image_id = image.id()
        with rados.WriteOpCtx() as op:
            io.set_omap(op, ("csi.imageid",), (image_id.encode(),))
            io.operate_write_op(op, f"csi.volume.{object_uuid}")
    pool_id = site.pool_id(pool)
    return Provisioned(
        pv_name=pv_name,
        cluster_id=cluster_id,
        claim_name=f"claim-{pv_name}",
        namespace=namespace,
        object_uuid=object_uuid,
        image_name=image_name,
        handle=ceph_csi_handle(cluster_id, pool_id, object_uuid),
        pool=pool,
    )


def image_id(site: CephCluster, pool: str, image_name: str) -> str:
    found: str = json.loads(site.rbd("info", f"{pool}/{image_name}", "--format", "json"))["id"]
    return found


def erase_journal(site: CephCluster, pool: str, volume: Provisioned) -> None:
    """Remove one volume's journal entries, the legacy handle key included."""
    with ioctx(site, pool) as io:
        with suppress(rados.ObjectNotFound):
            io.remove_object(f"csi.volume.{volume.object_uuid}")
        with rados.WriteOpCtx() as op:
            io.remove_omap_keys(op, (f"csi.volume.{volume.pv_name}", f"csi.volume.{volume.handle}"))
            with suppress(rados.ObjectNotFound):
                io.operate_write_op(op, "csi.volumes.default")


class VolumeFactory:
    """Volumes `provision`ed as ceph-csi's provisioner makes them, each under a name of its own,
    `<prefix>-<random>`: no volume is reserved by name for a test, so none can be used up, or
    changed, by another (the e2e fixture `new_volumes`).

    rbd-mirror takes tens of seconds to pick up newly mirrored images, however many: failed-over
    volumes are made `BATCH` at a time, and each is handed to one caller only."""

    BATCH = 8

    def __init__(self, pair: SitePair, *, cluster_id: str = "site-a", prefix: str = "pvc") -> None:
        self.pair = pair
        self.cluster_id = cluster_id
        """The clusterID their handles carry."""
        self.prefix = prefix
        self._failed_over: dict[str, list[Provisioned]] = {}

    def derive(self, *, cluster_id: str, prefix: str) -> VolumeFactory:
        """A factory of the same pair with other defaults (and volumes of its own)."""
        return VolumeFactory(self.pair, cluster_id=cluster_id, prefix=prefix)

    def __call__(
        self,
        count: int = 1,
        *,
        cluster_id: str | None = None,
        site: CephCluster | None = None,
        fail_over: bool = True,
    ) -> list[Provisioned]:
        """`count` new volumes of site-a's, mirrored to site-b and promoted there; without
        `fail_over`, or on another `site`, just provisioned there."""
        cluster_id = cluster_id or self.cluster_id
        if site is not None or not fail_over:
            return self._provision(count, site or self.pair.site_a, cluster_id)
        ready = self._failed_over.setdefault(cluster_id, [])
        if len(ready) < count:
            made = self._provision(
                max(count - len(ready), self.BATCH), self.pair.site_a, cluster_id
            )
            self.pair.fail_over([volume.image_name for volume in made])
            ready += made
        taken = ready[:count]
        del ready[:count]
        return taken

    def _provision(self, count: int, site: CephCluster, cluster_id: str) -> list[Provisioned]:
        return [
            provision(site, cluster_id, self.pair.pool, f"{self.prefix}-{uuid.uuid4().hex[:8]}")
            for _ in range(count)
        ]
