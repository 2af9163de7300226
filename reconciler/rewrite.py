"""PV manifests rewritten with the handles their volumes have on the surviving site, so restores
(Velero and the like) and GitOps re-apply PVs that need no remapping at all (`rewrite-pvs`).

Where a new handle comes from, in this order:

1. a Ready VolumeHandleMapping of the PV's old handle (the controller regenerated the journal
   and recorded the new handle: nothing to check again);
2. computed: a ClusterIDMapping maps the handle's clusterID here (judged as preflight judges
   it), the pool's ID is looked up by its name on the local cluster, and the UUID is kept. Only
   if the local journal already resolves that handle (or `regenerate` is allowed to write it):
   a PV applied with a local handle is left alone by the controller, so a journal missing then
   would never be written and ceph-csi could not find the volume.

What cannot be mapped is reported with the reason and left out of the output, never passed
through with its old handle. PVs of other drivers and PVs whose handle is already local are
passed through unchanged, and said to be.
"""

from __future__ import annotations

import copy
import difflib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.cephconn import CephConnection
from reconciler.errors import PoolNotFound, ReconcilerError
from reconciler.handle import VolumeHandle
from reconciler.journal import DEFAULT_INSTANCE_ID, VolumeJournal, directory_object
from reconciler.k8s import KubeObject
from reconciler.k8s.conditions import READY, find_condition, is_ready
from reconciler.kinds import GROUP
from reconciler.manifests import dump_yaml
from reconciler.mirror import list_pool
from reconciler.preflight.ceph import PlanningView, read_whole_omap
from reconciler.preflight.mapping import check_mapping
from reconciler.regenerate import LocalCluster, plan_regeneration
from reconciler.volume import CSIVolume

#: On each rewritten PV: the handle it had before, for whoever wonders where it came from.
REWRITTEN_FROM = f"{GROUP}/rewritten-from-volume-handle"
#: Fields the API server sets, which a manifest to be created again must not carry. The claim's
#: uid goes too: the claim is re-created with a new one, and a PV naming the old one would never
#: bind to it. kubectl's last-applied-configuration would still hold the old handle.
SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
STALE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)

Kind = Literal["rewritten", "unchanged", "unmapped"]


@dataclass(frozen=True)
class Outcome:
    pv: str
    kind: Kind
    how: str
    """Where the new handle came from, why the PV is unchanged, or why it could not be mapped."""
    original: KubeObject
    manifest: KubeObject | None
    """What to write (None when unmapped: it is not written)."""
    new_handle: str = ""


class NotMapped(Exception):
    """A PV whose new handle cannot be had; the message says why."""


def rewrite_manifest(pv: Mapping[str, Any], new_handle: str, local_cluster_id: str) -> KubeObject:
    """The PV as it should be created on this site: `new_handle`, `volumeAttributes.clusterID`
    this site's, the old handle in an annotation, and nothing the API server set."""
    rewritten = clean_manifest(pv)
    csi = rewritten["spec"]["csi"]
    old = csi["volumeHandle"]
    csi["volumeHandle"] = new_handle
    attributes = csi.get("volumeAttributes")
    if isinstance(attributes, dict) and "clusterID" in attributes:
        # ceph-csi's NodeStage finds the monitors by this clusterID.
        attributes["clusterID"] = local_cluster_id
    annotations = rewritten["metadata"].setdefault("annotations", {})
    annotations[REWRITTEN_FROM] = old
    return rewritten


def clean_manifest(pv: Mapping[str, Any]) -> KubeObject:
    """A deep copy without the fields the API server set (see SERVER_METADATA)."""
    cleaned: KubeObject = copy.deepcopy(dict(pv))
    cleaned.pop("status", None)
    metadata = cleaned.setdefault("metadata", {})
    for key in SERVER_METADATA:
        metadata.pop(key, None)
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):
        for key in STALE_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            metadata.pop("annotations")
    claim = (cleaned.get("spec") or {}).get("claimRef")
    if isinstance(claim, dict):
        for key in ("uid", "resourceVersion"):
            claim.pop(key, None)
    return cleaned


def ready_handles(
    mappings: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """From VolumeHandleMappings: (old handle -> (new handle, mapping name)) of the Ready ones,
    and (old handle -> why not) of the others."""
    ready: dict[str, tuple[str, str]] = {}
    not_ready: dict[str, str] = {}
    for vhm in mappings:
        old = (vhm.get("spec") or {}).get("volumeHandle")
        if not isinstance(old, str):
            continue
        name = str(vhm["metadata"]["name"])
        new = (vhm.get("status") or {}).get("newVolumeHandle")
        if is_ready(vhm) and isinstance(new, str) and new:
            ready[old] = (new, name)
        else:
            condition = find_condition(vhm, READY) or {}
            not_ready[old] = (
                f"VolumeHandleMapping {name} is not Ready ({condition.get('reason', 'no status')}"
                f": {condition.get('message', '')})"
            )
    return ready, not_ready


def yaml_diff(outcome: Outcome) -> str:
    """A unified diff of the manifest as read and as it would be written."""
    if outcome.manifest is None:
        return ""
    before = dump_yaml([outcome.original]).splitlines(keepends=True)
    after = dump_yaml([outcome.manifest]).splitlines(keepends=True)
    return "".join(
        difflib.unified_diff(before, after, f"a/{outcome.pv}.yaml", f"b/{outcome.pv}.yaml")
    )


def summary(outcomes: Sequence[Outcome]) -> str:
    count = {kind: sum(o.kind == kind for o in outcomes) for kind in ("rewritten", "unchanged")}
    unmapped = [o for o in outcomes if o.kind == "unmapped"]
    line = (
        f"rewrite-pvs: {count['rewritten']} rewritten, {count['unchanged']} unchanged, "
        f"{len(unmapped)} not mapped"
    )
    if unmapped:
        line += f" (left out: {', '.join(o.pv for o in unmapped)})"
    return line


class Rewriter:
    """Finds each PV's new handle (see the module docstring). `ceph` (a connection to this
    site's cluster) enables computing handles; without it only VolumeHandleMappings serve."""

    def __init__(
        self,
        *,
        local_cluster_id: str,
        driver: str,
        handle_mappings: Iterable[Mapping[str, Any]] = (),
        cluster_id_mappings: Sequence[Mapping[str, Any]] = (),
        ceph: CephConnection | None = None,
        rados_namespace: str = "",
        instance_id: str = DEFAULT_INSTANCE_ID,
        source: Literal["auto", "handle-mappings", "compute"] = "auto",
        regenerate: Literal["no", "plan", "write"] = "no",
    ) -> None:
        self.local = LocalCluster(local_cluster_id, rados_namespace, instance_id)
        self.driver = driver
        self.ready, self.not_ready = ready_handles(handle_mappings)
        self.cluster_id_mappings = cluster_id_mappings
        self.ceph = ceph
        self.source = source
        self.regenerate = regenerate
        self.calls: Counter[str] = Counter()
        self.view: PlanningView | None = None

    async def prepare(self, pvs: Iterable[Mapping[str, Any]]) -> None:
        """Pool-level reads for computing: each pool's images listed and journal directory read
        once, instead of per PV."""
        if self.ceph is None or self.source == "handle-mappings":
            return
        ns = self.local.rados_namespace
        images, directories = {}, {}
        directory = directory_object(self.local.instance_id)
        for pool in sorted({p for pv in pvs if (p := _pool_of(pv, self.driver))}):
            try:
                listing = await list_pool(self.ceph, pool, ns)
                directories[(pool, ns, directory)] = await read_whole_omap(
                    self.ceph, pool, ns, directory
                )
            except PoolNotFound:
                continue
            self.calls["poolListings"] += 3
            images.update({image.key: image for image in listing.images})
        self.view = PlanningView(self.ceph, images, directories, self.calls)

    async def outcome(self, pv: Mapping[str, Any]) -> Outcome:
        name = str((pv.get("metadata") or {}).get("name") or "<unnamed>")
        driver = ((pv.get("spec") or {}).get("csi") or {}).get("driver")
        if driver != self.driver:
            why = f"driver {driver!r}" if driver else "not a CSI volume"
            return Outcome(name, "unchanged", why, dict(pv), clean_manifest(pv))
        try:
            volume = CSIVolume.from_pv(pv)
            new_handle, how = await self._new_handle(volume)
        except NotMapped as err:
            return Outcome(name, "unmapped", str(err), dict(pv), None)
        except ReconcilerError as err:
            return Outcome(name, "unmapped", str(err), dict(pv), None)
        if new_handle == volume.volume_handle:
            return Outcome(name, "unchanged", how, dict(pv), clean_manifest(pv))
        manifest = rewrite_manifest(pv, new_handle, self.local.cluster_id)
        return Outcome(name, "rewritten", how, dict(pv), manifest, new_handle)

    async def _new_handle(self, volume: CSIVolume) -> tuple[str, str]:
        old = VolumeHandle.decode(volume.volume_handle)
        if self.source != "compute" and volume.volume_handle in self.ready:
            new, mapping = self.ready[volume.volume_handle]
            return new, f"Ready VolumeHandleMapping {mapping}"
        if self.source == "handle-mappings":
            raise NotMapped(
                self.not_ready.get(volume.volume_handle)
                or "no VolumeHandleMapping has this volume handle"
            )
        if self.view is None:
            why = self.not_ready.get(volume.volume_handle) or "no Ready VolumeHandleMapping"
            raise NotMapped(
                f"{why}, and no access to this site's Ceph cluster to compute the handle "
                "(--monitors, --user, --key-file)"
            )
        pool_id = await self.view.pool_id(volume.pool)
        verdict = check_mapping(
            old, volume.pool, self.local.cluster_id, pool_id, self.cluster_id_mappings
        )
        if not verdict.ok:
            raise NotMapped(verdict.detail)
        if verdict.mapping is None:
            return volume.volume_handle, verdict.detail
        return await self._journal_in_place(volume, verdict.detail)

    async def _journal_in_place(self, volume: CSIVolume, how: str) -> tuple[str, str]:
        """The computed handle, once the local journal resolves it (written first when allowed)."""
        assert self.view is not None and self.ceph is not None
        plan, image, new_handle = await plan_regeneration(self.view, volume, self.local)
        if plan.empty:
            return new_handle, f"computed ({how}); journal in place"
        keys = f"{len(plan.keys)} keys: {', '.join(plan.keys)}"
        if self.regenerate == "no":
            raise NotMapped(
                f"computed {new_handle} ({how}), but this site's journal does not have the "
                f"volume yet (a failover writes {keys}), and the controller leaves a PV with a "
                "local handle alone: regenerate it first (the controller on the old PVs, "
                "`journal regenerate`, or --regenerate-journal)"
            )
        if image.mirror_primary is False:
            raise NotMapped(
                f"computed {new_handle} ({how}), but the image is not primary here yet: promote "
                "it before its journal is written"
            )
        if self.regenerate == "plan":
            return new_handle, f"computed ({how}); journal to be written with --write/-o ({keys})"
        written = await VolumeJournal(self.ceph).apply(plan)
        self.calls["journalWrites"] += 1
        return new_handle, f"computed ({how}); journal written ({', '.join(written)})"


def _pool_of(pv: Mapping[str, Any], driver: str) -> str:
    csi = (pv.get("spec") or {}).get("csi") or {}
    if csi.get("driver") != driver:
        return ""
    return str((csi.get("volumeAttributes") or {}).get("pool") or "")
