"""Journal regeneration against the real Ceph pair, checked byte for byte as ceph-csi reads it."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from reconciler.cephconn import CephConnection, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.errors import CephUnavailable, ImageNotFound, JournalConflict, PoolNotFound
from reconciler.regenerate import LocalCluster, regenerate
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.pair import SitePair
from reconciler.volume import CSIVolume
from tests.support import csi_replay
from tests.support.csi_replay import Provisioned, VolumeFactory

pytestmark = pytest.mark.e2e

SITE_A_ID = "site-a-cluster"
SITE_B_ID = "site-b-cluster"
SITE_B = LocalCluster(SITE_B_ID)


@pytest.fixture(scope="module")
def volumes(new_volumes: VolumeFactory) -> VolumeFactory:
    """New volumes provisioned on site-a as ceph-csi would, mirrored and promoted on site-b."""
    return new_volumes.derive(cluster_id=SITE_A_ID, prefix="pvc")


@pytest.fixture
async def site_b(ceph_pair: SitePair) -> AsyncIterator[CephConnection]:
    """site-b as ceph-csi's provisioner user, through the pool the controller uses."""
    pool = ConnectionPool(timeout=5)
    key = (ceph_pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    yield await pool.get(ceph_pair.site_b.monitors, Credentials(CSI_USER, key))
    await pool.close()


def journal_less(pv_name: str, object_uuid: str, pool: str) -> Provisioned:
    """A volume of site-a's whose image may exist on site-b but whose journal never did."""
    return Provisioned(
        pv_name=pv_name,
        cluster_id=SITE_A_ID,
        claim_name=f"claim-{pv_name}",
        namespace="apps",
        object_uuid=object_uuid,
        image_name=f"csi-vol-{object_uuid}",
        handle=csi_replay.ceph_csi_handle(SITE_A_ID, 9, object_uuid),
        pool=pool,
    )


def journal_snapshot(pair: SitePair, pool: str) -> dict[str, dict[str, bytes] | None]:
    """Every ceph-csi journal object in `pool` on site-b with its omap."""
    site = pair.site_b
    names = csi_replay.objects(site, pool, "csi.")
    return {name: csi_replay.omap(site, pool, name) for name in sorted(names)}


def keys_of_a_full_reservation(volume: Provisioned) -> list[str]:
    """What regenerating a volume without any journal on site-b writes, in order."""
    return [
        "csi.volname",
        "csi.imagename",
        "csi.imageid",
        "csi.volume.owner",
        f"csi.volume.{volume.pv_name}",
    ]


def expected_on_site_b(pair: SitePair, volume: Provisioned, **extra: str) -> dict[str, bytes]:
    values = {
        "csi.volname": volume.pv_name,
        "csi.imagename": volume.image_name,
        "csi.imageid": csi_replay.image_id(pair.site_b, volume.pool, volume.image_name),
        "csi.volume.owner": volume.namespace,
        **extra,
    }
    return {k: v.encode() for k, v in values.items()}


async def test_regeneration_writes_what_ceph_csi_reads(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    result = await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)

    pool_id_b = ceph_pair.site_b.pool_id(volume.pool)
    assert pool_id_b != ceph_pair.site_a.pool_id(volume.pool)
    assert result.new_handle == csi_replay.ceph_csi_handle(SITE_B_ID, pool_id_b, volume.object_uuid)
    assert result.old_handle == volume.handle
    assert result.image_name == volume.image_name
    assert result.image_primary is True
    directory = csi_replay.omap(ceph_pair.site_b, volume.pool, "csi.volumes.default") or {}
    assert directory[f"csi.volume.{volume.pv_name}"] == volume.object_uuid.encode()
    per_volume = csi_replay.omap(ceph_pair.site_b, volume.pool, f"csi.volume.{volume.object_uuid}")
    assert per_volume == expected_on_site_b(ceph_pair, volume)
    assert result.written == keys_of_a_full_reservation(volume)

    before = journal_snapshot(ceph_pair, volume.pool)
    again = await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)
    assert again.written == []
    assert again.new_handle == result.new_handle
    assert journal_snapshot(ceph_pair, volume.pool) == before


async def test_dry_run_plans_without_writing(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    before = journal_snapshot(ceph_pair, volume.pool)
    planned = await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B, dry_run=True)
    assert planned.dry_run
    assert f"csi.volume.{volume.pv_name}" in planned.written
    assert journal_snapshot(ceph_pair, volume.pool) == before
    done = await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)
    assert done.written == planned.written


async def test_missing_image_writes_nothing(ceph_pair: SitePair, site_b: CephConnection) -> None:
    u = str(uuid.uuid4())
    ghost = journal_less("pvc-ghost", u, ceph_pair.pool)
    before = journal_snapshot(ceph_pair, ceph_pair.pool)
    with pytest.raises(ImageNotFound, match=f"replicapool/csi-vol-{u} does not exist"):
        await regenerate(site_b, CSIVolume.from_pv(ghost.pv()), SITE_B)
    assert journal_snapshot(ceph_pair, ceph_pair.pool) == before


async def test_missing_pool_writes_nothing(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    pv = volume.pv(pool="no-such-pool", journalPool="")
    before = journal_snapshot(ceph_pair, ceph_pair.pool)
    with pytest.raises(PoolNotFound, match="'no-such-pool' does not exist"):
        await regenerate(site_b, CSIVolume.from_pv(pv), SITE_B)
    assert journal_snapshot(ceph_pair, ceph_pair.pool) == before


async def test_conflicting_directory_key_writes_nothing(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    # Another volume, alive (its per-volume object exists), already holds this PV name in
    # site-b's journal.
    other_uuid = str(uuid.uuid4())
    ceph_pair.site_b.rados(
        volume.pool,
        "setomapval",
        "csi.volumes.default",
        f"csi.volume.{volume.pv_name}",
        other_uuid,
    )
    ceph_pair.site_b.rados(
        volume.pool, "setomapval", f"csi.volume.{other_uuid}", "csi.volname", "pvc-someone-else"
    )
    before = journal_snapshot(ceph_pair, volume.pool)
    with pytest.raises(JournalConflict) as conflict:
        await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)
    assert conflict.value.key == f"csi.volume.{volume.pv_name}"
    assert (conflict.value.found, conflict.value.expected) == (other_uuid, volume.object_uuid)
    assert "nothing was written" in str(conflict.value)
    assert journal_snapshot(ceph_pair, volume.pool) == before
    # Once the stray reservation is gone the same volume regenerates.
    ceph_pair.site_b.rados(
        volume.pool, "rmomapkey", "csi.volumes.default", f"csi.volume.{volume.pv_name}"
    )
    ceph_pair.site_b.rados(volume.pool, "rm", f"csi.volume.{other_uuid}")
    await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)
    directory = csi_replay.omap(ceph_pair.site_b, volume.pool, "csi.volumes.default") or {}
    assert directory[f"csi.volume.{volume.pv_name}"] == volume.object_uuid.encode()


async def test_a_stale_directory_key_is_replaced_and_the_reservation_redone(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    site = ceph_pair.site_b
    # The PV name is reserved for another UUID whose per-volume object is gone: stale, by
    # ceph-csi's check-reservation rule.
    stale_uuid = str(uuid.uuid4())
    site.rados(
        volume.pool, "setomapval", "csi.volumes.default", f"csi.volume.{volume.pv_name}", stale_uuid
    )
    assert f"csi.volume.{stale_uuid}" not in csi_replay.objects(site, volume.pool, "csi.volume.")
    before = journal_snapshot(ceph_pair, volume.pool)

    result = await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)

    assert result.new_handle == csi_replay.ceph_csi_handle(
        SITE_B_ID, site.pool_id(volume.pool), volume.object_uuid
    )
    assert result.written == keys_of_a_full_reservation(volume)
    after = journal_snapshot(ceph_pair, volume.pool)
    volume_object = f"csi.volume.{volume.object_uuid}"
    assert set(after) - set(before) == {volume_object}
    assert after["csi.volumes.default"] == (before["csi.volumes.default"] or {}) | {
        f"csi.volume.{volume.pv_name}": volume.object_uuid.encode()
    }
    assert after[volume_object] == expected_on_site_b(ceph_pair, volume)
    assert (await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)).written == []


async def test_owner_and_image_id_are_reset_but_a_foreign_volname_is_a_conflict(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)
    oid = f"csi.volume.{volume.object_uuid}"
    # The claim moved to another namespace and rbd-mirror re-synced the image (new local ID).
    ceph_pair.site_b.rados(volume.pool, "setomapval", oid, "csi.imageid", "stale-id")
    moved = volume.pv()
    moved["spec"]["claimRef"]["namespace"] = "apps-v2"
    result = await regenerate(site_b, CSIVolume.from_pv(moved), SITE_B)
    assert result.written == ["csi.imageid", "csi.volume.owner"]
    per_volume = csi_replay.omap(ceph_pair.site_b, volume.pool, oid) or {}
    assert per_volume["csi.volume.owner"] == b"apps-v2"
    assert (
        per_volume["csi.imageid"]
        == csi_replay.image_id(ceph_pair.site_b, volume.pool, volume.image_name).encode()
    )

    ceph_pair.site_b.rados(volume.pool, "setomapval", oid, "csi.volname", "pvc-someone-else")
    before = journal_snapshot(ceph_pair, volume.pool)
    with pytest.raises(JournalConflict) as conflict:
        await regenerate(site_b, CSIVolume.from_pv(moved), SITE_B)
    assert (conflict.value.object, conflict.value.key) == (oid, "csi.volname")
    assert (conflict.value.found, conflict.value.expected) == ("pvc-someone-else", volume.pv_name)
    assert journal_snapshot(ceph_pair, volume.pool) == before


async def test_encrypted_volume_in_a_rados_namespace(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    [volume] = volumes()
    pv = volume.pv(encrypted="true", encryptionKMSID="vault-tenant")
    await regenerate(site_b, CSIVolume.from_pv(pv), SITE_B)
    per_volume = csi_replay.omap(ceph_pair.site_b, volume.pool, f"csi.volume.{volume.object_uuid}")
    assert per_volume == expected_on_site_b(
        ceph_pair,
        volume,
        **{"csi.volume.encryptKMS": "vault-tenant", "csi.volume.encryptionType": "block"},
    )


@pytest.fixture
def tenant_namespace(ceph_pair: SitePair) -> Iterator[str]:
    """A RADOS namespace on site-b, removed afterwards: site-b's rbd-mirror daemon retries every
    unmirrored namespace it finds, every few seconds, for as long as it exists."""
    site = ceph_pair.site_b
    namespace = f"tenant-{uuid.uuid4().hex[:6]}"
    site.rbd("namespace", "create", f"{ceph_pair.pool}/{namespace}")
    yield namespace
    for image in site.rbd("ls", f"{ceph_pair.pool}/{namespace}").split():
        site.rbd("rm", f"{ceph_pair.pool}/{namespace}/{image}")
    for obj in site.rados(ceph_pair.pool, "-N", namespace, "ls").split():
        site.rados(ceph_pair.pool, "-N", namespace, "rm", obj)
    site.rbd("namespace", "remove", f"{ceph_pair.pool}/{namespace}")


async def test_rados_namespace_is_honoured(
    ceph_pair: SitePair, site_b: CephConnection, tenant_namespace: str
) -> None:
    site = ceph_pair.site_b
    namespace = tenant_namespace
    object_uuid = str(uuid.uuid4())
    site.rbd("create", "--size", "8M", f"{ceph_pair.pool}/{namespace}/csi-vol-{object_uuid}")
    volume = journal_less("pvc-ns", object_uuid, ceph_pair.pool)
    before_default = journal_snapshot(ceph_pair, ceph_pair.pool)
    result = await regenerate(
        site_b, CSIVolume.from_pv(volume.pv()), LocalCluster(SITE_B_ID, rados_namespace=namespace)
    )
    assert result.rados_namespace == namespace
    assert result.image_primary is None  # never mirrored
    directory = csi_replay.omap(site, ceph_pair.pool, "csi.volumes.default", namespace) or {}
    assert directory == {"csi.volume.pvc-ns": object_uuid.encode()}
    per_volume = csi_replay.omap(site, ceph_pair.pool, f"csi.volume.{object_uuid}", namespace)
    assert per_volume is not None and per_volume["csi.volname"] == b"pvc-ns"
    assert journal_snapshot(ceph_pair, ceph_pair.pool) == before_default


async def test_separate_journal_pool_is_laid_out_as_ceph_csi_reads_it(
    ceph_pair: SitePair, site_b: CephConnection
) -> None:
    site = ceph_pair.site_b
    journal_pool = "csi-journal"
    if journal_pool not in site.ceph("osd", "pool", "ls").split():
        site.create_pool(journal_pool)
        site.init_rbd_pool(journal_pool)
    object_uuid = str(uuid.uuid4())
    site.rbd("create", "--size", "8M", f"{ceph_pair.pool}/csi-vol-{object_uuid}")
    volume = journal_less("pvc-topology", object_uuid, ceph_pair.pool)
    await regenerate(site_b, CSIVolume.from_pv(volume.pv(journalPool=journal_pool)), SITE_B)
    image_pool_hex = f"{site.pool_id(ceph_pair.pool):016x}"
    journal_pool_hex = f"{site.pool_id(journal_pool):016x}"
    directory = csi_replay.omap(site, journal_pool, "csi.volumes.default") or {}
    assert directory["csi.volume.pvc-topology"] == f"{image_pool_hex}/{object_uuid}".encode()
    # ceph-csi reads the per-volume object back from the image pool.
    per_volume = csi_replay.omap(site, ceph_pair.pool, f"csi.volume.{object_uuid}") or {}
    assert per_volume["csi.journalpool"] == journal_pool_hex.encode()
    assert per_volume["csi.volname"] == b"pvc-topology"


class CrashAfter:
    """site-b's real connection, cut off after `writes` writes: the process "dies" there, so
    neither the failing write nor any undo reaches Ceph."""

    def __init__(self, ceph: CephConnection, writes: int) -> None:
        self.ceph = ceph
        self.writes_left = writes

    def __getattr__(self, name: str) -> object:
        return getattr(self.ceph, name)

    def _spend(self) -> None:
        if self.writes_left == 0:
            raise ConnectionAbortedError("injected crash")
        self.writes_left -= 1

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
        self._spend()
        await self.ceph.omap_set(
            pool, namespace, oid, values, exclusive_create=exclusive_create, expect=expect
        )

    async def omap_remove(self, pool: str, namespace: str, oid: str, keys: Sequence[str]) -> None:
        self._spend()
        await self.ceph.omap_remove(pool, namespace, oid, keys)

    async def remove_object(self, pool: str, namespace: str, oid: str) -> None:
        self._spend()
        await self.ceph.remove_object(pool, namespace, oid)


@pytest.mark.parametrize("writes_before_crash", [0, 1])
async def test_a_crash_after_any_write_is_repaired_by_the_next_run(
    ceph_pair: SitePair,
    volumes: VolumeFactory,
    site_b: CephConnection,
    writes_before_crash: int,
) -> None:
    [volume] = volumes()
    pv = CSIVolume.from_pv(volume.pv())
    csi_replay.erase_journal(ceph_pair.site_b, volume.pool, volume)
    before = journal_snapshot(ceph_pair, volume.pool)

    crashing = CrashAfter(site_b, writes_before_crash)
    with pytest.raises(ConnectionAbortedError):
        await regenerate(crashing, pv, SITE_B)  # type: ignore[arg-type]
    await regenerate(site_b, pv, SITE_B)

    after = journal_snapshot(ceph_pair, volume.pool)
    volume_object = f"csi.volume.{volume.object_uuid}"
    assert set(after) - set(before) == {volume_object}
    assert after[volume_object] == expected_on_site_b(ceph_pair, volume)
    directory_before = before.get("csi.volumes.default") or {}
    directory_after = after["csi.volumes.default"] or {}
    assert {k: v for k, v in directory_after.items() if k not in directory_before} == {
        f"csi.volume.{volume.pv_name}": volume.object_uuid.encode(),
    }
    assert {k: after[k] for k in before if k not in (volume_object, "csi.volumes.default")} == {
        k: v for k, v in before.items() if k not in (volume_object, "csi.volumes.default")
    }
    assert (await regenerate(site_b, pv, SITE_B)).written == []


async def test_a_failed_directory_write_leaves_what_the_next_run_completes(
    ceph_pair: SitePair, volumes: VolumeFactory, site_b: CephConnection
) -> None:
    # A timeout does not say whether the write landed, and the object written before it may
    # already be another writer's journal: nothing is undone (tests/e2e/test_two_writers.py).
    [volume] = volumes()
    before = journal_snapshot(ceph_pair, volume.pool)

    class FailOnDirectoryWrite(CrashAfter):
        """The directory write fails (say, an OSD timeout) but the process lives on."""

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
            if oid == "csi.volumes.default":
                raise CephUnavailable("injected OSD timeout")
            await self.ceph.omap_set(
                pool, namespace, oid, values, exclusive_create=exclusive_create, expect=expect
            )

    with pytest.raises(CephUnavailable):
        await regenerate(
            FailOnDirectoryWrite(site_b, 99),  # type: ignore[arg-type]
            CSIVolume.from_pv(volume.pv()),
            SITE_B,
        )
    volume_object = f"csi.volume.{volume.object_uuid}"
    failed = journal_snapshot(ceph_pair, volume.pool)
    assert set(failed) - set(before) == {volume_object}
    assert failed[volume_object] == expected_on_site_b(ceph_pair, volume)

    done = await regenerate(site_b, CSIVolume.from_pv(volume.pv()), SITE_B)
    assert done.written == [f"csi.volume.{volume.pv_name}"]
    # Erased, the journal is as before: the runs wrote this volume's keys and nothing else.
    csi_replay.erase_journal(ceph_pair.site_b, volume.pool, volume)
    after = journal_snapshot(ceph_pair, volume.pool)
    assert {k: v for k, v in after.items() if v} == {k: v for k, v in before.items() if v}


async def test_unreachable_monitor_fails_within_the_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = silent.getsockname()[1]
        pool = ConnectionPool(timeout=2)
        began = time.monotonic()
        with pytest.raises(CephUnavailable, match=f"127.0.0.1:{port}.*within 2 s"):
            # A well-formed key no cluster knows (a malformed one fails before connecting).
            key = "AQCjtAxrXmteLhAAU+Qo+eqJWuNJPZz4uqi+SQ=="
            await pool.get(f"v2:127.0.0.1:{port}", Credentials("admin", key))
        elapsed = time.monotonic() - began
        await pool.close()
    assert elapsed < 2 + 3, f"took {elapsed:.1f} s"
    assert len(pool) == 0


def rbd_mirror_reconciler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, check=False
    )


def test_cli_regenerate_and_show(
    ceph_pair: SitePair, volumes: VolumeFactory, tmp_path: Path
) -> None:
    [volume] = volumes()
    pv_file = tmp_path / "pv.yaml"
    pv_file.write_text(json.dumps(volume.pv()))
    connection = [
        "--monitors",
        ceph_pair.site_b.monitors,
        "--user",
        CSI_USER,
        "--key-file",
        str(ceph_pair.site_b.dir / f"{CSI_USER}.key"),
    ]
    regenerate_cmd = ["journal", "regenerate", str(pv_file), "--cluster-id", SITE_B_ID, *connection]

    dry = rbd_mirror_reconciler(*regenerate_cmd, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["dryRun"] is True and planned["written"]
    assert f"csi.volume.{volume.object_uuid}" not in csi_replay.objects(
        ceph_pair.site_b, volume.pool, "csi.volume."
    )

    real = rbd_mirror_reconciler(*regenerate_cmd)
    assert real.returncode == 0, real.stderr
    result = json.loads(real.stdout)
    assert result["oldHandle"] == volume.handle
    assert result["imageName"] == volume.image_name
    assert result["written"] == planned["written"]
    key = (ceph_pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    assert key not in real.stdout + real.stderr

    shown = rbd_mirror_reconciler("journal", "show", result["newHandle"], *connection)
    assert shown.returncode == 0, shown.stderr
    journal = json.loads(shown.stdout)
    assert journal["volumeObject"]["omap"]["csi.volname"] == volume.pv_name
    assert journal["directory"]["value"] == volume.object_uuid

    bad = rbd_mirror_reconciler("journal", "show", "0001-00013-site1-storage", *connection)
    assert bad.returncode == 2 and bad.stdout == ""


async def test_concurrent_callers_share_one_connection(ceph_pair: SitePair) -> None:
    key = (ceph_pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    pool = ConnectionPool(timeout=5)
    try:
        connections = await asyncio.gather(
            *(pool.get(ceph_pair.site_b.monitors, Credentials(CSI_USER, key)) for _ in range(20))
        )
        assert len({id(c) for c in connections}) == 1
        assert len(pool) == 1
        ids = await asyncio.gather(*(c.pool_id(ceph_pair.pool) for c in connections))
        assert set(ids) == {ceph_pair.site_b.pool_id(ceph_pair.pool)}
        assert key not in repr(connections[0])
    finally:
        await pool.close()
