"""ClusterIDMapping logic that needs no API server: conflicts, conditions, the rendered file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.controllers.cephcsi import missing_entries, render_cluster_mapping, render_config
from reconciler.controllers.clusterids import MappingSpec, disagreement
from reconciler.csiconfig import layout
from reconciler.errors import InvalidConfig
from reconciler.k8s.conditions import condition, merge_conditions
from tests.unit.conftest import cluster_id_mapping


def spec(name: str, a: str, b: str, *pools: dict[str, Any]) -> MappingSpec:
    return MappingSpec.from_object(cluster_id_mapping(name, a, b, *pools))


def test_the_same_pair_either_way_round_agrees() -> None:
    pool = {"name": "rbd", "siteAPoolID": 1}
    mirrored = {"name": "rbd", "siteBPoolID": 1}
    assert disagreement(spec("m1", "a", "b", pool), spec("m2", "b", "a", mirrored)) is None
    assert disagreement(spec("m1", "a", "b"), spec("m2", "c", "d")) is None
    # A hub: one site mirrored to two others.
    assert disagreement(spec("m1", "a", "b", pool), spec("m2", "a", "c", pool)) is None


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (
            spec("m2", "b", "a", {"name": "rbd", "siteBPoolID": 2}),
            "pool 'rbd' on 'a' has ID 1 here but 2 in ClusterIDMapping m2",
        ),
        (
            spec("m2", "a", "b", {"name": "other", "siteAPoolID": 1}),
            "pool ID 1 on 'a' is pool 'rbd' here but 'other'",
        ),
    ],
    ids=["pool-id-differs", "pool-id-reused"],
)
def test_disagreements_are_named(other: MappingSpec, why: str) -> None:
    mine = spec("m1", "a", "b", {"name": "rbd", "siteAPoolID": 1})
    found = disagreement(mine, other)
    assert found is not None and why in found
    assert disagreement(other, mine) is not None


def test_rendered_file_is_ceph_csis_format_with_site_a_as_key() -> None:
    ready = [condition("Ready", True, "Mapped", "", 1) | {"lastTransitionTime": "t"}]
    on_site_b = cluster_id_mapping(
        "m1",
        "site-a",
        "site-b",
        {"name": "rbd"},
        localClusterID="site-b",
        remoteClusterID="site-a",
        rbdPools=[
            {"name": "rbd", "localPoolID": 5, "remotePoolID": 2},
            {"name": "half-known", "localPoolID": 7},
        ],
        conditions=ready,
    )
    not_ready = cluster_id_mapping("m0", "x", "y", conditions=[{**ready[0], "status": "False"}])
    rendered = json.loads(render_cluster_mapping([not_ready, on_site_b]).text)
    assert rendered == [
        {
            "clusterIDMapping": {"site-a": "site-b"},
            "RBDPoolIDMapping": [{"2": "5"}],
            "renderedBy": "rbd-mirror-reconciler: ClusterIDMapping m1",
        }
    ]


def test_entries_this_controller_did_not_render_are_kept_as_they_are() -> None:
    ready = [condition("Ready", True, "Mapped", "", 1) | {"lastTransitionTime": "t"}]
    current = cluster_id_mapping(
        "m1",
        "site-a",
        "site-b",
        localClusterID="site-b",
        remoteClusterID="site-a",
        rbdPools=[{"name": "rbd", "localPoolID": 5, "remotePoolID": 2}],
        conditions=ready,
    )
    by_hand = {"clusterIDMapping": {"site-a": "site-b"}, "CephFSFscIDMapping": [{"1": "3"}]}
    stale = {
        "clusterIDMapping": {"old-a": "old-b"},
        "RBDPoolIDMapping": [],
        "renderedBy": "rbd-mirror-reconciler: ClusterIDMapping deleted-since",
    }
    rendered = json.loads(render_cluster_mapping([current], json.dumps([by_hand, stale])).text)
    assert [entry.get("renderedBy") for entry in rendered] == [
        None,
        "rbd-mirror-reconciler: ClusterIDMapping m1",
    ]
    assert rendered[0] == by_hand


@pytest.mark.parametrize("in_place", ["{not json", '{"clusterIDMapping": {}}', "[1]"])
def test_a_file_in_place_that_is_not_a_list_of_entries_is_not_overwritten(in_place: str) -> None:
    with pytest.raises(InvalidConfig, match=r"cluster-mapping\.json in place"):
        render_cluster_mapping([], in_place)


def test_conditions_keep_their_transition_time_while_status_holds() -> None:
    first = merge_conditions([], [condition("Ready", False, "A", "m", 1)], at="t1")
    same = merge_conditions(first, [condition("Ready", False, "B", "m2", 2)], at="t2")
    flipped = merge_conditions(same, [condition("Ready", True, "C", "m3", 2)], at="t3")
    assert [c["lastTransitionTime"] for c in (*first, *same, *flipped)] == ["t1", "t1", "t3"]
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2


READY = [condition("Ready", True, "Mapped", "", 1) | {"lastTransitionTime": "t"}]
LAYOUT = layout("helm", "ceph-csi")
LOCAL_ENTRY = {
    "clusterID": "site-b",
    "monitors": ["10.0.0.2:3300"],
    "rbd": {"radosNamespace": "tenant", "mirrorDaemonCount": 2},
    "readAffinity": {"enabled": True},
}


def ready_on_site_b(name: str = "m1", remote: str = "site-a") -> dict[str, Any]:
    return cluster_id_mapping(
        name,
        remote,
        "site-b",
        {"name": "rbd"},
        localClusterID="site-b",
        remoteClusterID=remote,
        rbdPools=[{"name": "rbd", "localPoolID": 5, "remotePoolID": 2}],
        conditions=READY,
    )


def test_config_gets_the_local_entry_under_each_remote_cluster_id() -> None:
    by_hand = {"clusterID": "site-c", "monitors": ["10.0.0.3:3300"]}
    existing = json.dumps([LOCAL_ENTRY, by_hand])
    rendered = json.loads(render_config([ready_on_site_b()], existing, "site-b").text)
    assert rendered[:2] == [LOCAL_ENTRY, by_hand]
    # Everything of the local entry (monitors, radosNamespace, the rest) under the old clusterID.
    assert rendered[2] == {
        **LOCAL_ENTRY,
        "clusterID": "site-a",
        "renderedBy": "rbd-mirror-reconciler: ClusterIDMapping m1",
    }
    # Rendering again from what was written changes nothing.
    assert json.loads(render_config([ready_on_site_b()], json.dumps(rendered), "site-b").text) == (
        rendered
    )


def test_config_never_aliases_over_an_admins_entry_and_drops_aliases_of_gone_mappings() -> None:
    admins_alias = {"clusterID": "site-a", "monitors": ["10.9.9.9:3300"]}
    ours_stale = {**LOCAL_ENTRY, "clusterID": "old", "renderedBy": "rbd-mirror-reconciler: x"}
    existing = json.dumps([LOCAL_ENTRY, admins_alias, ours_stale])
    rendered = json.loads(render_config([ready_on_site_b()], existing, "site-b").text)
    assert rendered == [LOCAL_ENTRY, admins_alias]
    # Without a local entry there is nothing to copy: no alias (the PVs report it).
    assert json.loads(render_config([ready_on_site_b()], "[]", "site-b").text) == []


def test_missing_entries_name_exactly_what_ceph_csi_lacks() -> None:
    obj = ready_on_site_b()
    missing = missing_entries(obj, json.dumps([LOCAL_ENTRY]), None, LAYOUT)
    assert missing == [
        "ConfigMap ceph-csi/ceph-csi-config key config.json has no entry for clusterID "
        "'site-a' (ceph-csi rejects its handles: 'missing configuration for cluster ID')",
        "ConfigMap ceph-csi/ceph-csi-config key cluster-mapping.json does not map clusterID "
        "'site-a' to 'site-b' with pool IDs {\"2\": \"5\"}",
    ]
    config = render_config([obj], json.dumps([LOCAL_ENTRY]), "site-b").text
    assert missing_entries(obj, config, render_cluster_mapping([obj]).text, LAYOUT) == []
    # An admin's own entry written the other way round (siteB -> siteA) counts too.
    by_hand = [{"clusterIDMapping": {"site-b": "site-a"}, "RBDPoolIDMapping": [{"5": "2"}]}]
    assert missing_entries(obj, config, json.dumps(by_hand), LAYOUT) == []
    assert missing_entries(obj, "{broken", "[]", LAYOUT)[0].startswith(
        "ConfigMap ceph-csi/ceph-csi-config key config.json: the config.json in place is not JSON"
    )


def test_layouts_place_ceph_csis_files_where_each_deployment_keeps_them() -> None:
    rook = layout("rook", "rook-ceph")
    assert (
        str(rook.config) == "ConfigMap rook-ceph/rook-ceph-csi-config key csi-cluster-config-json"
    )
    assert str(rook.cluster_mapping) == (
        "ConfigMap rook-ceph/rook-ceph-csi-mapping-config key csi-mapping-config-json"
    )
    custom = layout("helm", "ns", config=("mine", None), cluster_mapping=("other", None, "m.json"))
    assert str(custom.config) == "ConfigMap ns/mine key config.json"
    assert str(custom.cluster_mapping) == "ConfigMap other/ceph-csi-config key m.json"


def reencoded_as_rook_does(text: str, keys: dict[str, str]) -> str:
    """What another writer that decodes entries into a typed struct writes back: keys it does
    not know (renderedBy) dropped, its own spelling of the keys it knows."""
    return json.dumps(
        [{keys[k]: v for k, v in entry.items() if k in keys} for entry in json.loads(text)]
    )


def test_what_is_ours_survives_a_writer_that_drops_the_mark() -> None:
    obj = ready_on_site_b()
    config = render_config([obj], json.dumps([LOCAL_ENTRY]), "site-b")
    assert config.owned == {"site-a"}
    config_keys = {k: k for k in ("clusterID", "monitors", "rbd", "readAffinity")}
    stripped = reencoded_as_rook_does(config.text, config_keys)
    # The mapping is gone: its alias goes too, although the mark was stripped.
    assert json.loads(render_config([], stripped, "site-b", config.owned).text) == [LOCAL_ENTRY]
    # Without the record of what is ours, the stripped alias is an admin's and is kept.
    assert len(json.loads(render_config([], stripped, "site-b").text)) == 2

    mapping_file = render_cluster_mapping([obj])
    rook_keys = {"clusterIDMapping": "ClusterIDMapping", "RBDPoolIDMapping": "RBDPoolIDMapping"}
    rook_written = reencoded_as_rook_does(mapping_file.text, rook_keys)
    # Go decodes keys whatever their case: the entry still counts, and is recognised as ours.
    assert missing_entries(obj, config.text, rook_written, LAYOUT) == []
    assert json.loads(render_cluster_mapping([], rook_written, mapping_file.owned).text) == []


def test_an_admins_entry_for_the_same_pair_of_cluster_ids_is_not_ours() -> None:
    obj = ready_on_site_b()
    first = render_cluster_mapping([obj])
    by_hand = {"clusterIDMapping": {"site-a": "site-b"}, "CephFSFscIDMapping": [{"1": "3"}]}
    existing = json.dumps([by_hand, *json.loads(first.text)])
    again = render_cluster_mapping([obj], existing, first.owned)
    assert json.loads(again.text) == [by_hand, *json.loads(first.text)]
    # With the mapping gone, ours goes and the admin's stays.
    assert json.loads(render_cluster_mapping([], again.text, again.owned).text) == [by_hand]
