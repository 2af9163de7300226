"""The journal's planning rules, and how it behaves beside other writers, over an in-memory omap
store (pure logic only; the same rules are checked byte for byte against real Ceph in
tests/e2e/test_journal.py and tests/e2e/test_two_writers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import pytest

from reconciler.errors import CephUnavailable, JournalConflict, ObjectChanged, ObjectExists
from reconciler.journal import REPLANS, VolumeJournal, VolumeReservation

UUID = "0c23de1c-18fb-11eb-a903-0242ac110005"
OTHER_UUID = "9f1e2d3c-18fb-11eb-a903-0242ac110005"
DIRECTORY = ("replicapool", "", "csi.volumes.default")
VOLUME_OBJECT = ("replicapool", "", f"csi.volume.{UUID}")
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
#: The per-volume object RESERVATION asks for, as stored.
FULL_OBJECT = {
    "csi.volname": b"pvc-1",
    "csi.imagename": f"csi-vol-{UUID}".encode(),
    "csi.imageid": b"abc123",
    "csi.volume.owner": b"apps",
}


class MemoryStore:
    """pool -> object -> omap, with RADOS' semantics for what the journal uses: an exclusive
    create fails on an existing object (ObjectExists); `expect` compares each key with what it
    holds, an absent key or object holding b"" (ObjectChanged, nothing written).

    Faults: `fail_on` makes the next write to one object fail like an OSD timeout, before it
    applies or (`fail_after_applying`) after: a timeout whose op still went through.
    `interleave[oid]` runs once just before the next write to `oid` reaches the store: another
    writer acting between this writer's plan and its write."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, bytes]] = {}
        self.fail_on: str | None = None
        self.fail_after_applying = False
        self.interleave: dict[str, Callable[[], Awaitable[None]]] = {}
        self.reads = 0

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        self.reads += 1
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
        expect: Mapping[str, bytes] | None = None,
    ) -> None:
        meanwhile = self.interleave.pop(oid, None)
        if meanwhile is not None:
            await meanwhile()
        failing = oid == self.fail_on
        if failing:
            self.fail_on = None  # one write fails; the next run's get through
        if failing and not self.fail_after_applying:
            raise CephUnavailable("injected")
        key = (pool, namespace, oid)
        if exclusive_create and key in self.objects:
            raise ObjectExists(pool, namespace, oid)
        held = self.objects.get(key, {})
        for k, v in (expect or {}).items():
            assert v.isascii(), "the real binding can only compare ASCII values"
            if held.get(k, b"") != v:
                raise ObjectChanged(pool, namespace, oid)
        self.objects.setdefault(key, {}).update(values)
        if failing:
            raise CephUnavailable("injected after applying")

    def snapshot(self) -> dict[tuple[str, str, str], dict[str, bytes]]:
        return {k: dict(v) for k, v in self.objects.items()}


async def regenerate(store: MemoryStore, reservation: VolumeReservation) -> list[str]:
    """Plan and apply, as `reconciler.regenerate` does; the keys written."""
    journal = VolumeJournal(store)
    return await journal.apply(await journal.plan(reservation))


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


@pytest.mark.parametrize("applied", [False, True])
async def test_a_failed_directory_write_leaves_the_object_for_the_next_run(applied: bool) -> None:
    # A timeout says nothing of whether the write landed, and the object may already be someone
    # else's journal: nothing is removed, and the next run completes what is there.
    store = MemoryStore()
    store.fail_on = "csi.volumes.default"
    store.fail_after_applying = applied
    with pytest.raises(CephUnavailable):
        await regenerate(store, RESERVATION)
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT
    assert await regenerate(store, RESERVATION) == ([] if applied else ["csi.volume.pvc-1"])
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}


async def test_a_failed_run_never_touches_a_directory_key_it_did_not_write() -> None:
    # A PV named "owner" has the directory key csi.volume.owner, the same text as the
    # per-volume owner key; the journal must tell the two objects apart.
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
    # Replaced only if it still holds the stale value when the write reaches the OSD.
    assert plan.writes[-1].expect == {"csi.volume.pvc-1": stale.encode()}
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
async def test_a_failed_run_leaves_what_it_updated(applied: bool) -> None:
    # The new image ID is right whatever happens next; putting the old one back could only undo
    # a journal another writer has adopted meanwhile.
    store = MemoryStore()
    await store.omap_set(*VOLUME_OBJECT, FULL_OBJECT | {"csi.imageid": b"id-before-resync"})
    await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": OTHER_UUID.encode()})  # stale
    store.fail_on = "csi.volumes.default"
    store.fail_after_applying = applied
    with pytest.raises(CephUnavailable):
        await regenerate(store, RESERVATION)
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT
    directory_value = UUID if applied else OTHER_UUID
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": directory_value.encode()}
    await regenerate(store, RESERVATION)
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}


# Two writers on one journal: another replica, a stale leader, ceph-csi's own regenerator. -------


def writer_b(
    store: MemoryStore, reservation: VolumeReservation = RESERVATION
) -> Callable[[], Awaitable[None]]:
    """Another writer regenerating the same volume to completion, over the same store."""

    async def run() -> None:
        await regenerate(store, reservation)

    return run


async def test_a_lost_exclusive_create_adopts_the_winners_object() -> None:
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)
    assert plan.writes[0].exclusive_create
    await writer_b(store)()  # the other writer completes between this one's plan and its write
    after_b = store.snapshot()

    assert await journal.apply(plan) == []
    assert store.objects == after_b
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT


async def test_a_lost_exclusive_create_of_another_volume_is_a_real_conflict() -> None:
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)
    foreign = FULL_OBJECT | {"csi.volname": b"pvc-other"}
    await store.omap_set(*VOLUME_OBJECT, foreign, exclusive_create=True)

    with pytest.raises(JournalConflict) as conflict:
        await journal.apply(plan)
    assert (conflict.value.key, conflict.value.found) == ("csi.volname", "pvc-other")
    assert store.objects == {VOLUME_OBJECT: foreign}


async def test_a_writer_cancelled_after_another_adopted_its_object_removes_nothing() -> None:
    # Writer A creates the object; before its directory write lands, writer B reads the journal,
    # adopts the object and writes the directory key; then A is cancelled (leadership lost).
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)

    async def b_then_cancel_a() -> None:
        await writer_b(store)()
        raise asyncio.CancelledError

    store.interleave["csi.volumes.default"] = b_then_cancel_a
    with pytest.raises(asyncio.CancelledError):
        await journal.apply(plan)
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}


async def test_a_writer_timing_out_after_another_adopted_its_object_removes_nothing() -> None:
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)

    async def b_then_time_out_a() -> None:
        await writer_b(store)()
        store.fail_on = "csi.volumes.default"

    store.interleave["csi.volumes.default"] = b_then_time_out_a
    with pytest.raises(CephUnavailable):
        await journal.apply(plan)
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}


async def test_a_directory_key_taken_between_plan_and_write_is_not_overwritten() -> None:
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)
    assert plan.writes[-1].expect == {"csi.volume.pvc-1": b""}  # absent compares as empty

    async def another_volume_reserves_the_name() -> None:
        other = ("replicapool", "", f"csi.volume.{OTHER_UUID}")
        await store.omap_set(*other, {"csi.volname": b"pvc-1"}, exclusive_create=True)
        await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": OTHER_UUID.encode()})

    store.interleave["csi.volumes.default"] = another_volume_reserves_the_name
    with pytest.raises(JournalConflict) as conflict:
        await journal.apply(plan)
    assert (conflict.value.found, conflict.value.expected) == (OTHER_UUID, UUID)
    assert "left in place" in str(conflict.value)  # the object this run wrote is not removed
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": OTHER_UUID.encode()}


async def test_a_directory_key_written_alike_meanwhile_is_adopted() -> None:
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)

    async def same_value() -> None:
        await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": UUID.encode()})

    store.interleave["csi.volumes.default"] = same_value
    written = await journal.apply(plan)
    assert written == ["csi.volname", "csi.imagename", "csi.imageid", "csi.volume.owner"]
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}


async def test_a_stale_directory_value_is_replaced_only_while_it_is_the_one_read() -> None:
    store = MemoryStore()
    await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": b"stale-1"})
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)

    async def another_stale_value() -> None:
        await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": b"stale-2"})

    store.interleave["csi.volumes.default"] = another_stale_value
    await journal.apply(plan)
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}
    # Read once for the plan, then again after the write found stale-2 instead of stale-1.
    assert store.reads > 4


async def test_an_update_to_an_object_removed_meanwhile_redoes_the_reservation() -> None:
    # Planned: reset csi.imageid. Meanwhile the volume's journal was removed (ceph-csi's
    # DeleteVolume). An unconditional write would leave an object holding the image ID alone.
    store = MemoryStore()
    await regenerate(store, replace(RESERVATION, image_id="id-before-resync"))
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)
    assert plan.keys == ["csi.imageid"]

    async def removed() -> None:
        store.objects.clear()

    store.interleave[f"csi.volume.{UUID}"] = removed
    written = await journal.apply(plan)
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT
    assert store.objects[DIRECTORY] == {"csi.volume.pvc-1": UUID.encode()}
    assert written == [*FULL_OBJECT, "csi.volume.pvc-1"]


async def test_a_writer_that_keeps_losing_gives_up_with_a_conflict() -> None:
    store = MemoryStore()
    journal = VolumeJournal(store)
    plan = await journal.plan(RESERVATION)
    rounds = 0

    async def yet_another_stale_value() -> None:
        nonlocal rounds
        rounds += 1
        await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": f"stale-{rounds}".encode()})
        store.interleave["csi.volumes.default"] = yet_another_stale_value

    store.interleave["csi.volumes.default"] = yet_another_stale_value
    with pytest.raises(JournalConflict, match="changed it each of the 4 times") as conflict:
        await journal.apply(plan)
    assert rounds == REPLANS + 1
    assert (conflict.value.object, conflict.value.key) == (
        "csi.volumes.default",
        "csi.volume.pvc-1",
    )
    assert store.objects[VOLUME_OBJECT] == FULL_OBJECT  # written once, kept


async def test_a_value_that_cannot_be_compared_is_left_to_a_human() -> None:
    store = MemoryStore()
    await store.omap_set(*DIRECTORY, {"csi.volume.pvc-1": "stäle".encode()})
    with pytest.raises(JournalConflict, match="not ASCII"):
        await regenerate(store, RESERVATION)
    assert VOLUME_OBJECT not in store.objects


async def test_two_writers_at_once_end_with_one_journal() -> None:
    store = MemoryStore()
    first, second = VolumeJournal(store), VolumeJournal(store)
    plans = [await first.plan(RESERVATION), await second.plan(RESERVATION)]
    written = await asyncio.gather(first.apply(plans[0]), second.apply(plans[1]))
    assert sorted(written, key=len) == [[], [*FULL_OBJECT, "csi.volume.pvc-1"]]
    assert store.objects == {
        VOLUME_OBJECT: FULL_OBJECT,
        DIRECTORY: {"csi.volume.pvc-1": UUID.encode()},
    }
