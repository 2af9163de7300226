"""After a failover, requests with OLD handles work in the real, unmodified ceph-csi v3.12.2 with
nothing but the configuration the controller manages.

site-a's volumes are made by real CreateVolume; their images are mirrored to site-b and promoted
there; the static PVs (old handles) go to a real API server; the controller (as its
ServiceAccount, `--manage-csi-config`) regenerates the journals and writes ceph-csi's two files.
A real ceph-csi on site-b, fed exactly those files, is then asked ControllerExpandVolume,
CreateSnapshot and DeleteVolume with the old handles (and the new ones), in the layouts of
ceph-csi's Helm chart and of Rook. The Python resolver must name the same image ceph-csi acted on.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.csi import SyncResolver
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.csidriver import (
    GIB,
    CephCSIDriver,
    CSIError,
    CSISecrets,
    config_json,
    start_journal_regenerator,
)
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.site import kubectl
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

SITE_A_ID, SITE_B_ID = "site-a", "site-b"
NAMESPACE = "csi-failover"
SECRET = "csi-rbd-secret"
OWNER = "apps"
MAPPING = "site-a-to-b-real-csi"
API = "/apis/rbdmirror.csi.ceph.io/v1alpha1"
CONVERGE = 120.0
ROOK_CONFIG = ("rook-ceph-csi-config", "csi-cluster-config-json")
ROOK_MAPPING = ("rook-ceph-csi-mapping-config", "csi-mapping-config-json")


@dataclass(frozen=True)
class Volume:
    pv_name: str
    old_handle: str
    context: dict[str, str]

    @property
    def image(self) -> str:
        return self.context["imageName"]

    def pv(self) -> dict[str, Any]:
        """The static PV an admin re-applies on site-b: what the external-provisioner made of
        ceph-csi's answer, with its old handle."""
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": self.pv_name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"},
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"name": f"claim-{self.pv_name}", "namespace": OWNER},
                "csi": {
                    "driver": "rbd.csi.ceph.com",
                    "fsType": "ext4",
                    "volumeHandle": self.old_handle,
                    "volumeAttributes": {
                        **self.context,
                        "csi.storage.k8s.io/pv/name": self.pv_name,
                        "csi.storage.k8s.io/pvc/name": f"claim-{self.pv_name}",
                        "csi.storage.k8s.io/pvc/namespace": OWNER,
                    },
                    "controllerExpandSecretRef": {"name": SECRET, "namespace": NAMESPACE},
                    "nodeStageSecretRef": {"name": SECRET, "namespace": NAMESPACE},
                },
            },
        }


@dataclass
class Failover:
    pair: SitePair
    kube: KubeCluster
    volumes: list[Volume]
    driver: CephCSIDriver
    """The real ceph-csi on site-b, started with no configuration of ours."""
    secrets: CSISecrets
    controller: site.ControllerProcess
    work: Path

    def get(self, path: str) -> dict[str, Any]:
        """The object at `path`; {} while it does not exist."""
        return self.kube.get(path) or {}

    def mapping(self, pv_name: str) -> dict[str, Any]:
        return self.get(f"{API}/volumehandlemappings/{pv_name}")

    def config_map_key(self, name: str, key: str) -> str | None:
        found = self.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{name}")
        value = (found.get("data") or {}).get(key)
        return None if value is None else str(value)

    def feed_driver(self, config: tuple[str, str], cluster_mapping: tuple[str, str]) -> None:
        """Give site-b's ceph-csi exactly the files the controller manages, as a kubelet
        projects the ConfigMap keys into /etc/ceph-csi-config/."""
        self.driver.write_config(self.config_map_key(*config) or "[]")
        self.driver.write_cluster_mapping(self.config_map_key(*cluster_mapping) or "[]")

    def image_size(self, image: str) -> int:
        info = json.loads(
            self.pair.site_b.rbd("info", f"{self.pair.pool}/{image}", "--format", "json")
        )
        return int(info["size"])

    def images(self) -> set[str]:
        return set(json.loads(self.pair.site_b.rbd("ls", self.pair.pool, "--format", "json")))


def storage_class(pool: str, pv_name: str, cluster_id: str) -> dict[str, str]:
    return {
        "clusterID": cluster_id,
        "pool": pool,
        "imageFeatures": "layering",
        "csi.storage.k8s.io/fstype": "ext4",
        "csi.storage.k8s.io/pv/name": pv_name,
        "csi.storage.k8s.io/pvc/name": f"claim-{pv_name}",
        "csi.storage.k8s.io/pvc/namespace": OWNER,
    }


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


@pytest.fixture(scope="module")
def failover(
    *,
    ceph_pair: SitePair,
    kube: KubeCluster,
    crds: None,
    checkout: Checkout,
    cephcsi_binary: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Failover]:
    work = tmp_path_factory.mktemp("cephcsi-failover")
    pool = ceph_pair.pool
    volumes = []
    # Provisioning on site-a: the real CreateVolume, site-a's config only.
    with CephCSIDriver(cephcsi_binary, work / "site-a") as site_a_driver:
        site_a_driver.write_config(config_json({SITE_A_ID: ceph_pair.site_a.monitors}))
        secrets_a = CSISecrets(CSI_USER, ceph_pair.site_a.user_key(CSI_USER))
        for _ in range(4):
            pv_name = f"pvc-{uuid.uuid4()}"
            handle, context = site_a_driver.client.create_volume(
                pv_name, GIB, storage_class(pool, pv_name, SITE_A_ID), secrets_a
            )
            volumes.append(Volume(pv_name, handle, context))
    ceph_pair.fail_over([v.image for v in volumes])

    overlay = site.install_rbac(kube.kubeconfig, checkout, NAMESPACE, work)
    key = ceph_pair.site_b.user_key(CSI_USER)
    site.apply(
        kube.kubeconfig,
        site.ceph_csi_secret(SECRET, NAMESPACE, CSI_USER, key),
        site.ceph_csi_config(NAMESPACE, {SITE_B_ID: ceph_pair.site_b.monitors}),
        site.cluster_id_mapping(MAPPING, SITE_A_ID, SITE_B_ID, [{"name": pool}]),
        *(v.pv() for v in volumes),
    )
    controller = site.elected_controller(
        kube.service_account_kubeconfig(NAMESPACE, site.SERVICE_ACCOUNT, create=False),
        work,
        SITE_B_ID,
        NAMESPACE,
        ceph_timeout=None,
    )
    driver = CephCSIDriver(cephcsi_binary, work / "site-b")
    controller.start()
    try:
        with driver:
            yield Failover(
                ceph_pair, kube, volumes, driver, CSISecrets(CSI_USER, key), controller, work
            )
    finally:
        controller.stop()
        kubectl(kube, "delete", "pv", *(v.pv_name for v in volumes), "--wait=false")
        kubectl(kube, "delete", "clusteridmapping", MAPPING, "--ignore-not-found")
        kubectl(kube, "delete", "-k", str(overlay), "--ignore-not-found")
        kubectl(kube, "delete", "namespace", NAMESPACE, "--wait=false")


@pytest.fixture(scope="module")
def remapped(failover: Failover) -> dict[str, str]:
    """Old handle -> new handle, once every mapping is Ready and ceph-csi's files are complete."""

    def ready() -> dict[str, str] | None:
        found = {}
        for volume in failover.volumes:
            mapping = failover.mapping(volume.pv_name)
            ready = conditions_of(mapping).get("Ready") or {}
            if ready.get("status") != "True":
                return None
            found[volume.old_handle] = str(mapping["status"]["newVolumeHandle"])
        return found

    try:
        handles = wait_for(ready, CONVERGE, "every VolumeHandleMapping Ready")
        cidm = failover.kube.request("GET", f"{API}/clusteridmappings/{MAPPING}")
        wait_for(
            lambda: (
                conditions_of(failover.kube.request("GET", f"{API}/clusteridmappings/{MAPPING}"))
                .get("CephCSIConfigured", {})
                .get("status")
                == "True"
            ),
            CONVERGE,
            f"CephCSIConfigured on {MAPPING} (status now {cidm.get('status')})",
        )
    except pytest.fail.Exception:
        print(failover.controller.log())
        raise
    return handles


HELM = (("ceph-csi-config", "config.json"), ("ceph-csi-config", "cluster-mapping.json"))


def test_without_an_entry_for_the_old_cluster_id_ceph_csi_rejects_old_handles(
    failover: Failover, remapped: dict[str, str]
) -> None:
    """The control: the journal and cluster-mapping.json alone are not enough (what users of
    ceph-csi issue 4493 ran into), so the next test proves what the config.json entry adds."""
    volume = failover.volumes[0]
    failover.driver.write_config(config_json({SITE_B_ID: failover.pair.site_b.monitors}))
    failover.driver.write_cluster_mapping(failover.config_map_key(*HELM[1]) or "[]")
    with pytest.raises(CSIError) as rejected:
        failover.driver.client.expand_volume(volume.old_handle, 2 * GIB, failover.secrets)
    assert 'missing configuration for cluster ID "site-a"' in rejected.value.details


def test_old_handles_work_with_the_helm_layout_the_controller_manages(
    failover: Failover, remapped: dict[str, str]
) -> None:
    grown, snapped, deleted = failover.volumes[:3]
    failover.feed_driver(*HELM)
    client, secrets = failover.driver.client, failover.secrets

    assert client.expand_volume(grown.old_handle, 2 * GIB, secrets) == 2 * GIB
    assert failover.image_size(grown.image) == 2 * GIB

    # The VolumeSnapshotClass on site-b names site-b's clusterID; the source is the old handle.
    snapshot = client.create_snapshot(
        snapped.old_handle, f"snap-{uuid.uuid4()}", {"clusterID": SITE_B_ID}, secrets
    )
    # Made on site-b, in the image pool's ID there.
    pool_b = failover.pair.site_b.pool_id(failover.pair.pool)
    assert snapshot.startswith(f"0001-0006-{SITE_B_ID}-{pool_b:016x}-"), snapshot
    client.delete_snapshot(snapshot, secrets)

    assert deleted.image in failover.images()
    failover.driver.client.delete_volume_as_provisioner(deleted.old_handle, secrets)
    assert deleted.image not in failover.images()
    directory = failover.pair.site_b.rados(
        failover.pair.pool, "listomapkeys", "csi.volumes.default"
    )
    assert f"csi.volume.{deleted.pv_name}" not in directory.split()

    # The new handle works as well, and CreateVolume of the same PV returns it (idempotent).
    new = remapped[grown.old_handle]
    assert client.expand_volume(new, 3 * GIB, secrets) == 3 * GIB
    assert failover.image_size(grown.image) == 3 * GIB
    again, _ = client.create_volume(
        grown.pv_name, GIB, storage_class(failover.pair.pool, grown.pv_name, SITE_B_ID), secrets
    )
    assert again == new


def test_the_resolver_names_the_image_ceph_csi_acted_on(
    failover: Failover, remapped: dict[str, str]
) -> None:
    grown = failover.volumes[0]
    with SyncResolver(failover.kube.kubeconfig, csi_config_namespace=NAMESPACE) as resolver:
        resolved = resolver.resolve(grown.old_handle, sync_timeout=30)
    assert resolved.volume_handle == remapped[grown.old_handle]
    # ceph-csi grew the image csi-vol-<uuid of the handle>: the resolver's handle names it.
    assert f"csi-vol-{resolved.volume_handle[-36:]}" == grown.image
    assert failover.image_size(grown.image) == 3 * GIB


def test_old_handles_work_with_the_rook_layout(
    failover: Failover, remapped: dict[str, str]
) -> None:
    """Rook keeps the files in two ConfigMaps under its own keys; the controller, told the layout,
    completes them there."""
    failover.controller.stop()
    local = [{"clusterID": SITE_B_ID, "monitors": failover.pair.site_b.monitors.split(",")}]
    site.apply(
        failover.kube.kubeconfig,
        config_map(ROOK_CONFIG[0], {ROOK_CONFIG[1]: json.dumps(local)}),
        config_map(ROOK_MAPPING[0], {ROOK_MAPPING[1]: "[]"}),
    )
    # ceph-csi's own journal regenerator runs beside it, as its Helm chart deploys it.
    regenerator = start_journal_regenerator(
        failover.driver.binary,
        failover.work / "regenerator",
        kubeconfig=failover.kube.kubeconfig,
        namespace=NAMESPACE,
        config=failover.config_map_key(*HELM[0]) or "[]",
        cluster_mapping=failover.config_map_key(*HELM[1]),
    )
    failover.controller.start("--csi-config-layout", "rook")

    def completed() -> bool:
        config = failover.config_map_key(*ROOK_CONFIG) or "[]"
        mapping = failover.config_map_key(*ROOK_MAPPING) or "[]"
        return (
            SITE_A_ID in {e["clusterID"] for e in json.loads(config)}
            and len(json.loads(mapping)) == 1
        )

    def regenerator_seen() -> dict[str, Any] | None:
        found = conditions_of(failover.get(f"{API}/clusteridmappings/{MAPPING}"))
        seen = found.get("CephCSIRegenerator")
        return seen if seen and seen["status"] == "True" else None

    try:
        wait_for(completed, CONVERGE, "Rook's ConfigMaps completed")
        seen = wait_for(regenerator_seen, CONVERGE, "CephCSIRegenerator=True")
    except pytest.fail.Exception:
        print(failover.controller.log())
        raise
    finally:
        regenerator.stop()
    assert f"Lease rbd.csi.ceph.com-{NAMESPACE}" in seen["message"]
    failover.feed_driver(ROOK_CONFIG, ROOK_MAPPING)
    volume = failover.volumes[3]
    assert failover.driver.client.expand_volume(volume.old_handle, 2 * GIB, failover.secrets) == (
        2 * GIB
    )
    assert failover.image_size(volume.image) == 2 * GIB


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "data": data,
    }
