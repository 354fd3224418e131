"""The script runner starts real processes: exit statuses, direct exec or shell, the
environment and directory, the capture files, and the errors a user can act on."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import anyio
import psutil
import pytest

from runners.base import ExitStatus, RunnerError
from runners.script import RUN_ID_VAR, ScriptHandle, ScriptRunner
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import read, until

pytestmark = pytest.mark.anyio

SH = os.path.realpath("/bin/sh")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("true", ExitStatus(exit_code=0)),
        ("exit 3", ExitStatus(exit_code=3)),
        ("sh -c 'exit 42'", ExitStatus(exit_code=42)),
        ("kill -KILL $$", ExitStatus(signal=signal.SIGKILL)),
        ("kill -TERM $$; sleep 100", ExitStatus(signal=signal.SIGTERM)),
    ],
)
async def test_exit_status(runner: ScriptRunner, spec: SpecFactory, command: str, expected: ExitStatus) -> None:
    handle = await runner.start(spec(command))
    with anyio.fail_after(10):
        assert await handle.wait() == expected
    assert handle.leftovers() == 0


async def test_killed_from_outside(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 100"))
    os.kill(handle.pid, signal.SIGKILL)
    with anyio.fail_after(10):
        status = await handle.wait()
    assert status == ExitStatus(signal=signal.SIGKILL)
    assert not status.success
    assert status.describe() == "killed by SIGKILL"


async def test_plain_command_runs_as_the_process_itself(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 100"))
    assert isinstance(handle, ScriptHandle)
    assert handle.mode == "direct"
    process = psutil.Process(handle.pid)
    await until(lambda: process.cmdline() == ["sleep", "100"], what="sleep's argv")
    assert process.name() == "sleep"
    # Its own session and process group.
    assert os.getsid(handle.pid) == handle.pid == os.getpgid(handle.pid)
    await handle.stop(signal.SIGTERM, 5)


async def test_single_shell_command_is_replaced_by_the_program(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 100 > /dev/null", env={"PATH": os.environ["PATH"]}))
    assert handle.mode == "shell"
    # `exec` made the shell become sleep: no shell process stays around.
    await until(lambda: psutil.Process(handle.pid).name() == "sleep", what="the exec")
    assert psutil.Process(handle.pid).children() == []
    await handle.stop(signal.SIGTERM, 5)


async def test_quoted_arguments_run_without_a_shell(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    # The quotes only keep the script together: sh is run directly with it, no shell first.
    handle = await runner.start(spec("sh -c 'echo \"started $0\"; exec sleep 100'",
                                     env={"PATH": os.environ["PATH"]}))
    assert handle.mode == "direct"
    await until(lambda: read(home / "run" / "svc.out") == "started sh\n", what="the script's line")
    await until(lambda: psutil.Process(handle.pid).name() == "sleep", what="the script's exec")
    await handle.stop(signal.SIGTERM, 5)


async def test_pipeline_runs_under_a_shell(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 100 | cat", env={"PATH": os.environ["PATH"]}))
    assert handle.mode == "shell"
    main = psutil.Process(handle.pid)
    assert main.exe() == SH

    def pipeline() -> list[str]:
        return sorted(child.name() for child in main.children())

    await until(lambda: pipeline() == ["cat", "sleep"], what="sleep and cat under the shell")
    await handle.stop(signal.SIGTERM, 5)


async def test_multi_line_script_keeps_its_shell(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    handle = await runner.start(spec("echo one\necho two\nexit 4\n"))
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=4)
    assert read(home / "run" / "svc.out") == "one\ntwo\n"


async def test_environment_and_directory_are_applied(
    runner: ScriptRunner, spec: SpecFactory, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAEMON_ONLY_VARIABLE", "leak")
    workdir = home / "project"
    workdir.mkdir()
    env = {"PATH": os.environ["PATH"], "GREETING": "hello world", "EMPTY": ""}
    handle = await runner.start(spec("sleep 100", env=env, working_dir=str(workdir)))
    process = psutil.Process(handle.pid)
    # (right after the exec the kernel may not show the new environment for a moment)
    child_env = await until(lambda: process.environ(), what="the new environment")
    assert child_env["GREETING"] == "hello world"
    assert child_env["EMPTY"] == ""
    assert "DAEMON_ONLY_VARIABLE" not in child_env  # the spec's env is the complete env
    assert child_env[RUN_ID_VAR] == handle.run_id
    assert handle.run_id.startswith("proj:svc/")
    assert process.cwd() == str(workdir)
    await handle.stop(signal.SIGTERM, 5)


async def test_relative_program_resolves_against_the_working_directory(
    runner: ScriptRunner, spec: SpecFactory, home: Path
) -> None:
    work = home / "app"
    (work / "bin").mkdir(parents=True)
    tool = work / "bin" / "serve"
    tool.write_text("#!/bin/sh\necho \"served from $(pwd)\"\n")
    tool.chmod(0o755)
    handle = await runner.start(spec("./bin/serve", working_dir=str(work)))
    assert handle.mode == "direct"
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=0)
    assert read(home / "run" / "svc.out") == f"served from {work}\n"


async def test_script_without_shebang_runs_under_a_shell(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    script = home / "work" / "legacy"
    script.parent.mkdir(exist_ok=True)
    script.write_text("echo legacy script \"$1\"\nexit 6\n")
    script.chmod(0o755)
    handle = await runner.start(spec("./legacy arg"))
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=6)
    assert read(home / "run" / "svc.out") == "legacy script arg\n"


async def test_output_lands_in_the_capture_files(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    out, err = home / "logs" / "deep" / "a.out", home / "logs" / "deep" / "a.err"
    made = spec("echo to-stdout; echo to-stderr >&2", stdout_path=str(out), stderr_path=str(err))
    for _ in range(2):  # appended, never truncated
        handle = await runner.start(made)
        with anyio.fail_after(10):
            assert await handle.wait() == ExitStatus(exit_code=0)
    assert read(out) == "to-stdout\n" * 2
    assert read(err) == "to-stderr\n" * 2
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700


async def test_one_file_for_both_streams_keeps_their_order(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    both = str(home / "run" / "both.log")
    handle = await runner.start(spec("echo 1; echo 2 >&2; echo 3", stdout_path=both, stderr_path=both))
    with anyio.fail_after(10):
        await handle.wait()
    assert read(both) == "1\n2\n3\n"


async def test_no_pipe_or_fd_to_the_daemon(runner: ScriptRunner, spec: SpecFactory) -> None:
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)  # even an inheritable fd of the daemon stays behind
    try:
        handle = await runner.start(spec("sleep 100"))

        def fds() -> list[int]:
            return sorted(int(fd) for fd in os.listdir(f"/proc/{handle.pid}/fd"))

        # (sleep may hold a file of its own for a moment while it starts)
        await until(lambda: fds() == [0, 1, 2], what="only fds 0, 1, 2 in the service")
        assert os.readlink(f"/proc/{handle.pid}/fd/0") == "/dev/null"
        await handle.stop(signal.SIGTERM, 5)
    finally:
        os.close(leak_r)
        os.close(leak_w)


async def test_stdin_is_dev_null(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    handle = await runner.start(spec("cat; echo eof"))
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=0)
    assert read(home / "run" / "svc.out") == "eof\n"


async def test_several_waiters_and_a_cancelled_one(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("sleep 100"))
    results: list[ExitStatus] = []
    doomed = anyio.CancelScope()

    async def waiter() -> None:
        results.append(await handle.wait())

    async def cancelled_waiter() -> None:
        with doomed:
            await handle.wait()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(cancelled_waiter)  # first: it becomes the one watching the pidfd
            await anyio.wait_all_tasks_blocked()
            group.start_soon(waiter)
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            doomed.cancel()  # another waiter must take over the watch
            await anyio.wait_all_tasks_blocked()
            os.kill(handle.pid, signal.SIGTERM)
    assert doomed.cancelled_caught
    assert results == [ExitStatus(signal=signal.SIGTERM)] * 2
    assert await handle.wait() == ExitStatus(signal=signal.SIGTERM)  # again, at once


# --- errors ---------------------------------------------------------------------------------


async def test_missing_program(runner: ScriptRunner, spec: SpecFactory) -> None:
    with pytest.raises(RunnerError, match=r"^command 'no-such-program-hv' not found on PATH$"):
        await runner.start(spec("no-such-program-hv --port 1"))


async def test_missing_working_directory(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    missing = home / "gone"
    with pytest.raises(RunnerError, match=rf"^working directory {missing} does not exist$"):
        await runner.start(spec("sleep 1", working_dir=str(missing)))
    afile = home / "afile"
    afile.write_text("")
    with pytest.raises(RunnerError, match=rf"^working directory {afile} is not a directory$"):
        await runner.start(spec("sleep 1", working_dir=str(afile)))


async def test_not_executable(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    script = home / "work" / "run.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(RunnerError, match=r"command './run.sh' is not executable \(permission denied\)"):
        await runner.start(spec("./run.sh"))


async def test_missing_interpreter(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    script = home / "work" / "tool"
    script.parent.mkdir(exist_ok=True)
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(RunnerError, match=r"cannot run .*/tool: no such file \(or its #! interpreter is missing\)"):
        await runner.start(spec("./tool"))


async def test_unwritable_capture_file(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    blocker = home / "blocker"
    blocker.write_text("")
    with pytest.raises(RunnerError, match=r"^cannot open output file .*/blocker/x.out: Not a directory$"):
        await runner.start(spec("sleep 1", stdout_path=str(blocker / "x.out")))


async def test_bad_environment(runner: ScriptRunner, spec: SpecFactory) -> None:
    with pytest.raises(RunnerError, match="cannot start: "):
        await runner.start(spec("sleep 1", env={"PATH": os.environ["PATH"], "BAD=NAME": "x"}))


async def test_missing_explicit_shell(runner: ScriptRunner, spec: SpecFactory) -> None:
    with pytest.raises(RunnerError, match=r"^shell 'no-such-shell' not found on PATH$"):
        await runner.start(spec("echo hi", shell="no-such-shell"))


async def test_failed_starts_leave_no_fd_behind(runner: ScriptRunner, spec: SpecFactory, home: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(RunnerError):
            await runner.start(spec("sleep 1", working_dir=str(home / "nope")))
        with pytest.raises(RunnerError):
            await runner.start(spec("no-such-program-hv"))
        with pytest.raises(RunnerError):
            await runner.start(spec("sleep 1", env={"PATH": os.environ["PATH"], "A=B": "x"}))
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_trio_backend_start_wait_stop(spec: SpecFactory) -> None:
    made = spec("sleep 100")

    async def scenario() -> tuple[ExitStatus, ExitStatus]:
        runner = ScriptRunner()
        first = await runner.start(made)
        stopped = await first.stop(signal.SIGTERM, 5)
        second = await runner.start(spec("exit 7"))
        return stopped, await second.wait()

    # Run under trio in a worker thread (this test's own loop is asyncio).
    stopped, exited = await anyio.to_thread.run_sync(lambda: anyio.run(scenario, backend="trio"))
    assert stopped == ExitStatus(signal=signal.SIGTERM)
    assert exited == ExitStatus(exit_code=7)
