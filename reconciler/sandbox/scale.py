"""Large failovers in the sandbox, and the counters a benchmark reads while one runs.

- `create_images`: thousands of images at once through librbd on a thread pool (the `rbd` CLI
  costs a process per image), optionally mirror-enabled (snapshot mode), which on a site without
  a peer makes them primary, as a promoted image is after a failover.
- `clear_journals`: removes ceph-csi's journal objects from a pool (the images stay), as a
  failover leaves it, so two regenerators can be timed on the same volumes one after the other.
- `JournalCounter`: how many volumes the directory object names (each poll is one OSD read).
- `osd_ops`: the OSD's client op counters (`ceph tell osd.0 perf dump`).
- `apiserver_requests`: `apiserver_request_total` by (verb, resource, code) from the API server's
  own /metrics, so requests are counted where they land, whoever sent them.
- `process_usage`: CPU seconds and peak RSS of a process, from /proc.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rados
import rbd

from reconciler.sandbox.ceph import CephCluster
from reconciler.sandbox.kube import KubeSandbox

IMAGE_BYTES = 16 << 20
#: Mirror-enabling an image waits about a second in librbd, but in parallel: many threads.
THREADS = 128
JOURNAL_PREFIX = "csi.volume"
DIRECTORY_PREFIX = "csi.volumes."
#: Omap keys read per op (the OSD's default osd_max_omap_entries_per_request is 1024).
PAGE = 1000


@contextmanager
def admin_ioctx(cluster: CephCluster, pool: str) -> Iterator[Any]:
    """An I/O context on `pool` as client.admin, closed (with its connection) afterwards."""
    client = rados.Rados(conffile=str(cluster.conf))
    client.connect()
    try:
        ioctx = client.open_ioctx(pool)
        try:
            yield ioctx
        finally:
            ioctx.close()
    finally:
        client.shutdown()


def create_images(
    cluster: CephCluster, pool: str, names: Sequence[str], *, mirrored: bool, threads: int = THREADS
) -> None:
    """Images `names` in `pool` (layering, exclusive-lock; 16 MiB); `mirrored` enables snapshot
    mirroring on each (the pool must be in image mirror mode)."""
    features = rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    with admin_ioctx(cluster, pool) as ioctx:

        def create(name: str) -> None:
            rbd.RBD().create(ioctx, name, IMAGE_BYTES, old_format=False, features=features)
            if mirrored:
                with rbd.Image(ioctx, name) as image:
                    image.mirror_image_enable(rbd.RBD_MIRROR_IMAGE_MODE_SNAPSHOT)

        with concurrent.futures.ThreadPoolExecutor(threads) as pool_threads:
            # list() re-raises the first failure.
            list(pool_threads.map(create, names))


def clear_journals(cluster: CephCluster, pool: str, threads: int = 32) -> int:
    """Remove every ceph-csi journal object of `pool` (directory and per-volume objects);
    returns how many were removed."""
    with admin_ioctx(cluster, pool) as ioctx:
        names = [obj.key for obj in ioctx.list_objects() if obj.key.startswith(JOURNAL_PREFIX)]
        with concurrent.futures.ThreadPoolExecutor(threads) as pool_threads:
            list(pool_threads.map(ioctx.remove_object, names))
    return len(names)


class JournalCounter:
    """Counts the request names in a journal's directory object: one OSD read op per page of
    keys (the OSD answers at most `osd_max_omap_entries_per_request`, 1024, per op); `reads`
    counts the ops."""

    def __init__(self, cluster: CephCluster, pool: str, instance_id: str = "default") -> None:
        self._client = rados.Rados(conffile=str(cluster.conf))
        self._client.connect()
        self._ioctx = self._client.open_ioctx(pool)
        self.oid = f"{DIRECTORY_PREFIX}{instance_id}"
        self.reads = 0

    def count(self) -> int:
        total, after = 0, ""
        while True:
            self.reads += 1
            try:
                with rados.ReadOpCtx() as op:
                    pages, _ = self._ioctx.get_omap_keys(op, after, PAGE)
                    self._ioctx.operate_read_op(op, self.oid)
                    keys = [key for key, _ in pages]
            except rados.ObjectNotFound:
                return 0
            total += len(keys)
            if len(keys) < PAGE:
                return total
            after = keys[-1]

    def close(self) -> None:
        self._ioctx.close()
        self._client.shutdown()


@dataclass(frozen=True)
class OsdOps:
    """Client ops the OSD served: all, reads, writes, and read-modify-writes (a write carrying
    a comparison, such as omap_cmp, or a create with an exclusive flag counts there)."""

    ops: int
    reads: int
    writes: int
    read_writes: int

    def __sub__(self, other: OsdOps) -> OsdOps:
        return OsdOps(
            self.ops - other.ops,
            self.reads - other.reads,
            self.writes - other.writes,
            self.read_writes - other.read_writes,
        )


def osd_ops(cluster: CephCluster, osd: int = 0) -> OsdOps:
    counters = json.loads(cluster.ceph("tell", f"osd.{osd}", "perf", "dump"))["osd"]
    return OsdOps(counters["op"], counters["op_r"], counters["op_w"], counters["op_rw"])


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

#: (verb, resource[/subresource], code) -> requests
Requests = Counter[tuple[str, str, str]]


def apiserver_requests(kube: KubeSandbox) -> Requests:
    """`apiserver_request_total` as the API server counts it now."""
    text = kube.request("GET", "/metrics")
    counts: Requests = Counter()
    for line in str(text).splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] != "apiserver_request_total":
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        resource = labels.get("resource", "")
        if resource and labels.get("subresource"):
            resource += "/" + labels["subresource"]
        counts[(labels.get("verb", ""), resource, labels.get("code", ""))] += int(
            float(match["value"])
        )
    return counts


def requests_between(before: Requests, after: Requests) -> Requests:
    delta: Requests = Counter()
    for key, value in after.items():
        if value - before.get(key, 0) > 0:
            delta[key] = value - before.get(key, 0)
    return delta


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    peak_rss_bytes: int


def process_usage(pid: int) -> Usage:
    """User + system CPU seconds and VmHWM (peak resident set) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    peak = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return Usage(cpu, peak)
