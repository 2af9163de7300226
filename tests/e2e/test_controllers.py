"""`rbd-mirror-reconciler run` end to end: a real failover on the Ceph pair, the PVs re-applied to a
real API server, and the controller running as a separate process with the ServiceAccount and
RBAC from config/rbac, so every permission it uses is really checked.

site-b is the surviving site: its controller has --local-cluster-id site-b-cluster, and the PVs
carry site-a's handles, as they would after an admin re-applied them from a backup.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.kinds import RETRY_ANNOTATION, volume_handle_selector
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.prometheus import Prometheus
from reconciler.sandbox.site import GROUP, apply, kubectl
from tests.e2e.support import report
from tests.support import csi_replay
from tests.support.csi_replay import Provisioned, VolumeFactory
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

SITE_A_ID = "site-a-cluster"
SITE_B_ID = "site-b-cluster"
NAMESPACE = "rook-ceph"  # where Provisioned.pv()'s Secret reference points
SECRET = "rook-csi-rbd-provisioner"
CSI_CONFIG = "ceph-csi-config"
MAPPING_KEY = "cluster-mapping.json"
API = f"/apis/{GROUP}/v1alpha1"
CONVERGE = 90.0


def controller_process(kubeconfig: Path, work: Path) -> site.ControllerProcess:
    return site.elected_controller(kubeconfig, work, SITE_B_ID, NAMESPACE)


def cluster_id_mapping(name: str, site_a: str, **pool_ids: int) -> dict[str, Any]:
    return site.cluster_id_mapping(name, site_a, SITE_B_ID, [{"name": "replicapool", **pool_ids}])


def handle_mapping(kube: KubeCluster, pv_name: str) -> dict[str, Any] | None:
    return kube.get(f"{API}/volumehandlemappings/{pv_name}")


def ready(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Ready condition of `obj`, if it has one."""
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def ready_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The Ready condition `obj` must have."""
    condition = ready(obj)
    assert condition is not None, f"no Ready condition on {obj!r}"
    return condition


def existing(obj: dict[str, Any] | None) -> dict[str, Any]:
    assert obj is not None
    return obj


def wait_for_reason(
    kube: KubeCluster, controller: site.ControllerProcess, pv_name: str, reason: str
) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        mapping = handle_mapping(kube, pv_name)
        condition = ready(mapping)
        return mapping if condition is not None and condition["reason"] == reason else None

    try:
        return wait_for(settled, CONVERGE, f"{pv_name}'s mapping to say {reason}")
    except pytest.fail.Exception:
        print(controller.log())
        raise


def events_about(kube: KubeCluster, name: str) -> list[dict[str, Any]]:
    answer = kube.request(
        "GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
    )
    items: list[dict[str, Any]] = answer["items"]
    return items


def journal_of(pair: SitePair, volume: Provisioned) -> dict[str, bytes | None]:
    """What site-b's journal holds for `volume`: its directory key and per-volume object."""
    directory = csi_replay.omap(pair.site_b, volume.pool, "csi.volumes.default") or {}
    per_volume = csi_replay.omap(pair.site_b, volume.pool, f"csi.volume.{volume.object_uuid}")
    return {
        "directory": directory.get(f"csi.volume.{volume.pv_name}"),
        "volume": json.dumps({k: v.decode() for k, v in per_volume.items()}).encode()
        if per_volume is not None
        else None,
    }


def object_version(pair: SitePair, pool: str, oid: str) -> int:
    """RADOS's version of an object: it grows with every write, identical rewrites included."""
    with csi_replay.ioctx(pair.site_b, pool) as io:
        io.stat(oid)
        version: int = io.get_last_version()
        return version


@dataclass
class World:
    pair: SitePair
    kube: KubeCluster
    controller: site.ControllerProcess

    def apply_pvs(self, *manifests: dict[str, Any]) -> None:
        result = apply(self.kube, *manifests, check=False)
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def world(
    ceph_pair: SitePair,
    kube: KubeCluster,
    crds: None,
    checkout: Checkout,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    """site-b after a failover: ceph-csi's Secret and config in place, the RBAC applied and the
    controller running as its ServiceAccount. Each test makes the volumes it needs (`volumes`)."""
    work = tmp_path_factory.mktemp("controllers")
    overlay, _ = site.install_controller_inputs(
        kube.kubeconfig,
        checkout,
        ceph_pair.site_b,
        work,
        namespace=NAMESPACE,
        secret=SECRET,
        cluster_id=SITE_B_ID,
    )
    kubeconfig = kube.service_account_kubeconfig(NAMESPACE, site.SERVICE_ACCOUNT, create=False)
    controller = controller_process(kubeconfig, work)
    controller.start("--workers", "2")
    try:
        yield World(ceph_pair, kube, controller)
    finally:
        controller.stop()
        # The API server outlives this module: leave it as later modules expect to find it.
        ours = [
            pv["metadata"]["name"]
            for pv in kube_list(kube, "/api/v1/persistentvolumes")
            if pv["metadata"]["name"].startswith("ctl-")
        ]
        if ours:
            kubectl(kube, "delete", "pv", *ours, "--wait=false")
        kubectl(kube, "delete", "clusteridmappings", "--all")
        kubectl(kube, "delete", "-k", str(overlay), "--ignore-not-found")
        kubectl(kube, "delete", "namespace", NAMESPACE, "--wait=false")


@pytest.fixture(scope="module")
def failed_over(world: World) -> World:
    """The mapping site-a <-> site-b applied with kubectl."""
    result = apply(world.kube, cluster_id_mapping("site-a-to-b", SITE_A_ID), check=False)
    assert result.returncode == 0, result.stderr
    return world


@pytest.fixture(scope="module")
def volumes(new_volumes: VolumeFactory) -> VolumeFactory:
    """New volumes of site-a's, failed over to site-b, named ctl-<random> (the module's teardown
    deletes the PVs of that prefix)."""
    return new_volumes.derive(cluster_id=SITE_A_ID, prefix="ctl")


def applied(world: World, volumes: VolumeFactory, count: int = 1) -> list[Provisioned]:
    """`count` new failed-over volumes whose PVs are re-applied on site-b."""
    made = volumes(count)
    world.apply_pvs(*(volume.pv() for volume in made))
    return made


def test_every_pv_gets_a_ready_mapping_and_a_journal_on_site_b(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    pair = world.pair
    pool_b = pair.site_b.pool_id(pair.pool)
    for volume in applied(world, volumes, 3):
        name = volume.pv_name
        mapping = wait_for_reason(world.kube, world.controller, name, "JournalRegenerated")
        status = mapping["status"]
        assert status["newVolumeHandle"] == csi_replay.ceph_csi_handle(
            SITE_B_ID, pool_b, volume.object_uuid
        )
        assert (status["clusterID"], status["pool"], status["poolID"]) == (
            SITE_B_ID,
            pair.pool,
            pool_b,
        )
        assert status["imageName"] == volume.image_name
        assert status["clusterIDMappings"] == ["site-a-to-b"]
        assert status["readySince"] == ready_of(mapping)["lastTransitionTime"]
        assert mapping["spec"] == {"pvName": name, "volumeHandle": volume.handle}
        owner = mapping["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("PersistentVolume", name)

        directory = csi_replay.omap(pair.site_b, pair.pool, "csi.volumes.default") or {}
        assert directory[f"csi.volume.{name}"] == volume.object_uuid.encode()
        per_volume = csi_replay.omap(pair.site_b, pair.pool, f"csi.volume.{volume.object_uuid}")
        assert per_volume == {
            "csi.volname": name.encode(),
            "csi.imagename": volume.image_name.encode(),
            "csi.imageid": csi_replay.image_id(pair.site_b, pair.pool, volume.image_name).encode(),
            "csi.volume.owner": volume.namespace.encode(),
        }
        regenerated = [
            e for e in events_about(world.kube, name) if e["reason"] == "JournalRegenerated"
        ]
        kinds = {e["involvedObject"]["kind"] for e in regenerated}
        assert kinds == {"PersistentVolume", "VolumeHandleMapping"}
        assert "wrote csi.volname" in regenerated[0]["message"]
        # The CSI side finds the mapping by old handle with one request selecting one object.
        selector = quote(volume_handle_selector(volume.handle))
        found = kube_list(world.kube, f"{API}/volumehandlemappings?labelSelector={selector}")
        assert [o["metadata"]["name"] for o in found] == [name]


def test_kubectl_get_volumehandlemappings_shows_the_outcome(
    failed_over: World, volumes: VolumeFactory
) -> None:
    [volume] = applied(failed_over, volumes)
    name = volume.pv_name
    wait_for_reason(failed_over.kube, failed_over.controller, name, "JournalRegenerated")
    table = kubectl(failed_over.kube, "get", "volumehandlemappings").stdout.splitlines()
    assert table[0].split()[:6] == ["NAME", "PV", "READY", "REASON", "CLUSTERID", "POOL"]
    row = next(line.split() for line in table if line.startswith(f"{name} "))
    pool_b = failed_over.pair.site_b.pool_id(failed_over.pair.pool)
    assert row[1:7] == [
        name,
        "True",
        "JournalRegenerated",
        SITE_B_ID,
        failed_over.pair.pool,
        str(pool_b),
    ]


def ceph_csi_resolve(mapping_json: str, cluster_id: str, pool_id: int) -> tuple[str, int] | None:
    """What ceph-csi makes of an old (clusterID, pool ID) with cluster-mapping.json: an entry
    matches by key or value, and the pool mapping is read in the matching direction."""
    for entry in json.loads(mapping_json):
        for key, value in entry["clusterIDMapping"].items():
            forward = cluster_id == key
            if not forward and cluster_id != value:
                continue
            for pools in entry.get("RBDPoolIDMapping") or []:  # Go: a nil slice
                for a, b in pools.items():
                    if forward and int(a) == pool_id:
                        return value, int(b)
                    if not forward and int(b) == pool_id:
                        return key, int(a)
    return None


def test_cluster_mapping_status_and_the_rendered_file(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    pair = world.pair
    pool_a, pool_b = pair.site_a.pool_id(pair.pool), pair.site_b.pool_id(pair.pool)
    # A regenerated volume teaches the mapping both pool IDs.
    [volume] = applied(world, volumes)
    wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalRegenerated")

    def learnt() -> dict[str, Any] | None:
        cidm = world.kube.get(f"{API}/clusteridmappings/site-a-to-b") or {}
        pools = (cidm.get("status") or {}).get("rbdPools") or [{}]
        return cidm if "localPoolID" in pools[0] and "remotePoolID" in pools[0] else None

    cidm = wait_for(learnt, CONVERGE, "pool IDs learnt on site-a-to-b")
    status = cidm["status"]
    assert (status["localClusterID"], status["remoteClusterID"]) == (SITE_B_ID, SITE_A_ID)
    assert status["rbdPools"] == [
        {
            "name": pair.pool,
            "localPoolID": pool_b,
            "localPoolIDSource": "LocalCluster",
            "remotePoolID": pool_a,
            "remotePoolIDSource": "VolumeHandle",
        }
    ]
    assert ready_of(cidm)["reason"] == "Mapped"

    def rendered() -> str | None:
        config_map = world.kube.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CSI_CONFIG}")
        text = ((config_map or {}).get("data") or {}).get(MAPPING_KEY)
        return text if text and str(pool_a) in text else None

    text = wait_for(rendered, CONVERGE, "cluster-mapping.json rendered with the pool IDs")
    entry = {
        "clusterIDMapping": {SITE_A_ID: SITE_B_ID},
        "RBDPoolIDMapping": [{f"{pool_a}": f"{pool_b}"}],
        "renderedBy": "rbd-mirror-reconciler: ClusterIDMapping site-a-to-b",
    }
    assert entry in json.loads(text)
    # An admin's own entry (CephFS here) replaces the file: it is kept, and ours comes back.
    by_hand = {"clusterIDMapping": {SITE_A_ID: SITE_B_ID}, "CephFSFscIDMapping": [{"1": "2"}]}
    patch = {"data": {MAPPING_KEY: json.dumps([by_hand])}}
    kubectl(world.kube, "patch", "configmap", CSI_CONFIG, "-n", NAMESPACE, "-p", json.dumps(patch))

    def rendered_again() -> str | None:
        again = rendered()
        return again if again and entry in json.loads(again) else None

    text = wait_for(rendered_again, CONVERGE, "cluster-mapping.json rendered again")
    assert json.loads(text) == [by_hand, entry]
    # ceph-csi on site-b resolves an old site-a handle to site-b, and on failback the reverse.
    assert ceph_csi_resolve(text, SITE_A_ID, pool_a) == (SITE_B_ID, pool_b)
    assert ceph_csi_resolve(text, SITE_B_ID, pool_b) == (SITE_A_ID, pool_a)
    # config.json: the local entry as it was, and a copy of it under the failed site's clusterID
    # (ceph-csi looks the handle's clusterID up there before it reads the mapping).
    config_map = world.kube.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CSI_CONFIG}") or {}
    clusters = json.loads(config_map["data"]["config.json"])
    assert [c["clusterID"] for c in clusters] == [SITE_B_ID, SITE_A_ID]
    assert {**clusters[1], "clusterID": SITE_B_ID} == {
        **clusters[0],
        "renderedBy": "rbd-mirror-reconciler: ClusterIDMapping site-a-to-b",
    }
    annotations = config_map["metadata"]["annotations"]
    assert json.loads(annotations["rbdmirror.csi.ceph.io/rendered-config-json"]) == [SITE_A_ID]

    def configured() -> dict[str, Any] | None:
        cidm = world.kube.get(f"{API}/clusteridmappings/site-a-to-b") or {}
        found = [
            c
            for c in (cidm.get("status") or {}).get("conditions") or []
            if c["type"] == "CephCSIConfigured" and c["status"] == "True"
        ]
        return found[0] if found else None

    assert wait_for(configured, CONVERGE, "CephCSIConfigured")["reason"] == "Configured"


def pv_variant(
    volume: Provisioned, name: str, handle: str | None = None, **changes: Any
) -> dict[str, Any]:
    """`volume`'s PV under another name, with another handle, attributes (None removes one) or
    Secret name."""
    pv = volume.pv()
    pv["metadata"]["name"] = name
    csi = pv["spec"]["csi"]
    if handle is not None:
        csi["volumeHandle"] = handle
    for key, value in changes.items():
        if value is None:
            csi.pop(key, None)
            csi["volumeAttributes"].pop(key, None)
        elif key == "secret":
            csi["controllerExpandSecretRef"]["name"] = value
        else:
            csi["volumeAttributes"][key] = value
    return pv


def test_bad_inputs_end_with_their_reason_and_nothing_written(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    pair = world.pair
    # Real volumes of site-a's, but PVs that are wrong in one way each.
    source, good = volumes(2)
    ghost = str(uuid.uuid4())
    bad = {
        case: f"{source.pv_name}-{case}"
        for case in ("bad-handle", "no-pool", "no-secret", "unmapped", "no-image")
    }
    cases = {
        bad["bad-handle"]: (
            pv_variant(source, bad["bad-handle"], "0001-not-a-handle"),
            "InvalidHandle",
        ),
        bad["no-pool"]: (pv_variant(source, bad["no-pool"], pool=None), "InvalidVolume"),
        bad["no-secret"]: (
            pv_variant(source, bad["no-secret"], secret="no-such-secret"),
            "SecretNotFound",
        ),
        bad["unmapped"]: (
            pv_variant(
                source,
                bad["unmapped"],
                csi_replay.ceph_csi_handle("site-z", 1, source.object_uuid),
            ),
            "ClusterNotMapped",
        ),
        bad["no-image"]: (
            pv_variant(
                source,
                bad["no-image"],
                csi_replay.ceph_csi_handle(SITE_A_ID, 1, ghost),
                imageName=f"csi-vol-{ghost}",
            ),
            "ImageNotFound",
        ),
    }
    world.apply_pvs(*(pv for pv, _ in cases.values()))
    for name, (_, reason) in cases.items():
        mapping = wait_for_reason(world.kube, world.controller, name, reason)
        assert ready_of(mapping)["status"] == "False"
        assert "newVolumeHandle" not in mapping["status"]
        warnings = [e for e in events_about(world.kube, name) if e["type"] == "Warning"]
        assert reason in {e["reason"] for e in warnings}
    message = ready_of(handle_mapping(world.kube, bad["unmapped"]))["message"]
    assert "'site-z' is neither local nor mapped: no ClusterIDMapping names it" in message
    for name in cases:
        assert csi_replay.nothing_written_for(pair, name, source.object_uuid)
    assert csi_replay.nothing_written_for(pair, bad["no-image"], ghost)
    # The Secret's key appears nowhere the controller writes or logs.
    key = (pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    assert key not in world.controller.log()
    # Others are unaffected: a good PV applied now still converges.
    world.apply_pvs(good.pv())
    wait_for_reason(world.kube, world.controller, good.pv_name, "JournalRegenerated")


def test_conflicting_mappings_are_used_for_neither_until_one_is_fixed(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    pair = world.pair
    pool_c = 7
    [volume] = volumes()
    # The same volume re-applied as if it came from a third site, "site-c".
    handle = csi_replay.ceph_csi_handle("site-c", pool_c, volume.object_uuid)
    first = cluster_id_mapping("site-c-first", "site-c", siteAPoolID=pool_c)
    second = cluster_id_mapping("site-c-second", "site-c", siteAPoolID=pool_c + 1)
    assert apply(world.kube, first, second, check=False).returncode == 0
    for name, other in (("site-c-first", "site-c-second"), ("site-c-second", "site-c-first")):

        def conflicting(name: str = name) -> dict[str, Any] | None:
            condition = ready(world.kube.get(f"{API}/clusteridmappings/{name}"))
            return condition if condition and condition["reason"] == "Conflicting" else None

        condition = wait_for(conflicting, CONVERGE, f"{name} marked Conflicting")
        assert f"in ClusterIDMapping {other}" in condition["message"]
    world.apply_pvs(pv_variant(volume, volume.pv_name, handle))
    mapping = wait_for_reason(world.kube, world.controller, volume.pv_name, "ClusterNotMapped")
    assert "site-c-first is not Ready (Conflicting" in ready_of(mapping)["message"]
    assert csi_replay.nothing_written_for(pair, volume.pv_name, volume.object_uuid)

    fixed = cluster_id_mapping("site-c-second", "site-c", siteAPoolID=pool_c)
    assert apply(world.kube, fixed, check=False).returncode == 0
    mapping = wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalRegenerated")
    assert sorted(mapping["status"]["clusterIDMappings"]) == ["site-c-first", "site-c-second"]
    for name in ("site-c-first", "site-c-second"):
        assert ready_of(world.kube.get(f"{API}/clusteridmappings/{name}"))["reason"] == "Mapped"


def test_deleting_the_pv_deletes_its_mapping(failed_over: World, volumes: VolumeFactory) -> None:
    world = failed_over
    [volume] = applied(world, volumes)
    name = volume.pv_name
    wait_for_reason(world.kube, world.controller, name, "JournalRegenerated")
    kubectl(world.kube, "delete", "pv", name, "--wait=false")
    wait_for(
        lambda: handle_mapping(world.kube, name) is None,
        CONVERGE,
        f"the garbage collector to delete {name}'s mapping",
    )


def test_a_restart_midway_converges_without_duplicates_or_second_writes(
    failed_over: World, volumes: VolumeFactory, request: pytest.FixtureRequest
) -> None:
    world = failed_over
    pair = world.pair
    made = {volume.pv_name: volume for volume in volumes(6)}
    names = sorted(made)
    world.controller.stop()
    world.controller.start("--workers", "1")
    world.apply_pvs(*(made[n].pv() for n in names))

    def some_ready() -> list[str]:
        return [
            n
            for n in names
            if (c := ready(handle_mapping(world.kube, n))) and c["status"] == "True"
        ]

    # One worker and a quick poll: killed after the first PV, the others are still to do.
    wait_for(some_ready, CONVERGE, "a first PV to converge", interval=0.05)
    world.controller.stop(signal.SIGKILL)  # mid-way: no graceful anything
    killed_log = world.controller.current_log()
    converged = some_ready()
    report(request.config, f"\nrestart mid-way: {len(converged)} of {len(names)} PVs converged")
    before = {
        n: (
            existing(handle_mapping(world.kube, n))["metadata"]["resourceVersion"],
            object_version(pair, pair.pool, f"csi.volume.{made[n].object_uuid}"),
            journal_of(pair, made[n]),
        )
        for n in converged
    }

    world.controller.start("--workers", "2")
    for name in names:
        wait_for_reason(world.kube, world.controller, name, "JournalRegenerated")
    listed = kube_list(world.kube, f"{API}/volumehandlemappings")
    assert sorted(o["spec"]["pvName"] for o in listed if o["spec"]["pvName"] in names) == names
    # The killed controller wrote the converged ones' journals; the restarted one wrote none.
    assert set(converged) <= journal_writes(killed_log)
    assert not journal_writes(world.controller.current_log()) & set(converged)
    for name, (resource_version, version, journal) in before.items():
        volume = made[name]
        assert (
            existing(handle_mapping(world.kube, name))["metadata"]["resourceVersion"]
            == resource_version
        )
        assert object_version(pair, pair.pool, f"csi.volume.{volume.object_uuid}") == version
        assert journal_of(pair, volume) == journal


def journal_writes(log: str) -> set[str]:
    """The PVs whose journal a controller's JSON log says it wrote."""
    records = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return {r["pv"] for r in records if r.get("message") == "journal written"}


def kube_list(kube: KubeCluster, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.request("GET", path)["items"]
    return items


def test_the_controller_is_denied_what_its_role_does_not_grant(world: World) -> None:
    """The ServiceAccount really is confined: Secrets are read one by one in its namespace only."""

    def can(*request: str) -> str:
        return kubectl(world.controller, "auth", "can-i", *request, check=False).stdout.strip()

    assert can("get", "secrets", "-n", NAMESPACE) == "yes"
    assert can("get", "secrets", "-n", "kube-system") == "no"
    assert can("list", "secrets", "-n", NAMESPACE) == "no"
    assert can("update", "persistentvolumes") == "no"


def test_a_journal_conflict_is_terminal_writes_nothing_and_is_retried_on_request(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    pair = world.pair
    [volume] = volumes()
    stray = str(uuid.uuid4())
    # Another volume already holds this PV name in site-b's journal: its object says so. (A key
    # whose object is missing would be stale, and ceph-csi's rule is to redo it.)
    pair.site_b.rados(
        volume.pool, "setomapval", "csi.volumes.default", f"csi.volume.{volume.pv_name}", stray
    )
    pair.site_b.rados(volume.pool, "setomapval", f"csi.volume.{stray}", "csi.volname", "other-pv")
    world.apply_pvs(volume.pv())
    mapping = wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalConflict")
    assert f"found {stray!r}, expected {volume.object_uuid!r}" in ready_of(mapping)["message"]
    directory = csi_replay.omap(pair.site_b, volume.pool, "csi.volumes.default") or {}
    assert directory[f"csi.volume.{volume.pv_name}"] == stray.encode()
    assert csi_replay.omap(pair.site_b, volume.pool, f"csi.volume.{volume.object_uuid}") is None

    # Fixed on Ceph, outside Kubernetes: the admin asks for a retry with an annotation.
    pair.site_b.rados(
        volume.pool, "rmomapkey", "csi.volumes.default", f"csi.volume.{volume.pv_name}"
    )
    kubectl(world.kube, "annotate", "pv", volume.pv_name, f"{RETRY_ANNOTATION}=1")
    wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalRegenerated")


def test_an_image_not_yet_promoted_waits_and_then_converges(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    pair = world.pair
    [volume] = volumes(fail_over=False)  # mirrored below, and left secondary on site-b
    image = f"{volume.pool}/{volume.image_name}"
    pair.site_a.rbd("mirror", "image", "enable", image, "snapshot")
    wait_for(
        lambda: pair.site_b.mirror_state(volume.pool, volume.image_name) == "up+replaying",
        CONVERGE,
        f"{image} replaying on site-b",
    )
    world.apply_pvs(volume.pv())
    wait_for_reason(world.kube, world.controller, volume.pv_name, "ImageNotPrimary")
    assert csi_replay.nothing_written_for(pair, volume.pv_name, volume.object_uuid)
    # Retried with backoff: once the admin promotes the image, the PV converges by itself.
    pair.site_b.rbd("mirror", "image", "promote", "--force", image)
    wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalRegenerated")


def test_a_pv_re_created_with_another_handle_updates_its_mapping(
    failed_over: World, volumes: VolumeFactory
) -> None:
    world = failed_over
    [volume] = applied(world, volumes)
    first = wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalRegenerated")
    # A PV's handle is immutable: "re-applied" means deleted and created again by name.
    kubectl(world.kube, "delete", "pv", volume.pv_name)
    alias = cluster_id_mapping("site-d-to-b", "site-d", siteAPoolID=11)
    assert apply(world.kube, alias, check=False).returncode == 0
    handle = csi_replay.ceph_csi_handle("site-d", 11, volume.object_uuid)
    world.apply_pvs(pv_variant(volume, volume.pv_name, handle))

    def updated() -> dict[str, Any] | None:
        mapping = handle_mapping(world.kube, volume.pv_name)
        condition = ready(mapping)
        return (
            mapping
            if mapping is not None
            and mapping["spec"]["volumeHandle"] == handle
            and condition is not None
            and condition["status"] == "True"
            and mapping["status"]["clusterIDMappings"] == ["site-d-to-b"]
            else None
        )

    mapping = wait_for(updated, CONVERGE, f"{volume.pv_name}'s mapping updated to the new handle")
    assert mapping["status"]["newVolumeHandle"] == first["status"]["newVolumeHandle"]
    pv_uid = world.kube.request("GET", f"/api/v1/persistentvolumes/{volume.pv_name}")["metadata"]
    assert [o["uid"] for o in mapping["metadata"]["ownerReferences"]] == [pv_uid["uid"]]
    for old_or_new, count in ((volume.handle, 0), (handle, 1)):
        selector = quote(volume_handle_selector(old_or_new))
        assert (
            len(kube_list(world.kube, f"{API}/volumehandlemappings?labelSelector={selector}"))
            == count
        )


def test_dry_run_writes_nothing_anywhere(failed_over: World, volumes: VolumeFactory) -> None:
    world = failed_over
    pair = world.pair
    [volume] = volumes()
    world.controller.stop()
    world.controller.start("--dry-run")
    try:
        world.apply_pvs(volume.pv())
        wait_for(
            lambda: (
                "dry run: would regenerate" in world.controller.current_log()
                and volume.pv_name in world.controller.current_log()
            ),
            CONVERGE,
            "the dry run to plan ctl-dry",
        )
        assert handle_mapping(world.kube, volume.pv_name) is None
        assert csi_replay.nothing_written_for(pair, volume.pv_name, volume.object_uuid)
    finally:
        world.controller.stop()
        world.controller.start()
    wait_for_reason(world.kube, world.controller, volume.pv_name, "JournalRegenerated")


def scraped(prometheus: Prometheus, expr: str) -> float | None:
    """The single value of `expr` in a real Prometheus, or None while it has none."""
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if len(result) == 1 else None


def ready_mappings(kube: KubeCluster) -> int:
    return sum(
        (ready(m) or {}).get("status") == "True"
        for m in kube_list(kube, f"{API}/volumehandlemappings")
    )


def test_prometheus_scrapes_the_progress_and_its_alerts_see_a_stuck_volume(
    failed_over: World, volumes: VolumeFactory, checkout: Checkout, tmp_path: Path
) -> None:
    world = failed_over
    [volume] = volumes()
    name = volume.pv_name
    stuck = pv_variant(volume, name, secret="prom-credentials")
    world.apply_pvs(stuck)
    wait_for_reason(world.kube, world.controller, name, "SecretNotFound")
    alert_rules = checkout.config("prometheus", "alerts.yaml")
    with Prometheus.start(tmp_path, [world.controller.health_address], [alert_rules]) as prom:
        # The runtime's series and the product's, from the leader's /metrics.
        assert (
            wait_for(
                lambda: scraped(prom, "max(leader_election_master_status)"), 30, "the lease status"
            )
            == 1.0
        )
        assert wait_for(
            lambda: scraped(
                prom,
                'controller_runtime_reconcile_total{controller="persistentvolume",'
                'result="success"}',
            ),
            30,
            "successful reconciles",
        )
        wait_for(
            lambda: (scraped(prom, "rbd_mirror_reconciler_oldest_pending_volume_seconds") or 0) > 0,
            30,
            "a failover lag above 0",
        )
        assert (scraped(prom, "rbd_mirror_reconciler_volumes_pending") or 0) >= 1
        # The shipped rule sees it: pending now, firing once its `for` has passed.
        alert = wait_for(
            lambda: next(
                (
                    a
                    for a in prom.alerts()
                    if a["labels"]["alertname"] == "RBDMirrorVolumeHandleMappingFailing"
                    and a["labels"].get("reason") == "SecretNotFound"
                ),
                None,
            ),
            30,
            "RBDMirrorVolumeHandleMappingFailing for SecretNotFound",
        )
        assert alert["state"] == "pending"

        # Fixed: the Secret appears and the PV is retried; Prometheus counts it Ready.
        key = (world.pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
        site.apply(
            world.kube.kubeconfig,
            site.ceph_csi_secret("prom-credentials", NAMESPACE, CSI_USER, key),
        )
        kubectl(world.kube, "annotate", "pv", name, f"{RETRY_ANNOTATION}=1")
        wait_for_reason(world.kube, world.controller, name, "JournalRegenerated")
        wait_for(
            lambda: (
                scraped(
                    prom,
                    'sum(rbd_mirror_reconciler_volume_handle_mappings{ready="true"})',
                )
                == ready_mappings(world.kube)
            ),
            30,
            "Prometheus' count of Ready mappings to match the API server's",
        )
        remapped = scraped(prom, "rbd_mirror_reconciler_volume_remap_duration_seconds_count")
        assert remapped is not None and remapped >= 1
        assert key not in world.controller.metrics()


def queue_idle(controller: site.ControllerProcess, name: str) -> bool:
    """No key of controller `name` waiting or being reconciled, by the process' /metrics."""
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(controller.metrics())
        for s in family.samples
        if s.labels.get("name") == name
    }
    return samples["workqueue_depth"] == 0 and samples["workqueue_unfinished_work_seconds"] == 0


def test_one_clusterid_on_both_sites_is_remapped_by_pool_id(
    failed_over: World, volumes: VolumeFactory
) -> None:
    """Rook names both sites' clusterID after its namespace: an old handle then names site-b's
    own clusterID and differs from a local one by its pool ID alone."""
    world = failed_over
    pair = world.pair
    pool_b = pair.site_b.pool_id(pair.pool)
    [from_a] = volumes(cluster_id=SITE_B_ID)
    [born_here] = volumes(cluster_id=SITE_B_ID, site=pair.site_b, fail_over=False)
    here_version = object_version(pair, pair.pool, f"csi.volume.{born_here.object_uuid}")
    world.apply_pvs(from_a.pv(), born_here.pv())
    result = apply(world.kube, cluster_id_mapping("one-clusterid", SITE_B_ID), check=False)
    assert result.returncode == 0, result.stderr
    try:
        converged = wait_for_reason(
            world.kube, world.controller, from_a.pv_name, "JournalRegenerated"
        )
        assert converged["status"]["newVolumeHandle"] == csi_replay.ceph_csi_handle(
            SITE_B_ID, pool_b, from_a.object_uuid
        )
        assert converged["status"]["clusterIDMappings"] == ["one-clusterid"]
        per_volume = csi_replay.omap(pair.site_b, pair.pool, f"csi.volume.{from_a.object_uuid}")
        assert per_volume is not None and per_volume["csi.volname"] == from_a.pv_name.encode()
        # The mapping learns the local ID here and the remote one from site-a's handle alone.
        pool_a = pair.site_a.pool_id(pair.pool)

        def learnt() -> list[dict[str, Any]] | None:
            obj = world.kube.get(f"{API}/clusteridmappings/one-clusterid") or {}
            pools = (obj.get("status") or {}).get("rbdPools") or []
            return pools if pools and "remotePoolID" in pools[0] else None

        pools = wait_for(learnt, CONVERGE, "one-clusterid to learn both pool IDs")
        assert (pools[0]["localPoolID"], pools[0]["remotePoolID"]) == (pool_b, pool_a)
        # The volume provisioned here was looked at and left alone: no mapping, no write.
        wait_for(lambda: queue_idle(world.controller, "persistentvolume"), 30, "the PV queue idle")
        assert handle_mapping(world.kube, born_here.pv_name) is None
        assert (
            object_version(pair, pair.pool, f"csi.volume.{born_here.object_uuid}") == here_version
        )
    finally:
        kubectl(world.kube, "delete", "cidm", "one-clusterid")
