"""`preflight`: before a disaster, would a failover to this (secondary) site work for each PV,
and how much would it lose? Read-only; safe to run at any time.

    PVs to protect ─ a live API server (--pvs-kubeconfig, else --kubeconfig) or --pv-file
    this site      ─ --kubeconfig: ClusterIDMappings, ceph-csi's ConfigMaps, the PVs' Secrets
                     (or --mappings-file, --csi-config-file, --cluster-mapping-file, --user)
                   ─ Ceph: listings, caps probe, the journal plan (reconciler.preflight.checks)

Exit status: 0 every PV ready, 1 some PV not ready (or Ceph/the API server failed), 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubernetes_asyncio.client import ApiClient

from reconciler.cephbindings import cephx_key_problem
from reconciler.cephconn import DEFAULT_TIMEOUT, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.cli.common import EXIT_FAILED, EXIT_USAGE, exit_code, fail
from reconciler.cli.flags import duration, positive_float, positive_int
from reconciler.csiconfig import LAYOUTS, layout
from reconciler.errors import InvalidCephKey, InvalidInput, InvalidVolume, ReconcilerError
from reconciler.journal import DEFAULT_INSTANCE_ID
from reconciler.k8s import ApiStatusError, KubeObject, make_api_client
from reconciler.kinds import CLUSTER_ID_MAPPINGS, PERSISTENT_VOLUMES
from reconciler.kubeinputs import config_map_key, list_all, secret_credentials
from reconciler.manifests import name_of, of_kind, read_manifests
from reconciler.preflight.checks import DEFAULT_DRIVER, Inputs, Preflight, PreflightSettings
from reconciler.preflight.report import Report
from reconciler.volume import CSIVolume

#: Seconds between progress lines on stderr (none for a run shorter than that).
PROGRESS_EVERY = 2.0


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "preflight",
        help="report, per PV, whether a failover to this site would work and what it would lose",
        description="Read-only, on the secondary site, before any disaster: per PV, is its "
        "image here, mirrored and replaying, how old is its newest completely synced snapshot "
        "(the RPO now), would a ClusterIDMapping map its handle, does ceph-csi's config know its "
        "clusterID, may its Ceph user write the journal, and what would a failover write. Exit "
        "0 only when every PV is ready.",
    )
    pvs = parser.add_argument_group("the PVs to protect")
    pvs.add_argument(
        "--pv-file",
        action="append",
        type=Path,
        default=[],
        help="PV manifests (YAML or JSON, a list, kind List or several documents; - for stdin), "
        "e.g. a backup; repeat for several. Unset: the PVs of --pvs-kubeconfig",
    )
    pvs.add_argument(
        "--pvs-kubeconfig",
        type=Path,
        help="the API server whose PVs to check, e.g. the primary site's (unset: --kubeconfig)",
    )
    pvs.add_argument(
        "--pv", dest="pv_names", action="append", default=[], help="only this PV (repeatable)"
    )
    pvs.add_argument("--driver-name", default=DEFAULT_DRIVER, help="CSI driver of the PVs")

    here = parser.add_argument_group("this site")
    here.add_argument("--local-cluster-id", required=True, help="this site's clusterID")
    here.add_argument(
        "--kubeconfig",
        type=Path,
        help="this site's API server: ClusterIDMappings, ceph-csi's ConfigMaps, the PVs' Secrets",
    )
    here.add_argument("--csi-config-namespace", help="namespace of ceph-csi's ConfigMaps")
    here.add_argument("--csi-config-layout", choices=sorted(LAYOUTS), default="helm")
    here.add_argument("--mappings-file", action="append", type=Path, default=[])
    here.add_argument("--csi-config-file", type=Path, help="ceph-csi's config.json")
    here.add_argument("--cluster-mapping-file", type=Path, help="ceph-csi's cluster-mapping.json")
    here.add_argument("--instance-id", default=DEFAULT_INSTANCE_ID)

    ceph = parser.add_argument_group("Ceph (this site's cluster)")
    ceph.add_argument("--monitors", help="HOST:PORT[,...] (unset: from config.json)")
    ceph.add_argument("--user", help="check as this user instead of each PV's Secret's")
    ceph.add_argument("--key-file", type=Path, help="--user's key")
    ceph.add_argument(
        "--admin-user", help="also read each user's caps with `ceph auth get` as this user"
    )
    ceph.add_argument("--admin-key-file", type=Path, help="--admin-user's key")
    ceph.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT)

    parser.add_argument(
        "--max-snapshot-age",
        type=duration,
        default=PreflightSettings.max_snapshot_age,
        metavar="DURATION",
        help="the RPO: a PV whose newest synced snapshot is older is not ready (default 1h)",
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--concurrency", type=positive_int, default=PreflightSettings.concurrency)
    parser.set_defaults(func=cmd_preflight)


def cmd_preflight(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem:
        return fail(problem, EXIT_USAGE)
    try:
        given = read_given(args)
        report = asyncio.run(_preflight(args, given))
    except ReconcilerError as err:
        return fail(str(err), exit_code(err))
    except ApiStatusError as err:
        return fail(str(err), EXIT_FAILED)
    print(json.dumps(report.to_json(), indent=2) if args.output == "json" else report.table())
    return 0 if report.ready else EXIT_FAILED


def _usage_problem(args: argparse.Namespace) -> str | None:
    if not args.pv_file and not (args.pvs_kubeconfig or args.kubeconfig):
        return "give the PVs to check: --pv-file, --pvs-kubeconfig or --kubeconfig"
    if (args.user is None) != (args.key_file is None):
        return "--user and --key-file go together"
    if (args.admin_user is None) != (args.admin_key_file is None):
        return "--admin-user and --admin-key-file go together"
    needs_namespace = args.csi_config_file is None or args.cluster_mapping_file is None
    if args.kubeconfig and needs_namespace and not args.csi_config_namespace:
        return "--csi-config-namespace is needed to read ceph-csi's ConfigMaps"
    return None


def _key(path: Path, user: str) -> Credentials:
    try:
        key = path.read_text().strip()
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror}") from err
    problem = cephx_key_problem(key)
    if problem is not None:
        raise InvalidCephKey(user, problem)
    return Credentials(user, key)


@dataclass
class Given:
    """What the files named on the command line hold, read before anything connects."""

    pvs: list[KubeObject] | None
    mappings: list[KubeObject] | None
    config: str | None
    cluster_mapping: str | None
    user: Credentials | None
    admin: Credentials | None
    notes: list[str] = field(default_factory=list)


def read_given(args: argparse.Namespace) -> Given:
    notes = []
    pvs = None
    if args.pv_file:
        pvs, others = of_kind(read_manifests(args.pv_file), "PersistentVolume")
        if others:
            notes.append(f"left out of the PV files, not PersistentVolumes: {', '.join(others)}")
    mappings = None
    if args.mappings_file:
        mappings, _ = of_kind(read_manifests(args.mappings_file), "ClusterIDMapping")
    return Given(
        pvs=pvs,
        mappings=mappings,
        config=_text(args.csi_config_file),
        cluster_mapping=_text(args.cluster_mapping_file),
        user=_key(args.key_file, args.user) if args.user else None,
        admin=_key(args.admin_key_file, args.admin_user) if args.admin_user else None,
        notes=notes,
    )


def _text(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror}") from err


async def _preflight(args: argparse.Namespace, given: Given) -> Report:
    api = await make_api_client(args.kubeconfig) if args.kubeconfig else None
    pv_api = await make_api_client(args.pvs_kubeconfig) if args.pvs_kubeconfig else None
    connections = ConnectionPool(timeout=args.timeout)
    user = given.user
    try:
        inputs = await gather_inputs(args, given, api, pv_api or api)

        async def credentials_for(volume: CSIVolume) -> tuple[Credentials, str]:
            if user is not None:
                return user, f"--user {user.user}"
            if volume.secret_ref is None:
                raise InvalidVolume(
                    volume.pv_name, "neither controllerExpandSecretRef nor nodeStageSecretRef"
                )
            name, namespace = volume.secret_ref
            if api is None:
                raise ReconcilerError(
                    f"Secret {namespace}/{name} cannot be read without --kubeconfig (this "
                    "site's API server); or give --user and --key-file"
                )
            return await secret_credentials(api, name, namespace), f"Secret {namespace}/{name}"

        preflight = Preflight(
            inputs,
            settings=PreflightSettings(
                local_cluster_id=args.local_cluster_id,
                max_snapshot_age=args.max_snapshot_age,
                instance_id=args.instance_id,
                driver=args.driver_name,
                concurrency=args.concurrency,
            ),
            connections=connections,
            credentials_for=credentials_for,
            admin=given.admin,
            progress=None if args.quiet else ProgressLine(),
        )
        return await preflight.run()
    finally:
        await connections.close()
        for client in (api, pv_api):
            if client is not None:
                await client.close()


async def gather_inputs(
    args: argparse.Namespace, given: Given, api: ApiClient | None, pv_api: ApiClient | None
) -> Inputs:
    """The files' contents, and what they do not give read from the API servers."""
    notes = list(given.notes)
    if given.pvs is not None:
        pvs = given.pvs
    else:
        assert pv_api is not None  # _usage_problem
        pvs = await list_all(pv_api, PERSISTENT_VOLUMES)
    if args.pv_names:
        wanted = set(args.pv_names)
        absent = wanted - {name_of(pv) for pv in pvs}
        if absent:
            raise InvalidInput(f"no such PV in the input: {', '.join(sorted(absent))}")
        pvs = [pv for pv in pvs if name_of(pv) in wanted]
    if given.mappings is not None:
        mappings = given.mappings
    elif api is not None:
        mappings = await list_all(api, CLUSTER_ID_MAPPINGS)
    else:
        mappings = []
        notes.append("no ClusterIDMappings given (--kubeconfig or --mappings-file)")
    where = layout(args.csi_config_layout, args.csi_config_namespace or "ceph-csi")
    config, mapping = given.config, given.cluster_mapping
    if config is None and api is not None:
        config = await config_map_key(api, where.config)
    if mapping is None and api is not None:
        mapping = await config_map_key(api, where.cluster_mapping)
    return Inputs(pvs, mappings, config, mapping, where, monitors=args.monitors, notes=notes)


class ProgressLine:
    """`preflight: 1200/10000 PVs checked` on stderr every PROGRESS_EVERY seconds: nothing for a
    short run, a last line at the end of a long one."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None
    ) -> None:
        self.clock = clock
        self.stream = stream
        self.started = clock()
        self.shown = self.started

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.shown >= PROGRESS_EVERY or (done == total and self.shown > self.started):
            self.shown = now
            print(
                f"preflight: {done}/{total} PVs checked ({now - self.started:.0f} s)",
                file=self.stream or sys.stderr,
                flush=True,
            )
