"""charts/rbd-mirror-reconciler: linted by the real helm, rendered and applied with a server-side
dry run to the real API server, and held equal to config/ (one source of truth for the CRDs, the
RBAC and the alerts: the chart's copies are checked against crds/ and config/, not rewritten).

helm comes from its Go module (hack/build-tools.sh, cached). What the dry run cannot check here,
the Prometheus Operator's objects (their CRDs are not installed in the sandbox), is checked by
promtool and by matching selectors; hosted CI installs the chart into kind for real.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.cli import build_parser
from reconciler.cli.run import RunConfig
from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.cluster import KubeCluster
from reconciler.sandbox.site import kubectl
from tests.e2e.helm import CHART, find, helm, render, tools_bin

pytestmark = pytest.mark.e2e

NAMESPACE = "chart-ceph-csi"
BASE_URL = "https://docs.example.org/rbd-mirror-reconciler/blob/v0.1.0"
MONITORING = {"ServiceMonitor", "PrometheusRule"}
RBAC_KINDS = ("ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding", "ServiceAccount")

#: Value sets a user would install with: each layout, and everything optional switched on.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {"localClusterID": "site-b"},
    "rook": {
        "localClusterID": "rook-ceph",
        "driverName": "rook-ceph.rbd.csi.ceph.com",
        "csiConfig": {"layout": "rook"},
        "csiRBAC": {
            "create": True,
            "serviceAccounts": ["rook-csi-rbd-provisioner-sa", "rook-csi-rbd-plugin-sa"],
        },
    },
    "ceph-csi-operator": {
        "localClusterID": "site-b",
        "csiConfig": {
            "layout": "ceph-csi-operator",
            "manage": False,
            "configMap": "ceph-csi-operator-config",
            "key": "config.json",
        },
    },
    "everything": {
        "localClusterID": "site-b",
        "replicaCount": 3,
        "instanceID": "site-b-instance",
        "cephTimeout": "5",
        "extraArgs": ["--kube-api-qps=10"],
        "csiConfig": {
            "clusterMapping": {
                "namespace": f"{NAMESPACE}-mapping",
                "configMap": "mapping",
                "key": "m.json",
            }
        },
        "csiRBAC": {"create": True},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "runbookBaseURL": BASE_URL},
        },
    },
}


@pytest.fixture(scope="module")
def helm_bin(checkout: Checkout) -> Path:
    return tools_bin(checkout)


def kustomize(checkout: Checkout, *parts: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of a directory of the checkout: what `kubectl apply -k` would apply."""
    done = subprocess.run(
        ["kubectl", "kustomize", str(checkout.root.joinpath(*parts))],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def run_config(objects: list[dict[str, Any]], namespace: str = NAMESPACE) -> RunConfig:
    """The Deployment's args through the real `run` parser, $(POD_NAMESPACE) expanded as the
    kubelet does: a flag the CLI does not know, or a bad value, fails here."""
    args = [arg.replace("$(POD_NAMESPACE)", namespace) for arg in container(objects)["args"]]
    parsed = build_parser().parse_args(args)
    assert parsed.command == "run"
    return RunConfig.from_args(parsed)


# --- helm itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes_strictly(
    helm_bin: Path, checkout: Checkout, tmp_path: Path, name: str
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUE_SETS[name]))
    done = helm(
        helm_bin,
        "lint",
        "--strict",
        str(checkout.root / CHART),
        "--values",
        str(values),
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_rendering_refuses_what_run_could_not_do(helm_bin: Path, checkout: Checkout) -> None:
    chart = str(checkout.root / CHART)
    cases = {
        "localClusterID": [],
        "csiConfig.layout must be helm, rook or ceph-csi-operator": [
            "--set",
            "localClusterID=x",
            "--set",
            "csiConfig.layout=operator",
        ],
        "csiConfig.manage must be false": [
            "--set",
            "localClusterID=x",
            "--set",
            "csiConfig.layout=ceph-csi-operator",
        ],
        "metrics.prometheusRule.runbookBaseURL": [
            "--set",
            "localClusterID=x",
            "--set",
            "metrics.prometheusRule.enabled=true",
        ],
    }
    for message, args in cases.items():
        done = helm(helm_bin, "template", "r", chart, *args, check=False)
        assert done.returncode != 0, f"rendered without {message}"
        assert message in done.stderr, done.stderr


# --- one source of truth with crds/ and config/ -----------------------------------------------


def test_chart_crds_are_the_crds_directory(helm_bin: Path, checkout: Checkout) -> None:
    chart_crds = sorted((checkout.root / CHART / "crds").glob("*.yaml"))
    kustomization = yaml.safe_load((checkout.crds / "kustomization.yaml").read_text())
    assert [p.name for p in chart_crds] == sorted(kustomization["resources"])
    for path in chart_crds:
        assert path.read_bytes() == (checkout.crds / path.name).read_bytes(), (
            f"{path} differs from crds/{path.name}: copy crds/*.yaml into the chart's crds/"
        )
    rendered = of_kind(
        render(helm_bin, checkout, VALUE_SETS["defaults"], include_crds=True),
        "CustomResourceDefinition",
    )
    assert sorted(rendered, key=lambda o: str(o["metadata"]["name"])) == sorted(
        kustomize(checkout, "crds"), key=lambda o: str(o["metadata"]["name"])
    )


def test_chart_rbac_is_config_rbac(helm_bin: Path, checkout: Checkout, tmp_path: Path) -> None:
    """Same rules, same bindings to the one ServiceAccount the Deployment runs as: config/rbac as
    deployed into the chart's namespace (a copy of its kustomization with `namespace:` set, as
    reconciler.sandbox.site.install_rbac does), since a Lease name it grants holds the namespace."""
    objects = render(helm_bin, checkout, VALUE_SETS["defaults"], namespace=NAMESPACE)
    copy = tmp_path / "rbac"
    shutil.copytree(checkout.config("rbac"), copy)
    kustomization = yaml.safe_load((copy / "kustomization.yaml").read_text())
    kustomization["namespace"] = NAMESPACE
    (copy / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    done = subprocess.run(
        ["kubectl", "kustomize", str(copy)], capture_output=True, text=True, timeout=60, check=True
    )
    config = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for kind in ("ClusterRole", "Role"):
        for ours in of_kind(config, kind):
            name = ours["metadata"]["name"]
            theirs = find(objects, kind, name)
            assert theirs["rules"] == ours["rules"], f"{kind} {name} differs from config/rbac"
            assert theirs["metadata"].get("namespace") == ours["metadata"].get("namespace")
    # Events are created in "default" only, where those about cluster-scoped objects are.
    assert find(objects, "Role", "rbd-mirror-reconciler-events")["metadata"]["namespace"] == (
        "default"
    )
    account = find(objects, "ServiceAccount")["metadata"]["name"]
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for binding in of_kind(objects, kind):
            assert binding["roleRef"]["kind"] == role_kind
            role = find(objects, role_kind, binding["roleRef"]["name"])
            assert binding["metadata"].get("namespace") == role["metadata"].get("namespace")
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
            ]
    # Nothing else grants anything: the controller's whole RBAC is these objects.
    assert sorted(o["kind"] for o in objects if o["kind"] in RBAC_KINDS) == sorted(
        o["kind"] for o in config
    )


def test_chart_csi_rbac_is_config_rbac_csi(helm_bin: Path, checkout: Checkout) -> None:
    values = {**VALUE_SETS["defaults"], "csiRBAC": {"create": True}}
    objects = render(helm_bin, checkout, values, namespace=NAMESPACE)
    config = kustomize(checkout, "config", "rbac-csi")
    resolver = [o for o in objects if o["metadata"]["name"].endswith("-resolver")]
    assert sorted(o["kind"] for o in resolver) == sorted(o["kind"] for o in config)
    for kind in ("ClusterRole", "Role"):
        (ours,) = of_kind(config, kind)
        (theirs,) = of_kind(resolver, kind)
        assert theirs["rules"] == ours["rules"], f"{kind} differs from config/rbac-csi"
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (ours,) = of_kind(config, kind)
        (theirs,) = of_kind(resolver, kind)
        # config/rbac-csi's kustomization sets ceph-csi's namespace in the subjects.
        expected = [{**s, "namespace": NAMESPACE} for s in ours["subjects"]]
        assert theirs["subjects"] == expected


def test_prometheus_rule_is_config_alerts_with_absolute_runbooks(
    helm_bin: Path, checkout: Checkout, tmp_path: Path
) -> None:
    source = checkout.config("prometheus", "alerts.yaml")
    assert (checkout.root / CHART / "files" / "alerts.yaml").read_bytes() == source.read_bytes(), (
        "copy config/prometheus/alerts.yaml to the chart's files/alerts.yaml"
    )
    objects = render(helm_bin, checkout, VALUE_SETS["everything"], namespace=NAMESPACE)
    rule = find(objects, "PrometheusRule")
    expected = copy.deepcopy(yaml.safe_load(source.read_text())["groups"])
    for group in expected:
        for alert in group["rules"]:
            relative = alert["annotations"]["runbook_url"]
            assert relative.startswith("docs/alerts.md#")
            alert["annotations"]["runbook_url"] = f"{BASE_URL}/{relative}"
    assert rule["spec"]["groups"] == expected
    # What Prometheus itself would load from it.
    rules_file = tmp_path / "rendered-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in expected)} rules found" in done.stdout


def test_service_monitor_scrapes_the_deployments_metrics_port(
    helm_bin: Path, checkout: Checkout
) -> None:
    objects = render(helm_bin, checkout, VALUE_SETS["everything"], namespace=NAMESPACE)
    monitor = find(objects, "ServiceMonitor")
    service = find(objects, "Service")
    pod = find(objects, "Deployment")["spec"]["template"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert (endpoint["port"], endpoint["path"]) == (port["name"], "/metrics")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container_port,) = pod["spec"]["containers"][0]["ports"]
    assert port["targetPort"] == container_port["name"]
    listen = run_config(objects).health_address
    assert listen == ("0.0.0.0", container_port["containerPort"])


# --- the Deployment ----------------------------------------------------------------------------


def test_deployment_args_are_valid_run_flags_for_each_layout(
    helm_bin: Path, checkout: Checkout
) -> None:
    configs = {
        name: run_config(render(helm_bin, checkout, values, namespace=NAMESPACE))
        for name, values in VALUE_SETS.items()
    }
    helm_layout = configs["defaults"]
    assert (helm_layout.local_cluster_id, helm_layout.csi_config_namespace) == ("site-b", NAMESPACE)
    assert helm_layout.manage_csi_config and helm_layout.leader_elect
    assert helm_layout.leader_election_namespace == NAMESPACE
    assert helm_layout.leader_election_name == "rbd-mirror-reconciler"
    expected = f"ConfigMap {NAMESPACE}/ceph-csi-config key config.json"
    assert str(helm_layout.layout.config) == expected

    rook = configs["rook"]
    assert rook.driver_name == "rook-ceph.rbd.csi.ceph.com"
    assert str(rook.layout.config) == (
        f"ConfigMap {NAMESPACE}/rook-ceph-csi-config key csi-cluster-config-json"
    )
    assert str(rook.layout.cluster_mapping) == (
        f"ConfigMap {NAMESPACE}/rook-ceph-csi-mapping-config key csi-mapping-config-json"
    )

    operator = configs["ceph-csi-operator"]
    assert not operator.manage_csi_config
    assert str(operator.layout.config) == (
        f"ConfigMap {NAMESPACE}/ceph-csi-operator-config key config.json"
    )

    everything = configs["everything"]
    assert str(everything.layout.cluster_mapping) == (
        f"ConfigMap {NAMESPACE}-mapping/mapping key m.json"
    )
    assert (everything.instance_id, everything.ceph_timeout) == ("site-b-instance", 5.0)
    assert everything.kube_api_qps == 10.0


def test_deployment_runs_as_the_images_non_root_user_with_nothing_writable(
    helm_bin: Path, checkout: Checkout
) -> None:
    objects = render(helm_bin, checkout, VALUE_SETS["defaults"], namespace=NAMESPACE)
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    user = checkout.root.joinpath("Dockerfile").read_text().split("\nUSER ", 1)[1].split()[0]
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = container(objects)["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "volumes" not in pod  # nothing mounted: the image needs no writable path
    assert find(objects, "Deployment")["spec"]["replicas"] == 2
    assert find(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    probes = container(objects)
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["resources"]["requests"] and probes["resources"]["limits"]["memory"]


def test_config_manager_deployment_agrees_with_the_chart(
    helm_bin: Path, checkout: Checkout
) -> None:
    """config/manager (kustomize) and the chart run the same flags, probes and confinement."""
    chart = container(render(helm_bin, checkout, VALUE_SETS["defaults"], namespace=NAMESPACE))
    (deployment,) = of_kind(kustomize(checkout, "config", "manager"), "Deployment")
    (kustomized,) = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert kustomized[probe]["httpGet"] == chart[probe]["httpGet"]
    assert kustomized["ports"][0]["name"] == chart["ports"][0]["name"]
    assert kustomized["securityContext"]["readOnlyRootFilesystem"] is True
    assert kustomized["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The same `run` configuration once the kubelet expanded the env references.
    local_id = next(e["value"] for e in kustomized["env"] if e["name"] == "LOCAL_CLUSTER_ID")
    args = [
        arg.replace("$(POD_NAMESPACE)", NAMESPACE).replace("$(LOCAL_CLUSTER_ID)", local_id)
        for arg in kustomized["args"]
    ]
    theirs = RunConfig.from_args(build_parser().parse_args(args))
    ours = run_config(render(helm_bin, checkout, {"localClusterID": local_id}, namespace=NAMESPACE))
    # Raw names of ceph-csi's files are compared resolved, as `layout`; the chart names its
    # Lease after the release and passes --driver-name explicitly (the same default).
    skipped = {"identity", "leader_election_name", "cluster_mapping_namespace"}
    for name in set(RunConfig.__dataclass_fields__) - skipped:
        assert getattr(theirs, name) == getattr(ours, name), name
    assert theirs.layout == ours.layout


# --- the API server's verdict ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_chart_passes_a_server_side_dry_run(
    helm_bin: Path, checkout: Checkout, kube: KubeCluster, name: str
) -> None:
    """Every object (CRDs included) validated by the real API server, strict field validation:
    a misspelt field or a wrong type fails. The Prometheus Operator's kinds are not served here."""
    values = VALUE_SETS[name]
    objects = render(helm_bin, checkout, values, namespace=NAMESPACE, include_crds=True)
    namespaces = {NAMESPACE, *(o["metadata"].get("namespace") for o in objects)} - {None}
    for namespace in sorted(namespaces):
        existing = kubectl(kube, "get", "namespace", "-o", "name").stdout
        if f"namespace/{namespace}\n" not in existing:
            kubectl(kube, "create", "namespace", namespace)
    applicable = [o for o in objects if o["kind"] not in MONITORING]
    out = kubectl(
        kube,
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "--server-side",
        "--field-manager=helm-dry-run",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(applicable),
        timeout=120,
    ).stdout
    assert out.count("(server dry run)") == len(applicable), out


def test_the_dry_run_would_catch_a_misspelt_field(
    helm_bin: Path, checkout: Checkout, kube: KubeCluster
) -> None:
    """The control for the test above: the same dry run refuses a Deployment with a typo."""
    objects = render(helm_bin, checkout, VALUE_SETS["defaults"], namespace=NAMESPACE)
    deployment = find(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    done = subprocess.run(
        [
            *("kubectl", "--kubeconfig", str(kube.kubeconfig), "apply", "--dry-run=server"),
            *("--validate=strict", "--server-side", "--field-manager=helm-dry-run", "-f", "-"),
        ],
        input=yaml.safe_dump(deployment),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    # "unknown field" or, when server-side apply builds its typed patch, "not declared in schema"
    assert "readinesProbe" in done.stderr, done.stderr
