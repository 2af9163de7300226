"""Benchmark of the CSI-side resolver (figures, not pass/fail tests).

    .venv/bin/python bench/bench_resolve.py [--mappings 10000] [--lookups 100000]

Starts a real kube-apiserver + etcd (reconciler.sandbox.kube), creates N VolumeHandleMappings and
writes each one's Ready status through the status subresource as the controller does, plus one
ClusterIDMapping and ceph-csi-config. Then, in a fresh process (so the figures are its own):

- cache memory (tracemalloc, after a full sync and a GC) of the Resolver, and as the baseline an
  informer on the same objects that keeps them whole (no transform), indexed the same way;
- `resolve` latency per call (p50/p99/max) for each route, and as baselines in the same run a
  linear scan of the cached objects (what the index saves) and a bare dict lookup (the floor).

Goals (issue 7): p99 <= 50 us per resolve over 10k mappings; <= 16 MiB of cache per 10k mappings.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from reconciler.csi import Resolver, SyncResolver
from reconciler.handle import VolumeHandle
from reconciler.k8s import ApiSettings, Informer, make_api_client, request_json
from reconciler.k8s.apply import server_side_apply
from reconciler.k8s.conditions import condition, is_ready, merge_conditions
from reconciler.kinds import (
    API_VERSION,
    CLUSTER_ID_MAPPINGS,
    FIELD_MANAGER,
    VHM_HANDLE_INDEX,
    VOLUME_HANDLE_HASH_LABEL,
    VOLUME_HANDLE_MAPPINGS,
    index_vhm_handle,
    volume_handle_hash,
)
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.site import install_crds

NAMESPACE = "ceph-csi"
REMOTE, LOCAL = "site-a", "site-b"
REMOTE_POOL, LOCAL_POOL = 2, 5
POOL = "replicapool"


# setting up the API server ----------------------------------------------------------------------


async def create_world(kubeconfig: Path, count: int) -> float:
    """N Ready VolumeHandleMappings, a Ready ClusterIDMapping and ceph-csi-config."""
    api = await make_api_client(kubeconfig, ApiSettings(qps=5000, burst=5000))
    ready = merge_conditions([], [condition("Ready", True, "Regenerated", "bench", 1)])
    try:
        await request_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        config = [{"clusterID": LOCAL, "monitors": ["192.0.2.1:6789"]}]
        await request_json(
            api,
            "POST",
            f"/api/v1/namespaces/{NAMESPACE}/configmaps",
            {"metadata": {"name": "ceph-csi-config"}, "data": {"config.json": json.dumps(config)}},
        )
        await request_json(
            api,
            "POST",
            CLUSTER_ID_MAPPINGS.collection_path(),
            {
                "apiVersion": API_VERSION,
                "kind": "ClusterIDMapping",
                "metadata": {"name": "site-a-to-b"},
                "spec": {
                    "siteA": {"clusterID": REMOTE},
                    "siteB": {"clusterID": LOCAL},
                    "rbdPools": [{"name": POOL}],
                },
            },
        )
        await server_side_apply(
            api,
            CLUSTER_ID_MAPPINGS,
            {
                "apiVersion": API_VERSION,
                "kind": "ClusterIDMapping",
                "metadata": {"name": "site-a-to-b"},
                "status": {
                    "observedGeneration": 1,
                    "localClusterID": LOCAL,
                    "remoteClusterID": REMOTE,
                    "rbdPools": [
                        {"name": POOL, "localPoolID": LOCAL_POOL, "remotePoolID": REMOTE_POOL}
                    ],
                    "conditions": merge_conditions(
                        [], [condition("Ready", True, "Mapped", "bench", 1)]
                    ),
                },
            },
            field_manager=FIELD_MANAGER,
            subresource="status",
        )
        semaphore = asyncio.Semaphore(64)

        async def create(i: int) -> None:
            object_uuid = str(uuid.uuid4())
            old = VolumeHandle(REMOTE, REMOTE_POOL, object_uuid).encode()
            new = VolumeHandle(LOCAL, LOCAL_POOL, object_uuid)
            name = f"pvc-{object_uuid}"
            metadata = {"name": name, "labels": {VOLUME_HANDLE_HASH_LABEL: volume_handle_hash(old)}}
            async with semaphore:
                # No status subresource: the object is created with its status, as the
                # controller writes it.
                await request_json(
                    api,
                    "POST",
                    VOLUME_HANDLE_MAPPINGS.collection_path(),
                    {
                        "apiVersion": API_VERSION,
                        "kind": "VolumeHandleMapping",
                        "metadata": metadata,
                        "spec": {"pvName": name, "volumeHandle": old},
                        "status": {
                            "newVolumeHandle": new.encode(),
                            "clusterID": LOCAL,
                            "pool": POOL,
                            "poolID": LOCAL_POOL,
                            "imageName": new.image_name(),
                            "journalPool": POOL,
                            "radosNamespace": "",
                            "clusterIDMappings": ["site-a-to-b"],
                            "readySince": ready[0]["lastTransitionTime"],
                            "conditions": ready,
                        },
                    },
                )

        started = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(count)))
        return time.perf_counter() - started
    finally:
        await api.close()


# measuring (in a fresh process) -----------------------------------------------------------------


def traced_bytes() -> int:
    """Memory Python has allocated and not freed, once garbage is collected."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "p50_us": statistics.median(ordered) / 1000,
        "p99_us": ordered[int(len(ordered) * 0.99)] / 1000,
        "max_us": ordered[-1] / 1000,
        "calls": len(ordered),
    }


async def timed(calls: list[str], call: Callable[[str], Awaitable[object]]) -> dict[str, float]:
    samples = []
    clock = time.perf_counter_ns
    for argument in calls:
        started = clock()
        await call(argument)
        samples.append(clock() - started)
    return percentiles(samples)


def timed_sync(calls: list[str], call: Callable[[str], object]) -> dict[str, float]:
    samples = []
    clock = time.perf_counter_ns
    for argument in calls:
        started = clock()
        call(argument)
        samples.append(clock() - started)
    return percentiles(samples)


async def measure(kubeconfig: Path, lookups: int) -> tuple[dict[str, Any], list[str]]:
    """The figures, and the handles looked up (for `measure_sync_facade`)."""
    api = await make_api_client(kubeconfig)
    figures: dict[str, Any] = {}
    try:
        tracemalloc.start()
        # Baseline: the same objects cached whole, as an informer without a transform keeps them.
        base = traced_bytes()
        whole = Informer(api, VOLUME_HANDLE_MAPPINGS, indexers={VHM_HANDLE_INDEX: index_vhm_handle})
        task = asyncio.create_task(whole.run())
        await whole.wait_synced()
        figures["whole_objects_mib"] = (traced_bytes() - base) / 2**20
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        objects = whole.store.objects()
        del whole

        base = traced_bytes()
        async with Resolver(api, csi_config_namespace=NAMESPACE) as resolver:
            await resolver.wait_synced()
            figures["resolver_cache_mib"] = (traced_bytes() - base) / 2**20
            tracemalloc.stop()
            figures["mappings"] = len(resolver.volume_handle_mappings.store)

            old_handles = [obj["spec"]["volumeHandle"] for obj in objects]
            rng = random.Random(7)
            calls = [rng.choice(old_handles) for _ in range(lookups)]
            unmapped = [
                VolumeHandle(REMOTE, REMOTE_POOL, str(uuid.uuid4())).encode()
                for _ in range(lookups // 10)
            ]
            local = [
                VolumeHandle(LOCAL, LOCAL_POOL, str(uuid.uuid4())).encode()
                for _ in range(lookups // 10)
            ]
            for warm_up in calls[:1000]:
                await resolver.resolve(warm_up)
            figures["resolve_mapping"] = await timed(calls, resolver.resolve)
            figures["resolve_mapping_no_await"] = timed_sync(calls, resolver.resolve_cached)
            figures["resolve_cluster_mapping"] = await timed(unmapped, resolver.resolve)
            figures["resolve_local"] = await timed(local, resolver.resolve)

            # Baselines: what the index saves, and the floor of any in-process lookup.
            def linear_scan(handle: str) -> object:
                return next(
                    o for o in objects if o["spec"]["volumeHandle"] == handle and is_ready(o)
                )

            figures["baseline_linear_scan"] = timed_sync(calls[: lookups // 100], linear_scan)
            by_handle = {o["spec"]["volumeHandle"]: o for o in objects}
            figures["baseline_dict_get"] = timed_sync(calls, by_handle.get)
    finally:
        await api.close()
    return figures, calls


def measure_sync_facade(kubeconfig: Path, calls: list[str]) -> dict[str, float]:
    """SyncResolver.resolve from the main thread: each call hops to the resolver's loop."""
    with SyncResolver(kubeconfig, csi_config_namespace=NAMESPACE) as resolver:
        resolver.resolve(calls[0], sync_timeout=60)
        return timed_sync(calls, resolver.resolve)


# reporting ----------------------------------------------------------------------------------------


def line(name: str, figures: dict[str, float]) -> str:
    return (
        f"  {name:<34} p50 {figures['p50_us']:>9.2f} us   p99 {figures['p99_us']:>9.2f} us   "
        f"max {figures['max_us']:>10.1f} us   ({figures['calls']:,} calls)"
    )


def bench(args: argparse.Namespace) -> None:
    checkout = Checkout.at(Path.cwd())  # `make bench` runs from the repository's root
    with (
        tempfile.TemporaryDirectory(prefix="bench-resolve-") as workdir,
        KubeSandbox(Path(workdir), KubeBinaries.locate(checkout)) as kube,
    ):
        install_crds(kube.kubeconfig, checkout)
        created = asyncio.run(create_world(kube.kubeconfig, args.mappings))
        print(
            f"resolve: {args.mappings} Ready VolumeHandleMappings created and their status "
            f"written in {created:.1f} s (Python {sys.version.split()[0]})"
        )
        answer = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(kube.kubeconfig),
                "--lookups",
                str(args.lookups),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    f = json.loads(answer.stdout)
    per_10k = 10_000 / f["mappings"]
    print(
        f"cache memory (tracemalloc, after sync + GC) for {f['mappings']} mappings:\n"
        f"  resolver (trimmed, indexed)        {f['resolver_cache_mib']:7.1f} MiB"
        f"  = {f['resolver_cache_mib'] * per_10k:.1f} MiB per 10k   (goal <= 16)\n"
        f"  baseline: whole objects, indexed   {f['whole_objects_mib']:7.1f} MiB"
        f"  = {f['whole_objects_mib'] * per_10k:.1f} MiB per 10k"
    )
    print("latency per call (goal p99 <= 50 us):")
    print(line("resolve, exact mapping (await)", f["resolve_mapping"]))
    print(line("resolve_cached, exact mapping", f["resolve_mapping_no_await"]))
    print(line("resolve, via cluster mapping", f["resolve_cluster_mapping"]))
    print(line("resolve, local handle", f["resolve_local"]))
    print(line("SyncResolver.resolve, other thread", f["resolve_sync_facade"]))
    print(line("baseline: linear scan of objects", f["baseline_linear_scan"]))
    print(line("baseline: bare dict.get", f["baseline_dict_get"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--mappings", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        figures, calls = asyncio.run(measure(args.child, args.lookups))
        figures["resolve_sync_facade"] = measure_sync_facade(
            args.child, calls[: args.lookups // 10]
        )
        print(json.dumps(figures))
    else:
        bench(args)


if __name__ == "__main__":
    main()
