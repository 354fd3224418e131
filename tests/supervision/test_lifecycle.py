"""Stopping process trees, surviving a daemon crash, and remembering what the user asked."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import psutil
import pytest

from hive_client import DaemonClient
from tests.supervision.conftest import Events
from tests.support import pids_of_service, run_cli, start_daemon, wait_for, write_project

pytestmark = pytest.mark.anyio


async def test_stop_leaves_no_grandchild(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          tree:
            runner:
              type: script
              script:
                run: |
                  sleep 1000 &
                  sh -c 'sleep 1000 & wait' &
                  setsid sleep 1000 &
                  wait
    """)
    await client.add_source(project_dir, name="p", start=True)
    await events.expect("service_started", "p:tree")
    wait_for(lambda: len(pids_of_service("p:tree")) >= 5, what="the whole tree to start")
    tree = pids_of_service("p:tree")
    await client.stop_service("p:tree")
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert pids_of_service("p:tree") == []


async def test_sigterm_ignored_is_killed_after_grace(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          stubborn:
            runner: {type: script, script: {run: "trap '' TERM; while true; do sleep 0.1; done"}}
            stop_grace: 0.5s
    """)
    await client.add_source(project_dir, name="p", start=True)
    await events.expect("service_started", "p:stubborn")
    began = anyio.current_time()
    await client.stop_service("p:stubborn")
    took = anyio.current_time() - began
    assert pids_of_service("p:stubborn") == []
    assert took >= 0.5  # it did wait the grace period before the kill
    assert (await client.get_service_status("p:stubborn")).state == "stopped"


async def test_daemon_kill9_services_survive_and_are_adopted(hive_env: Path, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "while true; do echo tick $(date +%s%N); sleep 0.05; done"}}
            restart: {policy: on-failure, delay: 0s}
    """)
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
        before = await client.get_service_status("p:web")
        assert before.state == "running"
    daemon.kill9()
    assert psutil.pid_exists(before.pid)  # the service did not die with the daemon

    result = run_cli("start")
    assert result.returncode == 0, result.stderr
    try:
        async with DaemonClient() as client:
            after = await client.get_service_status("p:web")
            assert after.state == "running"
            assert after.pid == before.pid
            # Its output keeps flowing into the logs.
            async with client.stream_logs("p:web", tail=0) as lines:
                with anyio.fail_after(10):
                    line = await lines.__anext__()
            assert line.message.startswith("tick")
            # Supervised again: a crash is noticed and the service restarted.
            async with client.subscribe_events(["service_started"], fqn="p:web") as started:
                os.kill(before.pid, signal.SIGKILL)
                with anyio.fail_after(15):
                    event = await started.__anext__()
            assert event.pid != before.pid
    finally:
        run_cli("stop")


def _waiting_pair(generation: int) -> str:
    """Two services that, on SIGTERM, wait for the other to have had its SIGTERM too, then
    exit by themselves (``<name>.done``); ``generation`` is their configuration's."""
    services = ""
    for name, other in (("a", "b"), ("b", "a")):
        services += f"""
          {name}:
            runner:
              type: script
              script:
                run: |
                  trap 'echo > {name}.term; while [ ! -e {other}.term ]; do sleep 0.05; done; echo > {name}.done; exit 0' TERM
                  sleep 1000 &
                  wait
            environment: {{static: {{GENERATION: "{generation}"}}}}
            stop_grace: 5s
        """
    return 'version: "1"\nservices:' + services


async def test_changed_while_no_daemon_ran_are_replaced_together(hive_env: Path, project_dir: Path) -> None:
    # Edited while no daemon ran: both are replaced at start-up, and their stops run
    # together. One after the other, the first would wait for a SIGTERM the second gets
    # only after the first's grace, and be killed instead of exiting by itself.
    write_project(project_dir, _waiting_pair(1))
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
        old = {name: (await client.get_service_status(f"p:{name}")).pid for name in "ab"}
    daemon.kill9()
    write_project(project_dir, _waiting_pair(2))
    daemon = start_daemon(hive_env)
    try:
        wait_for(lambda: all((project_dir / f"{name}.done").exists() for name in "ab"),
                 timeout=20, what="both old processes to exit by themselves")
        for name in "ab":
            fresh = wait_for(lambda name=name: [p for p in pids_of_service(f"p:{name}") if p != old[name]],
                             what=f"p:{name} started again")
            assert old[name] not in pids_of_service(f"p:{name}")
            async with DaemonClient(daemon.socket) as client:
                info = await client.get_service_status(f"p:{name}")
            assert info.state == "running" and info.pid in fresh
    finally:
        daemon.stop()


async def test_stopped_service_stays_stopped_after_restart(hive_env: Path, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: "sleep 1000"}}
          b:
            runner: {type: script, script: {run: "sleep 1000"}}
    """)
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
        await client.stop_service("p:b")
    assert daemon.stop() == 0
    assert pids_of_service("p:a") == []  # `hive stop` stops services by default
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            a = await client.get_service_status("p:a")
            b = await client.get_service_status("p:b")
        assert a.desired == "running"
        wait_for(lambda: pids_of_service("p:a"), what="p:a to be started again")
        assert b.state == "stopped"
        assert b.desired == "stopped"
        assert pids_of_service("p:b") == []
    finally:
        daemon.stop()


async def test_keep_services_on_stop(hive_env: Path, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          a:
            runner: {type: script, script: {run: "sleep 1000"}}
    """)
    daemon = start_daemon(hive_env)
    async with DaemonClient(daemon.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
        pid = (await client.get_service_status("p:a")).pid
        await client.shutdown(keep_services=True)
    assert daemon.process.wait(30) == 0
    assert psutil.pid_exists(pid)
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            assert (await client.get_service_status("p:a")).pid == pid
    finally:
        daemon.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

