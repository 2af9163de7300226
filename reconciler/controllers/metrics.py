"""The product's own Prometheus metrics: how far the remapping after a failover has come.

    rbd_mirror_reconciler_volume_handle_mappings{ready,reason,degraded}
                                                                  mappings by their Ready condition,
                                                                  and whether it is Degraded
    rbd_mirror_reconciler_cluster_id_mappings{ready,reason}       ClusterIDMappings likewise
    rbd_mirror_reconciler_volumes_pending                         PVs with a remote handle whose
                                                                  mapping is not Ready yet
    rbd_mirror_reconciler_oldest_pending_volume_seconds           the lag: age of the oldest one
    rbd_mirror_reconciler_volume_remap_duration_seconds           PV creation -> mapping Ready

The gauges are computed at scrape time from the informers' caches, so they can never drift from
what the controllers see. Only the active replica (the leader, caches synced) reports them: a
follower's copy would count every object twice in a `sum` across replicas. Label values are
condition statuses and reasons, never names or anything read from a Secret.
"""

from __future__ import annotations

import datetime
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.k8s import KubeObject, Store
from reconciler.k8s.conditions import READY, find_condition

#: The VolumeHandleMapping condition of a mapping that stays Ready while its last pass failed:
#: controllers.mappingrecords.DEGRADED, named here since that module imports this one.
DEGRADED = "Degraded"

PREFIX = "rbd_mirror_reconciler"
#: Seconds from a PV's creation to its mapping's readiness: a few seconds when the controller
#: keeps up, hours when it waited for an admin (a Secret, a ClusterIDMapping, a promotion).
REMAP_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

#: Wall-clock seconds since the epoch (time.time), replaceable in tests.
WallTime = Callable[[], float]


def remap_duration_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        f"{PREFIX}_volume_remap_duration_seconds",
        "Seconds from a PersistentVolume's creation to its VolumeHandleMapping becoming Ready",
        buckets=REMAP_BUCKETS,
        registry=registry,
    )


def age_seconds(obj: KubeObject, now: WallTime = time.time) -> float | None:
    """Seconds since the object's creationTimestamp; None when it has none."""
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return None
    return max(0.0, now() - datetime.datetime.fromisoformat(created).timestamp())


class ProgressCollector(Collector):
    """Scrape-time gauges over the controllers' caches (see the module docstring)."""

    def __init__(
        self,
        *,
        pending_volumes: Callable[[], Sequence[KubeObject]],
        volume_handle_mappings: Store,
        cluster_id_mappings: Store,
        active: Callable[[], bool],
        now: WallTime = time.time,
    ) -> None:
        self.pending_volumes = pending_volumes
        self.volume_handle_mappings = volume_handle_mappings
        self.cluster_id_mappings = cluster_id_mappings
        self.active = active
        self.now = now

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() on registration, before the
        # caches exist: the families are declared here instead.
        return self._families()

    def collect(self) -> Iterable[Metric]:
        if not self.active():
            return []
        families = self._families()
        vhms, cidms, pending, oldest = families
        for labels, count in _by_ready_and_degraded(self.volume_handle_mappings.objects()).items():
            vhms.add_metric(list(labels), count)
        for (ready, reason), count in _by_ready(self.cluster_id_mappings.objects()).items():
            cidms.add_metric([ready, reason], count)
        volumes = self.pending_volumes()
        ages = [age for pv in volumes if (age := age_seconds(pv, self.now)) is not None]
        pending.add_metric([], len(volumes))
        oldest.add_metric([], max(ages, default=0.0))
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                f"{PREFIX}_volume_handle_mappings",
                "VolumeHandleMappings by the status and reason of their Ready condition, and "
                "whether they are Degraded (still Ready, but their last pass failed)",
                labels=["ready", "reason", "degraded"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_cluster_id_mappings",
                "ClusterIDMappings by the status and reason of their Ready condition",
                labels=["ready", "reason"],
            ),
            GaugeMetricFamily(
                f"{PREFIX}_volumes_pending",
                "PersistentVolumes with a pre-failover handle whose mapping is not Ready yet",
            ),
            GaugeMetricFamily(
                f"{PREFIX}_oldest_pending_volume_seconds",
                "Age of the oldest PersistentVolume still waiting for its mapping (0: none)",
            ),
        ]


def _by_ready(objects: Iterable[KubeObject]) -> Counter[tuple[str, str]]:
    """(ready, reason) -> how many objects; an object not reconciled yet is ("unknown", "")."""
    return Counter(_ready(obj) for obj in objects)


def _by_ready_and_degraded(objects: Iterable[KubeObject]) -> Counter[tuple[str, str, str]]:
    """(ready, reason, degraded) -> how many mappings; `degraded` is "true" while the Degraded
    condition is True, else "false" (a mapping not reconciled yet has no Degraded condition)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for obj in objects:
        degraded = (find_condition(obj, DEGRADED) or {}).get("status") == "True"
        counts[(*_ready(obj), "true" if degraded else "false")] += 1
    return counts


def _ready(obj: KubeObject) -> tuple[str, str]:
    ready = find_condition(obj, READY) or {}
    return str(ready.get("status", "Unknown")).lower(), str(ready.get("reason", ""))
