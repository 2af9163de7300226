"""ceph-csi's config.json as ceph-csi reads it."""

from __future__ import annotations

import pytest

from reconciler.csiconfig import ClusterConfig, CSIConfig, render
from reconciler.errors import InvalidConfig

ROOK = """[
  {"clusterID": "rook-ceph", "monitors": ["10.0.0.1:6789", "10.0.0.2:6789"],
   "rbd": {"radosNamespace": "tenant-a", "mirrorDaemonCount": 2},
   "cephFS": {"subvolumeGroup": "csi"}},
  {"clusterID": "site-b", "monitors": ["v2:127.0.0.1:3300"]}
]"""


def test_parses_entries_with_defaults() -> None:
    config = CSIConfig.parse(ROOK)
    assert list(config) == ["rook-ceph", "site-b"]
    assert config["rook-ceph"] == ClusterConfig(
        "rook-ceph", ("10.0.0.1:6789", "10.0.0.2:6789"), "tenant-a", 2
    )
    assert config["rook-ceph"].mon_host == "10.0.0.1:6789,10.0.0.2:6789"
    assert config["site-b"].rados_namespace == ""
    assert config["site-b"].mirror_daemon_count == 1


def test_render_round_trips() -> None:
    config = CSIConfig.parse(ROOK)
    assert CSIConfig.parse(render(config)) == config


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not valid JSON"),
        ('{"clusterID": "a"}', "must be a JSON list"),
        ("[1]", "entry 0 must be an object"),
        ('[{"clusterID": 7, "monitors": ["a:1"]}]', "entry 0: clusterID must be a string"),
        ('[{"clusterID": "a", "monitors": "a:1"}]', "clusterID 'a'.*monitors must be a list"),
        ('[{"clusterID": "a", "monitors": ["a:1"], "rbd": []}]', "rbd must be an object"),
        (
            '[{"clusterID": "a", "monitors": ["a:1"], "rbd": {"mirrorDaemonCount": "2"}}]',
            "mirrorDaemonCount must be a whole number",
        ),
    ],
)
def test_a_file_ceph_csi_could_not_decode_is_unusable_as_a_whole(text: str, problem: str) -> None:
    with pytest.raises(InvalidConfig, match=problem):
        CSIConfig.parse(text)


def test_an_unusable_entry_fails_only_its_own_clusterid() -> None:
    config = CSIConfig.parse(
        """[
          {"clusterID": "no-mons", "monitors": []},
          {"clusterID": "negative", "monitors": ["a:1"], "rbd": {"mirrorDaemonCount": -1}},
          {"monitors": ["x:1"]},
          {"clusterID": "site-b", "monitors": ["b:1"]},
          {"clusterID": "site-b", "monitors": ["later:1"]}
        ]"""
    )
    assert list(config) == ["site-b"]
    assert config["site-b"].monitors == ("b:1",)  # the first entry wins, as in ceph-csi
    assert config.get("no-mons") is None
    assert "clusterID 'no-mons'" in (config.problem("no-mons") or "")
    assert "monitors must be a non-empty list" in (config.problem("no-mons") or "")
    assert "must not be negative" in (config.problem("negative") or "")
    assert config.problem("site-b") is None
    assert config.problem("absent") is None
