"""Two writers on one journal, on the real Ceph pair: what users get when this controller runs
beside another replica, a stale leader, or ceph-csi's own regenerator. Each writer has its own
ConnectionPool, so its own librados client, as two processes would. Also: librados/librbd errors
and malformed keys as the real daemons produce them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager

import pytest

from reconciler import cephconn
from reconciler.cephconn import CephConnection, Credentials, ImageInfo
from reconciler.cephpool import ConnectionPool
from reconciler.errors import (
    CephPermissionDenied,
    CephUnavailable,
    InvalidCephKey,
    JournalConflict,
    ObjectChanged,
)
from reconciler.journal import VolumeJournal
from reconciler.regenerate import LocalCluster, plan_regeneration, regenerate
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.pair import SitePair
from reconciler.volume import CSIVolume
from tests.support import csi_replay
from tests.support.csi_replay import Provisioned

pytestmark = pytest.mark.e2e

SITE_A_ID = "site-a-two-writers"
SITE_B = LocalCluster("site-b-two-writers")
DIRECTORY = "csi.volumes.default"
MALFORMED_KEY = "SECRETSECRETSECRETSECRETSECRETSECRET"


@pytest.fixture(scope="module")
def failed_over(ceph_pair: SitePair) -> Iterator[dict[str, Provisioned]]:
    """Volumes provisioned on site-a as ceph-csi does, mirrored and promoted on site-b, where
    their journal does not exist yet (RADOS omap is not mirrored)."""
    names = ["pvc-twice", "pvc-lost-create", "pvc-dir-taken", "pvc-paused-0", "pvc-paused-1"]
    volumes = {
        name: csi_replay.provision(ceph_pair.site_a, SITE_A_ID, ceph_pair.pool, name)
        for name in names
    }
    ceph_pair.fail_over([v.image_name for v in volumes.values()])
    yield volumes


@asynccontextmanager
async def writer(pair: SitePair, user: str = CSI_USER) -> AsyncIterator[CephConnection]:
    """One writer's own connection to site-b, as its own process would have."""
    pool = ConnectionPool(timeout=5)
    key = (pair.site_b.dir / f"{user}.key").read_text().strip()
    try:
        yield await pool.get(pair.site_b.monitors, Credentials(user, key))
    finally:
        await pool.close()


class Writer:
    """A writer's real connection with a hook in front of its writes: a test makes it wait or
    fail exactly there, between its plan and one of its writes."""

    def __init__(self, ceph: CephConnection) -> None:
        self.ceph = ceph

    async def before_write(self, oid: str) -> None:
        pass

    async def pool_id(self, pool: str) -> int:
        return await self.ceph.pool_id(pool)

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
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
        await self.before_write(oid)
        await self.ceph.omap_set(
            pool, namespace, oid, values, exclusive_create=exclusive_create, expect=expect
        )


class PlansTogether(Writer):
    """Writes only once every writer sharing `barrier` has planned (reached its first write)."""

    def __init__(self, ceph: CephConnection, barrier: asyncio.Barrier) -> None:
        super().__init__(ceph)
        self.barrier = barrier
        self.waited = False

    async def before_write(self, oid: str) -> None:
        if not self.waited:
            self.waited = True
            await self.barrier.wait()


class PausedBefore(Writer):
    """Stands still before its write to `oid` (a stale leader, SIGSTOPped mid-reservation) until
    released; then writes, or fails with `fault`."""

    def __init__(self, ceph: CephConnection, oid: str) -> None:
        super().__init__(ceph)
        self.oid = oid
        self.reached = asyncio.Event()
        self.released = asyncio.Event()
        self.fault: BaseException | None = None

    async def before_write(self, oid: str) -> None:
        if oid == self.oid and not self.reached.is_set():
            self.reached.set()
            await self.released.wait()
            if self.fault is not None:
                raise self.fault


def expected_object(pair: SitePair, volume: Provisioned) -> dict[str, bytes]:
    """The per-volume object ceph-csi would have written on site-b for `volume`."""
    values = {
        "csi.volname": volume.pv_name,
        "csi.imagename": volume.image_name,
        "csi.imageid": csi_replay.image_id(pair.site_b, volume.pool, volume.image_name),
        "csi.volume.owner": volume.namespace,
    }
    return {k: v.encode() for k, v in values.items()}


def assert_one_correct_journal(pair: SitePair, volume: Provisioned) -> None:
    """Exactly one reservation for the PV on site-b, the one ceph-csi would have made."""
    site = pair.site_b
    directory = csi_replay.omap(site, volume.pool, DIRECTORY) or {}
    assert directory.get(f"csi.volume.{volume.pv_name}") == volume.object_uuid.encode()
    volume_object = f"csi.volume.{volume.object_uuid}"
    assert csi_replay.omap(site, volume.pool, volume_object) == expected_object(pair, volume)
    claiming = [
        name
        for name in csi_replay.objects(site, volume.pool, "csi.volume.")
        if (csi_replay.omap(site, volume.pool, name) or {}).get("csi.volname")
        == volume.pv_name.encode()
    ]
    assert claiming == [volume_object]


def pv(volume: Provisioned) -> CSIVolume:
    return CSIVolume.from_pv(volume.pv())


async def test_two_regenerations_at_once_end_with_one_journal_and_one_handle(
    ceph_pair: SitePair, failed_over: dict[str, Provisioned]
) -> None:
    volume = failed_over["pvc-twice"]
    # Both plan before either writes: both see no journal and both try to create it.
    barrier = asyncio.Barrier(2)
    async with writer(ceph_pair) as first, writer(ceph_pair) as second:
        outcomes = await asyncio.gather(
            regenerate(PlansTogether(first, barrier), pv(volume), SITE_B),
            regenerate(PlansTogether(second, barrier), pv(volume), SITE_B),
            return_exceptions=True,  # neither writer is abandoned mid-call when the other fails
        )
    results = [r for r in outcomes if not isinstance(r, BaseException)]
    assert len(results) == 2, f"a writer failed: {outcomes}"
    assert results[0].new_handle == results[1].new_handle
    assert results[0].new_handle == csi_replay.ceph_csi_handle(
        SITE_B.cluster_id, ceph_pair.site_b.pool_id(volume.pool), volume.object_uuid
    )
    assert_one_correct_journal(ceph_pair, volume)
    # The loser adopted what the winner wrote rather than writing it again.
    volume_keys = {"csi.volname", "csi.imagename", "csi.imageid", "csi.volume.owner"}
    assert [volume_keys <= set(r.written) for r in results].count(True) == 1


async def test_a_lost_exclusive_create_adopts_the_other_writers_journal(
    ceph_pair: SitePair, failed_over: dict[str, Provisioned]
) -> None:
    volume = failed_over["pvc-lost-create"]
    async with writer(ceph_pair) as stale, writer(ceph_pair) as other:
        plan, _, new_handle = await plan_regeneration(stale, pv(volume), SITE_B)
        assert plan.writes[0].exclusive_create
        done = await regenerate(other, pv(volume), SITE_B)  # wins the race
        before = csi_replay.omap(ceph_pair.site_b, volume.pool, DIRECTORY)

        assert await VolumeJournal(stale).apply(plan) == []
    assert done.new_handle == new_handle
    assert csi_replay.omap(ceph_pair.site_b, volume.pool, DIRECTORY) == before
    assert_one_correct_journal(ceph_pair, volume)


@pytest.mark.parametrize("fault", ["cancelled", "timed out"])
async def test_a_stale_writer_never_removes_a_journal_another_writer_adopted(
    ceph_pair: SitePair, failed_over: dict[str, Provisioned], fault: str
) -> None:
    # Writer A creates the per-volume object, then stands still before its directory write.
    # Writer B (the new leader, or ceph-csi) reads the journal, adopts the object and completes
    # it. Then A is cancelled (it lost its lease) or its directory write times out.
    volume = failed_over[f"pvc-paused-{['cancelled', 'timed out'].index(fault)}"]
    async with writer(ceph_pair) as a_connection, writer(ceph_pair) as b_connection:
        a = PausedBefore(a_connection, DIRECTORY)
        a_run = asyncio.ensure_future(regenerate(a, pv(volume), SITE_B))
        await asyncio.wait_for(a.reached.wait(), 30)
        b_result = await regenerate(b_connection, pv(volume), SITE_B)
        assert b_result.written == [f"csi.volume.{volume.pv_name}"]  # adopted A's object
        assert_one_correct_journal(ceph_pair, volume)

        if fault == "cancelled":
            a_run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await a_run
        else:
            a.fault = CephUnavailable("injected OSD timeout")
            a.released.set()
            with pytest.raises(CephUnavailable):
                await a_run
    assert_one_correct_journal(ceph_pair, volume)


async def test_a_directory_key_changed_between_plan_and_write_is_re_planned_not_overwritten(
    ceph_pair: SitePair, failed_over: dict[str, Provisioned]
) -> None:
    volume = failed_over["pvc-dir-taken"]
    site = ceph_pair.site_b
    key = f"csi.volume.{volume.pv_name}"
    async with writer(ceph_pair) as ceph:
        plan, _, _ = await plan_regeneration(ceph, pv(volume), SITE_B)
        assert plan.writes[-1].expect == {key: b""}  # absent when read: compared as empty
        # Meanwhile another volume, alive, reserves this request name.
        other_uuid = str(uuid.uuid4())
        site.rados(volume.pool, "setomapval", f"csi.volume.{other_uuid}", "csi.volname", "x")
        site.rados(volume.pool, "setomapval", DIRECTORY, key, other_uuid)

        with pytest.raises(JournalConflict) as conflict:
            await VolumeJournal(ceph).apply(plan)
        assert (conflict.value.key, conflict.value.found) == (key, other_uuid)
        assert (csi_replay.omap(site, volume.pool, DIRECTORY) or {})[key] == other_uuid.encode()

        # Once the other reservation is gone, the next run completes this one.
        site.rados(volume.pool, "rm", f"csi.volume.{other_uuid}")
        await regenerate(ceph, pv(volume), SITE_B)
    assert_one_correct_journal(ceph_pair, volume)


async def test_conditional_writes_compare_as_the_osd_does(ceph_pair: SitePair) -> None:
    site = ceph_pair.site_b
    oid = f"two-writers-{uuid.uuid4().hex[:8]}"
    async with writer(ceph_pair) as ceph:
        # A missing object holds no keys: an absent key compares equal to empty.
        await ceph.omap_set(ceph_pair.pool, "", oid, {"k": b"1"}, expect={"k": b"", "j": b""})
        await ceph.omap_set(ceph_pair.pool, "", oid, {"k": b"2"}, expect={"k": b"1", "j": b""})
        for stale in ({"k": b"1"}, {"k": b""}, {"j": b"1"}):
            with pytest.raises(ObjectChanged):
                await ceph.omap_set(ceph_pair.pool, "", oid, {"k": b"3", "z": b"z"}, expect=stale)
        assert csi_replay.omap(site, ceph_pair.pool, oid) == {"k": b"2"}  # nothing written
    site.rados(ceph_pair.pool, "rm", oid)


async def test_a_user_without_caps_is_permission_denied(
    ceph_pair: SitePair, failed_over: dict[str, Provisioned]
) -> None:
    # Issue 11, item 3: an OSD refusing a user without caps became an AttributeError in librbd's
    # error handling (rbd.TimedOut does not exist) and a generic CephError in librados'.
    site = ceph_pair.site_b
    user = f"nocaps-{uuid.uuid4().hex[:6]}"
    key = site.create_user(user, ("mon", "allow r"))
    volume = failed_over["pvc-twice"]
    pool = ConnectionPool(timeout=5)
    try:
        ceph = await pool.get(site.monitors, Credentials(user, key))
        with pytest.raises(CephPermissionDenied, match=f"client.{user}"):
            await ceph.image_info(volume.pool, "", volume.image_name)
        with pytest.raises(CephPermissionDenied):
            await ceph.omap_get(volume.pool, "", DIRECTORY)
        with pytest.raises(CephPermissionDenied) as denied:
            await regenerate(ceph, pv(volume), SITE_B)
        assert (denied.value.reason, denied.value.retryable) == ("CephPermissionDenied", False)
        # A key the monitors do not know for the user: refused at connect.
        other = site.create_user(f"{user}-other", ("mon", "allow r"))
        with pytest.raises(CephPermissionDenied, match="refused"):
            await pool.get(site.monitors, Credentials(user, other))
    finally:
        await pool.close()
        site.ceph("auth", "rm", f"client.{user}")
        site.ceph("auth", "rm", f"client.{user}-other")


async def test_a_malformed_key_never_shows_on_stderr(
    ceph_pair: SitePair, capfd: pytest.CaptureFixture[str]
) -> None:
    monitors = ceph_pair.site_b.monitors
    pool = ConnectionPool(timeout=5)
    try:
        with pytest.raises(InvalidCephKey) as refused:
            await pool.get(monitors, Credentials(CSI_USER, MALFORMED_KEY))
    finally:
        await pool.close()
    # And were it to reach librados (no key check), librados' own log stays off stderr.
    unchecked = cephconn.CephConnection(
        monitors, Credentials(CSI_USER, MALFORMED_KEY), 5, 1, key_check=lambda key: None
    )
    try:
        with pytest.raises(CephUnavailable) as failed:
            await unchecked.connect()
    finally:
        await unchecked.aclose()
    captured = capfd.readouterr()
    for text in (str(refused.value), str(failed.value), captured.err, captured.out):
        assert MALFORMED_KEY[:6] not in text
