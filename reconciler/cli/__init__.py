"""The `rbd-mirror-reconciler` command. Each subcommand lives in a module of its own here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reconciler import __version__
from reconciler.cli import (
    exporter,
    handle,
    journal,
    preflight,
    resolve,
    rewrite_pvs,
    run,
    sandbox,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rbd-mirror-reconciler",
        description=(
            "Make ceph-csi RBD volumes usable after an rbd-mirror failover: regenerate the "
            "ceph-csi OMAP journal on the surviving Ceph cluster and record which new volume "
            "handle each old one stands for."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    exporter.register(commands)
    handle.register(commands)
    journal.register(commands)
    preflight.register(commands)
    resolve.register(commands)
    rewrite_pvs.register(commands)
    run.register(commands)
    sandbox.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
