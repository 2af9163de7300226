"""ceph-csi's RADOS OMAP journal for volumes, read and written byte for byte as ceph-csi does.

    journal pool: csi.volumes.<instance>      csi.volume.<request name> -> <uuid>
                                              (or <16-hex image pool ID>/<uuid> when the
                                               journal pool is not the image pool)
    image pool:   csi.volume.<uuid>           csi.volname, csi.imagename, csi.imageid,
                                              csi.volume.owner, [csi.journalpool],
                                              [csi.volume.encryptKMS, csi.volume.encryptionType]

Writing is planned first from what is on Ceph now, then applied, so a dry run shows exactly what
a real run writes and a converged volume plans nothing. Each write is atomic (RADOS applies one
op on one object whole). ceph-csi creates the per-volume object, points the directory key at it,
then sets the object's keys; here the object is created with all its keys in one op and the
directory key is set last, so a directory key never points at an object without them. A directory
key whose per-volume object is missing is stale (ceph-csi's check-reservation rule) and is
overwritten.

Other writers work on the same journal at the same time: another replica, a stale leader, ceph-csi's
own regenerator. So every write is conditional on what its plan read: the per-volume object is
created exclusively, and every other write carries a RADOS `omap_cmp` of each key the plan relied
on, in the same op (an absent key compares equal to empty). When another writer got there first,
the op writes nothing and the journal is read again at once and re-planned: the new plan adopts
what the other writer wrote when it says the same, or raises a real JournalConflict.

Nothing is ever undone. Any state between the writes is one the next plan completes, and anything
this run wrote may already have been adopted by another writer that read it (a timeout or a
cancellation does not even say whether a write landed), so removing it could take a Ready volume's
journal away. A run killed, cancelled or failed half-way leaves a state the next plan completes.

This module knows Ceph objects and nothing of Kubernetes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt

from reconciler.errors import JournalConflict, ObjectChanged, ObjectExists

log = logging.getLogger(__name__)

DEFAULT_INSTANCE_ID = "default"
NAME_KEY_PREFIX = "csi.volume."
UUID_OBJECT_PREFIX = "csi.volume."
KEY_VOLNAME = "csi.volname"
KEY_IMAGENAME = "csi.imagename"
KEY_IMAGEID = "csi.imageid"
KEY_OWNER = "csi.volume.owner"
KEY_JOURNALPOOL = "csi.journalpool"
KEY_ENCRYPT_KMS = "csi.volume.encryptKMS"
KEY_ENCRYPTION_TYPE = "csi.volume.encryptionType"
#: Keys a later run may overwrite: the image ID changes when rbd-mirror re-syncs an image, and
#: the owner when the claim moves. Any other difference is a conflict for a human.
UPDATABLE_KEYS = frozenset({KEY_IMAGEID, KEY_OWNER})
#: Keys whose mere presence changes what ceph-csi does (encryption, where the journal lives): one
#: the volume does not call for is a conflict too.
ABSENCE_MATTERS = (KEY_JOURNALPOOL, KEY_ENCRYPT_KMS, KEY_ENCRYPTION_TYPE)
#: How many times one `apply` reads the journal again after losing a race to another writer
#: before it gives up with a JournalConflict. Each lost race means another writer changed the
#: journal meanwhile; a few in a row mean one that keeps changing it.
REPLANS = 3


class OmapStore(Protocol):
    """The Ceph operations the journal needs; `cephconn.CephConnection` provides them."""

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        """The object's omap (only `keys` if given), or None when the object does not exist."""
        ...

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
        """Set `values` in one atomic op that creates the object if missing. With
        `exclusive_create`, raise ObjectExists instead when it exists. With `expect`, raise
        ObjectChanged instead unless each key still holds that value (an absent key or object
        holds b""). `expect` values are ASCII."""
        ...


def directory_object(instance_id: str = DEFAULT_INSTANCE_ID) -> str:
    return f"csi.volumes.{instance_id}"


def volume_object(object_uuid: str) -> str:
    return UUID_OBJECT_PREFIX + object_uuid


def name_key(request_name: str) -> str:
    return NAME_KEY_PREFIX + request_name


def pool_id_hex(pool_id: int) -> str:
    """A pool ID as ceph-csi stores it: big-endian, 16 lower-case hex digits. Never negative
    (a `VolumeReservation` refuses one), so no two's complement is needed."""
    return f"{pool_id:016x}"


@dataclass(frozen=True)
class VolumeReservation:
    """Everything the journal should say about one volume."""

    request_name: str
    object_uuid: str
    image_name: str
    image_id: str
    image_pool: str
    image_pool_id: int
    journal_pool: str
    journal_pool_id: int
    namespace: str = ""
    instance_id: str = DEFAULT_INSTANCE_ID
    owner: str = ""
    encryption_kms_id: str = ""
    encryption_type: str = ""

    def __post_init__(self) -> None:
        # Ceph never hands out a negative pool ID, and ceph-csi takes -1 for "no pool": encoding
        # one would write a journal ceph-csi cannot use.
        for pool, pool_id in (
            (self.image_pool, self.image_pool_id),
            (self.journal_pool, self.journal_pool_id),
        ):
            if pool_id < 0:
                raise ValueError(
                    f"pool {pool!r} has ID {pool_id}: a Ceph pool ID is never negative"
                )

    @property
    def separate_journal(self) -> bool:
        return self.journal_pool != self.image_pool

    @property
    def directory(self) -> str:
        return directory_object(self.instance_id)

    @property
    def volume_object(self) -> str:
        return volume_object(self.object_uuid)

    def directory_value(self) -> str:
        if self.separate_journal:
            return f"{pool_id_hex(self.image_pool_id)}/{self.object_uuid}"
        return self.object_uuid

    def volume_values(self) -> dict[str, str]:
        values = {
            KEY_VOLNAME: self.request_name,
            KEY_IMAGENAME: self.image_name,
            KEY_IMAGEID: self.image_id,
        }
        if self.owner:
            values[KEY_OWNER] = self.owner
        if self.separate_journal:
            values[KEY_JOURNALPOOL] = pool_id_hex(self.journal_pool_id)
        if self.encryption_kms_id:
            values[KEY_ENCRYPT_KMS] = self.encryption_kms_id
        if self.encryption_type:
            values[KEY_ENCRYPTION_TYPE] = self.encryption_type
        return values


@dataclass(frozen=True)
class OmapWrite:
    pool: str
    oid: str
    values: Mapping[str, str]
    #: Create the object, failing if it exists: what reserves the UUID.
    exclusive_create: bool = False
    #: What the keys the plan relied on held when it read them (b"" for an absent key): the write
    #: applies only while they still do.
    expect: Mapping[str, bytes] = field(default_factory=dict)


@dataclass
class JournalPlan:
    reservation: VolumeReservation
    writes: list[OmapWrite] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """The keys the plan writes, in order."""
        return [key for write in self.writes for key in write.values]

    @property
    def empty(self) -> bool:
        return not self.writes


@dataclass(frozen=True)
class JournalEntry:
    """What the journal holds for one request name, as ceph-csi would read it."""

    directory_pool: str
    directory_key: str
    #: The request name's directory key and its value, if it exists.
    directory_raw: dict[str, bytes]
    volume_pool: str
    volume_object: str
    #: The per-volume object's omap as stored; None when the object does not exist.
    volume_raw: dict[str, bytes] | None

    @property
    def directory_values(self) -> dict[str, str]:
        return _text(self.directory_raw)

    @property
    def volume_values(self) -> dict[str, str] | None:
        return None if self.volume_raw is None else _text(self.volume_raw)

    @property
    def directory_value(self) -> str | None:
        return self.directory_values.get(self.directory_key)


def _text(values: Mapping[str, bytes]) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in values.items()}


def _expectation(found: Mapping[str, bytes], keys: Sequence[str]) -> dict[str, bytes]:
    """What `keys` held when read (b"" when absent), for a write conditional on it. A value that
    is not ASCII cannot be compared (see OmapStore.omap_set) and is left out: the other keys of
    the same write still pin the object."""
    expect = {key: found.get(key, b"") for key in keys}
    return {key: value for key, value in expect.items() if value.isascii()}


class VolumeJournal:
    """Plans and applies reservations on one Ceph cluster through an `OmapStore`."""

    def __init__(self, store: OmapStore) -> None:
        self.store = store

    async def read(self, reservation: VolumeReservation) -> JournalEntry:
        r = reservation
        directory_keys = [name_key(r.request_name)]
        directory = await self.store.omap_get(
            r.journal_pool, r.namespace, r.directory, directory_keys
        )
        volume = await self.store.omap_get(r.image_pool, r.namespace, r.volume_object)
        return JournalEntry(
            directory_pool=r.journal_pool,
            directory_key=directory_keys[0],
            directory_raw=directory or {},
            volume_pool=r.image_pool,
            volume_object=r.volume_object,
            volume_raw=volume,
        )

    async def plan(self, reservation: VolumeReservation) -> JournalPlan:
        """The writes that make the journal say `reservation`; raises JournalConflict instead
        when the journal already says something else about this volume."""
        r = reservation
        entry = await self.read(r)
        plan = JournalPlan(r)
        want_volume = r.volume_values()

        stale = entry.directory_value
        if stale is not None and stale != r.directory_value():
            # The request name is reserved for another UUID. Only a reservation whose object is
            # gone may be replaced; a live one belongs to some volume a human must look at.
            if await self._reserved_object_exists(r, stale):
                raise JournalConflict(
                    r.journal_pool, r.directory, entry.directory_key, stale, r.directory_value()
                )
            log.warning(
                "directory key %s in %s/%s names %r, whose per-volume object is missing: "
                "stale, to be replaced by %r",
                entry.directory_key,
                r.journal_pool,
                r.directory,
                stale,
                r.directory_value(),
            )
        if entry.volume_values is None or entry.volume_raw is None:
            plan.writes.append(
                OmapWrite(r.image_pool, r.volume_object, want_volume, exclusive_create=True)
            )
        else:
            # The object exists: an earlier run of ours, or ceph-csi, got this far. It must be
            # this volume's (an empty one is a reservation cut off before its keys were set).
            found = entry.volume_values
            changes: dict[str, str] = {}
            for key, wanted in want_volume.items():
                have = found.get(key)
                if have == wanted:
                    continue
                if have is not None and key not in UPDATABLE_KEYS:
                    raise JournalConflict(r.image_pool, r.volume_object, key, have, wanted)
                changes[key] = wanted
            for key in ABSENCE_MATTERS:
                if key in found and key not in want_volume:
                    raise JournalConflict(
                        r.image_pool, r.volume_object, key, found[key], "<no such key>"
                    )
            if changes:
                _refuse_incomparable(r.image_pool, r.volume_object, entry.volume_raw, changes)
                # Conditional on every key this judgement read, not only the changed ones: the
                # object could be removed and made again meanwhile.
                relied_on = [*want_volume, *(k for k in ABSENCE_MATTERS if k not in want_volume)]
                plan.writes.append(
                    OmapWrite(
                        r.image_pool,
                        r.volume_object,
                        changes,
                        expect=_expectation(entry.volume_raw, relied_on),
                    )
                )
        directory_changes: dict[str, str] = {}
        if entry.directory_value != r.directory_value():
            directory_changes[entry.directory_key] = r.directory_value()
        if directory_changes:
            _refuse_incomparable(
                r.journal_pool, r.directory, entry.directory_raw, directory_changes
            )
            plan.writes.append(
                OmapWrite(
                    r.journal_pool,
                    r.directory,
                    directory_changes,
                    expect=_expectation(entry.directory_raw, list(directory_changes)),
                )
            )
        return plan

    async def _reserved_object_exists(self, r: VolumeReservation, directory_value: str) -> bool:
        """Whether the per-volume object a directory value names exists, looked up where ceph-csi
        looks: `<uuid>` in the journal pool, `<16-hex pool ID>/<uuid>` in that pool. A value
        naming a pool this reservation does not know counts as existing: a conflict, since
        nothing here can check it."""
        parts = directory_value.split("/")
        if len(parts) == 1:
            pool, object_uuid = r.journal_pool, parts[0]
        elif len(parts) == 2 and parts[0] == pool_id_hex(r.image_pool_id):
            pool, object_uuid = r.image_pool, parts[1]
        elif len(parts) == 2 and parts[0] == pool_id_hex(r.journal_pool_id):
            pool, object_uuid = r.journal_pool, parts[1]
        else:
            return True
        found = await self.store.omap_get(
            pool, r.namespace, volume_object(object_uuid), [KEY_VOLNAME]
        )
        return found is not None

    async def apply(self, plan: JournalPlan) -> list[str]:
        """Carry out `plan` in order and return the keys written.

        When another writer got there first (the exclusive create finds the object, or a key
        the plan read has changed) the journal is read again at once and the new plan applied:
        it adopts what the other writer wrote, completes it, or raises a real JournalConflict.
        After REPLANS such re-plans in a row, a JournalConflict. Nothing is undone on any
        failure (see the module docstring)."""
        r = plan.reservation
        written: list[str] = []
        current = plan
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(REPLANS + 1),
                retry=retry_if_exception_type((ObjectExists, ObjectChanged)),
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        current = await self._replan(r, written)
                    await self._apply_once(current, written)
        except RetryError as gave_up:
            lost = gave_up.last_attempt.exception()
            if not isinstance(lost, ObjectExists | ObjectChanged):  # cannot be: retried only those
                raise
            write = next(w for w in current.writes if (w.pool, w.oid) == (lost.pool, lost.oid))
            key, wanted = next(iter(write.values.items()))
            raise JournalConflict(
                write.pool,
                write.oid,
                key,
                "<changed by another writer>",
                wanted,
                note=f"another writer changed it each of the {REPLANS + 1} times this one read it",
            ) from lost
        return written

    async def _replan(self, r: VolumeReservation, written: list[str]) -> JournalPlan:
        try:
            return await self.plan(r)
        except JournalConflict as conflict:
            if not written:
                raise
            raise JournalConflict(
                conflict.pool,
                conflict.object,
                conflict.key,
                conflict.found,
                conflict.expected,
                note=f"this run had written {', '.join(written)} before another writer's change "
                "showed; they are left in place",
            ) from conflict

    async def _apply_once(self, plan: JournalPlan, written: list[str]) -> None:
        r = plan.reservation
        for write in plan.writes:
            try:
                await self.store.omap_set(
                    write.pool,
                    r.namespace,
                    write.oid,
                    {k: v.encode() for k, v in write.values.items()},
                    exclusive_create=write.exclusive_create,
                    expect=write.expect,
                )
            except (ObjectExists, ObjectChanged):
                log.info(
                    "journal of %s: %s/%s changed since it was read (another writer); reading "
                    "it again",
                    r.request_name,
                    write.pool,
                    write.oid,
                )
                raise
            written.extend(write.values)


def _refuse_incomparable(
    pool: str, oid: str, found: Mapping[str, bytes], changes: Mapping[str, str]
) -> None:
    """A value this plan would overwrite must be comparable (ASCII, as everything ceph-csi
    writes): overwriting one that no write can be made conditional on is left to a human."""
    for key, wanted in changes.items():
        value = found.get(key, b"")
        if not value.isascii():
            raise JournalConflict(
                pool,
                oid,
                key,
                value.decode(errors="replace"),
                wanted,
                note="it is not ASCII, so no write can be made conditional on it: left to a human",
            )
