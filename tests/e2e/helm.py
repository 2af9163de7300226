"""helm, built from its Go module by hack/build-tools.sh, and the chart it renders."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.sandbox.checkout import Checkout

CHART = Path("charts") / "rbd-mirror-reconciler"
TOOLS_SCRIPT = "build-tools.sh"


def tools_bin(checkout: Checkout) -> Path:
    """The bin dir of helm and actionlint: built once per version (minutes), then cached."""
    done = subprocess.run(
        ["bash", str(checkout.script(TOOLS_SCRIPT))],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"hack/{TOOLS_SCRIPT} failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def helm(
    bin_dir: Path, *args: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(bin_dir / "helm"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )
    if check and done.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def render(
    bin_dir: Path,
    checkout: Checkout,
    values: dict[str, Any],
    *,
    release: str = "rbd-mirror-reconciler",
    namespace: str = "ceph-csi",
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """`helm template` of the chart with `values`, as objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(values, values_file)
        values_file.flush()
        args = ["template", release, str(checkout.root / CHART), "--namespace", namespace]
        args += ["--values", values_file.name]
        if include_crds:
            args.append("--include-crds")
        text = helm(bin_dir, *args).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (and `name`) among `objects`."""
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the rendered chart"
    return found[0]
