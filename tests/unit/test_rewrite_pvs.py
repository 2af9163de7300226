"""rewrite-pvs without daemons: manifests read as admins keep them, PVs rewritten with their new
handles, what cannot be mapped left out and named (reconciler.manifests, reconciler.rewrite)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.handle import VolumeHandle
from reconciler.manifests import InvalidManifest, of_kind, parse_manifests
from reconciler.rewrite import (
    REWRITTEN_FROM,
    Outcome,
    Rewriter,
    clean_manifest,
    ready_handles,
    rewrite_manifest,
    summary,
    yaml_diff,
)

UUID = "0c23de1c-18fb-11eb-a903-0242ac110005"
OLD = VolumeHandle("site-a", 1, UUID).encode()
NEW = VolumeHandle("site-b", 2, UUID).encode()


def pv(name: str = "pv-1", handle: str = OLD, driver: str = "rbd.csi.ceph.com") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "uid": "1234",
            "resourceVersion": "99",
            "creationTimestamp": "2026-11-24T08:00:00Z",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": f'{{"handle": "{handle}"}}',
                "pv.kubernetes.io/provisioned-by": driver,
            },
        },
        "spec": {
            "claimRef": {
                "name": "data",
                "namespace": "apps",
                "uid": "5678",
                "resourceVersion": "7",
            },
            "csi": {
                "driver": driver,
                "volumeHandle": handle,
                "volumeAttributes": {"clusterID": "site-a", "pool": "replicapool"},
            },
        },
        "status": {"phase": "Bound"},
    }


def vhm(name: str, old: str, new: str | None, *, ready: bool = True) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": "JournalRegenerated" if ready else "ImageNotPrimary",
                "message": "" if ready else "promote it first",
            }
        ],
    }
    if new is not None:
        status["newVolumeHandle"] = new
    return {
        "metadata": {"name": name, "generation": 1},
        "spec": {"pvName": name, "volumeHandle": old},
        "status": status,
    }


# manifests ---------------------------------------------------------------------------------------


def test_manifests_come_as_documents_lists_and_kind_list() -> None:
    text = """
apiVersion: v1
kind: PersistentVolume
metadata: {name: a}
---
- {kind: PersistentVolume, metadata: {name: b}}
- {kind: ConfigMap, metadata: {name: c}}
---
{"kind": "List", "items": [{"kind": "PersistentVolume", "metadata": {"name": "d"}}]}
---
"""
    objects = parse_manifests(text, "pvs.yaml")
    pvs, others = of_kind(objects, "PersistentVolume")
    assert [p["metadata"]["name"] for p in pvs] == ["a", "b", "d"]
    assert others == ["ConfigMap c"]
    # `kubectl get pv -o yaml` says kind: List; typed lists end in List too.
    typed = parse_manifests('{"kind": "PersistentVolumeList", "items": [{"kind": "X"}]}', "f")
    assert typed == [{"kind": "X"}]


@pytest.mark.parametrize(("text", "said"), [("a: [", "not YAML"), ("- 3", "expected an object")])
def test_bad_manifests_say_where(text: str, said: str) -> None:
    with pytest.raises(InvalidManifest, match=said) as raised:
        parse_manifests(text, "backup.yaml")
    assert "backup.yaml" in str(raised.value)


# rewriting ---------------------------------------------------------------------------------------


def test_a_rewritten_pv_has_the_new_handle_and_nothing_the_server_set() -> None:
    original = pv()
    rewritten = rewrite_manifest(original, NEW, "site-b")

    csi = rewritten["spec"]["csi"]
    assert csi["volumeHandle"] == NEW
    assert csi["volumeAttributes"] == {"clusterID": "site-b", "pool": "replicapool"}
    assert rewritten["metadata"] == {
        "name": "pv-1",
        "annotations": {"pv.kubernetes.io/provisioned-by": "rbd.csi.ceph.com", REWRITTEN_FROM: OLD},
    }
    assert rewritten["spec"]["claimRef"] == {"name": "data", "namespace": "apps"}
    assert "status" not in rewritten
    assert original["spec"]["csi"]["volumeHandle"] == OLD, "the input is not changed"


def test_cleaning_drops_empty_annotations() -> None:
    bare = pv()
    bare["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    assert "annotations" not in clean_manifest(bare)["metadata"]


def test_only_ready_mappings_with_a_new_handle_count() -> None:
    ready, not_ready = ready_handles(
        [
            vhm("pv-1", OLD, NEW),
            vhm("pv-2", "old-2", None, ready=False),
            vhm("pv-3", "old-3", "x", ready=False),
        ]
    )
    assert ready == {OLD: (NEW, "pv-1")}
    assert set(not_ready) == {"old-2", "old-3"}
    assert "ImageNotPrimary: promote it first" in not_ready["old-2"]


def test_the_dry_run_diff_shows_the_handle_change() -> None:
    original = pv()
    outcome = Outcome("pv-1", "rewritten", "", original, rewrite_manifest(original, NEW, "site-b"))
    diff = yaml_diff(outcome)
    assert f"-    volumeHandle: {OLD}" in diff
    assert f"+    volumeHandle: {NEW}" in diff
    assert "+      clusterID: site-b" in diff
    assert diff.startswith("--- a/pv-1.yaml\n+++ b/pv-1.yaml\n")


# the rewriter without Ceph: VolumeHandleMappings only --------------------------------------------


async def test_handles_come_from_ready_volume_handle_mappings() -> None:
    rewriter = Rewriter(
        local_cluster_id="site-b",
        driver="rbd.csi.ceph.com",
        handle_mappings=[
            vhm("pv-1", OLD, NEW),
            vhm("pv-2", "0001-0006-site-a-x", None, ready=False),
        ],
    )
    await rewriter.prepare([pv()])

    mapped = await rewriter.outcome(pv())
    assert (mapped.kind, mapped.new_handle, mapped.how) == (
        "rewritten",
        NEW,
        "Ready VolumeHandleMapping pv-1",
    )
    assert mapped.manifest is not None

    other_handle = VolumeHandle("site-a", 1, "1c23de1c-18fb-11eb-a903-0242ac110005").encode()
    unmapped = await rewriter.outcome(pv("pv-9", other_handle))
    assert unmapped.kind == "unmapped" and unmapped.manifest is None
    assert "no Ready VolumeHandleMapping" in unmapped.how
    assert "--monitors, --user, --key-file" in unmapped.how

    other = await rewriter.outcome(pv("nfs", driver="nfs.csi.k8s.io"))
    assert (other.kind, other.how) == ("unchanged", "driver 'nfs.csi.k8s.io'")
    assert other.manifest is not None and "status" not in other.manifest

    broken = await rewriter.outcome(pv("bad", "not-a-handle"))
    assert broken.kind == "unmapped" and "invalid volume handle" in broken.how

    assert summary([mapped, unmapped, other, broken]) == (
        "rewrite-pvs: 1 rewritten, 1 unchanged, 2 not mapped (left out: pv-9, bad)"
    )


async def test_only_mappings_says_why_a_mapping_is_not_ready() -> None:
    rewriter = Rewriter(
        local_cluster_id="site-b",
        driver="rbd.csi.ceph.com",
        handle_mappings=[vhm("pv-1", OLD, None, ready=False)],
        source="handle-mappings",
    )
    outcome = await rewriter.outcome(pv())
    assert outcome.kind == "unmapped"
    assert "VolumeHandleMapping pv-1 is not Ready (ImageNotPrimary" in outcome.how
