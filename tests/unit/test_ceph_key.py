"""A Ceph key that cannot be a CephX key is refused before librados sees it, without showing it;
and librados' own log stays off stderr even when it is handed one (it prints such a key, in
clear, when its log is left as it starts)."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from typing import Any

import pytest

from reconciler.cephbindings import cephx_key_problem
from reconciler.cephconn import CephConnection, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.errors import CephUnavailable, InvalidCephKey, InvalidSecret
from reconciler.kubeinputs import secret_credentials
from tests.unit.conftest import RecordingApiClient

#: What `ceph-authtool --gen-print-key` printed once; no cluster knows it.
GOOD_KEY = "AQCjtAxrXmteLhAAU+Qo+eqJWuNJPZz4uqi+SQ=="
#: The issue's reproduction: librados printed "failed to decode key '<the key>'" to stderr.
MALFORMED = "SECRETSECRETSECRETSECRETSECRETSECRET"


def cephx(key_type: int = 1, secret: bytes = b"s" * 16, declared: int | None = None) -> str:
    header = struct.pack(
        "<HIIH", key_type, 1700000000, 0, len(secret) if declared is None else declared
    )
    return base64.b64encode(header + secret).decode()


def parts_of(key: str, size: int = 6) -> list[str]:
    return [key[i : i + size] for i in range(len(key) - size + 1)]


def test_keys_ceph_generates_have_the_shape() -> None:
    assert cephx_key_problem(GOOD_KEY) is None
    assert cephx_key_problem(cephx()) is None
    # Debian's ceph-common, which `make setup` installs: the keys Ceph itself makes.
    assert shutil.which("ceph-authtool"), "ceph-authtool is missing: run `make setup`"
    for _ in range(3):
        key = subprocess.run(
            ["ceph-authtool", "--gen-print-key"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert cephx_key_problem(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "",
        "k",
        MALFORMED,
        GOOD_KEY[:-2],  # padding cut off
        GOOD_KEY[:20] + "\n" + GOOD_KEY[20:],  # librados would skip the newline; we do not
        GOOD_KEY + "AAAA",  # trailing bytes
        "ÄQCjtAxrXmteLhAAU+Qo+eqJWuNJPZz4uqi+SQ==",
        cephx(key_type=0, secret=b""),  # CEPH_CRYPTO_NONE: no secret at all
        cephx(key_type=2),
        cephx(secret=b"s" * 15),
        cephx(declared=32),
    ],
)
def test_anything_else_is_refused_without_quoting_it(key: str) -> None:
    problem = cephx_key_problem(key)
    assert problem is not None
    assert not [part for part in parts_of(key) if part in problem]


async def test_a_malformed_key_never_reaches_librados(capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rados")
    pool = ConnectionPool(timeout=1)
    try:
        with pytest.raises(InvalidCephKey) as refused:
            await pool.get("v2:127.0.0.1:1", Credentials("csi", MALFORMED))
        assert len(pool) == 0  # not cached: a corrected Secret is tried afresh
    finally:
        await pool.close()
    assert refused.value.reason == "InvalidCephKey" and not refused.value.retryable
    assert "client.csi" in str(refused.value)
    stderr = capfd.readouterr().err
    for text in (str(refused.value), stderr):
        assert not [part for part in parts_of(MALFORMED) if part in text]


async def test_librados_logs_nothing_to_stderr_even_when_handed_a_malformed_key(
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Without the check before connecting, the real librados decodes the key itself (it does so
    # before contacting any monitor) and fails: its log must not show it anywhere.
    connection = CephConnection(
        "v2:127.0.0.1:1", Credentials("csi", MALFORMED), 1, 1, key_check=lambda key: None
    )
    try:
        with pytest.raises(CephUnavailable) as failed:
            await connection.connect()
    finally:
        await connection.aclose()
    captured = capfd.readouterr()
    assert "InvalidArgumentError" in str(failed.value)
    for text in (captured.err, captured.out, str(failed.value)):
        assert not [part for part in parts_of(MALFORMED) if part in text], text


def secret(user: str, key: str) -> dict[str, Any]:
    encode = base64.b64encode
    return {
        "metadata": {"name": "csi-secret", "namespace": "ceph-csi"},
        "data": {
            "userID": encode(user.encode()).decode(),
            "userKey": encode(key.encode()).decode(),
        },
    }


async def test_a_secret_with_a_malformed_key_is_invalid_secret_without_the_key(
    api: RecordingApiClient,
) -> None:
    api.add_secret(secret("csi", MALFORMED))
    with pytest.raises(InvalidSecret) as invalid:
        await secret_credentials(api, "csi-secret", "ceph-csi")
    assert "ceph-csi/csi-secret" in str(invalid.value) and "CephX" in str(invalid.value)
    assert not [part for part in parts_of(MALFORMED) if part in str(invalid.value)]
    assert invalid.value.__cause__ is None and invalid.value.__context__ is None


async def test_a_secret_key_with_a_trailing_newline_is_taken_as_ceph_csi_takes_it(
    api: RecordingApiClient,
) -> None:
    api.add_secret(secret("csi", GOOD_KEY + "\n"))
    credentials = await secret_credentials(api, "csi-secret", "ceph-csi")
    assert (credentials.user, credentials.key) == ("csi", GOOD_KEY)
