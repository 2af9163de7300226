"""How far a failover's remapping has come, logged while it runs.

Every `interval` seconds while PVs are pending, one log line: mappings Ready of all (done/total),
journals written by this process, the rate mappings became Ready at over the last half minute,
and the time left at that rate; one more line when the last one is done. /metrics has the same
figures for dashboards: `rbd_mirror_reconciler_volumes_pending`,
`rbd_mirror_reconciler_volume_handle_mappings{ready="true"}` and the counter
`rbd_mirror_reconciler_journals_written_total` defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from reconciler.controllers.metrics import PREFIX
from reconciler.k8s import MONOTONIC, Clock

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
#: Seconds of history the rate is taken over.
RATE_WINDOW = 30.0


class BurstProgress:
    """Reports a burst's progress (module docstring); `pending` and `ready` count PVs waiting
    for their mapping and mappings Ready, from the informers' caches."""

    def __init__(
        self,
        pending: Callable[[], int],
        ready: Callable[[], int],
        *,
        registry: CollectorRegistry | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.pending = pending
        self.ready = ready
        self.interval = interval
        self.clock = clock
        self.journals = 0
        self._journals_total = Counter(
            f"{PREFIX}_journals_written",
            "PVs whose ceph-csi journal this process wrote (some or all of its keys)",
            registry=registry,
        )
        self._history: deque[tuple[float, int]] = deque()
        self._started: tuple[float, int] | None = None

    def journal_written(self) -> None:
        self.journals += 1
        self._journals_total.inc()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await stop.wait()
            report = self.report()
            if report is not None:
                log.info(report.pop("message"), extra=report)

    def report(self) -> dict[str, Any] | None:
        """The next progress line's fields (with its "message"), or None when nothing is
        pending and nothing was."""
        pending, ready, at = self.pending(), self.ready(), self.clock.now()
        if pending == 0:
            if self._started is None:
                return None
            began, ready_then = self._started
            self._started = None
            self._history.clear()
            return {
                "message": "remapping done",
                "ready": ready,
                "remapped": ready - ready_then,
                "journals": self.journals,
                "seconds": round(at - began, 1),
            }
        if self._started is None:
            self._started = (at, ready)
        self._history.append((at, ready))
        while self._history and at - self._history[0][0] > RATE_WINDOW:
            self._history.popleft()
        then, ready_then = self._history[0]
        rate = (ready - ready_then) / (at - then) if at > then else 0.0
        return {
            "message": "remapping progress",
            "done": f"{ready}/{ready + pending}",
            "pending": pending,
            "journals": self.journals,
            "rate_per_second": round(rate, 1),
            "eta_seconds": round(pending / rate) if rate > 0 else None,
        }
