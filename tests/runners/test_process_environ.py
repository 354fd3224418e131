"""A process's environment read from /proc, as membership needs it: an execve under way
must not hide the marks that make a process a service's (or a check's) member."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners._process import env_value, read_environ
from tests.support import wait_for


@pytest.fixture
def exec_loop(tmp_path: Path) -> Iterator[int]:
    """A process that does nothing but execve itself again, marked ``MARK=here``."""
    script = tmp_path / "again.sh"
    script.write_text('#!/bin/sh\nexec /bin/sh "$0"\n')
    process = subprocess.Popen(["/bin/sh", str(script)], env={"MARK": "here", "PATH": "/usr/bin:/bin"})
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_process_in_the_middle_of_an_execve_still_shows_its_environment(exec_loop: int) -> None:
    """On main, about one read in seven came back empty: such a process escaped a stop and
    a health check's sweep (a ``setsid`` child caught exec'ing ``sleep`` outlived them)."""
    marks = [env_value(read_environ(exec_loop) or b"", b"MARK") for _ in range(3000)]
    assert marks.count(b"here") == len(marks)


def test_an_empty_environment_reads_empty_and_a_zombie_has_none() -> None:
    empty = subprocess.Popen(["/usr/bin/env", "-i", "/bin/sleep", "60"])
    zombie = subprocess.Popen(["/bin/true"])  # not reaped by this test until the end
    try:
        wait_for(lambda: _command(empty.pid).startswith(b"/bin/sleep"), what="env to exec sleep")
        assert read_environ(empty.pid) == b""
        wait_for(lambda: _state(zombie.pid) == "Z", what="true to exit")
        assert read_environ(zombie.pid) is None
    finally:
        empty.kill()
        empty.wait()
        zombie.wait()


def _command(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 :].decode()[0]
