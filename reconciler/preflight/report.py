"""The preflight report: per PV, one verdict per check, rendered as a table or JSON.

Pure data and text: nothing here reads Kubernetes or Ceph, so the rendering is unit-tested
without daemons. A PV is ready when every check passed; a check not made because an earlier one
failed (no image, no credentials) counts as not passed and says why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

#: The checks, in the order they are made and shown: JSON key, table heading.
CHECKS = (
    ("volume", "VOLUME"),
    ("image", "IMAGE"),
    ("mirroring", "MIRROR"),
    ("snapshot", "SNAPSHOT AGE"),
    ("mapping", "MAPPING"),
    ("cephcsi", "CEPH-CSI"),
    ("credentials", "CREDS"),
    ("journal", "JOURNAL"),
)
CHECK_NAMES = tuple(name for name, _ in CHECKS)


@dataclass(frozen=True)
class Check:
    ok: bool | None
    """True passed, False failed, None not checked (an earlier check failed)."""
    cell: str
    """A few characters for the table."""
    detail: str
    """The sentence a human acts on."""


@dataclass
class VolumeReport:
    pv: str
    handle: str = ""
    pool: str = ""
    image: str = ""
    mirror_state: str = ""
    primary: bool | None = None
    snapshot_age: float | None = None
    snapshot_source: str = ""
    new_handle: str = ""
    journal_writes: list[str] = field(default_factory=list)
    checks: dict[str, Check] = field(default_factory=dict)

    def passed(self, name: str, cell: str, detail: str) -> None:
        self.checks[name] = Check(True, cell, detail)

    def failed(self, name: str, cell: str, detail: str) -> None:
        self.checks[name] = Check(False, cell, detail)

    def not_checked(self, name: str, why: str) -> None:
        self.checks.setdefault(name, Check(None, "-", f"not checked: {why}"))

    @property
    def ready(self) -> bool:
        return all(
            (check := self.checks.get(name)) is not None and check.ok for name in CHECK_NAMES
        )

    def problems(self) -> list[tuple[str, str]]:
        """(check, detail) of each failed check, then of each one not made."""
        failed = [(n, c.detail) for n, c in self._ordered() if c.ok is False]
        skipped = [(n, c.detail) for n, c in self._ordered() if c.ok is None]
        missing = [(n, "not checked") for n in CHECK_NAMES if n not in self.checks]
        return failed + skipped + missing

    def causes(self) -> list[str]:
        """The checks that failed (what the summary names); those not made only if none did."""
        failed = [name for name, check in self._ordered() if check.ok is False]
        return failed or [name for name, _ in self.problems()]

    def _ordered(self) -> list[tuple[str, Check]]:
        return [(n, self.checks[n]) for n in CHECK_NAMES if n in self.checks]

    def role(self) -> str:
        if self.primary is None:
            return "-"
        return "primary" if self.primary else "non-primary"

    def to_json(self) -> dict[str, Any]:
        return {
            "pv": self.pv,
            "ready": self.ready,
            "volumeHandle": self.handle,
            "pool": self.pool,
            "image": self.image,
            "mirrorState": self.mirror_state,
            "primary": self.primary,
            "snapshotAgeSeconds": (
                None if self.snapshot_age is None else round(self.snapshot_age, 1)
            ),
            "snapshotAgeSource": self.snapshot_source,
            "newVolumeHandle": self.new_handle,
            "journalWrites": self.journal_writes,
            "checks": {
                name: {"ok": check.ok, "detail": check.detail} for name, check in self._ordered()
            },
        }


@dataclass
class Report:
    local_cluster_id: str
    max_snapshot_age: float
    volumes: list[VolumeReport] = field(default_factory=list)
    ceph_calls: Counter[str] = field(default_factory=Counter)
    """What the run asked of Ceph, by kind (pool listings, image opens, omap reads, ...)."""
    notes: list[str] = field(default_factory=list)
    """Inputs left out, and how checks were made (e.g. which way caps were checked)."""

    @property
    def ready(self) -> bool:
        return bool(self.volumes) and all(v.ready for v in self.volumes)

    def summary(self) -> str:
        total = len(self.volumes)
        if not total:
            return (
                f"preflight: no PersistentVolume to check for a failover to "
                f"{self.local_cluster_id}: not ready"
            )
        ready = sum(v.ready for v in self.volumes)
        line = f"preflight: {ready} of {total} PVs ready for a failover to {self.local_cluster_id}"
        not_ready = [v for v in self.volumes if not v.ready]
        if not not_ready:
            return f"{line}: ready"
        shown = [f"{v.pv} ({', '.join(v.causes()[:3])})" for v in not_ready[:5]]
        more = f" and {len(not_ready) - 5} more" if len(not_ready) > 5 else ""
        return f"{line}; not ready: {', '.join(shown)}{more}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "summary": self.summary(),
            "localClusterID": self.local_cluster_id,
            "maxSnapshotAgeSeconds": self.max_snapshot_age,
            "cephCalls": dict(sorted(self.ceph_calls.items())),
            "notes": self.notes,
            "volumes": [v.to_json() for v in self.volumes],
        }

    def table(self) -> str:
        """One row per PV (a failed check's cell ends with '!'), then each not-ready PV's
        problems, the notes, and the summary line."""
        headings = ["PV", "IMAGE", "MIRROR", "ROLE", "SNAPSHOT AGE", "MAPPING", "CEPH-CSI"]
        headings += ["CREDS", "JOURNAL", "READY"]
        rows = [headings]
        for volume in self.volumes:
            cells = [volume.pv]
            for name in ("image", "mirroring"):
                cells.append(_cell(volume, name))
            cells.append(volume.role())
            for name in ("snapshot", "mapping", "cephcsi", "credentials", "journal"):
                cells.append(_cell(volume, name))
            cells.append("yes" if volume.ready else "NO")
            rows.append(cells)
        widths = [max(len(row[i]) for row in rows) for i in range(len(headings))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        not_ready = [v for v in self.volumes if not v.ready]
        if not_ready:
            lines.append("")
            lines.append("not ready:")
            for volume in not_ready:
                for name, detail in volume.problems():
                    lines.append(f"  {volume.pv}: {name}: {detail}")
        if self.notes:
            lines.append("")
            lines.extend(f"note: {note}" for note in self.notes)
        lines.append("")
        lines.append(self.summary())
        return "\n".join(lines)


def _cell(volume: VolumeReport, name: str) -> str:
    check = volume.checks.get(name)
    if check is None:
        return "-"
    return f"{check.cell}!" if check.ok is False else check.cell


def duration(seconds: float) -> str:
    """A short human duration: 42s, 5m12s, 2h03m, 3d04h."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
