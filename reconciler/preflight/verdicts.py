"""The verdicts on an image as the pool-level listings describe it: present, mirrored and
replaying, and how old its newest completely synced snapshot is. Pure."""

from __future__ import annotations

from reconciler.mirror import FROM_SNAPSHOT, MirrorImage
from reconciler.preflight.report import VolumeReport, duration


def judge_image(
    report: VolumeReport,
    image: MirrorImage | None,
    *,
    pool_missing: bool,
    now: float,
    max_age: float,
) -> None:
    """Set the image, mirroring and snapshot checks of `report`."""
    pool = report.pool
    if pool_missing:
        report.failed("image", "no pool", f"pool {pool!r} does not exist on this cluster")
    elif image is None:
        report.failed(
            "image",
            "missing",
            f"RBD image {pool}/{report.image} is not on this cluster: not mirrored (yet), "
            "or removed",
        )
    else:
        report.passed("image", "present", f"{pool}/{report.image} (ID {image.id})")
    if image is None:
        for name in ("mirroring", "snapshot"):
            report.not_checked(name, "the image is not on this cluster")
        return
    report.mirror_state = image.state
    report.primary = image.primary
    if not image.mirrored:
        report.failed("mirroring", "disabled", "mirroring is not enabled for the image")
        report.not_checked("snapshot", "the image is not mirrored")
        return
    if image.primary:
        report.passed("mirroring", "primary", f"{image.mode} mirroring; primary on this site")
        report.passed("snapshot", "primary", "primary here: nothing to catch up on this site")
        return
    state = image.state or "no status"
    if image.state == "up+replaying":
        report.passed("mirroring", state, f"{image.mode} mirroring, {state}")
    else:
        hint = " (is rbd-mirror running on this site?)" if state.startswith("down+") else ""
        said = f": {image.description}" if image.description else ""
        report.failed("mirroring", state, f"rbd-mirror reports {state}{said}{hint}")
    judge_snapshot(report, image, now=now, max_age=max_age)


def judge_snapshot(report: VolumeReport, image: MirrorImage, *, now: float, max_age: float) -> None:
    if image.snapshot_time is None:
        report.failed(
            "snapshot", "none", "no mirror snapshot has been copied to this site completely yet"
        )
        return
    age = max(0.0, now - image.snapshot_time)
    report.snapshot_age = age
    report.snapshot_source = image.snapshot_source
    source = (
        "this site's copy of the snapshot (rbd-mirror's status has no time)"
        if image.snapshot_source == FROM_SNAPSHOT
        else "rbd-mirror's status"
    )
    text = f"the newest completely synced mirror snapshot is {duration(age)} old ({source})"
    if age > max_age:
        report.failed(
            "snapshot",
            duration(age),
            f"{text}, over --max-snapshot-age {duration(max_age)}: a failover now would lose "
            f"the writes of the last {duration(age)}",
        )
    else:
        report.passed("snapshot", duration(age), text)
