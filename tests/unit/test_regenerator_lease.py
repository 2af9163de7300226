"""Reading ceph-csi's regenerator Lease: held and fresh means a second writer on the journals."""

from __future__ import annotations

import datetime
import logging

import pytest

from reconciler.controllers.regenerator import RegeneratorWatch, lease_state
from tests.unit.conftest import RecordingApiClient

NOW = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)
NAME = "rbd.csi.ceph.com-ceph-csi"


def lease(holder: str, renewed_seconds_ago: float, duration: int = 137) -> dict[str, object]:
    renewed = NOW - datetime.timedelta(seconds=renewed_seconds_ago)
    return {
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration,
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
    }


def test_a_held_fresh_lease_is_a_running_regenerator() -> None:
    state = lease_state(lease("provisioner-0", 5), NAME, NOW)
    assert state.active
    assert "provisioner-0" in state.message and NAME in state.message


def test_absent_released_or_long_expired_leases_are_not() -> None:
    assert not lease_state(None, NAME, NOW).active
    assert not lease_state(lease("", 5), NAME, NOW).active
    assert not lease_state({"spec": {"holderIdentity": "x"}}, NAME, NOW).active
    expired = lease_state(lease("provisioner-0", 300, duration=137), NAME, NOW)
    assert not expired.active and "expired 300 s ago" in expired.message
    # Within twice its duration it still counts: clocks of nodes differ a little.
    assert lease_state(lease("provisioner-0", 200, duration=137), NAME, NOW).active


async def test_a_change_is_logged_and_heard_of(
    api: RecordingApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Read through the real request path; a second read of the same Lease changes nothing."""
    heard: list[bool] = []
    renewed = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path = f"/apis/coordination.k8s.io/v1/namespaces/ceph-csi/leases/{NAME}"
    api.objects[path] = {
        "spec": {"holderIdentity": "p-0", "leaseDurationSeconds": 137, "renewTime": renewed}
    }
    watch = RegeneratorWatch(
        api,
        namespace="ceph-csi",
        driver_name="rbd.csi.ceph.com",
        on_change=lambda: heard.append(watch.state.active),
    )
    with caplog.at_level(logging.INFO):
        await watch.refresh()
        await watch.refresh()
    assert heard == [True]
    assert any(r.getMessage() == "ceph-csi's journal regenerator" for r in caplog.records)
