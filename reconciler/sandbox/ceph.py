"""Real single-node Ceph clusters for tests and the demo (`pair` mirrors two of them).

A cluster is one mon, one memstore OSD and one mgr on a loopback port of its own, all state in
one directory.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.sandbox.errors import CommandFailed, MissingPackage, SandboxError
from reconciler.sandbox.process import (
    Daemon,
    DaemonGroup,
    ensure_port_free,
    free_port,
    run,
)

DEFAULT_POOL = "replicapool"
# The user ceph-csi's provisioner runs as, with the caps its documentation asks for.
CSI_USER = "csi-rbd-provisioner"
CSI_CAPS = ("mon", "profile rbd", "osd", "profile rbd", "mgr", "allow rw")
MEMSTORE_BYTES = 1 << 30
START_TIMEOUT = 60.0

REQUIRED_PROGRAMS = {
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "ceph-mgr": "ceph-mgr",
    "ceph": "ceph-common",
    "rbd": "ceph-common",
    "ceph-authtool": "ceph-common",
    "monmaptool": "ceph-common",
    "rbd-mirror": "rbd-mirror",
}


def require_ceph_programs(programs: dict[str, str] = REQUIRED_PROGRAMS) -> None:
    for program, package in programs.items():
        if shutil.which(program) is None:
            raise MissingPackage(program, package)


@dataclass
class CephCluster:
    """One running single-node cluster. `ceph()` and `rbd()` run the admin CLIs against it."""

    name: str
    dir: Path
    port: int
    fsid: str
    daemons: DaemonGroup = field(default_factory=DaemonGroup, repr=False)

    @property
    def conf(self) -> Path:
        return self.dir / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.dir / "client.admin.keyring"

    @property
    def monitors(self) -> str:
        """The monitor address as ceph-csi's config.json and librados' mon_host take it."""
        return f"v2:127.0.0.1:{self.port}"

    def ceph(self, *args: str, timeout: float = 30) -> str:
        return run(
            ["ceph", "-c", str(self.conf), "--connect-timeout", "10", *args], timeout=timeout
        )

    def ceph_json(self, *args: str) -> Any:
        return json.loads(self.ceph(*args, "--format", "json"))

    def rbd(self, *args: str, timeout: float = 30) -> str:
        return run(["rbd", "-c", str(self.conf), *args], timeout=timeout)

    def rados(self, pool: str, *args: str, timeout: float = 30) -> str:
        return run(["rados", "-c", str(self.conf), "-p", pool, *args], timeout=timeout)

    def pool_id(self, pool: str) -> int:
        # A mon command: it answers before any mgr runs.
        for entry in self.ceph_json("osd", "pool", "ls", "detail"):
            if entry["pool_name"] == pool:
                pool_id: int = entry["pool_id"]
                return pool_id
        raise SandboxError(f"{self.name}: no pool named {pool!r}")

    def create_pool(self, pool: str) -> int:
        self.ceph("osd", "pool", "create", pool, "8")
        return self.pool_id(pool)

    def init_rbd_pool(self, pool: str) -> None:
        self.rbd("pool", "init", pool, timeout=60)

    def mirror_state(self, pool: str, image: str) -> str | None:
        """The image's mirroring state here (e.g. "up+replaying"); None while it is not here."""
        try:
            status = self.rbd("mirror", "image", "status", f"{pool}/{image}", "--format", "json")
        except CommandFailed:
            return None
        state: str = json.loads(status)["state"]
        return state

    def replaying(self, pool: str) -> set[str]:
        """The images of `pool` this site's rbd-mirror replays ("up+replaying"), in one command
        for the whole pool."""
        try:
            status = json.loads(
                self.rbd("mirror", "pool", "status", pool, "--verbose", "--format", "json")
            )
        except CommandFailed:
            return set()
        return {i["name"] for i in status.get("images", []) if i.get("state") == "up+replaying"}

    def user_key(self, user: str) -> str:
        return self.ceph("auth", "get-key", f"client.{user}").strip()

    def create_user(self, user: str, caps: tuple[str, ...]) -> str:
        self.ceph("auth", "get-or-create", f"client.{user}", *caps)
        return self.user_key(user)

    def stop(self) -> None:
        self.daemons.stop()

    # -- bootstrap -------------------------------------------------------------------------------

    @classmethod
    def start(cls, name: str, base_dir: Path, port: int | None = None) -> CephCluster:
        """Create and start a cluster in `base_dir/name`; on any failure stop what was started."""
        require_ceph_programs()
        cluster_dir = base_dir / name
        if cluster_dir.exists():
            raise SandboxError(f"{cluster_dir} already exists: use a fresh directory")
        for sub in ("mon", "osd/ceph-0", "mgr/ceph-x", "run", "log"):
            (cluster_dir / sub).mkdir(parents=True)
        if port is None:
            port = free_port()
        else:
            ensure_port_free(port, f"{name} mon.a")
        cluster = cls(name=name, dir=cluster_dir, port=port, fsid=str(uuid.uuid4()))
        try:
            cluster._write_config()
            cluster._start_mon()
            cluster._start_osd()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _write_config(self) -> None:
        d = self.dir
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = {self.monitors}
mon initial members = a
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {self.admin_keyring}
run dir = {d}/run
admin socket = {d}/run/$cluster-$name.asok
log file = {d}/log/$name.log
mon data = {d}/mon/$cluster-$id
osd data = {d}/osd/$cluster-$id
mgr data = {d}/mgr/$cluster-$id
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
# No disks, no devices to watch: skip work a lab cluster does not need.
mgr initial modules = iostat
mon osd down out interval = 0
# rbd-mirror defaults re-check every 30 s; a lab pair should report within seconds.
rbd mirror image state check interval = 2
rbd mirror pool replayers refresh interval = 2
rbd mirror leader heartbeat interval = 1

[osd]
keyring = {d}/osd.keyring

[mgr]
keyring = {d}/mgr.keyring
"""
        )

    def _start_mon(self) -> None:
        d = self.dir
        mon_keyring = d / "mon.keyring"
        run(
            [
                "ceph-authtool",
                "--create-keyring",
                str(mon_keyring),
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ]
        )
        run(
            [
                "ceph-authtool",
                "--create-keyring",
                str(self.admin_keyring),
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mds",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ]
        )
        run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(self.admin_keyring)])
        monmap = d / "monmap"
        run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                self.fsid,
                "--addv",
                "a",
                f"[{self.monitors}]",
                str(monmap),
            ]
        )
        run(
            [
                "ceph-mon",
                "-c",
                str(self.conf),
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                str(monmap),
                "--keyring",
                str(mon_keyring),
            ]
        )
        mon = self.daemons.start(
            Daemon(
                name=f"{self.name} mon.a",
                argv=["ceph-mon", "-f", "-c", str(self.conf), "-i", "a"],
                log_file=d / "log" / "mon.a.log",
            )
        )
        mon.wait_ready(self._answers, START_TIMEOUT)

    def _answers(self) -> bool:
        try:
            run(["ceph", "-c", str(self.conf), "--connect-timeout", "2", "mon", "stat"], timeout=5)
        except CommandFailed:
            return False
        return True

    def _start_osd(self) -> None:
        d = self.dir
        osd_uuid = str(uuid.uuid4())
        self.ceph("osd", "new", osd_uuid, "0")
        osd_keyring = d / "osd.keyring"
        run(["ceph-authtool", "--create-keyring", str(osd_keyring), "--gen-key", "-n", "osd.0"])
        # The OSD fetches its config from the mon during mkfs, so its key must be known first.
        self.ceph(
            "auth",
            "add",
            "osd.0",
            "osd",
            "allow *",
            "mon",
            "allow profile osd",
            "mgr",
            "allow profile osd",
            "-i",
            str(osd_keyring),
        )
        run(
            ["ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
            timeout=60,
        )
        osd = self.daemons.start(
            Daemon(
                name=f"{self.name} osd.0",
                argv=["ceph-osd", "-f", "-c", str(self.conf), "-i", "0"],
                log_file=d / "log" / "osd.0.log",
            )
        )
        osd.wait_ready(self._osd_up, START_TIMEOUT)

    def _osd_up(self) -> bool:
        try:
            up: int = self.ceph_json("osd", "stat")["num_up_osds"]
        except CommandFailed:
            return False
        return up >= 1

    def start_mgr(self) -> None:
        d = self.dir
        self.ceph(
            "auth",
            "get-or-create",
            "mgr.x",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "mds",
            "allow *",
            "-o",
            str(d / "mgr.keyring"),
        )
        mgr = self.daemons.start(
            Daemon(
                name=f"{self.name} mgr.x",
                argv=["ceph-mgr", "-f", "-c", str(self.conf), "-i", "x"],
                log_file=d / "log" / "mgr.x.log",
            )
        )
        mgr.wait_ready(self._mgr_available, START_TIMEOUT)

    def _mgr_available(self) -> bool:
        try:
            available: bool = self.ceph_json("mgr", "stat")["available"]
        except CommandFailed:
            return False
        return available

    def start_rbd_mirror(self, pool: str) -> Daemon:
        """The real rbd-mirror daemon replicating `pool` into this cluster, once it leads `pool`."""
        d = self.dir
        daemon_id = f"rbd-mirror.{self.name}"
        keyring = d / f"client.{daemon_id}.keyring"
        self.ceph(
            "auth",
            "get-or-create",
            f"client.{daemon_id}",
            "mon",
            "profile rbd-mirror",
            "osd",
            "profile rbd",
            "-o",
            str(keyring),
        )
        # The daemon re-reads its local cluster's config through the default search path and
        # ignores -c for that, so it runs from the config's folder with CEPH_CONF set.
        daemon = self.daemons.start(
            Daemon(
                name=f"{self.name} rbd-mirror",
                argv=[
                    "rbd-mirror",
                    "-f",
                    "-c",
                    str(self.conf),
                    "--id",
                    daemon_id,
                    "--keyring",
                    str(keyring),
                ],
                log_file=d / "log" / "rbd-mirror.log",
                cwd=d,
                env={"CEPH_CONF": str(self.conf)},
            )
        )
        # Images enabled before the daemon leads the pool can go unnoticed for minutes, so the
        # pair is ready only once the daemon has taken the pool's lead with its peer connected.
        daemon.wait_ready(lambda: self._mirror_daemon_leads(pool), START_TIMEOUT)
        return daemon

    def _mirror_daemon_leads(self, pool: str) -> bool:
        try:
            status = json.loads(
                self.rbd("mirror", "pool", "status", pool, "--verbose", "--format", "json")
            )
        except CommandFailed:
            return False
        return any(d["leader"] and d["health"] == "OK" for d in status.get("daemons", []))

    def daemon_records(self) -> list[dict[str, object]]:
        return [daemon.to_record() for daemon in self.daemons.daemons]
