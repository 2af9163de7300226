"""kubectl against the `kube` fixture's API server, as an admin would type it."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.kube import KubeSandbox
from reconciler.sandbox.site import CRDS


def kubectl(
    kube: KubeSandbox, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run kubectl as the sandbox's admin; with `check`, fail the test on a non-zero exit."""
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kube.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def apply(kube: KubeSandbox, *manifests: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` of manifests; the caller checks the outcome."""
    return kubectl(kube, "apply", "-f", "-", stdin=yaml.safe_dump_all(manifests), check=False)


def install_crds(kube: KubeSandbox, checkout: Checkout) -> None:
    """crds/ applied with kustomize and waited for until Established."""
    kubectl(kube, "apply", "-k", str(checkout.crds))
    kubectl(
        kube, "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c}" for c in CRDS)
    )
