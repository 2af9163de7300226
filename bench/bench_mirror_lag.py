"""Benchmark: what the lag exporter costs per refresh and per scrape, for N mirrored images.

    .venv/bin/python bench/bench_mirror_lag.py [--images 100 1000] [--runs 5]

A real pair (reconciler.sandbox.pair): site-a makes N images (16 MiB, empty) mirror-enabled in
snapshot mode, the real rbd-mirror on site-b replicates them, and once site-b replays them all:

- a refresh, as the exporter makes one per pool and interval: `list2` and
  `mirror_image_status_list`, the mirror info kept from an earlier listing; and an info refresh,
  as it makes one per `--info-interval`, which adds `mirror_image_info_list`. Each call is also
  timed alone (median of `--runs`), as the CSI user over one connection, with the OSD reads it
  costs (the OSD's own `op_r` counter: what reached Ceph, counted where it landed);
- as the baseline, what one call per image would cost: `mirror_image_get_status` on each image
  (what a naive exporter, or `rbd mirror image status` in a loop, does), timed over a sample;
- one scrape = rendering /metrics from the cache: seconds and bytes, and the series count.

Then a linear extrapolation to 10,000 images from the largest N. Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import rados
import rbd
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.cephconn import Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.lag import LagSettings, MirrorLag
from reconciler.mirror import list_pool
from reconciler.sandbox.ceph import CSI_USER, CephCluster
from reconciler.sandbox.pair import SitePair, start_pair
from reconciler.sandbox.process import poll_until

TARGET = 10_000


def create_mirrored(site: CephCluster, pool: str, names: list[str]) -> None:
    """Images `names` on `site`, snapshot-mirrored, 32 at a time through librbd."""
    client = rados.Rados(conffile=str(site.conf))
    client.connect()
    try:
        ioctx = client.open_ioctx(pool)
        features = rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK

        def create(name: str) -> None:
            rbd.RBD().create(ioctx, name, 16 << 20, old_format=False, features=features)
            with rbd.Image(ioctx, name) as image:
                image.mirror_image_enable(rbd.RBD_MIRROR_IMAGE_MODE_SNAPSHOT)

        with concurrent.futures.ThreadPoolExecutor(32) as threads:
            list(threads.map(create, names))
        ioctx.close()
    finally:
        client.shutdown()


def replaying(pair: SitePair) -> int:
    """How many images site-b's rbd-mirror replays (one pool-level status command)."""
    status = pair.site_b.rbd("mirror", "pool", "status", pair.pool, "--format", "json")
    states: dict[str, int] = json.loads(status)["summary"].get("states", {})
    return states.get("replaying", 0)


def osd_reads(site: CephCluster) -> int:
    dump = json.loads(site.ceph("tell", "osd.0", "perf", "dump"))
    return int(dump["osd"]["op_r"])


def per_image_baseline(site: CephCluster, pool: str, names: list[str]) -> float:
    """Seconds per image for one status call per image (the naive way), over `names`."""
    client = rados.Rados(conffile=str(site.conf))
    client.connect()
    try:
        ioctx = client.open_ioctx(pool)
        began = time.perf_counter()
        for name in names:
            with rbd.Image(ioctx, name, read_only=True) as image:
                image.mirror_image_get_status()
        elapsed = time.perf_counter() - began
        ioctx.close()
    finally:
        client.shutdown()
    return elapsed / len(names)


async def measure(pair: SitePair, count: int, runs: int) -> dict[str, Any]:
    site = pair.site_b
    key = (site.dir / f"{CSI_USER}.key").read_text().strip()
    connections = ConnectionPool()
    try:
        ceph = await connections.get(site.monitors, Credentials(CSI_USER, key))

        def timer(call: str) -> Any:
            def run(ioctx: Any) -> float:
                began = time.perf_counter()
                list(getattr(rbd.RBD(), call)(ioctx))
                return time.perf_counter() - began

            return run

        calls, call_reads = {}, {}
        for call in ("list2", "mirror_image_info_list", "mirror_image_status_list"):
            before = osd_reads(site)
            samples = [await ceph.run_with(call, timer(call), pair.pool) for _ in range(runs)]
            call_reads[call] = (osd_reads(site) - before) / runs
            calls[call] = statistics.median(samples)
        before = osd_reads(site)
        listing = await list_pool(ceph, pair.pool)
        info_ops = osd_reads(site) - before
        info_refreshes = [(await list_pool(ceph, pair.pool)).duration for _ in range(runs)]
        before = osd_reads(site)
        await list_pool(ceph, pair.pool, infos=listing.infos)
        ops = osd_reads(site) - before
        refreshes = [
            (await list_pool(ceph, pair.pool, infos=listing.infos)).duration for _ in range(runs)
        ]

        async def never() -> Any:
            return ceph

        lag = MirrorLag(never, LagSettings(pools=((pair.pool, ""),)))
        lag.listings[(pair.pool, "")] = listing
        registry = CollectorRegistry()
        registry.register(lag)
        scrapes, body = [], b""
        for _ in range(runs):
            began = time.perf_counter()
            body = generate_latest(registry)
            scrapes.append(time.perf_counter() - began)
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    finally:
        await connections.close()
    sample = [image.name for image in listing.images][:100]
    naive = await asyncio.to_thread(per_image_baseline, site, pair.pool, sample)
    replicas = sum(image.replica for image in listing.images)
    return {
        "images": count,
        "replicas": replicas,
        "refresh_s": statistics.median(refreshes),
        "info_refresh_s": statistics.median(info_refreshes),
        "info_osd_reads": info_ops,
        "calls_s": calls,
        "calls_osd_reads": call_reads,
        "osd_reads": ops,
        "per_image_naive_s": naive * count,
        "scrape_s": statistics.median(scrapes),
        "scrape_bytes": len(body),
        "series": series,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-mirror-lag-"))
    pair = start_pair(base)
    results = []
    try:
        made: list[str] = []
        for count in sorted(args.images):
            names = [f"bench-{i:05d}" for i in range(len(made), count)]
            began = time.monotonic()
            create_mirrored(pair.site_a, pair.pool, names)
            made += names
            poll_until(
                lambda wanted=count: replaying(pair) >= wanted,  # type: ignore[misc]
                600 + count,
                f"{count} images replaying on site-b",
                interval=5,
            )
            print(f"{count} images mirrored and replaying in {time.monotonic() - began:.0f} s")
            results.append(asyncio.run(measure(pair, count, args.runs)))
            print(json.dumps(results[-1]))
    finally:
        pair.stop()
    report(results)


def report(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| images | refresh (list2 + status) | its OSD reads | info refresh (+ info list) "
        "| its OSD reads | one status call per image (baseline) | scrape | scrape size | series |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = list(results)
    if rows:
        last = rows[-1]
        factor = TARGET / last["images"]
        scaled = {k: v * factor for k, v in last.items() if isinstance(v, int | float)}
        rows.append({**scaled, "images": TARGET, "extrapolated": True})
    for row in rows:
        mark = " (extrapolated)" if row.get("extrapolated") else ""
        print(
            f"| {row['images']:,}{mark} | {row['refresh_s'] * 1000:.0f} ms "
            f"| {row['osd_reads']:.0f} | {row['info_refresh_s'] * 1000:.0f} ms "
            f"| {row['info_osd_reads']:.0f} | {row['per_image_naive_s']:.1f} s "
            f"| {row['scrape_s'] * 1000:.0f} ms | {row['scrape_bytes'] / 1024:.0f} KiB "
            f"| {row['series']:.0f} |"
        )
    for row in results:
        calls = ", ".join(
            f"{call} {seconds * 1000:.1f} ms / {row['calls_osd_reads'][call]:.0f} OSD reads"
            for call, seconds in row["calls_s"].items()
        )
        print(f"{row['images']} images, each call alone: {calls}")


if __name__ == "__main__":
    main()
