"""The preflight checks: would a failover to this (secondary) site work for each PV, and what
would it lose? Read-only; see reconciler.preflight.ceph for the only write-shaped call (a caps
probe that the OSD cancels).

Ceph's cost is bounded by pools, not PVs: per pool three listings (images, mirror info, mirror
status), one lookup of its ID and one read of the journal's directory object; per PV one read of
its own journal object (the plan); per distinct Ceph user one caps probe per pool. Images are
opened only when their mirror status lacks the snapshot time (rbd-mirror stopped, syncing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from reconciler.cephconn import CephConnection, Credentials
from reconciler.cephpool import ConnectionPool
from reconciler.csiconfig import CSIConfig, CSIConfigLayout
from reconciler.errors import (
    CephError,
    InvalidInput,
    JournalConflict,
    PoolNotFound,
    ReconcilerError,
)
from reconciler.handle import VolumeHandle
from reconciler.journal import DEFAULT_INSTANCE_ID, directory_object, volume_object
from reconciler.k8s import KubeObject
from reconciler.mirror import FROM_SNAPSHOT, MirrorImage, list_pool, snapshot_times
from reconciler.preflight.ceph import (
    PlanningView,
    caps_allow_journal,
    probe_caps,
    read_whole_omap,
    user_caps,
)
from reconciler.preflight.mapping import MappingVerdict, check_mapping, csi_config_gaps
from reconciler.preflight.report import Report, VolumeReport
from reconciler.preflight.verdicts import judge_image
from reconciler.regenerate import LocalCluster, plan_regeneration
from reconciler.volume import CSIVolume

DEFAULT_DRIVER = "rbd.csi.ceph.com"

#: Where a PV's Ceph credentials come from: (credentials, "Secret ns/name" or "--user"). Raises
#: a ReconcilerError (SecretNotFound, InvalidSecret, InvalidVolume) saying why there are none.
CredentialsFor = Callable[[CSIVolume], Awaitable[tuple[Credentials, str]]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PreflightSettings:
    local_cluster_id: str
    max_snapshot_age: float = 3600.0
    instance_id: str = DEFAULT_INSTANCE_ID
    driver: str = DEFAULT_DRIVER
    concurrency: int = 16


@dataclass
class Inputs:
    pvs: list[KubeObject]
    mappings: list[KubeObject]
    config: str | None
    """ceph-csi's config.json text (None: not found)."""
    cluster_mapping: str | None
    layout: CSIConfigLayout
    monitors: str | None = None
    """This cluster's monitors when given on the command line (else from config.json)."""
    notes: list[str] = field(default_factory=list)


@dataclass
class _Volume:
    report: VolumeReport
    volume: CSIVolume
    handle: VolumeHandle


class Preflight:
    def __init__(
        self,
        inputs: Inputs,
        *,
        settings: PreflightSettings,
        connections: ConnectionPool,
        credentials_for: CredentialsFor,
        admin: Credentials | None = None,
        progress: Progress | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.now = now
        self.inputs = inputs
        self.settings = settings
        self.connections = connections
        self.credentials_for = credentials_for
        self.admin = admin
        self.progress = progress
        self.report = Report(settings.local_cluster_id, settings.max_snapshot_age)
        self.report.notes.extend(inputs.notes)
        self.calls = self.report.ceph_calls
        self.images: dict[tuple[str, str, str], MirrorImage] = {}
        self.missing_pools: set[str] = set()
        self.pool_ids: dict[str, int | None] = {}
        self.old_pool_ids_here: dict[int, str] = {}
        """Old pool IDs (of remote handles) that name a pool on this cluster: ID -> its name."""
        self.rados_namespace = ""
        self.monitors = ""
        self.local_configured = False
        self._caps: dict[tuple[str, str, str, str], tuple[bool, str]] = {}
        self._credentials: dict[object, tuple[Credentials, str] | ReconcilerError] = {}

    async def run(self) -> Report:
        volumes = self._parse()
        self._local_config()
        how = "each PV's Ceph user probed (an omap read and a conditional write the OSD cancels)"
        if self.admin is not None:
            how += f", and its caps read with `ceph auth get` as client.{self.admin.user}"
        self.report.notes.append(f"credentials: {how}")
        ceph, why = await self._connect(volumes)
        if ceph is None:
            for v in volumes:
                self._cephcsi(v, None)
                for name in ("image", "mirroring", "snapshot", "mapping", "credentials"):
                    v.report.not_checked(name, why)
                v.report.not_checked("journal", why)
            return self.report
        await self._list_pools(ceph, volumes)
        await self._look_up_old_pool_ids(ceph, volumes)
        view = await self._planning_view(ceph, volumes)
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        done = 0

        async def check(v: _Volume) -> None:
            nonlocal done
            async with semaphore:
                await self._check(v, ceph, view)
            done += 1
            if self.progress is not None:
                self.progress(done, len(volumes))

        await asyncio.gather(*(check(v) for v in volumes))
        return self.report

    # -- inputs ----------------------------------------------------------------------------------

    def _parse(self) -> list[_Volume]:
        volumes = []
        other_drivers = 0
        for pv in self.inputs.pvs:
            name = str((pv.get("metadata") or {}).get("name") or "<unnamed>")
            report = VolumeReport(pv=name)
            try:
                volume = CSIVolume.from_pv(pv)
                if volume.driver != self.settings.driver:
                    other_drivers += 1
                    continue
                report.handle = volume.volume_handle
                handle = VolumeHandle.decode(volume.volume_handle)
                report.pool = volume.pool
                report.image = volume.image_name(handle.object_uuid)
                volume.encryption()  # as regeneration reads it: a bad value fails here
            except InvalidInput as err:
                report.failed("volume", "invalid", str(err))
                self.report.volumes.append(report)
                continue
            report.passed("volume", "ok", f"{report.pool}/{report.image}")
            self.report.volumes.append(report)
            volumes.append(_Volume(report, volume, handle))
        if other_drivers:
            self.report.notes.append(
                f"{other_drivers} PV(s) of other drivers than {self.settings.driver} left out"
            )
        return volumes

    def _local_config(self) -> None:
        """This cluster's monitors (the flag's, else config.json's) and RADOS namespace."""
        local = self.settings.local_cluster_id
        entry = None
        try:
            entry = CSIConfig.parse(self.inputs.config).get(local) if self.inputs.config else None
        except InvalidInput as err:
            self.report.notes.append(f"{self.inputs.layout.config}: {err}")
        if entry is not None:
            self.local_configured = True
            self.rados_namespace = entry.rados_namespace
        self.monitors = self.inputs.monitors or (entry.mon_host if entry is not None else "")

    async def _connect(self, volumes: Sequence[_Volume]) -> tuple[CephConnection | None, str]:
        """The connection that lists: the admin's if given, else the first PV's user's."""
        monitors = self.monitors
        if not monitors:
            return None, (
                f"no monitors for {self.settings.local_cluster_id!r}: give --monitors or an entry "
                f"in {self.inputs.layout.config}"
            )
        if self.admin is not None:
            try:
                return await self.connections.get(monitors, self.admin), ""
            except ReconcilerError as err:
                return None, f"connecting as client.{self.admin.user}: {err}"
        why = "no PV to take Ceph credentials from"
        for v in volumes:
            found = await self._credentials_of(v.volume)
            if isinstance(found, ReconcilerError):
                why = f"no usable Ceph credentials: {found}"
                continue
            try:
                return await self.connections.get(monitors, found[0]), ""
            except ReconcilerError as err:
                why = f"connecting as client.{found[0].user}: {err}"
        return None, why

    async def _credentials_of(self, volume: CSIVolume) -> tuple[Credentials, str] | ReconcilerError:
        key = volume.secret_ref
        if key not in self._credentials:
            try:
                self._credentials[key] = await self.credentials_for(volume)
            except ReconcilerError as err:
                self._credentials[key] = err
        return self._credentials[key]

    # -- pool-level reads ------------------------------------------------------------------------

    async def _list_pools(self, ceph: CephConnection, volumes: Sequence[_Volume]) -> None:
        ns = self.rados_namespace
        for pool in sorted({v.volume.pool for v in volumes}):
            try:
                listing = await list_pool(ceph, pool, ns)
                self.pool_ids[pool] = await ceph.pool_id(pool)
            except PoolNotFound:
                self.missing_pools.add(pool)
                self.pool_ids[pool] = None
                continue
            self.calls["poolListings"] += 3
            self.calls["poolLookups"] += 1
            wanted = {v.report.image for v in volumes if v.volume.pool == pool}
            by_name = listing.by_name()
            unknown = [
                image.name
                for name in sorted(wanted)
                if (image := by_name.get(name)) is not None
                and image.replica
                and image.snapshot_time is None
            ]
            if unknown:
                self.calls["imageOpens"] += len(unknown)
                times = await snapshot_times(ceph, pool, ns, unknown)
                for name, found in times.items():
                    if found is not None:
                        by_name[name] = _timed(by_name[name], found)
            for name, image in by_name.items():
                self.images[(pool, ns, name)] = image

    async def _look_up_old_pool_ids(self, ceph: CephConnection, volumes: Sequence[_Volume]) -> None:
        """Which old pool IDs name a pool here. ceph-csi, given an old handle, first looks the
        volume up under the handle's pool ID on this cluster and only then applies the mapping
        (seen with the real ceph-csi): where that ID is another pool, a lookup per request that
        finds nothing, or the wrong volume if a journal object of its UUID is there."""
        local = self.settings.local_cluster_id
        for pool_id in sorted({v.handle.pool_id for v in volumes if v.handle.cluster_id != local}):
            self.calls["poolLookups"] += 1
            try:
                self.old_pool_ids_here[pool_id] = await ceph.pool_name(pool_id)
            except PoolNotFound:
                continue
        for pool_id, name in self.old_pool_ids_here.items():
            pvs = [v for v in volumes if v.handle.pool_id == pool_id and v.volume.pool != name]
            if pvs:
                self.report.notes.append(
                    f"old pool ID {pool_id} ({len(pvs)} PVs) is pool {name!r} here: ceph-csi "
                    f"looks their old handles up in {name!r} first (one failed lookup per "
                    "request), then applies the cluster mapping; a journal object of one of "
                    f"their UUIDs in {name!r} would send it to the wrong volume (checked per PV)"
                )

    async def _planning_view(
        self, ceph: CephConnection, volumes: Sequence[_Volume]
    ) -> PlanningView:
        ns = self.rados_namespace
        directories: dict[tuple[str, str, str], dict[str, bytes] | None] = {}
        directory = directory_object(self.settings.instance_id)
        for pool in sorted({v.volume.journal_pool for v in volumes} - self.missing_pools):
            try:
                directories[(pool, ns, directory)] = await read_whole_omap(
                    ceph, pool, ns, directory
                )
                self.calls["directoryReads"] += 1
            except PoolNotFound:
                self.missing_pools.add(pool)
        return PlanningView(ceph, self.images, directories, self.calls)

    # -- per PV ----------------------------------------------------------------------------------

    async def _check(self, v: _Volume, ceph: CephConnection, view: PlanningView) -> None:
        report, volume = v.report, v.volume
        image = self.images.get((volume.pool, self.rados_namespace, report.image))
        judge_image(
            report,
            image,
            pool_missing=volume.pool in self.missing_pools,
            now=self.now(),
            max_age=self.settings.max_snapshot_age,
        )
        verdict = check_mapping(
            v.handle,
            volume.pool,
            self.settings.local_cluster_id,
            self.pool_ids.get(volume.pool),
            self.inputs.mappings,
        )
        if verdict.ok:
            report.passed("mapping", verdict.cell, verdict.detail)
        else:
            report.failed("mapping", verdict.cell, verdict.detail)
        self._cephcsi(v, verdict)
        await self._old_pool_id(v, ceph)
        await self._caps_of(v)
        if image is None:
            report.not_checked("journal", "the image is not on this cluster")
            return
        await self._journal(v, view)

    def _cephcsi(self, v: _Volume, verdict: MappingVerdict | None) -> None:
        """ceph-csi's two files against the mapping the PV will go through: what the
        controller's CephCSIConfigured condition would name (`missing_entries`)."""
        gaps = csi_config_gaps(
            verdict,
            self.inputs.config,
            self.inputs.cluster_mapping,
            self.inputs.layout,
            local=self.settings.local_cluster_id if self.local_configured else None,
        )
        if gaps:
            v.report.failed("cephcsi", "missing", "; ".join(gaps))
        elif verdict is None or not verdict.ok:
            v.report.not_checked("cephcsi", "no usable ClusterIDMapping to check it against")
        else:
            v.report.passed(
                "cephcsi", "ok", f"{self.inputs.layout.config} and its cluster mapping resolve it"
            )

    async def _old_pool_id(self, v: _Volume, ceph: CephConnection) -> None:
        """The wrong volume ceph-csi would find under the old pool ID (see
        `_look_up_old_pool_ids`): a journal object of this volume's UUID in the other pool."""
        other = self.old_pool_ids_here.get(v.handle.pool_id)
        if (
            other is None
            or other == v.volume.pool
            or v.handle.cluster_id == self.settings.local_cluster_id
        ):
            return
        oid = volume_object(v.handle.object_uuid)
        self.calls["collisionReads"] += 1
        try:
            found = await ceph.omap_get(other, self.rados_namespace, oid)
        except ReconcilerError as err:
            v.report.failed("cephcsi", "pool-id", f"reading {other}/{oid}: {err}")
            return
        if found is not None:
            v.report.failed(
                "cephcsi",
                "pool-id",
                f"the old pool ID {v.handle.pool_id} is pool {other!r} here, which holds "
                f"{oid}: ceph-csi looks there first with the old handle and would act on the "
                f"volume that object names, not on {v.volume.pool}/{v.report.image}",
            )

    async def _caps_of(self, v: _Volume) -> None:
        report, volume = v.report, v.volume
        found = await self._credentials_of(volume)
        if isinstance(found, ReconcilerError):
            report.failed("credentials", "none", str(found))
            return
        credentials, source = found
        key = (credentials.user, credentials.fingerprint(), volume.journal_pool, volume.pool)
        if key not in self._caps:
            self._caps[key] = await self._probe(credentials, v)
        ok, detail = self._caps[key]
        detail = f"{source}: {detail}"
        if ok:
            report.passed("credentials", "ok", detail)
        else:
            report.failed("credentials", "caps", detail)

    async def _probe(self, credentials: Credentials, v: _Volume) -> tuple[bool, str]:
        """(allowed, how it was found out): the probe as the user, and `ceph auth get` when
        admin credentials were given."""
        ns, volume = self.rados_namespace, v.volume
        targets = [(volume.journal_pool, directory_object(self.settings.instance_id))]
        if volume.pool != volume.journal_pool:
            targets.append((volume.pool, volume_object(v.handle.object_uuid)))
        try:
            ceph = await self.connections.get(self.monitors, credentials)
            probes = []
            for pool, oid in targets:
                self.calls["capsProbes"] += 1
                probes.append(await probe_caps(ceph, pool, ns, oid))
        except ReconcilerError as err:
            return False, f"client.{credentials.user}: {err}"
        lacking = [p.detail for p in probes if not (p.read and p.write)]
        details = lacking or [p.detail for p in probes]
        if self.admin is not None:
            how = f"ceph auth get client.{credentials.user} as client.{self.admin.user}"
            try:
                admin = await self.connections.get(self.monitors, self.admin)
                self.calls["authGets"] += 1
                caps = await user_caps(admin, credentials.user)
            except CephError as err:
                caps, lacking = {}, [*lacking, f"{how}: {err}"]
            if caps is None:
                lacking.append(f"{how}: no such user")
            elif caps:
                gaps = caps_allow_journal(caps, volume.journal_pool, ns)
                shown = ", ".join(f"{k} {v!r}" for k, v in sorted(caps.items()))
                lacking.extend(f"{how}: {gap}" for gap in gaps)
                if not gaps:
                    details.append(f"{how}: {shown}")
        return (not lacking), "; ".join(lacking or details)

    async def _journal(self, v: _Volume, view: PlanningView) -> None:
        report = v.report
        local = LocalCluster(
            self.settings.local_cluster_id, self.rados_namespace, self.settings.instance_id
        )
        try:
            plan, _, new_handle = await plan_regeneration(view, v.volume, local)
        except JournalConflict as err:
            report.failed("journal", "conflict", str(err))
            return
        except ReconcilerError as err:
            report.failed("journal", "error", str(err))
            return
        report.new_handle = new_handle
        report.journal_writes = plan.keys
        if plan.empty:
            report.passed("journal", "in place", f"in place; ceph-csi resolves {new_handle}")
        else:
            report.passed(
                "journal",
                f"{len(plan.keys)} keys",
                f"a failover writes {len(plan.keys)} keys ({', '.join(plan.keys)}); new handle "
                f"{new_handle}",
            )


def _timed(image: MirrorImage, when: float) -> MirrorImage:
    return replace(image, snapshot_time=when, snapshot_source=FROM_SNAPSHOT)
