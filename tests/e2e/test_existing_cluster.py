"""`--kubeconfig`: the e2e suite against a cluster it did not start, as hosted CI runs it on kind.

A KubeSandbox started here plays the pre-existing cluster. A second pytest runs a few tests of
the suite (CRDs, and the controller remapping and garbage-collecting volumes) with `--kubeconfig`
pointing at it, and two owns_apiserver tests that it must deselect. That inner run cannot start
a control plane of its own: its kube binary directory is empty, and its process tree is watched
for a kube-apiserver while it runs. What it did must then be found in this cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.kinds import COMPONENT
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.errors import ApiRequestFailed, KubeconfigUnusable
from reconciler.sandbox.kube import BIN_DIR_ENV, KubeBinaries, KubeSandbox
from reconciler.sandbox.process import pid_alive
from reconciler.sandbox.site import CRDS, kubectl
from tests.conftest import KUBECONFIG_ENV
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

E2E = "tests/e2e"
# What the inner run must pass: the CRDs installed and validated there, and the controller
# (a local process, as the suite runs it) remapping a failed-over volume in that cluster and
# its controller-manager's garbage collector deleting the mapping with the PV.
RUNS = (
    f"{E2E}/test_crds.py::test_crds_are_established_with_short_names_and_category",
    f"{E2E}/test_crds.py::test_a_valid_cluster_mapping_is_accepted",
    f"{E2E}/test_controllers.py::test_every_pv_gets_a_ready_mapping_and_a_journal_on_site_b",
    f"{E2E}/test_controllers.py::test_deleting_the_pv_deletes_its_mapping",
    f"{E2E}/test_existing_cluster.py::"
    "test_an_existing_clusters_kubeconfig_with_a_token_and_relative_paths_is_used",
)
EXPECTED_TESTS = 7  # test_a_valid_cluster_mapping_is_accepted has 3 parameters
# What it must deselect: they read and restart a KubeSandbox's own daemons, or start one.
DESELECTS = (
    f"{E2E}/test_kube_sandbox.py::test_warm_start_time_is_within_bounds",
    f"{E2E}/test_runtime.py::test_informer_relists_after_apiserver_restart_and_loses_no_change",
    f"{E2E}/test_existing_cluster.py::"
    "test_the_suite_targets_an_existing_cluster_and_starts_no_api_server",
)
CONTROL_PLANE = {"etcd", "kube-apiserver", "kube-controller-manager"}
INNER_TIMEOUT = 400.0


def descendants(root: int) -> dict[int, str]:
    """The live descendants of `root`: PID -> the name of the program each runs (argv[0])."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    argv0 = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                found[pid] = Path(argv0.decode(errors="replace")).name
                frontier.append(pid)
    return found


def run_inner_suite(
    argv: list[str], cwd: Path, env: dict[str, str], log: Path
) -> tuple[int, set[str]]:
    """Run `argv` to its end (output in `log`); returns its exit status and every control-plane
    program seen among its descendants while it ran."""
    seen: set[str] = set()
    with log.open("w") as out:
        inner = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + INNER_TIMEOUT
        try:
            while inner.poll() is None:
                seen |= set(descendants(inner.pid).values()) & CONTROL_PLANE
                if time.monotonic() > deadline:
                    pytest.fail(f"the inner pytest ran over {INNER_TIMEOUT:.0f} s; see {log}")
                time.sleep(0.3)
        finally:
            if inner.poll() is None:
                # SIGINT: pytest's KeyboardInterrupt still tears its session fixtures down, so
                # the Ceph pair it started is stopped by PID; SIGKILL only if that hangs.
                inner.send_signal(signal.SIGINT)
                try:
                    inner.wait(60)
                except subprocess.TimeoutExpired:
                    inner.kill()
                    inner.wait()
    return inner.returncode, seen


@pytest.mark.owns_apiserver  # it starts the cluster it stands for
def test_the_suite_targets_an_existing_cluster_and_starts_no_api_server(
    checkout: Checkout, tmp_path: Path
) -> None:
    no_binaries = tmp_path / "no-kube-binaries"
    no_binaries.mkdir()
    junit = tmp_path / "inner.xml"
    log = tmp_path / "inner.log"
    with KubeSandbox(tmp_path / "existing", KubeBinaries.locate(checkout)) as cluster:
        apiserver = cluster.pids()["kube-apiserver"]
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {KUBECONFIG_ENV, "PYTEST_ADDOPTS"}
        }
        env[BIN_DIR_ENV] = str(no_binaries)  # any KubeSandbox it tried to start would fail
        argv = [
            *(sys.executable, "-m", "pytest", *RUNS, *DESELECTS),
            *("--kubeconfig", str(cluster.kubeconfig)),
            *("-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}"),
            *(f"--junitxml={junit}", "-q"),
        ]
        status, control_plane_seen = run_inner_suite(argv, checkout.root, env, log)
        output = log.read_text()
        assert status == 0, output[-6000:]
        assert not control_plane_seen, f"the inner run started {control_plane_seen}"
        # Its API server was this cluster's, left running as it was.
        assert cluster.pids()["kube-apiserver"] == apiserver and pid_alive(apiserver)
        for crd in CRDS:
            found = cluster.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
            )
            assert found["metadata"]["name"] == crd
        events = cluster.request("GET", "/api/v1/namespaces/default/events")["items"]
        remapped = {
            event["involvedObject"]["name"]
            for event in events
            if event.get("reportingComponent") == COMPONENT
            and event["involvedObject"]["kind"] == "PersistentVolume"
            and event["involvedObject"]["name"].startswith("ctl-")
        }
        assert remapped, "no Event of the inner run's controller about its PVs in this cluster"

    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None, junit.read_text()
    counts = {key: int(suite.get(key, "-1")) for key in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": EXPECTED_TESTS, "failures": 0, "errors": 0, "skipped": 0}, output
    assert f"deselected {len(DESELECTS)} owns_apiserver test(s)" in output, output
    for nodeid in DESELECTS:
        assert f"deselected: {nodeid}" in output, output
    ran = {case.get("name", "") for case in suite.iter("testcase")}
    assert not any(nodeid.rsplit("::", 1)[1] in ran for nodeid in DESELECTS), ran


@pytest.fixture
def admin_token(kube: KubeCluster) -> Iterator[tuple[str, str]]:
    """(namespace, token) of a ServiceAccount `admin` bound to cluster-admin; unbound after."""
    namespace, name = f"existing-{uuid.uuid4().hex[:8]}", "admin"
    minted = yaml.safe_load(kube.service_account_kubeconfig(namespace, name).read_text())
    binding = f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{namespace}-admin"
    kube.request(
        "POST",
        binding.rsplit("/", 1)[0],
        {
            "metadata": {"name": f"{namespace}-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    try:
        yield namespace, minted["users"][0]["user"]["token"]
    finally:
        kube.request("DELETE", binding)
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}")


def kubeconfig_file(
    path: Path, server: str, current: str, users: dict[str, dict[str, Any]]
) -> Path:
    """A kubeconfig as people have them: several clusters and contexts, one of them current."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "gone", "cluster": {"server": "https://192.0.2.1:6443"}},
            {"name": "here", "cluster": {"server": server, "certificate-authority": "ca.crt"}},
        ],
        "users": [{"name": name, "user": user} for name, user in users.items()],
        "contexts": [
            {"name": name, "context": {"cluster": "here", "user": name}} for name in users
        ],
        "current-context": current,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_existing_clusters_kubeconfig_with_a_token_and_relative_paths_is_used(
    kube: KubeCluster, admin_token: tuple[str, str], tmp_path: Path
) -> None:
    """kind's kubeconfig embeds a client certificate (what the test above uses); others hold a
    token, files relative to the kubeconfig, and contexts that are not current."""
    namespace, token = admin_token
    user = f"system:serviceaccount:{namespace}:admin"
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "ca.crt").write_bytes(kube.ca_file.read_bytes())
    (folder / "token").write_text(token + "\n")
    path = kubeconfig_file(
        folder / "config",
        kube.server,
        "token-file",
        {
            "plugin": {"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}},
            "token-file": {"tokenFile": "token"},
        },
    )
    cluster = KubeCluster.from_kubeconfig(path, tmp_path / "work")
    assert (cluster.server, cluster.host, cluster.port) == (kube.server, kube.host, kube.port)

    def admitted() -> bool:
        try:
            cluster.request("GET", "/api/v1/namespaces?limit=1")
        except ApiRequestFailed as err:
            if err.status == 403:  # the authorizer has not seen the binding yet
                return False
            raise
        return True

    wait_for(admitted, 30, "the cluster-admin binding to take effect")
    review = cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert review["status"]["userInfo"]["username"] == user
    # The admin kubeconfig it wrote stands alone, for kubectl and the clients.
    whoami = kubectl(cluster, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == user
    minted = cluster.service_account_kubeconfig(namespace, "minted")
    assert minted.is_relative_to(tmp_path / "work")

    config = yaml.safe_load(path.read_text())
    config["current-context"] = "plugin"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(KubeconfigUnusable, match="exec: not supported"):
        KubeCluster.from_kubeconfig(path, tmp_path / "again")
