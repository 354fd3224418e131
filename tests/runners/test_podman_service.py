"""The podman runner on podman's API service (``podman system service``): started by
the runner when nothing answers at podman's default socket, started again when it dies,
and its death is an engine-away period (the containers go on; so does their supervision).

These tests end the service at the default socket (it is the runner's to start again).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator

import anyio
import psutil
import pytest

from runners._podman_service import answers, default_podman_socket
from runners.base import ExitStatus, RunSpec
from runners.podman import PodmanRunner
from tests.engines import IMAGE, require_engine
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import output_contains, read, until

pytestmark = pytest.mark.anyio

TICKING = "i=0; trap 'exit 0' TERM; while :; do i=$((i+1)); echo tick $i; sleep 0.05 & wait $!; done"


@pytest.fixture
def source() -> Iterator[str]:
    require_engine("podman")
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    listed = subprocess.run(["podman", "ps", "-aq", "--filter", f"label=hive.source={name}"],
                            capture_output=True, text=True, check=False)
    if listed.stdout.split():
        subprocess.run(["podman", "rm", "-f", "-v", *listed.stdout.split()], capture_output=True, check=False)


def ticking(spec: SpecFactory, source: str) -> RunSpec:
    config = {"image": IMAGE, "network_mode": "host", "command": ["sh", "-c", TICKING]}
    return spec("", fqn=f"{source}:svc", config=config)


def services() -> list[psutil.Process]:
    """The ``podman system service`` processes serving the default socket."""
    wanted = f"unix://{default_podman_socket()}"
    found = []
    for process in psutil.process_iter():
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if cmdline[1:3] == ["system", "service"] and wanted in cmdline:
            found.append(process)
    return found


def end_services() -> set[int]:
    """Kill the services of the default socket; their pids. (An engine thread of this
    process that still watches a container may start another at once: that is the
    runner's doing too.)"""
    ended = set()
    for process in services():
        process.kill()
        process.wait(30)
        ended.add(process.pid)
    return ended


async def test_the_service_is_started_when_nothing_answers(spec: SpecFactory, source: str) -> None:
    ended = end_services()
    made = ticking(spec, source)
    handle = await PodmanRunner().start(made)
    await output_contains(made.stdout_path, "tick 3\n", timeout=30)
    [started] = services()  # one, whatever the number of containers and connections
    assert started.pid not in ended
    # It outlives whoever started it, so it does not keep that one's directory (conmon can
    # start no container once that directory is gone).
    assert started.cwd() == "/"
    assert answers(default_podman_socket())
    with anyio.fail_after(30):
        assert await handle.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)


async def test_a_killed_service_is_started_again_and_supervision_goes_on(spec: SpecFactory, source: str) -> None:
    made = ticking(spec, source)
    handle = await PodmanRunner().start(made)
    notices: list[str] = []
    handle.notice = notices.append
    await output_contains(made.stdout_path, "tick 3\n", timeout=30)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(handle.wait)  # as the daemon does: wait() is what tells it
        [first] = services()
        first.kill()
        await until(lambda: [process.pid for process in services()] not in ([], [first.pid]), timeout=30,
                    what="podman's API service started again")
        # Its output is followed again: lines printed after the return reach the file.
        seen = read(made.stdout_path).count("tick")
        await until(lambda: read(made.stdout_path).count("tick") >= seen + 10, timeout=30,
                    what="output copied after the service came back")
        with anyio.fail_after(30):
            assert await handle.stop(signal.SIGTERM, 10) == ExitStatus(exit_code=0)
    numbers = [int(line.split()[1]) for line in read(made.stdout_path).splitlines()]
    once = sorted(set(numbers))
    assert once == list(range(1, len(once) + 1))  # nothing lost while the service was away
    assert os.path.exists(default_podman_socket())
