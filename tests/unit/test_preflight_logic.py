"""preflight's verdicts and report without daemons: mapping, ceph-csi's files, caps strings, the
image's mirroring and snapshot age, and the table/JSON/summary rendering."""

from __future__ import annotations

import argparse
import io
import json
from typing import Any

import pytest

from reconciler.cli.flags import duration as parse_duration
from reconciler.cli.preflight import ProgressLine
from reconciler.csiconfig import layout
from reconciler.handle import VolumeHandle
from reconciler.mirror import FROM_SNAPSHOT, FROM_STATUS, MirrorImage
from reconciler.preflight.ceph import caps_allow_journal
from reconciler.preflight.mapping import check_mapping, csi_config_gaps
from reconciler.preflight.report import Report, VolumeReport, duration
from reconciler.preflight.verdicts import judge_image

UUID = "0c23de1c-18fb-11eb-a903-0242ac110005"
OLD = VolumeHandle("site-a", 1, UUID)
NOW = 1_800_000_000.0
LAYOUT = layout("helm", "ceph-csi")


def cidm(name: str, a: str = "site-a", b: str = "site-b", **pool: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "siteA": {"clusterID": a},
            "siteB": {"clusterID": b},
            "rbdPools": [{"name": "replicapool", **pool}],
        },
    }


# mapping ------------------------------------------------------------------------------------------


def test_a_mapping_of_both_clusterids_and_the_pool_maps_the_handle() -> None:
    verdict = check_mapping(OLD, "replicapool", "site-b", 2, [cidm("a-to-b")])
    assert verdict.ok and verdict.cell == "ok"
    assert "'site-a' pool 'replicapool' #1 -> 'site-b' #2" in verdict.detail
    assert verdict.mapping is not None
    assert verdict.mapping["status"]["rbdPools"] == [
        {"name": "replicapool", "localPoolID": 2, "remotePoolID": 1}
    ]


@pytest.mark.parametrize(
    ("mappings", "cell", "said"),
    [
        ([], "none", "no ClusterIDMapping maps clusterID 'site-a'"),
        ([cidm("x", b="site-c")], "none", "no ClusterIDMapping"),
        (
            [cidm("one", siteAPoolID=1), cidm("two", siteAPoolID=7)],
            "conflict",
            "ClusterIDMapping one conflicts with two",
        ),
        (
            [{**cidm("m"), "spec": {**cidm("m")["spec"], "rbdPools": []}}],
            "no pool",
            "spec.rbdPools",
        ),
        ([cidm("m", siteAPoolID=5)], "pool ID", "has ID 5 on 'site-a', but the PV's handle"),
        ([cidm("m", siteBPoolID=9)], "pool ID", "has ID 9 on 'site-b', but this cluster has it"),
    ],
)
def test_what_keeps_a_handle_from_being_mapped_is_named(
    mappings: list[dict[str, Any]], cell: str, said: str
) -> None:
    verdict = check_mapping(OLD, "replicapool", "site-b", 2, mappings)
    assert not verdict.ok
    assert verdict.cell == cell
    assert said in verdict.detail


def test_a_local_handle_needs_no_mapping() -> None:
    local = VolumeHandle("site-b", 2, UUID)
    verdict = check_mapping(local, "replicapool", "site-b", 2, [])
    assert verdict.ok and verdict.cell == "not needed" and verdict.mapping is None


def test_one_clusterid_on_both_sites_maps_by_pool_id() -> None:
    rook = VolumeHandle("rook-ceph", 1, UUID)
    mapping = cidm("rook", "rook-ceph", "rook-ceph")
    moved = check_mapping(rook, "replicapool", "rook-ceph", 2, [mapping])
    assert moved.ok and moved.mapping is not None
    here = check_mapping(
        VolumeHandle("rook-ceph", 2, UUID), "replicapool", "rook-ceph", 2, [mapping]
    )
    assert here.ok and here.cell == "not needed"


def test_a_missing_pool_here_is_not_mapped() -> None:
    verdict = check_mapping(OLD, "replicapool", "site-b", None, [cidm("a-to-b")])
    assert not verdict.ok and "does not exist on this cluster" in verdict.detail


# ceph-csi's files --------------------------------------------------------------------------------


def test_ceph_csi_config_gaps_are_the_controllers_missing_entries() -> None:
    verdict = check_mapping(OLD, "replicapool", "site-b", 2, [cidm("a-to-b")])
    local_only = json.dumps([{"clusterID": "site-b", "monitors": ["10.0.0.1:6789"]}])
    both = json.dumps(
        [
            {"clusterID": "site-b", "monitors": ["10.0.0.1:6789"]},
            {"clusterID": "site-a", "monitors": ["10.0.0.1:6789"]},
        ]
    )
    mapped = json.dumps(
        [{"clusterIDMapping": {"site-a": "site-b"}, "RBDPoolIDMapping": [{"1": "2"}]}]
    )

    gaps = csi_config_gaps(verdict, local_only, mapped, LAYOUT, local="site-b")
    assert len(gaps) == 1
    assert "has no entry for clusterID 'site-a'" in gaps[0]
    assert "ceph-csi-config key config.json" in gaps[0]

    gaps = csi_config_gaps(verdict, both, "[]", LAYOUT, local="site-b")
    assert gaps == [
        "ConfigMap ceph-csi/ceph-csi-config key cluster-mapping.json does not map clusterID "
        "'site-a' to 'site-b' with pool IDs {\"1\": \"2\"}"
    ]
    assert csi_config_gaps(verdict, both, mapped, LAYOUT, local="site-b") == []
    assert "no usable entry for this site" in csi_config_gaps(None, "", "", LAYOUT, local=None)[0]


# caps strings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "lacking"),
    [
        ({"mon": "profile rbd", "osd": "profile rbd"}, []),
        ({"mon": "allow r", "osd": "allow rwx pool=replicapool"}, []),
        ({"mon": "allow *", "osd": "allow *"}, []),
        ({"mon": "profile rbd", "osd": "profile rbd pool=other, profile rbd pool=replicapool"}, []),
        ({"mon": "profile rbd", "osd": "profile rbd-read-only"}, ["osd caps"]),
        ({"mon": "profile rbd", "osd": "allow r pool=replicapool"}, ["osd caps"]),
        ({"mon": "profile rbd", "osd": "profile rbd pool=other"}, ["osd caps"]),
        ({"mon": "", "osd": "profile rbd"}, ["mon caps"]),
        ({"osd": "allow rw namespace=tenant"}, ["mon caps", "osd caps"]),
    ],
)
def test_caps_strings_are_judged_for_journal_writes(
    caps: dict[str, str], lacking: list[str]
) -> None:
    found = caps_allow_journal(caps, "replicapool", "")
    assert [gap.split(" ", 2)[0] + " caps" for gap in found] == lacking


def test_namespace_caps_match_the_journals_namespace() -> None:
    caps = {"mon": "profile rbd", "osd": "allow rw pool=replicapool namespace=tenant-*"}
    assert caps_allow_journal(caps, "replicapool", "tenant-a") == []
    assert caps_allow_journal(caps, "replicapool", "other") != []


# the image ---------------------------------------------------------------------------------------


def image(**fields: Any) -> MirrorImage:
    base: dict[str, Any] = {
        "pool": "replicapool",
        "namespace": "",
        "name": f"csi-vol-{UUID}",
        "id": "abc",
        "mirrored": True,
        "mode": "snapshot",
        "primary": False,
        "state": "up+replaying",
        "snapshot_time": NOW - 120,
        "snapshot_source": FROM_STATUS,
    }
    return MirrorImage(**{**base, **fields})


def judged(
    found: MirrorImage | None, *, max_age: float = 3600, missing: bool = False
) -> VolumeReport:
    report = VolumeReport("pv-1", pool="replicapool", image=f"csi-vol-{UUID}")
    judge_image(report, found, pool_missing=missing, now=NOW, max_age=max_age)
    return report


def test_a_replaying_image_with_a_fresh_snapshot_passes() -> None:
    report = judged(image())
    assert [report.checks[n].ok for n in ("image", "mirroring", "snapshot")] == [True] * 3
    assert report.snapshot_age == 120
    assert report.checks["snapshot"].cell == "2m00s"
    assert report.role() == "non-primary"


@pytest.mark.parametrize(
    ("found", "check", "said"),
    [
        (None, "image", "is not on this cluster"),
        (image(mirrored=False, primary=None), "mirroring", "not enabled"),
        (image(state="down+stopped"), "mirroring", "is rbd-mirror running on this site?"),
        (image(state="up+error", description="split-brain"), "mirroring", "up+error: split-brain"),
        (image(snapshot_time=None), "snapshot", "no mirror snapshot has been copied"),
        (image(snapshot_time=NOW - 7200), "snapshot", "2h00m old"),
    ],
)
def test_each_image_problem_is_named(found: MirrorImage | None, check: str, said: str) -> None:
    report = judged(found)
    assert report.checks[check].ok is False
    assert said in report.checks[check].detail
    assert not report.ready


def test_an_age_read_from_the_images_own_snapshot_says_so() -> None:
    report = judged(image(snapshot_time=NOW - 10, snapshot_source=FROM_SNAPSHOT))
    assert "this site's copy of the snapshot" in report.checks["snapshot"].detail


def test_a_primary_image_here_has_nothing_to_catch_up() -> None:
    report = judged(image(primary=True, state="up+stopped"))
    assert report.checks["mirroring"].ok and report.checks["snapshot"].ok
    assert report.role() == "primary"


def test_a_missing_pool_is_named_and_the_rest_not_checked() -> None:
    report = judged(None, missing=True)
    assert report.checks["image"].detail == "pool 'replicapool' does not exist on this cluster"
    assert report.checks["mirroring"].ok is None


# the report --------------------------------------------------------------------------------------


def ready_volume(name: str) -> VolumeReport:
    report = judged(image())
    report.pv = name
    for check in ("volume", "mapping", "cephcsi", "credentials"):
        report.passed(check, "ok", "fine")
    report.passed("journal", "5 keys", "a failover writes 5 keys")
    return report


def test_the_table_lists_every_pv_then_the_problems_and_the_summary() -> None:
    broken = ready_volume("pv-broken")
    broken.failed("credentials", "caps", "client.ro may not write")
    report = Report("site-b", 3600, [ready_volume("pv-fine"), broken])

    table = report.table().splitlines()

    assert table[0].split() == [
        "PV", "IMAGE", "MIRROR", "ROLE", "SNAPSHOT", "AGE", "MAPPING", "CEPH-CSI", "CREDS",
        "JOURNAL", "READY",
    ]  # fmt: skip
    assert table[1].split() == [
        "pv-fine", "present", "up+replaying", "non-primary", "2m00s", "ok", "ok", "ok", "5",
        "keys", "yes",
    ]  # fmt: skip
    assert "caps!" in table[2] and table[2].endswith("NO")
    assert "  pv-broken: credentials: client.ro may not write" in table
    assert table[-1] == (
        "preflight: 1 of 2 PVs ready for a failover to site-b; not ready: pv-broken (credentials)"
    )
    assert not report.ready


def test_all_ready_says_ready_and_json_carries_every_check() -> None:
    report = Report("site-b", 3600, [ready_volume("pv-a")])
    report.ceph_calls["poolListings"] += 3
    assert report.ready
    assert report.summary() == "preflight: 1 of 1 PVs ready for a failover to site-b: ready"
    found = report.to_json()
    assert found["ready"] is True
    assert found["cephCalls"] == {"poolListings": 3}
    (volume,) = found["volumes"]
    assert volume["snapshotAgeSeconds"] == 120.0
    assert set(volume["checks"]) == {
        "volume", "image", "mirroring", "snapshot", "mapping", "cephcsi", "credentials", "journal"
    }  # fmt: skip


def test_no_pv_at_all_is_not_ready() -> None:
    report = Report("site-b", 3600)
    assert not report.ready
    assert "no PersistentVolume" in report.summary()


def test_a_check_never_made_is_not_passed() -> None:
    report = ready_volume("pv-a")
    del report.checks["journal"]
    assert not report.ready
    assert ("journal", "not checked") in report.problems()


@pytest.mark.parametrize(
    ("seconds", "shown"), [(42, "42s"), (312, "5m12s"), (7380, "2h03m"), (273600, "3d04h")]
)
def test_durations_are_short(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200)])
def test_duration_flags(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-5m", "0", "ten"])
def test_bad_duration_flags_are_usage_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_progress_shows_on_long_runs_only() -> None:
    now = [0.0]
    short, long = io.StringIO(), io.StringIO()
    quick = ProgressLine(lambda: now[0], short)
    for done in range(1, 4):
        now[0] += 0.1
        quick(done, 3)
    assert short.getvalue() == ""

    now[0] = 0.0
    slow = ProgressLine(lambda: now[0], long)
    for done in range(1, 11):
        now[0] += 1.0
        slow(done, 10)
    assert long.getvalue().splitlines() == [
        "preflight: 2/10 PVs checked (2 s)",
        "preflight: 4/10 PVs checked (4 s)",
        "preflight: 6/10 PVs checked (6 s)",
        "preflight: 8/10 PVs checked (8 s)",
        "preflight: 10/10 PVs checked (10 s)",
    ]
