"""The package must work where Ceph's bindings are missing, and say so only when Ceph is used."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_CEPH = "import sys; sys.modules['rados'] = None; sys.modules['rbd'] = None; "


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_CEPH + code], capture_output=True, text=True, check=False
    )


def test_cli_works_without_ceph_bindings() -> None:
    done = python(
        "from reconciler.cli import main; "
        "raise SystemExit(main(['handle', 'encode', '--cluster-id', 'c', '--pool-id', '1', "
        "'--uuid', '0c23de1c-18fb-11eb-a903-0242ac110005']))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0001-0001-c-0000000000000001-")


def test_using_ceph_without_bindings_says_what_to_install() -> None:
    done = python(
        "import asyncio\n"
        "from reconciler.cephconn import ConnectionPool, Credentials\n"
        "asyncio.run(ConnectionPool().get('127.0.0.1:1', Credentials('u', 'k')))"
    )
    assert done.returncode == 1
    assert "install Debian's python3-rados" in done.stderr
