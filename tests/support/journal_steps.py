"""Stopping or pacing a controller process at a step of its journal writes, from the test.

The instrumentation runs in the child only: `child_site/sitecustomize.py`, which Python imports
at start-up from the PYTHONPATH `environment()` gives the child (its docstring says what each
variable does). Nothing of it is in the product, nor in the test process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Where sitecustomize.py is; first on the child's PYTHONPATH.
CHILD_SITE = Path(__file__).parent / "child_site"
# The variables child_site/sitecustomize.py reads (it imports nothing from the tests).
STOP = "RECONCILER_TEST_JOURNAL_STOP"
MARKER = "RECONCILER_TEST_JOURNAL_MARKER"
HOLD = "RECONCILER_TEST_JOURNAL_HOLD"
PACE = "RECONCILER_TEST_JOURNAL_PACE"

Step = Literal["object", "directory"]


@dataclass(frozen=True)
class Stopped:
    """Where the child stands still: the marker it wrote once the write had landed."""

    step: Step
    pool: str
    oid: str
    pv: str
    pid: int


@dataclass(frozen=True)
class StopAt:
    """Stop the child after its first journal write of `step`, while `hold` exists."""

    step: Step
    marker: Path
    hold: Path

    @classmethod
    def under(cls, directory: Path, step: Step) -> StopAt:
        stop = cls(step, directory / f"stopped-{step}.json", directory / f"hold-{step}")
        stop.hold.touch()
        return stop

    def reached(self) -> Stopped | None:
        """The marker once the child wrote it."""
        if not self.marker.exists():
            return None
        found = json.loads(self.marker.read_text())
        return Stopped(found["step"], found["pool"], found["oid"], found["pv"], found["pid"])

    def release(self) -> None:
        """Let the child go on (once it is resumed, if it was SIGSTOPped)."""
        self.hold.unlink(missing_ok=True)


def environment(*, stop: StopAt | None = None, pace: float = 0.0) -> dict[str, str]:
    """The variables a child needs for the instrumentation: stopping, pacing or both."""
    path = os.pathsep.join(p for p in (str(CHILD_SITE), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path}
    if stop is not None:
        env |= {STOP: stop.step, MARKER: str(stop.marker), HOLD: str(stop.hold)}
    if pace:
        env[PACE] = str(pace)
    return env
