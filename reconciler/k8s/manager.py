"""Manager: wires informers, controllers, leader election and the health server into one
process lifecycle.

    run()
      start /healthz /readyz /metrics
      start every informer            (all replicas: followers keep their caches warm)
      [wait for the lease]            (only with leader election)
      run every controller            (each waits for the informers it reads to sync first)
      and every added runnable
    SIGTERM/SIGINT or `stop` set
      controllers stop taking work, finish in-flight reconciles within their bound
      release the lease, stop informers, stop the server

Losing the lease raises LeadershipLost out of `run()`: like controller-runtime, the process
should exit (and be restarted) rather than carry on with a possibly stale view.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from kubernetes_asyncio.client import ApiClient

from reconciler.k8s.controller import Controller, ControllerSettings, Reconcile
from reconciler.k8s.informer import Informer, Resource, Transform, WatchSettings
from reconciler.k8s.informers import InformerSet
from reconciler.k8s.leader import LeaderElectionSettings, LeaderElector
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.ratelimit import RateLimiter
from reconciler.k8s.server import HealthServer, ServerSettings
from reconciler.k8s.store import Indexer
from reconciler.k8s.tasks import cancel_and_wait, wait_set

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Work run beside the controllers while leading: it returns (or is cancelled) once `stop` is set.
Runnable = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(frozen=True)
class ManagerSettings:
    leader_election: LeaderElectionSettings | None = None
    """Lease to hold while running controllers; None runs them at once (a single replica)."""
    server: ServerSettings = field(default_factory=ServerSettings)
    """Where /healthz, /readyz and /metrics listen."""
    watching: WatchSettings = field(default_factory=WatchSettings)
    """Defaults for every informer made by `Manager.informer`."""


class Manager:
    def __init__(
        self,
        api_client: ApiClient,
        settings: ManagerSettings | None = None,
        *,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.api_client = api_client
        self.settings = settings or ManagerSettings()
        self.metrics = metrics if metrics is not None else RuntimeMetrics()
        self.informers = InformerSet(api_client, self.settings.watching)
        self.controllers: list[Controller] = []
        self.runnables: list[Runnable] = []
        self.elector = (
            LeaderElector(api_client, self.settings.leader_election, metrics=self.metrics)
            if self.settings.leader_election is not None
            else None
        )
        self._server: HealthServer | None = None

    # building ---------------------------------------------------------------------------------

    def informer(
        self,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, Indexer] | None = None,
        transform: Transform | None = None,
    ) -> Informer:
        """An informer shared by every reader of the same objects (see InformerSet)."""
        return self.informers.informer(
            resource,
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            indexers=indexers,
            transform=transform,
        )

    def controller(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        settings: ControllerSettings | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> Controller:
        controller = Controller(
            name, reconcile, settings=settings, metrics=self.metrics, rate_limiter=rate_limiter
        )
        self.controllers.append(controller)
        return controller

    def add(self, runnable: Runnable) -> None:
        """Run `runnable(stop)` with the controllers: only while leading, drained on stop."""
        self.runnables.append(runnable)

    # state --------------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.informers.has_synced()

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else True

    @property
    def server_port(self) -> int:
        if self._server is None:
            raise RuntimeError("the manager is not running")
        return self._server.port

    # running ------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None, *, handle_signals: bool = True) -> None:
        """Run until `stop` is set (or SIGTERM/SIGINT with `handle_signals`), then shut down."""
        stop = stop if stop is not None else asyncio.Event()
        loop = asyncio.get_running_loop()
        if handle_signals:
            for signum in STOP_SIGNALS:
                loop.add_signal_handler(signum, stop.set)
        server = HealthServer(
            self.metrics.registry, {"informers": self.ready}, self.settings.server
        )
        await server.start()
        self._server = server
        informer_tasks = self.informers.start()
        log.info("manager started", extra={"port": server.port})
        work = asyncio.create_task(
            self._run_controllers(stop)
            if self.elector is None
            else self._run_elected(self.elector, stop),
            name="controllers",
        )
        try:
            await asyncio.wait({work, *informer_tasks}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                # An informer only ends by a bug: its cache would silently go stale, so stop.
                ended = next(task for task in informer_tasks if task.done())
                raise ended.exception() or RuntimeError(f"{ended.get_name()} ended")
            work.result()
        finally:
            await cancel_and_wait(work)
            await self.informers.stop()
            await server.stop()
            self._server = None
            if handle_signals:
                for signum in STOP_SIGNALS:
                    loop.remove_signal_handler(signum)
            log.info("manager stopped")

    async def _run_elected(self, elector: LeaderElector, stop: asyncio.Event) -> None:
        electing = asyncio.create_task(elector.run(lambda: self._run_controllers(stop)))
        stopping = asyncio.create_task(wait_set(stop))
        try:
            await asyncio.wait({electing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(stopping)
        if not electing.done() and not elector.is_leader:
            # A follower has nothing to finish: stop waiting for the lease.
            await cancel_and_wait(electing)
            return
        # The leader's controllers drain on `stop`, then the elector releases the lease.
        await electing

    async def _run_controllers(self, stop: asyncio.Event) -> None:
        work: list[Awaitable[None]] = [controller.run(stop) for controller in self.controllers]
        work += [runnable(stop) for runnable in self.runnables]
        if not work:
            await stop.wait()
            return
        await asyncio.gather(*work)
