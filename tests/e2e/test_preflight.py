"""`preflight` against the real pair and API server: "ready" before a real failover, and the
exact problem named for each one injected (image missing, mirroring stopped, stale snapshot,
missing ceph-csi config entry, missing caps). After the failover, what it planned is what a
regeneration writes.

site-b's API server holds what the controller will use there: the ClusterIDMapping, ceph-csi's
ConfigMap (with the alias entry --manage-csi-config would render) and the CSI user's Secret. The
PVs to protect come as a file, as from a backup of site-a's API server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.preflight.ceph import PROBE_KEY
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.process import Daemon, pid_alive, poll_until
from tests.support.csi_replay import Provisioned, provision

pytestmark = pytest.mark.e2e

NAMESPACE = "preflight"
SECRET = "csi-rbd-secret"
READ_ONLY = "csi-read-only"
MAPPING = "preflight-site-a-to-b"
#: site-b's extra pool (reconciler.sandbox.pair), whose ID is replicapool's on site-a.
SCRATCH = "site-b-scratch"


@dataclass
class World:
    pair: SitePair
    kube: KubeCluster
    volumes: list[Provisioned]
    """Mirrored to site-b and replaying there, not promoted."""
    unmirrored: Provisioned
    """Made on site-a, never mirrored: its image is not on site-b."""
    work: Path

    def pv(self, volume: Provisioned, secret: str = SECRET) -> dict[str, Any]:
        manifest = volume.pv()
        ref = {"name": secret, "namespace": NAMESPACE}
        manifest["spec"]["csi"]["controllerExpandSecretRef"] = ref
        return manifest

    def pv_file(self, name: str, manifests: list[dict[str, Any]]) -> Path:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(manifests))
        return path

    def preflight(self, pv_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "preflight",
                "--local-cluster-id",
                "site-b",
                "--kubeconfig",
                str(self.kube.kubeconfig),
                "--csi-config-namespace",
                NAMESPACE,
                "--pv-file",
                str(pv_file),
                "--quiet",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def report(self, pv_file: Path, *extra: str) -> dict[str, Any]:
        """The JSON report (failing with preflight's stderr when there is none)."""
        done = self.preflight(pv_file, "-o", "json", *extra)
        assert done.stdout, f"exit {done.returncode}: {done.stderr}"
        found: dict[str, Any] = json.loads(done.stdout)
        assert (done.returncode == 0) == found["ready"], done.stderr
        return found

    def config_map(self, *, alias: bool = True) -> dict[str, Any]:
        """ceph-csi's ConfigMap as the controller with --manage-csi-config renders it (or, with
        `alias` False, without the entry for the failed site's clusterID)."""
        monitors = self.pair.site_b.monitors.split(",")
        entries = [{"clusterID": "site-b", "monitors": monitors}]
        if alias:
            entries.append({"clusterID": "site-a", "monitors": monitors})
        ids = {
            str(self.pair.site_a.pool_id(self.pair.pool)): str(
                self.pair.site_b.pool_id(self.pair.pool)
            )
        }
        mapping = [{"clusterIDMapping": {"site-a": "site-b"}, "RBDPoolIDMapping": [ids]}]
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ceph-csi-config", "namespace": NAMESPACE},
            "data": {
                "config.json": json.dumps(entries),
                "cluster-mapping.json": json.dumps(mapping),
            },
        }


def rows(table: str) -> dict[str, list[str]]:
    """The table's rows by PV name."""
    found = {}
    for line in table.splitlines()[1:]:
        if not line.strip():
            break
        found[line.split()[0]] = line.split()
    return found


@pytest.fixture(scope="module")
def world(
    ceph_pair: SitePair, kube: KubeCluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    pair = ceph_pair

    def unique() -> str:
        return f"pvc-preflight-{uuid.uuid4().hex[:8]}"

    volumes = [provision(pair.site_a, "site-a", pair.pool, unique()) for _ in range(2)]
    unmirrored = provision(pair.site_a, "site-a", pair.pool, unique())
    for volume in volumes:
        pair.site_a.rbd("mirror", "image", "enable", f"{pair.pool}/{volume.image_name}", "snapshot")
    poll_until(
        lambda: all(
            pair.site_b.mirror_state(pair.pool, v.image_name) == "up+replaying" for v in volumes
        ),
        120,
        "the images replaying on site-b",
    )
    read_only_key = pair.site_b.create_user(
        READ_ONLY, ("mon", "profile rbd", "osd", "profile rbd-read-only")
    )
    site.kubectl(kube, "create", "namespace", NAMESPACE)
    world = World(pair, kube, volumes, unmirrored, tmp_path_factory.mktemp("preflight"))
    site.apply(
        kube.kubeconfig,
        site.ceph_csi_secret(SECRET, NAMESPACE, CSI_USER, pair.site_b.user_key(CSI_USER)),
        site.ceph_csi_secret(READ_ONLY, NAMESPACE, READ_ONLY, read_only_key),
        world.config_map(),
        site.cluster_id_mapping(MAPPING, "site-a", "site-b", [{"name": pair.pool}]),
    )
    try:
        yield world
    finally:
        site.kubectl(kube, "delete", "clusteridmapping", MAPPING, "--ignore-not-found")
        site.kubectl(kube, "delete", "namespace", NAMESPACE, "--wait=false")


def test_ready_before_a_failover(world: World) -> None:
    done = world.preflight(world.pv_file("ready", [world.pv(v) for v in world.volumes]))

    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    for volume in world.volumes:
        row = table[volume.pv_name]
        assert row[1:4] == ["present", "up+replaying", "non-primary"], row
        assert row[-1] == "yes"
    assert done.stdout.rstrip().endswith(
        "preflight: 2 of 2 PVs ready for a failover to site-b: ready"
    )
    assert "probed (an omap read and a conditional write the OSD cancels)" in done.stdout
    # Nothing was written: no journal object of these volumes on site-b, no probe key.
    pool, site_b = world.pair.pool, world.pair.site_b
    objects = site_b.rados(pool, "ls").split()
    assert not {f"csi.volume.{v.object_uuid}" for v in world.volumes} & set(objects)
    if "csi.volumes.default" in objects:
        keys = set(site_b.rados(pool, "listomapkeys", "csi.volumes.default").split())
        assert PROBE_KEY not in keys
        assert not {f"csi.volume.{v.pv_name}" for v in world.volumes} & keys


def test_pvs_listed_from_a_live_api_server(world: World) -> None:
    """Without --pv-file the PVs come from the API server (here --kubeconfig's, which
    --pvs-kubeconfig would point at site-a's), narrowed with --pv."""
    volume = world.volumes[1]
    site.apply(world.kube.kubeconfig, world.pv(volume))
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "preflight",
                "--local-cluster-id",
                "site-b",
                "--kubeconfig",
                str(world.kube.kubeconfig),
                "--csi-config-namespace",
                NAMESPACE,
                "--pv",
                volume.pv_name,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        site.kubectl(world.kube, "delete", "pv", volume.pv_name, "--wait=false")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [v["pv"] for v in report["volumes"]] == [volume.pv_name]
    assert report["ready"] is True


def test_a_missing_image_is_named(world: World) -> None:
    pvs = [world.pv(world.volumes[0]), world.pv(world.unmirrored)]
    done = world.preflight(world.pv_file("missing", pvs))

    assert done.returncode == 1
    assert rows(done.stdout)[world.unmirrored.pv_name][1] == "missing!"
    assert (
        f"{world.unmirrored.pv_name}: image: RBD image {world.pair.pool}/"
        f"{world.unmirrored.image_name} is not on this cluster"
    ) in done.stdout
    assert rows(done.stdout)[world.volumes[0].pv_name][-1] == "yes"
    assert f"not ready: {world.unmirrored.pv_name} (image)" in done.stdout


def test_missing_caps_are_named_by_the_probe_and_by_auth_get(world: World) -> None:
    key_file = world.work / "admin.key"
    key_file.write_text(world.pair.site_b.user_key("admin"))
    key_file.chmod(0o600)
    pvs = [world.pv(world.volumes[0], secret=READ_ONLY)]

    done = world.preflight(
        world.pv_file("caps", pvs), "--admin-user", "admin", "--admin-key-file", str(key_file)
    )

    assert done.returncode == 1
    assert rows(done.stdout)[world.volumes[0].pv_name][7] == "caps!"
    line = next(ln for ln in done.stdout.splitlines() if ": credentials: " in ln)
    assert f"Secret {NAMESPACE}/{READ_ONLY}" in line
    assert f"probed as client.{READ_ONLY} on {world.pair.pool}/csi.volumes.default" in line
    assert "write refused: permission denied" in line
    assert (
        f"ceph auth get client.{READ_ONLY} as client.admin: osd caps 'profile rbd-read-only' "
        f"do not allow writing in pool '{world.pair.pool}'"
    ) in line
    assert world.pair.site_b.user_key("admin") not in done.stdout + done.stderr


def test_a_missing_ceph_csi_config_entry_is_named(world: World) -> None:
    site.apply(world.kube.kubeconfig, world.config_map(alias=False))
    try:
        done = world.preflight(world.pv_file("cephcsi", [world.pv(world.volumes[0])]))
    finally:
        site.apply(world.kube.kubeconfig, world.config_map())

    assert done.returncode == 1
    assert rows(done.stdout)[world.volumes[0].pv_name][6] == "missing!"
    assert (
        f"cephcsi: ConfigMap {NAMESPACE}/ceph-csi-config key config.json has no entry for "
        "clusterID 'site-a' (ceph-csi rejects its handles: 'missing configuration for cluster ID')"
    ) in done.stdout


def test_a_stale_snapshot_is_named(world: World) -> None:
    """No snapshot schedule here: the newest synced snapshot is the one from when mirroring was
    enabled, older than an RPO of 5 s by now."""
    done = world.preflight(
        world.pv_file("stale", [world.pv(world.volumes[0])]),
        "--max-snapshot-age",
        "5s",
        "-o",
        "json",
    )

    assert done.returncode == 1
    (volume,) = json.loads(done.stdout)["volumes"]
    assert volume["checks"]["snapshot"]["ok"] is False
    assert volume["snapshotAgeSeconds"] > 5
    assert volume["snapshotAgeSource"] == "status"
    assert (
        "over --max-snapshot-age 5s: a failover now would lose"
        in (volume["checks"]["snapshot"]["detail"])
    )
    assert [n for n, c in volume["checks"].items() if not c["ok"]] == ["snapshot"]


def rbd_mirror_daemon(pair: SitePair) -> Daemon:
    (daemon,) = [
        d for d in pair.site_b.daemons.daemons if d.name.endswith("rbd-mirror") and d.running()
    ]
    return daemon


def test_stopped_mirroring_is_named(world: World) -> None:
    daemon = rbd_mirror_daemon(world.pair)
    daemon.stop()
    assert not pid_alive(daemon.pid)
    try:
        poll_until(
            lambda: (
                world.pair.site_b.mirror_state(world.pair.pool, world.volumes[0].image_name)
                == "down+stopped"
            ),
            60,
            "the image down+stopped",
        )
        done = world.preflight(world.pv_file("stopped", [world.pv(world.volumes[0])]), "-o", "json")
    finally:
        world.pair.site_b.start_rbd_mirror(world.pair.pool)

    assert done.returncode == 1
    (volume,) = json.loads(done.stdout)["volumes"]
    assert volume["mirrorState"] == "down+stopped"
    assert volume["checks"]["mirroring"] == {
        "ok": False,
        "detail": "rbd-mirror reports down+stopped: stopped (is rbd-mirror running on this site?)",
    }
    # rbd-mirror's status lost the time when it stopped: the image's own snapshot gave it.
    assert volume["snapshotAgeSource"] == "snapshot"
    assert json.loads(done.stdout)["cephCalls"]["imageOpens"] == 1


def test_an_old_pool_id_that_is_another_pool_here_is_noted_and_a_journal_there_fails(
    world: World,
) -> None:
    """site-b's extra pool has the ID replicapool has on site-a, so ceph-csi looks each old
    handle up in site-b-scratch first (seen with the real ceph-csi). Harmless while no journal
    object of the volume's UUID is there: a note. With one there, ceph-csi would act on the
    volume it names: the PV is not ready, and why is said."""
    pair, volume = world.pair, world.volumes[0]
    old_pool_id = pair.site_a.pool_id(pair.pool)
    assert pair.site_b.pool_id(SCRATCH) == old_pool_id  # the sandbox's collision
    pv_file = world.pv_file("collision", [world.pv(volume)])

    harmless = world.report(pv_file)
    assert harmless["ready"] is True
    assert (
        f"old pool ID {old_pool_id} (1 PVs) is pool '{SCRATCH}' here: ceph-csi looks their old "
        f"handles up in '{SCRATCH}' first"
    ) in " ".join(harmless["notes"])
    assert harmless["cephCalls"]["collisionReads"] == 1
    # An old pool ID that no pool has here is no collision (librados answers None for it).
    elsewhere = world.pv(volume)
    elsewhere["spec"]["csi"]["volumeHandle"] = volume.handle.replace(
        f"-{old_pool_id:016x}-", f"-{99:016x}-"
    )
    assert elsewhere["spec"]["csi"]["volumeHandle"] != volume.handle
    unknown = world.report(world.pv_file("unknown-pool-id", [elsewhere]))
    assert not [n for n in unknown["notes"] if "old pool ID" in n], unknown["notes"]
    assert "collisionReads" not in unknown["cephCalls"]

    oid = f"csi.volume.{volume.object_uuid}"
    pair.site_b.rados(SCRATCH, "setomapval", oid, "csi.imagename", "csi-vol-someone-else")
    try:
        done = world.preflight(pv_file)
    finally:
        pair.site_b.rados(SCRATCH, "rm", oid)
    assert done.returncode == 1
    assert rows(done.stdout)[volume.pv_name][6] == "pool-id!"
    assert (
        f"cephcsi: the old pool ID {old_pool_id} is pool '{SCRATCH}' here, which holds {oid}: "
        f"ceph-csi looks there first with the old handle and would act on the volume that "
        f"object names, not on {pair.pool}/{volume.image_name}"
    ) in done.stdout


def test_after_the_failover_the_plan_is_what_regeneration_writes(world: World) -> None:
    """The real failover: promoted on site-b. What preflight planned (new handle, keys) is what
    `journal regenerate` then writes; preflight afterwards finds the journal in place."""
    pair = world.pair
    pv_file = world.pv_file("failover", [world.pv(v) for v in world.volumes])
    poll_until(
        lambda: all(
            pair.site_b.mirror_state(pair.pool, v.image_name) == "up+replaying"
            for v in world.volumes
        ),
        120,
        "replaying again",
    )
    planned = world.report(pv_file)
    assert planned["ready"] is True, planned["summary"]
    for volume in world.volumes:
        pair.site_b.rbd("mirror", "image", "promote", "--force", f"{pair.pool}/{volume.image_name}")

    key_file = pair.site_b.dir / f"{CSI_USER}.key"
    volume = world.volumes[0]
    single = world.pv_file("one", [world.pv(volume)])
    regenerated = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "journal",
            "regenerate",
            str(single),
            "--cluster-id",
            "site-b",
            "--monitors",
            pair.site_b.monitors,
            "--user",
            CSI_USER,
            "--key-file",
            str(key_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    written = json.loads(regenerated.stdout)
    (plan,) = [v for v in planned["volumes"] if v["pv"] == volume.pv_name]
    assert written["newHandle"] == plan["newVolumeHandle"]
    assert written["written"] == plan["journalWrites"]

    after = world.report(pv_file)
    by_name = {v["pv"]: v for v in after["volumes"]}
    assert by_name[volume.pv_name]["checks"]["journal"]["detail"].startswith("in place")
    assert by_name[volume.pv_name]["primary"] is True
    assert after["ready"] is True, after["summary"]
