"""Real single-node Ceph clusters, and a mirrored pair of them, for tests and the demo.

A cluster is one mon, one memstore OSD and one mgr on a loopback port of its own, all state in
one directory. A pair ("site-a" primary, "site-b" secondary) mirrors one pool in image mode with
snapshot-based mirroring and the real rbd-mirror daemon, and the pool gets a different ID on each
site, which is exactly the situation a DR failover leaves behind.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.sandbox.errors import CommandFailed, MissingPackage, SandboxError
from reconciler.sandbox.process import (
    Daemon,
    DaemonGroup,
    ensure_port_free,
    free_port,
    poll_until,
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


@dataclass
class SitePair:
    """site-a (primary) and site-b (secondary) mirroring `pool` with snapshot-based mirroring."""

    base_dir: Path
    site_a: CephCluster
    site_b: CephCluster
    pool: str
    csi_user: str = CSI_USER
    started_in: float = 0.0

    @property
    def sites(self) -> tuple[CephCluster, CephCluster]:
        return self.site_a, self.site_b

    def stop(self) -> None:
        # Secondary first: its rbd-mirror daemon talks to site-a.
        for site in (self.site_b, self.site_a):
            site.stop()

    def fail_over(self, images: Sequence[str], timeout: float = 120) -> None:
        """Mirror `images` of the pool from site-a to site-b, wait until site-b replays them all
        (the initial sync), then promote them on site-b as a disaster failover does: forced,
        since site-a is presumed lost."""
        for image in images:
            self.site_a.rbd("mirror", "image", "enable", f"{self.pool}/{image}", "snapshot")
        poll_until(
            lambda: all(
                self.site_b.mirror_state(self.pool, image) == "up+replaying" for image in images
            ),
            timeout,
            f"{len(images)} images replaying on site-b",
        )
        for image in images:
            self.site_b.rbd("mirror", "image", "promote", "--force", f"{self.pool}/{image}")

    def describe(self) -> dict[str, Any]:
        """What a human or a script needs to use the pair (no secrets: keys stay in files)."""
        return {
            "dir": str(self.base_dir),
            "pool": self.pool,
            "csiUser": self.csi_user,
            "startedInSeconds": round(self.started_in, 1),
            "sites": {
                site.name: {
                    "conf": str(site.conf),
                    "adminKeyring": str(site.admin_keyring),
                    "monitors": site.monitors,
                    "fsid": site.fsid,
                    "poolID": site.pool_id(self.pool),
                    "csiKeyFile": str(site.dir / f"{self.csi_user}.key"),
                }
                for site in self.sites
            },
        }

    def daemon_records(self) -> list[dict[str, object]]:
        return self.site_a.daemon_records() + self.site_b.daemon_records()


def start_pair(
    base_dir: Path | None = None,
    pool: str = DEFAULT_POOL,
    *,
    mirror_daemon_on_a: bool = False,
) -> SitePair:
    """Start site-a and site-b, mirror `pool` a -> b (and b -> a with `mirror_daemon_on_a`)."""
    began = time.monotonic()
    require_ceph_programs()
    base = Path(tempfile.mkdtemp(prefix="rbd-mirror-sandbox-")) if base_dir is None else base_dir
    base.mkdir(parents=True, exist_ok=True)
    started: list[CephCluster] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool_exec:
            futures = [
                pool_exec.submit(CephCluster.start, name, base) for name in ("site-a", "site-b")
            ]
            errors: list[BaseException] = []
            for future in futures:
                try:
                    started.append(future.result())
                except BaseException as err:
                    errors.append(err)
            if errors:
                raise errors[0]
        site_a, site_b = started
        # Pools are created before the mgrs start (the mgr may add pools of its own) and site-b
        # gets one extra pool first, so the same pool name has a different ID on each site.
        site_b.create_pool("site-b-scratch")
        for site in (site_a, site_b):
            site.create_pool(pool)
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool_exec:
            list(pool_exec.map(lambda site: _prepare_site(site, pool), (site_a, site_b)))
        pair = SitePair(base_dir=base, site_a=site_a, site_b=site_b, pool=pool)
        _connect_peers(pair, both_directions=mirror_daemon_on_a)
        site_b.start_rbd_mirror(pool)
        if mirror_daemon_on_a:
            site_a.start_rbd_mirror(pool)
    except BaseException:
        for site in reversed(started):
            site.stop()
        raise
    pair.started_in = time.monotonic() - began
    return pair


def _prepare_site(site: CephCluster, pool: str) -> None:
    site.init_rbd_pool(pool)
    site.start_mgr()
    key = site.create_user(CSI_USER, CSI_CAPS)
    key_file = site.dir / f"{CSI_USER}.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    site.rbd("mirror", "pool", "enable", pool, "image", "--site-name", site.name)


def _connect_peers(pair: SitePair, *, both_directions: bool) -> None:
    token = pair.site_a.rbd(
        "mirror", "pool", "peer", "bootstrap", "create", "--site-name", pair.site_a.name, pair.pool
    )
    token_file = pair.base_dir / "peer-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    direction = "rx-tx" if both_directions else "rx-only"
    pair.site_b.rbd(
        "mirror",
        "pool",
        "peer",
        "bootstrap",
        "import",
        "--site-name",
        pair.site_b.name,
        "--direction",
        direction,
        pair.pool,
        str(token_file),
    )
    token_file.unlink()
