"""Controller: N async workers draining one work queue through `reconcile(key)`.

The contract is controller-runtime's, and level-triggered: `reconcile` is handed a key, looks at
the world as it is now and answers a `Result`:

- return `Result()` (or None): done; the key's backoff is forgotten;
- return `Result(requeue_after=s)`: look again in `s` seconds (backoff forgotten);
- raise: retry with per-item backoff; an exception of `expected_errors` (a failure the reconciler
  also reports on the object, such as a missing Secret) is logged without its traceback;
- raise `TerminalError`: counted, logged, forgotten: only a change to the object brings it back.

There is no `requeue=True` (controller-runtime deprecated it): a reconcile waiting for something
relies on the event that something causes, or on `requeue_after`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from reconciler.k8s.clock import MONOTONIC, Clock
from reconciler.k8s.errors import QueueShutDown, TerminalError
from reconciler.k8s.informer import Event, Informer
from reconciler.k8s.logs import reconcile_context
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.ratelimit import RateLimiter
from reconciler.k8s.tasks import cancel_and_wait, wait_set
from reconciler.k8s.workqueue import WorkQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None
    """Look at the key again after this many seconds."""


Reconcile = Callable[[str], Awaitable[Result | None]]
# Which keys an event concerns: the object's own key by default, or e.g. its owner's.
KeyMapper = Callable[[Event], Iterable[str]]


@dataclass(frozen=True)
class ControllerSettings:
    workers: int = 1
    """Concurrent reconciles (--workers); one key is never reconciled twice at once."""
    shutdown_timeout: float = 30.0
    """On stop, how long in-flight reconciles may finish before they are cancelled."""
    expected_errors: tuple[type[Exception], ...] = ()
    """Failures that are part of normal operation: retried and logged without a traceback."""


class Controller:
    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        *,
        settings: ControllerSettings | None = None,
        metrics: RuntimeMetrics | None = None,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.name = name
        self.settings = settings or ControllerSettings()
        if self.settings.workers < 1:
            raise ValueError(f"controller {name}: workers must be >= 1")
        self._reconcile = reconcile
        metrics = metrics if metrics is not None else RuntimeMetrics()
        self.queue: WorkQueue[str] = WorkQueue(
            name, rate_limiter=rate_limiter, clock=clock, metrics=metrics
        )
        self._metrics = metrics.for_controller(name, self.settings.workers)
        self._informers: list[Informer] = []

    def reads(self, informer: Informer) -> None:
        """Start only once `informer` has synced: reconcile reads its cache, whose events need
        not enqueue anything."""
        self._informers.append(informer)

    def watch(self, informer: Informer, mapper: KeyMapper | None = None) -> None:
        """Enqueue the keys `mapper` derives from each of `informer`'s events (default: its key);
        the controller reads it too."""
        self.reads(informer)
        if mapper is None:
            informer.add_handler(lambda event: self.queue.add(event.key))
        else:
            informer.add_handler(lambda event: self.enqueue(mapper(event)))

    def enqueue(self, keys: Iterable[str]) -> None:
        """Reconcile `keys` (again), e.g. when something outside any informer changed."""
        for key in keys:
            self.queue.add(key)

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set, then drain gracefully.

        Waits for the watched informers' caches first (never act on a partial view). On stop the
        queue is shut down so idle workers exit, in-flight reconciles get `shutdown_timeout`
        seconds to finish, and whatever is still running then is cancelled. Cancelling `run`
        itself cancels in-flight reconciles at once.
        """
        waiting_for_sync = asyncio.create_task(self._wait_synced())
        stopping = asyncio.create_task(wait_set(stop))
        try:
            await asyncio.wait({waiting_for_sync, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(waiting_for_sync, stopping)
        if stop.is_set():
            self.queue.shut_down()
            return
        log.info(
            "starting workers", extra={"controller": self.name, "workers": self.settings.workers}
        )
        workers = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self.settings.workers)
        ]
        try:
            await stop.wait()
        except asyncio.CancelledError:
            # Cancelled from outside (e.g. leadership lost): abandon in-flight work at once.
            self.queue.shut_down()
            await cancel_and_wait(*workers)
            raise
        await self._drain(workers)

    async def _wait_synced(self) -> None:
        await asyncio.gather(*(informer.wait_synced() for informer in self._informers))

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        self.queue.shut_down()
        started = time.monotonic()
        _, still_running = await asyncio.wait(workers, timeout=self.settings.shutdown_timeout)
        await cancel_and_wait(*still_running)
        log.info(
            "workers stopped",
            extra={
                "controller": self.name,
                "abandoned": len(still_running),
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            try:
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: str) -> None:
        metrics = self._metrics
        with reconcile_context(self.name, key):
            metrics.active_workers.inc()
            started = time.monotonic()
            try:
                result = await self._reconcile(key)
            except Exception as err:
                metrics.reconcile_total["error"].inc()
                self._failed(key, err)
            else:
                self._requeue(key, result or Result())
            finally:
                metrics.reconcile_time.observe(time.monotonic() - started)
                metrics.active_workers.dec()

    def fail(self, key: str, err: Exception) -> None:
        """Work a reconcile of `key` handed off (a deferred write) failed with `err`: counted in
        the error counters, logged and retried (unless terminal) as a failure of the reconcile
        itself. The reconcile's own result (reconcile_total) stays as it was counted."""
        with reconcile_context(self.name, key):
            self._failed(key, err)

    def _failed(self, key: str, err: Exception) -> None:
        metrics = self._metrics
        metrics.reconcile_errors.inc()
        if isinstance(err, TerminalError):
            metrics.terminal_errors.inc()
            self.queue.forget(key)
            log.error("reconcile failed terminally; not retrying", extra={"error": str(err)})
            return
        self.queue.add_rate_limited(key)
        log.warning(
            "reconcile failed; will retry",
            exc_info=not isinstance(err, self.settings.expected_errors),
            extra={"error": str(err), "retries": self.queue.num_requeues(key)},
        )

    def _requeue(self, key: str, result: Result) -> None:
        if result.requeue_after is not None and result.requeue_after > 0:
            self._metrics.reconcile_total["requeue_after"].inc()
            self.queue.forget(key)
            self.queue.add_after(key, result.requeue_after)
        else:
            self._metrics.reconcile_total["success"].inc()
            self.queue.forget(key)
