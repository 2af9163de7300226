"""`run`: the controllers, until SIGTERM/SIGINT.

PV informer ──────────┬─> persistentvolume controller ──> Ceph journal, VolumeHandleMappings
ClusterIDMapping inf. ┼─> clusteridmapping controller ──> ClusterIDMapping status
VolumeHandleMapping ──┤
ceph-csi-config ──────┴─> cluster-mapping.json renderer (with --cluster-mapping-configmap)
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.cephconn import DEFAULT_TIMEOUT
from reconciler.cephpool import ConnectionPool
from reconciler.cli.common import EXIT_FAILED, EXIT_USAGE, fail
from reconciler.cli.flags import host_port, positive_float, positive_int
from reconciler.controllers.cephcsi import CONFIG_FILE, MAPPING_FILE, CephCSIConfigRenderer
from reconciler.controllers.clusteridmapping import ClusterIDMappingReconciler
from reconciler.controllers.metrics import ProgressCollector, remap_duration_histogram
from reconciler.controllers.progress import BurstProgress
from reconciler.controllers.recorder import StatusRecorder
from reconciler.controllers.regenerator import RegeneratorWatch
from reconciler.controllers.volumes import (
    DEFAULT_DRIVER,
    RECONCILE_TIMEOUT,
    VolumeReconciler,
    VolumeSettings,
    volume_rate_limiter,
)
from reconciler.csiconfig import LAYOUTS, CSIConfigLayout, layout
from reconciler.errors import ReconcilerError
from reconciler.journal import DEFAULT_INSTANCE_ID
from reconciler.k8s import (
    ApiSettings,
    ControllerSettings,
    Informer,
    LeaderElectionSettings,
    LeadershipLost,
    Manager,
    ManagerSettings,
    ServerSettings,
    configure_logging,
    make_api_client,
)
from reconciler.k8s.conditions import is_ready
from reconciler.k8s.events import EventRecorder
from reconciler.k8s.intern import interning
from reconciler.k8s.leader import default_identity
from reconciler.kinds import (
    CIDM_CLUSTER_INDEX,
    CLUSTER_ID_MAPPINGS,
    COMPONENT,
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

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class RunConfig:
    """Everything `run` is told, built once from the flags (which take their defaults from here)
    and validated by argparse before anything connects anywhere."""

    local_cluster_id: str
    """This site's clusterID in ceph-csi-config (its monitors are this Ceph cluster)."""
    csi_config_namespace: str
    """Namespace of ceph-csi's ConfigMap."""
    kubeconfig: Path | None = None
    """kubeconfig file; None: the in-cluster service account."""
    driver_name: str = DEFAULT_DRIVER
    csi_config_layout: str = "helm"
    """Where the deployment keeps ceph-csi's files: a preset of csiconfig.LAYOUTS ..."""
    csi_config_name: str | None = None
    """... whose names and keys these override when set."""
    csi_config_key: str | None = None
    cluster_mapping_configmap: str | None = None
    cluster_mapping_namespace: str | None = None
    cluster_mapping_key: str | None = None
    manage_csi_config: bool = False
    """Write ceph-csi's config.json aliases and cluster-mapping.json; else only report gaps."""
    instance_id: str = DEFAULT_INSTANCE_ID
    workers: int = 16
    """Concurrent PV reconciles: journals regenerated at once (a few RADOS ops in flight each).
    During a burst their mappings are written by 16 more writers (controllers.recorder)."""
    dry_run: bool = False
    ceph_timeout: float = DEFAULT_TIMEOUT
    health_address: tuple[str, int] = ("0.0.0.0", 8080)
    leader_elect: bool = False
    leader_election_namespace: str | None = None
    """None: csi_config_namespace."""
    leader_election_name: str = "rbd-mirror-reconciler"
    leader_election_lease_duration: float = LeaderElectionSettings.lease_duration
    """Seconds a follower waits after the Lease last changed before taking it over."""
    leader_election_renew_deadline: float = LeaderElectionSettings.renew_deadline
    """Seconds the leader keeps trying to renew before it stops leading (and exits)."""
    leader_election_retry_period: float = LeaderElectionSettings.retry_period
    """Seconds between attempts to acquire or renew."""
    kube_api_qps: float = 500.0
    """Sustained API writes a second. A backstop for an API server without Priority and
    Fairness: what bounds this process' load is how many requests it has in flight (at most
    `workers` + 16 mapping writers + a few), and the server's APF, whose 429s it waits out."""
    kube_api_burst: int = 1000
    log_level: str = "INFO"
    identity: str = field(default_factory=default_identity)
    """This process: the Lease's holderIdentity and every Event's reportingInstance."""

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        names = set(cls.__dataclass_fields__) - {"identity"}
        return cls(**{name: getattr(args, name) for name in names})

    @property
    def layout(self) -> CSIConfigLayout:
        return layout(
            self.csi_config_layout,
            self.csi_config_namespace,
            config=(self.csi_config_name, self.csi_config_key),
            cluster_mapping=(
                self.cluster_mapping_namespace,
                self.cluster_mapping_configmap,
                self.cluster_mapping_key,
            ),
        )

    def manager_settings(self) -> ManagerSettings:
        leader = (
            LeaderElectionSettings(
                namespace=self.leader_election_namespace or self.csi_config_namespace,
                name=self.leader_election_name,
                identity=self.identity,
                lease_duration=self.leader_election_lease_duration,
                renew_deadline=self.leader_election_renew_deadline,
                retry_period=self.leader_election_retry_period,
            )
            if self.leader_elect
            else None
        )
        host, port = self.health_address
        return ManagerSettings(leader_election=leader, server=ServerSettings(host, port))

    def volume_settings(self) -> VolumeSettings:
        return VolumeSettings(
            local_cluster_id=self.local_cluster_id,
            csi_config=self.layout.config,
            driver_name=self.driver_name,
            instance_id=self.instance_id,
            dry_run=self.dry_run,
            # A regeneration is about a dozen Ceph calls, each bounded by --ceph-timeout.
            reconcile_timeout=max(RECONCILE_TIMEOUT, 12 * self.ceph_timeout),
        )


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "run",
        help="run the controllers (PVs -> journals and VolumeHandleMappings; ClusterIDMappings)",
        description="Watch static PVs re-applied after an rbd-mirror failover, regenerate "
        "ceph-csi's journal for them on this site's Ceph cluster and record a "
        "VolumeHandleMapping per PV; keep ClusterIDMapping status (and optionally ceph-csi's "
        "cluster-mapping.json) current. Runs until SIGTERM or SIGINT.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    kube = parser.add_argument_group("Kubernetes")
    kube.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig file (unset: the in-cluster service account)"
    )
    kube.add_argument(
        "--driver-name", default=RunConfig.driver_name, help="CSI driver of the PVs to remap"
    )
    kube.add_argument(
        "--workers", type=positive_int, default=RunConfig.workers, help="concurrent PV reconciles"
    )
    kube.add_argument(
        "--kube-api-qps",
        type=positive_float,
        default=RunConfig.kube_api_qps,
        help="sustained API writes a second",
    )
    kube.add_argument(
        "--kube-api-burst",
        type=positive_int,
        default=RunConfig.kube_api_burst,
        help="API writes allowed at once",
    )
    kube.add_argument(
        "--health-address",
        type=host_port,
        default=RunConfig.health_address,
        metavar="HOST:PORT",
        help="where /healthz, /readyz and /metrics listen (port 0 picks one)",
    )
    kube.add_argument(
        "--dry-run",
        action="store_true",
        help="plan against Ceph and log; write nothing to Ceph or the API server",
    )
    kube.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default=RunConfig.log_level
    )

    leader = parser.add_argument_group("leader election")
    leader.add_argument(
        "--leader-elect", action="store_true", help="hold a Lease while working (2+ replicas)"
    )
    leader.add_argument(
        "--leader-election-namespace", help="the Lease's namespace (unset: --csi-config-namespace)"
    )
    leader.add_argument(
        "--leader-election-name", default=RunConfig.leader_election_name, help="the Lease's name"
    )
    leader.add_argument(
        "--leader-election-lease-duration",
        type=positive_float,
        default=RunConfig.leader_election_lease_duration,
        metavar="SECONDS",
        help="how long a follower waits after the Lease last changed before taking it over",
    )
    leader.add_argument(
        "--leader-election-renew-deadline",
        type=positive_float,
        default=RunConfig.leader_election_renew_deadline,
        metavar="SECONDS",
        help="how long the leader keeps trying to renew before it stops leading and exits "
        "(less than the lease duration)",
    )
    leader.add_argument(
        "--leader-election-retry-period",
        type=positive_float,
        default=RunConfig.leader_election_retry_period,
        metavar="SECONDS",
        help="between attempts to acquire or renew (less than the renew deadline)",
    )

    csi = parser.add_argument_group("ceph-csi")
    csi.add_argument(
        "--local-cluster-id",
        required=True,
        help="this site's clusterID in ceph-csi-config (its monitors are this Ceph cluster)",
    )
    csi.add_argument(
        "--csi-config-namespace", required=True, help="namespace of ceph-csi's ConfigMap"
    )
    csi.add_argument(
        "--csi-config-layout",
        choices=sorted(LAYOUTS),
        default=RunConfig.csi_config_layout,
        help="how ceph-csi was deployed: 'helm' (ConfigMap ceph-csi-config, keys config.json and "
        "cluster-mapping.json) or 'rook' (rook-ceph-csi-config key csi-cluster-config-json, "
        "rook-ceph-csi-mapping-config key csi-mapping-config-json); the flags below override "
        "single names",
    )
    csi.add_argument("--csi-config-name", help="the ConfigMap with config.json (unset: layout's)")
    csi.add_argument("--csi-config-key", help="config.json's key in it (unset: layout's)")
    csi.add_argument(
        "--cluster-mapping-configmap",
        help="the ConfigMap with cluster-mapping.json (unset: layout's)",
    )
    csi.add_argument(
        "--cluster-mapping-namespace", help="its namespace (unset: --csi-config-namespace)"
    )
    csi.add_argument("--cluster-mapping-key", help="cluster-mapping.json's key (unset: layout's)")
    csi.add_argument(
        "--manage-csi-config",
        action="store_true",
        help="write what ceph-csi needs for old handles: a config.json entry per failed site's "
        "clusterID (this site's monitors) and cluster-mapping.json, marked renderedBy; entries "
        "an admin wrote are never changed. Unset: each ClusterIDMapping's CephCSIConfigured "
        "condition names what is missing",
    )
    csi.add_argument(
        "--instance-id",
        default=RunConfig.instance_id,
        help="ceph-csi's --instanceid (names the journal's directory object)",
    )

    ceph = parser.add_argument_group("Ceph")
    ceph.add_argument(
        "--ceph-timeout",
        type=positive_float,
        default=RunConfig.ceph_timeout,
        help="seconds per Ceph operation before it fails",
    )
    parser.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    config = RunConfig.from_args(args)
    try:
        config.manager_settings()
    except ValueError as err:  # lease durations out of order
        return fail(f"leader election: {err}", EXIT_USAGE)
    configure_logging(config.log_level)
    try:
        asyncio.run(run(config))
    except LeadershipLost as err:
        # As with controller-runtime, a replica that may no longer lead exits (its Deployment
        # starts it again, as a follower); one line says why, not a traceback.
        return fail(f"{err}; exiting, so that only the lease holder writes", EXIT_FAILED)
    return 0


async def run(config: RunConfig, stop: asyncio.Event | None = None) -> None:
    """Build the manager from `config` and run it until `stop` (or a signal)."""
    api_client = await make_api_client(
        config.kubeconfig, ApiSettings(qps=config.kube_api_qps, burst=config.kube_api_burst)
    )
    connections = ConnectionPool(timeout=config.ceph_timeout)
    try:
        manager = Manager(api_client, config.manager_settings())
        wire(manager, config, connections)
        await manager.run(stop, handle_signals=stop is None)
    finally:
        await connections.close()
        await api_client.close()


def wire(manager: Manager, config: RunConfig, connections: ConnectionPool) -> None:
    api = manager.api_client
    volumes = manager.informer(
        PERSISTENT_VOLUMES,
        indexers={PV_CLUSTER_INDEX: index_pv_cluster, PV_POOL_INDEX: index_pv_pool},
        transform=interning(pv_trimmer(config.driver_name)),
    )
    volume_handle_mappings = manager.informer(
        VOLUME_HANDLE_MAPPINGS,
        indexers={VHM_HANDLE_INDEX: index_vhm_handle, VHM_POOL_INDEX: index_vhm_pool},
        transform=interning(without_managed_fields),
    )
    cluster_id_mappings = manager.informer(
        CLUSTER_ID_MAPPINGS, indexers={CIDM_CLUSTER_INDEX: index_cidm_clusters}
    )
    # ceph-csi's two files; one informer when they share a ConfigMap (the Manager shares it).
    where = config.layout
    csi_config = config_map_informer(manager, where.config.namespace, where.config.name)
    config_files = (
        csi_config,
        config_map_informer(manager, where.cluster_mapping.namespace, where.cluster_mapping.name),
    )
    events = EventRecorder(api, COMPONENT, config.identity)
    manager.add(events.run)  # posts the summaries of bursts of similar Events
    registry = manager.metrics.registry

    pv_reconciler = VolumeReconciler(
        api,
        volumes=volumes,
        volume_handle_mappings=volume_handle_mappings,
        cluster_id_mappings=cluster_id_mappings,
        csi_config=csi_config,
        connections=connections,
        events=events,
        settings=config.volume_settings(),
        remap_duration=remap_duration_histogram(registry),
    )
    registry.register(
        ProgressCollector(
            pending_volumes=pv_reconciler.pending_volumes,
            volume_handle_mappings=volume_handle_mappings.store,
            cluster_id_mappings=cluster_id_mappings.store,
            active=lambda: manager.is_leader and manager.ready(),
        )
    )
    pv_controller = manager.controller(
        "persistentvolume",
        pv_reconciler.reconcile,
        # Their reason is on the VolumeHandleMapping already; no traceback in the log.
        settings=ControllerSettings(workers=config.workers, expected_errors=(ReconcilerError,)),
        # Retries at least once a minute: a fault's end is not waited out for 1000 s.
        rate_limiter=volume_rate_limiter(),
    )
    # PVs that waited for Ceph are queued again as soon as another PV reaches it.
    pv_reconciler.requeue = pv_controller.enqueue
    # The PVs waiting: a burst makes listing a pool's images worth it, and moves the mappings'
    # writes off the workers so that journals do not wait for them.
    pv_reconciler.backlog = lambda: len(pv_controller.queue)
    recorder = StatusRecorder(pv_controller.fail, backlog=pv_reconciler.backlog)
    pv_reconciler.recorder = recorder
    manager.add(recorder.run)
    progress = BurstProgress(
        lambda: len(pv_reconciler.pending_volumes()),
        lambda: sum(1 for vhm in volume_handle_mappings.store.objects() if is_ready(vhm)),
        registry=registry,
    )
    pv_reconciler.progress = progress
    manager.add(progress.run)
    pv_controller.watch(volumes, pv_reconciler.volume_if_changed)
    pv_controller.watch(cluster_id_mappings, pv_reconciler.volumes_of_mapping)
    pv_controller.watch(volume_handle_mappings, pv_reconciler.volume_of_deleted_mapping)
    # A change re-queues the PVs that failed on it, and the Ready ones of another radosNamespace.
    pv_controller.watch(csi_config, pv_reconciler.volumes_of_csi_config)

    if config.dry_run:
        return  # the other controllers only write
    regenerator = RegeneratorWatch(
        api,
        namespace=config.csi_config_namespace,
        driver_name=config.driver_name,
        on_change=lambda: cidm_controller.enqueue(cluster_id_mappings.store.keys()),
    )
    manager.add(regenerator.run)
    cidm_reconciler = ClusterIDMappingReconciler(
        api,
        cluster_id_mappings=cluster_id_mappings,
        volumes=volumes,
        volume_handle_mappings=volume_handle_mappings,
        events=events,
        local_cluster_id=config.local_cluster_id,
        csi_config_files=config_files,
        layout=config.layout,
        regenerator=regenerator,
        driver_name=config.driver_name,
    )
    cidm_controller = manager.controller("clusteridmapping", cidm_reconciler.reconcile)
    cidm_controller.watch(cluster_id_mappings, cidm_reconciler.all_mappings)
    cidm_controller.watch(volumes, cidm_reconciler.mappings_learning_from_volume)
    cidm_controller.watch(
        volume_handle_mappings, cidm_reconciler.mappings_learning_from_handle_mapping
    )
    for informer in config_files:
        cidm_controller.watch(informer, cidm_reconciler.all_mappings)

    if config.manage_csi_config:
        renderer = CephCSIConfigRenderer(
            api,
            cluster_id_mappings=cluster_id_mappings,
            config_maps={CONFIG_FILE: config_files[0], MAPPING_FILE: config_files[1]},
            layout=config.layout,
            local_cluster_id=config.local_cluster_id,
            events=events,
        )
        render_controller = manager.controller("cephcsi-config", renderer.reconcile)
        render_controller.watch(cluster_id_mappings, renderer.both_files)
        for informer in config_files:
            render_controller.watch(informer, renderer.both_files)


def config_map_informer(manager: Manager, namespace: str, name: str) -> Informer:
    """One ConfigMap, watched by name: the namespace's other ConfigMaps are not cached."""
    return manager.informer(
        CONFIG_MAPS, namespace=namespace, field_selector=f"metadata.name={name}"
    )
