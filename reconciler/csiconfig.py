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
    """clusterID -> ClusterConfig, in the order of the file."""

    def __init__(self, clusters: list[ClusterConfig]) -> None:
        self._clusters: dict[str, ClusterConfig] = {}
        for cluster in clusters:
            if cluster.cluster_id in self._clusters:
                raise InvalidConfig(f"clusterID {cluster.cluster_id!r} appears more than once")
            self._clusters[cluster.cluster_id] = cluster

    def __getitem__(self, cluster_id: str) -> ClusterConfig:
        return self._clusters[cluster_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clusters)

    def __len__(self) -> int:
        return len(self._clusters)

    @classmethod
    def parse(cls, text: str) -> CSIConfig:
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidConfig(f"config.json is not valid JSON: {err}") from err
        if not isinstance(entries, list):
            raise InvalidConfig(f"config.json must be a JSON list, not {type(entries).__name__}")
        return cls([_parse_entry(i, entry) for i, entry in enumerate(entries)])


def _parse_entry(index: int, entry: Any) -> ClusterConfig:
    where = f"config.json entry {index}"
    if not isinstance(entry, dict):
        raise InvalidConfig(f"{where} must be an object")
    cluster_id = entry.get("clusterID")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise InvalidConfig(f"{where}: clusterID must be a non-empty string")
    where = f"{where} (clusterID {cluster_id!r})"
    monitors = entry.get("monitors")
    if (
        not isinstance(monitors, list)
        or not monitors
        or not all(isinstance(m, str) and m.strip() for m in monitors)
    ):
        raise InvalidConfig(f"{where}: monitors must be a non-empty list of 'host:port' strings")
    rbd = entry.get("rbd")
    if rbd is None:
        rbd = {}
    if not isinstance(rbd, dict):
        raise InvalidConfig(f"{where}: rbd must be an object")
    namespace = rbd.get("radosNamespace", "")
    if not isinstance(namespace, str):
        raise InvalidConfig(f"{where}: rbd.radosNamespace must be a string")
    count = rbd.get("mirrorDaemonCount", DEFAULT_MIRROR_DAEMON_COUNT)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidConfig(f"{where}: rbd.mirrorDaemonCount must be a whole number >= 0")
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
