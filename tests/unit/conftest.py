"""What several unit test modules build, in one place.

- Objects as the API server holds them: volume handles, PVs, ClusterIDMappings,
  VolumeHandleMappings and their conditions.
- Both reconcilers over informers that are never run: tests fill their stores by hand.
- Two fake API clients, given to the code under test as its ApiClient (injected, never patched
  in). Every call the product makes goes through `request_json` -> `ApiClient.call_api`, so that
  is what they override:
  `NoCalls` fails the test on any request, so "no API call" is checked, not assumed;
  `RecordingApiClient` records each request and answers the ones the controllers make as the API
  server does: server-side apply of an object or of its status, POST of an Event, GET of a Secret
  (from the dict it was given), DELETE.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from reconciler.cephpool import ConnectionPool
from reconciler.controllers.clusteridmapping import ClusterIDMappingReconciler
from reconciler.controllers.regenerator import RegeneratorWatch
from reconciler.controllers.volumes import DEFAULT_DRIVER, VolumeReconciler, VolumeSettings
from reconciler.csiconfig import ConfigKey, layout
from reconciler.handle import VolumeHandle
from reconciler.k8s import Informer, KubeObject
from reconciler.k8s.events import EventRecorder
from reconciler.kinds import (
    CIDM_CLUSTER_INDEX,
    CLUSTER_ID_MAPPINGS,
    CONFIG_MAPS,
    PERSISTENT_VOLUMES,
    PV_CLUSTER_INDEX,
    PV_POOL_INDEX,
    VHM_HANDLE_INDEX,
    VHM_POOL_INDEX,
    VOLUME_HANDLE_MAPPINGS,
    index_cidm_clusters,
    index_pv_cluster,
    index_pv_pool,
    index_vhm_handle,
    index_vhm_pool,
)

UUID = "0c23de1c-18fb-11eb-a903-0242ac110005"
#: This site's clusterID in the controller tests (--local-cluster-id).
LOCAL = "site-b"
#: ceph-csi's namespace in the controller tests (--csi-config-namespace).
CSI_NAMESPACE = "ceph-csi"
STAMP = "2026-11-24T08:00:00Z"


# objects -----------------------------------------------------------------------------------------


def handle(cluster_id: str, pool_id: int = 2, object_uuid: str = UUID) -> str:
    return VolumeHandle(cluster_id, pool_id, object_uuid).encode()


def condition(
    status: bool = True,
    reason: str = "Mapped",
    message: str = "",
    *,
    condition_type: str = "Ready",
    generation: int = 1,
) -> dict[str, Any]:
    """A metav1.Condition as the API server returns it."""
    return {
        "type": condition_type,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": STAMP,
    }


def pv(name: str, cluster_id: str, **csi: Any) -> KubeObject:
    """A claimed PV of ceph-csi's driver with a handle of `cluster_id`; `csi` replaces fields of
    spec.csi."""
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {
            "claimRef": {"name": f"claim-{name}", "namespace": "apps"},
            "csi": {
                "driver": "rbd.csi.ceph.com",
                "volumeHandle": handle(cluster_id),
                "volumeAttributes": {"pool": "replicapool"},
                **csi,
            },
        },
    }


def cluster_id_mapping(
    name: str,
    site_a: str,
    site_b: str = LOCAL,
    *pools: dict[str, Any],
    generation: int = 1,
    **status: Any,
) -> KubeObject:
    """A ClusterIDMapping of `site_a` and `site_b` (spec.rbdPools: `pools`); with `status`
    fields, a status written for generation 1."""
    obj: KubeObject = {
        "metadata": {"name": name, "generation": generation, "resourceVersion": "1"},
        "spec": {
            "siteA": {"clusterID": site_a},
            "siteB": {"clusterID": site_b},
            "rbdPools": list(pools),
        },
    }
    if status:
        obj["status"] = {"observedGeneration": 1, **status}
    return obj


def volume_handle_mapping(
    name: str, old_handle: str, *, resource_version: str = "1", **status: Any
) -> KubeObject:
    """PV `name`'s VolumeHandleMapping of `old_handle`; with `status` fields, written with it
    (the kind has no status subresource)."""
    obj: KubeObject = {
        "metadata": {
            "name": name,
            "generation": 1,
            "resourceVersion": resource_version,
            "uid": f"uid-vhm-{name}",
        },
        "spec": {"pvName": name, "volumeHandle": old_handle},
    }
    if status:
        obj["status"] = dict(status)
    return obj


def csi_config_map(*cluster_ids: str, name: str = "ceph-csi-config") -> KubeObject:
    """ceph-csi's ConfigMap listing `cluster_ids`, each with one monitor."""
    entries = [{"clusterID": c, "monitors": [f"{c}.example:6789"]} for c in cluster_ids]
    return {
        "metadata": {"name": name, "namespace": CSI_NAMESPACE, "resourceVersion": "1"},
        "data": {"config.json": json.dumps(entries)},
    }


# fake API clients --------------------------------------------------------------------------------


class NoCalls(ApiClient):
    """An ApiClient that fails the test on any request."""

    def __init__(self) -> None:
        super().__init__(Configuration())

    async def call_api(self, *args: Any, **kwargs: Any) -> Any:
        pytest.fail(f"unexpected API call: {args[:2]}")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """Without the query."""
    query: str
    body: Any


@dataclass
class Answer:
    """What `request_json` reads of an aiohttp response."""

    status: int
    body: Any

    async def json(self) -> Any:
        return copy.deepcopy(self.body)

    async def text(self) -> str:
        return json.dumps(self.body)

    def release(self) -> None:
        pass


class RecordingApiClient(ApiClient):
    """Records every request; answers server-side apply, Events, Secrets and DELETE like the API
    server, from the objects it holds (`objects`, by path). Anything else fails the test."""

    def __init__(self) -> None:
        super().__init__(Configuration())
        self.requests: list[Request] = []
        self.objects: dict[str, KubeObject] = {}
        self.foreign_status: dict[str, dict[str, Any]] = {}
        """Status fields of an object (by path) that another field manager owns: an apply that
        leaves them out keeps them; a merge patch sets or removes them."""
        self.vhm_status_subresource = False
        """Serve VolumeHandleMappings as the earlier CRD did, with a status subresource: the
        status of a write to the object itself is dropped."""
        self._versions = 0

    def add_secret(self, secret: KubeObject) -> str:
        """Hold `secret`; returns its path."""
        metadata = secret["metadata"]
        path = f"/api/v1/namespaces/{metadata['namespace']}/secrets/{metadata['name']}"
        self.objects[path] = copy.deepcopy(secret)
        return path

    # what tests ask -----------------------------------------------------------------------------

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def status_applies(self) -> list[dict[str, Any]]:
        """The statuses applied, in order: to a status subresource or with the object."""
        return [
            r.body["status"]
            for r in self.requests
            if r.method == "PATCH" and "fieldManager=" in r.query and "status" in r.body
        ]

    def events(self) -> list[dict[str, Any]]:
        """The Events posted, in order."""
        return [r.body for r in self.requests if r.method == "POST" and "/events" in r.path]

    def object(self, path: str) -> KubeObject:
        """The object at `path` as the server now holds it (as an informer would see it)."""
        return copy.deepcopy(self.objects[path])

    # the server ---------------------------------------------------------------------------------

    async def call_api(self, resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        path, _, query = resource_path.partition("?")
        body: Any = copy.deepcopy(kwargs.get("body"))
        self.requests.append(Request(method, path, query, body))
        if method == "GET":
            found = self.objects.get(path)
            return Answer(200, found) if found is not None else not_found(path)
        if method == "DELETE":
            gone = self.objects.pop(path, None)
            return Answer(200, gone) if gone is not None else not_found(path)
        if method == "POST" and path.endswith("/events"):
            return Answer(201, {**body, "metadata": {**body["metadata"], "name": "event-1"}})
        content_type = (kwargs.get("header_params") or {}).get("Content-Type", "")
        if method == "PATCH" and content_type == "application/merge-patch+json":
            return self._merge_status(path, body)
        if method == "PATCH" and "fieldManager=" in query:
            return self._apply(path, body)
        pytest.fail(f"the fake API server does not answer {method} {resource_path}")

    def _apply(self, path: str, body: KubeObject) -> Answer:
        """Server-side apply by one field manager, forced: it owns what it sends."""
        if path.endswith("/status"):
            path = path.removesuffix("/status")
            held = self.objects.get(path)
            if held is None:
                return not_found(path)
            held["status"] = body["status"]
        else:
            held = self.objects.setdefault(
                path,
                {
                    "apiVersion": body.get("apiVersion"),
                    "kind": body.get("kind"),
                    "metadata": {"name": body["metadata"]["name"], "uid": f"uid-{path}"},
                },
            )
            # Without a status subresource the status is written with the object, and a
            # change to it is a new generation too.
            parts = ("spec", "status") if self._status_with_object(path) else ("spec",)
            wanted = dict(body)
            if "status" in wanted and path in self.foreign_status:
                wanted["status"] = {**self.foreign_status[path], **wanted["status"]}
            changed = [part for part in parts if part in wanted and wanted[part] != held.get(part)]
            if changed:
                held["metadata"]["generation"] = held["metadata"].get("generation", 0) + 1
            for part in changed:
                held[part] = wanted[part]
            for key, value in body["metadata"].items():
                held["metadata"][key] = value
        self._versions += 1
        held["metadata"]["resourceVersion"] = str(self._versions)
        return Answer(200, held)

    def _status_with_object(self, path: str) -> bool:
        return (
            path.startswith(VOLUME_HANDLE_MAPPINGS.collection_path())
            and not self.vhm_status_subresource
        )

    def _merge_status(self, path: str, body: KubeObject) -> Answer:
        """A JSON merge patch of an object's status (null removes a field)."""
        held = self.objects.get(path)
        if held is None:
            return not_found(path)
        if self._status_with_object(path):
            status = {**(held.get("status") or {}), **body["status"]}
            held["status"] = {k: v for k, v in status.items() if v is not None}
            self.foreign_status.pop(path, None)  # this manager owns what it set or removed
            self._versions += 1
            held["metadata"]["resourceVersion"] = str(self._versions)
        return Answer(200, held)


def not_found(path: str) -> Answer:
    return Answer(404, {"kind": "Status", "code": 404, "message": f"{path} not found"})


@pytest.fixture
async def api() -> AsyncIterator[RecordingApiClient]:
    """A RecordingApiClient, closed after the test."""
    client = RecordingApiClient()
    try:
        yield client
    finally:
        await client.close()


# the reconcilers ----------------------------------------------------------------------------------


def volume_reconciler(
    api: ApiClient, connections: ConnectionPool | None = None, **settings: Any
) -> VolumeReconciler:
    """The PV controller's reconciler as `run` builds it, its informers' stores empty."""
    return VolumeReconciler(
        api,
        volumes=Informer(
            api,
            PERSISTENT_VOLUMES,
            indexers={PV_CLUSTER_INDEX: index_pv_cluster, PV_POOL_INDEX: index_pv_pool},
        ),
        volume_handle_mappings=Informer(
            api,
            VOLUME_HANDLE_MAPPINGS,
            indexers={VHM_HANDLE_INDEX: index_vhm_handle, VHM_POOL_INDEX: index_vhm_pool},
        ),
        cluster_id_mappings=cluster_id_mappings_informer(api),
        csi_config=Informer(api, CONFIG_MAPS, namespace=CSI_NAMESPACE),
        connections=connections if connections is not None else ConnectionPool(),
        events=EventRecorder(api, "test", "test"),
        settings=VolumeSettings(
            local_cluster_id=LOCAL,
            csi_config=ConfigKey(CSI_NAMESPACE, "ceph-csi-config", "config.json"),
            **settings,
        ),
    )


def cluster_id_mappings_informer(api: ApiClient) -> Informer:
    return Informer(api, CLUSTER_ID_MAPPINGS, indexers={CIDM_CLUSTER_INDEX: index_cidm_clusters})


def cluster_id_mapping_reconciler(api: ApiClient) -> ClusterIDMappingReconciler:
    """The ClusterIDMapping reconciler as `run` builds it (Helm layout), its stores empty."""
    config_maps = Informer(api, CONFIG_MAPS, namespace=CSI_NAMESPACE)
    return ClusterIDMappingReconciler(
        api,
        cluster_id_mappings=cluster_id_mappings_informer(api),
        volumes=Informer(api, PERSISTENT_VOLUMES, indexers={PV_POOL_INDEX: index_pv_pool}),
        volume_handle_mappings=Informer(
            api, VOLUME_HANDLE_MAPPINGS, indexers={VHM_POOL_INDEX: index_vhm_pool}
        ),
        events=EventRecorder(api, "test", "test"),
        local_cluster_id=LOCAL,
        csi_config_files=(config_maps, config_maps),
        layout=layout("helm", CSI_NAMESPACE),
        regenerator=RegeneratorWatch(
            api, namespace=CSI_NAMESPACE, driver_name=DEFAULT_DRIVER, on_change=lambda: None
        ),
    )
