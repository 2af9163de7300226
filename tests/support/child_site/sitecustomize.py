"""Test-only instrumentation of a controller *process*, never of the test process nor of the
product: `tests.support.journal_steps.environment()` puts this directory first on a child's
PYTHONPATH, and Python imports it at start-up as `sitecustomize`. It is inert unless selected by
the environment:

    RECONCILER_TEST_JOURNAL_STOP=object|directory
        Once the first journal write of that step has landed on Ceph (`object`: the per-volume
        object created with its keys; `directory`: the request name's directory key set, see
        reconciler/journal.py), write the JSON marker RECONCILER_TEST_JOURNAL_MARKER (step,
        pool, oid, pv, pid) and stand still: the event loop is blocked, so nothing else of the
        process runs (no lease renewal, no mapping write), as long as the file
        RECONCILER_TEST_JOURNAL_HOLD exists. The test then SIGKILLs the process by its PID, or
        SIGSTOPs it, removes the hold file and SIGCONTs it.
    RECONCILER_TEST_JOURNAL_PACE=<seconds>
        Wait that long (without blocking the event loop) between planning a journal write and
        making it: a burst of a few PVs then lasts long enough for a fault to land in it, and
        two writers' plans overlap.

It wraps the journal's store in the process (`VolumeJournal.__init__`), so only journal writes
are seen; the journal's own code runs unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler import journal

STOP = "RECONCILER_TEST_JOURNAL_STOP"
MARKER = "RECONCILER_TEST_JOURNAL_MARKER"
HOLD = "RECONCILER_TEST_JOURNAL_HOLD"
PACE = "RECONCILER_TEST_JOURNAL_PACE"


def _install() -> None:
    stop = os.environ.get(STOP, "")
    if stop not in ("", "object", "directory"):
        raise SystemExit(f"{STOP}={stop!r}: expected 'object' or 'directory'")
    marker = Path(os.environ[MARKER]) if stop else None
    hold = Path(os.environ[HOLD]) if stop else None
    pace = float(os.environ.get(PACE) or 0)

    def stand_still(record: dict[str, Any]) -> None:
        assert marker is not None and hold is not None
        partial = marker.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        partial.rename(marker)
        while hold.exists():
            time.sleep(0.05)  # blocks the event loop: the whole process stands still

    class Steps:
        """The journal's store, with a pace before each write and a stop after one."""

        def __init__(self, store: journal.OmapStore) -> None:
            self.store = store

        def __getattr__(self, name: str) -> Any:
            return getattr(self.store, name)

        async def omap_get(self, *args: Any, **kwargs: Any) -> dict[str, bytes] | None:
            return await self.store.omap_get(*args, **kwargs)

        async def omap_set(
            self,
            pool: str,
            namespace: str,
            oid: str,
            values: Mapping[str, bytes],
            **kwargs: Any,
        ) -> None:
            if pace:
                await asyncio.sleep(pace)
            await self.store.omap_set(pool, namespace, oid, values, **kwargs)
            step = "directory" if oid.startswith("csi.volumes.") else "object"
            if step != stop or marker is None or marker.exists():
                return
            if step == "object":
                pv = values[journal.KEY_VOLNAME].decode()
            else:
                pv = next(iter(values)).removeprefix(journal.NAME_KEY_PREFIX)
            stand_still({"step": step, "pool": pool, "oid": oid, "pv": pv, "pid": os.getpid()})

    original = journal.VolumeJournal.__init__

    def init(self: journal.VolumeJournal, store: journal.OmapStore) -> None:
        original(self, Steps(store))

    journal.VolumeJournal.__init__ = init  # type: ignore[method-assign]


if os.environ.get(STOP) or os.environ.get(PACE):
    _install()
