"""The image catalog: one listing per pool for a burst of volumes, per-image lookups otherwise,
and nothing from a listing trusted that could have changed in a way that matters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pytest

from reconciler.catalog import MIN_BURST, UNLISTED_TTL, ImageCatalog
from reconciler.cephconn import ImageInfo
from reconciler.errors import CephUnavailable
from reconciler.k8s import ManualClock

T = TypeVar("T")
POOL = "replicapool"


class FakeCeph:
    """A pool of images, listed through `run_with` (each call counted) or opened one by one."""

    def __init__(self, images: Mapping[str, ImageInfo]) -> None:
        self.images = dict(images)
        self.listed: list[bool] = []
        """with_mirror_state of each listing."""
        self.opened: list[str] = []
        self.pool_lookups = 0
        self.fail_listing = False

    def lister(self, ioctx: Any, *, with_mirror_state: bool) -> dict[str, ImageInfo]:
        assert ioctx == (POOL, "")
        self.listed.append(with_mirror_state)
        return {
            name: info if with_mirror_state else ImageInfo(name, info.id, None)
            for name, info in self.images.items()
        }

    async def run_with(
        self, what: str, fn: Callable[[Any], T], pool: str | None = None, namespace: str = ""
    ) -> T:
        if self.fail_listing:
            raise CephUnavailable(f"{what}: no answer in time")
        await asyncio.sleep(0)  # other callers get to ask meanwhile
        return fn((pool, namespace))

    async def pool_id(self, pool: str) -> int:
        self.pool_lookups += 1
        return 5

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
        self.opened.append(name)
        return self.images[name]

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        raise AssertionError("not used here")

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
        raise AssertionError("not used here")


def images(count: int, primary: bool | None = True) -> dict[str, ImageInfo]:
    return {f"csi-vol-{i}": ImageInfo(f"csi-vol-{i}", f"id{i}", primary) for i in range(count)}


def catalog_of(ceph: FakeCeph, clock: ManualClock | None = None) -> ImageCatalog:
    return ImageCatalog(clock=clock or ManualClock(), lister=ceph.lister)


async def test_a_burst_lists_the_pool_once_and_opens_no_image() -> None:
    ceph = FakeCeph(images(100))
    catalog = catalog_of(ceph)
    view = catalog.view(ceph, "mons", lambda: 100)
    found = await asyncio.gather(*(view.image_info(POOL, "", f"csi-vol-{i}") for i in range(100)))
    assert [info.id for info in found] == [f"id{i}" for i in range(100)]
    assert ceph.listed == [False, True]  # names first (cheap), then with mirror state
    assert ceph.opened == []
    assert catalog.listings == 1


async def test_a_few_volumes_are_looked_up_one_by_one_without_listing() -> None:
    ceph = FakeCeph(images(100))
    view = catalog_of(ceph).view(ceph, "mons", lambda: MIN_BURST - 1)
    assert (await view.image_info(POOL, "", "csi-vol-3")).id == "id3"
    assert ceph.listed == []
    assert ceph.opened == ["csi-vol-3"]


async def test_a_large_pool_is_not_listed_for_a_small_burst() -> None:
    ceph = FakeCeph(images(1000))
    view = catalog_of(ceph).view(ceph, "mons", lambda: 50)  # 50 opens cost less than 1000 listed
    await view.image_info(POOL, "", "csi-vol-3")
    await view.image_info(POOL, "", "csi-vol-4")
    assert ceph.listed == [False]  # counted once, judged not worth it, for UNLISTED_TTL
    assert ceph.opened == ["csi-vol-3", "csi-vol-4"]


async def test_an_image_not_listed_or_not_primary_is_looked_up_afresh() -> None:
    ceph = FakeCeph(images(40))
    catalog = catalog_of(ceph)
    view = catalog.view(ceph, "mons", lambda: 40)
    await view.image_info(POOL, "", "csi-vol-0")
    # Created, and promoted, after the listing: the listing says nothing / says not primary.
    ceph.images["csi-vol-new"] = ImageInfo("csi-vol-new", "idnew", True)
    ceph.images["csi-vol-1"] = ImageInfo("csi-vol-1", "id1", True)
    catalog._listings[("mons", POOL, "")].images["csi-vol-1"] = ImageInfo("csi-vol-1", "id1", False)  # type: ignore[index]
    assert (await view.image_info(POOL, "", "csi-vol-new")).id == "idnew"
    assert (await view.image_info(POOL, "", "csi-vol-1")).mirror_primary is True
    assert ceph.opened == ["csi-vol-new", "csi-vol-1"]
    assert catalog.listings == 1


async def test_listings_expire_and_pools_not_listed_are_judged_again() -> None:
    clock = ManualClock()
    ceph = FakeCeph(images(100))
    backlog = [0]
    catalog = catalog_of(ceph, clock)
    view = catalog.view(ceph, "mons", lambda: backlog[0])
    await view.image_info(POOL, "", "csi-vol-0")
    assert ceph.listed == []
    backlog[0] = 100  # the PVs arrive
    clock.advance(UNLISTED_TTL)
    await view.image_info(POOL, "", "csi-vol-1")
    assert ceph.listed == [False, True]
    clock.advance(catalog.ttl - 1)
    await view.image_info(POOL, "", "csi-vol-2")
    assert len(ceph.listed) == 2
    clock.advance(1)
    await view.image_info(POOL, "", "csi-vol-3")
    assert len(ceph.listed) == 4
    assert ceph.opened == ["csi-vol-0"]


async def test_a_failed_listing_falls_back_to_looking_images_up() -> None:
    ceph = FakeCeph(images(100))
    ceph.fail_listing = True
    view = catalog_of(ceph).view(ceph, "mons", lambda: 100)
    assert (await view.image_info(POOL, "", "csi-vol-7")).id == "id7"
    assert ceph.opened == ["csi-vol-7"]


async def test_pool_ids_are_looked_up_once_per_cluster_and_pool() -> None:
    ceph = FakeCeph({})
    catalog = catalog_of(ceph)
    for cluster in ("mons", "mons", "other"):
        assert await catalog.view(ceph, cluster, lambda: 0).pool_id(POOL) == 5
    assert ceph.pool_lookups == 2


@pytest.mark.parametrize("primary", [True, None])
async def test_primary_and_unmirrored_images_are_served_from_the_listing(
    primary: bool | None,
) -> None:
    ceph = FakeCeph(images(20, primary))
    view = catalog_of(ceph).view(ceph, "mons", lambda: 20)
    assert (await view.image_info(POOL, "", "csi-vol-1")).mirror_primary is primary
    assert ceph.opened == []
