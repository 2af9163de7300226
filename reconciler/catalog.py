"""Pool IDs and images read once per pool for a burst of volumes, rather than once per volume.

Regenerating a journal needs the image pool's ID and the image's ID and mirror state. Asked of
the connection per volume, the image costs an open: 13 RADOS ops and ~3 ms on the connection's
threads (measured on the sandbox, Ceph 16.2.15), most of a failover's Ceph time. librbd lists
a pool's images with their IDs in one call (`list2`, a few ops per thousand images) and the
mirror state of all of them in another (`mirror_image_info_list`, 3 ops per mirrored image).

`ImageCatalog.view(connection, expected)` is a `regenerate.CephAccess`: its `image_info` serves
from one listing per (pool, namespace), made when the volumes expected from that pool make it
cheaper than opening them one by one: `expected()`, asked only then, says how many volumes are
about to be looked at (the controller's backlog). A listing is kept `ttl` seconds and shared by
concurrent callers; a pool not worth listing is judged again after UNLISTED_TTL seconds.

What a listing says is trusted only where it cannot be stale in a way that matters: an image
found and primary (or not mirrored) is served from it; an image it lacks, or lists as not
primary, is looked up afresh (created, or promoted, since the listing). A primary image's ID only
changes if it is deleted and re-created (rbd-mirror resyncs non-primary images only), which a
listing at most `ttl` seconds old could miss; the journal's writes are conditional on what was
read, and a later reconcile corrects the ID. Pool IDs are looked up by name once per `ttl`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from reconciler.cephbindings import import_binding
from reconciler.cephconn import ImageInfo
from reconciler.errors import CephError
from reconciler.k8s import MONOTONIC, Clock
from reconciler.regenerate import CephAccess

log = logging.getLogger(__name__)

DEFAULT_TTL = 60.0
#: Seconds until a pool judged not worth listing is judged again (its backlog may have grown).
UNLISTED_TTL = 5.0
#: RADOS ops of opening one image for its ID and mirror state, and of listing one image.
OPEN_OPS = 13
LISTED_OPS = 3
#: Fewer volumes about to be looked at than this, and no pool is listed (not even counted).
MIN_BURST = 16
#: librbd's RBD_MIRROR_IMAGE_ENABLED.
MIRROR_ENABLED = 1

T = TypeVar("T")


class ListableCeph(CephAccess, Protocol):
    """A connection that also runs a function on an I/O context (`CephConnection.run_with`)."""

    async def run_with(
        self, what: str, fn: Callable[[Any], T], pool: str | None = None, namespace: str = ""
    ) -> T: ...


@dataclass(frozen=True)
class Listing:
    until: float
    """Clock time it is used until."""
    images: Mapping[str, ImageInfo] | None
    """None: listing the pool was not worth it; images are opened one by one."""


def list_images(ioctx: Any, *, with_mirror_state: bool) -> dict[str, ImageInfo]:
    """Every image of the I/O context's pool and namespace, by name (runs on a Ceph thread)."""
    rbd = import_binding("rbd")
    client = rbd.RBD()
    primary: dict[str, bool] = {}
    if with_mirror_state:
        primary = {
            str(image_id): bool(info["primary"])
            for image_id, info in client.mirror_image_info_list(ioctx)
            if info.get("state") == MIRROR_ENABLED
        }
    return {
        str(entry["name"]): ImageInfo(
            name=str(entry["name"]),
            id=str(entry["id"]),
            mirror_primary=primary.get(str(entry["id"])),
        )
        for entry in client.list2(ioctx)
    }


class Lister(Protocol):
    def __call__(self, ioctx: Any, *, with_mirror_state: bool) -> dict[str, ImageInfo]: ...


class ImageCatalog:
    """Listings of pools, shared by every volume reconciled through `view` (module docstring)."""

    def __init__(
        self, *, ttl: float = DEFAULT_TTL, clock: Clock = MONOTONIC, lister: Lister = list_images
    ) -> None:
        self.ttl = ttl
        self.clock = clock
        self.lister = lister
        self.listings = 0
        """Pool listings made (a figure for tests and benchmarks)."""
        self._listings: dict[tuple[str, str, str], Listing] = {}
        self._listing: dict[tuple[str, str, str], asyncio.Future[Listing]] = {}
        self._pool_ids: dict[tuple[str, str], tuple[float, int]] = {}

    def view(self, ceph: ListableCeph, cluster: str, expected: Callable[[], int]) -> CatalogView:
        """`ceph`, a connection to `cluster` (its monitors: what listings are kept by)."""
        return CatalogView(self, ceph, cluster, expected)

    async def pool_id(self, ceph: CephAccess, cluster: str, pool: str) -> int:
        key = (cluster, pool)
        cached = self._pool_ids.get(key)
        if cached is not None and self.clock.now() - cached[0] < self.ttl:
            return cached[1]
        pool_id = await ceph.pool_id(pool)
        self._pool_ids[key] = (self.clock.now(), pool_id)
        return pool_id

    async def listing(
        self,
        ceph: ListableCeph,
        cluster: str,
        pool: str,
        namespace: str,
        expected: Callable[[], int],
    ) -> Listing:
        key = (cluster, pool, namespace)
        listing = self._listings.get(key)
        if listing is not None and self.clock.now() < listing.until:
            return listing
        pending = self._listing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._list(ceph, key, expected))
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._listing[key] = pending
        return await asyncio.shield(pending)

    async def _list(
        self, ceph: ListableCeph, key: tuple[str, str, str], expected: Callable[[], int]
    ) -> Listing:
        _, pool, namespace = key
        began = self.clock.now()
        images: Mapping[str, ImageInfo] | None = None
        wanted = expected()
        try:
            names: dict[str, ImageInfo] = {}
            if wanted >= MIN_BURST:
                names = await ceph.run_with(
                    f"listing the images of pool {pool!r}",
                    lambda ioctx: self.lister(ioctx, with_mirror_state=False),
                    pool,
                    namespace,
                )
            if names and wanted * OPEN_OPS >= len(names) * LISTED_OPS:
                self.listings += 1
                images = await ceph.run_with(
                    f"listing the images and their mirror state in pool {pool!r}",
                    lambda ioctx: self.lister(ioctx, with_mirror_state=True),
                    pool,
                    namespace,
                )
                log.info(
                    "listed a pool's images for a burst of volumes",
                    extra={
                        "pool": pool,
                        "namespace": namespace,
                        "images": len(images),
                        "volumes": wanted,
                        "seconds": round(self.clock.now() - began, 3),
                    },
                )
        except CephError as err:
            # Opening each image says what is wrong, per volume, as it always did.
            log.warning(
                "cannot list a pool's images; looking them up one by one",
                extra={"pool": pool, "namespace": namespace, "error": str(err)},
            )
            images = None
        finally:
            self._listing.pop(key, None)
        # Not listed: decided again soon, once the backlog may have grown.
        listing = Listing(began + (self.ttl if images is not None else UNLISTED_TTL), images)
        self._listings[key] = listing
        return listing


class CatalogView:
    """A connection whose pool IDs and image lookups go through an ImageCatalog."""

    def __init__(
        self,
        catalog: ImageCatalog,
        ceph: ListableCeph,
        cluster: str,
        expected: Callable[[], int],
    ) -> None:
        self.catalog = catalog
        self.ceph = ceph
        self.cluster = cluster
        self.expected = expected

    async def pool_id(self, pool: str) -> int:
        return await self.catalog.pool_id(self.ceph, self.cluster, pool)

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
        listing = await self.catalog.listing(
            self.ceph, self.cluster, pool, namespace, self.expected
        )
        found = None if listing.images is None else listing.images.get(name)
        if found is not None and found.mirror_primary is not False:
            return found
        # Not listed, or not primary when listed: it may have been created or promoted since.
        return await self.ceph.image_info(pool, namespace, name)

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        return await self.ceph.omap_get(pool, namespace, oid, keys)

    async def omap_set(
        self,
        pool: str,
        namespace: str,
        oid: str,
        values: Mapping[str, bytes],
        *,
        exclusive_create: bool = False,
        expect: Mapping[str, bytes] | None = None,
    ) -> None:
        await self.ceph.omap_set(
            pool, namespace, oid, values, exclusive_create=exclusive_create, expect=expect
        )
