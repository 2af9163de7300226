"""`make demo` is the README's first command: it must work end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_demo_fails_over_and_converges(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", "sandbox", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ceph-csi journal objects on site-b: 0 (OMAP is not mirrored)" in done.stdout
    assert done.stdout.count("second run wrote nothing (converged)") == 3
    assert "-> 0001-0006-site-b-" in done.stdout
    assert "demo: OK" in done.stdout
