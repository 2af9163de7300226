"""`make demo` is the README's first command: a real failover repaired by the controller."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.sandbox.checkout import Checkout

# The demo starts a Ceph pair and an API server of its own.
pytestmark = [pytest.mark.e2e, pytest.mark.owns_apiserver]


def test_demo_fails_over_and_converges(tmp_path: Path, checkout: Checkout) -> None:
    demo = ["sandbox", "demo", "--dir", str(tmp_path / "demo"), "--source", str(checkout.root)]
    done = subprocess.run(
        [sys.executable, "-m", "reconciler", *demo],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "ceph-csi journal objects on site-b: 0 (OMAP is not mirrored)" in out
    table_rows = [line for line in out.splitlines() if line.startswith("pvc-demo-")]
    assert len(table_rows) == 3 and all("JournalRegenerated" in row for row in table_rows)
    # The progress metrics, read from the running controller's /metrics.
    assert "rbd_mirror_reconciler_volumes_pending 0.0" in out
    ready = (
        "rbd_mirror_reconciler_volume_handle_mappings"
        '{degraded="false",ready="true",reason="JournalRegenerated"}'
    )
    assert f"{ready} 3.0" in out
    assert out.count("0001-0006-site-b-0000000000000002-") >= 3
    assert '"site-a": "site-b"' in out  # ceph-csi's cluster-mapping.json, rendered
    assert "its VolumeHandleMapping goes with it\n   gone" in out
    assert "demo: OK" in out
