"""run_hooks and processes: timeouts, leftovers, parallel groups, cancellation.

Each check that a process is gone waits with a deadline: SIGKILL is delivered at once, but the
process table may show the victim for a moment longer."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import anyio
import pytest

from hive.daemon.hooks import KILL_GRACE, HookOutcome, run_hooks
from tests.hooks.helpers import Sink, all_gone, base_env, hook_steps, pid_written, read_pid
from tests.support import wait_until

pytestmark = pytest.mark.anyio


async def test_timeout_kills_the_step_and_its_children(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"run": "echo $$ > shell.pid; sleep 300 & echo $! > child.pid; wait; touch finished",
         "timeout": "300ms"},
        {"run": "touch after"},
    ])
    sink = Sink()
    started = time.monotonic()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    elapsed = time.monotonic() - started
    assert not outcome.ok
    assert outcome.message == (
        "pre-up hook failed: step 1 (`echo $$ > shell.pid; sleep 300 & echo $! > child.pid; "
        "wait; touch finished`): Hook timed out after 300ms"
    )
    assert "pre-up hook: step 1 timed out after 300ms and was stopped" in sink.hive()
    pids = [read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid")]
    await wait_until(lambda: all_gone(pids), timeout=5, what="the step's processes to exit")
    assert not (tmp_path / "finished").exists()
    assert not (tmp_path / "after").exists()
    assert elapsed < 0.3 + KILL_GRACE  # SIGTERM was enough: no wait for the SIGKILL


async def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    # Both the shell and its child ignore SIGTERM (an ignored signal survives exec).
    steps = hook_steps(tmp_path, "post-up", [
        {"run": "trap '' TERM; echo $$ > shell.pid; sleep 300 & echo $! > child.pid; wait",
         "timeout": "200ms"},
    ])
    started = time.monotonic()
    outcome = await run_hooks("post-up", steps, env=base_env(), output=Sink())
    elapsed = time.monotonic() - started
    assert outcome.message.endswith("Hook timed out after 200ms")
    pids = [read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid")]
    await wait_until(lambda: all_gone(pids), timeout=5, what="the step's processes to exit")
    assert elapsed >= 0.2 + KILL_GRACE * 0.9


async def test_leftover_background_processes_are_stopped(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [{"run": "sleep 300 & echo $! > bg.pid; echo started"}])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert outcome.ok, outcome.message
    assert sink.stream("stdout") == ["started"]
    pid = read_pid(tmp_path / "bg.pid")
    await wait_until(lambda: all_gone([pid]), timeout=5, what="the background sleep to exit")


async def test_an_escaped_process_holding_the_pipe_does_not_hang_the_hook(tmp_path: Path) -> None:
    # setsid leaves the step's process group: it is out of reach, but it must not block us.
    steps = hook_steps(tmp_path, "pre-up", [{"run": "setsid sleep 300 & echo $! > esc.pid"}])
    try:
        with anyio.fail_after(10):
            outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink())
        assert outcome.ok, outcome.message
    finally:
        if pid_written(tmp_path / "esc.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(read_pid(tmp_path / "esc.pid"), signal.SIGKILL)


async def test_parallel_children_start_together(tmp_path: Path) -> None:
    # Each child waits for the other's marker: only concurrent children can finish.
    steps = hook_steps(tmp_path, "pre-up", [
        {"parallel": [
            {"run": "touch a; while [ ! -e b ]; do sleep 0.01; done; touch a.done"},
            {"run": "touch b; while [ ! -e a ]; do sleep 0.01; done; touch b.done"},
        ], "timeout": "20s"},
        {"run": "touch after"},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert outcome.ok, outcome.message
    assert {p.name for p in tmp_path.iterdir()} >= {"a.done", "b.done", "after"}
    assert sink.hive()[0] == "pre-up hook: running step 1: 2 steps in parallel"


async def test_parallel_abort_cancels_the_siblings(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"parallel": [
            {"run": "echo $$ > slow.pid; sleep 300 & echo $! > sleep.pid; wait; touch slow.done"},
            {"run": "while [ ! -s sleep.pid ]; do sleep 0.01; done; echo broken; exit 4"},
            {"run": "echo $$ > third.pid; sleep 300; touch third.done"},
        ]},
        {"run": "touch after"},
    ])
    sink = Sink()
    with anyio.fail_after(30):
        outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert not outcome.ok
    assert outcome.message == (
        "pre-up hook failed: step 1.2 (`while [ ! -s sleep.pid ]; do sleep 0.01; done; echo broken; "
        "exit 4`) exited with code 4: broken"
    )
    pids = [read_pid(tmp_path / name) for name in ("slow.pid", "sleep.pid")]
    if pid_written(tmp_path / "third.pid"):
        pids.append(read_pid(tmp_path / "third.pid"))
    await wait_until(lambda: all_gone(pids), timeout=5, what="the cancelled siblings to exit")
    for marker in ("slow.done", "third.done", "after"):
        assert not (tmp_path / marker).exists(), marker
    assert any("stopping the other steps of step 1" in line for line in sink.hive())


async def test_parallel_warn_runs_every_child(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"parallel": [
            {"run": "echo first failure; exit 1"},
            {"run": "while [ ! -e c ]; do sleep 0.01; done; touch b"},
            {"run": "touch c; exit 2"},
        ], "on_failure": "warn"},
        {"run": "touch after"},
    ])
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=Sink())
    assert outcome.ok, outcome.message
    assert sorted(outcome.warnings) == [
        "pre-up hook: step 1.1 (`echo first failure; exit 1`) exited with code 1: first failure",
        "pre-up hook: step 1.3 (`touch c; exit 2`) exited with code 2",
    ]
    for marker in ("b", "c", "after"):
        assert (tmp_path / marker).exists(), marker


async def test_parallel_group_timeout_covers_the_group(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-up", [
        {"parallel": [
            {"run": "echo $$ > one.pid; exec sleep 300"},
            {"run": "echo $$ > two.pid; exec sleep 300"},
        ], "timeout": "300ms"},
    ])
    sink = Sink()
    outcome = await run_hooks("pre-up", steps, env=base_env(), output=sink)
    assert outcome.message == "pre-up hook failed: step 1 (parallel group): Hook timed out after 300ms"
    assert "pre-up hook: step 1 timed out after 300ms and was stopped" in sink.hive()
    pids = [read_pid(tmp_path / n) for n in ("one.pid", "two.pid") if pid_written(tmp_path / n)]
    await wait_until(lambda: all_gone(pids), timeout=5, what="the group's processes to exit")


async def test_parallel_group_timeout_with_warn_is_a_warning(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "pre-down", [
        {"parallel": [{"run": "exec sleep 300"}], "timeout": "200ms"},
        {"run": "touch after"},
    ])
    outcome = await run_hooks("pre-down", steps, env=base_env(), output=Sink())
    assert outcome.ok
    assert outcome.warnings == [
        "pre-down hook: step 1 (parallel group): Hook timed out after 200ms"
    ]
    assert (tmp_path / "after").exists()


async def _cancel_while_running(tmp_path: Path, command: str) -> list[int]:
    """Start run_hooks, cancel it once the step has written child.pid; the step's pids."""
    steps = hook_steps(tmp_path, "pre-up", [{"run": command}])
    outcomes: list[HookOutcome] = []

    async def hooks() -> None:
        outcomes.append(await run_hooks("pre-up", steps, env=base_env(), output=Sink()))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hooks)
            await wait_until(lambda: pid_written(tmp_path / "child.pid"), what="the step to start")
            tg.cancel_scope.cancel()
    assert outcomes == []  # cancellation propagated: no outcome
    return [read_pid(tmp_path / "shell.pid"), read_pid(tmp_path / "child.pid")]


async def test_cancellation_kills_the_running_step(tmp_path: Path) -> None:
    pids = await _cancel_while_running(
        tmp_path, "echo $$ > shell.pid; sleep 300 & echo $! > child.pid; wait; touch finished"
    )
    await wait_until(lambda: all_gone(pids), timeout=5, what="the step's processes to exit")
    assert not (tmp_path / "finished").exists()


async def test_cancellation_kills_a_step_that_ignores_sigterm(tmp_path: Path) -> None:
    pids = await _cancel_while_running(
        tmp_path, "trap '' TERM; echo $$ > shell.pid; sleep 300 & echo $! > child.pid; wait"
    )
    await wait_until(lambda: all_gone(pids), timeout=5, what="the step's processes to exit")


async def test_cancellation_during_a_parallel_group(tmp_path: Path) -> None:
    steps = hook_steps(tmp_path, "post-up", [
        {"parallel": [
            {"run": "echo $$ > one.pid; exec sleep 300"},
            {"run": "echo $$ > two.pid; exec sleep 300"},
        ]},
    ])

    async def hooks() -> None:
        await run_hooks("post-up", steps, env=base_env(), output=Sink())

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hooks)
            await wait_until(
                lambda: pid_written(tmp_path / "one.pid") and pid_written(tmp_path / "two.pid"),
                what="both children to start",
            )
            tg.cancel_scope.cancel()
    pids = [read_pid(tmp_path / "one.pid"), read_pid(tmp_path / "two.pid")]
    await wait_until(lambda: all_gone(pids), timeout=5, what="the children to exit")
