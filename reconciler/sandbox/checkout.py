"""The source tree the sandbox works from, given by its caller.

The sandbox applies the project's CRDs (crds/) and manifests (config/) and builds its binaries
with the scripts in hack/. None of that is package data: it comes from a checkout of this
repository, which the caller names (the CLI's `--source`, else the working directory; pytest's
rootdir in the tests). No module finds it relative to its own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.sandbox.errors import NotACheckout

#: What makes a directory a checkout of this project, as far as the sandbox is concerned.
REQUIRED = ("crds/kustomization.yaml", "config/rbac/kustomization.yaml", "hack/build-kube.sh")


@dataclass(frozen=True)
class Checkout:
    root: Path

    @classmethod
    def at(cls, root: Path) -> Checkout:
        """The checkout at `root`; NotACheckout names what is missing when it is not one."""
        resolved = root.resolve()
        missing = [path for path in REQUIRED if not (resolved / path).exists()]
        if missing:
            raise NotACheckout(resolved, missing)
        return cls(resolved)

    @property
    def crds(self) -> Path:
        """The kustomization of both CRDs."""
        return self.root / "crds"

    def config(self, *parts: str) -> Path:
        """A path under config/, e.g. `config("rbac")` or `config("prometheus", "alerts.yaml")`."""
        return self.root.joinpath("config", *parts)

    def script(self, name: str) -> Path:
        """A script of hack/, e.g. `script("build-kube.sh")`."""
        return self.root / "hack" / name
