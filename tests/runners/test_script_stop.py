"""Stopping: the stop signal to the whole tree, the grace period, SIGKILL; nothing the
service started outlives it, including what left its process group or session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from runners import _process as proc
from runners.base import ExitStatus, RunnerError
from runners.script import ScriptHandle, ScriptRunner
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import alive, output_contains, read, tag_of, tagged, until

pytestmark = pytest.mark.anyio

# A classic daemon: fork, setsid, fork again, the middle process exits, so the grandchild
# is an orphan in a session of its own, no descendant of the service any more.
DAEMONIZE = (
    "import os, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        time.sleep(1000)  # wait-ok: the orphan idles\n"
    "    os._exit(0)\n"
    "os.wait()\n"
    "print('daemonized', flush=True)\n"
    "time.sleep(1000)  # wait-ok: the service idles\n"
)


async def test_sigterm_honoured(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 1000"))
    started = time.monotonic()
    with anyio.fail_after(10):
        status = await handle.stop(signal.SIGTERM, 30)
    assert status == ExitStatus(signal=signal.SIGTERM)
    assert time.monotonic() - started < 10  # did not sit out the 30 s grace
    assert not alive(handle.pid)
    assert await handle.wait() == status


async def test_sigterm_ignored_is_killed_after_the_grace(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    made = spec("trap '' TERM; echo ready; sleep 1000 & wait")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "ready")
    await until(lambda: len(tagged(tag_of(made))) == 2, what="shell and sleep")
    started = time.monotonic()
    with anyio.fail_after(20):
        status = await handle.stop(signal.SIGTERM, 0.5)
    elapsed = time.monotonic() - started
    assert status == ExitStatus(signal=signal.SIGKILL)
    assert elapsed >= 0.5
    assert tagged(tag_of(made)) == []


async def test_stop_signal_is_respected(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("trap 'echo got-INT; kill $!; exit 7' INT; trap 'echo got-TERM' TERM; "
                "echo ready; sleep 1000 & wait")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "ready")
    with anyio.fail_after(10):
        status = await handle.stop(signal.SIGINT, 30)
    assert status == ExitStatus(exit_code=7)
    content = read(made.stdout_path)
    assert "got-INT" in content
    assert "got-TERM" not in content
    assert tagged(tag_of(made)) == []


async def test_grandchildren_are_stopped(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sh -c 'sleep 1000 & sleep 1000 & wait'")
    handle = await runner.start(made)
    await until(lambda: len(tagged(tag_of(made))) == 3, what="sh and two sleeps")
    with anyio.fail_after(10):
        await handle.stop(signal.SIGTERM, 5)
    assert tagged(tag_of(made)) == []


@pytest.mark.parametrize("recorded", [False, True], ids=["fresh", "recorded"])
async def test_descendants_that_left_the_group_are_stopped(
    runner: ScriptRunner, spec: SpecFactory, recorded: bool
) -> None:
    # `setsid sleep` in a background job: a child of the shell in a new session;
    # `setsid -f sleep`: forked, and its parent exits at once (an orphan in a new session).
    made = spec("setsid sleep 1000 & setsid -f sleep 1000; sleep 1000 & echo ready; wait")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "ready")
    if recorded:
        # As the daemon does: once its record is taken, scans take the main process's
        # line from what the runner knows of its own children, not from /proc.
        handle.record()
        table = proc.process_table(time.monotonic())
        line, read = table.procs[handle.pid], proc.read_stat(handle.pid)
        assert read is not None
        assert (line.pid, line.ppid, line.pgid, line.sid, line.ticks) == (
            read.pid, read.ppid, read.pgid, read.sid, read.ticks)
        assert handle.pid in proc._own_leaders
    tag = tag_of(made)
    procs = await until(lambda: len(tagged(tag)) == 4 and tagged(tag), what="shell and three sleeps")
    sessions = {os.getsid(p.pid) for p in procs}
    assert len(sessions) == 3  # the service's, and two others
    with anyio.fail_after(10):
        await handle.stop(signal.SIGTERM, 5)
    assert tagged(tag) == []
    assert handle.pid not in proc._own_leaders  # forgotten before its pid went back


async def test_double_forked_daemon_is_stopped(runner: ScriptRunner, spec: SpecFactory) -> None:
    # `exec`: a script of several lines is not exec'd into by every shell (dash keeps itself).
    made = spec(f"exec {sys.executable} -c \"{DAEMONIZE}\"")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "daemonized")
    tag = tag_of(made)
    procs = tagged(tag)
    assert len(procs) == 2
    orphan = next(p for p in procs if p.pid != handle.pid)
    assert orphan.ppid() != handle.pid
    assert os.getsid(orphan.pid) != handle.pid
    with anyio.fail_after(10):
        await handle.stop(signal.SIGTERM, 5)
    assert tagged(tag) == []


async def test_children_ignoring_the_signal_are_killed(runner: ScriptRunner, spec: SpecFactory) -> None:
    # The main process exits on SIGTERM at once; its children ignore it, and one of them
    # is in another session: all are SIGKILLed when the grace period ends.
    made = spec("sh -c \"trap '' TERM; sleep 1000 & setsid sleep 1000 & echo ready; exec sleep 1000\"")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "ready")
    await until(lambda: len(tagged(tag_of(made))) == 3, what="three sleeps")
    with anyio.fail_after(20):
        await handle.stop(signal.SIGTERM, 0.5)
    assert tagged(tag_of(made)) == []


async def test_stop_after_exit_returns_the_status(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("exit 2"))
    with anyio.fail_after(10):
        await handle.wait()
        assert await handle.stop(signal.SIGTERM, 5) == ExitStatus(exit_code=2)


async def test_concurrent_stops_share_one(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 1000"))
    results: list[ExitStatus] = []

    async def stop() -> None:
        results.append(await handle.stop(signal.SIGTERM, 5))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(stop)
            group.start_soon(lambda: handle.wait())
    assert results == [ExitStatus(signal=signal.SIGTERM)] * 3


async def test_cancelled_stop_kills_at_once(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("trap '' TERM; echo ready; sleep 1000 & wait")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "ready")
    await until(lambda: len(tagged(tag_of(made))) == 2, what="shell and sleep")
    with anyio.move_on_after(0.2) as scope:  # the daemon gives up on a 100 s grace
        await handle.stop(signal.SIGTERM, 100)
    assert scope.cancelled_caught
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(signal=signal.SIGKILL)
    await until(lambda: tagged(tag_of(made)) == [], what="the sleep to die")


async def test_leftovers_of_a_main_that_exits_by_itself(runner: ScriptRunner, spec: SpecFactory) -> None:
    # The main process exits; what it started ignores SIGTERM. wait() returns at once, the
    # leftovers are counted, then stopped in the background (SIGKILL after the grace).
    made = spec("trap '' TERM; sleep 1000 & setsid -f sleep 1000; exit 5", stop_grace=3.0)
    tag = tag_of(made)
    handle = await runner.start(made)
    with anyio.fail_after(10):
        status = await handle.wait()
    assert status == ExitStatus(exit_code=5)
    assert handle.leftovers() == 2  # still there: wait() did not wait for them
    await until(lambda: handle.leftovers() == 0, timeout=15, what="the leftovers to be killed")
    await until(lambda: tagged(tag) == [], what="no tagged process")


async def test_a_main_that_left_nothing_behind_costs_no_sweep(runner: ScriptRunner, spec: SpecFactory) -> None:
    # A crash loop: the main process dies alone. When no process at all was created
    # after it, nothing can be left of it: no background sweep (no thread) follows.
    for _ in range(20):
        handle = await runner.start(spec("sleep 1000"))
        assert isinstance(handle, ScriptHandle)
        handle.ticks  # noqa: B018 - its start time, read while it runs
        alone = proc.none_created_since(handle.pid, handle.ticks)
        os.kill(handle.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            assert await handle.wait() == ExitStatus(signal=signal.SIGKILL)
        assert handle.leftovers() == 0
        if alone and proc.none_created_since(handle.pid, handle.ticks):
            assert handle._sweeper is None
            break
    else:
        pytest.fail("some process was always created between a start and its exit")


def test_none_created_since_sees_any_later_process() -> None:
    first = subprocess.Popen(["sleep", "100"])
    try:
        info = proc.read_stat(first.pid)
        assert info is not None
        subprocess.run(["true"], check=True)  # one more process, after it
        assert not proc.none_created_since(first.pid, info.ticks)
    finally:
        first.kill()
        first.wait()


async def test_leftovers_honouring_the_signal_go_quickly(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = spec("sleep 1000 & echo ready; exit 0", stop_grace=100.0)
    handle = await runner.start(made)
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=0)
    await until(lambda: tagged(tag_of(made)) == [], timeout=10, what="the sleep to be stopped")
    assert handle.leftovers() == 0
    # stop() after such an exit waits for that cleanup and returns the status.
    with anyio.fail_after(10):
        assert await handle.stop(signal.SIGTERM, 1) == ExitStatus(exit_code=0)


async def test_many_services_stop_together(runner: ScriptRunner, spec: SpecFactory) -> None:
    made = [spec("sh -c 'sleep 1000 & wait'") for _ in range(30)]
    handles = [await runner.start(m) for m in made]
    tags = [tag_of(m) for m in made]
    await until(lambda: all(len(tagged(t)) == 2 for t in tags), timeout=30, what="all services up")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for handle in handles:
                group.start_soon(handle.stop, signal.SIGTERM, 5)
    for t in tags:
        assert tagged(t) == []


async def test_a_stopped_process_is_woken_to_handle_the_signal(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 1000"))
    os.kill(handle.pid, signal.SIGSTOP)
    started = time.monotonic()
    with anyio.fail_after(10):
        status = await handle.stop(signal.SIGTERM, 30)
    assert status == ExitStatus(signal=signal.SIGTERM)  # not SIGKILL after the grace
    assert time.monotonic() - started < 10


async def test_invalid_stop_signal(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 1000"))
    with pytest.raises(RunnerError, match="invalid stop signal 999"):
        await handle.stop(999, 5)
    assert alive(handle.pid)
    with anyio.fail_after(10):
        assert await handle.stop(signal.SIGRTMIN + 2, 5) == ExitStatus(signal=signal.SIGRTMIN + 2)


@pytest.mark.parametrize(
    "on_term",
    ["sleep 1000 & exit 0", "setsid -f sleep 1000; exit 0", "sh -c 'sleep 1000 &'; exit 0"],
    ids=["in-group", "new-session", "orphan-in-group"],
)
async def test_processes_started_while_stopping_are_stopped(
    runner: ScriptRunner, spec: SpecFactory, on_term: str
) -> None:
    # The stop handler itself starts processes, after the runner took its first look.
    made = spec(f"trap \"{on_term}\" TERM; echo ready; sleep 1000 & wait", shell="sh")
    handle = await runner.start(made)
    await output_contains(made.stdout_path, "ready")
    await until(lambda: len(tagged(tag_of(made))) == 2, what="shell and sleep")
    with anyio.fail_after(20):
        assert await handle.stop(signal.SIGTERM, 5) == ExitStatus(exit_code=0)
    assert tagged(tag_of(made)) == []
