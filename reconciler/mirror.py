"""rbd-mirror's view of a pool on this (secondary) site, read with pool-level listings.

    list2                      every image: name, ID
    mirror_image_info_list     mirrored images by ID: global ID, mode, enabled, primary here
    mirror_image_status_list   mirrored images: this site's rbd-mirror status (state, up,
                               description, last update)

These are the calls `rbd mirror pool status --verbose` makes. `list2` and the status listing
each read one object's omap (paged by librbd), whatever the number of images; the info listing
reads each image's header inside librbd (about 4 OSD reads an image), so callers that list
often keep its answer (`infos`), and the status, read every time, corrects it after a promotion.

For snapshot-based mirroring the status description of a replaying image carries
`local_snapshot_timestamp`: the creation time, on the primary, of the newest snapshot copied
here completely. Failing over now gives the image as it was then, so its age is
the RPO you would get now.

rbd-mirror reports that timestamp only while it replays: stopped gracefully, the status says just
"stopped"; while syncing or in error, nothing. `snapshot_times` then reads the image's own newest
complete non-primary mirror snapshot, one image at a time (there is no pool-level snapshot
listing). That snapshot was created here when its sync began, seconds after the primary's, so
such an age is too low by the replayer's delay; the source is reported with each figure.

Timestamps from the bindings are naive UTC datetimes; here they are seconds since the epoch.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.cephbindings import import_binding
from reconciler.cephconn import CephConnection

#: librbd's MIRROR_IMAGE_STATUS_STATE_*, named as `rbd mirror image status` prints them.
STATUS_STATES = {
    0: "unknown",
    1: "error",
    2: "syncing",
    3: "starting_replay",
    4: "replaying",
    5: "stopping_replay",
    6: "stopped",
}
#: librbd's RBD_MIRROR_IMAGE_MODE_* and RBD_MIRROR_IMAGE_* (enabled state).
MIRROR_MODES = {0: "journal", 1: "snapshot"}
MIRROR_ENABLED = 1
DISABLED = 2
#: rbd-mirror's description of an image that is primary on its site: it replays nothing.
LOCAL_PRIMARY = "local image is primary"
#: States in which rbd-mirror replays an image here, which it does only while it is not primary.
REPLAYING_STATES = frozenset({2, 3, 4})
#: librbd's RBD_SNAP_NAMESPACE_TYPE_MIRROR and RBD_SNAP_MIRROR_STATE_NON_PRIMARY.
SNAP_NAMESPACE_MIRROR = 3
SNAP_MIRROR_NON_PRIMARY = 2
#: Where a snapshot time came from.
FROM_STATUS = "status"
FROM_SNAPSHOT = "snapshot"


def utc_seconds(value: Any) -> float | None:
    """A binding's naive UTC datetime as seconds since the epoch; None for anything else."""
    if not isinstance(value, datetime.datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.UTC)
    seconds: float = value.timestamp()
    return seconds


def status_state(state: Any, up: Any) -> str:
    """As `rbd mirror image status` prints it: "up+replaying", "down+stopped", ..."""
    name = STATUS_STATES.get(state, f"state{state}") if isinstance(state, int) else str(state)
    return f"{'up' if up else 'down'}+{name}"


def description_fields(description: str) -> dict[str, Any]:
    """The JSON rbd-mirror appends to a status description ("replaying, {...}"); {} if none."""
    start = description.find("{")
    if start < 0:
        return {}
    try:
        found = json.loads(description[start:])
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def synced_snapshot_time(description: str) -> float | None:
    """`local_snapshot_timestamp` of a replaying snapshot-mirrored image: the primary's time of
    the newest snapshot synced here completely; None when the description has none."""
    value = description_fields(description).get("local_snapshot_timestamp")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


@dataclass(frozen=True)
class MirrorImage:
    """One image of a pool on this site, as the pool-level listings describe it."""

    pool: str
    namespace: str
    name: str
    id: str
    mirrored: bool = False
    """Mirroring is enabled for the image."""
    mode: str = ""
    """"snapshot" or "journal" when mirrored."""
    global_id: str = ""
    primary: bool | None = None
    """None when not mirrored."""
    state: str = ""
    """This site's rbd-mirror status, "up+replaying" etc.; "" when it reported none."""
    description: str = ""
    last_update: float | None = None
    snapshot_time: float | None = None
    """The primary's time of the newest snapshot synced here completely, when known."""
    snapshot_source: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return self.pool, self.namespace, self.name

    @property
    def replica(self) -> bool:
        """Mirrored here as a non-primary copy: the images whose lag matters on this site."""
        return self.mirrored and self.primary is False

    @property
    def replaying(self) -> bool:
        return self.state in ("up+replaying", "up+syncing")

    def snapshot_age(self, now: float) -> float | None:
        return None if self.snapshot_time is None else max(0.0, now - self.snapshot_time)


@dataclass
class PoolListing:
    pool: str
    namespace: str
    images: list[MirrorImage] = field(default_factory=list)
    listed_at: float = 0.0
    """Wall-clock time the listing ended."""
    duration: float = 0.0
    """Seconds the listings took together."""
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Image ID -> mirror info (state, mode, global ID, primary), for the next listing."""
    info_listed: bool = False
    """Whether `mirror_image_info_list` was called (else `infos` came from an earlier one)."""
    info_reads: int = 0
    """Images asked for their mirror info one at a time (new since the last info listing)."""

    def by_name(self) -> dict[str, MirrorImage]:
        return {image.name: image for image in self.images}


def merge_listing(
    pool: str,
    namespace: str,
    images: Sequence[Mapping[str, Any]],
    infos: Sequence[tuple[str, Mapping[str, Any]]],
    statuses: Sequence[Mapping[str, Any]],
) -> list[MirrorImage]:
    """One MirrorImage per image of `list2`, from the three listings' raw answers."""
    info_by_id = dict(infos)
    status_by_id = {str(s.get("id", "")): s for s in statuses}
    merged = []
    for image in images:
        image_id, name = str(image["id"]), str(image["name"])
        info = info_by_id.get(image_id) or {}
        status = status_by_id.get(image_id) or {}
        mirrored = info.get("state") == MIRROR_ENABLED
        description = str(status.get("description") or "")
        primary = bool(info.get("primary"))
        # The status is read every time, the info maybe minutes ago: a promotion or demotion
        # since then shows in rbd-mirror's status first.
        if status.get("up") and description == LOCAL_PRIMARY:
            primary = True
        elif status.get("up") and status.get("state") in REPLAYING_STATES:
            primary = False
        snapshot_time = synced_snapshot_time(description) if mirrored else None
        merged.append(
            MirrorImage(
                pool=pool,
                namespace=namespace,
                name=name,
                id=image_id,
                mirrored=mirrored,
                mode=MIRROR_MODES.get(info.get("mode", -1), "") if mirrored else "",
                global_id=str(info.get("global_id") or ""),
                primary=primary if mirrored else None,
                state=status_state(status["state"], status.get("up")) if status else "",
                description=description,
                last_update=utc_seconds(status.get("last_update")),
                snapshot_time=snapshot_time,
                snapshot_source=FROM_STATUS if snapshot_time is not None else "",
            )
        )
    return merged


async def list_pool(
    ceph: CephConnection,
    pool: str,
    namespace: str = "",
    *,
    infos: Mapping[str, Mapping[str, Any]] | None = None,
) -> PoolListing:
    """The pool's images with their mirroring, on one thread: `list2` and the status listing
    (each a read of one omap, whatever the number of images), and the mirror info.

    `mirror_image_info_list` is a pool-level call, but librbd reads each image's header and
    snapshots for it (about 4 OSD reads an image): given `infos` from an earlier listing (image
    ID -> info), it is not called, and only images new since then are asked, one at a time."""
    rbd = _rbd()

    def listings(ioctx: Any) -> tuple[list[Any], dict[str, Any], list[Any], int]:
        client = rbd.RBD()
        images = list(client.list2(ioctx))
        statuses = list(client.mirror_image_status_list(ioctx))
        if infos is None:
            listed = dict(client.mirror_image_info_list(ioctx))
            known = {**{str(i["id"]): {"state": DISABLED} for i in images}, **listed}
            return images, known, statuses, 0
        known = {str(i["id"]): dict(info) for i, info in _known(images, infos)}
        new = [i for i in images if str(i["id"]) not in known]
        for image in new:
            try:
                with rbd.Image(ioctx, image["name"], read_only=True) as opened:
                    known[str(image["id"])] = dict(opened.mirror_image_get_info())
            except rbd.ImageNotFound:
                continue
        return images, known, statuses, len(new)

    began = time.monotonic()
    images, known, statuses, reads = await ceph.run_with(
        f"listing the images and mirror status of pool {pool!r}", listings, pool, namespace
    )
    return PoolListing(
        pool=pool,
        namespace=namespace,
        images=merge_listing(pool, namespace, images, list(known.items()), statuses),
        listed_at=time.time(),
        duration=time.monotonic() - began,
        infos=known,
        info_listed=infos is None,
        info_reads=reads,
    )


def _known(
    images: Sequence[Mapping[str, Any]], infos: Mapping[str, Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    return [(i, infos[str(i["id"])]) for i in images if str(i["id"]) in infos]


def newest_synced_snapshot(snapshots: Sequence[Mapping[str, Any]]) -> int | None:
    """The ID of the newest complete non-primary mirror snapshot among `list_snaps()`'s."""
    best: int | None = None
    for snap in snapshots:
        mirror = snap.get("mirror") or {}
        if (
            snap.get("namespace") == SNAP_NAMESPACE_MIRROR
            and mirror.get("state") == SNAP_MIRROR_NON_PRIMARY
            and mirror.get("complete")
            and (best is None or int(snap["id"]) > best)
        ):
            best = int(snap["id"])
    return best


async def snapshot_times(
    ceph: CephConnection, pool: str, namespace: str, names: Sequence[str]
) -> dict[str, float | None]:
    """Per image of `names`: this site's time of its newest complete non-primary mirror
    snapshot (None: none, or the image is gone). One image open per name: for the images whose
    status lacks the time, not for a whole pool."""
    rbd = _rbd()

    def read(ioctx: Any) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for name in names:
            try:
                with rbd.Image(ioctx, name, read_only=True) as image:
                    snap_id = newest_synced_snapshot(list(image.list_snaps()))
                    found[name] = (
                        None if snap_id is None else utc_seconds(image.get_snap_timestamp(snap_id))
                    )
            except rbd.ImageNotFound:
                found[name] = None
        return found

    return await ceph.run_with(
        f"reading the mirror snapshots of {len(names)} image(s) in pool {pool!r}",
        read,
        pool,
        namespace,
    )


def _rbd() -> Any:
    """Debian's python3-rbd, imported on first use (CephBindingsMissing says how to get it)."""
    return import_binding("rbd")
