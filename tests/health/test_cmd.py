"""cmd checks: real commands through a real shell."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import anyio
import pytest

from tests.health.helpers import (
    DEADLINE,
    cmd_check,
    kill_quietly,
    live_members_of_group,
    make_monitor,
    pid_reports,
    running,
    wait_gone,
)

pytestmark = pytest.mark.anyio

# Started by a check: starts a child in the same process group, reports
# "<its pid> <its process group> <child pid>" to the test, then hangs.
REPORTER = r"""
import os, socket, subprocess, sys, threading
child = subprocess.Popen(["sleep", "300"])
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    s.sendall(f"{os.getpid()} {os.getpgid(0)} {child.pid}\n".encode())
threading.Event().wait()
"""


async def test_exit_zero_passes(tmp_path: Path) -> None:
    monitor, recorder = make_monitor([cmd_check("echo starting; echo ready", working_dir=tmp_path)])
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is True
    result = change.results[0]
    assert (result.kind, result.target, result.message) == (
        "cmd", "cmd: echo starting; echo ready", "exit status 0: ready"
    )


async def test_a_command_that_starts_with_a_shebang_runs_as_that_interpreters_script(tmp_path: Path) -> None:
    # Python syntax: through `sh -c` this fails ("import: command not found").
    passing = f"#!{sys.executable}\nimport sys\nprint('python ok', file=sys.stderr)\nsys.exit(0)\n"
    failing = f"#!{sys.executable}\nimport sys\nprint('python says no')\nsys.exit(4)\n"
    monitor, recorder = make_monitor([cmd_check(passing, working_dir=tmp_path)])
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is True, change.message
    assert change.results[0].message == "exit status 0: python ok"
    monitor, recorder = make_monitor([cmd_check(failing, working_dir=tmp_path)])
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is False
    assert change.results[0].message == "exit status 4: python says no"
    assert not list(tmp_path.glob("hive-step-*"))  # (its script file lives elsewhere, and goes)


async def test_failure_message_carries_the_last_line_of_output(tmp_path: Path) -> None:
    command = 'echo checking; echo "db not ready" >&2; echo; exit 3'
    monitor, recorder = make_monitor([cmd_check(command, working_dir=tmp_path, retries=2)])
    async with running(monitor):
        change, seen = await recorder.next_change()
    assert change.healthy is False
    assert [r.consecutive_failures for r in seen] == [1, 2]
    assert change.results[0].message == "exit status 3: db not ready"
    assert change.message == f"cmd: {command}: exit status 3: db not ready (2 consecutive failures)"


async def test_silent_failure_and_recovery(tmp_path: Path) -> None:
    flag = tmp_path / "ready"
    monitor, recorder = make_monitor([cmd_check("test -f ready", working_dir=tmp_path, retries=1)])
    async with running(monitor):
        change, _ = await recorder.next_change()
        assert (change.healthy, change.results[0].message) == (False, "exit status 1")
        flag.touch()
        change, _ = await recorder.next_change()
        assert (change.healthy, change.results[0].message) == (True, "exit status 0")


async def test_a_check_not_passed_yet_is_tried_again_soon_not_an_interval_later(tmp_path: Path) -> None:
    # An interval far past the recorder's deadline: only the early retries can see it ready.
    flag = tmp_path / "ready"
    monitor, recorder = make_monitor([cmd_check("test -f ready", working_dir=tmp_path, interval=3600)])
    async with running(monitor):
        first = await recorder.wait_results(lambda r: not r.healthy)
        assert first[0].consecutive_failures == 1
        flag.touch()
        change, seen = await recorder.next_change()
    assert change.healthy is True
    # The early retries that failed were not counted: retries keeps its meaning in time.
    assert [r.consecutive_failures for r in seen] == [0]


async def test_runs_in_working_dir_with_env(tmp_path: Path) -> None:
    (tmp_path / "marker").touch()
    env = {**os.environ, "HEALTH_TOKEN": "s3cret"}
    command = 'test -f marker && test "$HEALTH_TOKEN" = s3cret'
    monitor, recorder = make_monitor([cmd_check(command, working_dir=tmp_path)], env=env)
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is True

    # The env is the complete environment of the command: without the variable it fails.
    env.pop("HEALTH_TOKEN")
    monitor, recorder = make_monitor([cmd_check(command, working_dir=tmp_path, retries=1)], env=env)
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is False


async def test_missing_working_dir_fails_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    monitor, recorder = make_monitor([cmd_check("true", working_dir=missing, retries=1)])
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is False
    assert change.results[0].message == f"working directory {missing} does not exist"


TIMED_OUT = "timed out after 500ms (last output: waiting)"


@pytest.mark.parametrize(("command", "timeout", "message"), [
    # The shell starts a background grandchild, records both pids and waits for it.
    ("sleep 300 & echo $$ $! > pids; echo waiting; wait", 0.5, TIMED_OUT),
    # Exits at once, leaving a grandchild that does not hold the output pipe.
    ("sleep 300 >/dev/null 2>&1 & echo $$ $! > pids; exit 0", DEADLINE, None),
], ids=["timed-out", "finished"])
async def test_the_process_group_of_a_check_is_killed_when_it_ends(tmp_path: Path, command: str, timeout: float,
                                                                    message: str | None) -> None:
    monitor, recorder = make_monitor(
        [cmd_check(command, working_dir=tmp_path, timeout=timeout, retries=1, interval=60)]
    )
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is (message is None)
    if message is not None:
        assert change.results[0].message == message
    shell_pid, sleep_pid = (int(pid) for pid in (tmp_path / "pids").read_text().split())
    try:
        await wait_gone(shell_pid)
        await wait_gone(sleep_pid)
        assert live_members_of_group(shell_pid) == []
    except BaseException:
        kill_quietly(sleep_pid)  # do not leave it behind when the test fails
        raise


async def test_cancelling_the_monitor_kills_a_running_check(tmp_path: Path) -> None:
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    async with pid_reports() as (port, reports):
        command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {port}"
        monitor, recorder = make_monitor(
            [cmd_check(command, working_dir=tmp_path, timeout=DEADLINE * 4, interval=60)]
        )
        async with running(monitor):
            with anyio.fail_after(DEADLINE):
                pid, pgid, child_pid = await reports.receive()
        # The monitor is cancelled (as when the service stops) while the check still runs.
    assert recorder.results == []
    try:
        assert pgid != os.getpgid(0)  # the check ran in a session of its own
        await wait_gone(pid)
        await wait_gone(child_pid)
        assert live_members_of_group(pgid) == []
    except BaseException:
        kill_quietly(pid)  # do not leave them behind when the test fails
        kill_quietly(child_pid)
        raise


# Backgrounds a process that leaves the check's group and session (setsid) and, once out,
# writes its pid to ./escaped; the check goes on once that file is there.
ESCAPER = ("setsid sh -c 'echo $$ > escaped.new; mv escaped.new escaped; exec sleep 300' >/dev/null 2>&1 & "
           "while [ ! -f escaped ]; do sleep 0.01; done; ")


async def _escaped_pid(directory: Path) -> int:
    return int((directory / "escaped").read_text())


@pytest.mark.parametrize(("then", "timeout", "message"), [
    ("exit 0", DEADLINE, None),
    ("echo waiting; sleep 300", 0.5, TIMED_OUT),
], ids=["finished", "timed-out"])
async def test_a_process_that_left_the_group_of_a_check_is_swept(tmp_path: Path, then: str, timeout: float,
                                                                 message: str | None) -> None:
    monitor, recorder = make_monitor(
        [cmd_check(ESCAPER + then, working_dir=tmp_path, timeout=timeout, retries=1, interval=60)]
    )
    async with running(monitor):
        change, _ = await recorder.next_change()
    assert change.healthy is (message is None)
    if message is not None:
        assert change.results[0].message == message
    escaped = await _escaped_pid(tmp_path)
    try:
        await wait_gone(escaped)
    except BaseException:
        kill_quietly(escaped)  # do not leave it behind when the test fails
        raise


async def test_a_process_that_left_the_group_of_a_cancelled_check_is_swept(tmp_path: Path) -> None:
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    async with pid_reports() as (port, reports):
        command = f"setsid {shlex.quote(sys.executable)} {shlex.quote(str(script))} {port} >/dev/null 2>&1 & sleep 300"
        monitor, _ = make_monitor(
            [cmd_check(command, working_dir=tmp_path, timeout=DEADLINE * 4, interval=60)]
        )
        async with running(monitor):
            with anyio.fail_after(DEADLINE):
                pid, pgid, child_pid = await reports.receive()
        # The monitor is cancelled (as when the service stops) while the check still runs.
    try:
        assert pgid == pid  # it left the check's group (and session)
        await wait_gone(pid)
        await wait_gone(child_pid)  # what it started carries the mark too
    except BaseException:
        kill_quietly(pid)  # do not leave them behind when the test fails
        kill_quietly(child_pid)
        raise
