"""`exporter`: per-image mirroring lag of this (secondary) site on /metrics, until SIGTERM.

A mode of its own rather than a collector in `run`: it is wanted before any failover, on the
site that is only a mirror, where the controller has nothing to do; it needs read access to
Ceph only (no Kubernetes writes, no Lease: every replica lists, and each scrape is served from
its cache); and a slow Ceph listing cannot delay the controller's /healthz or its reconciles.

    ceph listings (3 a pool per --interval) ──> cache ──> /metrics (any number of scrapes)
    PV informer (optional: --kubeconfig, or in-cluster) ──> pv, pvc_namespace, pvc_name labels
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from reconciler.cephconn import CephConnection, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.cli.common import EXIT_USAGE, add_ceph_flags, fail
from reconciler.cli.flags import host_port, positive_float, positive_int
from reconciler.controllers.volumes import DEFAULT_DRIVER
from reconciler.k8s import (
    HealthServer,
    InformerSet,
    KubeObject,
    ServerSettings,
    configure_logging,
    make_api_client,
)
from reconciler.kinds import PERSISTENT_VOLUMES, pv_trimmer
from reconciler.lag import LagSettings, MirrorLag

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = ("0.0.0.0", 9287)


def pool_spec(text: str) -> tuple[str, str | None]:
    """POOL or POOL/RADOS_NAMESPACE."""
    pool, _, namespace = text.partition("/")
    if not pool:
        raise argparse.ArgumentTypeError(f"{text!r} is not POOL or POOL/NAMESPACE")
    return pool, namespace if "/" in text else None


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "exporter",
        help="serve per-image mirroring lag (snapshot age) of this site as Prometheus metrics",
        description="On the secondary site: list each pool's images and rbd-mirror status every "
        "--interval (pool-level listings, not one call per image) and serve, per "
        "non-primary image, the age of its newest completely synced mirror snapshot, labelled "
        "with its PV and PVC, and the RPO to compare it with. Runs until SIGTERM or SIGINT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pool",
        dest="pools",
        action="append",
        required=True,
        type=pool_spec,
        metavar="POOL[/NAMESPACE]",
        help="a mirrored pool to watch (repeat for several); NAMESPACE defaults to "
        "--rados-namespace",
    )
    parser.add_argument(
        "--rpo",
        type=positive_float,
        default=LagSettings.rpo,
        help="seconds of data loss the admin accepts: exported as rbd_mirror_reconciler_"
        "rpo_seconds, which the RBDMirrorImageLagOverRPO alert compares each image's age with",
    )
    parser.add_argument(
        "--interval",
        type=positive_float,
        default=LagSettings.interval,
        help="seconds between listings; scrapes in between are served from the last one",
    )
    parser.add_argument(
        "--info-interval",
        type=positive_float,
        default=LagSettings.info_interval,
        help="seconds a mirror info listing is kept (librbd reads every image's header for one; "
        "new images in between are asked one by one, promotions show in the status)",
    )
    parser.add_argument(
        "--max-snapshot-reads",
        type=positive_int,
        default=LagSettings.max_snapshot_reads,
        help="images a listing may open to read snapshot times their status lacks",
    )
    parser.add_argument(
        "--listen-address",
        type=host_port,
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help="where /metrics, /healthz and /readyz listen (port 0 picks one)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="API server whose PVs label the images (unset: in-cluster if running in a pod, "
        "else no PV labels)",
    )
    parser.add_argument(
        "--driver-name", default=DEFAULT_DRIVER, help="CSI driver of the PVs that label images"
    )
    parser.add_argument("--log-level", type=str.upper, default="INFO")
    add_ceph_flags(parser)
    parser.set_defaults(func=cmd_exporter)


def cmd_exporter(args: argparse.Namespace) -> int:
    try:
        key = args.key_file.read_text().strip()
    except OSError as err:
        return fail(f"cannot read --key-file {args.key_file}: {err.strerror}", EXIT_USAGE)
    configure_logging(args.log_level)
    settings = LagSettings(
        pools=tuple(dict.fromkeys((p, ns or args.rados_namespace) for p, ns in args.pools)),
        rpo=args.rpo,
        interval=args.interval,
        info_interval=args.info_interval,
        max_snapshot_reads=args.max_snapshot_reads,
        driver=args.driver_name,
    )
    asyncio.run(serve(args, settings, Credentials(args.user, key)))
    return 0


async def serve(
    args: argparse.Namespace,
    settings: LagSettings,
    credentials: Credentials,
    stop: asyncio.Event | None = None,
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    connections = ConnectionPool(timeout=args.timeout)

    async def connect() -> CephConnection:
        return await connections.get(args.monitors, credentials)

    api_client = None
    informers = None
    volumes = None
    if args.kubeconfig is not None or "KUBERNETES_SERVICE_HOST" in os.environ:
        api_client = await make_api_client(args.kubeconfig)
        informers = InformerSet(api_client)
        store = informers.informer(PERSISTENT_VOLUMES, transform=pv_trimmer(args.driver_name)).store

        def pv_objects() -> Iterable[KubeObject]:
            return store.objects()

        volumes = pv_objects
        informers.start()
    else:
        log.info("no API server: images are not labelled with their PVs")
    lag = MirrorLag(connect, settings, volumes)
    registry = CollectorRegistry()
    registry.register(lag)
    readiness = {"pool-listing": lag.listed_once}
    if informers is not None:
        readiness["persistentvolumes"] = informers.has_synced
    host, port = args.listen_address
    server = HealthServer(registry, readiness, ServerSettings(host, port))
    await server.start()
    log.info("serving metrics", extra={"address": f"{host}:{server.port}"})
    try:
        if informers is not None:
            # Labels from the first listing on, where the PVs can be had within a few seconds.
            try:
                await asyncio.wait_for(informers.wait_synced(), 10)
            except TimeoutError:
                log.warning("PVs not listed within 10 s: images unlabelled until they are")
        await lag.run(stop)
    finally:
        await server.stop()
        if informers is not None:
            await informers.stop()
        if api_client is not None:
            await api_client.close()
        await connections.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
