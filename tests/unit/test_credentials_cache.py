"""The credentials cache: one Secret read for a burst of PVs, failures never kept."""

from __future__ import annotations

import asyncio

import pytest

from reconciler.cephconn import Credentials
from reconciler.controllers.credentials import DEFAULT_TTL, CredentialsCache
from reconciler.errors import SecretNotFound
from reconciler.k8s import ManualClock

KEY = "AQD9o0Fd6hQRChAAt7fMaSZXduT3NWEqylNpmg=="


class Secrets:
    """Secrets by (namespace, name); counts reads, each taking a turn of the loop."""

    def __init__(self) -> None:
        self.stored = {("ceph-csi", "csi"): Credentials("csi", KEY)}
        self.reads: list[tuple[str, str]] = []

    async def read(self, namespace: str, name: str) -> Credentials:
        self.reads.append((namespace, name))
        await asyncio.sleep(0)
        try:
            return self.stored[(namespace, name)]
        except KeyError:
            raise SecretNotFound(namespace, name) from None


async def test_concurrent_pvs_share_one_read_and_later_ones_the_cached_credentials() -> None:
    secrets, cache = Secrets(), CredentialsCache(clock=ManualClock())
    found = await asyncio.gather(*(cache.get("ceph-csi", "csi", secrets.read) for _ in range(50)))
    assert set(found) == {Credentials("csi", KEY)}
    assert await cache.get("ceph-csi", "csi", secrets.read) == Credentials("csi", KEY)
    assert secrets.reads == [("ceph-csi", "csi")]


async def test_credentials_are_read_again_after_the_ttl_or_when_forgotten() -> None:
    clock = ManualClock()
    secrets, cache = Secrets(), CredentialsCache(clock=clock)
    await cache.get("ceph-csi", "csi", secrets.read)
    clock.advance(DEFAULT_TTL - 1)
    await cache.get("ceph-csi", "csi", secrets.read)
    assert len(secrets.reads) == 1
    clock.advance(1)
    await cache.get("ceph-csi", "csi", secrets.read)
    assert len(secrets.reads) == 2
    cache.forget("ceph-csi", "csi")  # Ceph refused the key: it may have been rotated
    await cache.get("ceph-csi", "csi", secrets.read)
    assert len(secrets.reads) == 3


async def test_a_failed_read_reaches_every_waiter_and_is_not_kept() -> None:
    secrets, cache = Secrets(), CredentialsCache(clock=ManualClock())
    results = await asyncio.gather(
        *(cache.get("ceph-csi", "missing", secrets.read) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, SecretNotFound) for r in results)
    assert len(secrets.reads) == 1
    secrets.stored[("ceph-csi", "missing")] = Credentials("csi", KEY)  # an admin creates it
    assert await cache.get("ceph-csi", "missing", secrets.read) == Credentials("csi", KEY)
    assert len(secrets.reads) == 2
    assert len(cache) == 1


async def test_a_cancelled_caller_does_not_fail_the_others() -> None:
    secrets, cache = Secrets(), CredentialsCache(clock=ManualClock())
    first = asyncio.ensure_future(cache.get("ceph-csi", "csi", secrets.read))
    second = asyncio.ensure_future(cache.get("ceph-csi", "csi", secrets.read))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == Credentials("csi", KEY)
    with pytest.raises(asyncio.CancelledError):
        await first
