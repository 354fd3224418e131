"""`hive down` leaves no compose network behind; the compose services of one source reach
each other by service name on their project's network. Real engines, a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient
from runners.compose import project_name
from tests.engines import IMAGE, require_engine
from tests.supervision.conftest import Events
from tests.support import write_project

pytestmark = pytest.mark.anyio

COMPOSE = {"docker": ["docker-compose"], "podman": [str(Path(sys.executable).with_name("podman-compose"))]}
# A source name of this module's own: engines are shared with other test runs.
SOURCE = f"n{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest, home: Path) -> Iterator[str]:
    """The engine (set up before the daemon: tests name it before `client`); what the
    source left in it is removed at the end."""
    name: str = request.param
    require_engine(name, COMPOSE[name][0])
    (home / "config.toml").write_text(f"[runners.compose]\ncommand = {json.dumps(COMPOSE[name])}\n")
    yield name
    label = f"label=com.docker.compose.project={project_name(SOURCE + ':x')}"
    for kind in ("container", "network"):
        listed = subprocess.run([name, kind, "ls", "-q", *(["-a"] if kind == "container" else []), "--filter", label],
                                capture_output=True, text=True, timeout=60)
        if listed.stdout.split():
            subprocess.run([name, kind, "rm", "-f", *listed.stdout.split()], capture_output=True, timeout=120)


async def _networks(engine: str) -> list[str]:
    label = f"label=com.docker.compose.project={project_name(SOURCE + ':x')}"
    listed = await anyio.run_process([engine, "network", "ls", "-q", "--filter", label])
    return listed.stdout.decode().split()


async def test_down_removes_the_project_network(
    engine: str, client: DaemonClient, events: Events, project_dir: Path
) -> None:
    project_dir.mkdir(parents=True, exist_ok=True)
    (project_dir / "compose.yaml").write_text(json.dumps({"services": {
        "server": {"image": IMAGE, "command": [
            "sh", "-c", "echo hello-by-name > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]},
        "client": {"image": IMAGE, "command": [
            "sh", "-c", "until wget -q -O- http://server:8080/index.html; do sleep 0.1; done; exec sleep 1000"]},
    }}))
    write_project(project_dir, """
        version: "1"
        services:
          server:
            runner: {type: compose, compose: {file: compose.yaml, service: server}}
          client:
            runner: {type: compose, compose: {file: compose.yaml, service: client}}
            depends_on: [server]
        """)
    await client.add_source(project_dir, name=SOURCE, start=True)
    assert len(await _networks(engine)) == 1
    if engine == "docker":  # podman here has no DNS plugin (CNI without dnsname)
        with anyio.fail_after(60):
            async with client.stream_logs(f"{SOURCE}:client", tail=20) as stream:
                async for line in stream:
                    if line.message == "hello-by-name":
                        break
    await client.stop_source(SOURCE)  # hive down
    assert await _networks(engine) == []
