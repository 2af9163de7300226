"""ceph-csi's own cluster-mapping.json, rendered from the Ready ClusterIDMappings, so that an
unmodified ceph-csi resolves old handles too."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from kubernetes_asyncio.client import ApiClient

from reconciler.controllers.clusterids import MappingSpec
from reconciler.errors import InvalidConfig
from reconciler.k8s import (
    ApiStatusError,
    Event,
    Informer,
    KubeObject,
    Result,
    TerminalError,
    request_json,
)
from reconciler.k8s.conditions import is_ready
from reconciler.kinds import COMPONENT

log = logging.getLogger(__name__)

#: The one key of the renderer's queue: there is one file to render.
RENDER_KEY = "cluster-mapping.json"

#: Marks the entries this controller renders. ceph-csi ignores keys it does not know, and every
#: entry without it (an admin's own, say for CephFS) is kept as it is.
RENDERED_BY = "renderedBy"


def render_cluster_mapping(mappings: Iterable[KubeObject], existing: str | None = None) -> str:
    """ceph-csi's cluster-mapping.json from the Ready mappings, siteA as key, siteB as value,
    after the entries of `existing` (the file as it is) that this controller did not render.

    ceph-csi matches an entry by either side and reads the pool IDs in the matching direction,
    so the same file serves both sites. Pools whose IDs are not both known are left out.
    Raises InvalidConfig when `existing` is not a JSON list of objects: it is not overwritten.
    """
    entries = [entry for entry in _entries(existing) if RENDERED_BY not in entry]
    for obj in sorted(mappings, key=lambda o: str(o["metadata"]["name"])):
        if not is_ready(obj):
            continue
        spec = MappingSpec.from_object(obj)
        status = obj["status"]
        local_is_a = status.get("localClusterID") == spec.site_a
        pools = []
        for pool in status.get("rbdPools") or []:
            local_id, remote_id = pool.get("localPoolID"), pool.get("remotePoolID")
            if local_id is None or remote_id is None:
                continue
            a, b = (local_id, remote_id) if local_is_a else (remote_id, local_id)
            pools.append({str(a): str(b)})
        entries.append(
            {
                "clusterIDMapping": {spec.site_a: spec.site_b},
                "RBDPoolIDMapping": pools,
                RENDERED_BY: f"{COMPONENT}: ClusterIDMapping {spec.name}",
            }
        )
    return json.dumps(entries, indent=2) + "\n"


def _entries(existing: str | None) -> list[dict[str, Any]]:
    if not existing or not existing.strip():
        return []
    try:
        parsed = json.loads(existing)
    except ValueError as err:
        raise InvalidConfig(f"the cluster mapping in place is not JSON ({err})") from err
    if not isinstance(parsed, list) or not all(isinstance(e, dict) for e in parsed):
        raise InvalidConfig("the cluster mapping in place is not a JSON list of objects")
    return parsed


class CephCSIMappingRenderer:
    """Keeps one key of one ConfigMap equal to `render_cluster_mapping` of the mappings."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        cluster_id_mappings: Informer,
        config_maps: Informer,
        namespace: str,
        name: str,
        key: str,
    ) -> None:
        self.api_client = api_client
        self.cluster_id_mappings = cluster_id_mappings
        self.config_maps = config_maps
        self.namespace = namespace
        self.name = name
        self.key = key

    @staticmethod
    def render_key(event: Event) -> list[str]:
        return [RENDER_KEY]

    async def reconcile(self, _: str) -> Result | None:
        cached = self.config_maps.store.get(f"{self.namespace}/{self.name}")
        in_place = None if cached is None else (cached.get("data") or {}).get(self.key)
        try:
            rendered = render_cluster_mapping(self.cluster_id_mappings.store.objects(), in_place)
        except InvalidConfig as err:
            # Only a human can fix the file; it is retried when the ConfigMap changes.
            raise TerminalError(
                f"ConfigMap {self.namespace}/{self.name} key {self.key}: {err}; left as it is"
            ) from err
        if in_place == rendered:
            return None
        path = f"/api/v1/namespaces/{self.namespace}/configmaps"
        if cached is None:
            body = {"metadata": {"name": self.name}, "data": {self.key: rendered}}
            try:
                await request_json(self.api_client, "POST", path, body)
            except ApiStatusError as err:
                if err.status != 409:
                    raise
                # Created meanwhile: its event brings this key back, rendered over what is there.
                return None
        else:
            # A merge patch of our key alone leaves ceph-csi's config.json beside it untouched.
            await request_json(
                self.api_client,
                "PATCH",
                f"{path}/{self.name}",
                {"data": {self.key: rendered}},
                content_type="application/merge-patch+json",
            )
        log.info("rendered cluster mapping", extra={"configmap": f"{self.namespace}/{self.name}"})
        return None
