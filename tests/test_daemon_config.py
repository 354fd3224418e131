"""The daemon's own configuration, its log, and SIGHUP."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, DaemonReloaded, InvalidRequest
from tests.support import StartFailed, start_daemon

pytestmark = pytest.mark.anyio


async def test_json_log_lines(home: Path) -> None:
    (home / "config.toml").write_text('[daemon]\nlog_format = "json"\nlog_level = "debug"\n')
    daemon = start_daemon(home)
    daemon.stop()
    lines = [line for line in daemon.stderr().splitlines() if line.strip()]
    assert lines, "the daemon logged nothing"
    entries = [json.loads(line) for line in lines]
    assert any("listening on" in e["msg"] for e in entries)
    assert all({"ts", "level", "logger", "msg"} <= e.keys() for e in entries)


async def test_sighup_reloads_and_a_bad_file_keeps_the_old_settings(home: Path) -> None:
    daemon = start_daemon(home)
    try:
        async with DaemonClient(daemon.socket) as client, client.subscribe_events(
            ["daemon_reloaded"]
        ) as events:
            (home / "config.toml").write_text('[daemon]\nlog_level = "debug"\n')
            os.kill(daemon.pid, signal.SIGHUP)
            with anyio.fail_after(10):
                good = await events.__anext__()
            assert isinstance(good, DaemonReloaded)
            assert good.ok

            (home / "config.toml").write_text("[daemon]\nlog_level = 'loud'\n")
            os.kill(daemon.pid, signal.SIGHUP)
            with anyio.fail_after(10):
                bad = await events.__anext__()
            assert isinstance(bad, DaemonReloaded)
            assert not bad.ok
            assert "log_level" in bad.message
            with pytest.raises(InvalidRequest, match="log_level"):
                await client.reload()
            await client.ping()  # still serving, on the previous settings
    finally:
        daemon.stop()
    assert "reload refused, keeping the running configuration" in daemon.stderr()


def test_wrong_runner_settings_stop_the_start(home: Path) -> None:
    (home / "config.toml").write_text('[runners.script]\nshell = "/bin/zsh"\n')
    with pytest.raises(StartFailed) as failed:
        start_daemon(home)
    assert "[runners.script] in config.toml: runner 'script' has no settings (got: shell)" in str(failed.value)

    (home / "config.toml").write_text('[runners.nosuch]\nx = 1\n')
    with pytest.raises(StartFailed) as failed:
        start_daemon(home)
    assert "no runner plugin available for 'nosuch'" in str(failed.value)
