"""Connections to Ceph: one per (monitors, user, key), reused by every volume, async to callers.

librados is thread-safe and its Python bindings release the GIL on blocking calls, so each
connection runs its operations on a small thread pool of its own and asyncio callers await them:
many volumes progress at once over one connection. Every wait is bounded: the mount, the monitor
and the OSD operations all time out, so an unreachable site fails within seconds.

Keys are passed to librados in memory (`key` option), never written to disk, and never shown by
`repr` or in error messages. A key is checked for a CephX key's shape before librados sees it, and
librados' own log is kept off stderr and out of files: librados logs a key it cannot decode, in
clear.

Connections do not outlive their use: the pool closes one unused for `idle_timeout` seconds, and
the connections of a user's old key once a new key of that user connects (a rotated key). Closing
waits for the librados calls still running on the connection's threads (bounded): librados shut
down under a running call crashes the process.

librados/librbd exceptions become this package's errors by their real names in Ceph 16.2.15's
bindings (`PERMISSION_ERRORS`, `UNAVAILABLE_ERRORS`; tests/unit/test_ceph_errors.py checks every
name against the real modules): permission denied is CephPermissionDenied, a timeout or a lost
connection CephUnavailable, anything else CephError.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import errno
import hashlib
import importlib
import logging
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

from reconciler.errors import (
    CephBindingsMissing,
    CephError,
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

#: Exception classes of Ceph 16.2.15's bindings, by module and real name (`dir(rados)`,
#: `dir(rbd)`). rados: PermissionError is EPERM (an OSD refusing an op for missing caps),
#: PermissionDeniedError EACCES (the monitors refusing the key or the user). librbd maps EPERM to
#: its PermissionError and has no class for EACCES (a plain rbd.OSError): errno catches that.
PERMISSION_ERRORS = {
    "rados": ("PermissionError", "PermissionDeniedError"),
    "rbd": ("PermissionError",),
}
PERMISSION_ERRNOS = frozenset({errno.EPERM, errno.EACCES})
#: Outcomes unknown or no answer at all: librados' ETIMEDOUT is TimedOut, librbd's is Timeout
#: (there is no rbd.TimedOut); EINTR is InterruptedOrTimeoutError.
UNAVAILABLE_ERRORS = {
    "rados": ("TimedOut", "InterruptedOrTimeoutError", "ConnectionShutdown", "NotConnected"),
    "rbd": ("Timeout", "ConnectionShutdown"),
}
UNAVAILABLE_ERRNOS = frozenset({errno.ETIMEDOUT, errno.EINTR, errno.ESHUTDOWN, errno.ENOTCONN})
#: The base class of each binding's errors (rbd.Error does not derive from rados.Error).
BASE_ERRORS = {"rados": ("Error",), "rbd": ("Error",)}

#: librados options that keep its own log away from stderr and out of any file. They take effect
#: only once the context has a cluster name (`clustername` below): without one, librados applies
#: no option to its log before `connect()` has decoded the key, and prints a key it cannot decode
#: to stderr.
QUIET_LOGGING = {
    "log_to_stderr": "false",
    "err_to_stderr": "false",
    "log_to_file": "false",
    "log_file": "/dev/null",
    "log_to_syslog": "false",
    "err_to_syslog": "false",
}
CLUSTER_NAME = "ceph"

#: A CephX key as `ceph-authtool --gen-print-key` and `ceph auth get-key` print it: base64 of
#: le16 type (1 = AES), le32 seconds + le32 nanoseconds created, le16 secret length (16), secret.
CEPHX_KEY_HEADER = struct.Struct("<HIIH")
CEPHX_AES = 1
CEPHX_AES_SECRET_BYTES = 16


def cephx_key_problem(key: str) -> str | None:
    """What makes `key` unusable as a CephX key, or None when it has the shape of one. The answer
    never quotes the key."""
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return "not base64"
    if len(raw) < CEPHX_KEY_HEADER.size:
        return f"{len(raw)} bytes once decoded, a CephX key has {CEPHX_KEY_HEADER.size + 16}"
    key_type, _, _, secret_len = CEPHX_KEY_HEADER.unpack_from(raw)
    if key_type != CEPHX_AES:
        return f"key type {key_type}, a CephX key has type {CEPHX_AES} (AES)"
    if secret_len != CEPHX_AES_SECRET_BYTES or len(raw) != CEPHX_KEY_HEADER.size + secret_len:
        return (
            f"{len(raw)} bytes once decoded, a CephX key has "
            f"{CEPHX_KEY_HEADER.size + CEPHX_AES_SECRET_BYTES}"
        )
    return None


def _classes(names: Mapping[str, tuple[str, ...]]) -> tuple[type[BaseException], ...]:
    """The named exception classes of the bindings already imported: an exception of a binding
    that was never imported cannot have been raised."""
    found: list[type[BaseException]] = []
    for module_name, class_names in names.items():
        module = sys.modules.get(module_name)
        if module is not None:
            found.extend(getattr(module, name) for name in class_names)
    return tuple(found)


def translate(err: BaseException, what: str, *, user: str = "") -> CephError | None:
    """This package's error for a librados/librbd exception `err` raised while doing `what`;
    None for anything else."""
    if not isinstance(err, _classes(BASE_ERRORS)):
        return None
    code = getattr(err, "errno", None)
    if isinstance(err, _classes(PERMISSION_ERRORS)) or code in PERMISSION_ERRNOS:
        who = f"client.{user}" if user else "the Ceph user"
        return CephPermissionDenied(
            f"{what}: permission denied ({type(err).__name__}): {who}'s key or caps do not "
            "allow it; nothing will change until they do"
        )
    if isinstance(err, _classes(UNAVAILABLE_ERRORS)) or code in UNAVAILABLE_ERRNOS:
        return CephUnavailable(f"{what}: no answer in time ({type(err).__name__}: {err})")
    return CephError(f"{what}: {type(err).__name__}: {err}")


def _import(name: str) -> ModuleType:
    """Ceph's bindings come from Debian's python3-rados/python3-rbd; import them on first use."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise CephBindingsMissing(
            f"the Python module {name!r} is missing: install Debian's python3-{name} and link "
            f"it into this interpreter (`make setup` does)"
        ) from err


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mon_host = mon_host
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
        rados = _import("rados")
        problem = cephx_key_problem(self._credentials.key)
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
            await asyncio.wait(
                [asyncio.wrap_future(future) for future in pending],
                timeout=self.timeout if grace is None else grace,
            )
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
        rados = _import("rados")
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
            rados = _import("rados")
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
        rados = _import("rados")

        def lookup() -> str:
            name: str = self._rados.pool_reverse_lookup(pool_id)
            return name

        try:
            return await self._run(f"looking up pool ID {pool_id}", lookup)
        except rados.ObjectNotFound as err:
            raise PoolNotFound(f"#{pool_id}") from err

    async def omap_get(
        self, pool: str, namespace: str, oid: str, keys: Sequence[str] | None = None
    ) -> dict[str, bytes] | None:
        """The object's omap (only `keys` if given), or None when the object does not exist."""
        rados = _import("rados")

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
        rados = _import("rados")
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
        rados = _import("rados")

        def remove() -> None:
            ioctx = self._ioctx(pool, namespace)
            with rados.WriteOpCtx() as op:
                ioctx.remove_omap_keys(op, tuple(keys))
                ioctx.operate_write_op(op, oid)

        with contextlib.suppress(rados.ObjectNotFound):
            await self._run(f"removing omap keys of {oid!r} in pool {pool!r}", remove)

    async def remove_object(self, pool: str, namespace: str, oid: str) -> None:
        rados = _import("rados")

        def remove() -> None:
            self._ioctx(pool, namespace).remove_object(oid)

        with contextlib.suppress(rados.ObjectNotFound):
            await self._run(f"removing {oid!r} in pool {pool!r}", remove)

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
        rados = _import("rados")
        rbd = _import("rbd")

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


class ConnectionPool:
    """One `CephConnection` per (monitors, user, key), shared by every caller.

    A connection unused for `idle_timeout` seconds is closed, and so are the connections of a
    user's other keys once a new key of that user connects to the same monitors: Ceph keeps one
    key per user, so a new one that works means the old one was rotated. Closing happens in the
    background and waits for the calls still running (`CephConnection.aclose`).
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        threads: int = DEFAULT_THREADS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.threads = threads
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._connections: dict[tuple[str, str, str], asyncio.Task[CephConnection]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None

    async def get(self, mon_host: str, credentials: Credentials) -> CephConnection:
        key = (mon_host, credentials.user, credentials.fingerprint())
        task = self._connections.get(key)
        if task is None:
            # Concurrent callers for one cluster share a single connect attempt.
            task = asyncio.ensure_future(self._open(mon_host, credentials))
            self._connections[key] = task
        try:
            connection = await asyncio.shield(task)
        except Exception:
            # A failed attempt (CephError, InvalidCephKey, ...) is not cached: the next caller
            # tries afresh.
            if self._connections.get(key) is task:
                del self._connections[key]
            raise
        connection.last_used = self._clock()
        self.evict(fresh=key)
        self._start_reaper()
        return connection

    async def _open(self, mon_host: str, credentials: Credentials) -> CephConnection:
        connection = CephConnection(
            mon_host, credentials, self.timeout, self.threads, clock=self._clock
        )
        try:
            await connection.connect()
        except BaseException:
            await connection.aclose()
            raise
        return connection

    def evict(self, fresh: tuple[str, str, str] | None = None) -> int:
        """Close (in the background) the connections idle for `idle_timeout` and without a call
        running, and, given the key `fresh` of a connection that just served, the others of its
        monitors and user: their key was rotated. Returns how many were closed."""
        now = self._clock()
        evicted = 0
        for key, task in list(self._connections.items()):
            if key == fresh or not task.done() or task.cancelled() or task.exception():
                continue
            connection = task.result()
            rotated = fresh is not None and key[:2] == fresh[:2]
            idle = not connection.busy and now - connection.last_used >= self.idle_timeout
            if rotated or idle:
                del self._connections[key]
                log.info(
                    "closing a Ceph connection",
                    extra={
                        "mon_host": key[0],
                        "user": key[1],
                        "why": "its user's key was rotated" if rotated else "unused",
                    },
                )
                closing = asyncio.create_task(connection.aclose())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
                evicted += 1
        return evicted

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap(), name="ceph-connection-reaper")

    async def _reap(self) -> None:
        """Evict idle connections while there are any (the next `get` starts it again)."""
        while self._connections:
            await asyncio.sleep(max(self.idle_timeout / 2, 0.01))
            self.evict()

    def __len__(self) -> int:
        return len(self._connections)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        tasks = list(self._connections.values())
        self._connections.clear()
        closing: list[Any] = list(self._closing)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is None:
                closing.append(task.result().aclose())
            else:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await asyncio.gather(*closing, return_exceptions=True)
