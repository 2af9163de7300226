"""Session-wide real daemons for the end-to-end suite. Nothing here is a fake."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from reconciler.k8s import RateLimitedApiClient, make_api_client
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.kube import KubeBinaries, KubeSandbox
from reconciler.sandbox.pair import SitePair, start_pair
from reconciler.sandbox.process import pid_alive
from reconciler.sandbox.site import install_crds
from tests.e2e.support import report
from tests.support.csi_replay import VolumeFactory


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
) -> Iterator[KubeSandbox]:
    """Real etcd + kube-apiserver (RBAC) + kube-controller-manager: reconciler.sandbox.kube."""
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
def crds(kube: KubeSandbox, checkout: Checkout) -> None:
    """The project's CRDs installed from crds/ with kustomize, and Established."""
    install_crds(kube.kubeconfig, checkout)


@pytest.fixture
async def api(kube: KubeSandbox) -> AsyncIterator[RateLimitedApiClient]:
    """The runtime's API client as the admin, closed after the test."""
    client = await make_api_client(kube.kubeconfig)
    try:
        yield client
    finally:
        await client.close()
