"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's algorithm and defaults.

Only the leader runs controllers; every replica keeps its informers warm so a new leader starts
from a synced cache. Expiry is judged by when *this* process last saw the lease change (on its
own monotonic clock), never by comparing the holder's renewTime with the local wall clock, so
clock skew between nodes cannot cause two leaders.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.client import request_json
from reconciler.k8s.clock import MONOTONIC, Clock
from reconciler.k8s.errors import ApiStatusError, LeadershipLost
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Extra random share of retry_period between acquire attempts, so followers do not poll in step.
ACQUIRE_JITTER = 0.2


def default_identity() -> str:
    """hostname (the pod name in a Deployment) plus a random suffix: unique per process."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def micro_time(moment: datetime.datetime) -> str:
    """A MicroTime as the API server expects it: RFC 3339, always six fractional digits."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaderElectionSettings:
    namespace: str
    """Namespace of the Lease."""
    name: str
    """Name of the Lease; every replica of one controller manager uses the same."""
    identity: str = field(default_factory=default_identity)
    """This replica's holderIdentity."""
    lease_duration: float = 15.0
    """Seconds a follower waits after the lease last changed before taking it over."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it gives up leading."""
    retry_period: float = 2.0
    """Seconds between attempts to acquire or renew."""

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "need lease_duration > renew_deadline > retry_period > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )
        if round(self.lease_duration) < 1:
            # The Lease holds whole seconds; 0 is refused by the API server.
            raise ValueError(f"need a lease duration of at least 1 s, got {self.lease_duration}")


class LeaderElector:
    def __init__(
        self,
        api_client: ApiClient,
        settings: LeaderElectionSettings,
        *,
        metrics: RuntimeMetrics | None = None,
        clock: Clock = MONOTONIC,
        rng: random.Random | None = None,
    ) -> None:
        self.api_client = api_client
        self.settings = settings
        self.path = (
            f"/apis/coordination.k8s.io/v1/namespaces/{settings.namespace}/leases/{settings.name}"
        )
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        metrics = metrics if metrics is not None else RuntimeMetrics()
        self._status = metrics.for_lease(settings.name)
        self._is_leader = False
        # The lease spec as last seen, and when (local monotonic clock) it last changed.
        self._observed_spec: dict[str, Any] | None = None
        self._observed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait to become leader, then run `lead()` while renewing the lease.

        When `lead()` returns (a clean shutdown) the lease is released, so a successor need not
        wait for it to expire. If renewing fails for `renew_deadline`, `lead()` is cancelled and
        LeadershipLost is raised: the process should exit rather than risk two leaders.
        Cancelling `run` cancels `lead()` and releases the lease.
        """
        await self._acquire()
        lead_task = asyncio.create_task(_run(lead), name=f"lead:{self.settings.name}")
        renew_task = asyncio.create_task(self._keep_renewing(), name=f"renew:{self.settings.name}")
        try:
            await asyncio.wait({lead_task, renew_task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await cancel_and_wait(lead_task, renew_task)
            await self._release()
            raise
        if renew_task.done():
            await cancel_and_wait(lead_task)
            self._set_leader(False)
            renew_task.result()  # raises LeadershipLost
        await cancel_and_wait(renew_task)
        await self._release()
        lead_task.result()  # re-raise whatever `lead()` raised

    # acquiring and renewing -----------------------------------------------------------------

    async def _acquire(self) -> None:
        log.info("waiting for leadership", extra=self._log_fields())
        while not await self._attempt():
            period = self.settings.retry_period
            await asyncio.sleep(period * (1 + ACQUIRE_JITTER * self._rng.random()))
        self._set_leader(True)
        log.info("became leader", extra=self._log_fields())

    async def _keep_renewing(self) -> None:
        settings = self.settings
        last_renewed = self._clock.now()
        while True:
            await asyncio.sleep(settings.retry_period)
            remaining = settings.renew_deadline - (self._clock.now() - last_renewed)
            renewed = False
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self._attempt()
                except TimeoutError:
                    renewed = False
            if renewed:
                last_renewed = self._clock.now()
            elif self._clock.now() - last_renewed >= settings.renew_deadline:
                log.error("could not renew the lease in time", extra=self._log_fields())
                raise LeadershipLost(self.path, settings.identity)

    async def _attempt(self) -> bool:
        """One try to acquire or renew; False when someone else holds it or the call failed."""
        try:
            return await self._try_acquire_or_renew()
        except (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning(
                "lease acquire/renew failed", extra={**self._log_fields(), "error": repr(err)}
            )
            return False

    async def _try_acquire_or_renew(self) -> bool:
        settings = self.settings
        now = micro_time(datetime.datetime.now(datetime.UTC))
        try:
            lease = await request_json(self.api_client, "GET", self.path)
        except ApiStatusError as err:
            if err.status != 404:
                raise
            return await self._create(now)
        spec: dict[str, Any] = lease.get("spec") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        if holder and holder != settings.identity and not self._observed_expired(spec):
            return False
        new_spec = {
            **spec,
            "holderIdentity": settings.identity,
            "leaseDurationSeconds": round(settings.lease_duration),
            "renewTime": now,
        }
        if holder != settings.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        # The resourceVersion makes this a compare-and-swap: of two racing followers, one wins.
        lease["spec"] = new_spec
        try:
            updated = await request_json(self.api_client, "PUT", self.path, lease)
        except ApiStatusError as err:
            if err.status == 409:
                return False
            raise
        self._observe(updated.get("spec") or {})
        return True

    async def _create(self, now: str) -> bool:
        settings = self.settings
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": settings.name, "namespace": settings.namespace},
            "spec": {
                "holderIdentity": settings.identity,
                "leaseDurationSeconds": round(settings.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            created = await request_json(
                self.api_client, "POST", self.path.rsplit("/", 1)[0], lease
            )
        except ApiStatusError as err:
            if err.status == 409:  # another replica created it first
                return False
            raise
        self._observe(created.get("spec") or {})
        return True

    async def _release(self) -> None:
        """Hand the lease back (empty holder) so a follower can take it at its next retry."""
        if not self._is_leader:
            return
        self._set_leader(False)
        try:
            async with asyncio.timeout(self.settings.renew_deadline):
                lease = await request_json(self.api_client, "GET", self.path)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.settings.identity:
                    return
                now = micro_time(datetime.datetime.now(datetime.UTC))
                lease["spec"] = {
                    **spec,
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "acquireTime": now,
                    "renewTime": now,
                }
                await request_json(self.api_client, "PUT", self.path, lease)
            log.info("released the lease", extra=self._log_fields())
        except (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError) as err:
            log.warning(
                "could not release the lease; it will expire",
                extra={**self._log_fields(), "error": repr(err)},
            )

    # bookkeeping -------------------------------------------------------------------------------

    def _observe(self, spec: dict[str, Any]) -> None:
        if spec != self._observed_spec:
            self._observed_spec = spec
            self._observed_at = self._clock.now()

    def _observed_expired(self, spec: dict[str, Any]) -> bool:
        duration = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration)
        return self._observed_at + duration <= self._clock.now()

    def _set_leader(self, leader: bool) -> None:
        self._is_leader = leader
        self._status.set(1 if leader else 0)

    def _log_fields(self) -> dict[str, str]:
        return {"lease": self.path, "identity": self.settings.identity}


async def _run(lead: Callable[[], Awaitable[None]]) -> None:
    await lead()
