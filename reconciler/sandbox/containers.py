"""Containers for the tests: the project's own dockerd, its image, and containers run from it.

Sandbox tooling, not runtime: the controller never imports this. Everything goes through the
checkout's scripts and Debian's `docker` client, so the tests build and run exactly what
`make image` does:

    DockerDaemon.ensure(checkout)   hack/dockerd.sh start: its own socket, data root in ~/.cache,
                                    no bridge and no iptables rules (containers use the host's
                                    network); stopped by its PID, and only if started here
    build_image(checkout, daemon)   hack/image.sh: Debian base via mmdebstrap, then the Dockerfile
    Container.run(daemon, ...)      `docker run -d`; stopped and removed by its ID
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.sandbox.checkout import Checkout
from reconciler.sandbox.errors import CommandFailed, MissingPackage

DOCKERD_SCRIPT = "dockerd.sh"
IMAGE_SCRIPT = "image.sh"
#: Debian's client (docker.io) talks BuildKit to Debian's 20.10 daemon without a buildx plugin; a
#: newer client elsewhere on PATH is the fallback.
DEBIAN_DOCKER = "/usr/bin/docker"
#: Where a Pod's service-account credentials are mounted; the in-cluster config reads them there.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def docker_cli() -> str:
    if os.access(DEBIAN_DOCKER, os.X_OK):
        return DEBIAN_DOCKER
    found = shutil.which("docker")
    if found is None:
        raise MissingPackage("docker", "docker.io")
    return found


def _run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float) -> str:
    environ = {**os.environ, **(env or {})}
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environ,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as err:
        raise CommandFailed(argv, f"timed out after {timeout:.0f} s") from err
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-3000:]
        raise CommandFailed(argv, f"exit {done.returncode}: {output}")
    return done.stdout


@dataclass(frozen=True)
class DockerDaemon:
    """The project's dockerd; `started` says whether `ensure` started it (then `stop` stops it)."""

    host: str
    pid: int
    started: bool
    script: Path

    @classmethod
    def ensure(cls, checkout: Checkout) -> DockerDaemon:
        """Start the daemon unless it runs already (someone else then owns it)."""
        script = checkout.script(DOCKERD_SCRIPT)
        line = _run(["bash", str(script), "start"], timeout=90).strip().splitlines()[-1]
        fields = dict(part.split("=", 1) for part in line.split())
        return cls(
            host=fields["DOCKER_HOST"],
            pid=int(fields["PID"]),
            started=fields["STARTED"] == "1",
            script=script,
        )

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def docker(self, *args: str, timeout: float = 60) -> str:
        return _run([docker_cli(), *args], env=self.env, timeout=timeout)

    def stop(self) -> None:
        """Stop the daemon by its PID if `ensure` started it; leave someone else's running."""
        if self.started:
            _run(["bash", str(self.script), "stop", str(self.pid)], timeout=60)


@dataclass(frozen=True)
class Image:
    tag: str
    size_bytes: int
    layers: int
    build_seconds: float
    config: dict[str, Any]
    """`docker image inspect`'s Config: Entrypoint, Cmd, User, Env, ..."""


def build_image(
    checkout: Checkout, daemon: DockerDaemon, tag: str = "rbd-mirror-reconciler:dev"
) -> Image:
    """`make image` (hack/image.sh) into `daemon`: cached layers make a rebuild take seconds."""
    started = time.monotonic()
    _run(["bash", str(checkout.script(IMAGE_SCRIPT)), tag], env=daemon.env, timeout=900)
    seconds = time.monotonic() - started
    inspected = json.loads(daemon.docker("image", "inspect", tag))[0]
    return Image(
        tag=tag,
        size_bytes=int(inspected["Size"]),
        layers=len(inspected["RootFS"]["Layers"]),
        build_seconds=seconds,
        config=inspected["Config"],
    )


@dataclass
class Container:
    """One container started with `docker run -d`, known by its ID only."""

    daemon: DockerDaemon
    id: str
    name: str
    removed: bool = field(default=False)

    @classmethod
    def run(
        cls,
        daemon: DockerDaemon,
        image: str,
        args: Sequence[str],
        *,
        name: str,
        options: Sequence[str] = (),
    ) -> Container:
        """`docker run -d --name NAME OPTIONS IMAGE ARGS`: `options` are docker's own flags."""
        container_id = daemon.docker("run", "-d", "--name", name, *options, image, *args).strip()
        return cls(daemon, container_id, name)

    def inspect(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.daemon.docker("inspect", self.id))[0]
        return found

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self) -> str:
        # The container's stdout and stderr, interleaved as written.
        done = subprocess.run(
            [docker_cli(), "logs", self.id],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **self.daemon.env},
            check=False,
        )
        return done.stdout + done.stderr

    def stop(self, grace_seconds: int = 30) -> int:
        """`docker stop`: SIGTERM, SIGKILL after `grace_seconds`, as the kubelet does. Returns
        the exit code."""
        self.daemon.docker(
            "stop", "--time", str(grace_seconds), self.id, timeout=grace_seconds + 30
        )
        code: int = self.inspect()["State"]["ExitCode"]
        return code

    def remove(self) -> None:
        if not self.removed:
            self.daemon.docker("rm", "--force", self.id)
            self.removed = True


def service_account_dir(directory: Path, *, token: str, ca_file: Path, namespace: str) -> Path:
    """What the kubelet mounts at SERVICE_ACCOUNT_DIR: token, ca.crt, namespace, readable by the
    image's non-root user."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(ca_file.read_bytes())
    (directory / "namespace").write_text(namespace)
    for path in (directory / "token", directory / "ca.crt", directory / "namespace"):
        path.chmod(0o644)
    directory.chmod(0o755)
    return directory
