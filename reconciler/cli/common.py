"""Pieces every subcommand shares: error reporting and the Ceph connection flags."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from reconciler.cephconn import DEFAULT_TIMEOUT, CephConnection, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.errors import InvalidInput, ReconcilerError

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int) -> int:
    print(f"rbd-mirror-reconciler: {message}", file=sys.stderr)
    return code


def exit_code(err: ReconcilerError) -> int:
    return EXIT_USAGE if isinstance(err, InvalidInput) else EXIT_FAILED


def add_ceph_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ceph connection (the local, surviving cluster)")
    group.add_argument(
        "--monitors",
        required=True,
        metavar="HOST:PORT[,...]",
        help="monitor addresses, as in ceph-csi's config.json",
    )
    group.add_argument(
        "--user", required=True, help="Ceph user without 'client.' (a ceph-csi Secret's userID)"
    )
    group.add_argument(
        "--key-file",
        required=True,
        type=Path,
        help="file holding the user's key (a ceph-csi Secret's userKey)",
    )
    group.add_argument(
        "--rados-namespace",
        default="",
        help="RADOS namespace of the journal (ceph-csi's rbd.radosNamespace)",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds before an unreachable monitor or OSD fails the call (default %(default)s)",
    )


def with_ceph(args: argparse.Namespace, work: Callable[[CephConnection], Awaitable[T]]) -> T:
    """Connect with the command's flags, run `work`, always disconnect."""

    async def session() -> T:
        key = args.key_file.read_text().strip()
        pool = ConnectionPool(timeout=args.timeout)
        try:
            connection = await pool.get(args.monitors, Credentials(args.user, key))
            return await work(connection)
        finally:
            await pool.close()

    return asyncio.run(session())
