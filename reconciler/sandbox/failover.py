"""A failover of N volumes on one site, as the benchmark builds it (bench/bench_failover.py).

One real Ceph site (site-b) holding N images, mirror-enabled and primary as after a promotion,
with no journal; a real kube-apiserver (with etcd and kube-controller-manager) holding N static
PVs whose handles name the failed site (site-a, another pool ID), ceph-csi's Secret and config,
the controller's CRDs and RBAC and one ClusterIDMapping. `ReadyTracker` watches the mappings
become Ready; `server_cpu` and `cpu_by_daemon` read what the daemons spent.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.handle import VolumeHandle
from reconciler.k8s import ApiSettings, Event, EventType, Informer, make_api_client, request_json
from reconciler.k8s.conditions import is_ready
from reconciler.kinds import PERSISTENT_VOLUMES, VOLUME_HANDLE_MAPPINGS
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_CAPS, CSI_USER, CephCluster
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.scale import create_images, process_usage

POOL = "replicapool"
LOCAL, REMOTE = "site-b", "site-a"
REMOTE_POOL_ID = 7
NAMESPACE = "rook-ceph"  # ceph-csi's namespace: its Secret, config and Leases
SECRET = "rook-csi-rbd-provisioner"


@dataclass
class World:
    cluster: CephCluster
    kube: KubeSandbox
    work: Path
    volumes: list[tuple[str, str]]  # (PV name, object UUID)
    key: str

    @property
    def local_pool_id(self) -> int:
        return self.cluster.pool_id(POOL)


def start_world(
    base: Path, binaries: KubeBinaries, checkout: Checkout, count: int, *, mirrored: bool
) -> World:
    began = time.monotonic()
    cluster = CephCluster.start(LOCAL, base / "ceph")
    try:
        cluster.create_pool("site-b-scratch")  # so the pool's ID here is not the old one
        cluster.create_pool(POOL)
        cluster.init_rbd_pool(POOL)
        if mirrored:
            cluster.rbd("mirror", "pool", "enable", POOL, "image", "--site-name", LOCAL)
        key = cluster.create_user(CSI_USER, CSI_CAPS)
        volumes = [(f"pvc-{uuid.uuid4()}", str(uuid.uuid4())) for _ in range(count)]
        create_images(cluster, POOL, [f"csi-vol-{u}" for _, u in volumes], mirrored=mirrored)
        print(f"  Ceph site with {count} images in {time.monotonic() - began:.0f} s", flush=True)
        kube = KubeSandbox(base / "kube", binaries).start()
    except BaseException:
        cluster.stop()
        raise
    world = World(cluster, kube, base, volumes, key)
    try:
        populate(world, checkout)
    except BaseException:
        stop_world(world)
        raise
    print(f"  world ready in {time.monotonic() - began:.0f} s", flush=True)
    return world


def stop_world(world: World) -> None:
    world.kube.stop()
    world.cluster.stop()


def populate(world: World, checkout: Checkout) -> None:
    cfg = world.kube.kubeconfig
    site.install_crds(cfg, checkout)
    site.install_rbac(cfg, checkout, NAMESPACE, world.work)
    site.apply(
        cfg,
        site.ceph_csi_secret(SECRET, NAMESPACE, CSI_USER, world.key),
        site.ceph_csi_config(NAMESPACE, {LOCAL: world.cluster.monitors}),
        site.cluster_id_mapping("site-a-site-b", REMOTE, LOCAL, [{"name": POOL}]),
    )
    asyncio.run(create_pvs(world))
    # The PV binder would mark each pre-bound PV Available: be sure it has nothing left to do.
    started = time.monotonic()
    while True:
        items = world.kube.request("GET", "/api/v1/persistentvolumes")["items"]
        if sum((pv.get("status") or {}).get("phase") == "Available" for pv in items) == len(
            world.volumes
        ):
            break
        if time.monotonic() - started > 600:
            raise TimeoutError("the PV binder did not mark every PV Available")
        time.sleep(2)


async def create_pvs(world: World) -> None:
    api = await make_api_client(world.kube.kubeconfig, ApiSettings(qps=5000, burst=5000))
    limit = asyncio.Semaphore(32)

    async def create(name: str, object_uuid: str) -> None:
        handle = VolumeHandle(REMOTE, REMOTE_POOL_ID, object_uuid).encode()
        pv = site.static_pv(
            name,
            handle,
            cluster_id=REMOTE,
            pool=POOL,
            image_name=f"csi-vol-{object_uuid}",
            claim=(f"claim-{name}", "apps"),
        )
        async with limit:
            await request_json(api, "POST", PERSISTENT_VOLUMES.collection_path(), pv)
            # What the PV binder would write for a PV pre-bound to a claim that does not exist
            # (yet), at kube-controller-manager's 20 writes/s: written here, it has nothing to do.
            await request_json(
                api,
                "PATCH",
                PERSISTENT_VOLUMES.object_path(name) + "/status",
                {"status": {"phase": "Available"}},
                content_type="application/merge-patch+json",
            )

    try:
        await asyncio.gather(*(create(name, u) for name, u in world.volumes))
    finally:
        await api.close()


class ReadyTracker:
    """Watches VolumeHandleMappings and keeps the names of the Ready ones."""

    def __init__(self, api: Any) -> None:
        self.ready: set[str] = set()
        self.informer = Informer(api, VOLUME_HANDLE_MAPPINGS, transform=_slim)
        self.informer.add_handler(self._on_event)

    def _on_event(self, event: Event) -> None:
        if event.type is not EventType.DELETED and is_ready(event.obj):
            self.ready.add(event.key)
        else:
            self.ready.discard(event.key)


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    return {
        "metadata": {k: obj["metadata"].get(k) for k in ("name", "resourceVersion", "generation")},
        "status": {k: status[k] for k in ("observedGeneration", "conditions") if k in status},
    }


def server_cpu(kube: KubeSandbox) -> float:
    pids = kube.pids()
    return sum(process_usage(pids[name]).cpu_seconds for name in ("kube-apiserver", "etcd"))


def cpu_by_daemon(world: World) -> dict[str, float]:
    """CPU seconds so far of every daemon of the world (a breakdown printed with each run)."""
    pids = {**world.kube.pids(), **{d.name: d.pid for d in world.cluster.daemons.daemons}}
    return {name: process_usage(pid).cpu_seconds for name, pid in pids.items()}
