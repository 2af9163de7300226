"""Whether ceph-csi's own journal regenerator runs beside this controller.

ceph-csi's Helm chart deploys `cephcsi --type=controller` by default (one worker): it rebuilds the
same journals from the same PVs. It leader-elects with the Lease `<driver name>-<namespace>`, so
a held, recently renewed Lease of that name means a second writer on every journal. Both are
safe together (journal writes are compare-and-set), but an admin should know, and each
ClusterIDMapping says so in its CephCSIRegenerator condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio.client import ApiClient

from reconciler.k8s import ApiStatusError, KubeObject, request_json

log = logging.getLogger(__name__)

#: How often the Lease is read: a regenerator that starts is noticed within this.
POLL_SECONDS = 30.0


@dataclass(frozen=True)
class RegeneratorState:
    active: bool
    message: str


def lease_state(lease: KubeObject | None, name: str, now: datetime.datetime) -> RegeneratorState:
    """What the Lease `name` (None: absent) says about ceph-csi's regenerator at `now`."""
    if lease is None:
        return RegeneratorState(False, f"no Lease {name}: ceph-csi's regenerator is not running")
    spec = lease.get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    duration = float(spec.get("leaseDurationSeconds") or 0)
    renewed = _parse_time(spec.get("renewTime"))
    if not holder or renewed is None:
        return RegeneratorState(False, f"Lease {name} is not held")
    age = (now - renewed).total_seconds()
    # Twice the duration: a little clock skew between nodes must not make it flap.
    if age > 2 * max(duration, 1.0):
        return RegeneratorState(False, f"Lease {name} expired {age:.0f} s ago (held by {holder})")
    return RegeneratorState(
        True,
        f"ceph-csi's journal regenerator ({holder}, Lease {name}) writes the same journals; "
        "writes on both sides are compare-and-set, so neither loses the other's",
    )


def _parse_time(value: object) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


class RegeneratorWatch:
    """Reads ceph-csi's regenerator Lease every POLL_SECONDS; `on_change` hears of changes."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        driver_name: str,
        on_change: Callable[[], None],
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.api_client = api_client
        self.name = f"{driver_name}-{namespace}"
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{self.name}"
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self.state = RegeneratorState(False, f"Lease {self.name} not read yet")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await stop.wait()

    async def refresh(self) -> None:
        try:
            lease: KubeObject | None = await request_json(self.api_client, "GET", self.path)
        except ApiStatusError as err:
            if err.status != 404:
                log.warning("cannot read ceph-csi's regenerator Lease", extra={"error": str(err)})
                return
            lease = None
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("cannot read ceph-csi's regenerator Lease", extra={"error": str(err)})
            return
        state = lease_state(lease, self.name, datetime.datetime.now(datetime.UTC))
        if state != self.state:
            if state.active != self.state.active:
                (log.warning if state.active else log.info)(
                    "ceph-csi's journal regenerator",
                    extra={"lease": self.name, "state": state.message},
                )
            self.state = state
            self.on_change()
