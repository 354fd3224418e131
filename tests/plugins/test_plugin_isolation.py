"""Plugins whose code blocks their thread (``time.sleep``, a CPU loop) in ``on_event``,
``init`` or ``run()``: the daemon goes on serving, the plugin alone is failed with where
it blocks, and the daemon still stops cleanly."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import anyio
import psutil
import pytest

from hive_client import DaemonClient
from tests.plugins.conftest import StartWith, recorder_table, records
from tests.support import wait_until

pytestmark = pytest.mark.anyio


def _kinds(path: Path) -> list[str]:
    return [r.get("kind") or r["what"] for r in records(path)]


async def _failed(client: DaemonClient, plugin: str) -> None:
    async with client.subscribe_events(kinds=["plugin_state_changed"], since_seq=0) as changes:
        with anyio.fail_after(60):
            async for change in changes:
                if change.plugin == plugin and change.state == "failed":
                    return


async def test_a_plugin_blocking_in_on_event_is_failed_and_the_daemon_serves(
        start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + "[plugins.sleeper]\nevent_timeout = 0.5\n")
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    async with DaemonClient(daemon.socket, timeout=30) as client:
        await client.reload()  # the sleeper's thread now sleeps an hour
        await _failed(client, "sleeper")
        assert (await client.status()).running
        await client.reload()  # the others still get their events
        await wait_until(lambda: _kinds(log).count("daemon_reloaded") == 2, timeout=30, what="the second reload")
        plugins = {p.name: p for p in await client.list_plugins()}
    sleeper = plugins["sleeper"]
    assert sleeper.state == "failed" and sleeper.failed >= 1
    assert "on_event(daemon_reloaded) did not finish within 0.5 s and its thread is blocked at" in (sleeper.last_error or "")
    assert "time.sleep(self.settings.seconds)" in (sleeper.last_error or "")
    assert plugins["recorder"].state == "running" and plugins["recorder"].failed == 0
    assert daemon.stop() == 0  # the sleeping thread does not hold the exit


async def test_a_plugin_blocking_in_init_is_failed_and_the_daemon_starts(
        start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + "[plugins.dozer]\ninit_timeout = 0.5\n")
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    async with DaemonClient(daemon.socket, timeout=30) as client:
        assert (await client.status()).running
        plugins = {p.name: p for p in await client.list_plugins()}
    dozer = plugins["dozer"]
    assert dozer.state == "failed"
    assert (dozer.last_error or "").startswith("init did not finish within 0.5 s and its thread is blocked at ")
    assert "time.sleep" in (dozer.last_error or "")
    assert plugins["recorder"].state == "running"
    assert daemon.stop() == 0


async def test_a_plugin_spinning_in_run_is_failed_by_the_watchdog(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + "[plugins.spinner]\nevent_timeout = 0.5\n")
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    async with DaemonClient(daemon.socket, timeout=30) as client:
        await _failed(client, "spinner")
        assert (await client.status()).running
        plugins = {p.name: p for p in await client.list_plugins()}
    spinner = plugins["spinner"]
    # The watchdog or an event's deadline, whichever comes first, finds it in run().
    assert spinner.state == "failed" and "its thread is blocked at " in (spinner.last_error or "")
    assert " in run: " in (spinner.last_error or "")
    assert daemon.stop() == 0


def _plugin_process(daemon_pid: int, plugin: str) -> psutil.Process | None:
    """The daemon's child process running ``plugin`` (its name ends the command line)."""
    for child in psutil.Process(daemon_pid).children():
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            if "hive.daemon.plugin_child" in command and command[-1] == plugin:
                return child
    return None


async def test_a_blocked_plugin_process_is_killed(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + "[plugins.sleeper]\nevent_timeout = 0.5\n")
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    sleeper = _plugin_process(daemon.pid, "sleeper")
    assert sleeper is not None and sleeper.pid != daemon.pid
    async with DaemonClient(daemon.socket, timeout=30) as client:
        (info,) = [p for p in await client.list_plugins() if p.name == "sleeper"]
        assert (info.isolation, info.pid) == ("process", sleeper.pid)
        await client.reload()  # the sleeper's process now sleeps an hour
        await _failed(client, "sleeper")
    await wait_until(lambda: not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE,
                     timeout=30, what="the sleeper's process to be killed")
    assert _plugin_process(daemon.pid, "recorder") is not None
    assert daemon.stop() == 0


async def test_a_plugin_process_that_dies_is_failed_and_started_again(
        start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log, extra="recovery_timeout = 0.5"))
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    first = _plugin_process(daemon.pid, "recorder")
    assert first is not None
    async with DaemonClient(daemon.socket, timeout=30) as client, \
            client.subscribe_events(kinds=["plugin_state_changed"]) as changes:
        first.kill()
        states: list[str] = []
        with anyio.fail_after(60):
            async for change in changes:
                if change.plugin == "recorder":
                    states.append(change.state)
                if states[-3:] == ["failed", "starting", "half_open"]:
                    break
        (recorder,) = await client.list_plugins()
    assert "the plugin's process has ended (killed by SIGKILL)" in (recorder.last_error or "")
    second = _plugin_process(daemon.pid, "recorder")
    assert second is not None and second.pid != first.pid
    assert daemon.stop() == 0


async def test_a_plugin_on_a_thread_blocking_is_failed_and_the_daemon_serves(
        start_with: StartWith, hive_env: Path) -> None:
    # isolation = "thread": the same deadlines and watchdog, on a thread of the daemon.
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + '[plugins.sleeper]\nevent_timeout = 0.5\nisolation = "thread"\n')
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    assert _plugin_process(daemon.pid, "sleeper") is None  # on a thread, not in a process
    async with DaemonClient(daemon.socket, timeout=30) as client:
        await client.reload()
        await _failed(client, "sleeper")
        assert (await client.status()).running
        (sleeper,) = [p for p in await client.list_plugins() if p.name == "sleeper"]
    assert (sleeper.isolation, sleeper.pid) == ("thread", None)
    assert "its thread is blocked at" in (sleeper.last_error or "")
    assert "time.sleep(self.settings.seconds)" in (sleeper.last_error or "")
    assert daemon.stop() == 0


async def test_what_a_plugin_process_logs_reaches_the_daemons_log(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log, name="talker", label="talker"))
    said = await wait_until(lambda: re.search(r"plugin talker \(hive_test_plugins\.talker\): "
                                              r"talker says hello from pid (\d+)", daemon.stderr()),
                            timeout=30, what="the talker's line in the daemon's log")
    talker = _plugin_process(daemon.pid, "talker")
    assert talker is not None and int(said.group(1)) == talker.pid != daemon.pid
    assert daemon.stop() == 0
