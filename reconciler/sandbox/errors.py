"""Errors of the test sandbox. Each names the daemon or command at fault and where to look.

SandboxError
├── MissingPackage      a program the sandbox runs is not installed (says which package)
├── PortInUse           a daemon's port is taken
├── DaemonFailed        a daemon exited or did not get ready in time (with its log's tail)
└── CommandFailed       a command exited non-zero (with its output)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

LOG_TAIL_LINES = 15


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


class SandboxError(RuntimeError):
    """Base of everything the sandbox raises."""


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
