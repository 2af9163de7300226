"""The product's alert rules in a real Prometheus scraping a real metrics endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.errors import DaemonFailed, MissingPackage
from reconciler.sandbox.process import pid_alive
from reconciler.sandbox.prometheus import DEFAULT_JOB, Prometheus
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

ALERTS = {
    "RBDMirrorVolumesNotRemapped",
    "RBDMirrorVolumeHandleMappingFailing",
    "RBDMirrorClusterIDMappingConflict",
    "RBDMirrorReconcilerTerminalErrors",
    "RBDMirrorReconcilerProgressAbsent",
    "RBDMirrorImageLagOverRPO",
}


@pytest.fixture
def metrics_target() -> Iterator[str]:
    """A metrics endpoint in this process on a free loopback port, as a leader reports: one PV
    pending, for 1000 s."""
    registry = CollectorRegistry()
    lag = Gauge(
        "rbd_mirror_reconciler_oldest_pending_volume_seconds",
        "Age of the oldest PersistentVolume still waiting for its mapping (0: none)",
        registry=registry,
    )
    lag.set(1000)
    pending = Gauge(
        "rbd_mirror_reconciler_volumes_pending",
        "PersistentVolumes with a pre-failover handle whose mapping is not Ready yet",
        registry=registry,
    )
    pending.set(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_rules_load_and_match_scraped_data(
    tmp_path: Path, metrics_target: str, checkout: Checkout
) -> None:
    alert_rules = checkout.config("prometheus", "alerts.yaml")
    with Prometheus.start(tmp_path / "prometheus", [metrics_target], [alert_rules]) as prom:

        def all_rules_evaluated() -> list[dict[str, Any]] | None:
            rules = prom.rules()
            return rules if rules and all(r["health"] == "ok" for r in rules) else None

        rules = wait_for(all_rules_evaluated, timeout=30, what="every rule evaluated once")
        assert {rule["name"] for rule in rules} == ALERTS

        target = wait_for(
            lambda: next((t for t in prom.targets() if t["health"] == "up"), None),
            timeout=30,
            what=f"{metrics_target} scraped",
        )
        assert target["labels"]["instance"] == metrics_target
        assert target["labels"]["job"] == DEFAULT_JOB

        samples = wait_for(
            lambda: prom.query("rbd_mirror_reconciler_oldest_pending_volume_seconds"),
            timeout=30,
            what="the lag gauge in Prometheus",
        )
        assert [float(s["value"][1]) for s in samples] == [1000.0]
        assert samples[0]["metric"]["instance"] == metrics_target

        # `for: 5m` keeps it pending; pending proves the expression matches real scraped data.
        # Nothing else matches once the target is scraped: a leader reports progress, so
        # RBDMirrorReconcilerProgressAbsent (pending at a first evaluation before any scrape)
        # clears.
        def only_not_remapped() -> list[dict[str, Any]] | None:
            found = prom.alerts()
            names = [a["labels"]["alertname"] for a in found]
            return found if names == ["RBDMirrorVolumesNotRemapped"] else None

        alerts = wait_for(only_not_remapped, timeout=30, what="that alert alone pending")
        alert = alerts[0]
        assert alert["state"] == "pending"
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["type"] == "rbd_mirror_reconciler"
        assert alert["annotations"]["runbook_url"] == "docs/alerts.md#rbdmirrorvolumesnotremapped"
        assert float(alert["value"]) == 1000.0


def test_stop_ends_the_server_by_its_pid(tmp_path: Path) -> None:
    prom = Prometheus.start(tmp_path / "prometheus", [])
    pid = prom.pid
    assert prom.running()
    assert prom.ready()

    prom.stop()

    assert not prom.running()
    assert not pid_alive(pid)
    assert not prom.ready(), "the port still answers after stop"
    prom.stop()  # idempotent


def test_broken_rule_file_fails_start_with_the_log(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: sum(\n"
    )

    with pytest.raises(DaemonFailed) as failed:
        Prometheus.start(tmp_path / "prometheus", [], [broken])

    assert "exited" in str(failed.value)
    assert str(broken) in str(failed.value), "the log tail should name the file to fix"


def test_missing_binary_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(MissingPackage, match="'prometheus'"):
        Prometheus.start(tmp_path / "prometheus", [])

    assert not (tmp_path / "prometheus").exists()
