"""Regeneration's choices that need no Ceph: which RADOS namespace, which image, over the
in-memory omap store of the journal's unit tests (real Ceph: tests/e2e/test_journal.py)."""

from __future__ import annotations

import logging

import pytest

from reconciler.cephconn import ImageInfo
from reconciler.errors import InvalidVolume
from reconciler.regenerate import LocalCluster, regenerate
from reconciler.volume import CSIVolume
from tests.unit.conftest import UUID
from tests.unit.test_journal_plan import MemoryStore

OLD_HANDLE = f"0001-0006-site-a-0000000000000009-{UUID}"


class MemoryCluster(MemoryStore):
    """One pool, `replicapool` (ID 2), holding the image `csi-vol-<UUID>` in every namespace."""

    def __init__(self) -> None:
        super().__init__()
        self.images_opened: list[tuple[str, str, str]] = []

    async def pool_id(self, pool: str) -> int:
        assert pool == "replicapool"
        return 2

    async def image_info(self, pool: str, namespace: str, name: str) -> ImageInfo:
        self.images_opened.append((pool, namespace, name))
        return ImageInfo(name=name, id="abc123", mirror_primary=True)


def volume(**attributes: str) -> CSIVolume:
    return CSIVolume(
        pv_name="pvc-1",
        driver="rbd.csi.ceph.com",
        volume_handle=OLD_HANDLE,
        attributes={"pool": "replicapool", **attributes},
        claim_namespace="apps",
    )


@pytest.mark.parametrize(
    ("config_namespace", "pv_namespace"),
    [("", "tenant-old"), ("tenant-b", ""), ("tenant-b", "tenant-old"), ("tenant-b", None)],
)
async def test_the_journal_goes_to_the_config_namespace_alone(
    config_namespace: str, pv_namespace: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    ceph = MemoryCluster()
    attributes = {} if pv_namespace is None else {"radosNamespace": pv_namespace}
    local = LocalCluster("site-b", rados_namespace=config_namespace)
    with caplog.at_level(logging.WARNING, logger="reconciler.regenerate"):
        result = await regenerate(ceph, volume(**attributes), local)

    assert result.rados_namespace == config_namespace
    assert ceph.images_opened == [("replicapool", config_namespace, f"csi-vol-{UUID}")]
    assert {namespace for _, namespace, _ in ceph.objects} == {config_namespace}
    # A PV naming another namespace is followed by nothing, but not silently.
    warned = [r.getMessage() for r in caplog.records]
    if pv_namespace is None:
        assert warned == []
    else:
        assert len(warned) == 1
        assert f"radosNamespace {pv_namespace!r} is not {config_namespace!r}" in warned[0]


async def test_an_agreeing_namespace_is_not_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reconciler.regenerate"):
        await regenerate(
            MemoryCluster(), volume(radosNamespace="t"), LocalCluster("site-b", rados_namespace="t")
        )
    assert caplog.records == []


async def test_the_image_is_the_derived_name_and_an_inconsistent_pv_writes_nothing() -> None:
    ceph = MemoryCluster()
    result = await regenerate(ceph, volume(volumeNamePrefix="team-a-"), LocalCluster("site-b"))
    assert result.image_name == f"team-a-{UUID}"
    assert ceph.objects[("replicapool", "", f"csi.volume.{UUID}")]["csi.imagename"] == (
        f"team-a-{UUID}".encode()
    )

    untouched = MemoryCluster()
    with pytest.raises(InvalidVolume, match="differs from"):
        await regenerate(untouched, volume(imageName=f"other-{UUID}"), LocalCluster("site-b"))
    assert untouched.objects == {}
    assert untouched.images_opened == []
