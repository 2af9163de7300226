"""The CRDs in crds/ against the real API server: they apply with kustomize, become Established,
reject what they must with messages an admin can act on, and print useful columns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.site import CRDS, GROUP, apply, kubectl

pytestmark = pytest.mark.e2e

API_VERSION = f"{GROUP}/v1alpha1"
HANDLE = "0001-0009-rook-ceph-0000000000000002-0c23de1c-18fb-11eb-a903-0242ac110005"


def cluster_mapping(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterIDMapping",
        "metadata": {"name": name},
        "spec": spec,
    }


def handle_mapping(name: str, pv_name: str, handle: str = HANDLE) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "VolumeHandleMapping",
        "metadata": {"name": name},
        "spec": {"pvName": pv_name, "volumeHandle": handle},
    }


SITES = {"siteA": {"clusterID": "site-a"}, "siteB": {"clusterID": "site-b"}}


def test_crds_are_established_with_short_names_and_category(kube: KubeCluster, crds: None) -> None:
    for crd in CRDS:
        found = json.loads(kubectl(kube, "get", "crd", crd, "-o", "json").stdout)
        established = {c["type"]: c["status"] for c in found["status"]["conditions"]}
        assert established["Established"] == "True"
        assert found["spec"]["names"]["categories"] == ["ceph"]
        assert found["spec"]["scope"] == "Cluster"
    resources = kubectl(kube, "api-resources", f"--api-group={GROUP}", "-o", "wide").stdout
    assert "cidm" in resources and "vhm" in resources
    # The category makes `kubectl get ceph` list both kinds at once.
    kubectl(kube, "get", "ceph")


@pytest.mark.parametrize(
    "spec",
    [
        {**SITES, "rbdPools": [{"name": "replicapool", "siteAPoolID": 1}, {"name": "other"}]},
        # Pools are optional: regeneration finds them by name, so a clusterID pair suffices.
        SITES,
        # Both sites may share a clusterID (Rook's "rook-ceph"): pools alone then differ.
        {"siteA": {"clusterID": "rook-ceph"}, "siteB": {"clusterID": "rook-ceph"}},
    ],
    ids=["pools", "no-pools", "one-clusterid"],
)
def test_a_valid_cluster_mapping_is_accepted(
    kube: KubeCluster, crds: None, spec: dict[str, object]
) -> None:
    result = apply(kube, cluster_mapping("valid-mapping", spec), check=False)
    assert result.returncode == 0, result.stderr
    kubectl(kube, "delete", "cidm", "valid-mapping")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {
                **SITES,
                "rbdPools": [
                    {"name": "p1", "siteAPoolID": 3},
                    {"name": "p2", "siteAPoolID": 3},
                ],
            },
            "two pools cannot have the same siteAPoolID",
        ),
        (
            {
                **SITES,
                "rbdPools": [{"name": "p1", "siteBPoolID": 4}, {"name": "p2", "siteBPoolID": 4}],
            },
            "two pools cannot have the same siteBPoolID",
        ),
        (
            {**SITES, "rbdPools": [{"name": "p1"}, {"name": "p1"}]},
            'spec.rbdPools[1]: Duplicate value: {"name":"p1"}',
        ),
        ({**SITES, "rbdPools": [{"name": "p1", "siteAPoolID": -1}]}, "should be greater than"),
        ({"siteA": {"clusterID": "site-a"}}, "spec.siteB: Required value"),
        ({"siteA": {"clusterID": ""}, "siteB": {"clusterID": "b"}}, "spec.siteA.clusterID"),
        (
            {"siteA": {"clusterID": "x" * 65}, "siteB": {"clusterID": "b"}},
            "may not be more than 64",
        ),
    ],
    ids=[
        "dup-site-a-id",
        "dup-site-b-id",
        "dup-pool-name",
        "negative-id",
        "missing-side",
        "empty-cluster",
        "long-cluster",
    ],
)
def test_invalid_cluster_mappings_are_rejected(
    kube: KubeCluster, crds: None, spec: dict[str, Any], message: str
) -> None:
    result = apply(kube, cluster_mapping("invalid-mapping", spec), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_handle_mapping_is_named_after_its_pv_which_is_immutable(
    kube: KubeCluster, crds: None
) -> None:
    wrong = apply(kube, handle_mapping("not-the-pv", "pv-1"), check=False)
    assert wrong.returncode != 0
    assert "a VolumeHandleMapping is named after its PV" in wrong.stderr

    assert apply(kube, handle_mapping("pv-immutable", "pv-immutable"), check=False).returncode == 0
    moved = kubectl(
        kube,
        "patch",
        "vhm",
        "pv-immutable",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"pvName": "pv-other"}}),
        check=False,
    )
    assert moved.returncode != 0
    assert "pvName is immutable" in moved.stderr
    kubectl(kube, "delete", "vhm", "pv-immutable")


def test_kubectl_get_shows_the_columns_an_admin_needs(kube: KubeCluster, crds: None) -> None:
    assert apply(kube, handle_mapping("pv-columns", "pv-columns"), check=False).returncode == 0
    status = {
        "status": {
            "newVolumeHandle": "0001-0006-site-b-0000000000000005-"
            "0c23de1c-18fb-11eb-a903-0242ac110005",
            "clusterID": "site-b",
            "pool": "replicapool",
            "poolID": 5,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "JournalRegenerated",
                    "message": "m",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    kubectl(
        kube,
        "patch",
        "vhm",
        "pv-columns",
        "--type=merge",  # the kind has no status subresource: status is patched with the object
        "-p",
        json.dumps(status),
    )
    table = kubectl(kube, "get", "volumehandlemappings").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PV",
        "READY",
        "REASON",
        "CLUSTERID",
        "POOL",
        "POOL",
        "ID",
        "AGE",
    ]
    row = next(line.split() for line in table if line.startswith("pv-columns"))
    assert row[:6] == [
        "pv-columns",
        "pv-columns",
        "True",
        "JournalRegenerated",
        "site-b",
        "replicapool",
    ]
    assert row[6] == "5"
    wide = kubectl(kube, "get", "vhm", "pv-columns", "-o", "wide").stdout
    assert "OLD HANDLE" in wide and HANDLE in wide and "0001-0006-site-b" in wide
    kubectl(kube, "delete", "vhm", "pv-columns")

    spec = {**SITES, "rbdPools": [{"name": "replicapool"}]}
    assert apply(kube, cluster_mapping("columns", spec), check=False).returncode == 0
    header = kubectl(kube, "get", "cidm").stdout.splitlines()[0].split()
    assert header == ["NAME", "SITE", "A", "SITE", "B", "LOCAL", "READY", "REASON", "AGE"]
    kubectl(kube, "delete", "cidm", "columns")


def test_config_default_renders_and_rbac_applies(
    kube: KubeCluster, crds: None, checkout: Checkout
) -> None:
    rendered = kubectl(kube, "kustomize", str(checkout.config("default"))).stdout
    kinds = [
        line.split(":", 1)[1].strip() for line in rendered.splitlines() if line.startswith("kind:")
    ]
    assert sorted(kinds) == sorted(
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "ServiceAccount",
            "Role",
            "Role",  # Events, in "default"
            "ClusterRole",
            "RoleBinding",
            "RoleBinding",
            "ClusterRoleBinding",
            "Deployment",
        ]
    )
    # Server-side dry run: the API server validates every object, the RBAC ones included.
    kubectl(kube, "create", "namespace", "ceph-csi", check=False)
    kubectl(kube, "apply", "--dry-run=server", "-k", str(checkout.config("default")))
