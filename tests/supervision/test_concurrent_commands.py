"""Commands that race each other through the real daemon: each one gets a true answer
within its deadline, and none leaves the daemon wedged.

Each scenario was found by trying the product from outside; the interleavings are
forced by events (the k-th event after a command), never by sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, DaemonError, ServiceFailed
from tests.supervision.conftest import Events
from tests.support import DaemonProcess, pids_of_service, run_cli, wait_for, write_project

pytestmark = pytest.mark.anyio

# Every answer here comes well within this; a wedged daemon never answers.
ANSWER_DEADLINE = 30.0


def _many_services(count: int) -> str:
    lines = ['version: "1"', "services:"]
    for number in range(count):
        lines += [f"  s{number}:", "    runner: {type: script, script: {run: 'exec sleep 1000'}}"]
    return "\n".join(lines) + "\n"


async def _registry_answers(client: DaemonClient, project_dir: Path) -> None:
    """The source registry is not held: an add and a remove go through."""
    probe = write_project(project_dir.parent / "probe", _many_services(1))
    with anyio.fail_after(ANSWER_DEADLINE):
        await client.add_source(probe, name="probe")
        await client.remove_source("probe")


@pytest.mark.parametrize("after_events", [0, 1, 3, 8, 20, 40])
async def test_remove_right_after_add_with_start(
    daemon: DaemonProcess, client: DaemonClient, events: Events, project_dir: Path, after_events: int
) -> None:
    write_project(project_dir, _many_services(20))
    for _round in range(3):
        async with (
            DaemonClient(daemon.socket, timeout=ANSWER_DEADLINE) as adder,
            anyio.create_task_group() as both,
        ):

            async def add() -> None:
                # The remove may win: the start then finds no source. Either answer is true.
                with contextlib.suppress(DaemonError):
                    await adder.add_source(project_dir, name="p", start=True)

            both.start_soon(add)
            await events.expect("source_added")
            for _ in range(after_events):
                await events.expect("service_state_changed")
            with anyio.fail_after(ANSWER_DEADLINE):
                await client.remove_source("p")
        assert await client.list_services() == []
        assert "p" not in [s.name for s in await client.list_sources()]
        for number in range(20):
            assert pids_of_service(f"p:s{number}") == [], daemon.stderr()[-3000:]
    await _registry_answers(client, project_dir)


async def test_down_while_a_start_runs(
    daemon: DaemonProcess, client: DaemonClient, events: Events, project_dir: Path
) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          slow:
            runner: {type: script, script: {run: "trap 'sleep 2; exit 0' TERM; while true; do sleep 0.05; done"}}
          x:
            runner: {type: script, script: {run: "exec sleep 1000"}}
    """)
    await client.add_source(project_dir, name="p")
    await client.start_service("p:slow")
    async with (
        DaemonClient(daemon.socket, timeout=ANSWER_DEADLINE) as other,
        anyio.create_task_group() as both,
    ):
        down_done = anyio.Event()

        async def down() -> None:
            with anyio.fail_after(ANSWER_DEADLINE):
                await client.stop_source("p")
            down_done.set()

        both.start_soon(down)
        await events.expect("service_state_changed", "p:slow", where=lambda e: e.state == "stopping")
        with anyio.fail_after(ANSWER_DEADLINE):
            await other.start_service("p:x")  # while the down waits for slow
        with anyio.fail_after(ANSWER_DEADLINE):
            await down_done.wait()
    # The start came after the down: x runs, slow is stopped, and both said so truly.
    states = await client.list_states("p")
    assert states == {"p:slow": "stopped", "p:x": "running"}
    await _registry_answers(client, project_dir)
    with anyio.fail_after(ANSWER_DEADLINE):
        await client.reload_source("p")
        await client.stop_source("p")
    assert pids_of_service("p:x") == []


async def test_restart_of_a_crash_loop_reports_the_failure(
    daemon: DaemonProcess, client: DaemonClient, events: Events, project_dir: Path
) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          loop:
            runner: {type: script, script: {run: "/nonexistent/hive-test-server --port 1"}}
            restart: {policy: always, delay: 0.2s}
    """)
    await client.add_source(project_dir, name="p")
    with pytest.raises(ServiceFailed) as started:
        await client.start_service("p:loop")
    assert "/nonexistent/hive-test-server" in str(started.value)
    with pytest.raises(ServiceFailed) as restarted:
        await client.restart_service("p:loop")
    assert restarted.value.outcomes[0].result == "failed"
    assert "/nonexistent/hive-test-server" in (restarted.value.outcomes[0].reason or "")
    result = run_cli("service", "restart", "p:loop")
    assert result.returncode != 0
    assert "p:loop not restarted" in result.stderr and "/nonexistent/hive-test-server" in result.stderr
    assert "restarted" not in result.stdout


async def test_start_of_an_exited_service_reports_success(
    daemon: DaemonProcess, client: DaemonClient, events: Events, project_dir: Path
) -> None:
    marker = project_dir / "ran"
    write_project(project_dir, f"""
        version: "1"
        services:
          once:
            runner: {{type: script, script: {{run: "trap 'exit 0' TERM; echo ran >> {marker}; while true; do sleep 0.05; done"}}}}
    """)
    await client.add_source(project_dir, name="p")
    await client.start_service("p:once")
    pid = (await client.get_service_status("p:once")).pid
    assert pid is not None
    # Its TERM trap is set once it wrote the marker (else TERM would kill it: crashed).
    wait_for(lambda: marker.exists() and "ran" in marker.read_text(), what="the first run's trap")
    os.kill(pid, signal.SIGTERM)  # it ends on its own, with code 0: exited
    await events.expect("service_state_changed", "p:once", where=lambda e: e.state == "exited")
    result = run_cli("service", "start", "p:once")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: marker.read_text().count("ran") == 2, what="the second run")
    assert (await client.get_service_status("p:once")).state == "running"
