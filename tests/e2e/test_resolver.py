"""The CSI-side resolver against the real API server of the `kube` fixture. The mappings are
created and their status written by server-side apply (a ClusterIDMapping's through its status
subresource, a VolumeHandleMapping's with the object), exactly as the controllers do; the
resolver only reads. Nothing here is a fake.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from reconciler.csi import (
    ResolvedVolume,
    Resolver,
    ResolverUnavailable,
    SyncResolver,
    VolumeNotFound,
)
from reconciler.handle import VolumeHandle
from reconciler.k8s import RateLimitedApiClient, Resource, make_api_client, request_json
from reconciler.k8s.apply import server_side_apply
from reconciler.k8s.conditions import condition, merge_conditions
from reconciler.kinds import API_VERSION, CLUSTER_ID_MAPPINGS, FIELD_MANAGER, VOLUME_HANDLE_MAPPINGS
from reconciler.sandbox import site
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.errors import ApiRequestFailed
from reconciler.sandbox.pair import SitePair, start_pair
from reconciler.sandbox.process import free_port
from reconciler.sandbox.site import kubectl
from tests.e2e.support import report
from tests.support.polling import async_wait_for, wait_for

pytestmark = pytest.mark.e2e

T = TypeVar("T")
POOL = "replicapool"
#: The issue's bound on how stale the resolver may be after a mapping changes.
PROPAGATION_SECONDS = 1.0
SYNC_SECONDS = 30.0
#: Polled this often, the time to propagate is measured to within a few milliseconds.
PROPAGATION_POLL = 0.005


def handle(cluster_id: str, pool_id: int, object_uuid: str | None = None) -> str:
    return VolumeHandle(cluster_id, pool_id, object_uuid or str(uuid.uuid4())).encode()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# The world: a namespace with ceph-csi-config naming the local clusters --------------------------


class World:
    def __init__(self, kube: KubeCluster, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def set_csi_config(self, clusters: dict[str, list[str]]) -> None:
        """ceph-csi-config listing `clusters` (clusterID -> monitors), as ceph-csi reads it."""
        entries = [{"clusterID": c, "monitors": m} for c, m in clusters.items()]
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ceph-csi-config", "namespace": self.namespace},
            "data": {"config.json": json.dumps(entries)},
        }
        path = f"/api/v1/namespaces/{self.namespace}/configmaps"
        try:
            self.kube.request("PUT", f"{path}/ceph-csi-config", body)
        except ApiRequestFailed as err:
            if err.status != 404:
                raise
            self.kube.request("POST", path, body)


@pytest.fixture(scope="module")
def world(kube: KubeCluster, crds: None) -> Iterator[World]:
    namespace = unique("resolver")
    kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    yield World(kube, namespace)
    kube.request("DELETE", f"/api/v1/namespaces/{namespace}")


@pytest.fixture
async def resolver(api: RateLimitedApiClient, world: World) -> AsyncIterator[Resolver]:
    async with Resolver(api, csi_config_namespace=world.namespace) as started:
        await asyncio.wait_for(started.wait_synced(), SYNC_SECONDS)
        yield started


# Writing the CRs as the controllers do ------------------------------------------------------


def ready_conditions(reason: str, *extra: dict[str, Any]) -> list[dict[str, Any]]:
    return merge_conditions([], [condition("Ready", True, reason, "e2e", 1), *extra])


async def create(api: RateLimitedApiClient, resource: Resource, body: dict[str, Any]) -> None:
    await request_json(api, "POST", resource.collection_path(), body)


async def delete(api: RateLimitedApiClient, resource: Resource, name: str) -> None:
    await request_json(api, "DELETE", f"{resource.collection_path()}/{name}")


async def write_status(
    api: RateLimitedApiClient, resource: Resource, kind: str, name: str, status: dict[str, Any]
) -> None:
    body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "status": status}
    await server_side_apply(api, resource, body, field_manager=FIELD_MANAGER, subresource="status")


async def create_handle_mapping(api: RateLimitedApiClient, name: str, old: str) -> None:
    await create(
        api,
        VOLUME_HANDLE_MAPPINGS,
        {
            "apiVersion": API_VERSION,
            "kind": "VolumeHandleMapping",
            "metadata": {"name": name},
            "spec": {"pvName": name, "volumeHandle": old},
        },
    )


async def mark_handle_mapping_ready(
    api: RateLimitedApiClient, name: str, new: VolumeHandle, pool: str = POOL
) -> None:
    # The kind has no status subresource: its status is applied with the object.
    status = {
        "newVolumeHandle": new.encode(),
        "clusterID": new.cluster_id,
        "pool": pool,
        "poolID": new.pool_id,
        "imageName": new.image_name(),
        "journalPool": pool,
        "radosNamespace": "",
        "conditions": ready_conditions("Regenerated"),
    }
    body = {"apiVersion": API_VERSION, "kind": "VolumeHandleMapping", "metadata": {"name": name}}
    await server_side_apply(
        api, VOLUME_HANDLE_MAPPINGS, {**body, "status": status}, field_manager=FIELD_MANAGER
    )


async def create_ready_cluster_mapping(
    api: RateLimitedApiClient,
    name: str,
    remote: str,
    local: str,
    *,
    remote_pool: int,
    local_pool: int,
) -> None:
    await create(
        api,
        CLUSTER_ID_MAPPINGS,
        {
            "apiVersion": API_VERSION,
            "kind": "ClusterIDMapping",
            "metadata": {"name": name},
            "spec": {
                "siteA": {"clusterID": remote},
                "siteB": {"clusterID": local},
                "rbdPools": [{"name": POOL, "siteAPoolID": remote_pool}],
            },
        },
    )
    await write_status(
        api,
        CLUSTER_ID_MAPPINGS,
        "ClusterIDMapping",
        name,
        {
            "observedGeneration": 1,
            "localClusterID": local,
            "remoteClusterID": remote,
            "rbdPools": [
                {
                    "name": POOL,
                    "localPoolID": local_pool,
                    "localPoolIDSource": "LocalCluster",
                    "remotePoolID": remote_pool,
                    "remotePoolIDSource": "Spec",
                }
            ],
            "conditions": ready_conditions(
                "Mapped", condition("Conflicting", False, "NoConflict", "e2e", 1)
            ),
        },
    )


def resolved_as(resolver: Resolver, handle: str, how: str) -> ResolvedVolume | None:
    try:
        found = resolver.resolve_cached(handle)
    except VolumeNotFound:
        return None
    return found if found.how == how else None


async def set_csi_config(world: World, resolver: Resolver, clusters: dict[str, list[str]]) -> None:
    """ceph-csi-config with `clusters`, once the resolver has seen it."""
    world.set_csi_config(clusters)
    await async_wait_for(
        lambda: all(c in resolver.local_clusters.clusters for c in clusters),
        SYNC_SECONDS,
        "the resolver to see ceph-csi-config",
    )


def not_found(resolver: Resolver, handle: str) -> VolumeNotFound | None:
    try:
        resolver.resolve_cached(handle)
    except VolumeNotFound as err:
        return err
    return None


# Tests --------------------------------------------------------------------------------------


async def test_a_mapping_resolves_within_a_second_of_ready_and_stops_within_one_of_deletion(
    api: RateLimitedApiClient, world: World, resolver: Resolver, request: pytest.FixtureRequest
) -> None:
    local = unique("here")
    await set_csi_config(world, resolver, {local: ["192.0.2.1:6789"]})
    old = handle(unique("gone"), 2)
    new = VolumeHandle(local, 5, VolumeHandle.decode(old).object_uuid)
    name = unique("pv")
    await create_handle_mapping(api, name, old)
    err = await async_wait_for(
        lambda: (
            (e := not_found(resolver, old))
            and f"VolumeHandleMapping {name} is not reconciled yet" in e.missing
            and e
        ),
        SYNC_SECONDS,
        "the new mapping, not yet Ready, named in 'not found'",
    )
    assert isinstance(err, VolumeNotFound)

    await mark_handle_mapping_ready(api, name, new)
    marked = time.monotonic()
    found = await async_wait_for(
        lambda: resolved_as(resolver, old, "mapping"),
        PROPAGATION_SECONDS,
        "the Ready mapping to resolve",
        interval=PROPAGATION_POLL,
    )
    took = time.monotonic() - marked
    assert found == ResolvedVolume(
        volume_handle=new.encode(),
        how="mapping",
        via=f"VolumeHandleMapping {name}",
        cluster_id=local,
        monitors=("192.0.2.1:6789",),
        rados_namespace="",
        mirror_daemon_count=1,
        pool=POOL,
        pool_id=5,
        image_name=new.image_name(),
        journal_pool=POOL,
    )
    assert await resolver.resolve(old) == found
    report(request.config, f"\nresolver: Ready mapping resolved in {took * 1000:.0f} ms")

    await delete(api, VOLUME_HANDLE_MAPPINGS, name)
    deleted = time.monotonic()
    await async_wait_for(
        lambda: not_found(resolver, old),
        PROPAGATION_SECONDS,
        "the deleted mapping to stop",
        interval=PROPAGATION_POLL,
    )
    took = time.monotonic() - deleted
    report(request.config, f"resolver: deleted mapping gone in {took * 1000:.0f} ms")


async def test_a_cluster_mapping_alone_resolves_and_says_so(
    api: RateLimitedApiClient, world: World, resolver: Resolver
) -> None:
    local, remote = unique("here"), unique("gone")
    await set_csi_config(world, resolver, {local: ["192.0.2.2:6789"]})
    old = handle(remote, 2)
    name = unique("cidm")
    await create_ready_cluster_mapping(api, name, remote, local, remote_pool=2, local_pool=7)
    found = await async_wait_for(
        lambda: resolved_as(resolver, old, "cluster-mapping"),
        SYNC_SECONDS,
        "the ClusterIDMapping to resolve the handle",
    )
    expected = VolumeHandle(local, 7, VolumeHandle.decode(old).object_uuid)
    assert (found.volume_handle, found.via, found.pool, found.pool_id) == (
        expected.encode(),
        f"ClusterIDMapping {name}",
        POOL,
        7,
    )
    assert found.monitors == ("192.0.2.2:6789",)
    # A pool ID the mapping does not know is named, not guessed.
    err = not_found(resolver, handle(remote, 3))
    assert err is not None
    assert f"ClusterIDMapping {name} maps clusterID {remote!r} but not its pool ID 3" in err.missing
    await delete(api, CLUSTER_ID_MAPPINGS, name)


async def test_an_unmapped_cluster_without_local_config_is_not_found_with_the_reason(
    api: RateLimitedApiClient, world: World
) -> None:
    nowhere = unique("nowhere")
    empty_namespace = unique("no-csi-config")
    async with Resolver(api, csi_config_namespace=empty_namespace) as started:
        await asyncio.wait_for(started.wait_synced(), SYNC_SECONDS)
        with pytest.raises(VolumeNotFound) as raised:
            await started.resolve(handle(nowhere, 1))
    assert raised.value.missing == (
        "no VolumeHandleMapping names it",
        f"no ClusterIDMapping names clusterID {nowhere!r}",
        f"ConfigMap {empty_namespace}/ceph-csi-config is unusable: it does not exist",
    )


async def test_before_sync_the_answer_is_unavailable_never_not_found(
    api: RateLimitedApiClient, world: World, kube: KubeCluster, tmp_path: Path
) -> None:
    some_handle = handle(unique("gone"), 1)
    async with Resolver(api, csi_config_namespace=world.namespace) as fresh:
        # No await since start: nothing can have been listed yet.
        with pytest.raises(ResolverUnavailable) as raised:
            fresh.resolve_cached(some_handle)
        assert raised.value.retryable
        with pytest.raises(VolumeNotFound):
            await fresh.resolve(some_handle, sync_timeout=SYNC_SECONDS)

    # An API server that cannot be reached keeps it unavailable for as long as one waits.
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    unreachable = tmp_path / "unreachable.kubeconfig"
    unreachable.write_text(yaml.safe_dump(config))
    dead_api = await make_api_client(unreachable)
    try:
        async with Resolver(dead_api, csi_config_namespace=world.namespace) as cut_off:
            with pytest.raises(ResolverUnavailable) as raised:
                await cut_off.resolve(some_handle, sync_timeout=1.0)
            assert cut_off.volume_handle_mappings.stats.failures >= 1
    finally:
        await dead_api.close()
    assert "/apis/rbdmirror.csi.ceph.io/v1alpha1/volumehandlemappings" in raised.value.waiting_for


def test_the_sync_facade_resolves_from_any_thread(kube: KubeCluster, world: World) -> None:
    local = unique("here")
    world.set_csi_config({local: ["192.0.2.3:6789"]})
    some_handle = handle(local, 4)
    with SyncResolver(kube.kubeconfig, csi_config_namespace=world.namespace) as resolver:
        found = resolver.resolve(some_handle, sync_timeout=SYNC_SECONDS)
    assert (found.how, found.volume_handle, found.cluster_id) == ("local", some_handle, local)


@pytest.mark.parametrize("service_account", ["rbd-csi-provisioner", "rbd-csi-nodeplugin"])
def test_ceph_csi_service_accounts_resolve_with_config_rbac_csi_and_nothing_more(
    kube: KubeCluster, world: World, checkout: Checkout, tmp_path: Path, service_account: str
) -> None:
    copy = site.install_rbac(kube.kubeconfig, checkout, world.namespace, tmp_path, "rbac-csi")
    try:
        kubeconfig = kube.service_account_kubeconfig(world.namespace, service_account)
        local = unique("here")
        world.set_csi_config({local: ["192.0.2.3:6789"]})
        some_handle = handle(local, 4)
        with SyncResolver(kubeconfig, csi_config_namespace=world.namespace) as resolver:
            # Syncing needs list on both CRDs and the ConfigMap ...
            found = resolver.resolve(some_handle, sync_timeout=SYNC_SECONDS)
            assert (found.how, found.volume_handle) == ("local", some_handle)
            # ... and only a watch brings later changes in.
            later = unique("later")
            world.set_csi_config({local: ["192.0.2.3:6789"], later: ["192.0.2.4:6789"]})

            def resolves_later() -> bool:
                try:
                    return resolver.resolve(handle(later, 4)).cluster_id == later
                except VolumeNotFound:
                    return False

            wait_for(resolves_later, 10, f"the resolver to see {later} through its watch")

        def can(*request: str) -> str:
            return kubectl(kubeconfig, "auth", "can-i", *request, check=False).stdout.strip()

        assert can("watch", "volumehandlemappings.rbdmirror.csi.ceph.io") == "yes"
        assert can("patch", "volumehandlemappings.rbdmirror.csi.ceph.io") == "no"
        assert can("get", "secrets", "-n", world.namespace) == "no"
        assert can("list", "configmaps", "-n", "kube-system") == "no"
    finally:
        kubectl(kube, "delete", "-k", str(copy), check=False)


def cli(kube: KubeCluster, world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter that also reports whether Ceph's bindings were loaded."""
    program = (
        "import sys; from reconciler.cli import main; code = main(sys.argv[1:]); "
        "print('ceph bindings loaded' if {'rados', 'rbd'} & set(sys.modules) else '', "
        "file=sys.stderr, end=''); sys.exit(code)"
    )
    flags = ["--kubeconfig", str(kube.kubeconfig), "--csi-config-namespace", world.namespace]
    return subprocess.run(
        [sys.executable, "-c", program, "resolve", *args, *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_exit_codes(kube: KubeCluster, world: World) -> None:
    malformed = cli(kube, world, "0001-0009-rook-ceph-nope")
    assert malformed.returncode == 2, malformed.stderr
    assert malformed.stderr.count("\n") == 1 and "invalid volume handle" in malformed.stderr
    unknown = unique("nowhere")
    missing = cli(kube, world, handle(unknown, 1))
    assert missing.returncode == 1, missing.stderr
    assert f"no ClusterIDMapping names clusterID {unknown!r}" in missing.stderr


# Site-a's Ceph cluster stopped ----------------------------------------------------------------


@dataclass(frozen=True)
class SiteADown:
    pair: SitePair
    site_a_pool_id: int
    """Read before site-a stopped: it can no longer answer."""


@pytest.fixture(scope="module")
def site_a_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteADown]:
    """A Ceph pair of this module's own (the session's is shared) with site-a stopped."""
    pair = start_pair(tmp_path_factory.mktemp("resolver-ceph"))
    try:
        pool_id = pair.site_a.pool_id(POOL)
        pair.site_a.stop()
        yield SiteADown(pair, pool_id)
    finally:
        pair.stop()


async def test_resolving_needs_no_ceph_so_a_dead_site_a_changes_nothing(
    api: RateLimitedApiClient, kube: KubeCluster, world: World, site_a_down: SiteADown
) -> None:
    site_b = site_a_down.pair.site_b
    monitors = site_b.monitors.split(",")
    # clusterIDs of this test alone: other modules leave mappings of "site-a" behind.
    remote, local = unique("site-a"), unique("site-b")
    world.set_csi_config({local: monitors})
    a_pool, b_pool = site_a_down.site_a_pool_id, site_b.pool_id(POOL)
    mapped, by_cluster = handle(remote, a_pool), handle(remote, a_pool)
    name, cidm = unique("pv"), unique("cidm")
    await create_handle_mapping(api, name, mapped)
    await mark_handle_mapping_ready(
        api, name, VolumeHandle(local, b_pool, VolumeHandle.decode(mapped).object_uuid)
    )
    await create_ready_cluster_mapping(
        api, cidm, remote, local, remote_pool=a_pool, local_pool=b_pool
    )
    try:
        async with Resolver(api, csi_config_namespace=world.namespace) as resolver:
            await asyncio.wait_for(resolver.wait_synced(), SYNC_SECONDS)
            for old, how in ((mapped, "mapping"), (by_cluster, "cluster-mapping")):
                found = await async_wait_for(
                    functools.partial(resolved_as, resolver, old, how), SYNC_SECONDS, how
                )
                assert (found.cluster_id, found.pool_id) == (local, b_pool)
                assert found.monitors == tuple(monitors)
        ran = await asyncio.to_thread(cli, kube, world, mapped, "-o", "json")
        assert ran.returncode == 0, ran.stderr
        assert ran.stderr == "", "the CLI loaded Ceph's bindings: it could have talked to Ceph"
        assert json.loads(ran.stdout)["how"] == "mapping"
    finally:
        await delete(api, VOLUME_HANDLE_MAPPINGS, name)
        await delete(api, CLUSTER_ID_MAPPINGS, cidm)
