"""A work queue with client-go's semantics, for asyncio.

- A key waiting in the queue is held once however often it is added (`dirty`).
- A key being processed is never handed out again until `done`; adding it meanwhile marks it
  dirty and `done` puts it back in the queue, so the latest state is always looked at again.
- `add_after` parks a key in a heap of ready-at times; re-adding a parked key keeps the earlier
  time.
- `add_rate_limited` delays by the rate limiter (per-item backoff combined with a token bucket);
  `forget` resets the item's backoff.

Time is read only through the injected `Clock`, so the whole state machine is testable without
sleeping: `get_nowait()` and `next_ready_in()` are the synchronous core, `get()` waits on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from reconciler.k8s.clock import MONOTONIC, Clock
from reconciler.k8s.errors import QueueShutDown
from reconciler.k8s.metrics import RuntimeMetrics
from reconciler.k8s.ratelimit import RateLimiter, default_controller_rate_limiter

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        *,
        rate_limiter: RateLimiter | None = None,
        clock: Clock = MONOTONIC,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self._rate_limiter = (
            rate_limiter if rate_limiter is not None else default_controller_rate_limiter(clock)
        )
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        # When each key entered `_queue` / started processing, for the duration metrics.
        self._queued_at: dict[K, float] = {}
        self._started_at: dict[K, float] = {}
        # Delayed keys: a heap of (ready_at, tie-breaker, key); `_ready_at` holds each parked key's
        # current time, so heap entries superseded by an earlier time are skipped when popped.
        self._heap: list[tuple[float, int, K]] = []
        self._ready_at: dict[K, float] = {}
        self._sequence = itertools.count()
        self._shutting_down = False
        self._wakeup = asyncio.Event()
        self._metrics = (metrics if metrics is not None else RuntimeMetrics()).for_queue(
            name, self._unfinished_work_seconds, self._longest_running_seconds
        )

    # adding ----------------------------------------------------------------------------------

    def add(self, key: K) -> None:
        """Queue `key` now, unless it is already waiting; if it is being processed, after `done`."""
        if self._shutting_down:
            return
        self._metrics.adds.inc()
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._enqueue(key)

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` in `delay` seconds; if it is already parked, the earlier time wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        ready_at = self._clock.now() + delay
        current = self._ready_at.get(key)
        if current is not None and current <= ready_at:
            return
        self._ready_at[key] = ready_at
        heapq.heappush(self._heap, (ready_at, next(self._sequence), key))
        # A getter may be sleeping until a later ready time.
        self._wakeup.set()

    def add_rate_limited(self, key: K) -> None:
        """Queue `key` after the rate limiter's delay: the retry path after a failure."""
        self._metrics.retries.inc()
        self.add_after(key, self._rate_limiter.when(key))

    def forget(self, key: K) -> None:
        """`key` succeeded: reset its backoff. It does not remove the key from the queue."""
        self._rate_limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return self._rate_limiter.num_requeues(key)

    # taking ----------------------------------------------------------------------------------

    def get_nowait(self) -> K | None:
        """The next ready key, now marked as processing; None if no key is ready."""
        if self._shutting_down:
            raise QueueShutDown(self.name)
        self._promote_ready()
        if not self._queue:
            return None
        key = self._queue.popleft()
        now = self._clock.now()
        self._metrics.depth.set(len(self._queue))
        self._metrics.queue_duration.observe(now - self._queued_at.pop(key, now))
        self._started_at[key] = now
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    async def get(self) -> K:
        """Wait for the next ready key. Raises QueueShutDown once `shut_down()` was called."""
        while True:
            key = self.get_nowait()
            if key is not None:
                return key
            self._wakeup.clear()
            timeout = self.next_ready_in()
            # Woken by an add/shutdown, or when the earliest parked key falls due.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()

    def done(self, key: K) -> None:
        """Processing of `key` finished; re-queue it if it was added while being processed."""
        self._processing.discard(key)
        started = self._started_at.pop(key, None)
        if started is not None:
            self._metrics.work_duration.observe(self._clock.now() - started)
        if key in self._dirty and not self._shutting_down:
            self._enqueue(key)

    def shut_down(self) -> None:
        """Stop accepting keys and make every `get()` raise QueueShutDown.

        Keys still waiting are dropped: reconciling is level-triggered, so whoever runs next
        relists and looks at everything again.
        """
        self._shutting_down = True
        self._wakeup.set()

    # state -----------------------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        """Keys ready to be handed out (parked keys not counted until due)."""
        self._promote_ready()
        return len(self._queue)

    def waiting_delayed(self) -> int:
        """Keys parked by add_after / add_rate_limited that are not due yet."""
        return len(self._ready_at)

    def is_processing(self, key: K) -> bool:
        return key in self._processing

    def next_ready_in(self) -> float | None:
        """Seconds until the earliest parked key is due (0 if one is); None if none is parked."""
        self._drop_superseded()
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self._clock.now())

    # internals -------------------------------------------------------------------------------

    def _enqueue(self, key: K) -> None:
        self._queue.append(key)
        self._queued_at.setdefault(key, self._clock.now())
        self._metrics.depth.set(len(self._queue))
        self._wakeup.set()

    def _drop_superseded(self) -> None:
        while self._heap and self._ready_at.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)

    def _promote_ready(self) -> None:
        now = self._clock.now()
        self._drop_superseded()
        while self._heap and self._heap[0][0] <= now:
            _, _, key = heapq.heappop(self._heap)
            del self._ready_at[key]
            self.add(key)
            self._drop_superseded()

    def _unfinished_work_seconds(self) -> float:
        now = self._clock.now()
        return sum(now - started for started in self._started_at.values())

    def _longest_running_seconds(self) -> float:
        now = self._clock.now()
        return max((now - started for started in self._started_at.values()), default=0.0)
