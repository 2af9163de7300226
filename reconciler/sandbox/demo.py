"""`make demo`: a real failover on a local Ceph pair, then the journal regenerated on site-b.

Every step runs real daemons: ceph-csi's provisioning is replayed on site-a, the real rbd-mirror
daemon replicates the images, site-b is promoted and site-a is stopped, and the product rebuilds
ceph-csi's journal on site-b, with site-a gone, as an admin would with `journal regenerate`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from reconciler.cephconn import ConnectionPool, Credentials
from reconciler.regenerate import LocalCluster, Regeneration, regenerate
from reconciler.sandbox import cephcsi
from reconciler.sandbox.ceph import CSI_USER, SitePair, start_pair
from reconciler.volume import CSIVolume

SITE_A_ID = "site-a"
SITE_B_ID = "site-b"
VOLUMES = 3


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(base_dir: Path | None = None) -> int:
    began = time.monotonic()
    step("Starting two real Ceph sites mirrored by rbd-mirror (about 20 s)")
    pair = start_pair(base_dir or Path(tempfile.mkdtemp(prefix="rbd-mirror-demo-")))
    try:
        return _failover(pair, began)
    finally:
        pair.stop()
        print(f"\nAll daemons stopped; logs and state kept in {pair.base_dir}")


def _failover(pair: SitePair, began: float) -> int:
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
    print("   images replaying on site-b, then force-promoted there")
    journal_objects = cephcsi.objects(pair.site_b, pool, "csi.volume")
    print(f"   ceph-csi journal objects on site-b: {len(journal_objects)} (OMAP is not mirrored)")

    step("Disaster: site-a goes dark (all its daemons stopped)")
    pair.site_a.stop()

    step("Regenerating the journal on site-b, first as a dry run, then for real")
    results = asyncio.run(_regenerate_all(pair, volumes))
    for dry, done, again in results:
        print(f"   {done.old_handle}\n-> {done.new_handle}")
        print(f"   dry run planned {len(dry.written)} keys; wrote {done.written}")
        print(f"   second run wrote {again.written or 'nothing (converged)'}")
    if any(again.written for _, _, again in results):
        print("demo: FAILED, a second run wrote again")
        return 1

    sample = volumes[0]
    step(f"site-b's journal for {sample.pv_name}, as ceph-csi reads it")
    directory = cephcsi.omap(pair.site_b, pool, "csi.volumes.default") or {}
    per_volume = cephcsi.omap(pair.site_b, pool, f"csi.volume.{sample.object_uuid}") or {}
    shown = {
        "csi.volumes.default": {
            k: v.decode() for k, v in directory.items() if k.endswith(sample.pv_name)
        },
        f"csi.volume.{sample.object_uuid}": {k: v.decode() for k, v in per_volume.items()},
    }
    print(json.dumps(shown, indent=2))
    print(f"\ndemo: OK in {time.monotonic() - began:.0f} s")
    return 0


async def _regenerate_all(
    pair: SitePair, volumes: list[cephcsi.Provisioned]
) -> list[tuple[Regeneration, Regeneration, Regeneration]]:
    key = (pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    connections = ConnectionPool()
    local = LocalCluster(SITE_B_ID)
    try:
        ceph = await connections.get(pair.site_b.monitors, Credentials(CSI_USER, key))
        results = []
        for provisioned in volumes:
            volume = CSIVolume.from_pv(provisioned.pv())
            dry = await regenerate(ceph, volume, local, dry_run=True)
            done = await regenerate(ceph, volume, local)
            again = await regenerate(ceph, volume, local)
            results.append((dry, done, again))
        return results
    finally:
        await connections.close()
