"""Status writes taken off the PV controller's workers during a burst, so journals never wait for
the bookkeeping.

A PV's journal is what makes ceph-csi work again; its VolumeHandleMapping is the record of it. A
journal costs a few RADOS ops, its mapping one API write, and during a failover of thousands
of PVs the API server is the slower of the two. When the controller has a backlog, each worker
regenerates a journal and hands the mapping's writes to this recorder, then takes the next PV:
journals go at Ceph's pace while `concurrency` writers record them at the API server's (only
WHILE_JOURNALS_WAIT of them while journals are still waiting, since journals and writes share
one process' CPU). Without a backlog, workers record inline as before (nothing is deferred,
nothing reordered).

Per PV only the latest write waits (a PV reconciled again meanwhile replaces it) and one PV's
writes never run concurrently. A write that fails goes back to the controller (`fail`), which
counts, logs and retries it as a failed reconcile of the PV (the next one finds the journal in
place and records it again), or leaves it if it was refused for good (TerminalError), as a
reconcile's own failure. On stop, writes still waiting are dropped: the next process reconciles
every PV anyway, level-triggered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from reconciler.k8s.tasks import cancel_and_wait

#: Mapping writes in flight at once, on top of what the workers write themselves.
DEFAULT_CONCURRENCY = 16
#: PVs waiting in the controller's queue from which on writes are handed over: a burst.
MIN_BACKLOG = 16
#: Writers that write while journals are still waiting: the others start once the burst's
#: journals are written, so that journals get the process' CPU first.
WHILE_JOURNALS_WAIT = 4
#: Seconds between two looks at the backlog of a writer held back.
HELD_BACK = 0.1
#: Seconds writes still running on stop may take before they are cancelled.
DRAIN_SECONDS = 10.0

Write = Callable[[], Awaitable[None]]


class StatusRecorder:
    def __init__(
        self,
        fail: Callable[[str, Exception], None],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        backlog: Callable[[], int] = lambda: 0,
    ) -> None:
        self.fail = fail
        """The controller's: a PV's write failed with this error."""
        self.concurrency = concurrency
        self.backlog = backlog
        """PVs waiting in the controller's queue (for their journals)."""
        self.recorded = 0
        self.failed = 0
        self._waiting: dict[str, Write] = {}
        self._writing: set[str] = set()
        self._wakeup = asyncio.Event()
        self._running = False

    def takes(self, backlog: int) -> bool:
        """Whether a worker with `backlog` PVs waiting behind it should hand its writes over."""
        return self._running and backlog >= MIN_BACKLOG

    def submit(self, key: str, write: Write) -> None:
        """Make `write` for PV `key` soon, replacing one of the same PV still waiting."""
        self._waiting[key] = write
        self._wakeup.set()

    def __len__(self) -> int:
        """Writes waiting or in flight."""
        return len(self._waiting) + len(self._writing)

    async def run(self, stop: asyncio.Event) -> None:
        """Write until `stop` is set; then let writes in flight finish (bounded)."""
        self._running = True
        writers = [
            asyncio.create_task(self._writer(i), name=f"status-writer-{i}")
            for i in range(self.concurrency)
        ]
        try:
            await stop.wait()
        finally:
            self._running = False
            self._waiting.clear()
            self._wakeup.set()  # idle writers see there is nothing left, and return
            _, still_writing = await asyncio.wait(writers, timeout=DRAIN_SECONDS)
            await cancel_and_wait(*still_writing)

    def _take(self) -> tuple[str, Write] | None:
        for key in self._waiting:
            if key not in self._writing:
                return key, self._waiting.pop(key)
        return None

    async def _writer(self, index: int) -> None:
        while True:
            if index >= WHILE_JOURNALS_WAIT and self._running and self.backlog() >= MIN_BACKLOG:
                await asyncio.sleep(HELD_BACK)  # journals first
                continue
            taken = self._take()
            if taken is None:
                if not self._running:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            key, write = taken
            self._writing.add(key)
            try:
                await write()
                self.recorded += 1
            except Exception as err:
                self.failed += 1
                self.fail(key, err)
            finally:
                self._writing.discard(key)
                if self._waiting:
                    self._wakeup.set()
