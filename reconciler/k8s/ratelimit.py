"""Rate limiters with client-go's semantics.

`when(item)` answers "how long until this item may be retried" and records the attempt;
`forget(item)` clears the item's history once it succeeded.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Hashable
from typing import Protocol

from reconciler.k8s.clock import MONOTONIC, Clock


class RateLimiter(Protocol):
    def when(self, item: Hashable) -> float:
        """Seconds to wait before `item` may be processed again; counts one more failure."""
        ...

    def forget(self, item: Hashable) -> None:
        """Drop the failure history of `item`."""
        ...

    def num_requeues(self, item: Hashable) -> int:
        """Failures recorded for `item` since it was last forgotten."""
        ...


class ItemExponentialBackoff:
    """Per-item delay `base * 2**failures`, capped; only `forget` resets it."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        failures = self._failures.get(item, 0)
        self._failures[item] = failures + 1
        # Past 2**64 the float product overflows to inf; the cap is reached long before.
        if failures > 64:
            return self.cap
        return min(self.base * 2.0**failures, self.cap)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up.

    `reserve()` always takes a token and says how long to wait for it, so callers that were
    refused a token wait in the order they asked (the balance goes negative), like
    golang.org/x/time/rate's Reserve.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = MONOTONIC) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock.now()

    def reserve(self) -> float:
        now = self._clock.now()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def wait(self) -> None:
        """Take a token, sleeping until it is due."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class BucketRateLimiter:
    """An overall limit across all items: every retry takes a token from one bucket."""

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket

    def when(self, item: Hashable) -> float:
        return self.bucket.reserve()

    def forget(self, item: Hashable) -> None:
        """The bucket keeps no per-item history."""

    def num_requeues(self, item: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The longest delay of several limiters; every limiter records every attempt."""

    def __init__(self, *limiters: RateLimiter) -> None:
        if not limiters:
            raise ValueError("MaxOfRateLimiter needs at least one limiter")
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


def default_controller_rate_limiter(clock: Clock = MONOTONIC) -> MaxOfRateLimiter:
    """client-go's DefaultControllerRateLimiter: 5 ms -> 1000 s per item, 10/s burst 100 overall."""
    return MaxOfRateLimiter(
        ItemExponentialBackoff(base=0.005, cap=1000.0),
        BucketRateLimiter(TokenBucket(rate=10.0, burst=100, clock=clock)),
    )


class JitteredBackoff:
    """Exponential backoff for reconnecting (informers, leader election): `initial` doubling per
    failure up to `cap`, each wait stretched by up to `jitter` x itself at random so clients that
    failed together do not retry together. `reset()` after a success."""

    def __init__(
        self,
        initial: float = 0.8,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1 or jitter < 0:
            raise ValueError(
                f"need 0 < initial <= cap, factor >= 1, jitter >= 0; got "
                f"initial={initial} cap={cap} factor={factor} jitter={jitter}"
            )
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._current = initial

    def next_delay(self) -> float:
        delay = self._current * (1.0 + self.jitter * self._rng.random())
        self._current = min(self._current * self.factor, self.cap)
        return min(delay, self.cap)

    def reset(self) -> None:
        self._current = self.initial
