"""ceph-csi's cluster config: the `config.json` key of the `ceph-csi-config` ConfigMap.

    [{"clusterID": "...", "monitors": ["host:port", ...],
      "rbd": {"radosNamespace": "...", "mirrorDaemonCount": N}, "cephFS": {...}}, ...]

Read as ceph-csi reads it, so the project works beside an existing deployment unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import InvalidConfig

DEFAULT_MIRROR_DAEMON_COUNT = 1
#: The ConfigMap ceph-csi reads its cluster list from (key `config.json`).
DEFAULT_CONFIGMAP = "ceph-csi-config"


@dataclass(frozen=True)
class ConfigKey:
    """One key of one ConfigMap: where a deployment keeps one of ceph-csi's files."""

    namespace: str
    name: str
    key: str

    def __str__(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name} key {self.key}"


@dataclass(frozen=True)
class CSIConfigLayout:
    """Where a deployment keeps the two files ceph-csi reads from /etc/ceph-csi-config/."""

    config: ConfigKey
    """config.json: the clusters and their monitors."""
    cluster_mapping: ConfigKey
    """cluster-mapping.json: which clusterID and pool IDs stand for which after a failover."""


#: name -> (config.json ConfigMap, its key, cluster-mapping.json ConfigMap, its key).
LAYOUTS = {
    # ceph-csi's Helm charts: both files in one ConfigMap.
    "helm": (DEFAULT_CONFIGMAP, "config.json", DEFAULT_CONFIGMAP, "cluster-mapping.json"),
    # Rook: each in a ConfigMap of its own, under Rook's key names.
    "rook": (
        "rook-ceph-csi-config",
        "csi-cluster-config-json",
        "rook-ceph-csi-mapping-config",
        "csi-mapping-config-json",
    ),
}


def layout(
    preset: str,
    namespace: str,
    *,
    config: tuple[str | None, str | None] = (None, None),
    cluster_mapping: tuple[str | None, str | None, str | None] = (None, None, None),
) -> CSIConfigLayout:
    """The `preset` layout in `namespace`, with any (name, key) / (namespace, name, key) given
    instead of the preset's."""
    config_name, config_key, mapping_name, mapping_key = LAYOUTS[preset]
    mapping_namespace = cluster_mapping[0] or namespace
    return CSIConfigLayout(
        ConfigKey(namespace, config[0] or config_name, config[1] or config_key),
        ConfigKey(
            mapping_namespace, cluster_mapping[1] or mapping_name, cluster_mapping[2] or mapping_key
        ),
    )


@dataclass(frozen=True)
class ClusterConfig:
    cluster_id: str
    monitors: tuple[str, ...]
    rados_namespace: str = ""
    mirror_daemon_count: int = DEFAULT_MIRROR_DAEMON_COUNT

    @property
    def mon_host(self) -> str:
        """The monitors as librados' `mon_host` option takes them."""
        return ",".join(self.monitors)


class CSIConfig(Mapping[str, ClusterConfig]):
    """clusterID -> ClusterConfig, in the order of the file.

    As in ceph-csi, a file that does not decode into its shape is unusable as a whole (Go's JSON
    decoding fails for all entries), while a well-typed entry that cannot be used (no monitors)
    fails only the clusterID it names, and the first entry of a clusterID wins.
    """

    def __init__(
        self, clusters: list[ClusterConfig], problems: Mapping[str, str] | None = None
    ) -> None:
        self._clusters: dict[str, ClusterConfig] = {}
        for cluster in clusters:
            self._clusters.setdefault(cluster.cluster_id, cluster)
        self._problems = {k: v for k, v in (problems or {}).items() if k not in self._clusters}

    def __getitem__(self, cluster_id: str) -> ClusterConfig:
        return self._clusters[cluster_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clusters)

    def __len__(self) -> int:
        return len(self._clusters)

    def problem(self, cluster_id: str) -> str | None:
        """Why the entry of `cluster_id` cannot be used, when there is one and it cannot."""
        return self._problems.get(cluster_id)

    @classmethod
    def parse(cls, text: str) -> CSIConfig:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidConfig(f"config.json is not valid JSON: {err}") from err
        if not isinstance(entries, list):
            raise InvalidConfig(f"config.json must be a JSON list, not {type(entries).__name__}")
        clusters: list[ClusterConfig] = []
        problems: dict[str, str] = {}
        for index, entry in enumerate(entries):
            parsed = _parse_entry(index, entry)
            if isinstance(parsed, ClusterConfig):
                clusters.append(parsed)
            elif parsed is not None:
                problems.setdefault(*parsed)
        return cls(clusters, problems)


def _parse_entry(index: int, entry: Any) -> ClusterConfig | tuple[str, str] | None:
    """The entry; (clusterID, problem) when well-typed but unusable; None without a clusterID
    (nothing can look it up). Raises InvalidConfig where Go's decoding would fail."""
    where = f"config.json entry {index}"
    if not isinstance(entry, dict):
        raise InvalidConfig(f"{where} must be an object")
    cluster_id = entry.get("clusterID", "")
    if not isinstance(cluster_id, str):
        raise InvalidConfig(f"{where}: clusterID must be a string")
    if not cluster_id:
        return None
    where = f"{where} (clusterID {cluster_id!r})"
    monitors = entry.get("monitors") or []
    if not isinstance(monitors, list) or not all(isinstance(m, str) for m in monitors):
        raise InvalidConfig(f"{where}: monitors must be a list of 'host:port' strings")
    rbd = entry.get("rbd")
    if rbd is None:
        rbd = {}
    if not isinstance(rbd, dict):
        raise InvalidConfig(f"{where}: rbd must be an object")
    namespace = rbd.get("radosNamespace", "")
    if not isinstance(namespace, str):
        raise InvalidConfig(f"{where}: rbd.radosNamespace must be a string")
    count = rbd.get("mirrorDaemonCount", DEFAULT_MIRROR_DAEMON_COUNT)
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidConfig(f"{where}: rbd.mirrorDaemonCount must be a whole number")
    if not monitors or not all(m.strip() for m in monitors):
        return cluster_id, f"{where}: monitors must be a non-empty list of 'host:port' strings"
    if count < 0:
        return cluster_id, f"{where}: rbd.mirrorDaemonCount must not be negative"
    return ClusterConfig(
        cluster_id=cluster_id,
        monitors=tuple(m.strip() for m in monitors),
        rados_namespace=namespace,
        mirror_daemon_count=count or DEFAULT_MIRROR_DAEMON_COUNT,
    )


def render(clusters: Mapping[str, ClusterConfig]) -> str:
    """config.json for `clusters`, as ceph-csi reads it."""
    return json.dumps(
        [
            {
                "clusterID": c.cluster_id,
                "monitors": list(c.monitors),
                "rbd": {
                    "radosNamespace": c.rados_namespace,
                    "mirrorDaemonCount": c.mirror_daemon_count,
                },
            }
            for c in clusters.values()
        ],
        indent=2,
    )
