"""The package must work where Ceph's bindings are missing, and say so only when Ceph is used; the
controller (`run`) must work without the sandbox extra and what only it needs (`cryptography`)."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_CEPH = "import sys; sys.modules['rados'] = None; sys.modules['rbd'] = None; "
# A module set to None in sys.modules cannot be imported: as if it were not installed.
WITHOUT_SANDBOX = (
    "import sys; sys.modules['reconciler.sandbox'] = None; sys.modules['cryptography'] = None; "
)


def python(code: str, blocked: str = WITHOUT_CEPH) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", blocked + code], capture_output=True, text=True, check=False
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
        "from reconciler.cephconn import Credentials\n"
        "from reconciler.cephpool import ConnectionPool\n"
        "asyncio.run(ConnectionPool().get('127.0.0.1:1', Credentials('u', 'k')))"
    )
    assert done.returncode == 1
    assert "install Debian's python3-rados" in done.stderr


def test_run_works_without_the_sandbox_extra_or_cryptography() -> None:
    run_help = (
        "from reconciler.cli import main\n"
        "try:\n"
        "    main(['run', '--help'])\n"
        "except SystemExit as stop:\n"
        "    assert stop.code == 0, stop.code\n"
        "loaded = [m for m, module in sys.modules.items() if module is not None\n"
        "          and m.startswith(('reconciler.sandbox', 'cryptography'))]\n"
        "assert loaded == [], loaded\n"
    )
    # Installed, they are not imported; not installed, they are not missed.
    for blocked in ("import sys; ", WITHOUT_SANDBOX):
        done = python(run_help, blocked=blocked)
        assert done.returncode == 0, done.stderr
        assert "--local-cluster-id" in done.stdout


def test_the_sandbox_commands_need_the_extra_only_when_run() -> None:
    done = python(
        "from reconciler.cli import main; main(['sandbox', 'down', '--dir', '/nonexistent'])",
        blocked=WITHOUT_SANDBOX,
    )
    assert done.returncode == 1
    assert "reconciler.sandbox" in done.stderr  # the import fails there, not when parsing
