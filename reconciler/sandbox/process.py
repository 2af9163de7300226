"""Daemons started by the sandbox: start, wait for readiness with a deadline, stop by PID.

Every daemon runs in the foreground of its own session with its output in a log file, so the PID
we hold is the daemon's own and a failure can always point a human at the file to read.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.sandbox.errors import CommandFailed, DaemonFailed, PortInUse, SandboxError


def poll_until(probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Call `probe` until it holds; raise naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() >= deadline:
            raise SandboxError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int, daemon: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as err:
            raise PortInUse(daemon=daemon, port=port) from err


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def pid_runs(pid: int, executable: str) -> bool:
    """Whether `pid` is alive and still the program we started (PIDs get reused)."""
    if not pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return Path(argv0).name == Path(executable).name


def stop_pid(pid: int, executable: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; only if the PID still runs `executable`."""
    if not pid_runs(pid, executable):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass
class Daemon:
    """One long-running process of the sandbox, identified by a human name (e.g. `site-a mon.a`)."""

    name: str
    argv: Sequence[str]
    log_file: Path
    cwd: Path | None = None
    env: Mapping[str, str] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    def start(self) -> Daemon:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        environ = dict(os.environ)
        if self.env:
            environ.update(self.env)
        with self.log_file.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    list(self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=environ,
                    # Its own session: a Ctrl-C on the test run must not kill daemons before
                    # teardown can stop them in order, and `sandbox up` can exit leaving them up.
                    start_new_session=True,
                )
            except OSError as err:
                raise DaemonFailed(self.name, self.log_file, f"cannot execute: {err}") from err
        return self

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, ready: Callable[[], bool], timeout: float, interval: float = 0.2) -> None:
        """Poll `ready` until it holds; fail early if the daemon exits, late at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                code = self._proc.returncode if self._proc else None
                raise DaemonFailed(self.name, self.log_file, f"exited with status {code}")
            if ready():
                return
            if time.monotonic() >= deadline:
                raise DaemonFailed(self.name, self.log_file, f"not ready after {timeout:.0f} s")
            time.sleep(interval)

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def to_record(self) -> dict[str, object]:
        """What `sandbox down` in another process needs to stop this daemon safely."""
        return {"name": self.name, "pid": self.pid, "executable": self.argv[0]}


class DaemonGroup:
    """Daemons stopped together, newest first, so dependents go before what they depend on."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []

    def start(self, daemon: Daemon) -> Daemon:
        self.daemons.append(daemon.start())
        return daemon

    def stop(self) -> None:
        for daemon in reversed(self.daemons):
            daemon.stop()
        self.daemons.clear()

    def pids(self) -> list[int]:
        return [d.pid for d in self.daemons]


def run(
    argv: Sequence[str],
    *,
    timeout: float = 60,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a short command to completion; its stderr is in the error when it fails."""
    environ = dict(os.environ)
    if env:
        environ.update(env)
    try:
        done = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environ,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise CommandFailed(argv, f"timed out after {timeout:.0f} s") from err
    if done.returncode != 0:
        raise CommandFailed(argv, f"exit {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout
