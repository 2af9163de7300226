"""`rewrite-pvs`: PV manifests (a backup, an export of the primary) written out with the handles
their volumes have on this, the surviving, site (reconciler.rewrite says from where).

    rewrite-pvs pvs.yaml --local-cluster-id site-b --kubeconfig KC          # dry run: a diff
    rewrite-pvs pvs.yaml ... --write DIR       # one file per PV, DIR/<name>.yaml
    rewrite-pvs pvs.yaml ... -o rewritten.yaml # all in one multi-document file (- for stdout)

What could not be mapped is listed on stderr and left out of what is written; the exit status is
then 1 (2 for bad input). PVs of other drivers and PVs already local are passed through
unchanged, and listed as such.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.cephbindings import cephx_key_problem
from reconciler.cephconn import DEFAULT_TIMEOUT, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.cli.common import EXIT_FAILED, EXIT_USAGE, exit_code, fail
from reconciler.cli.flags import positive_float
from reconciler.errors import InvalidCephKey, InvalidInput, ReconcilerError
from reconciler.journal import DEFAULT_INSTANCE_ID
from reconciler.k8s import ApiStatusError, KubeObject, make_api_client
from reconciler.kinds import CLUSTER_ID_MAPPINGS, VOLUME_HANDLE_MAPPINGS
from reconciler.kubeinputs import list_all
from reconciler.manifests import dump_yaml, of_kind, read_manifests
from reconciler.preflight.checks import DEFAULT_DRIVER
from reconciler.rewrite import Outcome, Rewriter, summary, yaml_diff


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "rewrite-pvs",
        help="write PV manifests out with the volume handles they have on this site",
        description="Read PV manifests (a backup, an export of the failed site) and write them "
        "with the handles their volumes have here: from the Ready VolumeHandleMappings, or "
        "computed from the ClusterIDMappings and this cluster (pool IDs by pool name; only "
        "where this site's journal already resolves the handle, unless --regenerate-journal). "
        "Re-applied, they need no remapping. A dry run (a diff) unless --write or -o. What "
        "cannot be mapped is listed and not written; the exit status is then 1.",
    )
    parser.add_argument("pv_files", nargs="+", type=Path, metavar="PV_FILE")
    parser.add_argument("--local-cluster-id", required=True, help="this site's clusterID")
    parser.add_argument(
        "--kubeconfig", type=Path, help="this site's API server (the mappings of both kinds)"
    )
    parser.add_argument(
        "--handle-mappings-file",
        action="append",
        type=Path,
        default=[],
        help="VolumeHandleMappings from a file (e.g. `kubectl get vhm -o yaml`) instead",
    )
    parser.add_argument(
        "--mappings-file",
        action="append",
        type=Path,
        default=[],
        help="ClusterIDMappings from a file instead",
    )
    parser.add_argument(
        "--from",
        dest="source",
        choices=("auto", "handle-mappings", "compute"),
        default="auto",
        help="auto: a Ready VolumeHandleMapping, else computed (default)",
    )
    parser.add_argument("--driver-name", default=DEFAULT_DRIVER)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--write", type=Path, metavar="DIR", help="write DIR/<pv name>.yaml")
    out.add_argument("-o", "--output", type=Path, metavar="FILE", help="one YAML file (- stdout)")
    ceph = parser.add_argument_group("Ceph (this site's cluster), to compute handles")
    ceph.add_argument("--monitors", help="HOST:PORT[,...]")
    ceph.add_argument("--user", help="Ceph user without 'client.' (a ceph-csi Secret's userID)")
    ceph.add_argument("--key-file", type=Path)
    ceph.add_argument("--rados-namespace", default="", help="ceph-csi's rbd.radosNamespace")
    ceph.add_argument("--instance-id", default=DEFAULT_INSTANCE_ID)
    ceph.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT)
    ceph.add_argument(
        "--regenerate-journal",
        action="store_true",
        help="write this site's journal for computed handles that lack it (as `journal "
        "regenerate` does; only with --write or -o, and only for images primary here)",
    )
    parser.set_defaults(func=cmd_rewrite_pvs)


def cmd_rewrite_pvs(args: argparse.Namespace) -> int:
    ceph_flags = (args.monitors, args.user, args.key_file)
    if any(ceph_flags) and not all(ceph_flags):
        return fail("--monitors, --user and --key-file go together", EXIT_USAGE)
    if args.source == "compute" and not all(ceph_flags):
        return fail("--from compute needs --monitors, --user and --key-file", EXIT_USAGE)
    try:
        pvs, others = of_kind(read_manifests(args.pv_files), "PersistentVolume")
        handle_mappings = (
            of_kind(read_manifests(args.handle_mappings_file), "VolumeHandleMapping")[0]
            if args.handle_mappings_file
            else None
        )
        mappings = (
            of_kind(read_manifests(args.mappings_file), "ClusterIDMapping")[0]
            if args.mappings_file
            else None
        )
        credentials = _credentials(args) if args.user else None
        outcomes, calls = asyncio.run(_rewrite(args, pvs, handle_mappings, mappings, credentials))
    except ReconcilerError as err:
        return fail(str(err), exit_code(err))
    except ApiStatusError as err:
        return fail(str(err), EXIT_FAILED)
    for other in others:
        print(f"rewrite-pvs: left out, not a PersistentVolume: {other}", file=sys.stderr)
    _emit(args, outcomes)
    for outcome in outcomes:
        label = {"rewritten": "rewritten", "unchanged": "unchanged", "unmapped": "NOT MAPPED"}
        print(f"{outcome.pv}: {label[outcome.kind]}: {outcome.how}", file=sys.stderr)
    if calls:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(calls.items()))
        print(f"rewrite-pvs: Ceph calls: {shown}", file=sys.stderr)
    print(summary(outcomes), file=sys.stderr)
    return EXIT_FAILED if any(o.kind == "unmapped" for o in outcomes) else 0


def _credentials(args: argparse.Namespace) -> Credentials:
    try:
        key = args.key_file.read_text().strip()
    except OSError as err:
        raise InvalidInput(f"cannot read {args.key_file}: {err.strerror}") from err
    problem = cephx_key_problem(key)
    if problem is not None:
        raise InvalidCephKey(args.user, problem)
    return Credentials(args.user, key)


async def _rewrite(
    args: argparse.Namespace,
    pvs: list[KubeObject],
    handle_mappings: list[KubeObject] | None,
    mappings: list[KubeObject] | None,
    credentials: Credentials | None,
) -> tuple[list[Outcome], Counter[str]]:
    api = await make_api_client(args.kubeconfig) if args.kubeconfig else None
    connections = ConnectionPool(timeout=args.timeout)
    try:
        if handle_mappings is None:
            handle_mappings = await list_all(api, VOLUME_HANDLE_MAPPINGS) if api else []
        if mappings is None:
            mappings = await list_all(api, CLUSTER_ID_MAPPINGS) if api else []
        ceph = None
        if credentials is not None and args.source != "handle-mappings":
            ceph = await connections.get(args.monitors, credentials)
        writing = args.write is not None or args.output is not None
        rewriter = Rewriter(
            local_cluster_id=args.local_cluster_id,
            driver=args.driver_name,
            handle_mappings=handle_mappings,
            cluster_id_mappings=mappings,
            ceph=ceph,
            rados_namespace=args.rados_namespace,
            instance_id=args.instance_id,
            source=args.source,
            regenerate=(("write" if writing else "plan") if args.regenerate_journal else "no"),
        )
        await rewriter.prepare(pvs)
        return [await rewriter.outcome(pv) for pv in pvs], rewriter.calls
    finally:
        await connections.close()
        if api is not None:
            await api.close()


def _emit(args: argparse.Namespace, outcomes: list[Outcome]) -> None:
    """The diff (dry run), one file per PV (--write) or one file of all (-o)."""
    written = [o.manifest for o in outcomes if o.manifest is not None]
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        for outcome in outcomes:
            if outcome.manifest is not None:
                (args.write / f"{outcome.pv}.yaml").write_text(dump_yaml([outcome.manifest]))
    elif args.output is not None:
        text = dump_yaml(written)
        if str(args.output) == "-":
            sys.stdout.write(text)
        else:
            args.output.write_text(text)
    else:
        for outcome in outcomes:
            sys.stdout.write(yaml_diff(outcome) if outcome.kind == "rewritten" else "")
