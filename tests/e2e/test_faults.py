"""The fault suite, part one: faults injected for real into a running controller (its own process,
the ServiceAccount and RBAC of config/rbac, the real API server, the real Ceph pair), and what the
controller makes of each: the mapping's conditions, what keeps being served, what is written on
Ceph, and that nothing secret shows.

- site-b's monitor and OSD stalled (SIGSTOP) and resumed: Ready mappings stay Ready (Degraded),
  and recover well before a long backoff would let them;
- a conflicting ClusterIDMapping applied after volumes were remapped: they keep being served,
  and no new volume is remapped through it until the conflict is resolved;
- a stray PV with another pool ID: the learnt ID stays, and the ambiguity is a condition;
- bad input: a Secret the controller may not read, a handle longer than a mapping holds, a pool
  the ClusterIDMapping does not list: each its reason and a Warning, not retried forever;
- --dry-run with a ClusterIDMapping nobody has written a status for;
- a PV whose claim is removed;
- a Ceph key rotated: the new one is used, the old key's connection closed;
- what the controller's RBAC no longer grants.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.kinds import RETRY_ANNOTATION
from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_CAPS
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.site import GROUP, apply, kubectl
from tests.support import csi_replay
from tests.support.csi_replay import Provisioned
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

SITE_A_ID = "flt-site-a"
SITE_B_ID = "flt-site-b"
NAMESPACE = "faults-csi"
SECRET = "faults-csi-secret"
CSI_CONFIG = "ceph-csi-config"
MAPPING = "flt-a-to-b"
API = f"/apis/{GROUP}/v1alpha1"
CONVERGE = 90.0
#: How many failed-over volumes the module makes, in one batch (rbd-mirror is slow to start).
VOLUMES = 9


@dataclass
class World:
    pair: SitePair
    kube: KubeCluster
    controller: site.ControllerProcess
    key: str
    spare: list[Provisioned] = field(default_factory=list)

    def volume(self) -> Provisioned:
        """A failed-over volume no other test uses."""
        return self.spare.pop()

    def apply(self, *manifests: dict[str, Any]) -> None:
        result = apply(self.kube, *manifests, check=False)
        assert result.returncode == 0, result.stderr

    def mapping(self, pv_name: str) -> dict[str, Any] | None:
        return self.kube.get(f"{API}/volumehandlemappings/{pv_name}")

    def cluster_mapping(self, name: str = MAPPING) -> dict[str, Any] | None:
        return self.kube.get(f"{API}/clusteridmappings/{name}")

    def config_map_key(self, key: str) -> str:
        found = self.kube.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/{CSI_CONFIG}") or {}
        return str((found.get("data") or {}).get(key) or "[]")

    def wait(self, probe: Any, what: str, timeout: float = CONVERGE) -> Any:
        try:
            return wait_for(probe, timeout, what)
        except pytest.fail.Exception:
            print(self.controller.log())
            raise

    def wait_for_reason(self, pv_name: str, reason: str) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            found = self.mapping(pv_name)
            return found if (condition(found, "Ready") or {}).get("reason") == reason else None

        found: dict[str, Any] = self.wait(settled, f"{pv_name}'s mapping to say {reason}")
        return found


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def status_and_reason(obj: dict[str, Any] | None, kind: str) -> tuple[str, str] | None:
    found = condition(obj, kind)
    return None if found is None else (found["status"], found["reason"])


def pv_for(
    volume: Provisioned,
    name: str | None = None,
    *,
    handle: str | None = None,
    secret: tuple[str, str] = (SECRET, NAMESPACE),
    **attributes: str,
) -> dict[str, Any]:
    """`volume`'s PV as an admin re-applies it here (its Secret in this module's namespace),
    under another name, handle, Secret or attributes if given."""
    pv = volume.pv(**attributes)
    if name is not None:
        pv["metadata"]["name"] = name
    csi = pv["spec"]["csi"]
    if handle is not None:
        csi["volumeHandle"] = handle
    csi["controllerExpandSecretRef"] = {"name": secret[0], "namespace": secret[1]}
    return pv


def events_about(kube: KubeCluster, name: str) -> list[dict[str, Any]]:
    answer = kube.request(
        "GET", f"/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
    )
    items: list[dict[str, Any]] = answer["items"]
    return items


def log_records(controller: site.ControllerProcess) -> list[dict[str, Any]]:
    lines = controller.current_log().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def world(
    ceph_pair: SitePair,
    kube: KubeCluster,
    crds: None,
    checkout: Checkout,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    """site-b after a failover, with a ClusterIDMapping of this module's clusterIDs, and the
    controller running as its ServiceAccount in this module's namespace."""
    work = tmp_path_factory.mktemp("faults")
    overlay, key = site.install_controller_inputs(
        kube.kubeconfig,
        checkout,
        ceph_pair.site_b,
        work,
        namespace=NAMESPACE,
        secret=SECRET,
        cluster_id=SITE_B_ID,
    )
    site.apply(
        kube.kubeconfig,
        site.cluster_id_mapping(MAPPING, SITE_A_ID, SITE_B_ID, [{"name": ceph_pair.pool}]),
    )
    made = [
        csi_replay.provision(
            ceph_pair.site_a, SITE_A_ID, ceph_pair.pool, f"flt-{uuid.uuid4().hex[:10]}"
        )
        for _ in range(VOLUMES)
    ]
    ceph_pair.fail_over([volume.image_name for volume in made])
    kubeconfig = kube.service_account_kubeconfig(NAMESPACE, site.SERVICE_ACCOUNT, create=False)
    controller = site.elected_controller(kubeconfig, work, SITE_B_ID, NAMESPACE)
    controller.start("--workers", "2")
    world = World(ceph_pair, kube, controller, key, spare=made)
    try:
        yield world
    finally:
        controller.stop()
        ours = [
            pv["metadata"]["name"]
            for pv in kube.request("GET", "/api/v1/persistentvolumes")["items"]
            if pv["metadata"]["name"].startswith("flt-")
        ]
        if ours:
            kubectl(kube, "delete", "pv", *ours, "--wait=false")
        kubectl(kube, "delete", "clusteridmappings", "--all")
        kubectl(kube, "delete", "-k", str(overlay), "--ignore-not-found")
        kubectl(kube, "delete", "namespace", NAMESPACE, "--wait=false")
        assert key not in controller.log()


def remapped(world: World) -> Provisioned:
    """A volume whose PV is re-applied and whose mapping is Ready."""
    volume = world.volume()
    world.apply(pv_for(volume))
    world.wait_for_reason(volume.pv_name, "JournalRegenerated")
    return volume


@contextlib.contextmanager
def stalled(pair: SitePair, *daemons: str) -> Iterator[None]:
    """site-b's `daemons` (e.g. "mon.a", "osd.0") stopped with SIGSTOP, resumed on leaving, by
    their own PIDs."""
    pids = [d.pid for d in pair.site_b.daemons.daemons if d.name.split()[-1] in daemons]
    assert len(pids) == len(daemons)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_a_conflicting_mapping_added_later_leaves_remapped_volumes_served(world: World) -> None:
    pair = world.pair
    volume = remapped(world)
    pool_a, pool_b = pair.site_a.pool_id(pair.pool), pair.site_b.pool_id(pair.pool)
    entry = {f"{pool_a}": f"{pool_b}"}

    def rendered() -> bool:
        entries = json.loads(world.config_map_key("cluster-mapping.json"))
        return any(entry in (e.get("RBDPoolIDMapping") or []) for e in entries)

    world.wait(rendered, "cluster-mapping.json rendered with the pool IDs")
    typo = site.cluster_id_mapping(
        "flt-typo", SITE_A_ID, SITE_B_ID, [{"name": pair.pool, "siteAPoolID": pool_a + 100}]
    )
    world.apply(typo)
    try:
        world.wait(
            lambda: status_and_reason(world.cluster_mapping(), "Ready") == ("True", "Conflicting"),
            f"{MAPPING} to keep serving, Conflicting",
        )
        world.wait(
            lambda: (
                status_and_reason(world.cluster_mapping("flt-typo"), "Ready")
                == ("False", "Conflicting")
            ),
            "flt-typo not used",
        )
        served = world.wait(
            lambda: (
                (m := world.mapping(volume.pv_name))
                and status_and_reason(m, "Degraded") == ("True", "MappingConflicting")
                and m
            ),
            f"{volume.pv_name} Degraded by the conflict",
        )
        assert status_and_reason(served, "Ready") == ("True", "JournalRegenerated")
        # ceph-csi's own files keep resolving it (before: cluster-mapping.json became []).
        assert rendered()
        config = json.loads(world.config_map_key("config.json"))
        assert SITE_A_ID in {c["clusterID"] for c in config}
        assert all("flt-typo" not in e.get("renderedBy", "") for e in config)
        # A volume not remapped yet is not remapped through a mapping that conflicts.
        new = world.volume()
        world.apply(pv_for(new))
        world.wait_for_reason(new.pv_name, "MappingConflicting")
        assert csi_replay.nothing_written_for(pair, new.pv_name, new.object_uuid)
    finally:
        kubectl(world.kube, "delete", "cidm", "flt-typo", "--ignore-not-found")
    world.wait(
        lambda: status_and_reason(world.cluster_mapping(), "Ready") == ("True", "Mapped"),
        f"{MAPPING} Mapped again",
    )
    world.wait_for_reason(new.pv_name, "JournalRegenerated")
    world.wait(
        lambda: (
            status_and_reason(world.mapping(volume.pv_name), "Degraded") == ("False", "Reconciled")
        ),
        f"{volume.pv_name} no longer Degraded",
    )


def test_a_stray_pv_does_not_unset_a_learnt_pool_id(world: World) -> None:
    pair = world.pair
    volume = remapped(world)
    pool_a = pair.site_a.pool_id(pair.pool)

    def learnt() -> dict[str, Any] | None:
        pools = ((world.cluster_mapping() or {}).get("status") or {}).get("rbdPools") or [{}]
        return pools[0] if pools[0].get("remotePoolID") == pool_a else None

    world.wait(learnt, "the remote pool ID learnt")
    # A PV whose handle carries another pool ID for the same pool (a typo, a re-created pool).
    ghost = str(uuid.uuid4())
    stray = pv_for(
        volume,
        f"flt-stray-{ghost[:8]}",
        handle=csi_replay.ceph_csi_handle(SITE_A_ID, pool_a + 50, ghost),
        imageName=f"csi-vol-{ghost}",
    )
    world.apply(stray)
    ambiguous = world.wait(
        lambda: (
            (m := world.cluster_mapping())
            and status_and_reason(m, "PoolIDsAmbiguous") == ("True", "SeveralPoolIDs")
            and m
        ),
        "PoolIDsAmbiguous",
    )
    assert ambiguous["status"]["rbdPools"][0]["remotePoolID"] == pool_a
    assert f'"{pool_a}": ' in world.config_map_key("cluster-mapping.json")
    kubectl(world.kube, "delete", "pv", stray["metadata"]["name"], "--wait=false")
    world.wait(
        lambda: (
            status_and_reason(world.cluster_mapping(), "PoolIDsAmbiguous")
            == ("False", "Unambiguous")
        ),
        "the ambiguity gone with the stray PV",
    )


def test_bad_inputs_get_their_reason_a_warning_and_are_not_retried(world: World) -> None:
    pair = world.pair
    source = world.volume()
    base = source.pv_name
    long_handle = "0001-" + "f" * 5000
    cases = {
        f"{base}-forbidden": (
            pv_for(source, f"{base}-forbidden", secret=("any", "kube-system")),
            "SecretForbidden",
        ),
        f"{base}-long": (pv_for(source, f"{base}-long", handle=long_handle), "VolumeHandleTooLong"),
        f"{base}-pool": (
            pv_for(source, f"{base}-pool", pool="unlisted", journalPool="unlisted"),
            "PoolNotMapped",
        ),
        f"{base}-journal": (
            pv_for(source, f"{base}-journal", journalPool="unlisted"),
            "PoolNotMapped",
        ),
    }
    world.apply(*(pv for pv, _ in cases.values()))
    for name, (_, reason) in cases.items():
        mapping = world.wait_for_reason(name, reason)
        assert status_and_reason(mapping, "Ready") == ("False", reason)
        warnings = [e for e in events_about(world.kube, name) if e["type"] == "Warning"]
        assert reason in {e["reason"] for e in warnings}
        assert csi_replay.nothing_written_for(pair, name, source.object_uuid)
    # What the API server would refuse is stored nowhere: the mapping has no spec.volumeHandle.
    long_mapping = world.mapping(f"{base}-long") or {}
    assert long_mapping["spec"] == {"pvName": f"{base}-long"}
    assert long_handle not in json.dumps(long_mapping)
    assert long_handle not in json.dumps(events_about(world.kube, f"{base}-long"))

    # Terminal: not tried again and again.
    def tries() -> int:
        return sum(
            1
            for r in log_records(world.controller)
            if r.get("key") in cases and "reconcile failed" in str(r.get("message"))
        )

    before = tries()
    time.sleep(10)
    assert tries() == before
    assert world.key not in world.controller.current_log()


def test_a_pv_whose_claim_is_removed_keeps_its_mapping_not_ready(world: World) -> None:
    volume = remapped(world)
    name = volume.pv_name
    journal = csi_replay.omap(world.pair.site_b, volume.pool, f"csi.volume.{volume.object_uuid}")
    kubectl(
        world.kube,
        "patch",
        "pv",
        name,
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/claimRef"}]),
    )
    mapping = world.wait_for_reason(name, "NotSelected")
    assert status_and_reason(mapping, "Ready") == ("False", "NotSelected")
    assert "it has no claimRef" in (condition(mapping, "Ready") or {})["message"]
    assert mapping["status"]["newVolumeHandle"]  # the record of what was written
    assert (
        csi_replay.omap(world.pair.site_b, volume.pool, f"csi.volume.{volume.object_uuid}")
        == journal
    )


def test_dry_run_plans_the_pvs_of_a_mapping_without_status(world: World) -> None:
    pair = world.pair
    volume = world.volume()
    handle = csi_replay.ceph_csi_handle("flt-site-e", 3, volume.object_uuid)
    world.controller.stop()
    world.controller.start("--dry-run")
    try:
        fresh = site.cluster_id_mapping(
            "flt-e-to-b", "flt-site-e", SITE_B_ID, [{"name": pair.pool}]
        )
        world.apply(fresh, pv_for(volume, handle=handle))
        world.wait(
            lambda: any(
                r.get("message") == "dry run: would regenerate" and r.get("pv") == volume.pv_name
                for r in log_records(world.controller)
            ),
            "the dry run to plan the PV",
        )
        assert "status" not in (world.cluster_mapping("flt-e-to-b") or {})
        assert world.mapping(volume.pv_name) is None
        assert csi_replay.nothing_written_for(pair, volume.pv_name, volume.object_uuid)
    finally:
        world.controller.stop()
        world.controller.start("--workers", "2")
    world.wait_for_reason(volume.pv_name, "JournalRegenerated")
    kubectl(world.kube, "delete", "cidm", "flt-e-to-b")


def test_a_rotated_key_is_used_and_the_old_keys_connection_closed(world: World) -> None:
    site_b = world.pair.site_b
    user = "flt-rotating"
    old_key = site_b.create_user(user, CSI_CAPS)
    world.apply(site.ceph_csi_secret(user, NAMESPACE, user, old_key))
    first = world.volume()
    world.apply(pv_for(first, secret=(user, NAMESPACE)))
    world.wait_for_reason(first.pv_name, "JournalRegenerated")

    site_b.ceph("auth", "rm", f"client.{user}")
    new_key = site_b.create_user(user, CSI_CAPS)
    assert new_key != old_key
    world.apply(site.ceph_csi_secret(user, NAMESPACE, user, new_key))
    second = world.volume()
    world.apply(pv_for(second, secret=(user, NAMESPACE)))
    world.wait_for_reason(second.pv_name, "JournalRegenerated")

    # The Secret's credentials are reused for a while (30 s): a retry after that reads the new
    # key, connects with it, and closes the old key's connection.
    time.sleep(31)
    kubectl(world.kube, "annotate", "pv", second.pv_name, f"{RETRY_ANNOTATION}=rotated")

    def closed() -> bool:
        return any(
            r.get("message") == "closing a Ceph connection"
            and r.get("user") == user
            and r.get("why") == "its user's key was rotated"
            for r in log_records(world.controller)
        )

    world.wait(closed, "the old key's connection closed", timeout=120)
    log = world.controller.log()
    assert old_key not in log and new_key not in log


def test_the_controller_may_do_only_what_it_does(world: World, tmp_path: Path) -> None:
    def can(*request: str) -> str:
        return kubectl(world.controller, "auth", "can-i", *request, check=False).stdout.strip()

    assert can("create", "events", "-n", "default") == "yes"
    assert can("create", "events", "-n", NAMESPACE) == "no"
    assert can("create", "events", "-n", "kube-system") == "no"
    assert can("update", "leases/rbd-mirror-reconciler", "-n", NAMESPACE) == "yes"
    assert can("update", "leases/someone-elses", "-n", NAMESPACE) == "no"
    assert can("get", f"leases/rbd.csi.ceph.com-{NAMESPACE}", "-n", NAMESPACE) == "yes"
    assert can("get", "leases/someone-elses", "-n", NAMESPACE) == "no"
    assert can("create", "leases", "-n", NAMESPACE) == "yes"
    assert can("patch", f"configmaps/{CSI_CONFIG}", "-n", NAMESPACE) == "yes"
    assert can("patch", "configmaps/someone-elses", "-n", NAMESPACE) == "no"
    assert can("get", "secrets", "-n", "kube-system") == "no"


# Last: a stalled cluster is the fault most likely to disturb what follows it.


def test_a_stalled_cluster_degrades_ready_mappings_which_recover_quickly(
    world: World,
) -> None:
    volume = remapped(world)
    name = volume.pv_name
    pair = world.pair
    pool_a, pool_b = pair.site_a.pool_id(pair.pool), pair.site_b.pool_id(pair.pool)
    world.wait(
        lambda: f'"{pool_a}": "{pool_b}"' in world.config_map_key("cluster-mapping.json"),
        "cluster-mapping.json rendered with the pool IDs",
    )
    with stalled(pair, "mon.a", "osd.0"):
        # Looked at again while Ceph does not answer (as any event would make it).
        kubectl(world.kube, "annotate", "pv", name, f"{RETRY_ANNOTATION}=stalled", "--overwrite")
        degraded = world.wait(
            lambda: (
                (m := world.mapping(name))
                and status_and_reason(m, "Degraded") == ("True", "CephUnavailable")
                and m
            ),
            f"{name}'s mapping Degraded by CephUnavailable",
        )
        # Still Ready, with its new handle: the resolver and ceph-csi's files keep serving it.
        assert status_and_reason(degraded, "Ready") == ("True", "JournalRegenerated")
        assert degraded["status"]["newVolumeHandle"]
        assert f'"{pool_a}": "{pool_b}"' in world.config_map_key("cluster-mapping.json")
        assert status_and_reason(world.cluster_mapping(), "Ready") == ("True", "Mapped")
        # Resumed as soon as that is seen: a single-OSD cluster stalled for long can be slow to
        # serve again, which is not what this test is about.
    resumed = time.monotonic()
    try:
        world.wait(
            lambda: status_and_reason(world.mapping(name), "Degraded") == ("False", "Reconciled"),
            f"{name}'s mapping to recover once Ceph answers",
            timeout=120,
        )
    except pytest.fail.Exception:
        print(pair.site_b.ceph("health", "detail"))
        raise
    # The backoff is capped at a minute: recovery never waits out client-go's 1000 s.
    assert time.monotonic() - resumed < 90
    assert status_and_reason(world.mapping(name), "Ready") == ("True", "JournalRegenerated")
