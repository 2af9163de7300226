"""`make demo`: a real failover on a local Ceph pair and API server, repaired by the controller.

Every step runs real daemons: ceph-csi's provisioning is replayed on site-a, the real rbd-mirror
daemon replicates the images, site-b is promoted and site-a is stopped; then, on site-b's
Kubernetes (a real kube-apiserver), the admin applies the static PVs with their old handles and a
ClusterIDMapping, and `rbd-mirror-reconciler run`, under its own ServiceAccount and RBAC, rebuilds
ceph-csi's journal on site-b and records a VolumeHandleMapping per PV.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reconciler.controllers.metrics import PREFIX as METRICS_PREFIX
from reconciler.csiconfig import DEFAULT_CONFIGMAP
from reconciler.sandbox import cephcsi, site
from reconciler.sandbox.ceph import CSI_USER, SitePair, start_pair
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.errors import SandboxError
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.process import poll_until, run

SITE_A_ID = "site-a"
SITE_B_ID = "site-b"
NAMESPACE = "rook-ceph"  # where Provisioned.pv()'s Secret reference points
SECRET = "rook-csi-rbd-provisioner"
VOLUMES = 3
CONVERGE_SECONDS = 120


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(checkout: Checkout, base_dir: Path | None = None) -> int:
    """The demo, applying `checkout`'s CRDs and RBAC; state and logs under `base_dir`."""
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
            return _failover(checkout, pair, kube, base, began)
    finally:
        pair.stop()
        print(f"\nAll daemons stopped; logs and state kept in {base}")


def _failover(
    checkout: Checkout, pair: SitePair, kube: KubeSandbox, base: Path, began: float
) -> int:
    pool = pair.pool
    id_a, id_b = pair.site_a.pool_id(pool), pair.site_b.pool_id(pool)
    print(f"   pool {pool!r}: ID {id_a} on site-a, ID {id_b} on site-b (they differ, as in DR)")

    step(f"ceph-csi provisions {VOLUMES} volumes on site-a")
    volumes = [
        cephcsi.provision(pair.site_a, SITE_A_ID, pool, f"pvc-demo-{i}") for i in range(VOLUMES)
    ]
    for v in volumes:
        print(f"   {v.pv_name}: {v.handle}")

    step("rbd-mirror replicates the images to site-b; site-b is promoted (up to a minute)")
    cephcsi.fail_over(pair, volumes)
    journal_objects = cephcsi.objects(pair.site_b, pool, "csi.volume")
    print(f"   ceph-csi journal objects on site-b: {len(journal_objects)} (OMAP is not mirrored)")

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
        extra_args=["--cluster-mapping-configmap", DEFAULT_CONFIGMAP],
    )
    controller.start()
    try:
        return _converge(pair, kube, controller, volumes, began)
    finally:
        controller.stop()


def _mappings(kubeconfig: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        site.kubectl(kubeconfig, "get", "volumehandlemappings", "-o", "json")
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
    volumes: list[cephcsi.Provisioned],
    began: float,
) -> int:
    cfg = kube.kubeconfig
    waited = time.monotonic()
    try:
        poll_until(
            lambda: sum(_ready(m) for m in _mappings(cfg)) == len(volumes),
            CONVERGE_SECONDS,
            f"{len(volumes)} Ready VolumeHandleMappings",
        )
    except SandboxError:
        print(controller.log())
        raise
    print(f"   all Ready {time.monotonic() - waited:.1f} s after the controller started\n")
    print(site.kubectl(cfg, "get", "volumehandlemappings", "-o", "wide"))

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

    step(f"site-b's journal for {sample.pv_name}, as ceph-csi reads it")
    directory = cephcsi.omap(pair.site_b, pair.pool, "csi.volumes.default") or {}
    per_volume = cephcsi.omap(pair.site_b, pair.pool, f"csi.volume.{sample.object_uuid}") or {}
    print(
        json.dumps(
            {
                "csi.volumes.default": {
                    k: v.decode() for k, v in directory.items() if k.endswith(sample.pv_name)
                },
                f"csi.volume.{sample.object_uuid}": {k: v.decode() for k, v in per_volume.items()},
            },
            indent=2,
        )
    )

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
        )
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
