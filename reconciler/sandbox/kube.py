"""A real Kubernetes control plane for tests and the demo: etcd, kube-apiserver, controllers.

The binaries are built from Go modules by `hack/build-kube.sh` (`make kube-bins`) and cached
outside the repository; this module only finds them (`KubeBinaries.locate(checkout)` asks the
script of the caller's checkout where its cache is) and runs them. Everything the daemons write
(certificates, etcd data, logs, kubeconfigs) lives under one work directory.

    KubeSandbox(workdir, KubeBinaries.locate(checkout)).start()
      -> etcd            http://127.0.0.1:<etcd_port>   data in <workdir>/etcd
      -> kube-apiserver  https://127.0.0.1:<port>       --authorization-mode=RBAC
      -> kube-controller-manager                        GC, PV binder, PV/PVC protection

A KubeSandbox is a `KubeCluster` (reconciler.sandbox.cluster): `kubeconfig` is an admin
(system:masters) kubeconfig for kubectl and both Python clients; `service_account_kubeconfig()`
mints one for a ServiceAccount through the TokenRequest API so a test runs with exactly the RBAC
it was granted. What only a sandbox can do: `restart_apiserver()` restarts on the same data, and
`pids()` names its daemons.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.errors import ApiRequestFailed, CommandFailed, KubeBinariesMissing
from reconciler.sandbox.pki import (
    CertificateAuthority,
    write_kubeconfig,
    write_service_account_keys,
)
from reconciler.sandbox.process import Daemon, DaemonGroup, free_port

BUILD_SCRIPT = "build-kube.sh"
BIN_DIR_ENV = "RBD_MIRROR_RECONCILER_KUBE_BIN_DIR"

# Controllers the tests rely on: ownerReferences cascade (a mapping owned by a PV goes with
# it), PV/PVC binding, and the protection controllers that lift the pv/pvc-protection
# finalizers, without which a deleted PV never goes away. Everything else stays off.
CONTROLLERS = (
    "garbage-collector-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Allocated by the API server for the `kubernetes` Service only; no traffic goes there.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"

ETCD_READY_TIMEOUT = 30.0
APISERVER_READY_TIMEOUT = 90.0
CONTROLLER_MANAGER_READY_TIMEOUT = 60.0
# kube-apiserver closes its listener at once on SIGTERM but then lingers on long-running
# requests (watches) well past 10 s; nothing it holds is durable (etcd is), so cut it short.
STOP_GRACE_SECONDS = {"kube-apiserver": 3.0}
DEFAULT_STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class KubeBinaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path

    @classmethod
    def locate(cls, checkout: Checkout) -> KubeBinaries:
        """$RBD_MIRROR_RECONCILER_KUBE_BIN_DIR, else the cached build of the version `checkout`'s
        hack/build-kube.sh pins."""
        script = checkout.script(BUILD_SCRIPT)
        override = os.environ.get(BIN_DIR_ENV)
        if override:
            bin_dir = Path(override)
        else:
            try:
                done = subprocess.run(
                    ["bash", str(script), "--print-dir"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                )
            except (OSError, subprocess.SubprocessError) as err:
                raise CommandFailed([str(script), "--print-dir"], str(err)) from err
            bin_dir = Path(done.stdout.strip())
        binaries = cls(
            etcd=bin_dir / "etcd",
            kube_apiserver=bin_dir / "kube-apiserver",
            kube_controller_manager=bin_dir / "kube-controller-manager",
        )
        missing = [
            path.name
            for path in (binaries.etcd, binaries.kube_apiserver, binaries.kube_controller_manager)
            if not os.access(path, os.X_OK)
        ]
        if missing:
            raise KubeBinariesMissing(bin_dir, missing, script)
        return binaries


class KubeSandbox(KubeCluster):
    """etcd + kube-apiserver + kube-controller-manager on loopback ports under `workdir`.

    Use as a context manager or call `start()`/`stop()`. A failed start stops whatever it
    had started before raising, so nothing is left running.
    """

    def __init__(self, workdir: Path, binaries: KubeBinaries) -> None:
        super().__init__(
            workdir,
            server=f"https://127.0.0.1:{free_port()}",
            ca_file=workdir / "pki" / "ca.crt",
            kubeconfig=workdir / "admin.kubeconfig",
        )
        self.binaries = binaries
        self.pki_dir = workdir / "pki"
        self.etcd_data_dir = workdir / "etcd"
        self.log_dir = workdir / "logs"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.controller_manager_port = free_port()
        self.etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        self.start_seconds = 0.0
        self._etcd: Daemon | None = None
        self._apiserver: Daemon | None = None
        self._controller_manager: Daemon | None = None
        self._group = DaemonGroup()

    # lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> KubeSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> KubeSandbox:
        started = time.monotonic()
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every daemon by the PID we started; the work directory is left for post-mortems."""
        # Newest first, so dependents go before what they depend on.
        for daemon in reversed(self._group.daemons):
            _stop(daemon)
        self._group.daemons.clear()
        self._etcd = self._apiserver = self._controller_manager = None

    def restart_apiserver(self, *, with_etcd: bool = True) -> float:
        """Stop and start kube-apiserver (and etcd) on the same ports and etcd data directory.

        Clients keep their kubeconfig and resourceVersions stay valid, as after a control-plane
        upgrade. Returns the seconds until /readyz answered again.
        """
        started = time.monotonic()
        for daemon in (self._apiserver, self._etcd if with_etcd else None):
            if daemon is not None:
                _stop(daemon)
                self._group.daemons.remove(daemon)
        try:
            if with_etcd:
                self._start_etcd()
            self._start_apiserver()
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - started

    def pids(self) -> dict[str, int]:
        return {daemon.name: daemon.pid for daemon in self._group.daemons}

    def daemon_records(self) -> list[dict[str, object]]:
        """What a later `sandbox down` needs to stop these daemons by PID."""
        return [daemon.to_record() for daemon in self._group.daemons]

    # daemons --------------------------------------------------------------------------------

    def _write_pki(self) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(self.pki_dir)
        self._serving = ca.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server_ips=("127.0.0.1", "10.0.0.1"),
        )
        self._admin = ca.issue("admin", "sandbox-admin", organizations=("system:masters",))
        # The controllers act on every kind of object (the garbage collector deletes anything
        # with an ownerReference), so give the controller manager cluster-admin too rather than
        # per-controller service accounts: its own RBAC is not what these tests examine.
        controller_manager = ca.issue(
            "controller-manager",
            "system:kube-controller-manager",
            organizations=("system:masters",),
        )
        self._sa_signing_key, self._sa_public_key = write_service_account_keys(self.pki_dir)
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_file=self.ca_file,
            user="admin",
            client=self._admin,
        )
        self._controller_manager_kubeconfig = write_kubeconfig(
            self.workdir / "controller-manager.kubeconfig",
            server=self.server,
            ca_file=self.ca_file,
            user="system:kube-controller-manager",
            client=controller_manager,
        )

    def _start_etcd(self) -> None:
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        daemon = Daemon(
            name="etcd",
            argv=[
                str(self.binaries.etcd),
                "--name=sandbox",
                f"--data-dir={self.etcd_data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=sandbox={peer_url}",
                # Test data is disposable; skipping fsync saves seconds per start on slow disks.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            log_file=self.log_dir / "etcd.log",
            cwd=self.workdir,
        )
        self._etcd = self._group.start(daemon)
        daemon.wait_ready(lambda: self._http_ok(f"{self.etcd_url}/health"), ETCD_READY_TIMEOUT)

    def _start_apiserver(self) -> None:
        daemon = Daemon(
            name="kube-apiserver",
            argv=[
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.pki_dir}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self.ca_file}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={self._sa_public_key}",
                f"--service-account-signing-key-file={self._sa_signing_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--allow-privileged=true",
                "--v=1",
            ],
            log_file=self.log_dir / "kube-apiserver.log",
            cwd=self.workdir,
        )
        self._apiserver = self._group.start(daemon)
        # /readyz includes the RBAC bootstrap-roles hook, so once it answers, default
        # ClusterRoles exist and authorization decisions are final.
        daemon.wait_ready(self._apiserver_ready, APISERVER_READY_TIMEOUT)

    def _start_controller_manager(self) -> None:
        daemon = Daemon(
            name="kube-controller-manager",
            argv=[
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={self._controller_manager_kubeconfig}",
                f"--authentication-kubeconfig={self._controller_manager_kubeconfig}",
                f"--authorization-kubeconfig={self._controller_manager_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.pki_dir / 'controller-manager-serving'}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                # The binder retries unbound claims on this period (default 15 s); tests
                # should not wait that long for a claim created just before its PV was seen.
                "--pvclaimbinder-sync-period=2s",
                "--v=1",
            ],
            log_file=self.log_dir / "kube-controller-manager.log",
            cwd=self.workdir,
        )
        self._controller_manager = self._group.start(daemon)
        url = f"https://127.0.0.1:{self.controller_manager_port}/healthz"
        daemon.wait_ready(
            lambda: self._http_ok(url, insecure=True), CONTROLLER_MANAGER_READY_TIMEOUT
        )

    def _apiserver_ready(self) -> bool:
        try:
            return bool(self.request("GET", "/readyz") == "ok")
        except ApiRequestFailed:
            return False

    @staticmethod
    def _http_ok(url: str, *, insecure: bool = False) -> bool:
        context = None
        if insecure:
            # The controller manager serves a self-signed cert of its own; only liveness matters.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False


def _stop(daemon: Daemon) -> None:
    daemon.stop(STOP_GRACE_SECONDS.get(daemon.name, DEFAULT_STOP_GRACE_SECONDS))
