"""`journal regenerate|show`: ceph-csi's OMAP journal by hand, for admins failing over."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from reconciler.cephconn import CephConnection
from reconciler.cli.common import EXIT_USAGE, add_ceph_flags, exit_code, fail, with_ceph
from reconciler.errors import ReconcilerError
from reconciler.handle import VolumeHandle
from reconciler.journal import (
    DEFAULT_INSTANCE_ID,
    KEY_JOURNALPOOL,
    KEY_VOLNAME,
    directory_object,
    name_key,
    volume_object,
)
from reconciler.regenerate import LocalCluster, regenerate
from reconciler.volume import CSIVolume


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "journal",
        help="regenerate or show ceph-csi's OMAP journal for a volume",
        description="ceph-csi keeps a RADOS OMAP journal beside each image; rbd-mirror does not "
        "copy it. These commands rebuild it on the surviving cluster and show it.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    regen = actions.add_parser(
        "regenerate",
        help="rebuild one PV's journal on this cluster and print the new handle (JSON)",
        description="Read a PV (YAML or JSON), keep its volume's UUID, find the image and its "
        "pool on this cluster by name, and write the journal keys ceph-csi expects. Prints "
        "oldHandle, newHandle, imageName and `written` (the keys written; empty when the "
        "journal was already right). --dry-run writes nothing and lists what would be written.",
    )
    regen.add_argument("pv_file", type=Path, metavar="PV_FILE")
    regen.add_argument(
        "--cluster-id", required=True, help="this cluster's clusterID in ceph-csi's config.json"
    )
    regen.add_argument(
        "--instance-id",
        default=DEFAULT_INSTANCE_ID,
        help="ceph-csi's --instanceid (default %(default)s)",
    )
    regen.add_argument("--dry-run", action="store_true", help="plan only; write nothing")
    add_ceph_flags(regen)
    regen.set_defaults(func=cmd_regenerate)

    show = actions.add_parser("show", help="print the journal entries of one volume (JSON)")
    show.add_argument("handle", help="a handle of this cluster (as `regenerate` printed)")
    show.add_argument("--instance-id", default=DEFAULT_INSTANCE_ID)
    add_ceph_flags(show)
    show.set_defaults(func=cmd_show)


def cmd_regenerate(args: argparse.Namespace) -> int:
    try:
        manifest = yaml.safe_load(args.pv_file.read_text())
    except (OSError, yaml.YAMLError) as err:
        return fail(f"cannot read PV from {args.pv_file}: {err}", EXIT_USAGE)
    if not isinstance(manifest, dict):
        return fail(f"{args.pv_file} does not hold a PersistentVolume", EXIT_USAGE)
    local = LocalCluster(args.cluster_id, args.rados_namespace, args.instance_id)
    try:
        volume = CSIVolume.from_pv(manifest)
        result = with_ceph(
            args,
            lambda ceph: regenerate(
                ceph,
                volume,
                local,
                dry_run=args.dry_run,
            ),
        )
    except ReconcilerError as err:
        return fail(str(err), exit_code(err))
    print(json.dumps(result.to_json(), indent=2))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    try:
        handle = VolumeHandle.decode(args.handle)
        shown = with_ceph(args, lambda ceph: _show(ceph, handle, args))
    except ReconcilerError as err:
        return fail(str(err), exit_code(err))
    print(json.dumps(shown, indent=2))
    return 0


async def _show(ceph: CephConnection, handle: VolumeHandle, args: argparse.Namespace) -> Any:
    ns = args.rados_namespace
    pool = await ceph.pool_name(handle.pool_id)
    oid = volume_object(handle.object_uuid)
    values = await ceph.omap_get(pool, ns, oid)
    text = {k: v.decode(errors="replace") for k, v in (values or {}).items()}
    shown: dict[str, Any] = {
        "handle": args.handle,
        "pool": pool,
        "volumeObject": {"name": oid, "exists": values is not None, "omap": text},
    }
    if KEY_VOLNAME in text:
        journal_pool = pool
        if KEY_JOURNALPOOL in text:
            journal_pool = await ceph.pool_name(int(text[KEY_JOURNALPOOL], 16))
        directory = directory_object(args.instance_id)
        key = name_key(text[KEY_VOLNAME])
        entry = await ceph.omap_get(journal_pool, ns, directory, [key])
        found = (entry or {}).get(key)
        shown["directory"] = {
            "pool": journal_pool,
            "name": directory,
            "key": key,
            "value": found.decode(errors="replace") if found is not None else None,
        }
    return shown
