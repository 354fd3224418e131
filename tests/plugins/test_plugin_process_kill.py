"""Killing a plugin's process group after its process ended: the group's number may have
been handed to another process since. Its leftovers go; a stranger with the same number
stays."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import psutil
import pytest

from hive.daemon.plugin_process import PluginProcess
from tests.support import wait_until

pytestmark = pytest.mark.anyio

# A plugin module whose import leaves a process behind in the plugin's process group.
LEAVES_A_PROCESS = """
import pathlib, subprocess
left = subprocess.Popen(["sleep", "600"])
pathlib.Path(__file__).with_suffix(".pid").write_text(str(left.pid))

class Plugin:
    def __init__(self, settings): pass
"""

LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def _session_leader_with_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """A new session leader whose pid is ``pid`` (the kernel hands out the number after
    ``ns_last_pid``); None if other forks keep taking it first."""
    for _ in range(50):
        LAST_PID.write_text(str(pid - 1))
        process = subprocess.Popen(["sleep", "600"], start_new_session=True)
        if process.pid == pid:
            return process
        process.kill()
        process.wait()
    return None


@pytest.fixture
def strangers() -> Iterator[list[subprocess.Popen[bytes]]]:
    made: list[subprocess.Popen[bytes]] = []
    yield made
    for process in made:
        process.kill()
        process.wait()


async def test_a_stranger_with_the_ended_plugins_number_is_not_killed(
        strangers: list[subprocess.Popen[bytes]]) -> None:
    if os.geteuid() != 0 or not os.access(LAST_PID, os.W_OK):
        pytest.skip("choosing the next pid needs root (/proc/sys/kernel/ns_last_pid)")
    async with anyio.create_task_group() as group:
        plugin = PluginProcess("pid-reuse", group)
        ours, _theirs = socket.socketpair()
        with ours:
            await plugin.begin(_theirs)
            pid = plugin.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: plugin.ended is not None, timeout=30, what="the plugin's process to be reaped")
            assert plugin.ended == "killed by SIGKILL"
            stranger = _session_leader_with_pid(pid)
            if stranger is None:
                pytest.skip(f"pid {pid} was taken by another fork 50 times")
            strangers.append(stranger)
            assert os.getpgid(pid) == pid  # a process group of the same number as the plugin's

            await plugin.stop()
            assert stranger.poll() is None
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


async def test_what_an_ended_plugin_left_in_its_group_is_killed(tmp_path: Path) -> None:
    (tmp_path / "leaves_a_process.py").write_text(LEAVES_A_PROCESS)
    async with anyio.create_task_group() as group:
        plugin = PluginProcess("leaves-a-process", group)
        ours, _theirs = socket.socketpair()
        with ours:
            await plugin.begin(_theirs)
            load = plugin.submit("load", args={"path": [str(tmp_path)], "log_level": "INFO", "settings": {},
                                               "entry": "leaves_a_process:Plugin"})
            with anyio.fail_after(30):
                await load.finished.wait()
            left = int((tmp_path / "leaves_a_process.pid").read_text())
            pid = plugin.pid
            assert pid is not None and os.getpgid(left) == pid
            os.kill(pid, signal.SIGKILL)
            await wait_until(lambda: plugin.ended is not None, timeout=30, what="the plugin's process to be reaped")

            await plugin.stop()
            await wait_until(lambda: not psutil.pid_exists(left) or psutil.Process(left).status() == "zombie",
                             timeout=30, what="the process it left to be killed")
