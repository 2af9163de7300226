"""Session-wide real daemons for the end-to-end suite. Nothing here is a fake.

The API server is the local sandbox's (etcd + kube-apiserver + kube-controller-manager, started
and stopped here) unless `--kubeconfig PATH` (or $E2E_KUBECONFIG) names an existing cluster:
then `kube` is that cluster, reached with the kubeconfig's admin credentials, no kube-apiserver
is started, and the tests marked `owns_apiserver` are deselected (the terminal lists them).
Ceph is always the local pair, started here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from reconciler.k8s import RateLimitedApiClient, make_api_client
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.csidriver import build_cephcsi
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.pair import SitePair, start_pair
from reconciler.sandbox.process import pid_alive
from reconciler.sandbox.site import install_crds
from tests.e2e.support import report
from tests.support.csi_replay import VolumeFactory

OWNS_APISERVER = "owns_apiserver"
_DESELECTED = pytest.StashKey[list[str]]()


def existing_cluster(config: pytest.Config) -> Path | None:
    """The kubeconfig of the existing cluster the suite targets, or None for the local sandbox."""
    value = config.getoption("kubeconfig", default=None)
    return Path(value).resolve() if value else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Against an existing cluster, deselect what needs an API server of its own."""
    if existing_cluster(config) is None:
        return
    owning = [item for item in items if item.get_closest_marker(OWNS_APISERVER) is not None]
    config.stash[_DESELECTED] = [item.nodeid for item in owning]
    if owning:
        items[:] = [item for item in items if item.get_closest_marker(OWNS_APISERVER) is None]
        config.hook.pytest_deselected(items=owning)


def pytest_report_collectionfinish(
    config: pytest.Config, start_path: Path, items: Sequence[pytest.Item]
) -> list[str]:
    kubeconfig = existing_cluster(config)
    if kubeconfig is None:
        return []
    deselected = config.stash.get(_DESELECTED, [])
    return [
        f"kube: the existing cluster of {kubeconfig}; no kube-apiserver is started",
        f"deselected {len(deselected)} {OWNS_APISERVER} test(s): they start, stop or restart "
        "an API server of their own, or read its daemons",
        *(f"  deselected: {nodeid}" for nodeid in deselected),
    ]


@pytest.fixture(scope="session")
def checkout(request: pytest.FixtureRequest) -> Checkout:
    """The source tree under test (pytest's rootdir): its crds/, config/ and hack/ scripts."""
    return Checkout.at(request.config.rootpath)


@pytest.fixture(scope="session")
def ceph_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SitePair]:
    """Two real Ceph clusters, site-a mirroring `replicapool` to site-b with rbd-mirror."""
    pair = start_pair(tmp_path_factory.mktemp("ceph"))
    report(request.config, f"\nceph pair ready in {pair.started_in:.1f} s (goal < 30 s)")
    pids = pair.site_a.daemons.pids() + pair.site_b.daemons.pids()
    yield pair
    pair.stop()
    survivors = [pid for pid in pids if pid_alive(pid)]
    assert not survivors, f"Ceph daemons still running after teardown: {survivors}"


@pytest.fixture(scope="session")
def new_volumes(ceph_pair: SitePair) -> VolumeFactory:
    """Makes uniquely named volumes on the session's Ceph pair; a module takes its own defaults
    with `new_volumes.derive(cluster_id=..., prefix=...)`."""
    return VolumeFactory(ceph_pair)


@pytest.fixture(scope="session")
def kube(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, checkout: Checkout
) -> Iterator[KubeCluster]:
    """Real etcd + kube-apiserver (RBAC) + kube-controller-manager: reconciler.sandbox.kube;
    with --kubeconfig, the existing cluster it names (tests that need a KubeSandbox's own
    daemons are marked owns_apiserver and never get here)."""
    kubeconfig = existing_cluster(request.config)
    if kubeconfig is not None:
        cluster = KubeCluster.from_kubeconfig(kubeconfig, tmp_path_factory.mktemp("kube"))
        version = cluster.request("GET", "/version")
        report(
            request.config,
            f"\nkube: existing cluster {cluster.server} ({version.get('gitVersion')}) "
            f"from {kubeconfig}",
        )
        yield cluster
        return
    binaries = KubeBinaries.locate(checkout)
    with KubeSandbox(tmp_path_factory.mktemp("kube"), binaries) as sandbox:
        report(
            request.config,
            f"\nkube sandbox warm start: {sandbox.start_seconds:.1f} s (goal < 15 s)",
        )
        pids = list(sandbox.pids().values())
        yield sandbox
    survivors = [pid for pid in pids if pid_alive(pid)]
    assert not survivors, f"kube daemons still running after teardown: {survivors}"


@pytest.fixture(scope="session")
def crds(kube: KubeCluster, checkout: Checkout) -> None:
    """The project's CRDs installed from crds/ with kustomize, and Established."""
    install_crds(kube.kubeconfig, checkout)


@pytest.fixture
async def api(kube: KubeCluster) -> AsyncIterator[RateLimitedApiClient]:
    """The runtime's API client as the admin, closed after the test."""
    client = await make_api_client(kube.kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture(scope="session")
def cephcsi_binary(request: pytest.FixtureRequest, checkout: Checkout) -> Path:
    """ceph-csi v3.12.2 built from its source tarball by hack/build-cephcsi.sh (cached)."""
    began = time.monotonic()
    binary = build_cephcsi(checkout)
    report(request.config, f"\ncephcsi binary ready in {time.monotonic() - began:.1f} s")
    return binary
