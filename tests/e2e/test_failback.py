"""Two-way mirroring (`sandbox up --failback`): what site-b writes after a failover flows back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.sandbox.pair import SitePair, start_pair
from reconciler.sandbox.process import pid_alive
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_way_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SitePair]:
    pair = start_pair(Path(tmp_path_factory.mktemp("failback")), mirror_daemon_on_a=True)
    pids = pair.site_a.daemons.pids() + pair.site_b.daemons.pids()
    yield pair
    pair.stop()
    assert not [pid for pid in pids if pid_alive(pid)]


def test_image_created_on_site_b_mirrors_back_to_site_a(two_way_pair: SitePair) -> None:
    assert any("rbd-mirror" in d.name for d in two_way_pair.site_a.daemons.daemons)
    image = f"back-{uuid.uuid4().hex[:8]}"
    spec = f"{two_way_pair.pool}/{image}"
    two_way_pair.site_b.rbd("create", "--size", "8M", spec)
    two_way_pair.site_b.rbd("mirror", "image", "enable", spec, "snapshot")
    wait_for(
        lambda: two_way_pair.site_a.mirror_state(two_way_pair.pool, image) == "up+replaying",
        timeout=90,
        what=f"{spec} replaying on site-a",
    )
