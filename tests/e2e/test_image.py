"""The controller image, built here by `make image`'s script, run the way a Pod of the chart's
Deployment runs it, against the sandbox's real API server and Ceph pair.

What the kubelet would do is done by hand, from the rendered chart: the container's args (with
$(POD_NAMESPACE) expanded), its env plus KUBERNETES_SERVICE_HOST/PORT, a service-account token
and CA mounted at the in-cluster path (no kubeconfig anywhere), and the securityContext as docker
flags (read-only root filesystem, every capability dropped, no privilege escalation, the
non-root UID/GID), with the chart's memory limit. The RBAC it runs with is the chart's, applied
for real, so every permission it uses is checked by the API server. Host networking lets it
reach the loopback API server and Ceph daemons, as hostNetwork would.

One failover: a volume provisioned ceph-csi's way on site-a, mirrored and promoted on site-b,
its static PV re-applied with the old handle; the container must elect itself, make the PV's
mapping Ready, serve /healthz, /readyz, /metrics, and on `docker stop` (SIGTERM, as the kubelet
sends) exit 0 having released its Lease.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from reconciler.sandbox import site
from reconciler.sandbox.ceph import CSI_USER
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.containers import (
    SERVICE_ACCOUNT_DIR,
    Container,
    DockerDaemon,
    Image,
    build_image,
    service_account_dir,
)
from reconciler.sandbox.pair import SitePair
from reconciler.sandbox.process import free_port
from reconciler.sandbox.site import kubectl
from tests.e2e.helm import find, render, tools_bin
from tests.e2e.support import report
from tests.support import csi_replay
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


# Names of this module's own: no other module's controller, mappings or RBAC can meet them.
NAMESPACE = "image-ceph-csi"
RELEASE = "image"
SITE_A_ID = "image-site-a"
SITE_B_ID = "image-site-b"
DRIVER = "image.rbd.csi.ceph.com"
SECRET = "csi-rbd-provisioner"
PV_NAME = "image-pv"
POD_NAME = "image-rbd-mirror-reconciler-7d9c5b8f4-x2kq9"
GROUP_PATH = "/apis/rbdmirror.csi.ceph.io/v1alpha1"
CONVERGE = 120.0
#: The Pod and container securityContext fields docker_options() translates into docker flags.
CONFINEMENT_KEYS = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "seccompProfile",
}


def http_get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, OSError) as err:
        return 0, str(err)


def docker_options(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The Pod spec's confinement as docker flags; a setting this does not know fails the test
    rather than being dropped silently."""
    pod_context = pod.get("securityContext", {})
    context = container.get("securityContext", {})
    assert set(pod_context) | set(context) <= CONFINEMENT_KEYS, "translate the new setting"
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}  # docker's default
    memory = container["resources"]["limits"]["memory"]
    assert memory.endswith("Mi")
    return [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        f"{pod_context['runAsUser']}:{pod_context['runAsGroup']}",
        "--memory",
        f"{memory.removesuffix('Mi')}m",
    ]


@dataclass
class Pod:
    """The container, and what it was started from."""

    container: Container
    health_address: str
    lease_name: str
    volume: csi_replay.Provisioned
    pair: SitePair
    kube: KubeCluster


@pytest.fixture(scope="module")
def docker(checkout: Checkout) -> Iterator[DockerDaemon]:
    daemon = DockerDaemon.ensure(checkout)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest, checkout: Checkout, docker: DockerDaemon) -> Image:
    built = build_image(checkout, docker)
    report(
        request.config,
        f"\nimage {built.tag}: {built.size_bytes / 1e6:.0f} MB in {built.layers} layers, "
        f"built in {built.build_seconds:.0f} s",
    )
    return built


@pytest.fixture(scope="module")
def pod(  # noqa: PLR0917 (pytest passes fixtures by name)
    ceph_pair: SitePair,
    kube: KubeCluster,
    crds: None,
    checkout: Checkout,
    docker: DockerDaemon,
    image: Image,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pod]:
    work = tmp_path_factory.mktemp("image")
    health_address = f"127.0.0.1:{free_port()}"
    objects = render(
        tools_bin(checkout),
        checkout,
        {
            "localClusterID": SITE_B_ID,
            "driverName": DRIVER,
            "image": {"repository": image.tag.split(":")[0], "tag": image.tag.split(":")[1]},
            # hostNetwork: a port of its own on the host; a short Ceph timeout for the test.
            "extraArgs": [f"--health-address={health_address}", "--ceph-timeout=5"],
        },
        release=RELEASE,
        namespace=NAMESPACE,
    )
    deployment = find(objects, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container_spec,) = spec["containers"]
    assert container_spec["image"] == image.tag

    # Ceph: a ceph-csi volume on site-a, failed over to site-b.
    volume = csi_replay.provision(ceph_pair.site_a, SITE_A_ID, ceph_pair.pool, PV_NAME)
    ceph_pair.fail_over([volume.image_name])

    # Kubernetes: the chart's ServiceAccount and RBAC, ceph-csi's Secret and config.
    existing = kubectl(kube, "get", "namespace", "-o", "name").stdout
    if f"namespace/{NAMESPACE}\n" not in existing:
        kubectl(kube, "create", "namespace", NAMESPACE)
    rbac = [
        o
        for o in objects
        if o["kind"]
        in {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    ]
    kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    key = (ceph_pair.site_b.dir / f"{CSI_USER}.key").read_text().strip()
    site.apply(
        kube.kubeconfig,
        site.ceph_csi_secret(SECRET, NAMESPACE, CSI_USER, key),
        site.ceph_csi_config(NAMESPACE, {SITE_B_ID: ceph_pair.site_b.monitors}),
        site.cluster_id_mapping(
            f"{RELEASE}-site-a-to-b", SITE_A_ID, SITE_B_ID, [{"name": ceph_pair.pool}]
        ),
    )

    # What the kubelet mounts: a bound token of the ServiceAccount, the cluster's CA.
    kubeconfig = kube.service_account_kubeconfig(
        NAMESPACE, spec["serviceAccountName"], create=False, path=work / "sa.kubeconfig"
    )
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    kubeconfig.unlink()  # the container gets no kubeconfig, only the mounted token
    mounted = service_account_dir(
        work / "serviceaccount", token=token, ca_file=kube.ca_file, namespace=NAMESPACE
    )
    args = [a.replace("$(POD_NAMESPACE)", NAMESPACE) for a in container_spec["args"]]
    env = {"POD_NAME": POD_NAME, "POD_NAMESPACE": NAMESPACE}
    assert {e["name"] for e in container_spec["env"]} == set(env)
    env |= {"KUBERNETES_SERVICE_HOST": kube.host, "KUBERNETES_SERVICE_PORT": str(kube.port)}
    options = [
        "--network",
        "host",
        "--volume",
        f"{mounted}:{SERVICE_ACCOUNT_DIR}:ro",
        *docker_options(spec, container_spec),
        *(f"--env={name}={value}" for name, value in env.items()),
    ]
    container = Container.run(
        docker, image.tag, args, name=f"{RELEASE}-{free_port()}", options=options
    )
    lease_name = next(a for a in args if a.startswith("--leader-election-name="))
    try:
        yield Pod(
            container,
            health_address,
            lease_name.split("=", 1)[1],
            volume,
            ceph_pair,
            kube,
        )
    finally:
        print(container.logs()[-6000:])
        container.remove()
        kubectl(kube, "delete", "pv", PV_NAME, "--ignore-not-found", "--wait=false")
        kubectl(kube, "delete", "clusteridmapping", f"{RELEASE}-site-a-to-b", "--ignore-not-found")
        kubectl(kube, "delete", "-f", "-", "--ignore-not-found", stdin=yaml.safe_dump_all(rbac))


def lease(pod: Pod) -> dict[str, Any] | None:
    return pod.kube.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{pod.lease_name}",
    )


def holder(pod: Pod) -> str | None:
    spec = (lease(pod) or {}).get("spec") or {}
    found: str | None = spec.get("holderIdentity")
    return found


# --- the image itself -----------------------------------------------------------------------


def test_image_runs_the_cli_as_a_numeric_non_root_user(image: Image) -> None:
    assert image.config["Entrypoint"] == ["/opt/venv/bin/rbd-mirror-reconciler"]
    assert image.config["User"] == "65532:65532"
    assert image.layers <= 4  # base, Debian's Ceph bindings, the venv
    assert image.size_bytes < 300e6


def test_image_ships_no_build_tools_caches_or_build_time_certificates(
    docker: DockerDaemon, image: Image
) -> None:
    def sh(script: str) -> str:
        return docker.docker(
            "run", "--rm", "--network", "none", "--entrypoint", "sh", image.tag, "-c", script
        )

    # No compiler, pip, git or venv activation scripts; apt's lists and caches emptied.
    found = sh(
        "for p in gcc cc make pip pip3 git; do command -v $p; done;"
        "ls /opt/venv/bin | grep -iE '^(pip|activate|easy_install|wheel)';"
        "ls -A /var/lib/apt/lists /var/cache/apt /root | grep -v ':$'; true"
    )
    assert found.split() == []
    # The host's extra CA certificates (a TLS-intercepting proxy's) were a build secret only.
    for cert in sorted(Path("/usr/local/share/ca-certificates").glob("*.crt")):
        body = [line for line in cert.read_text().splitlines() if line and "-----" not in line]
        needle = max(body, key=len)  # one full line of the certificate's base64
        found = sh(
            f"grep -rlF '{needle}' / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev || true"
        )
        assert found.strip() == "", f"{cert.name} is in the image: {found}"
    # Debian's bindings, the venv's libraries and the CLI all load with a read-only root.
    versions = docker.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--entrypoint",
        "python",
        image.tag,
        "-c",
        "import rados, rbd, reconciler.cli.run; print(rados.__file__, rbd.__file__)",
    )
    assert "/opt/venv/lib/python3.11/site-packages/rados." in versions
    assert docker.docker("run", "--rm", "--network", "none", image.tag, "--version").startswith(
        "rbd-mirror-reconciler "
    )


# --- as a Pod ---------------------------------------------------------------------------------


def test_it_elects_itself_and_serves_health_and_metrics(pod: Pod) -> None:
    identity = wait_for(lambda: holder(pod), 60, "the container to take the Lease")
    assert identity.startswith(f"{POD_NAME}_")
    assert http_get(pod.health_address, "/healthz")[0] == 200
    wait_for(lambda: http_get(pod.health_address, "/readyz")[0] == 200, 60, "/readyz to answer 200")
    status, text = http_get(pod.health_address, "/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("leader_election_master_status", (("name", pod.lease_name),))] == 1
    assert any(name == "controller_runtime_reconcile_total" for name, _ in samples)


def test_it_reconciles_the_failover(pod: Pod) -> None:
    pod.kube.request("POST", "/api/v1/persistentvolumes", pv(pod))

    def ready_mapping() -> dict[str, Any] | None:
        mapping = pod.kube.get(f"{GROUP_PATH}/volumehandlemappings/{PV_NAME}")
        conditions = ((mapping or {}).get("status") or {}).get("conditions") or []
        ok = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return mapping if ok else None

    try:
        mapping = wait_for(ready_mapping, CONVERGE, f"{PV_NAME}'s mapping to be Ready")
    except Exception:
        print(pod.container.logs()[-6000:])
        raise
    volume, pair = pod.volume, pod.pair
    pool_b = pair.site_b.pool_id(pair.pool)
    assert mapping["status"]["newVolumeHandle"] == csi_replay.ceph_csi_handle(
        SITE_B_ID, pool_b, volume.object_uuid
    )
    directory = csi_replay.omap(pair.site_b, pair.pool, "csi.volumes.default") or {}
    assert directory[f"csi.volume.{PV_NAME}"] == volume.object_uuid.encode()
    # The controller wrote what ceph-csi needs (--manage-csi-config, the chart's default).
    config = pod.kube.get(f"/api/v1/namespaces/{NAMESPACE}/configmaps/ceph-csi-config")
    assert config is not None
    entries = json.loads(config["data"]["config.json"])
    assert SITE_A_ID in {entry["clusterID"] for entry in entries}


def pv(pod: Pod) -> dict[str, Any]:
    manifest = pod.volume.pv(driver=DRIVER)
    manifest["spec"]["csi"]["controllerExpandSecretRef"] = {"name": SECRET, "namespace": NAMESPACE}
    return manifest


def test_it_ran_confined_as_the_pod_spec_says(pod: Pod) -> None:
    """Checked on the running process itself, not only on what docker was asked for."""
    inspected = pod.container.inspect()
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert not any(e.startswith("KUBECONFIG=") for e in inspected["Config"]["Env"])
    assert not any(a.startswith("--kubeconfig") for a in inspected["Args"])
    status = Path(f"/proc/{inspected['State']['Pid']}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["65532", "65532"]
    assert fields["Gid"].split()[:2] == ["65532", "65532"]
    for capabilities in ("CapEff", "CapPrm", "CapBnd"):
        assert int(fields[capabilities], 16) == 0, capabilities
    assert fields["NoNewPrivs"].strip() == "1"
    # The token the in-cluster config reads, at the path it reads it from inside the container.
    token = pod.container.daemon.docker(
        "exec", pod.container.id, "cat", f"{SERVICE_ACCOUNT_DIR}/token"
    )
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == f"system:serviceaccount:{NAMESPACE}:{RELEASE}-rbd-mirror-reconciler"


def test_sigterm_stops_it_cleanly_and_releases_the_lease(pod: Pod) -> None:
    assert holder(pod)
    code = pod.container.stop(grace_seconds=30)
    logs = pod.container.logs()
    assert code == 0, logs[-4000:]
    assert not holder(pod), lease(pod)
    assert "released the lease" in logs
