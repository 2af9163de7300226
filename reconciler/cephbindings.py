"""Ceph's own Python bindings (Debian's python3-rados/python3-rbd): imported on first use,
their exceptions turned into this package's errors by their real names, librados' log kept quiet,
and a CephX key's shape checked before librados sees it (librados logs a key it cannot decode).

librados/librbd exceptions become this package's errors by their real names in Ceph 16.2.15's
bindings (`PERMISSION_ERRORS`, `UNAVAILABLE_ERRORS`; tests/unit/test_ceph_errors.py checks every
name against the real modules): permission denied is CephPermissionDenied, a timeout or a lost
connection CephUnavailable, anything else CephError.
"""

from __future__ import annotations

import base64
import binascii
import errno
import importlib
import struct
import sys
from collections.abc import Mapping
from types import ModuleType

from reconciler.errors import (
    CephBindingsMissing,
    CephError,
    CephPermissionDenied,
    CephUnavailable,
)

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


def import_binding(name: str) -> ModuleType:
    """Ceph's bindings come from Debian's python3-rados/python3-rbd; import them on first use."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise CephBindingsMissing(
            f"the Python module {name!r} is missing: install Debian's python3-{name} and link "
            f"it into this interpreter (`make setup` does)"
        ) from err
