"""Posting core/v1 Events about objects. A failed post is logged and never fails a reconcile."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.client import request_json
from reconciler.k8s.conditions import now
from reconciler.k8s.errors import ApiStatusError

log = logging.getLogger(__name__)

#: Events about cluster-scoped objects (PVs, custom resources) live in this namespace.
CLUSTER_EVENTS_NAMESPACE = "default"
#: The API server rejects longer Event messages.
MAX_MESSAGE = 1024


class EventRecorder:
    """Posts Events as `component`, from the process `instance` (the Lease holder's identity)."""

    def __init__(self, api_client: ApiClient, component: str, instance: str) -> None:
        self.api_client = api_client
        self.component = component
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
            "message": message[:MAX_MESSAGE],
            "source": {"component": self.component},
            "reportingComponent": self.component,
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
