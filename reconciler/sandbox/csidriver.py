"""The real, unmodified ceph-csi (built by hack/build-cephcsi.sh) in the sandbox, and a CSI client.

ceph-csi reads `/etc/ceph-csi-config/{config.json,cluster-mapping.json}` on every request, writes
`/etc/ceph/ceph.conf` at start and temporary key files under `/tmp/csi/keys`: all hard-coded. So
each process runs in a private mount namespace: an overlay on /etc (its writes stay in our work
dir, the host's /etc is untouched), our config dir bound on /etc/ceph-csi-config and a private
keys dir bound on /tmp/csi/keys (the only trace on the host is that empty directory). The shell
in between `exec`s, so the PID we hold is cephcsi's own and stopping it ends the namespace too.

Secrets travel only inside gRPC requests: never in argv, never in config files, never in our
errors (ceph-csi strips them from its own request logs).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc

from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.errors import SandboxError
from reconciler.sandbox.process import Daemon, pid_runs, run

CSI_SPEC_VERSION = "v1.10.0"  # the CSI spec ceph-csi v3.12.2 vendors
DRIVER_NAME = "rbd.csi.ceph.com"
GIB = 1 << 30
# AF_UNIX path limit (sun_path is 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107

# $1 config dir, $2 overlay upper, $3 overlay work, $4 keys dir, then the command to exec.
_IN_NAMESPACE = ("unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c")
_NAMESPACE_SCRIPT = """set -eu
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$2,workdir=$3" /etc
mkdir -p /etc/ceph-csi-config /tmp/csi/keys
mount --bind "$1" /etc/ceph-csi-config
mount --bind "$4" /tmp/csi/keys
shift 4
exec "$@"
"""


def build_cephcsi(checkout: Checkout, timeout: float = 1800) -> Path:
    """The cephcsi binary, built first by `checkout`'s hack/build-cephcsi.sh if the cache lacks
    it (minutes cold, instant warm)."""
    script = checkout.script("build-cephcsi.sh")
    out = run([str(script)], timeout=timeout, env={"PYTHON": sys.executable})
    return Path(out.strip().splitlines()[-1])


def stubs_dir(binary: Path) -> Path:
    """Where the build script put csi_pb2.py and csi_pb2_grpc.py, beside the binary."""
    return binary.parent / f"csi-spec-{CSI_SPEC_VERSION}"


_csi_modules: tuple[ModuleType, ModuleType] | None = None


def csi_modules(stubs: Path) -> tuple[ModuleType, ModuleType]:
    """(csi_pb2, csi_pb2_grpc), imported from the build cache: the one place sys.path grows."""
    global _csi_modules  # noqa: PLW0603 - generated modules are process-wide anyway
    if _csi_modules is None:
        if not (stubs / "csi_pb2_grpc.py").is_file():
            raise SandboxError(f"no CSI stubs in {stubs}: run hack/build-cephcsi.sh")
        if str(stubs) not in sys.path:
            sys.path.insert(0, str(stubs))
        pb2 = importlib.import_module("csi_pb2")
        _csi_modules = (pb2, importlib.import_module("csi_pb2_grpc"))
    return _csi_modules


def config_json(clusters: Mapping[str, str]) -> str:
    """ceph-csi's config.json: clusterID -> comma-separated monitors (no secrets in it)."""
    entries = [{"clusterID": cid, "monitors": mons.split(",")} for cid, mons in clusters.items()]
    return json.dumps(entries, indent=2)


class CSIError(SandboxError):
    """A CSI call answered with a gRPC error: `code` is the status name, e.g. "NOT_FOUND"."""

    def __init__(self, method: str, code: str, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"CSI {method} failed: {code}: {details}")


class CSISecrets(dict[str, str]):
    """`userID`/`userKey` as the external-provisioner passes them; repr() hides the key, so a
    failing test's traceback (which prints fixture values) cannot show it."""

    def __init__(self, user_id: str, user_key: str) -> None:
        super().__init__(userID=user_id, userKey=user_key)

    def __repr__(self) -> str:
        return f"CSISecrets(userID={self['userID']!r}, userKey=<redacted>)"


class CSIClient:
    """Identity and Controller calls to one CSI socket; every call has a deadline."""

    def __init__(self, socket_path: Path, stubs: Path, timeout: float = 120.0) -> None:
        self.pb2, pb2_grpc = csi_modules(stubs)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._identity = pb2_grpc.IdentityStub(self._channel)
        self._controller = pb2_grpc.ControllerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _call(
        self,
        method: str,
        secrets: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> Any:
        """`method` ("Controller/CreateVolume") with a `<name>Request` built from `fields`.
        The request exists only in this frame, which pytest leaves out of tracebacks."""
        __tracebackhide__ = True
        service, name = method.split("/")
        if secrets is not None:
            fields["secrets"] = dict(secrets)
        request = getattr(self.pb2, f"{name}Request")(**fields)
        stub = self._identity if service == "Identity" else self._controller
        try:
            return getattr(stub, name)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise CSIError(method, err.code().name, err.details() or "") from None

    def _mount_capability(self) -> Any:
        pb2 = self.pb2
        return pb2.VolumeCapability(
            mount=pb2.VolumeCapability.MountVolume(fs_type="ext4"),
            access_mode=pb2.VolumeCapability.AccessMode(
                mode=pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
            ),
        )

    def probe(self, timeout: float = 2.0) -> bool:
        reply = self._call("Identity/Probe", timeout=timeout)
        # An unset `ready` means ready (CSI spec).
        return not reply.HasField("ready") or bool(reply.ready.value)

    def plugin_info(self) -> tuple[str, str]:
        reply = self._call("Identity/GetPluginInfo")
        return str(reply.name), str(reply.vendor_version)

    def create_volume(
        self,
        name: str,
        size_bytes: int,
        parameters: Mapping[str, str],
        secrets: Mapping[str, str],
    ) -> tuple[str, dict[str, str]]:
        """CreateVolume as the external-provisioner sends it (ext4, RWO); (volume ID, context)."""
        volume = self._call(
            "Controller/CreateVolume",
            secrets,
            name=name,
            capacity_range=self.pb2.CapacityRange(required_bytes=size_bytes),
            volume_capabilities=[self._mount_capability()],
            parameters=dict(parameters),
        ).volume
        return str(volume.volume_id), dict(volume.volume_context)

    def delete_volume(self, volume_id: str, secrets: Mapping[str, str]) -> None:
        self._call("Controller/DeleteVolume", secrets, volume_id=volume_id)

    def delete_volume_as_provisioner(
        self, volume_id: str, secrets: Mapping[str, str], timeout: float = 60
    ) -> None:
        """DeleteVolume, retried as the external-provisioner retries it. Right after
        DeleteSnapshot ceph-csi answers INTERNAL "... is still being used": the mgr's
        trash-remove task for the snapshot's clone briefly watches the parent image."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.delete_volume(volume_id, secrets)
                return
            except CSIError as err:
                if "still being used" not in err.details or time.monotonic() >= deadline:
                    raise
            time.sleep(0.5)

    def expand_volume(self, volume_id: str, size_bytes: int, secrets: Mapping[str, str]) -> int:
        """ControllerExpandVolume; returns the capacity ceph-csi reports."""
        reply = self._call(
            "Controller/ControllerExpandVolume",
            secrets,
            volume_id=volume_id,
            capacity_range=self.pb2.CapacityRange(required_bytes=size_bytes),
            volume_capability=self._mount_capability(),
        )
        return int(reply.capacity_bytes)

    def create_snapshot(
        self,
        source_volume_id: str,
        name: str,
        parameters: Mapping[str, str],
        secrets: Mapping[str, str],
    ) -> str:
        reply = self._call(
            "Controller/CreateSnapshot",
            secrets,
            source_volume_id=source_volume_id,
            name=name,
            parameters=dict(parameters),
        )
        return str(reply.snapshot.snapshot_id)

    def delete_snapshot(self, snapshot_id: str, secrets: Mapping[str, str]) -> None:
        self._call("Controller/DeleteSnapshot", secrets, snapshot_id=snapshot_id)


class CephCSIProcess:
    """One cephcsi process in its own mount namespace, with config files we can rewrite."""

    def __init__(self, binary: Path, work_dir: Path, name: str) -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.name = name
        self.config_dir = work_dir / "ceph-csi-config"
        overlay, keys = work_dir / "etc-overlay", work_dir / "keys"
        # The arguments of _NAMESPACE_SCRIPT, in its order.
        self._dirs = (self.config_dir, overlay / "upper", overlay / "work", keys)
        for path in self._dirs:
            path.mkdir(parents=True, exist_ok=True)
        keys.chmod(0o700)
        self._daemon: Daemon | None = None

    @property
    def log_file(self) -> Path:
        return self.work_dir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        if self._daemon is None:
            raise SandboxError(f"{self.name} was never started")
        return self._daemon.pid

    def write_config(self, config_json: str) -> None:
        """config.json; ceph-csi rereads it per request, so a rewrite applies to the next call."""
        self._write("config.json", config_json)

    def write_cluster_mapping(self, text: str) -> None:
        self._write("cluster-mapping.json", text)

    def _write(self, name: str, text: str) -> None:
        # Replace atomically: ceph-csi may be reading the old file right now.
        staging = self.config_dir / f".{name}.tmp"
        staging.write_text(text)
        staging.replace(self.config_dir / name)

    def _start(self, args: list[str]) -> Daemon:
        if self._daemon is not None and self._daemon.running():
            raise SandboxError(f"{self.name} is already running (PID {self._daemon.pid})")
        if not (self.config_dir / "config.json").exists():
            self.write_config("[]")
        if any("," in str(d) or ":" in str(d) for d in self._dirs):
            raise SandboxError(f"{self.work_dir}: overlay options cannot hold ',' or ':'")
        self._daemon = Daemon(
            name=self.name,
            argv=[
                *_IN_NAMESPACE,
                _NAMESPACE_SCRIPT,
                "cephcsi-namespace",
                *(str(d) for d in self._dirs),
                str(self.binary),
                *args,
            ],
            log_file=self.log_file,
        ).start()
        return self._daemon

    def _execs_cephcsi(self) -> bool:
        """True once the PID we hold runs the binary itself (the wrapper shell has exec'ed)."""
        return self._daemon is not None and pid_runs(self._daemon.pid, str(self.binary))

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to our own PID (cephcsi itself), SIGKILL after `timeout`."""
        if self._daemon is not None:
            self._daemon.stop(timeout)

    def to_record(self) -> dict[str, object]:
        """For `pid_runs`/`stop_pid` in another process: the PID runs the binary, not unshare."""
        return {"name": self.name, "pid": self.pid, "executable": str(self.binary)}


class CephCSIDriver(CephCSIProcess):
    """`cephcsi --type=rbd --controllerserver=true`: the provisioner side of ceph-csi."""

    def __init__(
        self,
        binary: Path,
        work_dir: Path,
        *,
        instance_id: str = "default",
        driver_name: str = DRIVER_NAME,
    ) -> None:
        super().__init__(binary, work_dir, "cephcsi-rbd-controller")
        self.instance_id = instance_id
        self.driver_name = driver_name
        self.socket = work_dir / "run" / "csi.sock"
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise SandboxError(f"socket path too long for AF_UNIX: {self.socket}")
        self._client: CSIClient | None = None

    @property
    def client(self) -> CSIClient:
        if self._client is None:
            raise SandboxError(f"{self.name} is not started")
        return self._client

    def start(self, timeout: float = 60.0) -> CephCSIDriver:
        """Start, then wait until the socket answers Identity/Probe with ready."""
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        daemon = self._start(
            [
                "--type=rbd",
                "--controllerserver=true",
                f"--drivername={self.driver_name}",
                f"--endpoint=unix://{self.socket}",
                f"--csi-addons-endpoint=unix://{self.socket.parent / 'csi-addons.sock'}",
                "--nodeid=sandbox",
                f"--instanceid={self.instance_id}",
                # As deploy/rbd/kubernetes/csi-rbdplugin-provisioner.yaml of the release runs it.
                "--rbdhardmaxclonedepth=8",
                "--rbdsoftmaxclonedepth=4",
                "--setmetadata=true",
                "--v=5",
            ]
        )
        self._client = CSIClient(self.socket, stubs_dir(self.binary))
        try:
            daemon.wait_ready(self._ready, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if not (self._execs_cephcsi() and self.socket.exists()):
            return False
        try:
            return self.client.probe()
        except CSIError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        super().stop(timeout)

    def __enter__(self) -> CephCSIDriver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class JournalRegenerator(CephCSIProcess):
    """`cephcsi --type=controller`: ceph-csi's own PV controller that regenerates journals."""

    def lease_acquired(self) -> bool:
        return "successfully acquired lease" in self.log_text()


def start_journal_regenerator(
    binary: Path,
    work_dir: Path,
    *,
    kubeconfig: Path,
    namespace: str,
    config: str,
    cluster_mapping: str | None = None,
    driver_name: str = DRIVER_NAME,
    instance_id: str = "default",
    timeout: float = 60.0,
) -> JournalRegenerator:
    """Start ceph-csi's journal regenerator with `config` (config.json text) and wait until it
    holds its Lease `<driver_name>-<namespace>`, i.e. until it reconciles PVs."""
    regenerator = JournalRegenerator(binary, work_dir, "cephcsi-journal-regenerator")
    regenerator.write_config(config)
    if cluster_mapping is not None:
        regenerator.write_cluster_mapping(cluster_mapping)
    daemon = regenerator._start(
        [
            "--type=controller",
            f"--drivername={driver_name}",
            f"--drivernamespace={namespace}",
            f"--kubeconfig={kubeconfig}",
            f"--instanceid={instance_id}",
            "--setmetadata=true",
            "--v=5",
        ]
    )
    try:
        daemon.wait_ready(
            lambda: regenerator._execs_cephcsi() and regenerator.lease_acquired(), timeout
        )
    except BaseException:
        regenerator.stop()
        raise
    return regenerator
