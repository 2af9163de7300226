"""The real, unmodified ceph-csi v3.12.2 driving site-a over CSI gRPC, as the external-provisioner
does: the journal, handles and images it writes are the ground truth the project must match."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.sandbox.ceph import CSI_USER, CephCluster
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.csidriver import (
    DRIVER_NAME,
    GIB,
    CephCSIDriver,
    CSIError,
    CSISecrets,
    config_json,
    start_journal_regenerator,
)
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.process import pid_alive
from reconciler.sandbox.site import apply, kubectl
from tests.support.csi_replay import objects, omap
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

CLUSTER_ID = "site-a"
OWNER = "apps"


@pytest.fixture(scope="session")
def cephcsi_driver(
    cephcsi_binary: Path, ceph_pair: SitePair, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CephCSIDriver]:
    """The real RBD controller server, configured with site-a only."""
    driver = CephCSIDriver(cephcsi_binary, tmp_path_factory.mktemp("cephcsi"))
    driver.write_config(config_json({CLUSTER_ID: ceph_pair.site_a.monitors}))
    driver.write_cluster_mapping("[]")
    with driver:
        pid = driver.pid
        yield driver
    assert not pid_alive(pid), f"cephcsi (PID {pid}) still running after stop"


@pytest.fixture(scope="session")
def secrets(ceph_pair: SitePair) -> CSISecrets:
    """What the external-provisioner passes from the StorageClass' provisioner secret."""
    return CSISecrets(CSI_USER, ceph_pair.site_a.user_key(CSI_USER))


@pytest.fixture
def cleanup(cephcsi_driver: CephCSIDriver, secrets: CSISecrets) -> Iterator[list[str]]:
    """Volume handles a test registers are deleted after it, even when it fails half-way."""
    handles: list[str] = []
    yield handles
    for handle in handles:
        cephcsi_driver.client.delete_volume(handle, secrets)


def storage_class_parameters(pool: str, pv_name: str) -> dict[str, str]:
    """A ceph-csi StorageClass' parameters plus the provisioner's --extra-create-metadata."""
    return {
        "clusterID": CLUSTER_ID,
        "pool": pool,
        "imageFeatures": "layering",
        "csi.storage.k8s.io/fstype": "ext4",
        "csi.storage.k8s.io/pv/name": pv_name,
        "csi.storage.k8s.io/pvc/name": f"claim-{pv_name}",
        "csi.storage.k8s.io/pvc/namespace": OWNER,
    }


def decode_handle(handle: str) -> tuple[str, int, str]:
    """(clusterID, pool ID, object UUID) as ceph-csi-formats.md describes version 1."""
    assert handle[:5] == "0001-", handle
    length = int(handle[5:9], 16)
    assert handle[9] == "-", handle
    cluster_id = handle[10 : 10 + length]
    rest = handle[10 + length :]
    assert rest[0] == "-" and rest[17] == "-", handle
    object_uuid = rest[18:]
    assert str(uuid.UUID(object_uuid)) == object_uuid, handle
    return cluster_id, int(rest[1:17], 16), object_uuid


def image_info(site: CephCluster, pool: str, image: str) -> dict[str, object]:
    info: dict[str, object] = json.loads(site.rbd("info", f"{pool}/{image}", "--format", "json"))
    return info


def images(site: CephCluster, pool: str) -> set[str]:
    return set(json.loads(site.rbd("ls", pool, "--format", "json")))


def new_pv_name() -> str:
    return f"pvc-{uuid.uuid4()}"


def test_driver_identity_and_no_secret_in_argv(
    cephcsi_driver: CephCSIDriver, secrets: CSISecrets
) -> None:
    name, version = cephcsi_driver.client.plugin_info()
    assert (name, version) == (DRIVER_NAME, "v3.12.2")
    # The PID we hold is cephcsi itself (the namespace wrapper exec'ed), argv carries no key.
    cmdline = Path(f"/proc/{cephcsi_driver.pid}/cmdline").read_bytes()
    assert Path(cmdline.split(b"\0")[0].decode()).name == "cephcsi"
    key_in_argv = secrets["userKey"].encode() in cmdline
    assert not key_in_argv, "the CSI user's key shows in cephcsi's argv"


def test_create_volume_writes_journal_and_is_idempotent(
    cephcsi_driver: CephCSIDriver,
    ceph_pair: SitePair,
    secrets: CSISecrets,
    cleanup: list[str],
) -> None:
    site, pool = ceph_pair.site_a, ceph_pair.pool
    pv_name = new_pv_name()
    client = cephcsi_driver.client
    handle, context = client.create_volume(
        pv_name, GIB, storage_class_parameters(pool, pv_name), secrets
    )
    cleanup.append(handle)

    cluster_id, pool_id, object_uuid = decode_handle(handle)
    assert cluster_id == CLUSTER_ID
    assert pool_id == site.pool_id(pool)
    assert handle.startswith(f"0001-0006-site-a-{pool_id:016x}-")
    image = f"csi-vol-{object_uuid}"
    assert context == {
        "clusterID": CLUSTER_ID,
        "pool": pool,
        "journalPool": pool,
        "imageName": image,
        "imageFeatures": "layering",
    }

    directory = omap(site, pool, "csi.volumes.default")
    assert directory is not None
    assert directory[f"csi.volume.{pv_name}"] == object_uuid.encode()
    info = image_info(site, pool, image)
    assert info["size"] == GIB
    assert omap(site, pool, f"csi.volume.{object_uuid}") == {
        "csi.volname": pv_name.encode(),
        "csi.imagename": image.encode(),
        "csi.imageid": str(info["id"]).encode(),
        "csi.volume.owner": OWNER.encode(),
    }
    metadata = json.loads(site.rbd("image-meta", "list", f"{pool}/{image}", "--format", "json"))
    assert metadata == {
        "csi.storage.k8s.io/pv/name": pv_name,
        "csi.storage.k8s.io/pvc/name": f"claim-{pv_name}",
        "csi.storage.k8s.io/pvc/namespace": OWNER,
    }

    again, _ = client.create_volume(pv_name, GIB, storage_class_parameters(pool, pv_name), secrets)
    assert again == handle
    assert {i for i in images(site, pool) if i.endswith(object_uuid)} == {image}


def test_expand_snapshot_and_delete(
    cephcsi_driver: CephCSIDriver,
    ceph_pair: SitePair,
    secrets: CSISecrets,
    cleanup: list[str],
) -> None:
    site, pool = ceph_pair.site_a, ceph_pair.pool
    pv_name = new_pv_name()
    client = cephcsi_driver.client
    handle, _ = client.create_volume(pv_name, GIB, storage_class_parameters(pool, pv_name), secrets)
    cleanup.append(handle)
    object_uuid = decode_handle(handle)[2]
    image = f"csi-vol-{object_uuid}"

    assert client.expand_volume(handle, 2 * GIB, secrets) == 2 * GIB
    assert image_info(site, pool, image)["size"] == 2 * GIB

    snap_name = f"snapshot-{uuid.uuid4()}"
    snap_id = client.create_snapshot(
        handle, snap_name, {"clusterID": CLUSTER_ID, "pool": pool}, secrets
    )
    snap_cluster, snap_pool, snap_uuid = decode_handle(snap_id)
    assert (snap_cluster, snap_pool) == (CLUSTER_ID, site.pool_id(pool))
    snaps = omap(site, pool, "csi.snaps.default")
    assert snaps is not None and snaps[f"csi.snap.{snap_name}"] == snap_uuid.encode()
    snap_image = f"csi-snap-{snap_uuid}"
    assert omap(site, pool, f"csi.snap.{snap_uuid}") == {
        "csi.snapname": snap_name.encode(),
        "csi.imagename": snap_image.encode(),
        "csi.source": image.encode(),
        "csi.imageid": str(image_info(site, pool, snap_image)["id"]).encode(),
        # Taken from the source volume's journal: the snapshot request names no namespace.
        "csi.volume.owner": OWNER.encode(),
    }
    assert (
        client.create_snapshot(handle, snap_name, {"clusterID": CLUSTER_ID, "pool": pool}, secrets)
        == snap_id
    )

    client.delete_snapshot(snap_id, secrets)
    assert snap_image not in images(site, pool)
    assert f"csi.snap.{snap_name}" not in (omap(site, pool, "csi.snaps.default") or {})
    assert f"csi.snap.{snap_uuid}" not in objects(site, pool, "csi.snap.")

    cephcsi_driver.client.delete_volume_as_provisioner(handle, secrets)
    assert image not in images(site, pool)
    assert f"csi.volume.{pv_name}" not in (omap(site, pool, "csi.volumes.default") or {})
    assert f"csi.volume.{object_uuid}" not in objects(site, pool, "csi.volume.")
    # DeleteVolume is idempotent, as the CSI spec requires.
    client.delete_volume(handle, secrets)


def test_errors_carry_grpc_status(
    cephcsi_driver: CephCSIDriver, ceph_pair: SitePair, secrets: CSISecrets
) -> None:
    client, pool = cephcsi_driver.client, ceph_pair.pool
    missing = f"0001-0006-site-a-{ceph_pair.site_a.pool_id(pool):016x}-{uuid.uuid4()}"
    with pytest.raises(CSIError) as err:
        client.expand_volume(missing, 2 * GIB, secrets)
    assert err.value.code == "NOT_FOUND"

    unknown = storage_class_parameters(pool, new_pv_name()) | {"clusterID": "nowhere"}
    with pytest.raises(CSIError) as err:
        client.create_volume(unknown["csi.storage.k8s.io/pv/name"], GIB, unknown, secrets)
    # A StorageClass naming an unknown clusterID is the caller's mistake...
    assert (err.value.code, "nowhere" in err.value.details) == ("INVALID_ARGUMENT", True), err.value

    # ...but a handle naming one is an internal error, not "not found" (see docs on failover).
    stranger = f"0001-0007-nowhere-{ceph_pair.site_a.pool_id(pool):016x}-{uuid.uuid4()}"
    with pytest.raises(CSIError) as err:
        client.expand_volume(stranger, 2 * GIB, secrets)
    assert (err.value.code, "nowhere" in err.value.details) == ("INTERNAL", True), err.value

    # ceph-csi strips secrets from what it logs (it logs every request at --v=5).
    key_in_log = secrets["userKey"] in cephcsi_driver.log_text()
    assert not key_in_log, f"the CSI user's key shows in {cephcsi_driver.log_file}"


def test_config_is_reread_per_request(
    cephcsi_driver: CephCSIDriver, ceph_pair: SitePair, secrets: CSISecrets
) -> None:
    """A new clusterID written to config.json applies to the next call, without a restart."""
    site, pool = ceph_pair.site_a, ceph_pair.pool
    pv_name = new_pv_name()
    params = storage_class_parameters(pool, pv_name) | {"clusterID": "site-a-alias"}
    original = config_json({CLUSTER_ID: site.monitors})
    cephcsi_driver.write_config(
        config_json({CLUSTER_ID: site.monitors, "site-a-alias": site.monitors})
    )
    handle = ""
    try:
        handle, _ = cephcsi_driver.client.create_volume(pv_name, GIB, params, secrets)
        assert decode_handle(handle)[:2] == ("site-a-alias", site.pool_id(pool))
    finally:
        if handle:
            cephcsi_driver.client.delete_volume(handle, secrets)
        cephcsi_driver.write_config(original)
    # Back to the original config: that clusterID is unknown again, on the very next call.
    with pytest.raises(CSIError) as err:
        cephcsi_driver.client.create_volume(pv_name, GIB, params, secrets)
    assert err.value.code == "INVALID_ARGUMENT"


def test_journal_regenerator_recreates_an_erased_journal(
    cephcsi_driver: CephCSIDriver,
    ceph_pair: SitePair,
    kube: KubeCluster,
    *,
    secrets: CSISecrets,
    cleanup: list[str],
    tmp_path: Path,
) -> None:
    """ceph-csi's own PV controller (the benchmark's baseline) rewrites a journal from a PV."""
    site, pool = ceph_pair.site_a, ceph_pair.pool
    pv_name = new_pv_name()
    handle, context = cephcsi_driver.client.create_volume(
        pv_name, GIB, storage_class_parameters(pool, pv_name), secrets
    )
    cleanup.append(handle)
    object_uuid = decode_handle(handle)[2]
    expected = omap(site, pool, f"csi.volume.{object_uuid}")
    # Erase this volume's journal as a failover leaves it (the image stays).
    site.rados(pool, "rmomapkey", "csi.volumes.default", f"csi.volume.{pv_name}")
    site.rados(pool, "rm", f"csi.volume.{object_uuid}")

    namespace = f"ceph-csi-{uuid.uuid4().hex[:8]}"
    kubectl(kube, "create", "namespace", namespace)
    result = apply(
        kube,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "csi-rbd-secret", "namespace": namespace},
            "stringData": dict(secrets),
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": OWNER, "name": f"claim-{pv_name}"},
                "csi": {
                    "driver": DRIVER_NAME,
                    "volumeHandle": handle,
                    "fsType": "ext4",
                    "volumeAttributes": context,
                    "controllerExpandSecretRef": {"name": "csi-rbd-secret", "namespace": namespace},
                },
            },
        },
    )
    assert result.returncode == 0, result.stderr
    regenerator = start_journal_regenerator(
        cephcsi_driver.binary,
        tmp_path / "regenerator",
        kubeconfig=kube.kubeconfig,
        namespace=namespace,
        config=config_json({CLUSTER_ID: site.monitors}),
    )
    pid = regenerator.pid
    try:
        wait_for(
            lambda: omap(site, pool, f"csi.volume.{object_uuid}") == expected,
            60,
            "ceph-csi's controller to rewrite the per-volume journal object",
        )
        directory = omap(site, pool, "csi.volumes.default") or {}
        assert directory[f"csi.volume.{pv_name}"] == object_uuid.encode()
        lease = json.loads(
            kubectl(
                kube, "-n", namespace, "get", "lease", f"{DRIVER_NAME}-{namespace}", "-o", "json"
            ).stdout
        )
        assert lease["spec"]["holderIdentity"]
        key_in_log = secrets["userKey"] in regenerator.log_text()
        assert not key_in_log, f"the CSI user's key shows in {regenerator.log_file}"
    finally:
        regenerator.stop()
        kubectl(kube, "delete", "pv", pv_name, "--wait=false")
        kubectl(kube, "delete", "namespace", namespace, "--wait=false")
    assert not pid_alive(pid)
