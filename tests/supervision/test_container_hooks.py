"""Hook steps run by a container runner (`runner: {type: docker|podman|compose, …}`): the
container runs to its end with the hook's environment, its output goes to the service's
logs marked as hook output, its exit code is the step's result, and a step cut at its
timeout leaves no container behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hive_client import DaemonClient
from tests.engines import IMAGE, require_engine
from tests.supervision.conftest import Events
from tests.support import write_project

pytestmark = pytest.mark.anyio

KINDS = ["docker", "podman", "compose-docker", "compose-podman"]
COMPOSE = {
    "compose-docker": ["docker-compose"],
    "compose-podman": [str(Path(sys.executable).with_name("podman-compose"))],
}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, home: Path) -> str:
    """Set up before the daemon (see ``configured``): a compose kind names its
    implementation in the daemon config."""
    name: str = request.param
    require_engine(_engine(name), *COMPOSE.get(name, [])[:1])
    if name in COMPOSE:
        (home / "config.toml").write_text(f"[runners.compose]\ncommand = {json.dumps(COMPOSE[name])}\n")
    return name


@pytest.fixture(autouse=True)
def configured(kind: str) -> None:
    """Autouse fixtures come first: the daemon starts with the kind's config."""


def _engine(kind: str) -> str:
    return kind.removeprefix("compose-")


def _step(kind: str, project: Path, script: str, **fields: object) -> str:
    """A hook step running ``script`` in a busybox container with the project at /work."""
    project.mkdir(parents=True, exist_ok=True)
    if kind.startswith("compose-"):
        (project / "hooks.yaml").write_text(json.dumps({"services": {"tool": {
            "image": IMAGE, "volumes": ["./:/work"], "network_mode": "host",
            "environment": {"HIVE_SERVICE_NAME": "${HIVE_SERVICE_NAME}"},
        }}}))
        block: dict[str, object] = {"file": "hooks.yaml", "service": "tool", "command": ["sh", "-c", script]}
    else:
        block = {"image": IMAGE, "command": ["sh", "-c", script], "volumes": ["./:/work"],
                 "network_mode": "host"}
    runner = kind.partition("-")[0]
    return json.dumps({"runner": {"type": runner, runner: block}, **fields})


def _hook_containers(kind: str) -> list[str]:
    listed = subprocess.run([_engine(kind), "ps", "-a", "--format", "{{.Names}}"],
                            capture_output=True, text=True, timeout=60)
    return [name for name in listed.stdout.split() if name.startswith("hive-hook-")]


def _web_after(project_dir: Path, step: str, run: str) -> None:
    """A project whose service `web` runs ``run`` after the pre-up ``step``."""
    write_project(project_dir, f"""
        version: "1"
        services:
          web:
            runner: {{type: script, script: {{run: "{run}"}}}}
            hooks:
              pre-up: [{step}]
        """)


async def test_a_container_step_runs_before_the_service(
    client: DaemonClient, events: Events, kind: str, project_dir: Path
) -> None:
    step = _step(kind, project_dir, 'echo "made by $HIVE_SERVICE_NAME" > /work/made; echo hook-line')
    _web_after(project_dir, step, "cat made; exec sleep 1000")
    await client.add_source(project_dir, name="p", start=True)
    assert (await client.get_service_status("p:web")).state == "running"
    assert (project_dir / "made").read_text() == "made by web\n"
    logs = [line.message for line in await client.get_logs("p:web", lines=50)]
    assert "[pre-up hook] hook-line" in logs
    assert _hook_containers(kind) == []  # run --rm


async def test_a_failing_container_step_keeps_the_service_down(
    client: DaemonClient, events: Events, kind: str, project_dir: Path
) -> None:
    step = _step(kind, project_dir, "echo cannot migrate >&2; exit 3")
    _web_after(project_dir, step, "exec sleep 1000")
    await client.add_source(project_dir, name="p", start=True)
    status = await client.get_service_status("p:web")
    assert status.state == "crashed" and status.pid is None
    logs = [line.message for line in await client.get_logs("p:web", lines=50)]
    assert status.last_error is not None and "exited with code 3: cannot migrate" in status.last_error, logs


async def test_a_hanging_container_step_is_cut_and_removed(
    client: DaemonClient, events: Events, kind: str, project_dir: Path
) -> None:
    # Long enough for a container to start on a busy machine (the step must have run).
    step = _step(kind, project_dir, "echo started > /work/started; exec sleep 1000", timeout="8s")
    _web_after(project_dir, step, "exec sleep 1000")
    await client.add_source(project_dir, name="p", start=True)
    status = await client.get_service_status("p:web")
    assert status.state == "crashed"
    assert status.last_error is not None and "timed out after 8s" in status.last_error
    assert (project_dir / "started").exists()
    assert _hook_containers(kind) == []
