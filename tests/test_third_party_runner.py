"""A runner from another distribution (tests/third_party_runner), found through the
``hive.runners`` entry-point group exactly as the built-in ones are."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_client import DaemonClient
from tests.supervision.conftest import Events
from tests.support import free_port, install_package, run_cli, write_project

pytestmark = pytest.mark.anyio

PACKAGE = Path(__file__).parent / "third_party_runner"


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    """Install the package into the test environment, as a user would with pip."""
    install_package(PACKAGE, "hive_echo_runner")


@pytest.fixture
async def client(daemon) -> DaemonClient:  # type: ignore[no-untyped-def]
    async with DaemonClient(daemon.socket, timeout=60) as connected:
        yield connected


@pytest.fixture
async def events(client: DaemonClient) -> Events:
    async with client.subscribe_events() as stream:
        yield Events(client, stream)


async def test_a_service_runs_on_a_third_party_runner(client: DaemonClient, events: Events, home: Path) -> None:
    project = home / "proj"
    write_project(project, """
        version: "1"
        services:
          greeter:
            runner:
              type: echo
              echo: {message: hello, interval: 0.01, count: 3}
    """)
    await client.add_source(project, name="p", start=True)
    await events.expect("service_exited", "p:greeter")
    info = await client.get_service_status("p:greeter")
    assert info.state == "exited"
    lines = [line.message for line in await client.get_logs("p:greeter") if line.stream == "stdout"]
    assert lines == ["hello 1", "hello 2", "hello 3"]


async def test_its_errors_reach_the_user(client: DaemonClient, home: Path) -> None:
    project = home / "proj"
    write_project(project, """
        version: "1"
        services:
          greeter:
            runner:
              type: echo
              echo: {interval: 1}
    """)
    await client.add_source(project, name="p", start=True)
    info = await client.get_service_status("p:greeter")
    assert info.state == "crashed"
    assert "echo runner: Object missing required field `message`" in (info.last_error or "")
    listed = run_cli("services")
    assert "echo runner" in listed.stdout and "Traceback" not in listed.stdout + listed.stderr


def test_the_daemon_lists_it_beside_the_built_in_runners() -> None:
    from hive.daemon.runner_registry import RunnerRegistry

    registry = RunnerRegistry()
    assert {"script", "echo"} <= set(registry.names)
    assert type(registry.get("echo")).__module__ == "hive_echo_runner"


async def test_runtime_templates_in_its_block_are_resolved(client: DaemonClient, events: Events, home: Path) -> None:
    port = free_port()
    project = home / "proj"
    write_project(project, f"""
        version: "1"
        services:
          greeter:
            runner:
              type: echo
              echo: {{message: "listening on {{{{runtime.port.http}}}}", count: 1}}
            rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
    """)
    await client.add_source(project, name="p", start=True)
    await events.expect("service_exited", "p:greeter")
    lines = [line.message for line in await client.get_logs("p:greeter") if line.stream == "stdout"]
    assert lines == [f"listening on {port} 1"]
