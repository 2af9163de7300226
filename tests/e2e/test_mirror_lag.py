"""Mirroring lag from the secondary site: the real exporter, scraped by a real Prometheus that
loads the product's alerts, while the real rbd-mirror on site-b replays and then stops.

A volume is provisioned on site-a and mirrored to site-b (not promoted: site-b is the mirror
before any disaster); its static PV is on the API server so the exporter labels the image. The
test takes the mirror snapshots a schedule would take (`rbd mirror image snapshot`; schedules go
down to a minute only). With rbd-mirror running the age stays below the RPO; once site-b's
rbd-mirror is stopped by its PID the age rises past it and RBDMirrorImageLagOverRPO fires.
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.process import Daemon, free_port, pid_alive
from reconciler.sandbox.prometheus import Prometheus
from tests.support.csi_replay import Provisioned, provision
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

#: rbd-mirror publishes an image's status every 30 s (fixed in rbd-mirror; the description's
#: snapshot time lags the sync by up to that), so an RPO the sandbox can meet is above it.
RPO = 45
AGE = "rbd_mirror_reconciler_image_snapshot_age_seconds"
ALERT = "RBDMirrorImageLagOverRPO"


@dataclass
class Lag:
    pair: SitePair
    volume: Provisioned
    exporter: Daemon
    address: str
    prometheus: Prometheus

    def snapshot_on_primary(self) -> None:
        """What a snapshot schedule does on site-a each interval."""
        self.pair.site_a.rbd(
            "mirror", "image", "snapshot", f"{self.pair.pool}/{self.volume.image_name}"
        )

    def series(self) -> list[dict[str, Any]]:
        return self.prometheus.query(f'{AGE}{{image="{self.volume.image_name}"}}')

    def age(self, state: str) -> float | None:
        """The image's age in Prometheus while its state is `state`; None otherwise."""
        found = [s for s in self.series() if s["metric"]["state"] == state]
        return float(found[0]["value"][1]) if found else None

    def alerts(self) -> list[dict[str, Any]]:
        """This volume's alerts. Other tests' images share the mirrored pool and lag too while
        rbd-mirror is stopped; their alerts are not this test's."""
        return [
            a
            for a in self.prometheus.alerts()
            if a["labels"]["alertname"] == ALERT
            and a["labels"].get("image") == self.volume.image_name
        ]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=10) as answer:
            text: str = answer.read().decode()
        return text


def replaying_on_b(pair: SitePair, image: str) -> bool:
    return pair.site_b.mirror_state(pair.pool, image) == "up+replaying"


@pytest.fixture(scope="module")
def lag(
    ceph_pair: SitePair,
    kube: KubeCluster,
    checkout: Checkout,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lag]:
    work = tmp_path_factory.mktemp("mirror-lag")
    pair = ceph_pair
    volume = provision(pair.site_a, "site-a", pair.pool, f"pvc-lag-{free_port()}")
    pair.site_a.rbd("mirror", "image", "enable", f"{pair.pool}/{volume.image_name}", "snapshot")
    wait_for(lambda: replaying_on_b(pair, volume.image_name), 120, "the image replaying on b")
    site.apply(kube.kubeconfig, volume.pv())
    key_file = pair.site_b.dir / f"{CSI_USER}.key"
    address = f"127.0.0.1:{free_port()}"
    exporter = Daemon(
        name="rbd-mirror-reconciler exporter",
        argv=[
            sys.executable,
            "-m",
            "reconciler",
            "exporter",
            "--pool",
            pair.pool,
            "--rpo",
            str(RPO),
            "--interval",
            "2",
            "--listen-address",
            address,
            "--kubeconfig",
            str(kube.kubeconfig),
            "--monitors",
            pair.site_b.monitors,
            "--user",
            CSI_USER,
            "--key-file",
            str(key_file),
        ],
        log_file=work / "exporter.log",
    ).start()
    try:
        exporter.wait_ready(lambda: _ready(address), 60)
        alerts = checkout.config("prometheus", "alerts.yaml")
        with Prometheus.start(work / "prometheus", [address], [alerts]) as prometheus:
            yield Lag(pair, volume, exporter, address, prometheus)
    finally:
        exporter.stop()
        site.kubectl(kube, "delete", "pv", volume.pv_name, "--wait=false")
    assert not pid_alive(exporter.pid)


def _ready(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def rbd_mirror_daemon(pair: SitePair) -> Daemon:
    (daemon,) = [
        d for d in pair.site_b.daemons.daemons if d.name.endswith("rbd-mirror") and d.running()
    ]
    return daemon


def test_the_lag_rises_when_rbd_mirror_stops_and_the_alert_fires(lag: Lag) -> None:
    lag.snapshot_on_primary()
    fresh = wait_for(
        lambda: (age := lag.age("up+replaying")) is not None and age < RPO and age,
        90,
        "a fresh snapshot's age, replaying, in Prometheus",
        interval=1,
    )
    (series,) = lag.series()
    labels = series["metric"]
    assert labels["pool"] == lag.pair.pool
    assert labels["pv"] == lag.volume.pv_name
    assert labels["pvc_namespace"] == lag.volume.namespace
    assert labels["pvc_name"] == lag.volume.claim_name
    assert labels["job"] and labels["instance"] == lag.address
    # While the newest synced snapshot is younger than the RPO, the alert does not fire. (It may
    # be pending: the age grows by the second until the next snapshot, and on a loaded machine
    # the first sync alone can take most of the RPO.)
    early = [a for a in lag.alerts() if a["state"] == "firing"]
    assert not early, f"{ALERT} fires at an age of {fresh} s, under the RPO {RPO} s: {early}"
    assert f"rbd_mirror_reconciler_rpo_seconds {float(RPO)}" in lag.scrape()

    daemon = rbd_mirror_daemon(lag.pair)
    daemon.stop()
    assert not pid_alive(daemon.pid)
    try:
        # The primary moves on; site-b no longer follows.
        lag.snapshot_on_primary()
        stopped = wait_for(
            lambda: lag.age("down+stopped"), 60, "the image down+stopped with an age", interval=1
        )
        later = wait_for(
            lambda: (age := lag.age("down+stopped")) is not None and age > stopped + 3 and age,
            30,
            "the age rising while rbd-mirror is stopped",
            interval=1,
        )
        assert later > stopped

        def firing() -> dict[str, Any] | None:
            found = [a for a in lag.alerts() if a["state"] == "firing"]
            return found[0] if found else None

        alert = wait_for(firing, RPO + 60 + 60, f"{ALERT} firing", interval=2)
        assert alert["labels"]["image"] == lag.volume.image_name
        assert alert["labels"]["pv"] == lag.volume.pv_name
        assert alert["labels"]["state"] == "down+stopped"
        assert alert["labels"]["severity"] == "warning"
        assert float(alert["value"]) > RPO
        assert alert["annotations"]["runbook_url"] == "docs/alerts.md#rbdmirrorimagelagoverrpo"
        assert (
            f"PVC {lag.volume.namespace}/{lag.volume.claim_name}"
            in alert["annotations"]["description"]
        )
        # The last time seen in a listing was kept: no image had to be opened for it.
        assert "rbd_mirror_reconciler_image_snapshot_reads_total 0.0" in lag.scrape()
    finally:
        lag.pair.site_b.start_rbd_mirror(lag.pair.pool)

    # Back: the next snapshot syncs, the age drops and the alert resolves.
    wait_for(lambda: replaying_on_b(lag.pair, lag.volume.image_name), 120, "replaying again")
    lag.snapshot_on_primary()
    wait_for(
        lambda: (age := lag.age("up+replaying")) is not None and age < RPO and age,
        90,
        "a fresh age again",
        interval=1,
    )
    wait_for(lambda: lag.alerts() == [] or None, 60, f"{ALERT} resolved", interval=2)


def test_one_listing_per_interval_whatever_the_scrapes(lag: Lag) -> None:
    """Scrapes are served from the cache: the listing's timestamp moves once per interval, not
    per scrape."""

    def listed_at() -> float:
        for line in lag.scrape().splitlines():
            if line.startswith("rbd_mirror_reconciler_pool_listing_timestamp_seconds{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no listing timestamp")

    seen = {listed_at() for _ in range(20)}
    assert len(seen) <= 2, f"20 quick scrapes saw {len(seen)} listings"
