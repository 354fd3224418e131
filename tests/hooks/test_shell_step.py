"""run_step, the process plumbing of hooks, builds and cmd checks, on real processes.

Checks that a process is gone wait with a deadline (SIGKILL is delivered at once, but the
process table may show the victim for a moment longer); the shell scripts write their pids to
files, and the tests wait for those files rather than for time to pass."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from hive.daemon._shell_step import StepResult, run_shell_step, run_step
from hive.daemon.build import run_build
from hive.daemon.hooks import run_hooks
from runners.base import ExitStatus, describe_exit
from tests.health.helpers import live_members_of_group
from tests.hooks.helpers import (
    Sink,
    all_gone,
    base_env,
    build_spec,
    hook_steps,
    pid_written,
    read_pid,
)
from tests.support import wait_until

pytestmark = pytest.mark.anyio

# Writes its own pid and a grandchild's, then waits for the grandchild (300 s: only a kill
# ends it within the test's deadlines).
SHELL_AND_CHILD = "echo $$ > shell.pid; sleep 300 & echo $! > child.pid; wait; touch finished"


async def group_gone(shell_pid: int, *pids: int) -> None:
    """Wait until ``pids`` have exited and nothing is left in the group ``shell_pid`` led."""
    await wait_until(
        lambda: all_gone([shell_pid, *pids]) and not live_members_of_group(shell_pid),
        timeout=5, what="the step's process group to be empty",
    )


async def test_output_lines_arrive_in_order_on_their_streams(tmp_path: Path) -> None:
    command = 'for i in $(seq 1 300); do echo "out $i"; echo "err $i" >&2; done; printf last'
    sink = Sink()
    result = await run_shell_step(command, cwd=str(tmp_path), env=base_env(), output=sink,
                                  tail_lines=3)
    assert (result.exit_code, result.signal, result.timed_out, result.error) == (0, None, False, None)
    assert result.ok
    assert sink.stream("stdout") == [f"out {i}" for i in range(1, 301)] + ["last"]
    assert sink.stream("stderr") == [f"err {i}" for i in range(1, 301)]
    assert len(result.tail) == 3  # which lines: see the merged test (two pipes race)


async def test_merged_streams_keep_their_interleaving(tmp_path: Path) -> None:
    command = 'for i in $(seq 1 100); do echo "out $i"; echo "err $i" >&2; done; echo; echo " "'
    sink = Sink()
    result = await run_step(["sh", "-c", command], cwd=str(tmp_path), env=base_env(),
                            output=sink, merge_stderr=True, tail_lines=2)
    expected = [line for i in range(1, 101) for line in (f"out {i}", f"err {i}")]
    assert sink.lines == [("stdout", line) for line in [*expected, "", " "]]
    assert result.tail == ["out 100", "err 100"]  # blank lines are not kept


async def test_timeout_kills_the_grandchild_too(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await run_shell_step(SHELL_AND_CHILD, cwd=str(tmp_path), env=base_env(),
                                  timeout=0.3, kill_grace=5)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert (result.exit_code, result.signal, result.ok) == (None, None, False)
    await group_gone(read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid"))
    assert not (tmp_path / "finished").exists()
    assert elapsed < 0.3 + 5  # SIGTERM was enough: the grace was not waited out


async def test_timeout_escalates_to_sigkill_after_the_grace(tmp_path: Path) -> None:
    # The shell and its child ignore SIGTERM (an ignored signal survives exec).
    command = "trap '' TERM; " + SHELL_AND_CHILD
    started = time.monotonic()
    result = await run_shell_step(command, cwd=str(tmp_path), env=base_env(),
                                  timeout=0.2, kill_grace=0.5)
    elapsed = time.monotonic() - started
    assert result.timed_out
    await group_gone(read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid"))
    assert 0.2 + 0.5 * 0.9 <= elapsed < 0.2 + 0.5 + 5


async def test_no_grace_means_sigkill_at_once(tmp_path: Path) -> None:
    command = "trap '' TERM; " + SHELL_AND_CHILD
    started = time.monotonic()
    result = await run_shell_step(command, cwd=str(tmp_path), env=base_env(),
                                  timeout=0.2, kill_grace=0)
    assert result.timed_out
    assert time.monotonic() - started < 0.2 + 2
    await group_gone(read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid"))


async def _cancelled_once_started(tmp_path: Path, command: str, kill_grace: float,
                                  started_file: str = "child.pid") -> float:
    """Run ``command`` as a step, cancel it once ``started_file`` is written; how long the
    cancellation took to come back."""
    results: list[StepResult] = []

    async def step() -> None:
        results.append(await run_shell_step(command, cwd=str(tmp_path), env=base_env(),
                                            kill_grace=kill_grace))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(step)
            await wait_until(lambda: pid_written(tmp_path / started_file), what="the step to start")
            cancelled_at = time.monotonic()
            tg.cancel_scope.cancel()
    assert results == []  # the cancellation propagated
    return time.monotonic() - cancelled_at


async def test_cancel_leaves_nothing_running(tmp_path: Path) -> None:
    took = await _cancelled_once_started(tmp_path, SHELL_AND_CHILD, kill_grace=5)
    assert took < 5  # SIGTERM was enough: the grace was not waited out
    await group_gone(read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid"))
    assert not (tmp_path / "finished").exists()


async def test_cancel_of_a_step_that_ignores_sigterm_holds_its_deadline(tmp_path: Path) -> None:
    took = await _cancelled_once_started(tmp_path, "trap '' TERM; " + SHELL_AND_CHILD,
                                         kill_grace=0.5)
    assert 0.5 * 0.9 <= took < 0.5 + 5  # the grace, then SIGKILL: not cut short, not hung
    await group_gone(read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid"))


async def test_a_cancel_during_the_timeouts_stop_leaves_nothing_running(tmp_path: Path) -> None:
    # The shell notes the SIGTERM and goes on: only the SIGKILL after the grace ends it.
    command = ("trap 'touch termed' TERM; echo $$ > shell.pid; "
               "while :; do sleep 0.05; done")
    results: list[StepResult] = []

    async def step() -> None:
        results.append(await run_shell_step(command, cwd=str(tmp_path), env=base_env(),
                                            timeout=0.2, kill_grace=1.0))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(step)
            await wait_until(lambda: (tmp_path / "termed").exists(), what="the timeout's SIGTERM")
            tg.cancel_scope.cancel()
    assert results == []
    await group_gone(read_pid(tmp_path / "shell.pid"))


async def test_leftovers_are_stopped_when_the_step_exits(tmp_path: Path) -> None:
    # The grandchild does not hold the output pipes, so nothing else would end it.
    command = "sleep 300 >/dev/null 2>&1 & echo $! > child.pid; echo $$ > shell.pid; exit 0"
    result = await run_shell_step(command, cwd=str(tmp_path), env=base_env())
    assert result.ok
    await group_gone(read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid"))


async def test_a_process_outside_the_group_cannot_hold_the_step(tmp_path: Path) -> None:
    # setsid leaves the group (out of reach) but keeps the output pipe open.
    try:
        with anyio.fail_after(10):
            result = await run_shell_step("setsid sleep 300 & echo $! > esc.pid; echo done",
                                          cwd=str(tmp_path), env=base_env())
        assert result.ok
        assert result.tail == ["done"]
    finally:
        if pid_written(tmp_path / "esc.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(read_pid(tmp_path / "esc.pid"), signal.SIGKILL)


async def test_exit_by_signal_is_described(tmp_path: Path) -> None:
    result = await run_shell_step("echo going; kill -TERM $$", cwd=str(tmp_path), env=base_env())
    assert (result.exit_code, result.signal, result.timed_out, result.ok) == (
        None, signal.SIGTERM, False, False
    )
    assert describe_exit(result.exit_code, result.signal) == "killed by SIGTERM"

    # The same words wherever a step's end is told.
    hooks = await run_hooks("pre-up", hook_steps(tmp_path, "pre-up", [{"run": "kill -KILL $$"}]),
                            env=base_env(), output=Sink())
    assert hooks.message == "pre-up hook failed: step 1 (`kill -KILL $$`) killed by SIGKILL"
    build = await run_build(build_spec(tmp_path, command="echo compiling; kill -KILL $$"),
                            fqn="p:svc", env=base_env(), output=Sink())
    assert (build.exit_code, build.message) == (
        -signal.SIGKILL, "Build failed for service p:svc: killed by SIGKILL: compiling"
    )


async def test_problems_are_results_not_exceptions(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = await run_step(["true"], cwd=str(missing), env=base_env())
    assert result.error == f"working directory {missing} does not exist"
    (tmp_path / "file").touch()
    result = await run_step(["true"], cwd=str(tmp_path / "file"), env=base_env())
    assert result.error == f"working directory {tmp_path / 'file'} is not a directory"
    result = await run_step([str(tmp_path / "no-such-program")], cwd=None, env=base_env())
    assert result.error == f"cannot run {tmp_path / 'no-such-program'}: No such file or directory"
    result = await run_shell_step("true", cwd=str(tmp_path), env=base_env(), shell="no-such-sh")
    assert result.error == "shell no-such-sh not found on PATH"
    assert not result.ok


@pytest.mark.parametrize(
    ("exit_code", "signal_number", "code_phrase", "expected"),
    [
        (0, None, None, "exited with code 0"),
        (3, None, None, "exited with code 3"),
        (-9, None, None, "killed by SIGKILL"),  # subprocess's way of telling a signal
        (None, 15, None, "killed by SIGTERM"),
        (None, 99, None, "killed by signal 99"),
        (2, None, "exit code", "exit code 2"),
        (3, None, "exit status", "exit status 3"),
        (-15, None, "exit status", "killed by SIGTERM"),
        (None, None, None, "exited (status unknown)"),
    ],
)
def test_describe_exit(
    exit_code: int | None, signal_number: int | None, code_phrase: str | None, expected: str
) -> None:
    if code_phrase is None:
        assert describe_exit(exit_code, signal_number) == expected
    else:
        assert describe_exit(exit_code, signal_number, code_phrase=code_phrase) == expected


def test_exit_status_describes_with_the_same_words() -> None:
    assert ExitStatus(signal=9).describe() == "killed by SIGKILL"
    assert ExitStatus(exit_code=7).describe() == "exited with code 7"
    assert ExitStatus().describe() == "exited (status unknown: adopted process)"
    assert ExitStatus(exit_code=0, cause="the engine went away").describe() == "the engine went away"


async def test_a_step_that_starts_with_a_shebang_runs_under_its_interpreter(tmp_path: Path) -> None:
    """As a service's run: a ``#!`` step is its interpreter's script, not shell input."""
    import sys

    sink = Sink()
    script = f"#!{sys.executable}\nimport sys\nprint('python step', sys.argv[0])\n"
    result = await run_shell_step(script, cwd=str(tmp_path), env=base_env(), output=sink)
    assert result.ok, result
    [(stream, line)] = sink.lines
    assert stream == "stdout" and line.startswith("python step ")
    path = line.removeprefix("python step ")
    assert path.endswith(".script")
    assert not Path(path).exists()  # the script file is gone with the step


async def test_a_hook_with_a_missing_interpreter_says_so(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [{"run": "#!/no/such/ruby\nputs 1\n"}])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink())
    assert not outcome.ok
    assert "the #! interpreter /no/such/ruby of 'run' was not found" in outcome.message
