"""The Ceph credentials of PVs, read from their Secrets once per Secret rather than once per PV.

A failover re-applies thousands of PVs that all name the same one or two Secrets (ceph-csi's
provisioner Secret). Each Secret is read once (the caller's `read`: one GET and the parsing) and
its credentials are kept for `ttl` seconds, keyed by namespace/name; PVs reconciled meanwhile
share them, and concurrent reads of one Secret share one GET. Nothing else is cached: a failed
read (missing, forbidden, malformed) is raised to every caller waiting on it and the next
reconcile reads again, so a Secret an admin creates or fixes is seen at the next retry. A key
rotated in the Secret is seen within `ttl`, and at once when Ceph refuses the old one (`forget`).

Least privilege is unchanged: Secrets are still read by GET only, never listed or watched, so
the controller holds no copy of a Secret no PV names, and a Secret's key stays in memory, inside
`Credentials`, whose repr hides it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from reconciler.cephconn import Credentials
from reconciler.k8s import MONOTONIC, Clock

#: Seconds a Secret's credentials are reused: a burst of PVs shares one read, and a key rotated
#: in the Secret is picked up within this.
DEFAULT_TTL = 30.0

#: Reads and parses Secret `name` in `namespace` (namespace, name) -> Credentials.
SecretReader = Callable[[str, str], Awaitable[Credentials]]


class CredentialsCache:
    """`get(namespace, name, read)`: the Secret's credentials, `read` at most once per `ttl`."""

    def __init__(self, *, ttl: float = DEFAULT_TTL, clock: Clock = MONOTONIC) -> None:
        self.ttl = ttl
        self.clock = clock
        self.reads = 0
        """Reads made (a figure for tests and benchmarks)."""
        self._cached: dict[tuple[str, str], tuple[float, Credentials]] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[Credentials]] = {}

    async def get(self, namespace: str, name: str, read: SecretReader) -> Credentials:
        key = (namespace, name)
        cached = self._cached.get(key)
        if cached is not None and self.clock.now() - cached[0] < self.ttl:
            return cached[1]
        reading = self._reading.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read(key, read))
            # Retrieved here too, so a failure nobody waits for any more is not logged as lost.
            reading.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._reading[key] = reading
        # Shielded: a caller cancelled (its reconcile abandoned) does not fail the others.
        return await asyncio.shield(reading)

    def forget(self, namespace: str, name: str) -> None:
        """Read the Secret again next time (Ceph refused its key: it may have been rotated)."""
        self._cached.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._cached)

    async def _read(self, key: tuple[str, str], read: SecretReader) -> Credentials:
        started = self.clock.now()
        self.reads += 1
        try:
            credentials = await read(*key)
        finally:
            self._reading.pop(key, None)
        self._cached[key] = (started, credentials)
        return credentials
