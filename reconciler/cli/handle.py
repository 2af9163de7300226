"""`handle decode|encode`: ceph-csi volume handles by hand."""

from __future__ import annotations

import argparse
import json
from typing import Any

from reconciler.cli.common import EXIT_USAGE, fail
from reconciler.errors import InvalidHandle
from reconciler.handle import VolumeHandle


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "handle",
        help="decode or encode a ceph-csi volume handle",
        description="ceph-csi volume handles (encoding version 1): "
        "<version>-<clusterID length>-<clusterID>-<pool ID>-<object UUID>.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    decode = actions.add_parser("decode", help="print a handle's fields as JSON")
    decode.add_argument("handle")
    decode.set_defaults(func=cmd_decode)
    encode = actions.add_parser("encode", help="print the handle for the given fields")
    encode.add_argument("--cluster-id", required=True)
    encode.add_argument("--pool-id", required=True, type=int)
    encode.add_argument("--uuid", required=True, help="the image's UUID (csi-vol-<uuid>)")
    encode.set_defaults(func=cmd_encode)


def cmd_decode(args: argparse.Namespace) -> int:
    try:
        handle = VolumeHandle.decode(args.handle)
    except InvalidHandle as err:
        return fail(str(err), EXIT_USAGE)
    print(json.dumps(handle.to_json()))
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    try:
        print(VolumeHandle(args.cluster_id, args.pool_id, args.uuid).encode())
    except InvalidHandle as err:
        return fail(str(err), EXIT_USAGE)
    return 0
