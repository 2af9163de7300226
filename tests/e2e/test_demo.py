"""`make demo` is the README's first command: a real failover repaired by the controller."""

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
    out = done.stdout
    assert "ceph-csi journal objects on site-b: 0 (OMAP is not mirrored)" in out
    assert out.count("JournalRegenerated") == 3
    assert out.count("0001-0006-site-b-0000000000000002-") >= 3
    assert '"site-a": "site-b"' in out  # ceph-csi's cluster-mapping.json, rendered
    assert "its VolumeHandleMapping goes with it\n   gone" in out
    assert "demo: OK" in out
