"""Several copies of a service: ports, HIVE_INSTANCE, crashes, scaling down, persistence."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import psutil
import pytest

from hive_client import DaemonClient, NotFound
from tests.supervision.conftest import Events
from tests.support import free_port, run_cli, start_daemon, wait_until, write_project

pytestmark = pytest.mark.anyio


def _project(directory: Path, port: int) -> None:
    write_project(directory, f"""
        version: "1"
        services:
          web:
            runner:
              type: script
              script:
                run: 'echo "$HIVE_INSTANCE {{{{runtime.port.http}}}}" > inst-$HIVE_INSTANCE; exec sleep 1000'
            rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
            restart: {{policy: on-failure, delay: 0s}}
    """)


def _alive(pid: int | None) -> bool:
    return pid is not None and psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def test_scale_up_crash_scale_down_and_persist(hive_env: Path, project_dir: Path) -> None:
    port = free_port()
    _project(project_dir, port)
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket, timeout=60) as client, client.subscribe_events() as stream:
            events = Events(client, stream)
            await client.add_source(project_dir, name="p", start=True)
            assert [s.fqn for s in await client.list_services("p")] == ["p:web"]

            await client.scale_service("p:web", 5)
            listed = await client.list_services("p")
            assert [s.fqn for s in listed] == ["p:web", "p:web#1", "p:web#2", "p:web#3", "p:web#4"]
            assert all(s.state == "running" and s.instances == 5 for s in listed)
            assert [s.instance for s in listed] == [0, 1, 2, 3, 4]
            # The light listing: the same instances, in the same order, state only.
            assert await client.list_states("p") == {s.fqn: "running" for s in listed}
            assert await client.list_states() == await client.list_states("p")
            with pytest.raises(NotFound):
                await client.list_states("nope")
            ports = [s.ports["http"] for s in listed]
            assert ports[0] == port and len(set(ports)) == 5
            # Each copy got its own HIVE_INSTANCE and its own port.
            for index, expected in enumerate(ports):
                path = project_dir / f"inst-{index}"
                await wait_until(lambda p=path: p.exists() and p.read_text().strip(), what=str(path))
                assert path.read_text().split() == [str(index), str(expected)]

            # A crash of instance 3 restarts only instance 3.
            pids = {s.fqn: s.pid for s in listed}
            os.kill(pids["p:web#3"], signal.SIGKILL)
            crash = await events.expect("service_crashed", "p:web#3")
            assert crash.signal == signal.SIGKILL
            restarted = await events.expect("service_started", "p:web#3")
            assert restarted.pid != pids["p:web#3"]
            after = {s.fqn: s.pid for s in await client.list_services("p")}
            assert {k: v for k, v in after.items() if k != "p:web#3"} == {
                k: v for k, v in pids.items() if k != "p:web#3"
            }
            assert (await client.get_service_status("p:web#3")).ports["http"] == ports[3]

            # Scaling down stops the highest instances first.
            await client.scale_service("p:web", 2)
            stopping = [
                (await events.expect("service_state_changed", where=lambda e: e.state == "stopping")).fqn
                for _ in range(3)
            ]
            assert stopping == ["p:web#4", "p:web#3", "p:web#2"]
            assert [s.fqn for s in await client.list_services("p")] == ["p:web", "p:web#1"]
            assert not _alive(after["p:web#4"]) and not _alive(after["p:web#3"]) and not _alive(after["p:web#2"])
            assert _alive(after["p:web"]) and _alive(after["p:web#1"])
    finally:
        daemon.stop()

    # The count survives a daemon restart.
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            listed = await client.list_services("p")
            assert [s.fqn for s in listed] == ["p:web", "p:web#1"]
            assert all(s.state == "running" and s.instances == 2 for s in listed)
    finally:
        daemon.stop()


async def test_scale_survives_a_killed_daemon(hive_env: Path, project_dir: Path) -> None:
    """Instances are adopted with their ports after kill -9."""
    _project(project_dir, free_port())
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
        await client.scale_service("p:web", 3)
        before = {s.fqn: (s.pid, s.ports["http"]) for s in await client.list_services("p")}
    daemon.kill9()
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            after = {s.fqn: (s.pid, s.ports["http"]) for s in await client.list_services("p")}
        assert after == before
    finally:
        daemon.stop()


def test_scale_cli(daemon, project_dir: Path) -> None:
    _project(project_dir, free_port())
    assert run_cli("up", str(project_dir)).returncode == 0
    result = run_cli("scale", "web", "3")
    assert result.returncode == 0, result.stderr
    for fqn in ("proj:web", "proj:web#1", "proj:web#2"):
        assert fqn in result.stdout
    assert run_cli("scale", "web", "0").returncode == 0
    listed = json.loads(run_cli("--json", "services").stdout)
    assert {row["fqn"]: row["state"] for row in listed} == {"proj:web": "stopped"}
    refused = run_cli("scale", "web", "-1")
    assert refused.returncode == 2


async def test_crash_of_one_instance_with_health(client: DaemonClient, events: Events, project_dir: Path) -> None:
    """Health is per instance too: each copy checks its own port."""
    port = free_port()
    project_dir.mkdir(parents=True)
    write_project(project_dir, f"""
        version: "1"
        services:
          srv:
            runner: {{type: script, script: {{run: "python3 -m http.server {{{{runtime.port.http}}}} --bind 127.0.0.1"}}}}
            rollout: {{type: recreate, recreate: {{ports: {{http: {port}}}}}}}
            healthcheck: {{type: tcp, tcp: {{port: "{{{{runtime.port.http}}}}", interval: 0.1s}}}}
    """)
    await client.add_source(project_dir, name="p", start=True)
    await client.scale_service("p:srv", 2)
    with anyio.fail_after(20):
        while True:
            listed = await client.list_services("p")
            if all(s.healthy for s in listed) and len(listed) == 2:
                break
            await events.expect("service_health_changed")
    assert {s.fqn for s in listed} == {"p:srv", "p:srv#1"}
