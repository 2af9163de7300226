"""Errors of the test sandbox. Each names the daemon or command at fault and where to look.

SandboxError
├── NotACheckout        the source tree given (--source, else the working directory) is not ours
├── MissingPackage      a program the sandbox runs is not installed (says which package)
├── KubeBinariesMissing the cached etcd/kube-apiserver/kube-controller-manager build is incomplete
├── PortInUse           a daemon's port is taken
├── DaemonFailed        a daemon exited or did not get ready in time (with its log's tail)
├── CommandFailed       a command exited non-zero (with its output)
├── KubeconfigUnusable  an existing cluster's kubeconfig gives no admin credentials we can use
├── ApiRequestFailed    an admin request of the sandbox to its API server failed
└── TokenRequestFailed  the API server refused to mint a ServiceAccount's token
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

LOG_TAIL_LINES = 15
#: Error lines from before the tail that a DaemonFailed quotes too.
EARLIER_ERROR_LINES = 5


def _log_tail(path: Path) -> str:
    """The log's last lines, after its last few error lines from before them: a daemon's
    shutdown can log more than LOG_TAIL_LINES lines after the error that says what to fix."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    tail = lines[-LOG_TAIL_LINES:]
    earlier = [line for line in lines[:-LOG_TAIL_LINES] if "error" in line.lower()]
    if not earlier:
        return "\n".join(tail)
    return "\n".join([*earlier[-EARLIER_ERROR_LINES:], "...", *tail])


class SandboxError(RuntimeError):
    """Base of everything the sandbox raises."""


class NotACheckout(SandboxError):
    """What the sandbox applies (crds/, config/) and builds with (hack/) comes from a source tree
    of this project, given by the caller; `root` is not one."""

    def __init__(self, root: Path, missing: Sequence[str]) -> None:
        self.root = root
        self.missing = list(missing)
        super().__init__(
            f"{root} is not a checkout of rbd-mirror-reconciler (no {', '.join(self.missing)}): "
            "run from the repository's root or pass --source DIR"
        )


class MissingPackage(SandboxError):
    def __init__(self, program: str, package: str) -> None:
        self.program = program
        self.package = package
        super().__init__(
            f"{program} not found: install the Debian package {package!r} (`make setup` does)"
        )


class PortInUse(SandboxError):
    def __init__(self, daemon: str, port: int) -> None:
        self.daemon = daemon
        self.port = port
        super().__init__(f"{daemon}: port 127.0.0.1:{port} is already in use")


class DaemonFailed(SandboxError):
    def __init__(self, daemon: str, log_file: Path, reason: str) -> None:
        self.daemon = daemon
        self.log_file = log_file
        tail = _log_tail(log_file)
        detail = f"\n--- last lines of {log_file} ---\n{tail}" if tail else ""
        super().__init__(f"{daemon} failed to start: {reason}; see {log_file}{detail}")


class CommandFailed(SandboxError):
    def __init__(self, argv: Sequence[str], reason: str) -> None:
        self.argv = list(argv)
        super().__init__(f"`{' '.join(self.argv)}` failed: {reason}")


class KubeBinariesMissing(SandboxError):
    """The cached kube-apiserver/etcd/kube-controller-manager build is absent or incomplete."""

    def __init__(self, bin_dir: Path, missing: Sequence[str], build_script: Path) -> None:
        self.bin_dir = bin_dir
        self.missing = list(missing)
        super().__init__(
            f"{', '.join(self.missing)} not found in {bin_dir}: run `make kube-bins` "
            f"(or {build_script}) once; a cold build takes several minutes"
        )


class KubeconfigUnusable(SandboxError):
    """The kubeconfig naming an existing cluster cannot be used for admin requests."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        super().__init__(f"kubeconfig {path}: {reason}")


class ApiRequestFailed(SandboxError):
    """An admin request of the sandbox itself failed; `status` is None when nothing answered."""

    def __init__(self, method: str, api_path: str, status: int | None, detail: str) -> None:
        self.method = method
        self.api_path = api_path
        self.status = status
        shown = f"HTTP {status}" if status is not None else "no answer"
        super().__init__(f"{method} {api_path}: {shown}: {detail.strip()[:500]}")


class TokenRequestFailed(SandboxError):
    """The API server refused to mint a token for a ServiceAccount."""

    def __init__(self, namespace: str, name: str, reason: str) -> None:
        self.namespace = namespace
        self.name = name
        super().__init__(f"TokenRequest for serviceaccount {namespace}/{name} failed: {reason}")
