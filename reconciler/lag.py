"""Per-image mirroring lag on this (secondary) site as Prometheus metrics (`exporter`).

    refresh, every --interval                      scrape, any number of them
    ─────────────────────────                      ──────────────────────────
    per pool: reconciler.mirror.list_pool    ──>   cached listings ──> age = now - snapshot time
      (pool-level listings; the info one kept)
    images whose status has no snapshot time:
      the time remembered from an earlier listing,
      else snapshot_times (image opens, bounded)
    PVs (informer cache) ──> (pool, image) -> PV, PVC

Scrapes never reach Ceph: however many Prometheus servers scrape, Ceph answers two listings a
pool per interval (`list2`, the status: one omap read each), the mirror info listing once per
`info_interval` (librbd reads each image's header for it; new images in between are asked one by
one), plus one image open for each image whose status lacks the time and whose time was never
seen (at most `max_snapshot_reads` a refresh; re-read after `snapshot_reread` s).

    rbd_mirror_reconciler_image_snapshot_age_seconds{pool,rados_namespace,image,pv,
        pvc_namespace,pvc_name,state}      non-primary images with a complete snapshot
    rbd_mirror_reconciler_rpo_seconds                       the RPO the admin set (--rpo)
    rbd_mirror_reconciler_pool_images{pool,rados_namespace,state}   images by mirror state
    rbd_mirror_reconciler_pool_listing_duration_seconds{pool,rados_namespace}
    rbd_mirror_reconciler_pool_listing_timestamp_seconds{pool,rados_namespace}
    rbd_mirror_reconciler_pool_listing_errors_total{pool,rados_namespace}
    rbd_mirror_reconciler_image_snapshot_reads_total          image opens for snapshot times
    rbd_mirror_reconciler_pool_info_listings_total{pool,rados_namespace}   info listings
    rbd_mirror_reconciler_image_info_reads_total              images asked for their info alone

`state` is what `rbd mirror image status` prints on this site ("up+replaying", "down+stopped",
...); `pool_images` also counts "primary" (promoted here) and "disabled" (not mirrored) images.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.cephconn import CephConnection
from reconciler.errors import InvalidInput, ReconcilerError
from reconciler.handle import VolumeHandle
from reconciler.k8s import KubeObject
from reconciler.mirror import FROM_SNAPSHOT, MirrorImage, PoolListing, list_pool, snapshot_times
from reconciler.volume import CSIVolume

log = logging.getLogger(__name__)

PREFIX = "rbd_mirror_reconciler"
AGE_LABELS = ("pool", "rados_namespace", "image", "pv", "pvc_namespace", "pvc_name", "state")
POOL_LABELS = ("pool", "rados_namespace")

WallTime = Callable[[], float]


@dataclass(frozen=True)
class VolumeLabels:
    pv: str
    pvc_namespace: str
    pvc_name: str


def index_volumes(pvs: Iterable[KubeObject], driver: str) -> dict[tuple[str, str], VolumeLabels]:
    """(pool, image name) -> the PV and PVC of `driver`'s PVs; PVs that are not ceph-csi's
    (another driver, no decodable handle, no pool) are left out."""
    index: dict[tuple[str, str], VolumeLabels] = {}
    for pv in pvs:
        try:
            volume = CSIVolume.from_pv(pv)
            if volume.driver != driver:
                continue
            image = volume.image_name(VolumeHandle.decode(volume.volume_handle).object_uuid)
            index[(volume.pool, image)] = VolumeLabels(
                volume.pv_name, volume.claim_namespace, volume.claim_name
            )
        except InvalidInput:
            continue
    return index


@dataclass(frozen=True)
class LagSettings:
    pools: tuple[tuple[str, str], ...]
    """(pool, RADOS namespace) pairs to list."""
    rpo: float = 3600.0
    """The RPO the admin set, exported for the alert to compare ages with."""
    interval: float = 30.0
    """Seconds between refreshes (the listings); scrapes in between are served from the cache."""
    info_interval: float = 300.0
    """Seconds an info listing (about 4 OSD reads an image) is kept: images new since then are
    asked one by one, and promotions show in the status, read every refresh."""
    max_snapshot_reads: int = 200
    """Image opens a refresh may spend on images whose status lacks a snapshot time."""
    snapshot_reread: float = 600.0
    """Seconds a time read from an image's snapshots is trusted before it is read again."""
    driver: str = "rbd.csi.ceph.com"


@dataclass(frozen=True)
class Remembered:
    time: float
    source: str
    read_at: float


class MirrorLag(Collector):
    """The refresh loop's cache and the collector that turns it into metrics at scrape time."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[CephConnection]],
        settings: LagSettings,
        volumes: Callable[[], Iterable[KubeObject]] | None = None,
        now: WallTime = time.time,
    ) -> None:
        self.connect = connect
        self.settings = settings
        self.volumes = volumes
        self.now = now
        self.listings: dict[tuple[str, str], PoolListing] = {}
        self.errors: Counter[tuple[str, str]] = Counter({pool: 0 for pool in settings.pools})
        self.remembered: dict[tuple[str, str, str], Remembered] = {}
        self.snapshot_reads = 0
        self.info_reads = 0
        self.info_listings: Counter[tuple[str, str]] = Counter({pool: 0 for pool in settings.pools})
        self.infos: dict[tuple[str, str], tuple[dict[str, dict[str, Any]], float]] = {}
        self.labels: dict[tuple[str, str], VolumeLabels] = {}

    def listed_once(self) -> bool:
        """Every pool has been listed at least once (the exporter's readiness)."""
        return all(pool in self.listings for pool in self.settings.pools)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every `interval` until `stop` is set."""
        while not stop.is_set():
            began = time.monotonic()
            await self.refresh()
            wait = max(0.0, self.settings.interval - (time.monotonic() - began))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)

    async def refresh(self) -> None:
        if self.volumes is not None:
            self.labels = index_volumes(self.volumes(), self.settings.driver)
        budget = self.settings.max_snapshot_reads
        for pool, namespace in self.settings.pools:
            try:
                ceph = await self.connect()
                listing = await self._list(ceph, pool, namespace)
                budget -= await self._fill_times(ceph, listing, budget)
            except ReconcilerError as err:
                self.errors[(pool, namespace)] += 1
                log.warning(
                    "listing the pool's mirror status failed; serving the last listing",
                    extra={"pool": pool, "rados_namespace": namespace, "error": str(err)},
                )
                continue
            self.listings[(pool, namespace)] = listing

    async def _list(self, ceph: CephConnection, pool: str, namespace: str) -> PoolListing:
        """The pool listed, with the info listing kept for `info_interval` seconds."""
        now = time.monotonic()
        cached = self.infos.get((pool, namespace))
        fresh = cached is not None and now - cached[1] < self.settings.info_interval
        listing = await list_pool(
            ceph, pool, namespace, infos=cached[0] if cached is not None and fresh else None
        )
        self.info_reads += listing.info_reads
        if listing.info_listed:
            self.info_listings[(pool, namespace)] += 1
        listed_at = now if listing.info_listed or cached is None else cached[1]
        self.infos[(pool, namespace)] = (listing.infos, listed_at)
        return listing

    async def _fill_times(self, ceph: CephConnection, listing: PoolListing, budget: int) -> int:
        """Give replicas without a time in their status the remembered one, or read it from the
        image's snapshots (at most `budget` opens); returns the opens spent."""
        now = self.now()
        replicas = [image for image in listing.images if image.replica]
        for image in replicas:
            if image.snapshot_time is not None:
                self.remembered[_key(image)] = Remembered(
                    image.snapshot_time, image.snapshot_source, now
                )
        listed = {_key(image) for image in replicas}
        where = (listing.pool, listing.namespace)
        for gone in [k for k in self.remembered if k[:2] == where and k not in listed]:
            del self.remembered[gone]
        missing = [
            image
            for image in replicas
            if image.snapshot_time is None and not self._fresh(_key(image), now)
        ]
        chosen = missing[: max(0, budget)]
        if chosen:
            times = await snapshot_times(
                ceph, listing.pool, listing.namespace, [image.name for image in chosen]
            )
            self.snapshot_reads += len(chosen)
            for image in chosen:
                found = times.get(image.name)
                if found is not None:
                    self.remembered[_key(image)] = Remembered(found, FROM_SNAPSHOT, now)
        listing.images = [self._timed(image) for image in listing.images]
        return len(chosen)

    def _fresh(self, key: tuple[str, str, str], now: float) -> bool:
        known = self.remembered.get(key)
        if known is None:
            return False
        return known.source != FROM_SNAPSHOT or now - known.read_at < self.settings.snapshot_reread

    def _timed(self, image: MirrorImage) -> MirrorImage:
        """The image with the remembered time when its status has none."""
        known = self.remembered.get(_key(image)) if image.replica else None
        if image.snapshot_time is not None or known is None:
            return image
        return replace(image, snapshot_time=known.time, snapshot_source=known.source)

    # -- the collector ---------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return list(_families())

    def collect(self) -> Iterable[Metric]:
        families = _families()
        age, rpo, images, duration, listed, errors, reads, info_listings, info_reads = families
        now = self.now()
        rpo.add_metric([], self.settings.rpo)
        reads.add_metric([], self.snapshot_reads)
        info_reads.add_metric([], self.info_reads)
        for (pool, namespace), count in sorted(self.errors.items()):
            errors.add_metric([pool, namespace], count)
        for (pool, namespace), count in sorted(self.info_listings.items()):
            info_listings.add_metric([pool, namespace], count)
        for (pool, namespace), listing in sorted(self.listings.items()):
            duration.add_metric([pool, namespace], listing.duration)
            listed.add_metric([pool, namespace], listing.listed_at)
            states: Counter[str] = Counter()
            for image in listing.images:
                states[pool_state(image)] += 1
                seconds = image.snapshot_age(now)
                if not image.replica or seconds is None:
                    continue
                who = self.labels.get((image.pool, image.name)) or VolumeLabels("", "", "")
                age.add_metric(
                    [
                        pool,
                        namespace,
                        image.name,
                        who.pv,
                        who.pvc_namespace,
                        who.pvc_name,
                        image.state or "none",
                    ],
                    seconds,
                )
            for state, count in sorted(states.items()):
                images.add_metric([pool, namespace, state], count)
        return families


def _families() -> tuple[
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    GaugeMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
    CounterMetricFamily,
]:
    return (
        GaugeMetricFamily(
            f"{PREFIX}_image_snapshot_age_seconds",
            "Age of the newest mirror snapshot synced to this site completely (its time on "
            "the primary): the data a failover now would lose",
            labels=AGE_LABELS,
        ),
        GaugeMetricFamily(
            f"{PREFIX}_rpo_seconds",
            "The recovery point objective the admin set (--rpo); the alert compares ages with it",
        ),
        GaugeMetricFamily(
            f"{PREFIX}_pool_images",
            "Images of the pool by this site's mirror state (primary: promoted here; "
            "disabled: not mirrored)",
            labels=(*POOL_LABELS, "state"),
        ),
        GaugeMetricFamily(
            f"{PREFIX}_pool_listing_duration_seconds",
            "Seconds the last pool-level listings (images, mirror info, mirror status) took",
            labels=POOL_LABELS,
        ),
        GaugeMetricFamily(
            f"{PREFIX}_pool_listing_timestamp_seconds",
            "When the pool was last listed successfully (seconds since the epoch)",
            labels=POOL_LABELS,
        ),
        CounterMetricFamily(
            f"{PREFIX}_pool_listing_errors",
            "Pool listings that failed (the last good listing is served meanwhile)",
            labels=POOL_LABELS,
        ),
        CounterMetricFamily(
            f"{PREFIX}_image_snapshot_reads",
            "Images opened to read their snapshots because their status had no snapshot time",
        ),
        CounterMetricFamily(
            f"{PREFIX}_pool_info_listings",
            "Mirror info listings of the pool (librbd reads every image's header for one)",
            labels=POOL_LABELS,
        ),
        CounterMetricFamily(
            f"{PREFIX}_image_info_reads",
            "Images asked for their mirror info one by one (new since the last info listing)",
        ),
    )


def pool_state(image: MirrorImage) -> str:
    if not image.mirrored:
        return "disabled"
    if image.primary:
        return "primary"
    return image.state or "none"


def _key(image: MirrorImage) -> tuple[str, str, str]:
    """An image across listings: its global ID, which a re-created image does not keep."""
    return image.pool, image.namespace, image.global_id or image.id
