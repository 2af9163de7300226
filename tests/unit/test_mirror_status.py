"""rbd-mirror's pool-level listings merged into one view per image (reconciler.mirror)."""

from __future__ import annotations

import datetime
from typing import Any

from reconciler.mirror import (
    FROM_STATUS,
    description_fields,
    merge_listing,
    newest_synced_snapshot,
    status_state,
    synced_snapshot_time,
    utc_seconds,
)

#: As Ceph 16.2.15's rbd-mirror wrote it for a replaying snapshot-mirrored image.
REPLAYING = (
    'replaying, {"bytes_per_second":0.0,"bytes_per_snapshot":0.0,"last_snapshot_bytes":0,'
    '"last_snapshot_sync_seconds":0,"local_snapshot_timestamp":1795996680,'
    '"remote_snapshot_timestamp":1795996800,"replay_state":"idle"}'
)


def test_the_synced_snapshot_time_is_the_local_snapshot_timestamp() -> None:
    assert synced_snapshot_time(REPLAYING) == 1795996680.0
    assert description_fields(REPLAYING)["replay_state"] == "idle"


def test_descriptions_without_a_time_give_none() -> None:
    for description in ("stopped", "status not found", "", "replaying, {not json", "x, [1]"):
        assert synced_snapshot_time(description) is None
    assert synced_snapshot_time('replaying, {"local_snapshot_timestamp":0}') is None
    assert synced_snapshot_time('replaying, {"local_snapshot_timestamp":true}') is None


def test_states_read_as_the_rbd_cli_prints_them() -> None:
    assert status_state(4, True) == "up+replaying"
    assert status_state(6, False) == "down+stopped"
    assert status_state(99, True) == "up+state99"


def test_binding_datetimes_are_utc() -> None:
    naive = datetime.datetime(2026, 11, 29, 23, 58, 0)
    assert utc_seconds(naive) == 1795996680.0
    assert utc_seconds("2026-11-29") is None


def listings() -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]], list[Any]]:
    images = [
        {"id": "a1", "name": "csi-vol-a"},
        {"id": "b2", "name": "csi-vol-b"},
        {"id": "c3", "name": "plain"},
        {"id": "d4", "name": "promoted"},
    ]
    infos = [
        ("a1", {"mode": 1, "global_id": "ga", "state": 1, "primary": False}),
        ("b2", {"mode": 1, "global_id": "gb", "state": 1, "primary": False}),
        ("d4", {"mode": 0, "global_id": "gd", "state": 1, "primary": True}),
    ]
    statuses = [
        {
            "name": "csi-vol-a",
            "id": "a1",
            "state": 4,
            "description": REPLAYING,
            "last_update": datetime.datetime(2026, 11, 30, 0, 0, 46),
            "up": True,
        },
        {"name": "csi-vol-b", "id": "b2", "state": 6, "description": "stopped", "up": False},
        {"name": "promoted", "id": "d4", "state": 6, "description": "local image is primary"},
    ]
    return images, infos, statuses


def test_merge_gives_every_image_its_mirroring() -> None:
    merged = {i.name: i for i in merge_listing("rbd", "", *listings())}

    a = merged["csi-vol-a"]
    assert (a.mirrored, a.mode, a.primary, a.replica) == (True, "snapshot", False, True)
    assert (a.state, a.snapshot_time, a.snapshot_source) == (
        "up+replaying",
        1795996680.0,
        FROM_STATUS,
    )
    assert a.last_update == 1795996846.0
    assert a.snapshot_age(1795996700.0) == 20.0

    b = merged["csi-vol-b"]
    assert (b.state, b.snapshot_time, b.replica, b.replaying) == ("down+stopped", None, True, False)

    plain = merged["plain"]
    assert (plain.mirrored, plain.primary, plain.state, plain.mode) == (False, None, "", "")

    promoted = merged["promoted"]
    assert (promoted.primary, promoted.replica, promoted.mode) == (True, False, "journal")


def test_the_newest_complete_non_primary_snapshot_is_the_synced_one() -> None:
    def snap(snap_id: int, state: int, complete: bool, namespace: int = 3) -> dict[str, Any]:
        return {
            "id": snap_id,
            "namespace": namespace,
            "mirror": {"state": state, "complete": complete},
        }

    snapshots = [
        snap(4, 2, True),
        snap(9, 2, False),  # still syncing
        snap(7, 2, True),
        snap(11, 0, True),  # a primary snapshot (after a promotion)
        {"id": 12, "namespace": 0, "name": "user-snap"},
    ]
    assert newest_synced_snapshot(snapshots) == 7
    assert newest_synced_snapshot([snap(9, 2, False)]) is None


def test_the_status_read_now_corrects_an_older_info_listing() -> None:
    """Info listings are kept for minutes; a promotion or demotion since shows in the status."""
    images = [{"id": "p", "name": "promoted-since"}, {"id": "d", "name": "demoted-since"}]
    infos = [
        ("p", {"mode": 1, "global_id": "gp", "state": 1, "primary": False}),
        ("d", {"mode": 1, "global_id": "gd", "state": 1, "primary": True}),
    ]
    statuses = [
        {"id": "p", "state": 6, "description": "local image is primary", "up": True},
        {"id": "d", "state": 4, "description": REPLAYING, "up": True},
    ]
    merged = {i.name: i for i in merge_listing("rbd", "", images, infos, statuses)}
    assert merged["promoted-since"].primary is True
    assert merged["demoted-since"].primary is False
    assert merged["demoted-since"].replica
