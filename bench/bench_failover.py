"""Benchmark: a failover of N static PVs, ceph-csi's own journal regenerator against this project.

    .venv/bin/python bench/bench_failover.py [--volumes 100 1000] [--no-mirror]
        [--profile DIR] [--markdown docs/benchmarks.md]

Per N, in a fresh world: one real Ceph site (site-b: one mon, one memstore OSD) holding N images,
mirror-enabled and primary as after a promotion, with no journal; a real kube-apiserver holding N
static PVs whose handles name the failed site (site-a, another pool ID), ceph-csi's Secret and
config and one ClusterIDMapping. Then, one after the other on the same volumes:

1. baseline: `cephcsi --type=controller` v3.12.2, the journal regenerator ceph-csi's Helm chart
   deploys, with a cluster-mapping.json for the old handles; it writes journals only;
2. this project, `rbd-mirror-reconciler run` with default flags, as its own ServiceAccount, after
   the journals were cleared again;
3. the project restarted on the state it converged to: it should write nothing at all.

Times run from the process' start until every journal is in place (the directory object names N
volumes) and until every VolumeHandleMapping is Ready (watched). Requests are the API server's own
`apiserver_request_total` (everyone's, so also the watch the benchmark itself holds), RADOS ops
the OSD's own counters minus the benchmark's polls. Figures, not pass/fail: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.k8s import make_api_client
from reconciler.sandbox import site
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.csidriver import build_cephcsi, config_json, start_journal_regenerator
from reconciler.sandbox.failover import (
    LOCAL,
    NAMESPACE,
    POOL,
    REMOTE,
    REMOTE_POOL_ID,
    ReadyTracker,
    World,
    cpu_by_daemon,
    server_cpu,
    start_world,
    stop_world,
)
from reconciler.sandbox.kube import KubeBinaries
from reconciler.sandbox.scale import (
    JournalCounter,
    OsdOps,
    Requests,
    Usage,
    apiserver_requests,
    clear_journals,
    osd_ops,
    process_usage,
    requests_between,
)

WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE")
#: Resources the controller writes (ceph-csi's regenerator writes none).
OURS = ("volumehandlemappings", "clusteridmappings", "events", "configmaps", "persistentvolumes")


@dataclass
class Run:
    name: str
    volumes: int
    journals: float | None = None
    ready: float | None = None
    requests: Requests = field(default_factory=Counter)
    osd: OsdOps = field(default_factory=lambda: OsdOps(0, 0, 0, 0))
    usage: Usage | None = None
    readyz_max: float = 0.0
    server_cpu: float = 0.0
    """CPU seconds kube-apiserver and etcd spent meanwhile."""
    load: float = field(default_factory=lambda: os.getloadavg()[0])
    """The machine's 1-minute load average when the run started."""

    @property
    def seconds(self) -> float | None:
        done = [t for t in (self.journals, self.ready) if t is not None]
        return max(done) if done else None

    def per_verb(self) -> dict[str, float]:
        """API requests per PV by verb, over API resources (not /metrics, /readyz)."""
        counts: Counter[str] = Counter()
        for (verb, resource, _), value in self.requests.items():
            if resource:
                counts[verb] += value
        return {verb: counts[verb] / self.volumes for verb in sorted(counts)}

    def throttled(self) -> int:
        return sum(v for (_, _, code), v in self.requests.items() if code == "429")

    def our_writes(self) -> Counter[str]:
        """Writes to what the controller writes, by verb and resource: the API server's own
        lease and endpoints upkeep left out."""
        writes: Counter[str] = Counter()
        for (verb, resource, _), value in self.requests.items():
            if verb in WRITE_VERBS and resource.split("/")[0] in OURS:
                writes[f"{verb} {resource}"] += value
        return writes


# measuring ---------------------------------------------------------------------------------------


async def measure(
    world: World,
    run: Run,
    start: Any,
    *,
    track_ready: bool,
    deadline: float,
) -> Any:
    """Call `start()` (which starts the process under test and returns a handle to it), then
    poll until the journals (and, with `track_ready`, the mappings) are done or `deadline`
    seconds have passed."""
    api = await make_api_client(world.kube.kubeconfig)
    tracker = ReadyTracker(api)
    watching = asyncio.create_task(tracker.informer.run())
    counter = JournalCounter(world.cluster, POOL)
    n = run.volumes
    interval = 0.1 if n <= 1000 else 0.25
    try:
        await tracker.informer.wait_synced()
        requests_before = await asyncio.to_thread(apiserver_requests, world.kube)
        server_before = server_cpu(world.kube)
        daemons_before = cpu_by_daemon(world)
        osd_before = await asyncio.to_thread(osd_ops, world.cluster)
        reads_before = counter.reads
        began = time.monotonic()
        handle = await asyncio.to_thread(start)
        while time.monotonic() - began < deadline:
            probe = time.monotonic()
            await asyncio.to_thread(world.kube.request, "GET", "/readyz")
            run.readyz_max = max(run.readyz_max, time.monotonic() - probe)
            if run.journals is None and await asyncio.to_thread(counter.count) >= n:
                run.journals = time.monotonic() - began
            if track_ready and run.ready is None and len(tracker.ready) >= n:
                run.ready = time.monotonic() - began
            if run.journals is not None and (run.ready is not None or not track_ready):
                break
            await asyncio.sleep(interval)
        run.usage = handle_usage(handle)
        run.server_cpu = server_cpu(world.kube) - server_before
        daemons_after = cpu_by_daemon(world)
        print(
            "  CPU s meanwhile: "
            + ", ".join(
                f"{k} {v - daemons_before.get(k, 0):.1f}" for k, v in daemons_after.items()
            ),
            flush=True,
        )
        run.requests = requests_between(
            requests_before, await asyncio.to_thread(apiserver_requests, world.kube)
        )
        polls = counter.reads - reads_before
        spent = await asyncio.to_thread(osd_ops, world.cluster) - osd_before
        run.osd = OsdOps(spent.ops - polls, spent.reads - polls, spent.writes, spent.read_writes)
        return handle
    finally:
        counter.close()
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await api.close()


def handle_usage(handle: Any) -> Usage:
    pid = handle.pid if hasattr(handle, "pid") else handle.process.pid
    return process_usage(pid)


def run_cephcsi(world: World, binary: Path) -> Run:
    run = Run("ceph-csi v3.12.2 regenerator (journals only)", len(world.volumes))
    mapping = [
        {
            "clusterIDMapping": {REMOTE: LOCAL},
            "RBDPoolIDMapping": [{str(REMOTE_POOL_ID): str(world.local_pool_id)}],
        }
    ]

    def start() -> Any:
        return start_journal_regenerator(
            binary,
            world.work / "cephcsi",
            kubeconfig=world.kube.kubeconfig,
            namespace=NAMESPACE,
            config=config_json({LOCAL: world.cluster.monitors}),
            cluster_mapping=json.dumps(mapping),
        )

    regenerator = asyncio.run(measure(world, run, start, track_ready=False, deadline=timeout(run)))
    regenerator.stop()
    # Its Lease would make the next start wait out the lease duration.
    lease = (
        f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/rbd.csi.ceph.com-{NAMESPACE}"
    )
    with contextlib.suppress(Exception):
        world.kube.request("DELETE", lease)
    return run


def timeout(run: Run) -> float:
    return max(180.0, run.volumes / 10)


def run_project(world: World, profile: Path | None, flags: list[str]) -> tuple[Run, Run]:
    """The first pass over fresh PVs, then a restart over the converged state."""
    controller = site.ControllerProcess(
        kubeconfig=world.kube.service_account_kubeconfig(
            NAMESPACE, site.SERVICE_ACCOUNT, create=False
        ),
        log_dir=world.work / "controller",
        local_cluster_id=LOCAL,
        namespace=NAMESPACE,
        extra_args=flags,
    )
    controller.log_dir.mkdir(parents=True, exist_ok=True)
    name = (
        f"rbd-mirror-reconciler {' '.join(flags)}"
        if flags
        else "rbd-mirror-reconciler, default flags"
    )
    first = Run(name, len(world.volumes))
    spy: subprocess.Popen[bytes] | None = None

    def start() -> site.ControllerProcess:
        nonlocal spy
        controller.start()
        if profile is not None:
            spy = start_profiler(controller, profile / f"controller-{first.volumes}.txt")
        return controller

    try:
        asyncio.run(measure(world, first, start, track_ready=True, deadline=timeout(first)))
        controller.stop()
        if spy is not None:
            spy.wait(timeout=60)
        again = Run(
            "restarted on the converged state (s: until every PV was looked at)", first.volumes
        )
        asyncio.run(
            measure(world, again, lambda: restart(controller, again), track_ready=False,
                    deadline=timeout(again))
        )  # fmt: skip
        again.journals = None  # they were in place before it started
        return first, again
    finally:
        controller.stop()


def restart(controller: site.ControllerProcess, run: Run) -> site.ControllerProcess:
    """Start the controller again and return once it has looked at every PV (`run.ready` says
    when), plus a moment for anything it would write afterwards."""
    began = time.monotonic()
    controller.start()
    deadline = began + 600
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if reconciled_all(controller.metrics(), run.volumes):
                run.ready = time.monotonic() - began
                time.sleep(3)
                return controller
        time.sleep(0.2)
    raise TimeoutError("the restarted controller did not reconcile every PV")


def reconciled_all(metrics: str, count: int) -> bool:
    done = 0.0
    depth = None
    for line in metrics.splitlines():
        if line.startswith('controller_runtime_reconcile_total{controller="persistentvolume"'):
            done += float(line.rsplit(" ", 1)[1])
        if line.startswith('workqueue_depth{name="persistentvolume"}'):
            depth = float(line.rsplit(" ", 1)[1])
    return done >= count and depth == 0


def start_profiler(controller: site.ControllerProcess, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (installed into the venv by hand for profiling; not a dependency) on the
    controller, collapsed stacks into `out`."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None or controller.process is None:
        print("  (no py-spy in the venv: not profiling)")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(controller.process.pid), "--rate", "250",
         "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


# reporting ---------------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row(run: Run) -> str:
    n = run.volumes
    rate = f"{n / run.seconds:.0f}" if run.seconds else "-"
    verbs = ", ".join(f"{verb} {count:.2f}" for verb, count in run.per_verb().items())
    rados = f"{run.osd.ops / n:.1f} ({(run.osd.writes + run.osd.read_writes) / n:.1f} w)"
    usage = run.usage
    cpu = f"{usage.cpu_seconds:.1f} ({usage.cpu_seconds / n * 1000:.1f} ms)" if usage else "-"
    rss = f"{usage.peak_rss_bytes / 2**20:.0f}" if usage else "-"
    return (
        f"| {n} | {run.name} | {seconds(run.journals)} | {seconds(run.ready)} | {rate} | {verbs} "
        f"| {rados} | {cpu} | {rss} | {run.server_cpu:.1f} | {run.throttled()} "
        f"| {run.readyz_max * 1000:.0f} | {run.load:.1f} |"
    )


HEADER = (
    "| N | run | s to journals | s to all Ready | PV/s | API requests per PV, by verb "
    "| RADOS ops per PV (writes) | CPU s (per PV) | peak RSS MiB | API server + etcd CPU s "
    "| 429s | max /readyz ms | load |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def detail(run: Run) -> list[str]:
    """Writes by verb and resource, per PV."""
    lines = []
    for (verb, resource, code), count in sorted(run.requests.items()):
        if resource and verb in (*WRITE_VERBS, "GET"):
            lines.append(f"    {verb:6} {resource:32} {code}: {count / run.volumes:.3f} per PV")
    return lines


def report(runs: list[Run], markdown: Path | None, args: argparse.Namespace) -> None:
    load = os.getloadavg()
    table = "\n".join([HEADER, *(row(r) for r in runs)])
    print("\n" + table)
    for run in runs:
        print(f"\n  {run.name}, N={run.volumes}: API GETs and writes")
        print("\n".join(detail(run)) or "    none")
    writes = "\n".join(
        f"- N={run.volumes}, {run.name}: "
        + (", ".join(f"{k} {v}" for k, v in sorted(run.our_writes().items())) or "none")
        + f"; RADOS writes {run.osd.writes + run.osd.read_writes}"
        for run in runs
    )
    print("\nAPI writes to the controller's resources, in total:\n" + writes)
    if markdown is None:
        return
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench_failover:begin -->\n## Failover at scale (`bench/bench_failover.py`)\n\n"
        f"Measured {stamp} on this 2-core machine, load average {load[0]:.2f} "
        f"{load[1]:.2f} {load[2]:.2f} at the end, by (`make bench` runs the same)\n\n"
        f"    .venv/bin/python {' '.join(sys.argv)}\n\n"
        f"{table}\n\nAPI writes to the controller's resources (VolumeHandleMappings, "
        f"ClusterIDMappings, Events, ConfigMaps, PVs), in total per run, and RADOS writes:\n\n"
        f"{writes}\n<!-- bench_failover:end -->\n"
    )
    text = markdown.read_text() if markdown.exists() else "# Benchmarks\n\n"
    begin, end = "<!-- bench_failover:begin -->", "<!-- bench_failover:end -->\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    markdown.write_text(text)
    print(f"\nwritten to {markdown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--no-mirror", action="store_true", help="images not mirror-enabled")
    parser.add_argument("--no-baseline", action="store_true", help="skip ceph-csi's regenerator")
    parser.add_argument("--profile", type=Path, help="py-spy the controller into this folder")
    parser.add_argument("--markdown", type=Path, help="write the table into this Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument(
        "--controller-flags",
        default="",
        help="extra flags for `rbd-mirror-reconciler run`, e.g. '--workers 64' (default: none)",
    )
    args = parser.parse_args()
    checkout = Checkout.at(Path.cwd())
    binaries = KubeBinaries.locate(checkout)
    binary = None if args.no_baseline else build_cephcsi(checkout)
    runs: list[Run] = []
    for count in args.volumes:
        print(f"\nN={count}: load average {os.getloadavg()[0]:.2f}", flush=True)
        base = Path(tempfile.mkdtemp(prefix=f"bench-failover-{count}-"))
        world = start_world(base, binaries, checkout, count, mirrored=not args.no_mirror)
        try:
            if binary is not None:
                runs.append(run_cephcsi(world, binary))
                print(f"  {row(runs[-1])}", flush=True)
                clear_journals(world.cluster, POOL)
            for run in run_project(world, args.profile, args.controller_flags.split()):
                runs.append(run)
                print(f"  {row(run)}", flush=True)
        finally:
            stop_world(world)
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
    report(runs, args.markdown, args)


if __name__ == "__main__":
    main()
