"""Posting core/v1 Events about objects, summed up during a burst. A failed post is logged and
never fails a reconcile.

A controller that posts an Event per object transition posts thousands at once when thousands of
objects change together (a failover re-applies every PV): as many API writes as the objects
themselves, and a wall of Events nobody reads one by one. Like client-go's event correlator,
similar Events are aggregated: those with the same reporting component, involved kind,
namespace, type and reason within `window` seconds. The first `burst` of them are posted one by
one, as they come; the rest are counted and posted as one summary Event per group every
`flush_interval` seconds ("(combined from similar events): 1250 more PersistentVolumes ...",
naming a few of them, `count` set to how many it stands for), by `run` beside the controllers.
(client-go's correlator groups per object and PATCHes the count of one Event; across objects,
and with `create` as the only verb RBAC grants, a summary per interval is posted instead.)

So a burst costs at most `burst` Events per group plus one per group and interval, whatever its
size; each object's own state stays in its status, which is where controllers record it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.client import request_json
from reconciler.k8s.clock import MONOTONIC, Clock
from reconciler.k8s.conditions import now
from reconciler.k8s.errors import ApiStatusError

log = logging.getLogger(__name__)

#: Events about cluster-scoped objects (PVs, custom resources) live in this namespace.
CLUSTER_EVENTS_NAMESPACE = "default"
#: The API server rejects longer Event messages.
MAX_MESSAGE = 1024
#: How many objects a summary names.
NAMED_IN_SUMMARY = 5
SUMMARY_PREFIX = "(combined from similar events): "


@dataclass(frozen=True)
class EventSettings:
    burst: int = 10
    """Similar Events posted one by one within `window` before the rest are summed up
    (client-go's maxEvents)."""
    window: float = 600.0
    """Seconds a group of similar Events lasts (client-go's aggregation interval)."""
    flush_interval: float = 10.0
    """Seconds between two summaries of one group."""


@dataclass
class _Group:
    """Similar Events since `started`: how many were posted one by one, which wait for the next
    summary (the latest object, its message, a few names)."""

    started: float
    posted: int = 0
    pending: int = 0
    latest: tuple[Mapping[str, Any], str] | None = None
    names: list[str] = field(default_factory=list)


class EventRecorder:
    """Posts Events as `component`, from the process `instance` (the Lease holder's identity)."""

    def __init__(
        self,
        api_client: ApiClient,
        component: str,
        instance: str,
        settings: EventSettings | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.api_client = api_client
        self.component = component
        self.instance = instance
        self.settings = settings or EventSettings()
        self.clock = clock
        self.posted = 0
        """Events posted (one by one and summaries)."""
        self.summed_up = 0
        """Events that went into a summary instead of being posted."""
        self._groups: dict[tuple[str, str, str, str, str], _Group] = {}

    async def record(
        self,
        obj: Mapping[str, Any],
        kind: tuple[str, str],
        *,
        warning: bool,
        reason: str,
        message: str,
    ) -> None:
        """An Event about `obj`, whose (apiVersion, kind) is `kind`; during a burst of similar
        ones, counted into the group's next summary instead."""
        metadata = obj["metadata"]
        namespace = metadata.get("namespace") or CLUSTER_EVENTS_NAMESPACE
        key = (kind[0], kind[1], namespace, "Warning" if warning else "Normal", reason)
        group = self._groups.get(key)
        at = self.clock.now()
        if group is None or at - group.started >= self.settings.window:
            if group is not None and group.pending:
                await self._post_summary(key, group)
            group = self._groups[key] = _Group(started=at)
        if group.posted < self.settings.burst:
            group.posted += 1
            await self._post(obj, kind, warning=warning, reason=reason, message=message)
            return
        group.pending += 1
        self.summed_up += 1
        group.latest = (obj, message)
        if len(group.names) < NAMED_IN_SUMMARY:
            group.names.append(str(metadata["name"]))

    async def flush(self) -> None:
        """Post the summary of every group with Events waiting (what `run` does periodically)."""
        for key, group in list(self._groups.items()):
            if group.pending:
                await self._post_summary(key, group)
            if self.clock.now() - group.started >= self.settings.window:
                del self._groups[key]

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every `flush_interval` seconds until `stop` is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.flush_interval):
                    await stop.wait()
            await self.flush()

    async def _post_summary(self, key: tuple[str, str, str, str, str], group: _Group) -> None:
        assert group.latest is not None
        obj, message = group.latest
        count, names = group.pending, group.names
        group.pending, group.latest, group.names = 0, None, []
        kind, warning, reason = (key[0], key[1]), key[3] == "Warning", key[4]
        more = f" and {count - len(names)} more" if count > len(names) else ""
        summary = (
            f"{SUMMARY_PREFIX}{count} more {kind[1]}s had {reason}: {', '.join(names)}{more}; "
            f"the latest: {message}"
        )
        await self._post(obj, kind, warning=warning, reason=reason, message=summary, count=count)

    async def _post(
        self,
        obj: Mapping[str, Any],
        kind: tuple[str, str],
        *,
        warning: bool,
        reason: str,
        message: str,
        count: int = 1,
    ) -> None:
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
            "count": count,
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
        else:
            self.posted += 1
