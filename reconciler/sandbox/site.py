"""The surviving site's Kubernetes side of a failover, as an admin sets it up: the project's CRDs
and RBAC, ceph-csi's Secret and config, a ClusterIDMapping, the re-applied static PVs, and the
controller running as its own ServiceAccount. Shared by the demo and the end-to-end tests.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from reconciler.csiconfig import DEFAULT_CONFIGMAP
from reconciler.sandbox.ceph import CSI_USER, CephCluster
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.errors import CommandFailed
from reconciler.sandbox.process import free_port

GROUP = "rbdmirror.csi.ceph.io"
CRDS = (f"clusteridmappings.{GROUP}", f"volumehandlemappings.{GROUP}")
SERVICE_ACCOUNT = "rbd-mirror-reconciler"
KUBECTL_TIMEOUT = 90.0


class HasKubeconfig(Protocol):
    """A KubeSandbox (its admin), a ControllerProcess (its ServiceAccount), ..."""

    @property
    def kubeconfig(self) -> Path: ...


def kubectl(
    who: Path | HasKubeconfig,
    *args: str,
    stdin: str | None = None,
    check: bool = True,
    timeout: float = KUBECTL_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """kubectl as `who` (a kubeconfig, or what has one), as an admin would type it. With `check`,
    a non-zero exit raises CommandFailed with kubectl's stderr; without, the caller looks."""
    kubeconfig = who if isinstance(who, Path) else who.kubeconfig
    argv = ["kubectl", "--kubeconfig", str(kubeconfig), *args]
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise CommandFailed(argv, f"timed out after {timeout:.0f} s") from err
    if check and done.returncode != 0:
        raise CommandFailed(argv, f"exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done


def apply(
    who: Path | HasKubeconfig, *manifests: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` of `manifests`; `check` as for `kubectl`."""
    return kubectl(who, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests), check=check)


def install_crds(kubeconfig: Path, checkout: Checkout) -> None:
    """`checkout`'s crds/ applied with kustomize, waited for until Established."""
    kubectl(kubeconfig, "apply", "-k", str(checkout.crds))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{crd}" for crd in CRDS),
    )


def install_rbac(
    kubeconfig: Path, checkout: Checkout, namespace: str, work: Path, component: str = "rbac"
) -> Path:
    """`checkout`'s config/<component> (rbac: the controller's; rbac-csi: the CSI-side
    resolver's) applied into `namespace` as a deployment would: a copy of the shipped
    kustomization with its `namespace:` set. Returns the copy, for `kubectl delete -k`."""
    copy = work / f"{component}-{namespace}"
    shutil.copytree(checkout.config(component), copy, dirs_exist_ok=True)
    kustomization = copy / "kustomization.yaml"
    config = yaml.safe_load(kustomization.read_text())
    config["namespace"] = namespace
    kustomization.write_text(yaml.safe_dump(config, sort_keys=False))
    created = kubectl(kubeconfig, "create", "namespace", namespace, check=False)
    if created.returncode != 0 and "AlreadyExists" not in created.stderr:
        raise CommandFailed(["kubectl", "create", "namespace", namespace], created.stderr)
    kubectl(kubeconfig, "apply", "-k", str(copy))
    return copy


def install_controller_inputs(
    kubeconfig: Path,
    checkout: Checkout,
    site_b: CephCluster,
    work: Path,
    *,
    namespace: str,
    secret: str,
    cluster_id: str,
) -> tuple[Path, str]:
    """What the controller needs in `namespace` on site-b: config/rbac applied (see
    `install_rbac`), ceph-csi's Secret `secret` with site-b's CSI user and key, and ceph-csi's
    config naming site-b as `cluster_id`. Returns the RBAC copy (for `kubectl delete -k`) and the
    key (which must show nowhere)."""
    overlay = install_rbac(kubeconfig, checkout, namespace, work)
    key = (site_b.dir / f"{CSI_USER}.key").read_text().strip()
    apply(
        kubeconfig,
        ceph_csi_secret(secret, namespace, CSI_USER, key),
        ceph_csi_config(namespace, {cluster_id: site_b.monitors}),
    )
    return overlay, key


def static_pv(
    name: str,
    handle: str,
    *,
    cluster_id: str,
    pool: str,
    image_name: str,
    claim: tuple[str, str],
    driver: str = "rbd.csi.ceph.com",
    attributes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The static PV an admin re-creates on the surviving site for a volume ceph-csi provisioned
    (the design doc's sample); `claim` is (name, namespace), `attributes` override or add
    volumeAttributes."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "16Mi"},
            "persistentVolumeReclaimPolicy": "Retain",
            "claimRef": {"name": claim[0], "namespace": claim[1]},
            "csi": {
                "driver": driver,
                "fsType": "ext4",
                "volumeHandle": handle,
                "volumeAttributes": {
                    "clusterID": cluster_id,
                    "imageFeatures": "layering",
                    "imageFormat": "2",
                    "imageName": image_name,
                    "journalPool": pool,
                    "pool": pool,
                    "radosNamespace": "",
                    **(attributes or {}),
                },
                "controllerExpandSecretRef": {
                    "name": "rook-csi-rbd-provisioner",
                    "namespace": "rook-ceph",
                },
            },
        },
    }


def ceph_csi_secret(name: str, namespace: str, user: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "userID": base64.b64encode(user.encode()).decode(),
            "userKey": base64.b64encode(key.encode()).decode(),
        },
    }


def ceph_csi_config(
    namespace: str, clusters: dict[str, str], name: str = DEFAULT_CONFIGMAP
) -> dict[str, Any]:
    """ceph-csi's ConfigMap for `clusters` (clusterID -> comma-separated monitors)."""
    entries = [{"clusterID": cid, "monitors": mons.split(",")} for cid, mons in clusters.items()]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"config.json": json.dumps(entries)},
    }


def cluster_id_mapping(
    name: str, site_a: str, site_b: str, pools: list[dict[str, Any]]
) -> dict[str, Any]:
    """`pools`: entries of spec.rbdPools, e.g. {"name": "replicapool", "siteAPoolID": 1}."""
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "ClusterIDMapping",
        "metadata": {"name": name},
        "spec": {
            "siteA": {"clusterID": site_a},
            "siteB": {"clusterID": site_b},
            "rbdPools": pools,
        },
    }


@dataclass
class ControllerProcess:
    """`rbd-mirror-reconciler run` as its own process, stopped by its own PID only."""

    kubeconfig: Path
    log_dir: Path
    local_cluster_id: str
    namespace: str
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    extra_args: list[str] = field(default_factory=list)
    #: /healthz, /readyz and /metrics: one address for every start, so a scraper keeps its target.
    health_address: str = field(default_factory=lambda: f"127.0.0.1:{free_port()}")
    #: Variables added to the environment each start of the process gets (tests' instrumentation).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"controller-{self.starts}.log"

    def start(self, *extra: str) -> None:
        self.starts += 1
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "reconciler",
                    "run",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--local-cluster-id",
                    self.local_cluster_id,
                    "--csi-config-namespace",
                    self.namespace,
                    "--health-address",
                    self.health_address,
                    *self.extra_args,
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def metrics(self) -> str:
        """The process' /metrics, as Prometheus would scrape it."""
        url = f"http://{self.health_address}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text: str = answer.read().decode()
        return text

    def current_log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def log(self) -> str:
        """The tail of every run's log, oldest first."""
        return "\n".join(
            path.read_text(errors="replace")[-4000:]
            for path in sorted(self.log_dir.glob("controller-*.log"))
        )


def elected_controller(
    kubeconfig: Path,
    log_dir: Path,
    local_cluster_id: str,
    namespace: str,
    *extra_args: str,
    ceph_timeout: float | None = 5.0,
) -> ControllerProcess:
    """A controller as the e2e modules run it: one of several replicas (it holds the Lease in
    `namespace` while working), writing ceph-csi's config files, with short Ceph timeouts
    (`ceph_timeout` seconds; None: the flag's default); more flags in `extra_args` (e.g. the
    lease's timings)."""
    timeout = [] if ceph_timeout is None else ["--ceph-timeout", f"{ceph_timeout:g}"]
    return ControllerProcess(
        kubeconfig,
        log_dir,
        local_cluster_id,
        namespace,
        extra_args=[
            "--manage-csi-config",
            *timeout,
            "--leader-elect",
            "--leader-election-namespace",
            namespace,
            *extra_args,
        ],
    )
