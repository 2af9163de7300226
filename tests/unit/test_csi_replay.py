"""The tests' stand-in for ceph-csi states ceph-csi's formats and order on its own; these check
that statement without a cluster (the product is used only to read its output back)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.handle import VolumeHandle
from tests.support.csi_replay import ceph_csi_handle, reserve
from tests.unit.conftest import UUID


@pytest.mark.parametrize(
    ("cluster_id", "pool_id", "expected"),
    [
        ("rook-ceph", 2, f"0001-0009-rook-ceph-0000000000000002-{UUID}"),
        ("site1-storage", 2, f"0001-000d-site1-storage-0000000000000002-{UUID}"),
        # Go's len() counts bytes: "é" is two.
        ("café", 2, f"0001-0005-café-0000000000000002-{UUID}"),
        # An int64 written as uint64, as ceph-csi's binary.BigEndian.PutUint64(uint64(id)) does.
        ("c", -1, f"0001-0001-c-ffffffffffffffff-{UUID}"),
    ],
)
def test_handle_as_ceph_csi_composes_it(cluster_id: str, pool_id: int, expected: str) -> None:
    handle = ceph_csi_handle(cluster_id, pool_id, UUID)
    assert handle == expected
    assert VolumeHandle.decode(handle) == VolumeHandle(cluster_id, pool_id, UUID)


class RecordingIoctx:
    """Records each write op as (object, omap keys it sets), in the order they are operated."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[str, ...]] = {}
        self.operated: list[tuple[str, tuple[str, ...]]] = []

    def set_omap(self, op: Any, keys: tuple[str, ...], values: tuple[bytes, ...]) -> None:
        self.pending[id(op)] = self.pending.get(id(op), ()) + keys

    def operate_write_op(self, op: Any, oid: str) -> None:
        self.operated.append((oid, self.pending.pop(id(op), ())))


def test_reservation_in_ceph_csi_order() -> None:
    io = RecordingIoctx()
    reserve(io, "pvc-1", UUID, f"csi-vol-{UUID}", "apps")
    assert io.operated == [
        (f"csi.volume.{UUID}", ()),  # the exclusive create that reserves the UUID
        ("csi.volumes.default", ("csi.volume.pvc-1",)),
        (f"csi.volume.{UUID}", ("csi.volname", "csi.imagename", "csi.volume.owner")),
    ]
