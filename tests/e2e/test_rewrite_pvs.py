"""`rewrite-pvs` end to end: PVs made by the real ceph-csi on site-a, failed over to site-b,
rewritten with their site-b handles, applied on site-b, where the controller leaves them alone
(no VolumeHandleMapping) and the real ceph-csi, configured for site-b only (no entry for
site-a, no cluster-mapping.json), expands them by the rewritten handle.

Two ways to the new handles: from the VolumeHandleMappings the controller made for the old PVs,
and computed from the ClusterIDMapping and site-b's cluster with the journal written by
`--regenerate-journal` (no controller involved).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.handle import VolumeHandle
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.csidriver import GIB, CephCSIDriver, CSISecrets, config_json
from reconciler.sandbox.pair import SitePair
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

NAMESPACE = "rewrite-pvs"
SECRET = "csi-rbd-secret"
OWNER = "apps"
MAPPING = "rewrite-site-a-to-b"
API = "/apis/rbdmirror.csi.ceph.io/v1alpha1"


@dataclass
class World:
    pair: SitePair
    kube: KubeCluster
    driver: CephCSIDriver
    """The real ceph-csi on site-b, fed site-b's entry alone."""
    secrets: CSISecrets
    controller: site.ControllerProcess
    site_a_driver: CephCSIDriver
    secrets_a: CSISecrets
    work: Path

    def provision(self, count: int) -> list[dict[str, Any]]:
        """`count` volumes by real CreateVolume on site-a, failed over to site-b; their static
        PVs as a backup of site-a's API server holds them."""
        pool = self.pair.pool
        pvs = []
        for _ in range(count):
            name = f"pvc-{uuid.uuid4()}"
            parameters = {"clusterID": "site-a", "pool": pool, "imageFeatures": "layering"}
            handle, context = self.site_a_driver.client.create_volume(
                name, GIB, parameters, self.secrets_a
            )
            pvs.append(static_pv(name, handle, context))
        self.pair.fail_over([pv["spec"]["csi"]["volumeAttributes"]["imageName"] for pv in pvs])
        return pvs

    def rewrite(self, backup: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "rewrite-pvs",
                str(backup),
                "--local-cluster-id",
                "site-b",
                "--kubeconfig",
                str(self.kube.kubeconfig),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ceph_flags(self) -> list[str]:
        return [
            "--monitors",
            self.pair.site_b.monitors,
            "--user",
            CSI_USER,
            "--key-file",
            str(self.pair.site_b.dir / f"{CSI_USER}.key"),
        ]

    def mapping(self, name: str) -> dict[str, Any] | None:
        return self.kube.get(f"{API}/volumehandlemappings/{name}")

    def image_size(self, image: str) -> int:
        info = self.pair.site_b.rbd("info", f"{self.pair.pool}/{image}", "--format", "json")
        return int(json.loads(info)["size"])


def static_pv(name: str, handle: str, context: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"name": f"claim-{name}", "namespace": OWNER},
            "csi": {
                "driver": "rbd.csi.ceph.com",
                "fsType": "ext4",
                "volumeHandle": handle,
                "volumeAttributes": dict(context),
                "controllerExpandSecretRef": {"name": SECRET, "namespace": NAMESPACE},
                "nodeStageSecretRef": {"name": SECRET, "namespace": NAMESPACE},
            },
        },
    }


@pytest.fixture(scope="module")
def world(
    *,
    ceph_pair: SitePair,
    kube: KubeCluster,
    crds: None,
    checkout: Checkout,
    cephcsi_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    work = tmp_path_factory.mktemp("rewrite-pvs")
    overlay = site.install_rbac(kube.kubeconfig, checkout, NAMESPACE, work)
    key = ceph_pair.site_b.user_key(CSI_USER)
    site.apply(
        kube.kubeconfig,
        site.ceph_csi_secret(SECRET, NAMESPACE, CSI_USER, key),
        site.ceph_csi_config(NAMESPACE, {"site-b": ceph_pair.site_b.monitors}),
        site.cluster_id_mapping(MAPPING, "site-a", "site-b", [{"name": ceph_pair.pool}]),
    )
    controller = site.ControllerProcess(
        kube.service_account_kubeconfig(NAMESPACE, site.SERVICE_ACCOUNT, create=False),
        work,
        "site-b",
        NAMESPACE,
    )
    site_a_driver = CephCSIDriver(cephcsi_binary, work / "site-a")
    site_a_driver.write_config(config_json({"site-a": ceph_pair.site_a.monitors}))
    driver = CephCSIDriver(cephcsi_binary, work / "site-b")
    # site-b's ceph-csi knows site-b alone: no alias entry for site-a, no cluster-mapping.json.
    driver.write_config(config_json({"site-b": ceph_pair.site_b.monitors}))
    controller.start()
    try:
        with site_a_driver, driver:
            yield World(
                ceph_pair,
                kube,
                driver,
                CSISecrets(CSI_USER, key),
                controller,
                site_a_driver,
                CSISecrets(CSI_USER, ceph_pair.site_a.user_key(CSI_USER)),
                work,
            )
    finally:
        controller.stop()
        site.kubectl(kube, "delete", "pv", "-l", f"test={NAMESPACE}", "--wait=false")
        site.kubectl(kube, "delete", "clusteridmapping", MAPPING, "--ignore-not-found")
        site.kubectl(kube, "delete", "-k", str(overlay), "--ignore-not-found")
        site.kubectl(kube, "delete", "namespace", NAMESPACE, "--wait=false")


def labelled(pvs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The PVs with a label the module's teardown deletes them by."""
    for pv in pvs:
        pv["metadata"].setdefault("labels", {})["test"] = NAMESPACE
    return pvs


def assert_left_alone_and_usable(world: World, rewritten: list[dict[str, Any]]) -> None:
    """Applied on site-b: no VolumeHandleMapping appears (the controller skips local handles),
    and site-b's ceph-csi expands each by its rewritten handle."""
    site.apply(world.kube.kubeconfig, *rewritten)
    names = [pv["metadata"]["name"] for pv in rewritten]
    wait_for(
        lambda: all(world.mapping(name) is None for name in names) or None,
        60,
        "no VolumeHandleMapping for the rewritten PVs",
    )
    time.sleep(5)  # and none appears once the controller has seen them
    assert [name for name in names if world.mapping(name) is not None] == []
    for pv in rewritten:
        csi = pv["spec"]["csi"]
        handle = VolumeHandle.decode(csi["volumeHandle"])
        assert handle.cluster_id == "site-b"
        assert handle.pool_id == world.pair.site_b.pool_id(world.pair.pool)
        assert csi["volumeAttributes"]["clusterID"] == "site-b"
        grown = world.driver.client.expand_volume(csi["volumeHandle"], 2 * GIB, world.secrets)
        assert grown == 2 * GIB
        assert world.image_size(csi["volumeAttributes"]["imageName"]) == 2 * GIB


def test_from_the_controllers_mappings(world: World) -> None:
    backup = labelled(world.provision(2))
    backup_file = world.work / "backup-a.yaml"
    backup_file.write_text(yaml.safe_dump_all(backup))
    site.apply(world.kube.kubeconfig, *backup)  # the old PVs, for the controller to map

    def ready() -> bool | None:
        found = [world.mapping(pv["metadata"]["name"]) for pv in backup]
        return (
            all(
                m is not None
                and any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in m["status"]["conditions"]
                )
                for m in found
            )
            or None
        )

    wait_for(ready, 120, "the controller's mappings Ready")

    dry = world.rewrite(backup_file)
    assert dry.returncode == 0, dry.stderr
    assert f"-    volumeHandle: {backup[0]['spec']['csi']['volumeHandle']}" in dry.stdout
    assert "rewrite-pvs: 2 rewritten, 0 unchanged, 0 not mapped" in dry.stderr

    out = world.work / "rewritten-a.yaml"
    done = world.rewrite(backup_file, "--from", "handle-mappings", "-o", str(out))
    assert done.returncode == 0, done.stderr
    rewritten = list(yaml.safe_load_all(out.read_text()))
    for pv in rewritten:
        assert f"Ready VolumeHandleMapping {pv['metadata']['name']}" in done.stderr

    site.kubectl(world.kube, "delete", "pv", *(pv["metadata"]["name"] for pv in backup))
    assert_left_alone_and_usable(world, rewritten)


def test_computed_with_the_journal_written_and_the_unmappable_left_out(world: World) -> None:
    backup = labelled(world.provision(2))
    stray = static_pv(
        f"pvc-{uuid.uuid4()}",
        VolumeHandle("site-c", 4, str(uuid.uuid4())).encode(),
        {
            "clusterID": "site-c",
            "pool": world.pair.pool,
        },
    )
    backup_file = world.work / "backup-b.yaml"
    backup_file.write_text(yaml.safe_dump_all([*backup, stray]))
    out_dir = world.work / "rewritten-b"

    planned = world.rewrite(backup_file, "--from", "compute", *world.ceph_flags())
    assert planned.returncode == 1
    assert "this site's journal does not have the volume yet" in planned.stderr

    done = world.rewrite(
        backup_file,
        "--from",
        "compute",
        "--regenerate-journal",
        "--write",
        str(out_dir),
        *world.ceph_flags(),
    )
    assert done.returncode == 1, "the stray PV is not mapped"
    assert (
        f"{stray['metadata']['name']}: NOT MAPPED: no ClusterIDMapping maps clusterID 'site-c' "
        "to this site's 'site-b'"
    ) in done.stderr
    assert "rewrite-pvs: 2 rewritten, 0 unchanged, 1 not mapped" in done.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        f"{pv['metadata']['name']}.yaml" for pv in backup
    )
    assert "journal written" in done.stderr

    # Again: the journal is in place now, nothing more to write.
    again = world.rewrite(backup_file, "--from", "compute", *world.ceph_flags())
    assert again.stderr.count("journal in place") == 2

    rewritten = [
        yaml.safe_load((out_dir / f"{pv['metadata']['name']}.yaml").read_text()) for pv in backup
    ]
    assert_left_alone_and_usable(world, rewritten)
