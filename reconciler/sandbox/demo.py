"""`make demo`: a real failover on a local Ceph pair and API server, repaired by the controller.

Every step runs real daemons: volumes are provisioned on site-a as ceph-csi leaves them, the real
rbd-mirror daemon replicates the images, site-b is promoted and site-a is stopped; then, on site-b's
Kubernetes (a real kube-apiserver), the admin applies the static PVs with their old handles and a
ClusterIDMapping, and `rbd-mirror-reconciler run`, under its own ServiceAccount and RBAC, rebuilds
ceph-csi's journal on site-b and records a VolumeHandleMapping per PV.

The demo provisions with the product's own journal code: regenerating a volume's journal on the
site it was created on writes exactly what ceph-csi's CreateVolume writes. (The tests replay
ceph-csi with code of their own instead, tests/support/csi_replay.py, so that a bug the product
and its tests shared could not hide.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.cephconn import Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.controllers.metrics import PREFIX as METRICS_PREFIX
from reconciler.csiconfig import DEFAULT_CONFIGMAP
from reconciler.handle import VolumeHandle
from reconciler.regenerate import LocalCluster, regenerate
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER, CephCluster
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.errors import SandboxError
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.pair import SitePair, start_pair
from reconciler.sandbox.process import poll_until, run
from reconciler.sandbox.scale import create_images
from reconciler.volume import CSIVolume

SITE_A_ID = "site-a"
SITE_B_ID = "site-b"
NAMESPACE = "rook-ceph"  # where Provisioned.pv()'s Secret reference points
SECRET = "rook-csi-rbd-provisioner"
VOLUMES = 3
CONVERGE_SECONDS = 120
#: Lines of a long listing shown (a larger failover's mappings, handles).
SHOWN = 10


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


@dataclass(frozen=True)
class Volume:
    """A volume as ceph-csi provisioned it on site-a, and its PV."""

    pv_name: str
    handle: str
    image_name: str
    pool: str
    cluster_id: str
    namespace: str

    def pv(self) -> dict[str, Any]:
        return site.static_pv(
            self.pv_name,
            self.handle,
            cluster_id=self.cluster_id,
            pool=self.pool,
            image_name=self.image_name,
            claim=(f"claim-{self.pv_name}", self.namespace),
        )


def provision(
    ceph: CephCluster, cluster_id: str, pool: str, names: Sequence[str], namespace: str = "apps"
) -> list[Volume]:
    """What ceph-csi's CreateVolume leaves on `ceph` for each PV name: an image `csi-vol-<uuid>`,
    its journal (written by `regenerate`, as ceph-csi's user) and the handle naming both."""
    pool_id = ceph.pool_id(pool)
    volumes = []
    for name in names:
        object_uuid = str(uuid.uuid4())
        volume = Volume(
            pv_name=name,
            handle=VolumeHandle(cluster_id, pool_id, object_uuid).encode(),
            image_name=f"csi-vol-{object_uuid}",
            pool=pool,
            cluster_id=cluster_id,
            namespace=namespace,
        )
        volumes.append(volume)
    # 16 MiB, layering and exclusive-lock, many at once through librbd.
    create_images(ceph, pool, [v.image_name for v in volumes], mirrored=False)
    asyncio.run(_write_journals(ceph, cluster_id, volumes))
    return volumes


async def _write_journals(ceph: CephCluster, cluster_id: str, volumes: list[Volume]) -> None:
    connections = ConnectionPool()
    try:
        key = (ceph.dir / f"{CSI_USER}.key").read_text().strip()
        connection = await connections.get(ceph.monitors, Credentials(CSI_USER, key))
        limit = asyncio.Semaphore(16)

        async def write(volume: Volume) -> None:
            async with limit:
                result = await regenerate(
                    connection, CSIVolume.from_pv(volume.pv()), LocalCluster(cluster_id)
                )
            if result.new_handle != volume.handle:
                raise SandboxError(f"{volume.pv_name}: provisioned as {result.new_handle}")

        await asyncio.gather(*(write(volume) for volume in volumes))
    finally:
        await connections.close()


def journal_objects(ceph: CephCluster, pool: str) -> list[str]:
    """ceph-csi's journal objects in `pool`: the directory and one object per volume."""
    return [name for name in ceph.rados(pool, "ls").split() if name.startswith("csi.volume")]


def run_demo(checkout: Checkout, base_dir: Path | None = None, volumes: int = VOLUMES) -> int:
    """The demo of a failover of `volumes` volumes, applying `checkout`'s CRDs and RBAC; state
    and logs under `base_dir`."""
    began = time.monotonic()
    binaries = KubeBinaries.locate(checkout)  # before anything starts: fails fast if unbuilt
    base = base_dir or Path(tempfile.mkdtemp(prefix="rbd-mirror-demo-"))
    step("Starting two real Ceph sites mirrored by rbd-mirror, and site-b's Kubernetes API")
    pair = start_pair(base / "ceph")
    try:
        with KubeSandbox(base / "kube", binaries) as kube:
            print(
                f"   Ceph pair in {pair.started_in:.0f} s, API server in {kube.start_seconds:.0f} s"
            )
            return _failover(checkout, pair, kube, base, began, count=volumes)
    finally:
        pair.stop()
        print(f"\nAll daemons stopped; logs and state kept in {base}")


def _failover(
    checkout: Checkout, pair: SitePair, kube: KubeSandbox, base: Path, began: float, *, count: int
) -> int:
    pool = pair.pool
    id_a, id_b = pair.site_a.pool_id(pool), pair.site_b.pool_id(pool)
    print(f"   pool {pool!r}: ID {id_a} on site-a, ID {id_b} on site-b (they differ, as in DR)")

    step(f"ceph-csi provisions {count} volumes on site-a")
    names = [f"pvc-demo-{i}" for i in range(count)]
    volumes = provision(pair.site_a, SITE_A_ID, pool, names)
    for v in volumes[:SHOWN]:
        print(f"   {v.pv_name}: {v.handle}")
    if count > SHOWN:
        print(f"   ... and {count - SHOWN} more")

    minutes = "up to a minute" if count <= 20 else f"a few minutes for {count} images"
    step(f"rbd-mirror replicates the images to site-b; site-b is promoted ({minutes})")
    pair.fail_over([v.image_name for v in volumes])
    copied = len(journal_objects(pair.site_b, pool))
    print(f"   ceph-csi journal objects on site-b: {copied} (OMAP is not mirrored)")

    step("Disaster: site-a goes dark (all its daemons stopped)")
    pair.site_a.stop()

    step(
        "On site-b's Kubernetes the admin applies CRDs, RBAC, ceph-csi's Secret and config, "
        "a ClusterIDMapping and the static PVs with their old handles"
    )
    cfg = kube.kubeconfig
    site.install_crds(cfg, checkout)
    site.install_rbac(cfg, checkout, NAMESPACE, base)
    key = (pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    site.apply(
        cfg,
        site.ceph_csi_secret(SECRET, NAMESPACE, CSI_USER, key),
        site.ceph_csi_config(NAMESPACE, {SITE_B_ID: pair.site_b.monitors}),
        site.cluster_id_mapping("site-a-site-b", SITE_A_ID, SITE_B_ID, [{"name": pool}]),
        *(v.pv() for v in volumes),
    )

    step("The controller runs as its ServiceAccount: `rbd-mirror-reconciler run`")
    controller = site.ControllerProcess(
        kubeconfig=kube.service_account_kubeconfig(NAMESPACE, site.SERVICE_ACCOUNT, create=False),
        log_dir=base,
        local_cluster_id=SITE_B_ID,
        namespace=NAMESPACE,
        extra_args=["--manage-csi-config"],
    )
    controller.start()
    try:
        return _converge(pair, kube, controller, volumes, began)
    finally:
        controller.stop()


def _mappings(kubeconfig: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        site.kubectl(kubeconfig, "get", "volumehandlemappings", "-o", "json").stdout
    )["items"]
    return items


def _progress(controller: site.ControllerProcess) -> str:
    """The product's own lines of the controller's /metrics."""
    lines = controller.metrics().splitlines()
    return "\n".join(line for line in lines if line.startswith(METRICS_PREFIX))


def _ready(mapping: dict[str, Any]) -> bool:
    conditions = (mapping.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _converge(
    pair: SitePair,
    kube: KubeSandbox,
    controller: site.ControllerProcess,
    volumes: list[Volume],
    began: float,
) -> int:
    cfg = kube.kubeconfig
    waited = time.monotonic()
    try:
        poll_until(
            lambda: sum(_ready(m) for m in _mappings(cfg)) == len(volumes),
            CONVERGE_SECONDS + len(volumes) / 10,
            f"{len(volumes)} Ready VolumeHandleMappings",
            interval=0.5 if len(volumes) <= 100 else 2.0,
        )
    except SandboxError:
        print(controller.log())
        raise
    print(f"   all Ready {time.monotonic() - waited:.1f} s after the controller started\n")
    listing = site.kubectl(cfg, "get", "volumehandlemappings", "-o", "wide").stdout.splitlines()
    print("\n".join(listing[: SHOWN + 1]))
    if len(listing) > SHOWN + 1:
        print(f"... and {len(listing) - SHOWN - 1} more")
    progress = [
        json.loads(line)
        for line in controller.current_log().splitlines()
        if '"remapping ' in line or '"listed a pool' in line
    ]
    if progress:
        step("What the controller logged while it worked (progress every 5 s during a burst)")
        for entry in progress:
            noise = ("level", "logger", "timestamp", "controller", "reconcile_id", "key")
            fields = {k: v for k, v in entry.items() if k not in noise}
            print(f"   {fields.pop('message')}: {fields}")

    step("The progress Prometheus scrapes from the controller's /metrics")
    # The controller's cache sees its own last status write a moment after the API server does.
    poll_until(
        lambda: f"{METRICS_PREFIX}_volumes_pending 0.0" in _progress(controller),
        30,
        "the controller to report no PV pending",
    )
    print(_progress(controller))

    sample = volumes[0]
    step(f"A CSI driver given {sample.pv_name}'s old handle resolves it locally")
    print(
        run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "resolve",
                sample.handle,
                "--kubeconfig",
                str(cfg),
                "--csi-config-namespace",
                NAMESPACE,
                "-o",
                "table",
            ]
        )
    )

    step(f"site-b's journal for {sample.pv_name}, as ceph-csi reads it: `journal show`")
    new_handle = site.kubectl(
        cfg, "get", "volumehandlemapping", sample.pv_name,
        "-o", "jsonpath={.status.newVolumeHandle}",
    ).stdout  # fmt: skip
    print(
        run(
            [
                sys.executable, "-m", "reconciler", "journal", "show", new_handle,
                "--monitors", pair.site_b.monitors,
                "--user", CSI_USER,
                "--key-file", str(pair.site_b.dir / f"{CSI_USER}.key"),
            ]
        )
    )  # fmt: skip

    step("ceph-csi's own cluster-mapping.json, rendered from the ClusterIDMapping")
    print(
        site.kubectl(
            cfg,
            "get",
            "configmap",
            DEFAULT_CONFIGMAP,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.data.cluster-mapping\\.json}",
        ).stdout
    )

    step(f"Deleting PV {sample.pv_name}: its VolumeHandleMapping goes with it")
    site.kubectl(cfg, "delete", "pv", sample.pv_name)
    poll_until(
        lambda: sample.pv_name not in {m["metadata"]["name"] for m in _mappings(cfg)},
        60,
        f"{sample.pv_name}'s mapping to be garbage-collected",
    )
    print("   gone")
    print(f"\ndemo: OK in {time.monotonic() - began:.0f} s")
    return 0
