"""A mirrored pair of sandbox Ceph clusters: "site-a" primary, "site-b" secondary, mirroring
one pool in image mode with snapshot-based mirroring and the real rbd-mirror daemon. The pool
gets a different ID on each site, which is exactly the situation a DR failover leaves behind.
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.sandbox.ceph import (
    CSI_CAPS,
    CSI_USER,
    DEFAULT_POOL,
    CephCluster,
    require_ceph_programs,
)
from reconciler.sandbox.process import poll_until


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

    def fail_over(self, images: Sequence[str], timeout: float | None = None) -> None:
        """Mirror `images` of the pool from site-a to site-b, wait until site-b replays them all
        (the initial sync), then promote them on site-b as a disaster failover does: forced,
        since site-a is presumed lost. The `rbd` commands run 16 at a time (enabling one image's
        mirroring takes about a second); the default timeout grows with the number of images."""
        pool = self.pool
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as threads:
            list(
                threads.map(
                    lambda image: self.site_a.rbd(
                        "mirror", "image", "enable", f"{pool}/{image}", "snapshot"
                    ),
                    images,
                )
            )
            poll_until(
                lambda: self.site_b.replaying(pool) >= set(images),
                timeout if timeout is not None else 120 + len(images) / 2,
                f"{len(images)} images replaying on site-b",
                interval=0.5 if len(images) < 50 else 2.0,
            )
            list(
                threads.map(
                    lambda image: self.site_b.rbd(
                        "mirror", "image", "promote", "--force", f"{pool}/{image}"
                    ),
                    images,
                )
            )

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
