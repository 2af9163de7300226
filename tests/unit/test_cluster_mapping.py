"""ClusterIDMapping logic that needs no API server: conflicts, conditions, the rendered file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.controllers.clusterids import MappingSpec, disagreement
from reconciler.controllers.csimapping import render_cluster_mapping
from reconciler.errors import InvalidConfig
from reconciler.k8s.conditions import condition, merge_conditions


def mapping(name: str, a: str, b: str, *pools: dict[str, Any], **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "generation": 1},
        "spec": {"siteA": {"clusterID": a}, "siteB": {"clusterID": b}, "rbdPools": list(pools)},
    }
    if status:
        obj["status"] = {"observedGeneration": 1, **status}
    return obj


def spec(name: str, a: str, b: str, *pools: dict[str, Any]) -> MappingSpec:
    return MappingSpec.from_object(mapping(name, a, b, *pools))


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
    on_site_b = mapping(
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
    not_ready = mapping("m0", "x", "y", conditions=[{**ready[0], "status": "False"}])
    rendered = json.loads(render_cluster_mapping([not_ready, on_site_b]))
    assert rendered == [
        {
            "clusterIDMapping": {"site-a": "site-b"},
            "RBDPoolIDMapping": [{"2": "5"}],
            "renderedBy": "rbd-mirror-reconciler: ClusterIDMapping m1",
        }
    ]


def test_entries_this_controller_did_not_render_are_kept_as_they_are() -> None:
    ready = [condition("Ready", True, "Mapped", "", 1) | {"lastTransitionTime": "t"}]
    current = mapping(
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
    rendered = json.loads(render_cluster_mapping([current], json.dumps([by_hand, stale])))
    assert [entry.get("renderedBy") for entry in rendered] == [
        None,
        "rbd-mirror-reconciler: ClusterIDMapping m1",
    ]
    assert rendered[0] == by_hand


@pytest.mark.parametrize("in_place", ["{not json", '{"clusterIDMapping": {}}', "[1]"])
def test_a_file_in_place_that_is_not_a_list_of_entries_is_not_overwritten(in_place: str) -> None:
    with pytest.raises(InvalidConfig, match="cluster mapping in place"):
        render_cluster_mapping([], in_place)


def test_conditions_keep_their_transition_time_while_status_holds() -> None:
    first = merge_conditions([], [condition("Ready", False, "A", "m", 1)], at="t1")
    same = merge_conditions(first, [condition("Ready", False, "B", "m2", 2)], at="t2")
    flipped = merge_conditions(same, [condition("Ready", True, "C", "m3", 2)], at="t3")
    assert [c["lastTransitionTime"] for c in (*first, *same, *flipped)] == ["t1", "t1", "t3"]
    assert same[0]["reason"] == "B" and same[0]["observedGeneration"] == 2
