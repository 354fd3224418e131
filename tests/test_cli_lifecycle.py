"""The daemon's life as a user drives it with the real ``hive`` command."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import psutil
import pytest

from tests.support import run_cli, wait_for


@pytest.fixture
def detached(hive_env: Path):
    """`hive start` (detached); whatever the test leaves running is stopped after."""
    yield hive_env
    pid_file = hive_env / "hive.pid"
    if pid_file.exists():
        text = pid_file.read_text().strip()
        if text and psutil.pid_exists(int(text)):
            os.kill(int(text), signal.SIGKILL)


def test_start_status_stop(detached: Path) -> None:
    started = run_cli("start")
    assert started.returncode == 0, started.stderr
    assert "Hive started" in started.stdout

    status = run_cli("--json", "status")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["type"] == "status"
    assert info["running"] is True
    assert psutil.pid_exists(info["pid"])
    assert info["socket"] == str(detached / "hive.sock")
    assert info["version"]
    assert info["uptime_secs"] >= 0

    human = run_cli("status")
    assert human.returncode == 0
    for word in ("pid", "uptime", "socket", str(info["pid"])):
        assert word in human.stdout

    again = run_cli("start")
    assert again.returncode != 0
    assert f"already running (pid {info['pid']}" in again.stderr

    stopped = run_cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == "zombie"
    assert not (detached / "hive.sock").exists()
    assert not (detached / "hive.pid").exists()

    after = run_cli("status")
    assert after.returncode == 3
    assert "not running" in after.stdout


def test_commands_without_daemon_fail_clearly(hive_env: Path) -> None:
    for args in (["ping"], ["stop"], ["reload"], ["events"]):
        result = run_cli(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert "not running" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_stale_socket_and_pid_file_after_kill9(detached: Path) -> None:
    assert run_cli("start").returncode == 0
    pid = int((detached / "hive.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
             what="the daemon to die")
    # The killed daemon left both files behind.
    assert (detached / "hive.sock").exists()
    assert (detached / "hive.pid").exists()
    assert run_cli("status").returncode == 3

    restarted = run_cli("start")
    assert restarted.returncode == 0, restarted.stderr
    assert json.loads(run_cli("--json", "status").stdout)["pid"] != pid
    assert run_cli("stop").returncode == 0


def test_a_live_foreign_socket_is_not_removed(detached: Path) -> None:
    """A socket someone listens on is never unlinked as 'stale'."""
    (detached / "config.toml").write_text('[daemon]\nsocket = "%s"\n' % (detached / "other.sock"))
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(detached / "other.sock"))
    squatter.listen()
    try:
        result = run_cli("start")
        assert result.returncode != 0
        assert "another daemon is already listening" in result.stderr
        assert (detached / "other.sock").exists()
    finally:
        squatter.close()


def test_invalid_daemon_config_names_the_key(detached: Path) -> None:
    (detached / "config.toml").write_text("[daemon]\nlog_levle = 'debug'\n")
    result = run_cli("start")
    assert result.returncode != 0
    assert "config.toml" in result.stderr
    assert "log_levle" in result.stderr
    assert "Traceback" not in result.stderr


def test_socket_and_home_permissions(detached: Path) -> None:
    assert run_cli("start").returncode == 0
    try:
        assert (detached.stat().st_mode & 0o777) == 0o700
        assert ((detached / "hive.sock").stat().st_mode & 0o777) == 0o600
    finally:
        assert run_cli("stop").returncode == 0


def test_stop_keep_services_flag_accepted(detached: Path) -> None:
    assert run_cli("start").returncode == 0
    result = run_cli("--json", "stop", "--keep-services")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stopped"] is True


def test_completion_script(hive_env: Path) -> None:
    result = run_cli("completion", "bash")
    assert result.returncode == 0
    assert "_HIVE_COMPLETE" in result.stdout


def test_version(hive_env: Path) -> None:
    from hive_client import __version__

    result = run_cli("--version")
    assert __version__ in result.stdout
