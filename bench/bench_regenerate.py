"""Benchmark: journal regeneration throughput on a real Ceph cluster over one pooled connection.

Starts a throw-away single-node cluster, creates images as a mirrored pool would hold them, then
regenerates the journal of N volumes with 1 volume in flight (the baseline, as a sequential tool
would) and with many in flight, each round on fresh volumes. Prints volumes/s for each.

    .venv/bin/python bench/bench_regenerate.py [--volumes 300] [--in-flight 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import rados
import rbd

from reconciler.cephconn import Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.regenerate import LocalCluster, regenerate
from reconciler.sandbox.ceph import CSI_CAPS, CSI_USER, CephCluster
from reconciler.volume import CSIVolume

POOL = "replicapool"


def create_images(cluster: CephCluster, count: int) -> list[CSIVolume]:
    volumes = []
    client = rados.Rados(conffile=str(cluster.conf))
    client.connect()
    try:
        with client.open_ioctx(POOL) as io:
            for i in range(count):
                object_uuid = str(uuid.uuid4())
                rbd.RBD().create(io, f"csi-vol-{object_uuid}", 1 << 20, old_format=False)
                handle = f"0001-0006-site-a-{1:016x}-{object_uuid}"
                volumes.append(
                    CSIVolume(
                        pv_name=f"pvc-{i}-{object_uuid[:8]}",
                        driver="rbd.csi.ceph.com",
                        volume_handle=handle,
                        attributes={"pool": POOL},
                        claim_name=f"claim-{i}",
                        claim_namespace="bench",
                    )
                )
    finally:
        client.shutdown()
    return volumes


async def regenerate_all(
    pool: ConnectionPool, cluster: CephCluster, key: str, volumes: list[CSIVolume], in_flight: int
) -> float:
    local = LocalCluster("site-b")
    limit = asyncio.Semaphore(in_flight)

    async def one(volume: CSIVolume) -> None:
        async with limit:
            ceph = await pool.get(cluster.monitors, Credentials(CSI_USER, key))
            result = await regenerate(ceph, volume, local)
            assert result.written, "a fresh volume must be written"

    began = time.perf_counter()
    await asyncio.gather(*(one(v) for v in volumes))
    return time.perf_counter() - began


async def run(cluster: CephCluster, volumes_per_round: int, in_flight: list[int]) -> None:
    key = cluster.create_user(CSI_USER, CSI_CAPS)
    pool = ConnectionPool()
    try:
        for width in in_flight:
            volumes = create_images(cluster, volumes_per_round)
            seconds = await regenerate_all(pool, cluster, key, volumes, width)
            print(
                f"in flight {width:>3}: {volumes_per_round} volumes in {seconds:6.2f} s = "
                f"{volumes_per_round / seconds:7.1f} volumes/s  (connections: {len(pool)})"
            )
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=300, help="volumes per round")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-regenerate-") as tmp:
        cluster = CephCluster.start("bench", Path(tmp))
        try:
            cluster.create_pool(POOL)
            cluster.init_rbd_pool(POOL)
            asyncio.run(run(cluster, args.volumes, args.in_flight))
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
