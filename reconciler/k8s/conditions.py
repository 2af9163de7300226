"""metav1.Condition bookkeeping for statuses.

Conditions keep their lastTransitionTime while their status stays the same, so re-applying an
unchanged status is a no-op on the server.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

READY = "Ready"

Condition = dict[str, Any]


def now() -> str:
    """The current time as metav1.Time writes it (seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    condition_type: str, status: bool, reason: str, message: str, generation: int | None = None
) -> Condition:
    """A metav1.Condition without its lastTransitionTime (see `merge_conditions`); the
    generation it was observed at, for kinds whose status is a subresource."""
    found: Condition = {
        "type": condition_type,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        found["observedGeneration"] = generation
    return found


def find_condition(obj: Mapping[str, Any], condition_type: str) -> Condition | None:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == condition_type), None)


def merge_conditions(
    old: Sequence[Condition], new: Sequence[Condition], at: str | None = None
) -> list[Condition]:
    """`new`, each keeping the old lastTransitionTime when its status did not change."""
    previous = {c.get("type"): c for c in old}
    merged = []
    for cond in new:
        before = previous.get(cond["type"])
        same = before is not None and before.get("status") == cond["status"]
        since = before.get("lastTransitionTime") if same and before else None
        merged.append({**cond, "lastTransitionTime": since or at or now()})
    return merged


def is_ready(obj: Mapping[str, Any]) -> bool:
    """Ready=True, for the object's current generation where its status says which one it
    observed (a stale status does not count). A kind without a status subresource writes spec
    and status at once, so its status cannot be stale and carries no observedGeneration."""
    ready = find_condition(obj, READY)
    status = obj.get("status") or {}
    return (
        ready is not None
        and ready.get("status") == "True"
        and status.get("observedGeneration", obj["metadata"].get("generation"))
        == obj["metadata"].get("generation")
    )


def transition(old: Mapping[str, Any], new_ready: Condition) -> bool:
    """Whether Ready changed status or reason: the changes worth an Event."""
    before = find_condition(old, READY)
    return before is None or (before.get("status"), before.get("reason")) != (
        new_ready["status"],
        new_ready["reason"],
    )
