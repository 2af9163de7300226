"""The k8s runtime against the real API server of the `kube` fixture. No fakes: informers,
leader election and the HTTP server talk to a real kube-apiserver backed by etcd.

Leader election runs in real separate processes: this module is also their program
(`python -m tests.e2e.test_runtime ...`, see `main` at the bottom): a Manager with one
controller that stamps each ConfigMap with the identity of the replica that reconciled it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from kubernetes_asyncio.client import CoreV1Api, V1ConfigMap, V1Namespace, V1ObjectMeta

from reconciler.k8s.client import ApiSettings, RateLimitedApiClient, make_api_client, request_json
from reconciler.k8s.controller import ControllerSettings, Result
from reconciler.k8s.errors import ApiStatusError, LeadershipLost
from reconciler.k8s.informer import Event, EventType, Informer, Resource, WatchSettings
from reconciler.k8s.leader import LeaderElectionSettings, LeaderElector
from reconciler.k8s.logs import configure_logging
from reconciler.k8s.manager import Manager, ManagerSettings
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.server import ServerSettings
from reconciler.k8s.tasks import cancel_and_wait
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.kube import KubeSandbox
from reconciler.sandbox.process import free_port
from tests.e2e.support import report
from tests.support.polling import async_wait_for

pytestmark = pytest.mark.e2e

T = TypeVar("T")
CONFIG_MAPS = Resource("", "v1", "configmaps")


@pytest.fixture
async def namespace(api: RateLimitedApiClient) -> AsyncIterator[str]:
    name = f"rt-{uuid.uuid4().hex[:8]}"
    core = CoreV1Api(api)
    await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
    yield name
    await core.delete_namespace(name)


def config_map(name: str, **data: str) -> V1ConfigMap:
    return V1ConfigMap(metadata=V1ObjectMeta(name=name), data=data)


class Running:
    """Runs coroutines as tasks for the length of a test and cancels them all at the end."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def stop(self) -> None:
        await cancel_and_wait(*self.tasks)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    tasks = Running()
    try:
        yield tasks
    finally:
        await tasks.stop()


async def test_informer_sees_creates_updates_and_deletes(
    api: RateLimitedApiClient, namespace: str, running: Running
) -> None:
    core = CoreV1Api(api)
    await core.create_namespaced_config_map(namespace, config_map("before", v="0"))
    informer = Informer(
        api,
        CONFIG_MAPS,
        namespace=namespace,
        indexers={"v": lambda obj: [obj.get("data", {}).get("v", "")]},
    )
    events: list[tuple[EventType, str]] = []
    informer.add_handler(lambda event: events.append((event.type, event.key)))
    running.start(informer.run())
    await asyncio.wait_for(informer.wait_synced(), 30)
    assert informer.has_synced()
    assert events == [(EventType.ADDED, f"{namespace}/before")]

    await core.create_namespaced_config_map(namespace, config_map("a", v="1"))
    await core.patch_namespaced_config_map("a", namespace, {"data": {"v": "2"}})
    await core.delete_namespaced_config_map("before", namespace)
    expected = [
        (EventType.ADDED, f"{namespace}/before"),
        (EventType.ADDED, f"{namespace}/a"),
        (EventType.MODIFIED, f"{namespace}/a"),
        (EventType.DELETED, f"{namespace}/before"),
    ]
    await async_wait_for(
        lambda: events == expected, 30, f"events {expected}, got {events}", interval=0.05
    )
    assert informer.store.keys() == [f"{namespace}/a"]
    assert [o["metadata"]["name"] for o in informer.store.by_index("v", "2")] == ["a"]
    assert informer.store.by_index("v", "1") == []


@pytest.mark.owns_apiserver
async def test_informer_relists_after_apiserver_restart_and_loses_no_change(
    kube: KubeSandbox, api: RateLimitedApiClient, namespace: str, running: Running
) -> None:
    core = CoreV1Api(api)
    for name in ("keep", "gone"):
        await core.create_namespaced_config_map(namespace, config_map(name, v="0"))
    # A long reconnect backoff: the changes below land while the informer is not watching,
    # and the restarted server's fresh watch cache no longer has the informer's
    # resourceVersion, so only a 410 and a relist can reveal them.
    informer = Informer(
        api,
        CONFIG_MAPS,
        namespace=namespace,
        settings=WatchSettings(backoff_initial=15.0, backoff_cap=15.0),
    )
    events: list[Event] = []
    informer.add_handler(events.append)
    running.start(informer.run())
    await asyncio.wait_for(informer.wait_synced(), 30)

    await asyncio.to_thread(kube.restart_apiserver)
    await core.create_namespaced_config_map(namespace, config_map("new", v="0"))
    await core.patch_namespaced_config_map("keep", namespace, {"data": {"v": "1"}})
    await core.delete_namespaced_config_map("gone", namespace)

    expected = {f"{namespace}/keep": "1", f"{namespace}/new": "0"}
    await async_wait_for(
        lambda: (
            {
                o["metadata"]["namespace"] + "/" + o["metadata"]["name"]: o["data"]["v"]
                for o in informer.store.objects()
            }
            == expected
        ),
        60,
        "the informer's cache to match the server after the restart",
        interval=0.05,
    )
    assert informer.stats.expired >= 1, informer.stats
    assert informer.stats.lists >= 2, informer.stats
    after_sync = [(e.type, e.key) for e in events[2:]]
    assert sorted(after_sync) == sorted(
        [
            (EventType.ADDED, f"{namespace}/new"),
            (EventType.MODIFIED, f"{namespace}/keep"),
            (EventType.DELETED, f"{namespace}/gone"),
        ]
    )
    # The relist's DELETED carries the last state the cache had.
    gone = next(e for e in events if e.type is EventType.DELETED)
    assert gone.obj["metadata"]["name"] == "gone"


async def test_informer_reopens_a_silent_watch(
    api: RateLimitedApiClient, namespace: str, running: Running
) -> None:
    core = CoreV1Api(api)
    informer = Informer(
        api, CONFIG_MAPS, namespace=namespace, settings=WatchSettings(inactivity_timeout=1.0)
    )
    running.start(informer.run())
    await asyncio.wait_for(informer.wait_synced(), 30)
    await async_wait_for(
        lambda: informer.stats.inactivity_restarts >= 2,
        30,
        "two inactivity restarts",
        interval=0.05,
    )
    # The re-opened watch still delivers.
    await core.create_namespaced_config_map(namespace, config_map("late", v="0"))
    await async_wait_for(
        lambda: f"{namespace}/late" in informer.store, 30, "the late ConfigMap", interval=0.05
    )
    assert informer.stats.lists == 1
    assert informer.stats.failures == 0


async def test_writes_are_rate_limited_client_side(kube: KubeCluster, namespace: str) -> None:
    api = await make_api_client(kube.kubeconfig, ApiSettings(qps=5.0, burst=2))
    try:
        core = CoreV1Api(api)
        started = time.monotonic()
        for i in range(7):
            await core.create_namespaced_config_map(namespace, config_map(f"limited-{i}"))
        elapsed = time.monotonic() - started
        listed = await core.list_namespaced_config_map(namespace)
    finally:
        await api.close()
    # Two writes from the burst, the other five 1/5 s apart.
    assert elapsed >= (7 - 2) / 5.0 * 0.95
    assert {f"limited-{i}" for i in range(7)} <= {cm.metadata.name for cm in listed.items}


@pytest.fixture
async def tiny_priority_level(api: RateLimitedApiClient, namespace: str) -> AsyncIterator[str]:
    """API Priority and Fairness that rejects (429) what ServiceAccount `throttled` sends beyond
    a seat or so: the API server's own overload answer, on demand. Yields the SA's name."""
    base = "/apis/flowcontrol.apiserver.k8s.io/v1"
    name = f"tiny-{namespace}"
    level = {
        "metadata": {"name": name},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    schema = {
        "metadata": {"name": name},
        "spec": {
            "priorityLevelConfiguration": {"name": name},
            "matchingPrecedence": 10,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": "throttled", "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "namespaces": ["*"],
                        }
                    ],
                }
            ],
        },
    }
    await request_json(api, "POST", f"{base}/prioritylevelconfigurations", level)
    await request_json(api, "POST", f"{base}/flowschemas", schema)
    try:
        yield "throttled"
    finally:
        await request_json(api, "DELETE", f"{base}/flowschemas/{name}")
        await request_json(api, "DELETE", f"{base}/prioritylevelconfigurations/{name}")


async def test_429_from_the_api_server_is_waited_out(
    kube: KubeCluster, api: RateLimitedApiClient, namespace: str, tiny_priority_level: str
) -> None:
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    role = {
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
    }
    await request_json(api, "POST", f"{base}/roles", role)
    binding = {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [
            {"kind": "ServiceAccount", "name": tiny_priority_level, "namespace": namespace}
        ],
    }
    await request_json(api, "POST", f"{base}/rolebindings", binding)
    kubeconfig = await asyncio.to_thread(
        kube.service_account_kubeconfig, namespace, tiny_priority_level
    )
    path = CONFIG_MAPS.collection_path(namespace)

    async def burst(client: RateLimitedApiClient) -> list[BaseException | dict[str, Any]]:
        return await asyncio.gather(
            *(request_json(client, "GET", path) for _ in range(40)), return_exceptions=True
        )

    impatient = await make_api_client(kubeconfig, ApiSettings(max_throttle_retries=0))
    patient = await make_api_client(kubeconfig, ApiSettings(max_throttle_retries=20))
    try:
        # The API server picks up the new flow schema asynchronously: wait for its first 429s.
        async def rejected() -> list[ApiStatusError]:
            errors = [e for e in await burst(impatient) if isinstance(e, ApiStatusError)]
            assert all(e.status == 429 for e in errors), errors
            return errors

        await async_wait_for(rejected, 60, "the API server to answer 429 to a burst", interval=0.05)
        answers = await burst(patient)
    finally:
        await impatient.close()
        await patient.close()
    failures = [answer for answer in answers if isinstance(answer, BaseException)]
    assert failures == []
    assert patient.throttled_total > 0


# leader election across processes -------------------------------------------------------------

LEASE = "stamper-leader"
STAMP = "example.com/handled-by"
# Short lease timings keep the hand-over test quick; the algorithm is the same as at 15/10/2.
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 4.0, 3.0, 1.0
SHUTDOWN_TIMEOUT = 5.0
# Every name the issue promises on /metrics, with the label that identifies our objects.
EXPECTED_SERIES = [
    'controller_runtime_reconcile_total{controller="stamper",result="success"}',
    'controller_runtime_reconcile_total{controller="stamper",result="error"}',
    'controller_runtime_reconcile_total{controller="stamper",result="requeue"}',
    'controller_runtime_reconcile_total{controller="stamper",result="requeue_after"}',
    'controller_runtime_reconcile_errors_total{controller="stamper"}',
    'controller_runtime_terminal_reconcile_errors_total{controller="stamper"}',
    'controller_runtime_reconcile_time_seconds_count{controller="stamper"}',
    'controller_runtime_active_workers{controller="stamper"}',
    'controller_runtime_max_concurrent_reconciles{controller="stamper"}',
    'workqueue_depth{name="stamper"}',
    'workqueue_adds_total{name="stamper"}',
    'workqueue_queue_duration_seconds_count{name="stamper"}',
    'workqueue_work_duration_seconds_count{name="stamper"}',
    'workqueue_unfinished_work_seconds{name="stamper"}',
    'workqueue_longest_running_processor_seconds{name="stamper"}',
    'workqueue_retries_total{name="stamper"}',
    f'leader_election_master_status{{name="{LEASE}"}}',
]


class Replica:
    """One controller process of this module's `main`, stopped by its own PID."""

    def __init__(
        self, identity: str, kubeconfig: Path, namespace: str, log_dir: Path, *, source: Path
    ) -> None:
        """`source`: the tree this module is imported from in the replica (pytest's rootdir)."""
        self.identity = identity
        self.port = free_port()
        self.log_file = log_dir / f"{identity}.log"
        argv = [
            sys.executable, "-m", "tests.e2e.test_runtime",
            "--kubeconfig", str(kubeconfig),
            "--namespace", namespace,
            "--identity", identity,
            "--port", str(self.port),
        ]  # fmt: skip
        with self.log_file.open("w") as log:
            self.process = subprocess.Popen(
                argv, cwd=source, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def metrics(self) -> dict[str, float]:
        """The replica's /metrics as {series: value}; empty while it does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(f"http://127.0.0.1:{self.port}/metrics") as response,
            ):
                text = await response.text()
        except aiohttp.ClientError:
            return {}
        series = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                series[name] = float(value)
        return series

    async def readyz(self) -> int:
        """The HTTP status of the replica's /readyz (0 while it does not answer)."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
                http.get(f"http://127.0.0.1:{self.port}/readyz") as response,
            ):
                return response.status
        except aiohttp.ClientError:
            return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


async def grant_stamper_rbac(api: RateLimitedApiClient, namespace: str) -> None:
    """What the replicas may do, and no more: watch/patch ConfigMaps, hold a Lease."""
    config_maps = ["get", "list", "watch", "patch"]
    rules = [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": config_maps},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "create", "update"]},
    ]  # fmt: skip
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    await request_json(
        api, "POST", f"{base}/roles", {"metadata": {"name": "stamper"}, "rules": rules}
    )
    binding = {
        "metadata": {"name": "stamper"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "stamper"},
        "subjects": [{"kind": "ServiceAccount", "name": "stamper", "namespace": namespace}],
    }
    await request_json(api, "POST", f"{base}/rolebindings", binding)


async def lease_holder(api: RateLimitedApiClient, namespace: str) -> str:
    return await lease_holder_of(
        api, f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    )


async def lease_holder_of(api: RateLimitedApiClient, path: str) -> str:
    try:
        lease = await request_json(api, "GET", path)
    except ApiStatusError as err:
        if err.status == 404:
            return ""
        raise
    return str(lease.get("spec", {}).get("holderIdentity") or "")


async def stamp_of(core: CoreV1Api, namespace: str, name: str) -> str | None:
    config = await core.read_namespaced_config_map(name, namespace)
    annotations = config.metadata.annotations or {}
    return annotations.get(STAMP)


async def test_two_processes_elect_one_leader_and_hand_over_when_it_dies(
    *,
    request: pytest.FixtureRequest,
    kube: KubeCluster,
    api: RateLimitedApiClient,
    namespace: str,
    replicas: list[Replica],
    tmp_path: Path,
) -> None:
    core = CoreV1Api(api)
    await grant_stamper_rbac(api, namespace)
    kubeconfig = await asyncio.to_thread(kube.service_account_kubeconfig, namespace, "stamper")
    for identity in ("alpha", "beta"):
        replicas.append(
            Replica(identity, kubeconfig, namespace, tmp_path, source=request.config.rootpath)
        )
    by_identity = {replica.identity: replica for replica in replicas}

    leader_id = await async_wait_for(
        lambda: lease_holder(api, namespace), 60, "one replica to take the lease", interval=0.05
    )
    leader = by_identity[leader_id]
    follower = next(replica for replica in replicas if replica is not leader)
    status = f'leader_election_master_status{{name="{LEASE}"}}'
    leader_metrics = await async_wait_for(
        lambda: _with_value(leader.metrics(), status, 1.0),
        30,
        "the leader's master status 1",
        interval=0.05,
    )
    follower_metrics = await async_wait_for(
        follower.metrics, 30, "the follower's /metrics", interval=0.05
    )
    assert follower_metrics[status] == 0.0
    # The follower keeps its cache warm: it is ready, just not leading.
    await async_wait_for(
        lambda: _equals(follower.readyz(), 200),
        30,
        "the follower's /readyz to answer 200",
        interval=0.05,
    )
    missing = [series for series in EXPECTED_SERIES if series not in leader_metrics]
    assert missing == [], f"not on /metrics: {missing}"

    # Only the leader reconciles.
    await core.create_namespaced_config_map(namespace, config_map("one"))
    await async_wait_for(
        lambda: _equals(stamp_of(core, namespace, "one"), leader_id),
        30,
        "the leader's stamp",
        interval=0.05,
    )

    # The leader dies without releasing: the follower takes over once the lease expires.
    killed_at = time.monotonic()
    leader.process.kill()
    bound = LEASE_DURATION + 2 * RETRY_PERIOD * 1.2 + 2.0
    await async_wait_for(
        lambda: _equals(lease_holder(api, namespace), follower.identity),
        bound,
        "hand-over",
        interval=0.05,
    )
    hand_over = time.monotonic() - killed_at
    report(request.config, f"\nleader hand-over after SIGKILL: {hand_over:.1f} s "
           f"(lease {LEASE_DURATION:.0f} s, retry {RETRY_PERIOD:.0f} s)")  # fmt: skip
    await core.create_namespaced_config_map(namespace, config_map("two"))
    await async_wait_for(
        lambda: _equals(stamp_of(core, namespace, "two"), follower.identity),
        30,
        "the new leader's stamp",
        interval=0.05,
    )

    # A clean stop releases the lease and exits 0 within the shutdown bound.
    follower.process.send_signal(signal.SIGTERM)
    await async_wait_for(
        lambda: follower.process.poll() is not None,
        SHUTDOWN_TIMEOUT + 10,
        "a clean exit",
        interval=0.05,
    )
    assert follower.process.returncode == 0, follower.log_file.read_text()[-3000:]
    assert await lease_holder(api, namespace) == ""

    # Logs are JSON, and what a reconcile logs names the reconcile and its key.
    lines = [json.loads(line) for line in follower.log_file.read_text().splitlines()]
    stamped = [line for line in lines if line["message"] == "stamped"]
    assert stamped, lines
    assert {line["key"] for line in stamped} >= {f"{namespace}/one", f"{namespace}/two"}
    assert all(line["controller"] == "stamper" and line["reconcile_id"] for line in stamped)
    assert any(line["message"] == "released the lease" for line in lines)


async def _with_value(
    scrape: Awaitable[dict[str, float]], series: str, value: float
) -> dict[str, float] | None:
    metrics = await scrape
    return metrics if metrics.get(series) == value else None


async def _equals(answer: Awaitable[T], expected: T) -> bool:
    return await answer == expected


async def test_a_leader_whose_lease_is_taken_stops_leading_within_the_renew_deadline(
    api: RateLimitedApiClient, namespace: str
) -> None:
    metrics = RuntimeMetrics()
    settings = LeaderElectionSettings(
        namespace=namespace,
        name="stolen",
        identity="victim",
        lease_duration=LEASE_DURATION,
        renew_deadline=RENEW_DEADLINE,
        retry_period=RETRY_PERIOD,
    )
    elector = LeaderElector(api, settings, metrics=metrics)
    leading = asyncio.Event()
    lead_cancelled = asyncio.Event()

    async def lead() -> None:
        leading.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            lead_cancelled.set()
            raise

    election = asyncio.create_task(elector.run(lead))
    try:
        await asyncio.wait_for(leading.wait(), 30)
        status = {"name": "stolen"}
        assert metrics.registry.get_sample_value("leader_election_master_status", status) == 1

        # Someone else writes the lease (say, an operator by hand): the victim can no longer
        # renew, and must stop leading once its renew deadline has passed.
        lease = await request_json(api, "GET", elector.path)
        lease["spec"]["holderIdentity"] = "intruder"
        await request_json(api, "PUT", elector.path, lease)
        stolen_at = time.monotonic()
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(election, RENEW_DEADLINE + 2 * RETRY_PERIOD + 5)
        assert time.monotonic() - stolen_at >= RENEW_DEADLINE - RETRY_PERIOD
    finally:
        await cancel_and_wait(election)
    assert lead_cancelled.is_set()
    assert not elector.is_leader
    assert metrics.registry.get_sample_value("leader_election_master_status", status) == 0
    assert await lease_holder_of(api, elector.path) == "intruder"


# the replica program --------------------------------------------------------------------------

replica_log = logging.getLogger("stamper")


async def run_replica(args: argparse.Namespace) -> None:
    api = await make_api_client(args.kubeconfig, ApiSettings(qps=50, burst=100))
    try:
        manager = Manager(
            api,
            ManagerSettings(
                leader_election=LeaderElectionSettings(
                    namespace=args.namespace,
                    name=LEASE,
                    identity=args.identity,
                    lease_duration=LEASE_DURATION,
                    renew_deadline=RENEW_DEADLINE,
                    retry_period=RETRY_PERIOD,
                ),
                server=ServerSettings("127.0.0.1", args.port),
            ),
        )
        config_maps = manager.informer(CONFIG_MAPS, namespace=args.namespace)

        async def stamp(key: str) -> Result:
            obj = config_maps.store.get(key)
            if obj is None:
                return Result()
            if obj["metadata"].get("annotations", {}).get(STAMP) != args.identity:
                await request_json(
                    api,
                    "PATCH",
                    f"{CONFIG_MAPS.collection_path(args.namespace)}/{obj['metadata']['name']}",
                    {"metadata": {"annotations": {STAMP: args.identity}}},
                    content_type="application/merge-patch+json",
                )
                replica_log.info("stamped", extra={"identity": args.identity})
            return Result()

        controller = manager.controller(
            "stamper",
            stamp,
            settings=ControllerSettings(workers=2, shutdown_timeout=SHUTDOWN_TIMEOUT),
        )
        controller.watch(config_maps)
        await manager.run()
    finally:
        await api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a stamper replica for the leader election test")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    asyncio.run(run_replica(args))


if __name__ == "__main__":
    main()
