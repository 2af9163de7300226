"""The journal's planning and undo rules, over an in-memory omap store (pure logic only; the
same rules are checked byte for byte against real Ceph in tests/e2e/test_journal.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from reconciler.errors import CephUnavailable, JournalConflict, ObjectExists
from reconciler.journal import VolumeJournal, VolumeReservation

UUID = "0c23de1c-18fb-11eb-a903-0242ac110005"
OTHER_UUID = "9f1e2d3c-18fb-11eb-a903-0242ac110005"
DIRECTORY = ("replicapool", "", "csi.volumes.default")
RESERVATION = VolumeReservation(
    request_name="pvc-1",
    object_uuid=UUID,
    image_name=f"csi-vol-{UUID}",
    image_id="abc123",
    image_pool="replicapool",
    image_pool_id=2,
    journal_pool="replicapool",
    journal_pool_id=2,
    owner="apps",
)


class MemoryStore:
    """pool -> object -> omap; `fail_on` makes writes to one object fail like an OSD timeout,
    before they apply or (`fail_after_applying`) after: a timeout whose op still went through."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, bytes]] = {}
        self.fail_on: str | None = None
        self.fail_after_applying = False

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        found = self.objects.get((pool, namespace, oid))
        if found is None:
            return None
        return {k: v for k, v in found.items() if keys is None or k in keys}

    async def omap_set(
        self,
        pool: str,
        namespace: str,
        oid: str,
        values: Mapping[str, bytes],
        *,
        exclusive_create: bool = False,
    ) -> None:
        failing = oid == self.fail_on
        if failing and not self.fail_after_applying:
            raise CephUnavailable("injected")
        key = (pool, namespace, oid)
        if exclusive_create and key in self.objects:
            raise ObjectExists(pool, namespace, oid)
        self.objects.setdefault(key, {}).update(values)
        if failing:
            self.fail_on = None  # the undo that follows gets through
            raise CephUnavailable("injected after applying")

    async def omap_remove(self, pool: str, namespace: str, oid: str, keys: Sequence[str]) -> None:
        for k in keys:
            self.objects.get((pool, namespace, oid), {}).pop(k, None)

    async def remove_object(self, pool: str, namespace: str, oid: str) -> None:
        self.objects.pop((pool, namespace, oid), None)


async def regenerate(store: MemoryStore, reservation: VolumeReservation) -> list[str]:
    journal = VolumeJournal(store)
    plan = await journal.plan(reservation)
    await journal.apply(plan)
    return plan.keys


async def test_fresh_volume_then_nothing() -> None:
    store = MemoryStore()
    assert await regenerate(store, RESERVATION) == [
        "csi.volname",
        "csi.imagename",
        "csi.imageid",
        "csi.volume.owner",
        "csi.volume.pvc-1",
    ]
    assert store.objects[("replicapool", "", "csi.volumes.default")] == {
        "csi.volume.pvc-1": UUID.encode()
    }
    assert await regenerate(store, RESERVATION) == []


async def test_separate_journal_pool_prefixes_the_image_pool_id() -> None:
    store = MemoryStore()
    r = replace(RESERVATION, journal_pool="journal", journal_pool_id=26)
    await regenerate(store, r)
    directory = store.objects[("journal", "", "csi.volumes.default")]
    assert directory == {"csi.volume.pvc-1": f"0000000000000002/{UUID}".encode()}
    per_volume = store.objects[("replicapool", "", f"csi.volume.{UUID}")]
    assert per_volume["csi.journalpool"] == b"000000000000001a"


@pytest.mark.parametrize(
    ("pool_ids", "named"),
    [
        ({"journal_pool": "journal", "journal_pool_id": -1}, "pool 'journal' has ID -1"),
        ({"image_pool_id": -1, "journal_pool_id": -1}, "pool 'replicapool' has ID -1"),
    ],
)
def test_a_negative_pool_id_is_refused_not_encoded(pool_ids: dict[str, Any], named: str) -> None:
    # ceph-csi reads -1 as "no pool"; written as ffffffffffffffff it would name none.
    with pytest.raises(ValueError, match=named):
        replace(RESERVATION, **pool_ids)


async def test_failed_directory_write_undoes_the_object_it_created() -> None:
    store = MemoryStore()
    store.fail_on = "csi.volumes.default"
    with pytest.raises(CephUnavailable):
        await regenerate(store, RESERVATION)
    assert store.objects == {}


async def test_undo_never_touches_a_directory_key_it_did_not_write() -> None:
    # A PV named "owner" has the directory key csi.volume.owner, the same text as the
    # per-volume owner key; the undo must tell the two objects apart.
    store = MemoryStore()
    other = replace(RESERVATION, request_name="owner", object_uuid=UUID.replace("0c", "1d"))
    await regenerate(store, other)
    store.fail_on = f"csi.volume.{RESERVATION.object_uuid}"
    with pytest.raises(CephUnavailable):
        await regenerate(store, RESERVATION)
    directory = store.objects[("replicapool", "", "csi.volumes.default")]
    assert "csi.volume.owner" in directory


async def test_empty_reserved_object_is_completed() -> None:
    store = MemoryStore()
    await store.omap_set("replicapool", "", f"csi.volume.{UUID}", {}, exclusive_create=True)
    assert "csi.volume.pvc-1" in await regenerate(store, RESERVATION)
    assert await regenerate(store, RESERVATION) == []


@pytest.mark.parametrize(
    ("oid", "key", "value"),
    [
        (f"csi.volume.{UUID}", "csi.volname", b"pvc-other"),
        (f"csi.volume.{UUID}", "csi.imagename", b"csi-vol-other"),
        (f"csi.volume.{UUID}", "csi.volume.encryptKMS", b"vault"),
    ],
)
async def test_conflicts_write_nothing(oid: str, key: str, value: bytes) -> None:
    store = MemoryStore()
    await store.omap_set("replicapool", "", oid, {key: value})
    before = {k: dict(v) for k, v in store.objects.items()}
    with pytest.raises(JournalConflict) as conflict:
        await regenerate(store, RESERVATION)
    assert (conflict.value.object, conflict.value.key) == (oid, key)
    assert conflict.value.found == value.decode()
    assert store.objects == before


@pytest.mark.parametrize(
    ("directory_value", "live_object"),
    [
        # Another volume's reservation, its per-volume object in place (whatever its volname).
        (OTHER_UUID, {"csi.volname": b"pvc-other"}),
        (OTHER_UUID, {"csi.volname": b"pvc-1"}),
        (OTHER_UUID, {}),
        # A pool this reservation does not know: whether its object exists cannot be checked.
        (f"00000000000000ff/{OTHER_UUID}", None),
    ],
)
async def test_a_directory_key_held_by_a_live_reservation_is_a_conflict(
    directory_value: str, live_object: dict[str, bytes] | None
) -> None:
    store = MemoryStore()
    await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": directory_value.encode()})
    if live_object is not None:
        await store.omap_set("replicapool", "", f"csi.volume.{OTHER_UUID}", live_object)
    before = {k: dict(v) for k, v in store.objects.items()}
    with pytest.raises(JournalConflict) as conflict:
        await regenerate(store, RESERVATION)
    assert (conflict.value.object, conflict.value.key) == (
        "csi.volumes.default",
        "csi.volume.pvc-1",
    )
    assert (conflict.value.found, conflict.value.expected) == (directory_value, UUID)
    assert store.objects == before


@pytest.mark.parametrize("stale", [OTHER_UUID, f"0000000000000002/{OTHER_UUID}", "garbage"])
async def test_a_stale_directory_key_is_replaced_and_the_reservation_redone(stale: str) -> None:
    # ceph-csi's rule: a directory key whose per-volume object is missing is stale.
    store = MemoryStore()
    await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": stale.encode(), "csi.volume.b": b"x"})
    plan = await VolumeJournal(store).plan(RESERVATION)
    assert plan.writes[-1].replaced == {"csi.volume.pvc-1": stale}
    await VolumeJournal(store).apply(plan)
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode(), "csi.volume.b": b"x"}
    assert store.objects[("replicapool", "", f"csi.volume.{UUID}")] == {
        "csi.volname": b"pvc-1",
        "csi.imagename": f"csi-vol-{UUID}".encode(),
        "csi.imageid": b"abc123",
        "csi.volume.owner": b"apps",
    }
    assert await regenerate(store, RESERVATION) == []


@pytest.mark.parametrize("applied", [False, True])
async def test_a_failed_run_puts_the_stale_directory_value_back(applied: bool) -> None:
    store = MemoryStore()
    await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": OTHER_UUID.encode()})
    before = {k: dict(v) for k, v in store.objects.items()}
    store.fail_on = "csi.volumes.default"
    store.fail_after_applying = applied
    with pytest.raises(CephUnavailable):
        await regenerate(store, RESERVATION)
    assert store.objects == before


async def test_a_failed_run_puts_back_the_per_volume_values_it_updated() -> None:
    store = MemoryStore()
    found = {
        "csi.volname": b"pvc-1",
        "csi.imagename": f"csi-vol-{UUID}".encode(),
        "csi.imageid": b"id-before-resync",
    }
    await store.omap_set("replicapool", "", f"csi.volume.{UUID}", found)
    before = {k: dict(v) for k, v in store.objects.items()}
    store.fail_on = "csi.volumes.default"
    store.fail_after_applying = True
    with pytest.raises(CephUnavailable):
        await regenerate(store, RESERVATION)
    assert store.objects == before | {DIRECTORY: {}}


async def test_legacy_key_goes_with_the_directory_key_in_one_write() -> None:
    store = MemoryStore()
    r = replace(RESERVATION, legacy_mapping=("old-handle", "new-handle"))
    plan = await VolumeJournal(store).plan(r)
    assert [dict(w.values) for w in plan.writes][-1] == {
        "csi.volume.pvc-1": UUID,
        "csi.volume.old-handle": "new-handle",
    }
