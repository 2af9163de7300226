"""The fault suite, part two: faults of the controller's own process and of the API server it
talks to, injected for real (signals to real PIDs, a real kube-apiserver restarted), against the
real Ceph pair. After each, the same verdict: every PV's journal on site-b is, byte for byte, the
one ceph-csi would have written, with exactly one reservation; every PV has exactly one
VolumeHandleMapping, Ready with ceph-csi's new handle; and no Ceph key shows in a log, an Event
or a mapping.

- two controllers without leader election on the same PVs at once (their journal writes paced so
  that their plans overlap): they race, and the loser of each race adopts the winner's journal;
- a leader SIGSTOPped mid-burst (its per-volume object written, its directory key not), its lease
  taken over by a second replica, then resumed: it stops leading (exits), and its stale plan
  writes nothing;
- SIGKILL at each step of a journal write, with a fresh controller started after: it completes
  the half-written journal without rewriting what was there;
- kube-apiserver and etcd restarted under a controller mid-burst: the same process reconnects
  and finishes.

Where a fault must land at an exact journal step, the controller process carries test-only
instrumentation (tests/support/journal_steps.py): nothing of it is in the product.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rados

from reconciler.csi import ResolveError, SyncResolver
from reconciler.sandbox import site
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.csidriver import config_json, start_journal_regenerator
from reconciler.sandbox.errors import ApiRequestFailed
from reconciler.sandbox.kube import KubeSandbox
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.site import GROUP, apply, kubectl
from tests.e2e.support import report
from tests.e2e.test_two_writers import expected_object
from tests.support import csi_replay, journal_steps
from tests.support.csi_replay import Provisioned, VolumeFactory
from tests.support.journal_steps import StopAt
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

SITE_A_ID = "pf-site-a"
SITE_B_ID = "pf-site-b"
NAMESPACE = "pfault-csi"
SECRET = "pfault-csi-secret"
MAPPING = "pf-a-to-b"
LEASE_NAME = "rbd-mirror-reconciler"  # the one name config/rbac lets the controller update
API = f"/apis/{GROUP}/v1alpha1"
DIRECTORY = "csi.volumes.default"
CONVERGE = 90.0
#: Short lease timings for the hand-over (the algorithm is the same as at 15/10/2).
SHORT_LEASE = (
    "--leader-election-lease-duration", "4",
    "--leader-election-renew-deadline", "3",
    "--leader-election-retry-period", "0.5",
)  # fmt: skip
#: A renew deadline longer than an API server restart on a loaded machine: the leader rides
#: it out instead of exiting by design.
LONG_LEASE = (
    "--leader-election-lease-duration", "90",
    "--leader-election-renew-deadline", "60",
    "--leader-election-retry-period", "2",
)  # fmt: skip
#: PVs each test takes; all are failed over in one batch (rbd-mirror is slow to pick up images).
TWO_WRITERS, STALE_LEADER, PER_KILL, RESTART, BESIDE_CEPH_CSI = 6, 8, 3, 8, 12
VOLUMES = TWO_WRITERS + STALE_LEADER + 2 * PER_KILL + RESTART + BESIDE_CEPH_CSI


@dataclass
class World:
    pair: SitePair
    kube: KubeCluster
    kubeconfig: Path
    """The controller's ServiceAccount's."""
    key: str
    """site-b's Ceph key in the Secret: it must show nowhere."""
    resolver: SyncResolver
    """The CSI side's resolver, running through every fault: it must keep answering."""
    spare: list[Provisioned] = field(default_factory=list)

    def take(self, count: int) -> list[Provisioned]:
        """`count` failed-over volumes no other test uses."""
        taken, self.spare[:] = self.spare[:count], self.spare[count:]
        assert len(taken) == count, "VOLUMES is less than the tests take"
        return taken

    def apply_pvs(self, volumes: list[Provisioned]) -> None:
        result = apply(self.kube, *(pv_for(volume) for volume in volumes), check=False)
        assert result.returncode == 0, result.stderr

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.kube.request("GET", path)
        except ApiRequestFailed as err:
            if err.status == 404:
                return None
            raise
        return found

    def mapping(self, pv_name: str) -> dict[str, Any] | None:
        return self.get(f"{API}/volumehandlemappings/{pv_name}")

    def mappings(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.kube.request("GET", f"{API}/volumehandlemappings")[
            "items"
        ]
        return items

    def lease_holder(self) -> str:
        lease = self.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{LEASE_NAME}")
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def ready(self, volumes: list[Provisioned]) -> list[str]:
        """The PVs of `volumes` whose mapping is Ready and not Degraded."""
        by_name = {m["metadata"]["name"]: m for m in self.mappings()}
        return [v.pv_name for v in volumes if healthy(by_name.get(v.pv_name))]


def pv_for(volume: Provisioned) -> dict[str, Any]:
    """`volume`'s PV as an admin re-applies it here, its Secret in this module's namespace."""
    pv = volume.pv()
    pv["spec"]["csi"]["controllerExpandSecretRef"] = {"name": SECRET, "namespace": NAMESPACE}
    return pv


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def healthy(mapping: dict[str, Any] | None) -> bool:
    return (
        condition(mapping, "Ready").get("status") == "True"
        and condition(mapping, "Degraded").get("status") != "True"
    )


def log_records(controller: site.ControllerProcess) -> list[dict[str, Any]]:
    """Every JSON record of every run of `controller`."""
    return [
        json.loads(line)
        for path in sorted(controller.log_dir.glob("controller-*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("{")
    ]


def messages(controller: site.ControllerProcess) -> list[str]:
    return [str(r.get("message")) for r in log_records(controller)]


def journal_writes(controller: site.ControllerProcess) -> dict[str, list[str]]:
    """PV -> the journal keys `controller` says it wrote for it (all its runs)."""
    written: dict[str, list[str]] = {}
    for r in log_records(controller):
        if r.get("message") == "journal written":
            written.setdefault(r["pv"], []).extend(r["written"])
    return written


def object_version(pair: SitePair, pool: str, oid: str) -> int:
    """RADOS's version of an object: it grows with every write, identical rewrites included."""
    with csi_replay.ioctx(pair.site_b, pool) as io:
        io.stat(oid)
        version: int = io.get_last_version()
        return version


def readyz(controller: site.ControllerProcess) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://{controller.health_address}/readyz", timeout=5
        ) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def alive(controller: site.ControllerProcess) -> bool:
    return controller.process is not None and controller.process.poll() is None


def pid(controller: site.ControllerProcess) -> int:
    assert controller.process is not None
    return controller.process.pid


class Controllers:
    """The controller processes of one test, each with its own log directory; stopped by PID at
    the end (resumed first, in case a test left one SIGSTOPped or held)."""

    def __init__(self, world: World, work: Path) -> None:
        self.world = world
        self.work = work
        self.started: list[site.ControllerProcess] = []
        self.holds: list[StopAt] = []

    def start(
        self,
        name: str,
        *flags: str,
        elected: bool = False,
        stop: StopAt | None = None,
        pace: float = 0.0,
    ) -> site.ControllerProcess:
        log_dir = self.work / name
        log_dir.mkdir()
        if elected:
            controller = site.elected_controller(
                self.world.kubeconfig, log_dir, SITE_B_ID, NAMESPACE
            )
        else:
            controller = site.ControllerProcess(
                self.world.kubeconfig,
                log_dir,
                SITE_B_ID,
                NAMESPACE,
                extra_args=["--manage-csi-config", "--ceph-timeout", "5"],
            )
        if stop is not None:
            self.holds.append(stop)
        controller.env = journal_steps.environment(stop=stop, pace=pace)
        controller.start(*flags)
        self.started.append(controller)
        return controller

    def stop_all(self) -> None:
        for stop in self.holds:
            stop.release()
        for controller in self.started:
            if alive(controller):
                os.kill(pid(controller), signal.SIGCONT)
            controller.stop()


@pytest.fixture(scope="module")
def world(
    *,
    ceph_pair: SitePair,
    kube: KubeCluster,
    crds: None,
    checkout: Checkout,
    new_volumes: VolumeFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    """site-b after a failover of VOLUMES volumes, a ClusterIDMapping of this module's
    clusterIDs, and the RBAC of config/rbac in this module's namespace. No controller runs:
    each test starts its own."""
    work = tmp_path_factory.mktemp("process-faults")
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
    volumes = new_volumes.derive(cluster_id=SITE_A_ID, prefix="pf")(VOLUMES)
    kubeconfig = kube.service_account_kubeconfig(NAMESPACE, site.SERVICE_ACCOUNT, create=False)
    resolver = SyncResolver(kube.kubeconfig, csi_config_namespace=NAMESPACE)
    resolver.start()
    try:
        yield World(ceph_pair, kube, kubeconfig, key, resolver, spare=list(volumes))
    finally:
        resolver.close()
        ours = [v.pv_name for v in volumes]
        kubectl(kube, "delete", "pv", *ours, "--ignore-not-found", "--wait=false")
        kubectl(kube, "delete", "cidm", MAPPING, "--ignore-not-found")
        kubectl(kube, "delete", "-k", str(overlay), "--ignore-not-found")
        kubectl(kube, "delete", "namespace", NAMESPACE, "--wait=false")


@pytest.fixture
def controllers(world: World, tmp_path: Path) -> Iterator[Controllers]:
    started = Controllers(world, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def wait(
    probe: Callable[[], Any],
    what: str,
    controllers: Controllers,
    timeout: float = CONVERGE,
    interval: float = 0.5,
) -> Any:
    """`wait_for`, printing the controllers' logs when it times out."""
    try:
        return wait_for(probe, timeout, what, interval=interval)
    except pytest.fail.Exception:
        for controller in controllers.started:
            print(f"--- {controller.log_dir.name}\n{controller.log()}")
        raise


def wait_converged(world: World, controllers: Controllers, volumes: list[Provisioned]) -> None:
    names = sorted(v.pv_name for v in volumes)
    wait(
        lambda: sorted(world.ready(volumes)) == names or None,
        f"{len(names)} mappings Ready and not Degraded",
        controllers,
    )


def journals(pair: SitePair) -> dict[str, dict[str, bytes]]:
    """Every `csi.volume*` object of site-b's pool and its omap, read with one client."""
    found: dict[str, dict[str, bytes]] = {}
    with csi_replay.ioctx(pair.site_b, pair.pool) as io:
        for oid in sorted(o.key for o in io.list_objects() if o.key.startswith("csi.volume")):
            with rados.ReadOpCtx() as op:
                pairs, _ = io.get_omap_vals(op, "", "", 1000)
                try:
                    io.operate_read_op(op, oid)
                except rados.ObjectNotFound:
                    continue
                found[oid] = dict(pairs)
    return found


def assert_converged(world: World, controllers: Controllers, volumes: list[Provisioned]) -> None:
    """The verdict after every fault (module docstring)."""
    pair = world.pair
    pool_b = pair.site_b.pool_id(pair.pool)
    on_ceph = journals(pair)
    directory = on_ceph.get(DIRECTORY, {})
    names = sorted(v.pv_name for v in volumes)
    listed = [m for m in world.mappings() if m["spec"]["pvName"] in names]
    assert sorted(m["metadata"]["name"] for m in listed) == names, "a mapping lost or doubled"
    old_handles = sorted(m["spec"].get("volumeHandle", "") for m in listed)
    assert old_handles == sorted(v.handle for v in volumes)
    by_name = {m["metadata"]["name"]: m for m in listed}
    for volume in volumes:
        name = volume.pv_name
        # The journal ceph-csi would have written, and only one reservation of the name.
        assert directory.get(f"csi.volume.{name}") == volume.object_uuid.encode(), name
        oid = f"csi.volume.{volume.object_uuid}"
        assert on_ceph.get(oid) == expected_object(pair, volume), name
        claiming = [o for o, omap in on_ceph.items() if omap.get("csi.volname") == name.encode()]
        assert claiming == [oid], f"{name} is reserved by {claiming}"
        # Its one mapping: Ready, not Degraded, with the handle ceph-csi makes of that journal.
        mapping = by_name[name]
        assert healthy(mapping), mapping.get("status")
        assert condition(mapping, "Ready")["reason"] == "JournalRegenerated"
        assert mapping["spec"] == {"pvName": name, "volumeHandle": volume.handle}
        new_handle = csi_replay.ceph_csi_handle(SITE_B_ID, pool_b, volume.object_uuid)
        assert mapping["status"]["newVolumeHandle"] == new_handle
        # And the CSI side resolves the old handle to it (its cache may be a watch event behind).
        wait_for(
            functools.partial(resolves_to, world, volume.handle, new_handle),
            10,
            f"the resolver to answer {name}'s old handle with {new_handle}",
        )
    # Nothing secret: not in a log, an Event or a mapping.
    for controller in controllers.started:
        for path in controller.log_dir.glob("controller-*.log"):
            assert world.key not in path.read_text(errors="replace"), path
    events = world.kube.request("GET", "/api/v1/namespaces/default/events")["items"]
    assert world.key not in json.dumps(events)
    assert world.key not in json.dumps(listed)


def resolves_to(world: World, handle: str, new_handle: str) -> bool:
    return resolved(world, handle) == new_handle


def resolved(world: World, handle: str) -> str | None:
    """The handle the CSI side's resolver answers for `handle`, through its mapping; None if it
    answers otherwise (or not at all)."""
    try:
        found = world.resolver.resolve(handle)
    except ResolveError:
        return None
    return found.volume_handle if found.how == "mapping" else None


# 1 --------------------------------------------------------------------------------------------


def test_two_controllers_without_leader_election_race_and_end_with_one_journal_each(
    world: World, controllers: Controllers, request: pytest.FixtureRequest
) -> None:
    volumes = world.take(TWO_WRITERS)
    # Paced: half a second between each plan and its write, so the two plans overlap.
    first = controllers.start("first", "--workers", "3", pace=0.5)
    second = controllers.start("second", "--workers", "3", pace=0.5)
    wait(lambda: readyz(first) and readyz(second), "both controllers' caches synced", controllers)
    started = time.monotonic()
    world.apply_pvs(volumes)
    wait_converged(world, controllers, volumes)
    report(request.config, f"\ntwo unelected controllers: {len(volumes)} PVs converged in "
           f"{time.monotonic() - started:.1f} s")  # fmt: skip
    assert alive(first) and alive(second)
    assert_converged(world, controllers, volumes)
    # They did race: a write of one found the other's first, and was re-planned, not forced.
    lost = [m for c in (first, second) for m in messages(c) if "(another writer)" in m]
    assert lost, "the two controllers never met on a journal"
    # Between them every key was written once: the loser adopted, it did not write again.
    writes = [journal_writes(first), journal_writes(second)]
    for volume in volumes:
        keys = [key for written in writes for key in written.get(volume.pv_name, [])]
        assert sorted(keys) == sorted(set(keys)), f"{volume.pv_name}: {keys}"


# 2 --------------------------------------------------------------------------------------------


def test_a_stale_leader_resumed_after_losing_its_lease_stops_leading_and_corrupts_nothing(
    world: World, controllers: Controllers, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    pair = world.pair
    volumes = world.take(STALE_LEADER)
    hold = StopAt.under(tmp_path, "object")
    stale = controllers.start("stale", *SHORT_LEASE, "--workers", "2", elected=True, stop=hold)
    wait(lambda: "became leader" in messages(stale), "the first controller to lead", controllers)
    leader = world.lease_holder()
    successor = controllers.start("successor", *SHORT_LEASE, "--workers", "2", elected=True)
    wait(lambda: readyz(successor), "the follower's caches synced", controllers)
    world.apply_pvs(volumes)

    # The leader writes a first per-volume object and stands still before its directory key;
    # then it is stopped for real.
    cut = wait(hold.reached, "the leader to stop after a per-volume object", controllers, 60)
    os.kill(pid(stale), signal.SIGSTOP)
    paused = time.monotonic()
    assert cut.pid == pid(stale)
    volume = next(v for v in volumes if v.pv_name == cut.pv)
    oid = f"csi.volume.{volume.object_uuid}"
    directory = csi_replay.omap(pair.site_b, pair.pool, DIRECTORY) or {}
    assert f"csi.volume.{cut.pv}" not in directory
    assert world.ready(volumes) == [], "the burst was over before the pause"
    version = object_version(pair, pair.pool, oid)

    # The follower takes the lease over once it expires, and does the whole burst.
    wait(
        lambda: world.lease_holder() not in ("", leader),
        "the follower to take the lease over",
        controllers,
        30,
        0.1,
    )
    report(request.config, f"\nstale leader SIGSTOPped: lease taken over after "
           f"{time.monotonic() - paused:.1f} s")  # fmt: skip
    successor_id = world.lease_holder()
    wait_converged(world, controllers, volumes)
    assert_converged(world, controllers, volumes)
    settled = journals(pair)
    versions = {m["metadata"]["name"]: m["metadata"]["resourceVersion"] for m in world.mappings()}
    # It completed the stopped leader's journal: the directory key only.
    assert journal_writes(successor)[cut.pv] == [f"csi.volume.{cut.pv}"]
    assert object_version(pair, pair.pool, oid) == version

    # Resumed, with its plan of the directory key still to carry out and its lease long gone.
    hold.release()
    os.kill(pid(stale), signal.SIGCONT)
    wait(lambda: not alive(stale), "the stale leader to stop leading (and exit)", controllers, 30)
    assert stale.process is not None and stale.process.returncode != 0
    said = messages(stale)
    assert "could not renew the lease in time" in said
    # It says so in one line, without a traceback or an unretrieved Ceph error.
    whole = "".join(p.read_text(errors="replace") for p in stale.log_dir.glob("controller-*.log"))
    assert "exiting, so that only the lease holder writes" in whole
    assert "Traceback" not in whole and "never retrieved" not in whole
    assert world.lease_holder() == successor_id
    assert alive(successor)
    # Its stale write found the directory key set and was re-planned: nothing more was written.
    assert cut.pv not in journal_writes(stale)
    time.sleep(2)  # what a write the stale leader still had in flight would take to show
    assert journals(pair) == settled
    assert object_version(pair, pair.pool, oid) == version
    assert_converged(world, controllers, volumes)
    now = {m["metadata"]["name"]: m["metadata"]["resourceVersion"] for m in world.mappings()}
    changed = [v.pv_name for v in volumes if now[v.pv_name] != versions[v.pv_name]]
    assert changed == [], f"mappings rewritten after the stale leader resumed: {changed}"


# 3 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["object", "directory"])
def test_sigkill_at_a_journal_step_and_a_fresh_controller_completes_it(
    world: World,
    controllers: Controllers,
    tmp_path: Path,
    step: journal_steps.Step,
    request: pytest.FixtureRequest,
) -> None:
    pair = world.pair
    volumes = world.take(PER_KILL)
    hold = StopAt.under(tmp_path, step)
    killed = controllers.start(f"killed-{step}", "--workers", "1", stop=hold)
    world.apply_pvs(volumes)
    cut = wait(hold.reached, f"the controller to stop after the {step} write", controllers, 60)
    assert cut.pid == pid(killed)
    volume = next(v for v in volumes if v.pv_name == cut.pv)
    oid = f"csi.volume.{volume.object_uuid}"
    # Exactly the state between the two writes, or after both.
    assert csi_replay.omap(pair.site_b, pair.pool, oid) == expected_object(pair, volume)
    directory_key = (csi_replay.omap(pair.site_b, pair.pool, DIRECTORY) or {}).get(
        f"csi.volume.{cut.pv}"
    )
    assert directory_key == (volume.object_uuid.encode() if step == "directory" else None)
    assert cut.pv not in world.ready(volumes)
    version = object_version(pair, pair.pool, oid)

    killed.stop(signal.SIGKILL)
    assert killed.process is None
    fresh = controllers.start(f"fresh-{step}", "--workers", "2")
    started = time.monotonic()
    wait_converged(world, controllers, volumes)
    report(request.config, f"\nSIGKILL after the {step} write: converged "
           f"{time.monotonic() - started:.1f} s after the restart")  # fmt: skip
    assert_converged(world, controllers, volumes)
    # The half-written journal was completed, not redone: the object was not written again.
    assert object_version(pair, pair.pool, oid) == version
    expected = [f"csi.volume.{cut.pv}"] if step == "object" else None
    assert journal_writes(fresh).get(cut.pv) == expected
    assert cut.pv not in journal_writes(killed)  # killed before it could say so


# 4 --------------------------------------------------------------------------------------------


@pytest.mark.owns_apiserver
def test_the_controller_rides_out_an_api_server_restart_mid_burst(
    world: World, kube: KubeSandbox, controllers: Controllers, request: pytest.FixtureRequest
) -> None:
    volumes = world.take(RESTART)
    # One worker, paced: the burst lasts several seconds, the restart lands in it.
    survivor = controllers.start("survivor", *LONG_LEASE, "--workers", "1", elected=True, pace=0.4)
    wait(lambda: "became leader" in messages(survivor), "the controller to lead", controllers)
    world.apply_pvs(volumes)
    ready_before = wait(
        lambda: world.ready(volumes), "a first mapping Ready", controllers, interval=0.1
    )
    served = {v.handle: resolved(world, v.handle) for v in volumes if v.pv_name in ready_before}
    assert all(served.values()), served
    # The CSI side keeps answering from its cache while the API server is away.
    answers: list[str | None] = []
    outage = threading.Event()

    def ask_throughout() -> None:
        while not outage.is_set():
            answers.extend(resolved(world, handle) for handle in served)
            time.sleep(0.1)

    asking = threading.Thread(target=ask_throughout, name="resolver-during-restart")
    asking.start()
    # Stopped at once, started again on the same etcd data: the rest of the burst meets it.
    try:
        downtime = kube.restart_apiserver()
    finally:
        outage.set()
        asking.join()
    assert answers and set(answers) == set(served.values()), "the resolver stopped answering"
    restarted = time.monotonic()
    report(request.config, f"\nAPI server restarted in {downtime:.1f} s; {len(ready_before)} of "
           f"{len(volumes)} mappings were Ready when it stopped")  # fmt: skip
    assert len(ready_before) < len(volumes), "the burst was over before the restart"
    wait_converged(world, controllers, volumes)
    report(request.config, f"\nall {len(volumes)} Ready {time.monotonic() - restarted:.1f} s "
           "after the API server answered again")  # fmt: skip
    # The same process, never restarted, still leading.
    assert alive(survivor) and survivor.starts == 1
    assert "could not renew the lease in time" not in messages(survivor)
    assert_converged(world, controllers, volumes)
    # It did meet the outage (its watches were cut), and came back from it.
    said = messages(survivor)
    assert "list/watch failed; retrying" in said
    report(request.config, f"\nduring the restart: {said.count('lease acquire/renew failed')} "
           f"failed lease renewals, {said.count('reconcile failed; will retry')} failed "
           "reconciles, retried")  # fmt: skip


# 5 --------------------------------------------------------------------------------------------


def test_the_controller_and_ceph_csis_own_regenerator_on_the_same_pvs_end_with_one_journal_each(
    world: World,
    controllers: Controllers,
    cephcsi_binary: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """ceph-csi's Helm chart deploys its journal regenerator by default: beside this controller
    it is a second writer of the same journals, which takes no lease of ours and compares
    nothing before it writes. The controller starts the burst (one worker, paced, so that it
    lasts); the regenerator joins in the middle of it and goes for every journal too. Each PV
    must end with one journal, whoever wrote it, and one Ready mapping."""
    volumes = world.take(BESIDE_CEPH_CSI)
    pair = world.pair
    mapping = [
        {
            "clusterIDMapping": {SITE_A_ID: SITE_B_ID},
            "RBDPoolIDMapping": [
                {str(pair.site_a.pool_id(pair.pool)): str(pair.site_b.pool_id(pair.pool))}
            ],
        }
    ]
    ours = controllers.start("beside-ceph-csi", "--workers", "1", elected=True, pace=0.5)
    wait(lambda: "became leader" in messages(ours), "the controller to lead", controllers)
    world.apply_pvs(volumes)
    wait(lambda: journal_writes(ours), "the controller's first journal", controllers, 30, 0.1)
    regenerator = start_journal_regenerator(
        cephcsi_binary,
        tmp_path / "regenerator",
        kubeconfig=world.kube.kubeconfig,
        namespace=NAMESPACE,
        config=config_json({SITE_B_ID: pair.site_b.monitors}),
        cluster_mapping=json.dumps(mapping),
    )
    try:
        wait_converged(world, controllers, volumes)
        # The regenerator has synced every PV too (its log names each PV it syncs).
        wait(
            lambda: all(v.pv_name in regenerator.log_text() for v in volumes),
            "ceph-csi's regenerator to have synced every PV",
            controllers,
        )
        regenerator_log = regenerator.log_text()
    finally:
        regenerator.stop()
        # Its Lease would keep a later regenerator waiting for the lease duration.
        kubectl(world.kube, "-n", NAMESPACE, "delete", "lease", f"rbd.csi.ceph.com-{NAMESPACE}",
                "--ignore-not-found")  # fmt: skip
    assert_converged(world, controllers, volumes)
    assert world.key not in regenerator_log
    written = journal_writes(ours)
    report(request.config, f"\nbeside ceph-csi's regenerator: the controller wrote journal "
           f"keys for {len(written)} of {len(volumes)} PVs, ceph-csi the rest")  # fmt: skip
    # Both writers wrote: the journals of the PVs the controller did not write are ceph-csi's.
    assert 0 < len(written) < len(volumes), "one writer did all: no second writer was tested"
