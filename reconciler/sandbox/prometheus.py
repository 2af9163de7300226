"""A real Prometheus server for tests: scrape the controller, evaluate the product's alert rules.

Debian's `prometheus` package provides the binary (`make setup` installs it). Everything the
server writes lives in one directory:

    Prometheus.start(directory, targets=["127.0.0.1:8080"], rule_files=[alerts.yaml])
      -> <directory>/prometheus.yml   generated: one job, static targets, global intervals
      -> <directory>/data             --storage.tsdb.path
      -> <directory>/prometheus.log   the server's output, quoted by DaemonFailed
      -> http://127.0.0.1:<port>      --web.listen-address, ready once /-/ready answers 200

Rule files are referenced by absolute path, so a syntax error names the file to fix. The query
helpers (`query`, `targets`, `alerts`, `rules`) use the HTTP API with the standard library only
and raise `SandboxError` carrying Prometheus' own error message.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from reconciler.sandbox.errors import MissingPackage, SandboxError
from reconciler.sandbox.process import Daemon, DaemonGroup, ensure_port_free, free_port

PROGRAM = "prometheus"
PACKAGE = "prometheus"
DEFAULT_JOB = "rbd-mirror-reconciler"
DEFAULT_INTERVAL = "1s"
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0


def require_prometheus() -> str:
    """The path of the prometheus binary; MissingPackage names the Debian package if absent."""
    path = shutil.which(PROGRAM)
    if path is None:
        raise MissingPackage(PROGRAM, PACKAGE)
    return path


def render_config(
    targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    interval: str = DEFAULT_INTERVAL,
    evaluation_interval: str | None = None,
    job: str = DEFAULT_JOB,
) -> str:
    """prometheus.yml: global intervals, the rule files, one job scraping `targets` (host:port)."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": evaluation_interval or interval,
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(targets)}]}],
    }
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Prometheus:
    """One running server. Also a context manager that stops it on exit."""

    dir: Path
    port: int
    daemons: DaemonGroup = field(default_factory=DaemonGroup, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        return self.dir / "prometheus.yml"

    @property
    def log_file(self) -> Path:
        return self.dir / "prometheus.log"

    @property
    def pid(self) -> int:
        return self.daemons.pids()[0]

    # -- HTTP API --------------------------------------------------------------------------------

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the `result` list (`metric` labels and `value` [time, "text"])."""
        data = self._api("query", {"query": expr})
        if data["resultType"] not in ("vector", "matrix"):
            # Scalars and strings come back as one [time, "text"] pair, not a list of series.
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets, each with `labels`, `health` (up/down/unknown), `lastError`."""
        active: list[dict[str, Any]] = self._api("targets", {"state": "active"})["activeTargets"]
        return active

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, each with `labels`, `annotations`, `state`, `value`."""
        alerts: list[dict[str, Any]] = self._api("alerts")["alerts"]
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule of every group, each with `name`, `health`, `lastError`, `type`."""
        groups = self._api("rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def ready(self) -> bool:
        """Whether /-/ready answers 200: the TSDB is open and rules and config are loaded."""
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                status: int = resp.status
        except (urllib.error.URLError, OSError):
            return False
        return status == 200

    def _api(self, endpoint: str, params: dict[str, str] | None = None) -> Any:
        url = f"{self.url}/api/v1/{endpoint}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as err:
            # Bad queries answer 400/422 with the same JSON envelope; its error is the useful bit.
            with err:
                body = _json_or_none(err.read())
            if body is None:
                raise SandboxError(f"prometheus GET {url}: HTTP {err.code}") from err
        except (urllib.error.URLError, OSError) as err:
            raise SandboxError(f"prometheus GET {url}: {err}; see {self.log_file}") from err
        if body.get("status") != "success":
            raise SandboxError(
                f"prometheus GET {url}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    # -- lifecycle -------------------------------------------------------------------------------

    def running(self) -> bool:
        return any(daemon.running() for daemon in self.daemons.daemons)

    def stop(self) -> None:
        """SIGTERM to the server's own PID (SIGKILL after 10 s); a no-op once stopped."""
        self.daemons.stop()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def start(
        cls,
        directory: Path,
        targets: Sequence[str],
        rule_files: Sequence[Path] = (),
        interval: str = DEFAULT_INTERVAL,
        *,
        evaluation_interval: str | None = None,
        job: str = DEFAULT_JOB,
        port: int | None = None,
    ) -> Prometheus:
        """Start a server in `directory` scraping `targets` and wait until /-/ready answers.

        `interval` is both the scrape and the evaluation interval unless `evaluation_interval`
        is given. On any failure, what was started is stopped before the error propagates.
        """
        program = require_prometheus()
        for rule_file in rule_files:
            if not Path(rule_file).is_file():
                raise SandboxError(f"rule file {rule_file} does not exist")
        directory.mkdir(parents=True, exist_ok=True)
        if port is None:
            port = free_port()
        else:
            ensure_port_free(port, PROGRAM)
        server = cls(dir=directory, port=port)
        server.config_file.write_text(
            render_config(targets, rule_files, interval, evaluation_interval, job)
        )
        try:
            daemon = server.daemons.start(
                Daemon(
                    name=f"prometheus :{port}",
                    argv=[
                        program,
                        f"--config.file={server.config_file}",
                        f"--storage.tsdb.path={directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--log.level=info",
                    ],
                    log_file=server.log_file,
                    cwd=directory,
                )
            )
            daemon.wait_ready(server.ready, START_TIMEOUT)
        except BaseException:
            server.stop()
            raise
        return server


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
