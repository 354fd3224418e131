"""A ``run`` that starts with ``#!`` runs as a script of the interpreter it names: written to
a file (0700) beside the capture files and executed, with the process group, exit status and
stop of any other start."""

from __future__ import annotations

import os
import signal
import stat
import sys
from pathlib import Path

import anyio
import psutil
import pytest

from runners.base import ExitStatus, RunnerError
from runners.script import ScriptHandle, ScriptRunner
from tests.runners.conftest import SpecFactory
from tests.runners.helpers import alive, read, until

pytestmark = pytest.mark.anyio

PYTHON_SERVICE = f"""#!{sys.executable}
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "100"])
print("python", os.getpid(), os.getsid(0), child.pid, flush=True)
time.sleep(100)
"""


async def test_a_python_script_runs_under_its_interpreter(
    runner: ScriptRunner, spec: SpecFactory, home: Path
) -> None:
    handle = await runner.start(spec(PYTHON_SERVICE))
    assert isinstance(handle, ScriptHandle) and handle.mode == "script"
    out = home / "run" / "svc.out"
    await until(lambda: read(out).startswith("python "), what="the script's line")
    _, pid, sid, child = read(out).split()
    # The interpreter is the service's process, leader of its own session.
    assert int(pid) == handle.pid == int(sid) == os.getpgid(handle.pid)
    script = home / "run" / "proj_svc.script"
    assert psutil.Process(handle.pid).cmdline()[-1] == str(script)
    assert stat.S_IMODE(script.stat().st_mode) == 0o700
    assert "import: command not found" not in read(home / "run" / "svc.err")
    # A stop ends what the script started too.
    status = await handle.stop(signal.SIGTERM, 5)
    assert status == ExitStatus(signal=signal.SIGTERM)
    assert not alive(int(child))


async def test_a_shell_script_exits_with_its_own_status(runner: ScriptRunner, spec: SpecFactory) -> None:
    handle = await runner.start(spec("#!/bin/sh\nset -e\nfalse || exit 7\n"))
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=7)
    assert handle.leftovers() == 0


async def test_the_script_wins_over_a_configured_shell(
    runner: ScriptRunner, spec: SpecFactory, home: Path
) -> None:
    handle = await runner.start(spec(f"#!{sys.executable}\nprint('from python')\n", shell="/bin/sh"))
    with anyio.fail_after(10):
        assert await handle.wait() == ExitStatus(exit_code=0)
    assert read(home / "run" / "svc.out") == "from python\n"


async def test_a_restart_replaces_the_file_not_the_running_script(
    runner: ScriptRunner, spec: SpecFactory, home: Path
) -> None:
    """The first start is still reading its script when the second writes its own."""
    first = await runner.start(spec("#!/bin/sh\nread line < /dev/stdin\nsleep 100\necho first-done\n"))
    script = home / "run" / "proj_svc.script"
    inode = script.stat().st_ino
    second = await runner.start(spec("#!/bin/sh\necho second\n"))
    with anyio.fail_after(10):
        assert await second.wait() == ExitStatus(exit_code=0)
    assert script.stat().st_ino != inode
    assert first.status is None
    await first.stop(signal.SIGTERM, 5)


async def test_a_missing_interpreter_is_a_clear_error(runner: ScriptRunner, spec: SpecFactory) -> None:
    with pytest.raises(RunnerError, match=r"the #! interpreter /no/such/python of 'run' was not found"):
        await runner.start(spec("#!/no/such/python\nprint(1)\n"))
