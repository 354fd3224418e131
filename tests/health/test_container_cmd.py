"""cmd checks of a container service run inside it through the engine's exec endpoints:
a real container on docker and on podman, no engine CLI process.

Most tests run a real HealthMonitor in this process, on a container a runner started (the
test's process is then the daemon); one runs the whole daemon."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import psutil
import pytest

from hive_client import DaemonClient, ServiceHealthChanged
from runners._container_handle import ContainerHandle
from runners._container_runner import ContainerRunner
from runners.base import RunSpec
from runners.docker import DockerRunner
from runners.podman import PodmanRunner
from tests.engines import IMAGE, require_engine
from tests.health.helpers import cmd_check, make_monitor, running
from tests.runners.helpers import children_seen, make_spec, tag_of
from tests.support import DaemonProcess, write_project

pytestmark = pytest.mark.anyio

RUNNERS: dict[str, type[ContainerRunner]] = {"docker": DockerRunner, "podman": PodmanRunner}
# The shell as PID 1 ignores SIGTERM unless it traps it; this one exits 0 on it.
TRAPPING = "trap 'exit 0' TERM; sleep 1000 & wait"


def flipping(variable: str) -> str:
    """A check whose runs alternate: a pass (saying ``variable`` on stdout), then a failure
    (stderr, code 3), and so on. With retries 1, every result is a verdict change."""
    return ('if [ -f /tmp/up ]; then rm /tmp/up; echo "going down" >&2; exit 3; '
            f'else touch /tmp/up; echo "up with ${variable}"; fi')


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_engine(name)
    return name


@pytest.fixture
async def container(engine: str, home: Path) -> AsyncIterator[tuple[ContainerHandle, RunSpec]]:
    """A running busybox container of this test alone, removed at its end."""
    source = f"t{uuid.uuid4().hex[:10]}"
    spec = make_spec(home, "", fqn=f"{source}:svc",
                     config={"image": IMAGE, "network_mode": "host", "command": ["sh", "-c", TRAPPING]})
    handle = await RUNNERS[engine]().start(spec)
    assert isinstance(handle, ContainerHandle)
    try:
        yield handle, spec
    finally:
        with anyio.fail_after(60):
            await handle.stop(signal.SIGKILL, 0)
            await anyio.run_process([engine, "rm", "-f", handle.container_id], check=False)


def engine_clis(seen: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The docker or podman CLI processes among ``seen`` (not podman's API service, which
    a runner starts when none answers: the engine, not a check's)."""
    return [argv for argv in seen if argv and Path(argv[0]).name in {"docker", "podman"}
            and argv[1:3] != ("system", "service")]


async def test_checks_run_inside_with_their_output_and_no_cli_process(
    container: tuple[ContainerHandle, RunSpec],
) -> None:
    handle, spec = container
    monitor, recorder = make_monitor([cmd_check(flipping("HIVE_TEST_TAG"), retries=1)], env={}, exec_check=handle.check_exec())
    changes = []
    with children_seen(os.getpid()) as seen:
        async with running(monitor):
            for _ in range(6):
                change, _ = await recorder.next_change()
                changes.append((change.healthy, change.results[0].message))
    # The check sees the container's environment (the service's variables), and its
    # output from stdout and stderr alike.
    up, down = (True, f"exit status 0: up with {tag_of(spec)}"), (False, "exit status 3: going down")
    assert changes == [up, down] * 3
    assert engine_clis(seen) == []


async def test_the_daemon_starts_no_engine_cli_for_checks(engine: str, daemon: DaemonProcess, home: Path) -> None:
    """End to end: a container service whose check flips at every run (each result is a
    verdict change, an event); six of them come, and no docker or podman process was a
    descendant of the daemon meanwhile."""
    source = f"t{uuid.uuid4().hex[:10]}"
    runner = {"type": engine, engine: {"image": IMAGE, "command": ["sh", "-c", TRAPPING], "network_mode": "host"}}
    check = {"type": "cmd", "cmd": {"command": flipping("HIVE_SERVICE_FQN"), "interval": "100ms", "retries": 1}}
    write_project(home / "proj", f"""
        version: "1"
        services:
          checked:
            runner: {json.dumps(runner)}
            rollout: {{type: recreate, recreate: {{ports: {{}}}}}}
            healthcheck: {json.dumps(check)}
        """)
    verdicts = []
    try:
        async with DaemonClient(daemon.socket, timeout=60) as client, client.subscribe_events() as stream:
            with children_seen(daemon.pid) as seen:
                await client.add_source(home / "proj", name=source, start=True)
                with anyio.fail_after(120):
                    async for event in stream:
                        if isinstance(event, ServiceHealthChanged) and event.fqn == f"{source}:checked":
                            verdicts.append(event.healthy)
                            if len(verdicts) == 6:
                                break
                status = await client.get_service_status(f"{source}:checked")
            await client.stop_source(source)
    finally:
        await _remove_containers(engine, source)
    assert verdicts == [True, False] * 3
    # The last verdict's run, or the next one's; the command saw the service's variables.
    assert [check.message for check in status.health_checks] in (
        [f"exit status 0: up with {source}:checked"], ["exit status 3: going down"])
    assert engine_clis(seen) == []


async def test_a_timed_out_check_fails_and_its_processes_are_killed(
    container: tuple[ContainerHandle, RunSpec],
) -> None:
    handle, _ = container
    seconds = f"{1000 + uuid.uuid4().int % 1000}.5"  # this test's own `sleep`
    # (One stream: an engine keeps no order between stdout and stderr.)
    command = f"echo starting; sleep {seconds} & echo waiting; wait"
    monitor, recorder = make_monitor([cmd_check(command, timeout=0.5, retries=1)], env={},
                                     exec_check=handle.check_exec())
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert (change.healthy, change.results[0].message) == (False, "timed out after 500ms (last output: waiting)")
    # The shell and its `sleep` were killed in the container (the exec's end was read
    # before the result came): none is left running.
    assert _running_sleeps(seconds) == []


async def test_the_message_quotes_the_last_line_cut_as_a_host_check_does(
    container: tuple[ContainerHandle, RunSpec],
) -> None:
    handle, _ = container
    run = await handle.exec_check("echo first; printf '%0300d\\n' 7; echo; exit 1", 30)
    assert (run.exit_code, run.output) == (1, "0" * 299 + "7")
    monitor, recorder = make_monitor([cmd_check("printf '%0300d' 7; exit 1", retries=1)], env={},
                                     exec_check=handle.check_exec())
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.results[0].message == "exit status 1: " + "0" * 199 + "…"


async def test_a_stopped_container_fails_the_check_clearly(container: tuple[ContainerHandle, RunSpec]) -> None:
    handle, _ = container
    with anyio.fail_after(60):
        await handle.stop(signal.SIGKILL, 0)
    monitor, recorder = make_monitor([cmd_check("true", retries=1)], env={}, exec_check=handle.check_exec())
    async with running(monitor):
        change, _ = await recorder.next_change()
    message = change.results[0].message
    assert change.healthy is False
    assert message.startswith("cannot run the check in the container: "), message
    assert "\n" not in message


async def test_an_unreachable_engine_fails_each_check_clearly(tmp_path: Path) -> None:
    """No engine at the socket: every check fails saying so, and the checks go on."""
    runner = DockerRunner()
    socket = tmp_path / "no-engine.sock"
    runner.configure({"socket": str(socket)})
    handle = ContainerHandle(runner=runner, spec=make_spec(tmp_path, ""), container_id="0" * 64,
                             name="hive-none", config_hash="", run_signal=int(signal.SIGTERM))
    monitor, recorder = make_monitor([cmd_check("true", retries=3)], env={}, exec_check=handle.check_exec())
    async with running(monitor):
        results = await recorder.wait_results(lambda result: result.healthy is False, count=2)
        change, _ = await recorder.next_change()
    assert change.healthy is False
    for result in [*results, *change.results]:
        assert result.message.startswith(
            f"cannot run the check in the container: cannot reach the Docker engine at {socket}: "), result.message


async def _remove_containers(engine: str, source: str) -> None:
    listed = await anyio.run_process([engine, "ps", "-aq", "--filter", f"label=hive.source={source}"], check=False)
    if listed.stdout.split():
        await anyio.run_process([engine, "rm", "-f", *listed.stdout.decode().split()], check=False)


def _running_sleeps(seconds: str) -> list[int]:
    """Live (not zombie) `sleep SECONDS` processes on the host (a container's are seen)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == ["sleep", seconds] and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found
