"""Rate limiters: per-item exponential backoff, the token bucket and their combination."""

from __future__ import annotations

import random

import pytest

from reconciler.k8s.clock import ManualClock
from reconciler.k8s.ratelimit import (
    BucketRateLimiter,
    ItemExponentialBackoff,
    JitteredBackoff,
    MaxOfRateLimiter,
    TokenBucket,
    default_controller_rate_limiter,
)


def test_backoff_doubles_from_5ms_and_caps_at_1000s() -> None:
    backoff = ItemExponentialBackoff()
    delays = [backoff.when("a") for _ in range(30)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    # 0.005 * 2**17 = 655.36 s is the last step below the cap.
    assert delays[17] == pytest.approx(655.36)
    assert delays[18:] == [1000.0] * 12
    assert backoff.num_requeues("a") == 30


def test_backoff_is_per_item_and_reset_only_by_forget() -> None:
    backoff = ItemExponentialBackoff()
    for _ in range(5):
        backoff.when("a")
    assert backoff.when("b") == 0.005
    assert backoff.when("a") == 0.005 * 2**5
    backoff.forget("a")
    assert backoff.num_requeues("a") == 0
    assert backoff.when("a") == 0.005
    assert backoff.num_requeues("b") == 1


def test_backoff_stays_at_cap_after_very_many_failures() -> None:
    backoff = ItemExponentialBackoff(base=0.005, cap=1000.0)
    delays = [backoff.when("a") for _ in range(2000)]
    assert delays[-1] == 1000.0


def test_backoff_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="base"):
        ItemExponentialBackoff(base=2.0, cap=1.0)


def test_bucket_serves_burst_then_spaces_requests_at_rate() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10.0, burst=100, clock=clock)
    assert [bucket.reserve() for _ in range(100)] == [0.0] * 100
    # Reservations past the burst queue up behind each other, 0.1 s apart.
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.3])


def test_bucket_refills_with_time_but_never_above_burst() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock)
    for _ in range(5):
        bucket.reserve()
    clock.advance(0.25)  # 2.5 tokens back
    assert [bucket.reserve() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.05])
    clock.advance(3600)
    assert [bucket.reserve() for _ in range(5)] == [0.0] * 5
    assert bucket.reserve() == pytest.approx(0.1)


def test_default_limiter_takes_the_longer_of_backoff_and_bucket() -> None:
    clock = ManualClock()
    limiter = default_controller_rate_limiter(clock)
    # Within the burst the per-item backoff decides.
    assert limiter.when("a") == 0.005
    assert limiter.when("a") == 0.01
    # Drain the bucket with other items (each on its first failure: 5 ms backoff) ...
    for i in range(98):
        limiter.when(f"other-{i}")
    # ... and now the bucket's wait (0.1 s) beats a fresh item's 5 ms backoff.
    assert limiter.when("fresh") == pytest.approx(0.1)
    # The backoff still wins once it grows past the bucket's wait.
    for _ in range(10):
        limiter.when("a")
    assert limiter.when("a") == pytest.approx(0.005 * 2**12)
    assert limiter.num_requeues("a") == 13
    limiter.forget("a")
    assert limiter.num_requeues("a") == 0


def test_max_of_records_every_attempt_in_every_limiter() -> None:
    fast = ItemExponentialBackoff(base=0.001, cap=1.0)
    slow = ItemExponentialBackoff(base=0.1, cap=10.0)
    limiter = MaxOfRateLimiter(fast, BucketRateLimiter(TokenBucket(1.0, 1, ManualClock())), slow)
    assert limiter.when("x") == 0.1
    assert fast.num_requeues("x") == slow.num_requeues("x") == 1
    limiter.forget("x")
    assert fast.num_requeues("x") == slow.num_requeues("x") == 0


async def test_bucket_wait_returns_at_once_within_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=3, clock=ManualClock())
    for _ in range(3):
        await bucket.wait()
    assert bucket.reserve() == pytest.approx(1.0)


class FixedRandom(random.Random):
    """random() always answers `value`: pins the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def test_reconnect_backoff_doubles_from_0_8s_to_30s_with_jitter_within_bounds() -> None:
    no_jitter = JitteredBackoff(rng=FixedRandom(0.0))
    assert [no_jitter.next_delay() for _ in range(8)] == pytest.approx(
        [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    )
    full_jitter = JitteredBackoff(rng=FixedRandom(0.999))
    delays = [full_jitter.next_delay() for _ in range(8)]
    assert delays[0] == pytest.approx(0.8 * 1.999)
    assert delays[-1] == 30.0
    seeded = JitteredBackoff(rng=random.Random(7))
    for step in range(10):
        floor = min(0.8 * 2**step, 30.0)
        assert floor <= seeded.next_delay() <= min(2 * floor, 30.0)


def test_reconnect_backoff_reset_starts_over() -> None:
    backoff = JitteredBackoff(rng=FixedRandom(0.0))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.8)
