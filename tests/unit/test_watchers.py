"""ceph-csi's RWO watcher rule: rbd-mirror daemons' watches on a primary are not users."""

from __future__ import annotations

import pytest

from reconciler.csi import ImageUse, MirrorRole, NotPrimary, rwo_image_use

IMAGE = "replicapool/csi-vol-0c23de1c-18fb-11eb-a903-0242ac110005"


@pytest.mark.parametrize(
    ("watchers", "role", "daemons", "expected"),
    [
        (1, MirrorRole.NOT_MIRRORED, 1, ImageUse.FREE),  # only our own open
        (2, MirrorRole.NOT_MIRRORED, 1, ImageUse.IN_USE),  # daemons only count on a primary
        (2, MirrorRole.PRIMARY, 1, ImageUse.FREE),
        (3, MirrorRole.PRIMARY, 1, ImageUse.IN_USE),
        (3, MirrorRole.PRIMARY, 2, ImageUse.FREE),
        (4, MirrorRole.PRIMARY, 2, ImageUse.IN_USE),
        (1, MirrorRole.PRIMARY, 1, ImageUse.FREE),  # a daemon not running is no user either
    ],
)
def test_mirror_daemons_watch_a_primary_and_are_not_users(
    watchers: int, role: MirrorRole, daemons: int, expected: ImageUse
) -> None:
    assert rwo_image_use(IMAGE, watchers, role, daemons) is expected


def test_a_watcher_list_counts_like_its_length() -> None:
    listed = [{"addr": "10.0.0.1:0/1", "id": 4100, "cookie": 1}] * 3
    assert rwo_image_use(IMAGE, listed, MirrorRole.PRIMARY, 1) is ImageUse.IN_USE
    assert rwo_image_use(IMAGE, listed[:2], MirrorRole.PRIMARY, 1) is ImageUse.FREE


def test_without_an_own_open_every_watcher_counts() -> None:
    assert rwo_image_use(IMAGE, 1, MirrorRole.NOT_MIRRORED, own_watchers=0) is ImageUse.IN_USE
    assert rwo_image_use(IMAGE, 0, MirrorRole.NOT_MIRRORED, own_watchers=0) is ImageUse.FREE


@pytest.mark.parametrize("watchers", [0, 1, 5])
def test_a_non_primary_is_an_error_not_in_use(watchers: int) -> None:
    with pytest.raises(NotPrimary) as raised:
        rwo_image_use(IMAGE, watchers, MirrorRole.NON_PRIMARY, 1)
    assert IMAGE in str(raised.value)
    assert raised.value.reason == "ImageNotPrimary"


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        rwo_image_use(IMAGE, -1, MirrorRole.PRIMARY, 1)
    with pytest.raises(ValueError, match="cannot be negative"):
        rwo_image_use(IMAGE, 1, MirrorRole.PRIMARY, -1)
