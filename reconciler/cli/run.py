"""`run`: the controllers, until SIGTERM/SIGINT.

PV informer ──────────┬─> persistentvolume controller ──> Ceph journal, VolumeHandleMappings
ClusterIDMapping inf. ┼─> clusteridmapping controller ──> ClusterIDMapping status
VolumeHandleMapping ──┤
ceph-csi-config ──────┴─> cluster-mapping.json renderer (with --cluster-mapping-configmap)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from reconciler.cephconn import DEFAULT_TIMEOUT, ConnectionPool
from reconciler.controllers.clusteridmapping import (
    ClusterIDMappingReconciler,
    ClusterMappingRenderer,
)
from reconciler.controllers.kinds import (
    CIDM_CLUSTER_INDEX,
    CLUSTER_ID_MAPPINGS,
    CONFIG_MAPS,
    PERSISTENT_VOLUMES,
    PV_CLUSTER_INDEX,
    PV_POOL_INDEX,
    VHM_HANDLE_INDEX,
    VHM_POOL_INDEX,
    VOLUME_HANDLE_MAPPINGS,
    index_cidm_clusters,
    index_pv_cluster,
    index_pv_pool,
    index_vhm_handle,
    index_vhm_pool,
    pv_trimmer,
    without_managed_fields,
)
from reconciler.controllers.metrics import ProgressCollector, remap_duration_histogram
from reconciler.controllers.status import EventRecorder
from reconciler.controllers.volumes import (
    DEFAULT_DRIVER,
    VolumeReconciler,
    VolumeSettings,
)
from reconciler.csiconfig import DEFAULT_CONFIGMAP
from reconciler.journal import DEFAULT_INSTANCE_ID
from reconciler.k8s import (
    ApiSettings,
    ControllerSettings,
    Informer,
    LeaderElectionSettings,
    Manager,
    ManagerSettings,
    ServerSettings,
    configure_logging,
    make_api_client,
)
from reconciler.k8s.leader import default_identity

DEFAULT_CLUSTER_MAPPING_KEY = "cluster-mapping.json"


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run the controllers (PVs -> journals and VolumeHandleMappings; ClusterIDMappings)",
        description="Watch static PVs re-applied after an rbd-mirror failover, regenerate "
        "ceph-csi's journal for them on this site's Ceph cluster and record a "
        "VolumeHandleMapping per PV; keep ClusterIDMapping status (and optionally ceph-csi's "
        "cluster-mapping.json) current.",
    )
    parser.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster service account)"
    )
    parser.add_argument(
        "--local-cluster-id",
        required=True,
        help="this site's clusterID in ceph-csi-config (its monitors are this Ceph cluster)",
    )
    parser.add_argument(
        "--driver-name", default=DEFAULT_DRIVER, help="CSI driver of the PVs (default %(default)s)"
    )
    parser.add_argument(
        "--csi-config-name",
        default=DEFAULT_CONFIGMAP,
        help="ceph-csi's ConfigMap with config.json (default %(default)s)",
    )
    parser.add_argument(
        "--csi-config-namespace", required=True, help="namespace of ceph-csi-config"
    )
    parser.add_argument(
        "--instance-id", default=DEFAULT_INSTANCE_ID, help="ceph-csi's --instanceid"
    )
    parser.add_argument(
        "--cluster-mapping-configmap",
        help="render ceph-csi's cluster-mapping.json into this ConfigMap (off when unset)",
    )
    parser.add_argument(
        "--cluster-mapping-namespace", help="its namespace (default: --csi-config-namespace)"
    )
    parser.add_argument(
        "--cluster-mapping-key",
        default=DEFAULT_CLUSTER_MAPPING_KEY,
        help="its key, as ceph-csi mounts it (default %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=4, help="concurrent PV reconciles")
    parser.add_argument(
        "--legacy-handle-key",
        action="store_true",
        help="also write csi.volume.<old handle> -> <new handle> for older ceph-csi releases",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="plan against Ceph and log; write nothing to Ceph or the API server",
    )
    parser.add_argument(
        "--ceph-timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per Ceph operation"
    )
    parser.add_argument(
        "--health-address",
        default="0.0.0.0:8080",
        metavar="HOST:PORT",
        help="/healthz, /readyz and /metrics (port 0 picks one)",
    )
    parser.add_argument("--leader-elect", action="store_true", help="hold a Lease while working")
    parser.add_argument("--leader-election-namespace", help="default: --csi-config-namespace")
    parser.add_argument(
        "--leader-election-name", default="rbd-mirror-reconciler", help="the Lease's name"
    )
    parser.add_argument(
        "--kube-api-qps", type=float, default=ApiSettings.qps, help="sustained API writes a second"
    )
    parser.add_argument(
        "--kube-api-burst", type=int, default=ApiSettings.burst, help="API writes at once"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level.upper())
    asyncio.run(run(args))
    return 0


def manager_settings(args: argparse.Namespace) -> ManagerSettings:
    host, _, port = args.health_address.rpartition(":")
    leader = (
        LeaderElectionSettings(
            namespace=args.leader_election_namespace or args.csi_config_namespace,
            name=args.leader_election_name,
            identity=default_identity(),
        )
        if args.leader_elect
        else None
    )
    return ManagerSettings(
        leader_election=leader, server=ServerSettings(host or "0.0.0.0", int(port))
    )


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> None:
    """Build the manager from the flags and run it until `stop` (or a signal)."""
    api_client = await make_api_client(
        args.kubeconfig, ApiSettings(qps=args.kube_api_qps, burst=args.kube_api_burst)
    )
    connections = ConnectionPool(timeout=args.ceph_timeout)
    try:
        manager = Manager(api_client, manager_settings(args))
        wire(manager, args, connections)
        await manager.run(stop, handle_signals=stop is None)
    finally:
        await connections.close()
        await api_client.close()


def wire(manager: Manager, args: argparse.Namespace, connections: ConnectionPool) -> None:
    api = manager.api_client
    local = args.local_cluster_id
    volumes = manager.informer(
        PERSISTENT_VOLUMES,
        indexers={PV_CLUSTER_INDEX: index_pv_cluster, PV_POOL_INDEX: index_pv_pool},
        transform=pv_trimmer(args.driver_name),
    )
    handle_mappings = manager.informer(
        VOLUME_HANDLE_MAPPINGS,
        indexers={VHM_HANDLE_INDEX: index_vhm_handle, VHM_POOL_INDEX: index_vhm_pool},
        transform=without_managed_fields,
    )
    mappings = manager.informer(
        CLUSTER_ID_MAPPINGS, indexers={CIDM_CLUSTER_INDEX: index_cidm_clusters}
    )
    csi_config = config_map_informer(manager, args.csi_config_namespace, args.csi_config_name)
    events = EventRecorder(api, default_identity())
    registry = manager.metrics.registry

    pv_reconciler = VolumeReconciler(
        api,
        volumes=volumes,
        handle_mappings=handle_mappings,
        mappings=mappings,
        csi_config=csi_config,
        connections=connections,
        events=events,
        settings=VolumeSettings(
            local_cluster_id=local,
            csi_config_namespace=args.csi_config_namespace,
            csi_config_name=args.csi_config_name,
            driver_name=args.driver_name,
            instance_id=args.instance_id,
            legacy_handle_key=args.legacy_handle_key,
            dry_run=args.dry_run,
        ),
        remap_duration=remap_duration_histogram(registry),
    )
    registry.register(
        ProgressCollector(
            pending_volumes=pv_reconciler.pending_volumes,
            handle_mappings=handle_mappings.store,
            cluster_id_mappings=mappings.store,
            active=lambda: manager.is_leader and manager.ready(),
        )
    )
    pv_controller = manager.controller(
        "persistentvolume",
        pv_reconciler.reconcile,
        settings=ControllerSettings(workers=args.workers),
    )
    pv_controller.watch(volumes, pv_reconciler.volume_if_changed)
    pv_controller.watch(mappings, pv_reconciler.volumes_of_mapping)
    pv_controller.watch(handle_mappings, pv_reconciler.volume_of_deleted_mapping)
    pv_controller.watch(csi_config, _no_keys)  # only so that it is synced before the first PV

    if args.dry_run:
        return  # the other controllers only write
    cidm_reconciler = ClusterIDMappingReconciler(
        api,
        mappings=mappings,
        volumes=volumes,
        handle_mappings=handle_mappings,
        events=events,
        local_cluster_id=local,
    )
    cidm_controller = manager.controller("clusteridmapping", cidm_reconciler.reconcile)
    cidm_controller.watch(mappings, cidm_reconciler.all_mappings)
    cidm_controller.watch(volumes, cidm_reconciler.mappings_learning_from_volume)
    cidm_controller.watch(handle_mappings, cidm_reconciler.mappings_learning_from_handle_mapping)

    if args.cluster_mapping_configmap:
        namespace = args.cluster_mapping_namespace or args.csi_config_namespace
        same = (namespace, args.cluster_mapping_configmap) == (
            args.csi_config_namespace,
            args.csi_config_name,
        )
        target = (
            csi_config
            if same
            else config_map_informer(manager, namespace, args.cluster_mapping_configmap)
        )
        renderer = ClusterMappingRenderer(
            api,
            mappings=mappings,
            config_maps=target,
            namespace=namespace,
            name=args.cluster_mapping_configmap,
            key=args.cluster_mapping_key,
        )
        render_controller = manager.controller("clustermapping-json", renderer.reconcile)
        render_controller.watch(mappings, renderer.render_key)
        render_controller.watch(target, renderer.render_key)


def config_map_informer(manager: Manager, namespace: str, name: str) -> Informer:
    """One ConfigMap, watched by name: the namespace's other ConfigMaps are not cached."""
    return manager.informer(
        CONFIG_MAPS, namespace=namespace, field_selector=f"metadata.name={name}"
    )


def _no_keys(_: Any) -> list[str]:
    return []
