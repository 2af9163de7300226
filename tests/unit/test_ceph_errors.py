"""librados/librbd errors become this package's errors by the names Ceph 16.2.15's real bindings
define, checked here against the real `rados` and `rbd` modules (linked into the venv by
`make setup`), not against names remembered from somewhere else: `rbd.TimedOut` does not exist,
and naming it turned every librbd error into an AttributeError."""

from __future__ import annotations

import ast
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import cephconn
from reconciler.cephbindings import BASE_ERRORS, PERMISSION_ERRORS, UNAVAILABLE_ERRORS, translate
from reconciler.cephconn import CephConnection, Credentials
from reconciler.errors import (
    CephError,
    CephPermissionDenied,
    CephUnavailable,
    ImageNotFound,
    ObjectChanged,
)

rados = pytest.importorskip("rados")
rbd = pytest.importorskip("rbd")

PACKAGE = Path(cephconn.__file__).parent
KEY = "AQCjtAxrXmteLhAAU+Qo+eqJWuNJPZz4uqi+SQ=="  # the shape of a CephX key; no cluster knows it


def bound_bindings(tree: ast.AST) -> set[str]:
    """Which of `rados`/`rbd` a module binds to the binding itself (`import rados`, or
    `rados = import_binding("rados")` as cephconn does): elsewhere the name may be anything."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bound |= {a.name for a in node.names if a.name in ("rados", "rbd") and not a.asname}
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) in ("import_binding", "importlib.import_module")
            and node.value.args
            and isinstance(node.value.args[0], ast.Constant)
        ):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == node.value.args[0].value:
                    bound |= {target.id} & {"rados", "rbd"}
    return bound


def binding_references(source: str) -> Iterator[tuple[str, str, int]]:
    """(module, attribute, line) for every `rados.X` / `rbd.X` in `source` where that name is
    bound to the binding."""
    tree = ast.parse(source)
    bound = bound_bindings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
        ):
            yield node.value.id, node.attr, node.lineno


def test_the_reference_scan_sees_cephconns_use_of_the_bindings() -> None:
    found = {f"{m}.{a}" for m, a, _ in binding_references(Path(cephconn.__file__).read_text())}
    assert {"rados.ObjectExists", "rbd.Image", "rados.LIBRADOS_CMPXATTR_OP_EQ"} <= found
    # The defect this guards against, caught by the same scan:
    assert list(binding_references('rbd = import_binding("rbd")\nrbd.TimedOut\n')) == [
        ("rbd", "TimedOut", 2)
    ]


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_every_binding_name_the_package_uses_exists(path: Path) -> None:
    modules = {"rados": rados, "rbd": rbd}
    missing = [
        f"{module}.{name} (line {line})"
        for module, name, line in binding_references(path.read_text())
        if not hasattr(modules[module], name)
    ]
    assert not missing, f"{path.name} names what Ceph 16.2.15's bindings do not have: {missing}"


@pytest.mark.parametrize("table", [BASE_ERRORS, PERMISSION_ERRORS, UNAVAILABLE_ERRORS])
def test_every_mapped_name_is_a_real_exception_class(table: dict[str, tuple[str, ...]]) -> None:
    modules = {"rados": rados, "rbd": rbd}
    for module, names in table.items():
        for name in names:
            found = getattr(modules[module], name, None)
            assert isinstance(found, type) and issubclass(found, Exception), f"{module}.{name}"
            assert issubclass(found, modules[module].Error), f"{module}.{name}"


def raised(module: Any, name: str, code: int | None) -> BaseException:
    """An instance as the binding raises it (`make_ex` passes the errno)."""
    cls = getattr(module, name)
    if issubclass(cls, module.OSError):
        return cls("injected", errno=code)  # type: ignore[no-any-return]
    return cls("injected")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("module", "name", "code", "ours"),
    [
        # librados: the OSD refusing an op (EPERM), the monitors refusing a user (EACCES).
        ("rados", "PermissionError", errno.EPERM, CephPermissionDenied),
        ("rados", "PermissionDeniedError", errno.EACCES, CephPermissionDenied),
        ("rados", "TimedOut", errno.ETIMEDOUT, CephUnavailable),
        ("rados", "InterruptedOrTimeoutError", errno.EINTR, CephUnavailable),
        ("rados", "ConnectionShutdown", errno.ESHUTDOWN, CephUnavailable),
        ("rados", "NotConnected", errno.ENOTCONN, CephUnavailable),
        ("rados", "IOError", errno.EIO, CephError),
        ("rados", "NoSpace", errno.ENOSPC, CephError),
        # librbd: no TimedOut, but Timeout; EACCES has no class (a plain rbd.OSError).
        ("rbd", "PermissionError", errno.EPERM, CephPermissionDenied),
        ("rbd", "OSError", errno.EACCES, CephPermissionDenied),
        ("rbd", "Timeout", errno.ETIMEDOUT, CephUnavailable),
        ("rbd", "ConnectionShutdown", errno.ESHUTDOWN, CephUnavailable),
        ("rbd", "IOError", errno.EIO, CephError),
        ("rbd", "InvalidArgument", errno.EINVAL, CephError),
    ],
)
def test_binding_errors_map_to_ours(
    module: str, name: str, code: int, ours: type[CephError]
) -> None:
    err = raised({"rados": rados, "rbd": rbd}[module], name, code)
    translated = translate(err, "reading omap of 'x' in pool 'p'", user="csi")
    assert type(translated) is ours
    assert translated is not None and "reading omap of 'x'" in str(translated)


def test_permission_denied_is_its_own_reason_and_waits_for_a_change() -> None:
    denied = translate(rados.PermissionError("injected", errno=errno.EPERM), "x", user="csi")
    assert isinstance(denied, CephPermissionDenied)
    assert (denied.reason, denied.retryable) == ("CephPermissionDenied", False)
    assert "client.csi" in str(denied)
    unavailable = translate(rbd.Timeout("injected", errno=errno.ETIMEDOUT), "x")
    assert isinstance(unavailable, CephUnavailable) and unavailable.retryable


def test_anything_else_is_not_translated() -> None:
    assert translate(ValueError("not Ceph's"), "x") is None


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[CephConnection]:
    """A connection whose librados calls never leave the process: `_ioctx` hands out a stand-in,
    and tests replace the binding call they exercise with one raising the binding's error."""
    conn = CephConnection("v2:127.0.0.1:1", Credentials("csi", KEY), timeout=1, threads=1)
    monkeypatch.setattr(conn, "_ioctx", lambda pool, namespace: object())
    yield conn
    conn.close()


@pytest.mark.parametrize(
    ("error", "ours"),
    [
        (lambda: rbd.Timeout("injected", errno=errno.ETIMEDOUT), CephUnavailable),
        (lambda: rbd.PermissionError("injected", errno=errno.EPERM), CephPermissionDenied),
        (lambda: rbd.OSError("injected", errno=errno.EACCES), CephPermissionDenied),
        (lambda: rbd.IOError("injected", errno=errno.EIO), CephError),
        (lambda: rbd.ImageNotFound("injected", errno=errno.ENOENT), ImageNotFound),
    ],
)
async def test_opening_an_image_maps_librbd_errors(
    connection: CephConnection,
    monkeypatch: pytest.MonkeyPatch,
    error: Any,
    ours: type[CephError],
) -> None:
    def image(*args: object, **kwargs: object) -> None:
        raise error()

    monkeypatch.setattr(rbd, "Image", image)
    with pytest.raises(ours) as caught:
        await connection.image_info("replicapool", "", "csi-vol-x")
    assert type(caught.value) is ours


class FailingIoctx:
    """Raises `error` from the call that runs an op, as librados does when the OSD answers so."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def get_omap_vals(self, *args: object) -> tuple[list[Any], int]:
        return [], 0

    def set_omap(self, *args: object) -> None:
        pass

    def operate_read_op(self, *args: object) -> None:
        raise self.error

    def operate_write_op(self, *args: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "ours"),
    [
        (rados.PermissionError("injected", errno=errno.EPERM), CephPermissionDenied),
        (rados.TimedOut("injected", errno=errno.ETIMEDOUT), CephUnavailable),
        (rados.IOError("injected", errno=errno.EIO), CephError),
    ],
)
async def test_omap_calls_map_librados_errors(
    connection: CephConnection,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    ours: type[CephError],
) -> None:
    monkeypatch.setattr(connection, "_ioctx", lambda pool, namespace: FailingIoctx(error))
    with pytest.raises(ours) as read:
        await connection.omap_get("replicapool", "", "csi.volumes.default")
    assert type(read.value) is ours
    with pytest.raises(ours) as write:
        await connection.omap_set("replicapool", "", "csi.volumes.default", {"k": b"v"})
    assert type(write.value) is ours


async def test_a_failed_comparison_is_a_change_not_an_error(
    connection: CephConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What librados answers when an omap_cmp of the op fails: ECANCELED, a plain rados.OSError.
    canceled = rados.OSError("Failed to operate write op", errno=errno.ECANCELED)
    monkeypatch.setattr(connection, "_ioctx", lambda pool, namespace: FailingIoctx(canceled))
    with pytest.raises(ObjectChanged):
        await connection.omap_set(
            "replicapool", "", "csi.volumes.default", {"k": b"v"}, expect={"k": b""}
        )
    with pytest.raises(CephError) as unconditional:  # no comparison: not a lost race
        await connection.omap_set("replicapool", "", "csi.volumes.default", {"k": b"v"})
    assert not isinstance(unconditional.value, ObjectChanged)
