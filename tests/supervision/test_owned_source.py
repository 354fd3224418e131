"""A source with an owner (a plugin) is left to it after a daemon restart: the daemon
adopts its processes that still run and starts none of the others, whatever their desired
state was. A source without an owner is started as before."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hive_client import DaemonClient, InvalidRequest
from tests.support import pids_of_service, start_daemon, wait_for, write_project

pytestmark = pytest.mark.anyio

SLEEPER = {"runner": {"type": "script", "script": {"run": "exec sleep 1000"}}, "stop_grace": "1s"}


async def test_an_owned_source_is_adopted_never_started(hive_env: Path) -> None:
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            await client.add_source(hive_env / "owned.db", name="owned", owner="keeper")
            await client.add_source(hive_env / "plain.db", name="plain")
            for source, name in (("owned", "alive"), ("owned", "dead"), ("plain", "dead")):
                await client.create_service(source, name, SLEEPER)
            assert {s.name: s.owner for s in await client.list_sources()} == {"owned": "keeper", "plain": None}
            with pytest.raises(InvalidRequest, match="owner"):
                await client.add_source(hive_env / "other.db", owner="Not A Name")
        wait_for(lambda: all(pids_of_service(f) for f in ("owned:alive", "owned:dead", "plain:dead")),
                 what="the three services to run")
        [alive] = pids_of_service("owned:alive")

        daemon.kill9()  # the daemon dies; of its services, only owned:alive lives on
        for fqn in ("owned:dead", "plain:dead"):
            for pid in pids_of_service(fqn):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pids_of_service("owned:dead") and not pids_of_service("plain:dead"),
                 what="the dead services gone")

        daemon = start_daemon(hive_env)  # ready once it has adopted and started what it would
        async with DaemonClient(daemon.socket) as client:
            assert (await client.get_service_status("owned:alive")).pid == alive  # adopted
            dead = await client.get_service_status("owned:dead")
            assert (dead.state, dead.desired) == ("stopped", "stopped")  # left to its owner
            assert (await client.get_service_status("plain:dead")).desired == "running"  # the daemon's own: started
            assert {s.name: s.owner for s in await client.list_sources()} == {"owned": "keeper", "plain": None}

            # The owner decides: it starts it. Adding the path again with an owner sets it.
            await client.start_service("owned:dead")
            await client.add_source(hive_env / "plain.db", owner="keeper")
            assert {s.name: s.owner for s in await client.list_sources()}["plain"] == "keeper"
        wait_for(lambda: pids_of_service("owned:dead") and pids_of_service("plain:dead"),
                 what="both dead services running again")
        assert pids_of_service("owned:alive") == [alive]
    finally:
        daemon.stop()


async def test_an_owned_service_replaced_at_start_is_left_stopped(hive_env: Path) -> None:
    """Its configuration changed while no daemon ran: its process is stopped (outdated) and
    not started again, and the service is then stopped, desired state included."""
    project = write_project(hive_env / "proj", """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
            environment: {static: {VERSION: "1"}}
        """)
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            await client.add_source(project, name="proj", owner="keeper", start=True)
        wait_for(lambda: pids_of_service("proj:web"), what="proj:web running")
        daemon.kill9()
        (project / "hive.yaml").write_text((project / "hive.yaml").read_text().replace('"1"}}', '"2"}}'))
        daemon = start_daemon(hive_env)
        wait_for(lambda: not pids_of_service("proj:web"), what="the outdated proj:web stopped")
        async with DaemonClient(daemon.socket) as client:
            web = await client.get_service_status("proj:web")
            assert (web.state, web.desired) == ("stopped", "stopped")
    finally:
        daemon.stop()
