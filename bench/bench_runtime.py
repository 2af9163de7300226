"""Benchmarks of the k8s runtime (figures, not pass/fail tests).

    .venv/bin/python bench/bench_runtime.py queue    [--keys 200000] [--workers 1,4,16,64]
    .venv/bin/python bench/bench_runtime.py informer [--objects 10000]

`queue`: keys/s through add -> get -> done with N asyncio workers (each key distinct, so every
add is real work; a second pass re-adds every key while it is processing to exercise the dirty
path). `informer`: starts a real kube-apiserver + etcd (reconciler.sandbox.kube), creates N
ConfigMaps, then measures in a fresh process the informer's initial list-and-sync time and the
process's RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from reconciler.k8s.client import ApiSettings, make_api_client, request_json
from reconciler.k8s.errors import QueueShutDown
from reconciler.k8s.informer import Informer, Resource, strip_managed_fields
from reconciler.k8s.tasks import cancel_and_wait
from reconciler.k8s.workqueue import WorkQueue
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox

CONFIG_MAPS = Resource("", "v1", "configmaps")


# queue -------------------------------------------------------------------------------------------


async def queue_throughput(keys: int, workers: int, readd_while_processing: bool) -> float:
    queue: WorkQueue[str] = WorkQueue("bench")
    remaining = keys * (2 if readd_while_processing else 1)
    finished = asyncio.Event()

    async def worker() -> None:
        nonlocal remaining
        while True:
            try:
                key = await queue.get()
            except QueueShutDown:
                return
            if readd_while_processing and not key.endswith("+"):
                queue.add(key + "+")
            queue.done(key)
            remaining -= 1
            if remaining == 0:
                finished.set()
            # Yield like a reconcile that awaits I/O would, so workers interleave.
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    started = time.perf_counter()
    for i in range(keys):
        queue.add(f"ns/obj-{i}")
    await finished.wait()
    elapsed = time.perf_counter() - started
    queue.shut_down()
    await asyncio.gather(*tasks)
    return (keys * (2 if readd_while_processing else 1)) / elapsed


def bench_queue(args: argparse.Namespace) -> None:
    print(f"queue: {args.keys} keys, add -> get -> done (Python {sys.version.split()[0]})")
    for workers in (int(n) for n in args.workers.split(",")):
        plain = asyncio.run(queue_throughput(args.keys, workers, readd_while_processing=False))
        chained = asyncio.run(queue_throughput(args.keys, workers, readd_while_processing=True))
        print(
            f"  workers={workers:>3}: {plain:>10,.0f} keys/s"
            f"   (with an add per processed key: {chained:>10,.0f} keys/s)"
        )


# informer ---------------------------------------------------------------------------------------


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def create_config_maps(kubeconfig: Path, namespace: str, count: int) -> float:
    api = await make_api_client(kubeconfig, ApiSettings(qps=5000, burst=5000))
    try:
        await request_json(api, "POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        path = CONFIG_MAPS.collection_path(namespace)
        semaphore = asyncio.Semaphore(64)

        async def create(i: int) -> None:
            body = {
                "metadata": {"name": f"cm-{i:05d}", "labels": {"bench": "informer"}},
                "data": {"volumeHandle": f"0001-0009-site-a-{i:016x}-{uuid.uuid4()}"},
            }
            async with semaphore:
                await request_json(api, "POST", path, body)

        started = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(count)))
        return time.perf_counter() - started
    finally:
        await api.close()


async def informer_sync(kubeconfig: Path, namespace: str, transform: bool) -> dict[str, Any]:
    """Runs in a fresh process, so the RSS figures are the informer's own."""
    before = rss_mib()
    api = await make_api_client(kubeconfig)
    informer = Informer(
        api,
        CONFIG_MAPS,
        namespace=namespace,
        indexers={"handle": lambda obj: [obj.get("data", {}).get("volumeHandle", "")]},
        transform=strip_managed_fields if transform else None,
    )
    started = time.perf_counter()
    task = asyncio.create_task(informer.run())
    try:
        await informer.wait_synced()
        seconds = time.perf_counter() - started
    finally:
        await cancel_and_wait(task)
        await api.close()
    return {
        "objects": len(informer.store),
        "seconds": seconds,
        "rss_before_mib": before,
        "rss_after_mib": rss_mib(),
    }


def bench_informer(args: argparse.Namespace) -> None:
    checkout = Checkout.at(Path.cwd())  # `make bench` runs from the repository's root
    with (
        tempfile.TemporaryDirectory(prefix="bench-kube-") as workdir,
        KubeSandbox(Path(workdir), KubeBinaries.locate(checkout)) as kube,
    ):
        namespace = "bench"
        created = asyncio.run(create_config_maps(kube.kubeconfig, namespace, args.objects))
        print(f"informer: created {args.objects} ConfigMaps in {created:.1f} s")
        for run, strip in itertools.product(range(args.runs), (False, True)):
            argv = [sys.executable, __file__, "informer-child", str(kube.kubeconfig), namespace]
            answer = subprocess.run(
                argv + (["--strip-managed-fields"] if strip else []),
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(answer.stdout)
            variant = "managedFields stripped" if strip else "objects as sent"
            print(
                f"  run {run + 1}, {variant:>22}: initial sync of {figures['objects']} objects in "
                f"{figures['seconds']:.2f} s; RSS {figures['rss_before_mib']:.0f} MiB -> "
                f"{figures['rss_after_mib']:.0f} MiB "
                f"(+{figures['rss_after_mib'] - figures['rss_before_mib']:.0f} MiB)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    queue = commands.add_parser("queue")
    queue.add_argument("--keys", type=int, default=200_000)
    queue.add_argument("--workers", default="1,4,16,64")
    informer = commands.add_parser("informer")
    informer.add_argument("--objects", type=int, default=10_000)
    informer.add_argument("--runs", type=int, default=3)
    child = commands.add_parser("informer-child")
    child.add_argument("kubeconfig", type=Path)
    child.add_argument("namespace")
    child.add_argument("--strip-managed-fields", action="store_true")
    args = parser.parse_args()
    if args.command == "queue":
        bench_queue(args)
    elif args.command == "informer":
        bench_informer(args)
    else:
        print(
            json.dumps(
                asyncio.run(
                    informer_sync(args.kubeconfig, args.namespace, args.strip_managed_fields)
                )
            )
        )


if __name__ == "__main__":
    main()
