"""The exporter's cache and collector (reconciler.lag), without Ceph: listings filled by hand."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.cephconn import CephConnection
from reconciler.handle import VolumeHandle
from reconciler.lag import LagSettings, MirrorLag, index_volumes
from reconciler.mirror import FROM_STATUS, MirrorImage, PoolListing

NOW = 1_800_000_000.0
UUID = "0c23de1c-18fb-11eb-a903-0242ac110005"
POOL = "replicapool"


def pv(name: str, *, driver: str = "rbd.csi.ceph.com", prefix: str | None = None) -> Any:
    attributes = {"pool": POOL, **({"volumeNamePrefix": prefix} if prefix else {})}
    return {
        "metadata": {"name": name},
        "spec": {
            "claimRef": {"name": f"claim-{name}", "namespace": "apps"},
            "csi": {
                "driver": driver,
                "volumeHandle": VolumeHandle("site-a", 1, UUID).encode(),
                "volumeAttributes": attributes,
            },
        },
    }


def image(name: str, **fields: Any) -> MirrorImage:
    defaults: dict[str, Any] = {
        "pool": POOL,
        "namespace": "",
        "id": f"id-{name}",
        "global_id": f"g-{name}",
        "mirrored": True,
        "mode": "snapshot",
        "primary": False,
        "state": "up+replaying",
    }
    return MirrorImage(name=name, **{**defaults, **fields})


def scrape(lag: MirrorLag) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(lag)
    text = generate_latest(registry).decode()
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


async def never(*_: Any) -> CephConnection:
    raise AssertionError("no Ceph in these tests")


def lag_with(*images: MirrorImage) -> MirrorLag:
    lag = MirrorLag(never, LagSettings(pools=((POOL, ""),), rpo=600), now=lambda: NOW)
    lag.listings[(POOL, "")] = PoolListing(POOL, "", list(images), listed_at=NOW - 5, duration=0.02)
    return lag


def test_volumes_are_indexed_by_pool_and_image_name() -> None:
    index = index_volumes(
        [pv("a"), pv("b", prefix="app-"), pv("other", driver="other.csi"), {"metadata": {}}],
        "rbd.csi.ceph.com",
    )
    assert set(index) == {(POOL, f"app-{UUID}"), (POOL, f"csi-vol-{UUID}")}
    assert index[(POOL, f"app-{UUID}")].pv == "b"
    assert index[(POOL, f"app-{UUID}")].pvc_name == "claim-b"
    assert index[(POOL, f"app-{UUID}")].pvc_namespace == "apps"


def test_ages_are_computed_at_scrape_time_for_replicas_only() -> None:
    lag = lag_with(
        image(f"csi-vol-{UUID}", snapshot_time=NOW - 42, snapshot_source=FROM_STATUS),
        image("stopped", state="down+stopped", snapshot_time=NOW - 4000),
        image("syncing", state="up+syncing"),  # no complete snapshot yet: no age at all
        image("promoted", primary=True, state="up+stopped", snapshot_time=NOW - 9),
        image("plain", mirrored=False, primary=None, state=""),
    )
    lag.labels = index_volumes([pv("a")], "rbd.csi.ceph.com")

    found = scrape(lag)

    ages = found["rbd_mirror_reconciler_image_snapshot_age_seconds"]
    labelled = (
        ("image", f"csi-vol-{UUID}"),
        ("pool", POOL),
        ("pv", "a"),
        ("pvc_name", "claim-a"),
        ("pvc_namespace", "apps"),
        ("rados_namespace", ""),
        ("state", "up+replaying"),
    )
    assert ages[labelled] == 42.0
    assert {dict(k)["image"]: v for k, v in ages.items()} == {
        f"csi-vol-{UUID}": 42.0,
        "stopped": 4000.0,
    }
    assert found["rbd_mirror_reconciler_rpo_seconds"] == {(): 600.0}
    states = {dict(k)["state"]: v for k, v in found["rbd_mirror_reconciler_pool_images"].items()}
    assert states == {
        "up+replaying": 1,
        "down+stopped": 1,
        "up+syncing": 1,
        "primary": 1,
        "disabled": 1,
    }
    pool = (("pool", POOL), ("rados_namespace", ""))
    assert found["rbd_mirror_reconciler_pool_listing_timestamp_seconds"] == {pool: NOW - 5}
    assert found["rbd_mirror_reconciler_pool_listing_errors"] == {pool: 0.0}


def test_nothing_is_reported_before_the_first_listing_but_the_rpo() -> None:
    lag = MirrorLag(never, LagSettings(pools=((POOL, ""),)), now=lambda: NOW)
    found = scrape(lag)
    assert not lag.listed_once()
    assert found["rbd_mirror_reconciler_image_snapshot_age_seconds"] == {}
    assert found["rbd_mirror_reconciler_rpo_seconds"] == {(): 3600.0}


async def test_a_time_seen_once_outlives_a_status_that_drops_it() -> None:
    """A gracefully stopped rbd-mirror leaves only "stopped" in the status."""
    lag = lag_with()
    first = PoolListing(POOL, "", [image("i", snapshot_time=NOW - 30, snapshot_source=FROM_STATUS)])
    assert await lag._fill_times(None, first, budget=0) == 0  # type: ignore[arg-type]

    later = PoolListing(POOL, "", [image("i", state="down+stopped"), image("new", state="")])
    assert await lag._fill_times(None, later, budget=0) == 0  # type: ignore[arg-type]
    by_name = later.by_name()
    assert by_name["i"].snapshot_time == NOW - 30
    assert by_name["i"].snapshot_source == FROM_STATUS
    assert by_name["new"].snapshot_time is None  # never seen with a time, no budget to read it

    gone = PoolListing(POOL, "", [])
    await lag._fill_times(None, gone, budget=0)  # type: ignore[arg-type]
    assert lag.remembered == {}
