"""`hive source reload` sees what a container service runs outside hive.yaml: an edited
compose file, an image rebuilt under the same tag (docker, podman, compose). Real engines,
a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient
from tests.engines import IMAGE, require_engine
from tests.supervision.conftest import Events
from tests.support import write_project

pytestmark = pytest.mark.anyio

COMPOSE = {"docker": ["docker-compose"], "podman": [str(Path(sys.executable).with_name("podman-compose"))]}


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest, home: Path) -> Iterator[str]:
    """The engine; the daemon's config names the compose implementation that drives it
    (set up before the daemon: tests name it before `client`). Every container and
    network of source `p` is removed at the end."""
    name: str = request.param
    require_engine(name, COMPOSE[name][0])
    (home / "config.toml").write_text(f"[runners.compose]\ncommand = {json.dumps(COMPOSE[name])}\n")
    yield name
    for kind, label in (("container", "label=hive.source=p"), ("container", "label=com.docker.compose.project=hive-p"),
                        ("network", "label=com.docker.compose.project=hive-p")):
        listed = subprocess.run([name, kind, "ls", "-q", *(["-a"] if kind == "container" else []), "--filter", label],
                                capture_output=True, text=True, timeout=60)
        if listed.stdout.split():
            subprocess.run([name, kind, "rm", "-f", *listed.stdout.split()], capture_output=True, timeout=120)


@pytest.fixture
async def tag(engine: str, home: Path) -> AsyncIterator[str]:
    """An image tag of this test alone, built from the test image; removed at the end."""
    name = f"localhost/hive-reload-{uuid.uuid4().hex[:10]}:latest"
    await _build(engine, name, home, "first")
    yield name
    await anyio.run_process([engine, "rmi", "-f", name], check=False)


async def _build(engine: str, tag: str, home: Path, generation: str) -> None:
    """Build ``tag`` (again: another image id under the same tag)."""
    context = home / f"build-{generation}"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {IMAGE}\nLABEL hive.test.generation={generation}\n")
    with anyio.fail_after(300):
        await anyio.run_process([engine, "build", "-q", "-t", tag, str(context)])


def _compose_file(project: Path, text: str, image: str = IMAGE) -> None:
    project.mkdir(parents=True, exist_ok=True)
    (project / "compose.yaml").write_text(json.dumps({"services": {"web": {
        "image": image, "network_mode": "host",
        "command": ["sh", "-c", f"echo {text}; trap 'exit 0' TERM; sleep 1000 & wait"],
    }}}))


async def _started(client: DaemonClient, events: Events) -> str:
    """The container of p:web once its next start is told."""
    await events.expect("service_started", "p:web", timeout=90)
    info = await client.get_service_status("p:web")
    assert info.state == "running" and info.container_id
    return info.container_id


async def _line(client: DaemonClient, text: str) -> None:
    """Return once p:web has printed the line ``text`` (its log followed, by deadline)."""
    with anyio.fail_after(60):
        async with client.stream_logs("p:web", tail=20) as stream:
            async for line in stream:
                if line.message == text:
                    return


async def test_reload_restarts_a_service_whose_compose_file_changed(
    engine: str, client: DaemonClient, events: Events, project_dir: Path
) -> None:
    _compose_file(project_dir, "first")
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: compose, compose: {file: compose.yaml, service: web}}
        """)
    await client.add_source(project_dir, name="p", start=True)
    before = await _started(client, events)

    plan = await client.reload_source("p")
    assert plan.restart == [] and plan.unchanged == ["p:web"]  # nothing changed: no restart

    _compose_file(project_dir, "second")
    dry = await client.reload_source("p", dry_run=True)
    assert dry.restart == ["p:web"]
    plan = await client.reload_source("p")
    assert plan.restart == ["p:web"]
    assert await _started(client, events) != before
    await _line(client, "second")


@pytest.mark.parametrize("runner", ["container", "compose"])
async def test_reload_restarts_a_service_whose_image_was_rebuilt(
    engine: str, tag: str, runner: str, client: DaemonClient, events: Events, project_dir: Path, home: Path
) -> None:
    if runner == "compose":
        _compose_file(project_dir, "up", image=tag)
        block = "{type: compose, compose: {file: compose.yaml, service: web}}"
    else:
        block = (f"{{type: {engine}, {engine}: {{image: '{tag}', network_mode: host, "
                 "command: [sh, -c, \"echo up; trap 'exit 0' TERM; sleep 1000 & wait\"]}}")
    write_project(project_dir, f"""
        version: "1"
        services:
          web:
            runner: {block}
        """)
    await client.add_source(project_dir, name="p", start=True)
    before = await _started(client, events)
    assert (await client.reload_source("p")).restart == []  # the same image: nothing to do

    await _build(engine, tag, home, "second")
    plan = await client.reload_source("p")
    assert plan.restart == ["p:web"]
    after = await _started(client, events)
    assert after != before
    image = (await anyio.run_process([engine, "inspect", "--format", "{{.Image}}", after])).stdout
    built = (await anyio.run_process([engine, "image", "inspect", "--format", "{{.Id}}", tag])).stdout
    assert image.decode().strip().removeprefix("sha256:") == built.decode().strip().removeprefix("sha256:")
