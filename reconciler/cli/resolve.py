"""`resolve HANDLE`: which local volume an old volume handle stands for, as a CSI driver sees it.

Reads only the API server (VolumeHandleMappings, ClusterIDMappings, ceph-csi-config), never Ceph.
Exit status: 0 resolved, 2 a malformed handle, 1 not found or the caches could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from reconciler.cli.common import EXIT_FAILED, EXIT_USAGE, fail
from reconciler.csi import ResolvedVolume, ResolveError, Resolver
from reconciler.csiconfig import DEFAULT_CONFIGMAP
from reconciler.errors import InvalidHandle
from reconciler.handle import VolumeHandle
from reconciler.k8s import make_api_client

DEFAULT_SYNC_TIMEOUT = 30.0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "resolve",
        help="print the local volume an old (pre-failover) volume handle stands for",
        description="Resolve a ceph-csi volume handle as the CSI-side client does: an exact Ready "
        "VolumeHandleMapping, else the Ready ClusterIDMappings, else the handle itself when its "
        "clusterID is local. Talks to the API server only, never to Ceph.",
    )
    parser.add_argument("handle", metavar="HANDLE")
    parser.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster service account)"
    )
    parser.add_argument("--csi-config-name", default=DEFAULT_CONFIGMAP)
    parser.add_argument(
        "--csi-config-namespace", required=True, help="namespace of ceph-csi-config"
    )
    parser.add_argument("-o", "--output", choices=("json", "table"), default="table")
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=DEFAULT_SYNC_TIMEOUT,
        help="seconds to wait for the caches to load (default %(default)s)",
    )
    parser.set_defaults(func=cmd_resolve)


def cmd_resolve(args: argparse.Namespace) -> int:
    try:
        # Before any request: a malformed handle is the caller's mistake whatever the cluster says.
        VolumeHandle.decode(args.handle)
    except InvalidHandle as err:
        return fail(str(err), EXIT_USAGE)
    try:
        volume = asyncio.run(_resolve(args))
    except ResolveError as err:
        return fail(str(err), EXIT_FAILED)
    print(json.dumps(volume.to_json(), indent=2) if args.output == "json" else _table(volume))
    return 0


async def _resolve(args: argparse.Namespace) -> ResolvedVolume:
    api_client = await make_api_client(args.kubeconfig)
    try:
        async with Resolver(
            api_client,
            csi_config_namespace=args.csi_config_namespace,
            csi_config_name=args.csi_config_name,
        ) as resolver:
            return await resolver.resolve(args.handle, sync_timeout=args.sync_timeout)
    finally:
        await api_client.close()


def _table(volume: ResolvedVolume) -> str:
    rows = []
    for name, value in volume.to_json().items():
        text = ",".join(map(str, value)) if isinstance(value, list) else value
        rows.append((name, "" if text is None else str(text)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
