"""Connections to Ceph: one per (monitors, user, key), reused by every volume, async to callers.

librados is thread-safe and its Python bindings release the GIL on blocking calls, so each
connection runs its operations on a small thread pool of its own and asyncio callers await them:
many volumes progress at once over one connection. Every wait is bounded: the mount, the monitor
and the OSD operations all time out, so an unreachable site fails within seconds.

Keys are passed to librados in memory (`key` option), never written to disk, and never shown by
`repr` or in error messages. A key is checked for a CephX key's shape before librados sees it, and
librados' own log is kept off stderr and out of files: librados logs a key it cannot decode, in
clear.

Closing waits for the librados calls still running on the connection's threads (bounded):
librados shut down under a running call crashes the process. `cephpool.ConnectionPool` shares
connections and closes the idle ones and those of a rotated key.

The bindings themselves (import, error translation, quiet logging, key shape): `cephbindings`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from reconciler.cephbindings import (
    CLUSTER_NAME,
    QUIET_LOGGING,
    cephx_key_problem,
    import_binding,
    translate,
)
from reconciler.errors import (
    CephPermissionDenied,
    CephUnavailable,
    ImageNotFound,
    InvalidCephKey,
    ObjectChanged,
    ObjectExists,
    PoolNotFound,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
DEFAULT_THREADS = 16
#: A connection unused for this long is closed (its threads and sockets go with it).
DEFAULT_IDLE_TIMEOUT = 300.0
#: Read at most this many omap keys of one object at once (ceph-csi objects hold a handful).
OMAP_PAGE = 1024


@dataclass(frozen=True)
class Credentials:
    """A ceph-csi style user: `userID` (without `client.`) and `userKey` from a Secret."""

    user: str
    key: str = field(repr=False)

    def fingerprint(self) -> str:
        """Tells keys apart (pool identity, logs) without revealing them."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ImageInfo:
    name: str
    id: str
    #: None when the image is not mirrored.
    mirror_primary: bool | None


class CephConnection:
    """One connected librados client. Use through `ConnectionPool`; close with `aclose()` (or,
    outside an event loop, `close()`)."""

    def __init__(
        self,
        mon_host: str,
        credentials: Credentials,
        timeout: float,
        threads: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        key_check: Callable[[str], str | None] = cephx_key_problem,
    ) -> None:
        self.mon_host = mon_host
        # What stops a malformed key before librados sees it; tests pass their own to show what
        # librados alone would do with one.
        self._key_check = key_check
        self.user = credentials.user
        self.timeout = timeout
        self._credentials = credentials
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=f"ceph-{credentials.user}"
        )
        self._rados: Any = None
        self._ioctxs: dict[tuple[str, str], Any] = {}
        # The calls handed to the threads and not finished yet (a cancelled await does not stop
        # a librados call): closing waits for them before it shuts librados down.
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._closed = False
        self._shut = False
        self._clock = clock
        self.last_used = clock()
        """When a call last started or ended (`clock` seconds): the pool closes idle ones."""

    def __repr__(self) -> str:
        return f"CephConnection(mon_host={self.mon_host!r}, user={self.user!r})"

    @property
    def busy(self) -> int:
        """Calls handed to the threads that have not finished (running or queued)."""
        return sum(not future.done() for future in list(self._inflight))

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise CephUnavailable(
                f"the connection to {self.mon_host} as client.{self.user} was closed"
            )
        future = self._executor.submit(fn)
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        self.last_used = self._clock()
        try:
            return await asyncio.wrap_future(future)
        finally:
            self.last_used = self._clock()

    async def connect(self) -> None:
        rados = import_binding("rados")
        problem = self._key_check(self._credentials.key)
        if problem is not None:
            raise InvalidCephKey(self.user, problem)
        seconds = str(max(1, round(self.timeout)))
        client = rados.Rados(
            rados_id=self.user,
            clustername=CLUSTER_NAME,
            conf={
                **QUIET_LOGGING,
                "mon_host": self.mon_host,
                "key": self._credentials.key,
                "client_mount_timeout": seconds,
                "rados_mon_op_timeout": seconds,
                "rados_osd_op_timeout": seconds,
            },
        )
        # Held from here, so that closing shuts it down, also mid-connect (once connect returns).
        self._rados = client

        def connect() -> None:
            client.connect()

        try:
            await asyncio.wait_for(self._call(connect), self.timeout + 5)
        except (rados.Error, TimeoutError) as err:
            # The connect call may still be running on its thread: closing waits for it.
            await self.aclose()
            if isinstance(translate(err, "connecting"), CephPermissionDenied):
                raise CephPermissionDenied(
                    f"Ceph monitors {self.mon_host} refused client.{self.user} "
                    f"({type(err).__name__}): a wrong key, an unknown user or no mon caps"
                ) from err
            raise CephUnavailable(
                f"cannot connect to Ceph monitors {self.mon_host} as client.{self.user} "
                f"within {self.timeout:.0f} s: {type(err).__name__}: {err}"
            ) from err

    async def aclose(self, grace: float | None = None) -> None:
        """Refuse new calls, wait up to `grace` seconds (default: the operation timeout) for
        those still running, then shut librados down. Calls still running after that keep the
        client: it is left as it is, since librados shut down under a call crashes the process."""
        self._closed = True
        pending = [future for future in list(self._inflight) if not future.done()]
        if pending:
            waiting = [asyncio.wrap_future(future) for future in pending]
            ended, running = await asyncio.wait(
                waiting, timeout=self.timeout if grace is None else grace
            )
            # A call's outcome is its caller's; here it is only waited for. Marked as seen (and
            # the rest no longer waited for), an error of a call whose caller is gone is not
            # logged as "never retrieved" at exit.
            for ended_call in ended:
                if not ended_call.cancelled():
                    ended_call.exception()
            for still_running in running:
                still_running.cancel()
        self._shut_down()

    def close(self, grace: float | None = None) -> None:
        """`aclose()` for callers without an event loop: blocks while it waits."""
        self._closed = True
        pending = [future for future in list(self._inflight) if not future.done()]
        if pending:
            concurrent.futures.wait(pending, timeout=self.timeout if grace is None else grace)
        self._shut_down()

    def _shut_down(self) -> None:
        if self._shut:
            return
        busy = self.busy
        if busy:
            log.warning(
                "librados calls still running on a closed Ceph connection: its client is left "
                "as it is rather than shut down under them",
                extra={"mon_host": self.mon_host, "user": self.user, "calls": busy},
            )
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        self._shut = True
        for ioctx in self._ioctxs.values():
            with contextlib.suppress(Exception):
                ioctx.close()
        self._ioctxs.clear()
        if self._rados is not None:
            with contextlib.suppress(Exception):
                self._rados.shutdown()
            self._rados = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        """Run a librados/librbd call on the pool's threads and turn its errors into ours;
        rados.ObjectNotFound and rados.ObjectExists pass through for the caller to judge."""
        rados = import_binding("rados")
        try:
            return await self._call(fn)
        except (rados.ObjectNotFound, rados.ObjectExists):
            raise
        except Exception as err:
            ours = translate(err, f"{what} on {self.mon_host}", user=self.user)
            if ours is None:
                raise
            raise ours from err

    def _ioctx(self, pool: str, namespace: str) -> Any:
        """An I/O context per (pool, namespace), opened once; runs on a pool thread."""
        key = (pool, namespace)
        ioctx = self._ioctxs.get(key)
        if ioctx is None:
            rados = import_binding("rados")
            try:
                ioctx = self._rados.open_ioctx(pool)
            except rados.ObjectNotFound as err:
                raise PoolNotFound(pool) from err
            ioctx.set_namespace(namespace)
            kept = self._ioctxs.setdefault(key, ioctx)
            if kept is not ioctx:  # another thread opened it meanwhile
                ioctx.close()
            ioctx = kept
        return ioctx

    async def pool_id(self, pool: str) -> int:
        def lookup() -> int | None:
            found: int | None = self._rados.pool_lookup(pool)
            return found

        pool_id = await self._run(f"looking up pool {pool!r}", lookup)
        if pool_id is None:
            raise PoolNotFound(pool)
        return pool_id

    async def pool_name(self, pool_id: int) -> str:
        rados = import_binding("rados")

        def lookup() -> str | None:
            # The binding answers None for an ID no pool has (ENOENT); some raise instead.
            name: str | None = self._rados.pool_reverse_lookup(pool_id)
            return name

        try:
            name = await self._run(f"looking up pool ID {pool_id}", lookup)
        except rados.ObjectNotFound as err:
            raise PoolNotFound(f"#{pool_id}") from err
        if name is None:
            raise PoolNotFound(f"#{pool_id}")
        return name

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        """The object's omap (only `keys` if given), or None when the object does not exist."""
        rados = import_binding("rados")

        def read() -> dict[str, bytes]:
            ioctx = self._ioctx(pool, namespace)
            values: dict[str, bytes] = {}
            with rados.ReadOpCtx() as op:
                if keys is None:
                    pairs, _ = ioctx.get_omap_vals(op, "", "", OMAP_PAGE)
                else:
                    pairs, _ = ioctx.get_omap_vals_by_keys(op, tuple(keys))
                ioctx.operate_read_op(op, oid)
                for key, value in pairs:
                    values[key] = value
            return values

        try:
            return await self._run(f"reading omap of {oid!r} in pool {pool!r}", read)
        except rados.ObjectNotFound:
            return None

    async def omap_set(
        self,
        pool: str,
        namespace: str,
        oid: str,
        values: Mapping[str, bytes],
        *,
        exclusive_create: bool = False,
        expect: Mapping[str, bytes] | None = None,
    ) -> None:
        """Set omap keys in one atomic op, creating the object (exclusively, if asked: else
        ObjectExists). With `expect`, only if each of its keys still holds that value, an absent
        key (or object) comparing equal to b"": else ObjectChanged, and nothing is written.

        The comparison is RADOS `omap_cmp` (CEPH_OSD_OP_OMAP_CMP) in the same op as the set, so
        the OSD checks and writes under one lock. The binding takes the value as `str` and sends
        `len()` of it in characters, so expected values must be ASCII (ValueError otherwise).
        """
        rados = import_binding("rados")
        expected = [(key, _ascii(key, value)) for key, value in (expect or {}).items()]

        def write() -> None:
            ioctx = self._ioctx(pool, namespace)
            with rados.WriteOpCtx() as op:
                # Created first (idempotently unless exclusive): the comparisons that follow then
                # see a missing object as one without keys, instead of failing with ENOENT.
                op.new(
                    rados.LIBRADOS_CREATE_EXCLUSIVE
                    if exclusive_create
                    else rados.LIBRADOS_CREATE_IDEMPOTENT
                )
                for key, value in expected:
                    op.omap_cmp(key, value, rados.LIBRADOS_CMPXATTR_OP_EQ)
                if values:
                    ioctx.set_omap(op, tuple(values), tuple(values.values()))
                ioctx.operate_write_op(op, oid)

        try:
            await self._call(write)
        except rados.ObjectExists as err:
            raise ObjectExists(pool, namespace, oid) from err
        except Exception as err:
            # A failed omap_cmp fails the whole op with ECANCELED, for which the binding has no
            # class of its own (a plain rados.OSError).
            if expected and isinstance(err, rados.OSError) and err.errno == errno.ECANCELED:
                raise ObjectChanged(pool, namespace, oid) from err
            ours = translate(
                err, f"writing omap of {oid!r} in pool {pool!r} on {self.mon_host}", user=self.user
            )
            if ours is None:
                raise
            raise ours from err

    async def omap_remove(self, pool: str, namespace: str, oid: str, keys: Sequence[str]) -> None:
        rados = import_binding("rados")

        def remove() -> None:
            ioctx = self._ioctx(pool, namespace)
            with rados.WriteOpCtx() as op:
                ioctx.remove_omap_keys(op, tuple(keys))
                ioctx.operate_write_op(op, oid)

        with contextlib.suppress(rados.ObjectNotFound):
            await self._run(f"removing omap keys of {oid!r} in pool {pool!r}", remove)

    async def remove_object(self, pool: str, namespace: str, oid: str) -> None:
        rados = import_binding("rados")

        def remove() -> None:
            self._ioctx(pool, namespace).remove_object(oid)

        with contextlib.suppress(rados.ObjectNotFound):
            await self._run(f"removing {oid!r} in pool {pool!r}", remove)

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
        rados = import_binding("rados")
        rbd = import_binding("rbd")

        def info() -> ImageInfo:
            ioctx = self._ioctx(pool, namespace)
            try:
                image = rbd.Image(ioctx, name, read_only=True)
            except rbd.ImageNotFound as err:
                raise ImageNotFound(pool, namespace, name) from err
            try:
                mirror = image.mirror_image_get_info()
                mirrored = mirror["state"] == rbd.RBD_MIRROR_IMAGE_ENABLED
                return ImageInfo(
                    name=name,
                    id=image.id(),
                    mirror_primary=bool(mirror["primary"]) if mirrored else None,
                )
            finally:
                image.close()

        try:
            return await self._run(f"opening image {name!r} in pool {pool!r}", info)
        except rados.ObjectNotFound as err:
            raise ImageNotFound(pool, namespace, name) from err

    async def run_with(
        self, what: str, fn: Callable[[Any], T], pool: str | None = None, namespace: str = ""
    ) -> T:
        """`fn(handle)` on this connection's threads, errors translated as for every call here:
        `handle` is the I/O context of (`pool`, `namespace`) (PoolNotFound if it does not exist),
        or the `rados.Rados` client when `pool` is None. For the reads the methods above do not
        cover: pool-level mirror listings, image snapshots, mon commands (reconciler.mirror)."""

        def work() -> T:
            return fn(self._rados if pool is None else self._ioctx(pool, namespace))

        return await self._run(what, work)


def _ascii(key: str, value: bytes) -> str:
    if not value.isascii():
        raise ValueError(f"omap_cmp of key {key!r}: the binding can only compare ASCII values")
    return value.decode("ascii")
