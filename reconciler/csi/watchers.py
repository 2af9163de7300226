"""ceph-csi's RWO watcher rule with mirroring: is an image in use before it is staged?

ceph-csi lists an image's watchers with the image open (read-write, which is one watch of its
own) and calls it in use when there are more than it expects. Each running rbd-mirror daemon
watches a mirroring primary, so those (the cluster's `rbd.mirrorDaemonCount`, default 1) are not
users. A non-primary mirrored image must not be mapped at all: an error, not "in use".
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from reconciler.csi.errors import NotPrimary
from reconciler.csiconfig import DEFAULT_MIRROR_DAEMON_COUNT

#: The caller's own watch: listing watchers needs the image open, as in ceph-csi.
OWN_WATCHERS = 1


class MirrorRole(enum.StrEnum):
    PRIMARY = "primary"
    NON_PRIMARY = "non-primary"
    NOT_MIRRORED = "not-mirrored"


class ImageUse(enum.StrEnum):
    IN_USE = "in use"
    FREE = "free"


def rwo_image_use(
    image: str,
    watchers: int | Collection[object],
    role: MirrorRole,
    mirror_daemon_count: int = DEFAULT_MIRROR_DAEMON_COUNT,
    *,
    own_watchers: int = OWN_WATCHERS,
) -> ImageUse:
    """Whether `image` (named in errors) is in use by someone else, given its watchers (a count
    or the list librbd returns) as seen with the image open `own_watchers` times.

    Raises NotPrimary for a non-primary mirrored image, ValueError for negative counts.
    """
    count = watchers if isinstance(watchers, int) else len(watchers)
    if count < 0 or mirror_daemon_count < 0 or own_watchers < 0:
        raise ValueError(
            f"watcher counts cannot be negative (watchers {count}, "
            f"mirror daemons {mirror_daemon_count}, own {own_watchers})"
        )
    if role is MirrorRole.NON_PRIMARY:
        raise NotPrimary(image)
    expected = own_watchers + (mirror_daemon_count if role is MirrorRole.PRIMARY else 0)
    return ImageUse.IN_USE if count > expected else ImageUse.FREE
