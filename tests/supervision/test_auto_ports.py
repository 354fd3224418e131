"""A rollout port of 0: the daemon picks a free port at the first start and keeps it across
restarts and a daemon killed; another when it was taken meanwhile."""

from __future__ import annotations

import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from hive_client import BlockingClient, DaemonClient
from tests.support import run_cli, start_daemon, wait_for, write_project

pytestmark = pytest.mark.anyio

SERVICE = """
  {name}:
    runner: {{type: script, script: {{run: "exec {python} -m http.server {{{{runtime.port.http}}}} --bind 127.0.0.1"}}}}
    rollout: {{type: recreate, recreate: {{ports: {{http: 0}}}}}}
    healthcheck: {{type: http, http: {{port: "{{{{runtime.port.http}}}}", path: /, interval: 0.2s, retries: 1}}}}
"""


def _project(directory: Path, *names: str) -> Path:
    services = "".join(SERVICE.format(name=name, python=sys.executable) for name in names)
    return write_project(directory, f'version: "1"\nservices:{services}')


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _healthy_port(socket_path: Path, fqn: str) -> int:
    with BlockingClient(socket_path, timeout=30) as client:
        wait_for(lambda: client.get_service_status(fqn).healthy is True, timeout=30, what=f"{fqn} to be healthy")
        port = client.get_service_status(fqn).ports["http"]
    assert port > 0
    return port


async def test_the_daemon_picks_a_port_and_keeps_it(hive_env: Path, project_dir: Path) -> None:
    _project(project_dir, "web", "api")
    assert run_cli("config", "validate", str(project_dir)).returncode == 0  # two 0s are no clash
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket, timeout=60) as client:
            await client.add_source(project_dir, name="p", start=True)
            web, api = _healthy_port(daemon.socket, "p:web"), _healthy_port(daemon.socket, "p:api")
            assert web != api and _answers(web) and _answers(api)

            await client.restart_service("p:web")
            assert _healthy_port(daemon.socket, "p:web") == web
        daemon.kill9()
        daemon = start_daemon(hive_env)
        async with DaemonClient(daemon.socket, timeout=60) as client:
            assert _healthy_port(daemon.socket, "p:web") == web  # adopted with its port

            # Taken while it was stopped: the next start picks another.
            await client.stop_service("p:web")
            with socket.socket() as taken:
                taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past our own TIME_WAITs
                taken.bind(("127.0.0.1", web))
                taken.listen()
                await client.start_service("p:web")
                moved = _healthy_port(daemon.socket, "p:web")
            assert moved != web and _answers(moved)
    finally:
        daemon.stop()


def test_a_port_below_zero_says_zero_is_allowed(project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "sleep 100"}}
            rollout: {type: recreate, recreate: {ports: {http: -1}}}
    """)
    result = run_cli("config", "validate", str(project_dir))
    assert result.returncode != 0
    assert "invalid port -1: expected an integer between 1 and 65535, or 0 for a free port the daemon picks" \
        in result.stdout + result.stderr
