"""The two-site Ceph world every other end-to-end test stands on, checked for real."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest

from reconciler.sandbox.ceph import CephCluster, require_ceph_programs
from reconciler.sandbox.errors import DaemonFailed, MissingPackage, PortInUse
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.process import Daemon, pid_alive
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


def test_image_mirrors_to_site_b_and_replays(ceph_pair: SitePair) -> None:
    name = f"mirror-{uuid.uuid4().hex[:8]}"
    image = f"{ceph_pair.pool}/{name}"
    ceph_pair.site_a.rbd("create", "--size", "16M", image)
    ceph_pair.site_a.rbd("mirror", "image", "enable", image, "snapshot")

    state = wait_for(
        lambda: (
            (s := ceph_pair.site_b.mirror_state(ceph_pair.pool, name))
            and s.startswith("up+replaying")
            and s
        ),
        timeout=90,
        what=f"{image} to reach up+replaying on site-b",
    )
    assert state == "up+replaying"
    info = json.loads(ceph_pair.site_b.rbd("info", image, "--format", "json"))
    assert info["mirroring"]["primary"] is False
    assert info["size"] == 16 * 1024 * 1024


def test_pair_is_ready_only_when_site_b_daemon_leads_the_pool(ceph_pair: SitePair) -> None:
    status = json.loads(
        ceph_pair.site_b.rbd(
            "mirror", "pool", "status", ceph_pair.pool, "--verbose", "--format", "json"
        )
    )
    assert status["summary"]["daemon_health"] == "OK"
    assert [d["leader"] for d in status["daemons"]] == [True]


def test_mirrored_pool_has_different_ids(ceph_pair: SitePair) -> None:
    id_a = ceph_pair.site_a.pool_id(ceph_pair.pool)
    id_b = ceph_pair.site_b.pool_id(ceph_pair.pool)
    assert id_a != id_b


def test_omap_is_not_mirrored(ceph_pair: SitePair) -> None:
    directory = f"csi.volumes.probe-{uuid.uuid4().hex[:8]}"
    ceph_pair.site_a.rados(ceph_pair.pool, "setomapval", directory, "csi.volume.pvc-1", "uuid-1")
    assert ceph_pair.site_a.rados(ceph_pair.pool, "listomapkeys", directory).split() == [
        "csi.volume.pvc-1"
    ]
    # An image created after the omap write has reached site-b, so the omap had its chance too.
    name = f"omap-{uuid.uuid4().hex[:8]}"
    image = f"{ceph_pair.pool}/{name}"
    ceph_pair.site_a.rbd("create", "--size", "8M", image)
    ceph_pair.site_a.rbd("mirror", "image", "enable", image, "snapshot")
    wait_for(lambda: ceph_pair.site_b.mirror_state(ceph_pair.pool, name), 60, f"{image} on b")

    objects_on_b = ceph_pair.site_b.rados(ceph_pair.pool, "ls").split()
    assert f"rbd_header.{image_id(ceph_pair.site_b, image)}" in objects_on_b
    assert directory not in objects_on_b


def image_id(site: CephCluster, image_spec: str) -> str:
    image_id: str = json.loads(site.rbd("info", image_spec, "--format", "json"))["id"]
    return image_id


def test_cluster_stops_every_daemon(tmp_path: Path) -> None:
    cluster = CephCluster.start("lone", tmp_path)
    pids = cluster.daemons.pids()
    assert len(pids) == 2  # mon + osd
    assert all(pid_alive(pid) for pid in pids)
    cluster.stop()
    assert not [pid for pid in pids if pid_alive(pid)]


def test_port_in_use_is_named_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"lone mon\.a: port 127\.0\.0\.1:{port}"):
            CephCluster.start("lone", tmp_path, port=port)
    assert not (tmp_path / "lone" / "ceph.conf").exists()


def test_daemon_dying_at_start_names_itself_and_its_log(tmp_path: Path) -> None:
    # A mon whose data directory was never created by --mkfs exits at once.
    (tmp_path / "ceph.conf").write_text(
        f"[global]\nmon data = {tmp_path}/mon-$id\nlog file = {tmp_path}/$name.log\n"
    )
    log_file = tmp_path / "mon.z.out"
    daemon = Daemon(
        name="lab mon.z",
        argv=["ceph-mon", "-f", "-c", str(tmp_path / "ceph.conf"), "-i", "z"],
        log_file=log_file,
    ).start()
    with pytest.raises(DaemonFailed) as failure:
        daemon.wait_ready(lambda: False, timeout=30)
    message = str(failure.value)
    assert "lab mon.z failed to start: exited with status" in message
    assert str(log_file) in message
    assert not pid_alive(daemon.pid)


def test_missing_program_names_its_package() -> None:
    with pytest.raises(MissingPackage, match="install the Debian package 'ceph-nonesuch'"):
        require_ceph_programs({"ceph-nonesuch-daemon": "ceph-nonesuch"})
