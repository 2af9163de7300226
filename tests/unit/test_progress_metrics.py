"""The product's progress gauges, computed from informer caches at scrape time."""

from __future__ import annotations

import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.controllers import mappingrecords
from reconciler.controllers.metrics import DEGRADED, ProgressCollector, age_seconds
from reconciler.k8s import KubeObject, Store

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def stamped(name: str, seconds_ago: float) -> KubeObject:
    created = NOW - seconds_ago
    stamp = datetime.datetime.fromtimestamp(created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"name": name, "creationTimestamp": stamp}}


def with_ready(
    name: str, status: str | None, reason: str = "", *, degraded: str | None = None
) -> KubeObject:
    """An object with a Ready condition of `status` (none if None), and a Degraded one of
    `degraded` if given."""
    obj: KubeObject = {"metadata": {"name": name}}
    conditions = []
    if status is not None:
        conditions.append({"type": "Ready", "status": status, "reason": reason})
    if degraded is not None:
        conditions.append({"type": "Degraded", "status": degraded, "reason": "CephUnavailable"})
    if conditions:
        obj["status"] = {"conditions": conditions}
    return obj


def scrape(collector: ProgressCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        family.name: {tuple(sorted(s.labels.items())): s.value for s in family.samples}
        for family in text_string_to_metric_families(text)
    }


def collector(
    pending: list[KubeObject], *, active: bool = True
) -> tuple[ProgressCollector, Store, Store]:
    vhms, cidms = Store(), Store()
    return (
        ProgressCollector(
            pending_volumes=lambda: pending,
            volume_handle_mappings=vhms,
            cluster_id_mappings=cidms,
            active=lambda: active,
            now=lambda: NOW,
        ),
        vhms,
        cidms,
    )


def test_mappings_are_counted_by_ready_status_reason_and_degraded() -> None:
    progress, vhms, cidms = collector([])
    for obj in (
        with_ready("pv-1", "True", "JournalRegenerated", degraded="False"),
        with_ready("pv-2", "True", "JournalRegenerated"),
        with_ready("pv-3", "False", "SecretNotFound"),
        with_ready("pv-4", None),
        # Still Ready (ceph-csi and the resolver keep using it), but its last pass failed.
        with_ready("pv-5", "True", "JournalRegenerated", degraded="True"),
    ):
        vhms.upsert(obj)
    cidms.upsert(with_ready("m-1", "False", "Conflicting"))
    metrics = scrape(progress)
    assert metrics["rbd_mirror_reconciler_volume_handle_mappings"] == {
        (("degraded", "false"), ("ready", "true"), ("reason", "JournalRegenerated")): 2.0,
        (("degraded", "true"), ("ready", "true"), ("reason", "JournalRegenerated")): 1.0,
        (("degraded", "false"), ("ready", "false"), ("reason", "SecretNotFound")): 1.0,
        (("degraded", "false"), ("ready", "unknown"), ("reason", "")): 1.0,
    }
    assert metrics["rbd_mirror_reconciler_cluster_id_mappings"] == {
        (("ready", "false"), ("reason", "Conflicting")): 1.0
    }


def test_the_lag_is_the_age_of_the_oldest_pending_volume() -> None:
    progress, _, _ = collector([stamped("pv-1", 30), stamped("pv-2", 900), stamped("pv-3", 5)])
    metrics = scrape(progress)
    assert metrics["rbd_mirror_reconciler_volumes_pending"] == {(): 3.0}
    assert metrics["rbd_mirror_reconciler_oldest_pending_volume_seconds"] == {(): 900.0}


def test_nothing_pending_reads_zero_not_absent() -> None:
    metrics = scrape(collector([])[0])
    assert metrics["rbd_mirror_reconciler_volumes_pending"] == {(): 0.0}
    assert metrics["rbd_mirror_reconciler_oldest_pending_volume_seconds"] == {(): 0.0}


def test_an_inactive_replica_reports_no_progress() -> None:
    progress, vhms, _ = collector([stamped("pv-1", 30)], active=False)
    vhms.upsert(with_ready("pv-1", "True", "JournalRegenerated"))
    assert scrape(progress) == {}


def test_age_needs_a_creation_timestamp() -> None:
    assert age_seconds(stamped("pv-1", 42), now=lambda: NOW) == 42.0
    assert age_seconds({"metadata": {"name": "pv-2"}}, now=lambda: NOW) is None


def test_the_degraded_label_reads_the_condition_the_mappings_are_written_with() -> None:
    assert DEGRADED == mappingrecords.DEGRADED
