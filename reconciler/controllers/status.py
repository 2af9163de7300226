"""What both controllers share: metav1.Condition bookkeeping, server-side apply, Events, and the
errors that only arise between Kubernetes and Ceph (Secrets, ceph-csi-config).

Conditions keep their lastTransitionTime while their status stays the same, so re-applying an
unchanged status is a no-op on the server. Events are posted only for transitions; a failed post
is logged and never fails a reconcile.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from reconciler.controllers.kinds import FIELD_MANAGER
from reconciler.errors import ReconcilerError
from reconciler.k8s import ApiStatusError, KubeObject, Resource, request_json

log = logging.getLogger(__name__)

READY = "Ready"
#: Events about cluster-scoped objects (PVs, mappings) live in this namespace.
CLUSTER_EVENTS_NAMESPACE = "default"
COMPONENT = "rbd-mirror-reconciler"

Condition = dict[str, Any]


class SecretNotFound(ReconcilerError):
    reason = "SecretNotFound"
    # Secrets are not watched (that would need list/watch on them): retry with backoff instead.
    retryable = True

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"Secret {namespace}/{name} with the Ceph credentials does not exist")


class InvalidSecret(ReconcilerError):
    reason = "InvalidSecret"
    retryable = True

    def __init__(self, namespace: str, name: str, problem: str) -> None:
        super().__init__(f"Secret {namespace}/{name}: {problem}")


class CSIConfigUnavailable(ReconcilerError):
    """ceph-csi-config is missing or unusable; ceph-csi cannot work either until it is fixed."""

    reason = "CSIConfigUnavailable"
    retryable = True


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: bool, reason: str, message: str, generation: int) -> Condition:
    """A metav1.Condition without its lastTransitionTime (see `merge_conditions`)."""
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def find_condition(obj: Mapping[str, Any], kind: str) -> Condition | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == kind), None)


def merge_conditions(
    old: Sequence[Condition], new: Sequence[Condition], at: str | None = None
) -> list[Condition]:
    """`new`, each keeping the old lastTransitionTime when its status did not change."""
    previous = {c.get("type"): c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"]
        since = before.get("lastTransitionTime") if same and before else None
        merged.append({**cond, "lastTransitionTime": since or at or now()})
    return merged


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Ready=True for the object's current generation (a stale status does not count)."""
    ready = find_condition(obj, READY)
    status = obj.get("status") or {}
    return (
        ready is not None
        and ready.get("status") == "True"
        and status.get("observedGeneration") == obj["metadata"].get("generation")
    )


def transition(old: Mapping[str, Any], new_ready: Condition) -> bool:
    """Whether Ready changed status or reason: the changes worth an Event."""
    before = find_condition(old, READY)
    return before is None or (before.get("status"), before.get("reason")) != (
        new_ready["status"],
        new_ready["reason"],
    )


def object_path(resource: Resource, name: str, namespace: str | None = None) -> str:
    return f"{resource.collection_path(namespace)}/{name}"


async def server_side_apply(
    api_client: ApiClient,
    resource: Resource,
    body: KubeObject,
    *,
    subresource: str = "",
) -> KubeObject:
    """Apply `body` (server-side, our field manager, forced); `subresource="status"` for status."""
    path = object_path(resource, body["metadata"]["name"], body["metadata"].get("namespace"))
    if subresource:
        path += f"/{subresource}"
    return await request_json(
        api_client,
        "PATCH",
        f"{path}?fieldManager={FIELD_MANAGER}&force=true",
        body,
        content_type="application/apply-patch+yaml",
    )


class EventRecorder:
    """Posts core/v1 Events about objects; never raises."""

    def __init__(self, api_client: ApiClient, instance: str) -> None:
        self.api_client = api_client
        self.instance = instance

    async def record(
        self,
        obj: Mapping[str, Any],
        kind: tuple[str, str],
        *,
        warning: bool,
        reason: str,
        message: str,
    ) -> None:
        """An Event about `obj`, whose (apiVersion, kind) is `kind`."""
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or CLUSTER_EVENTS_NAMESPACE
        stamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": kind[0],
                "kind": kind[1],
                "name": metadata["name"],
                "uid": metadata.get("uid", ""),
                "resourceVersion": metadata.get("resourceVersion", ""),
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await request_json(
                self.api_client, "POST", f"/api/v1/namespaces/{namespace}/events", event
            )
        except (ApiStatusError, aiohttp.ClientError, TimeoutError) as err:
            log.warning(
                "could not post an Event",
                extra={"object": metadata["name"], "reason": reason, "error": str(err)},
            )
