"""What preflight asks of Ceph, read-only and counted.

- `PlanningView`: what `regenerate.plan_regeneration` reads, served from pool-level listings
  where one exists (images from `list2` + mirror info; each journal directory object read whole,
  once) and by a real read otherwise (each volume's own journal object). It refuses to write.
- `probe_caps`: whether a ceph-csi user may write the journal, tried for real but without a
  change: the journal's own kind of conditional write, with a comparison made to fail. The OSD
  checks caps before it evaluates the op, so "permission denied" means no write cap, while the
  comparison's ECANCELED means the write was allowed and then cancelled whole: nothing changes.
- `user_caps` + `caps_allow_journal`: the same question from `ceph auth get`, when admin
  credentials are given (the key in its answer is dropped at once).
"""

from __future__ import annotations

import errno
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.cephbindings import import_binding
from reconciler.cephconn import CephConnection, ImageInfo
from reconciler.errors import CephError, ImageNotFound
from reconciler.mirror import MirrorImage

PROBE_KEY = "rbd-mirror-reconciler.preflight-probe"
#: Omap pairs a directory read asks for at once.
PAGE = 1024
PROBE_VALUE = "never-written"


class PlanningView:
    """`regenerate.CephAccess` over listings and a connection, for a dry plan only."""

    def __init__(
        self,
        ceph: CephConnection,
        images: Mapping[tuple[str, str, str], MirrorImage],
        directories: Mapping[tuple[str, str, str], dict[str, bytes] | None],
        calls: Counter[str],
    ) -> None:
        self.ceph = ceph
        self.images = images
        """(pool, namespace, name) -> the image as listed."""
        self.directories = directories
        """(pool, namespace, directory object) -> its whole omap (None: no such object)."""
        self.calls = calls
        self._pool_ids: dict[str, int] = {}

    async def pool_id(self, pool: str) -> int:
        if pool not in self._pool_ids:
            self.calls["poolLookups"] += 1
            self._pool_ids[pool] = await self.ceph.pool_id(pool)
        return self._pool_ids[pool]

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
        image = self.images.get((pool, namespace, name))
        if image is None:
            raise ImageNotFound(pool, namespace, name)
        return ImageInfo(name=name, id=image.id, mirror_primary=image.primary)

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        whole = self.directories.get((pool, namespace, oid), _UNREAD)
        if whole is not _UNREAD and keys is not None:
            if whole is None:
                return None
            return {key: whole[key] for key in keys if key in whole}
        self.calls["omapReads"] += 1
        return await self.ceph.omap_get(pool, namespace, oid, keys)

    async def omap_set(self, *args: Any, **kwargs: Any) -> None:
        raise CephError("preflight never writes to Ceph: a plan only")


_UNREAD: dict[str, bytes] = {}


async def read_whole_omap(
    ceph: CephConnection, pool: str, namespace: str, oid: str
) -> dict[str, bytes] | None:
    """Every omap pair of one object, read in pages; None when the object does not exist."""
    rados = import_binding("rados")

    def read(ioctx: Any) -> dict[str, bytes] | None:
        values: dict[str, bytes] = {}
        after = ""
        while True:
            with rados.ReadOpCtx() as op:
                pairs, _ = ioctx.get_omap_vals(op, after, "", PAGE)
                try:
                    ioctx.operate_read_op(op, oid)
                except rados.ObjectNotFound:
                    return None
                page = list(pairs)
            values.update(page)
            if len(page) < PAGE:
                return values
            after = page[-1][0]

    return await ceph.run_with(f"reading omap of {oid!r} in pool {pool!r}", read, pool, namespace)


@dataclass(frozen=True)
class Probe:
    read: bool
    write: bool
    detail: str


async def probe_caps(ceph: CephConnection, pool: str, namespace: str, oid: str) -> Probe:
    """Read `oid`'s omap, then send the journal's kind of write to it with a comparison that
    cannot hold, as `ceph.user`: see the module docstring. Never changes anything."""
    rados = import_binding("rados")

    def probe(ioctx: Any) -> tuple[int, int]:
        read_code = write_code = 0
        with rados.ReadOpCtx() as op:
            # The binding's iterator must outlive the op: librados fills it when the op runs,
            # and dropping it first frees what librados then writes to (a segfault).
            pairs, _ = ioctx.get_omap_vals_by_keys(op, (PROBE_KEY,))
            try:
                ioctx.operate_read_op(op, oid)
            except rados.Error as err:
                read_code = getattr(err, "errno", None) or errno.EIO
            del pairs
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_IDEMPOTENT)
            op.omap_cmp(PROBE_KEY, PROBE_VALUE, rados.LIBRADOS_CMPXATTR_OP_EQ)
            ioctx.set_omap(op, (PROBE_KEY,), (PROBE_VALUE.encode(),))
            try:
                ioctx.operate_write_op(op, oid)
                write_code = -1  # applied: the comparison held, which cannot be
            except rados.Error as err:
                write_code = getattr(err, "errno", None) or errno.EIO
        return read_code, write_code

    read_code, write_code = await ceph.run_with(
        f"probing client.{ceph.user}'s caps on {pool}/{oid}", probe, pool, namespace
    )
    where = f"{pool}/{namespace + '/' if namespace else ''}{oid}"
    denied = (errno.EPERM, errno.EACCES)
    read_ok = read_code in (0, errno.ENOENT)
    write_ok = write_code == errno.ECANCELED
    if write_code == -1:
        raise CephError(f"the caps probe's write to {where} was applied: {PROBE_KEY} is set")
    parts = [
        "omap read allowed" if read_ok else f"omap read refused ({_errname(read_code)})",
        "conditional write allowed (cancelled by design, nothing written)"
        if write_ok
        else (
            "write refused: permission denied"
            if write_code in denied
            else f"write failed ({_errname(write_code)})"
        ),
    ]
    return Probe(read_ok, write_ok, f"probed as client.{ceph.user} on {where}: {'; '.join(parts)}")


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


async def user_caps(admin: CephConnection, user: str) -> dict[str, str] | None:
    """`ceph auth get client.<user>`'s caps (None: no such user), through the admin's
    connection. The key in the answer is discarded here and never returned."""

    def get(client: Any) -> tuple[int, bytes, str]:
        command = {"prefix": "auth get", "entity": f"client.{user}", "format": "json"}
        code, out, status = client.mon_command(json.dumps(command), b"")
        return int(code), bytes(out), str(status)

    code, out, status = await admin.run_with(f"ceph auth get client.{user}", get)
    if code == -errno.ENOENT:
        return None
    if code != 0:
        raise CephError(f"ceph auth get client.{user} as client.{admin.user}: {status} ({code})")
    entries = json.loads(out)
    caps = entries[0].get("caps") if entries else {}
    return {str(k): str(v) for k, v in (caps or {}).items()}


_GRANT_SPLIT = re.compile(r"\s*[,;]\s*")


def _grants(text: str) -> list[tuple[str, dict[str, str]]]:
    """A cap string's grants as (what, constraints): "allow rwx pool=a" -> ("allow rwx",
    {"pool": "a"}); "profile rbd pool=a" -> ("profile rbd", {"pool": "a"})."""
    found = []
    for grant in _GRANT_SPLIT.split(text.strip()):
        words = grant.split()
        if not words:
            continue
        what: list[str] = []
        constraints: dict[str, str] = {}
        index = 0
        while index < len(words):
            word = words[index]
            if "=" in word:
                key, _, value = word.partition("=")
                constraints[key] = value
            elif word in ("pool", "namespace", "object_prefix", "tag") and index + 1 < len(words):
                constraints[word] = words[index + 1]
                index += 1
            else:
                what.append(word)
            index += 1
        found.append((" ".join(what), constraints))
    return found


def caps_allow_journal(caps: Mapping[str, str], pool: str, namespace: str) -> list[str]:
    """What the caps lack for journal writes in `pool`/`namespace` (empty: nothing): mon read
    (pool lookups) and OSD read+write there. Read from the cap strings as Ceph's common forms
    spell them ("allow rwx", "profile rbd", "pool=", "namespace="); unusual ones may be judged
    wrongly, which the probe (run as the user) does not."""
    missing = []
    mon = _grants(caps.get("mon", ""))
    if not any(w.startswith("profile") or _perms(w) & {"r", "*"} for w, _ in mon):
        missing.append(f"mon caps {caps.get('mon', '')!r} do not allow reading the OSD map")
    writable = False
    for what, constraints in _grants(caps.get("osd", "")):
        if constraints.get("pool", pool) != pool or "object_prefix" in constraints:
            continue
        rule = constraints.get("namespace")
        if rule is not None and not (
            namespace.startswith(rule[:-1]) if rule.endswith("*") else rule == namespace
        ):
            continue
        perms = _perms(what)
        if what == "profile rbd" or "*" in perms or {"r", "w"} <= perms:
            writable = True
    if not writable:
        missing.append(
            f"osd caps {caps.get('osd', '')!r} do not allow writing in pool {pool!r}"
            + (f" namespace {namespace!r}" if namespace else "")
        )
    return missing


def _perms(what: str) -> set[str]:
    words = what.split()
    if len(words) != 2 or words[0] != "allow":
        return set()
    return set(words[1]) if words[1] != "*" else {"*"}
