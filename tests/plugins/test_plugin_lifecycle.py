"""A plugin's lifecycle: health from a heartbeat (degraded, unhealthy, running again), a
circuit breaker that goes half open and recovers, the manifest (api_version, depends_on),
the log-level event, and ``hive plugins restart`` running the plugin's new code."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, PluginStateChanged
from tests.plugins.conftest import PACKAGE, StartWith, recorder_table, records
from tests.support import run_cli, wait_until

pytestmark = pytest.mark.anyio


def _what(path: Path, what: str, label: str | None = None) -> list[dict[str, object]]:
    return [r for r in records(path) if r["what"] == what and (label is None or r.get("label") == label)]


async def _states_until(client: DaemonClient, plugin: str, last: list[str], *, into: list[PluginStateChanged],
                        timeout: float = 60) -> None:
    """Collect the plugin's state changes (from the first event on) until its states end with ``last``."""
    async with client.subscribe_events(kinds=["plugin_state_changed"], since_seq=0) as changes:
        with anyio.fail_after(timeout):
            async for change in changes:
                if change.plugin != plugin or any(c.seq == change.seq for c in into):
                    continue
                into.append(change)
                if [c.state for c in into[-len(last):]] == last:
                    return


async def test_a_blocked_loop_is_degraded_then_unhealthy_then_running_again(
        start_with: StartWith, hive_env: Path) -> None:
    log, fifo = hive_env / "rec.jsonl", hive_env / "wedge.fifo"
    os.mkfifo(fifo)
    daemon = start_with(recorder_table(log, name="wedge", extra="event_timeout = 4.0",
                                       settings=f'fifo = "{fifo}"'))
    await wait_until(lambda: _what(log, "init"), timeout=30, what="the wedge's init")
    changes: list[PluginStateChanged] = []
    async with DaemonClient(daemon.socket, timeout=30) as client:
        (running,) = [p for p in await client.list_plugins() if p.name == "wedge"]
        assert running.state == "running" and running.heartbeat is not None
        await client.reload()  # its thread now blocks reading the FIFO
        await _states_until(client, "wedge", ["degraded", "unhealthy"], into=changes)
        assert (await client.status()).running  # the daemon serves meanwhile
        unhealthy = changes[-1].message
        assert unhealthy.startswith("its loop has not answered for 4 s: its thread is at ")
        assert "in on_event: with open(self.settings.fifo" in unhealthy
        (shown,) = [p for p in await client.list_plugins() if p.name == "wedge"]
        assert shown.state == "unhealthy" and shown.reason == unhealthy
        await anyio.to_thread.run_sync(fifo.write_text, "go on\n")  # unblocks it
        await client.reload()  # the next event goes through
        await _states_until(client, "wedge", ["running"], into=changes)
        (wedge,) = [p for p in await client.list_plugins() if p.name == "wedge"]
    states = [c.state for c in changes]
    assert states[:4] == ["starting", "running", "degraded", "unhealthy"] and states[-1] == "running"
    # In between, degraded if its late event was counted a failure (its deadline is event_timeout too).
    assert set(states[4:-1]) <= {"degraded"}
    assert wedge.state == "running" and wedge.heartbeat is not None
    assert daemon.stop() == 0


async def test_the_breaker_goes_half_open_and_recovers(start_with: StartWith, hive_env: Path) -> None:
    log, marker = hive_env / "rec.jsonl", hive_env / "fail"
    marker.touch()
    daemon = start_with(recorder_table(log, name="flaky", extra="recovery_timeout = 0.5",
                                       settings=f'fail_while = "{marker}"'))
    await wait_until(lambda: _what(log, "init"), timeout=30, what="the flaky plugin's init")
    changes: list[PluginStateChanged] = []
    async with DaemonClient(daemon.socket, timeout=30) as client:
        for _ in range(5):  # five failures in a row open the breaker
            await client.reload()
        await _states_until(client, "flaky", ["failed", "starting", "half_open"], into=changes)
        await client.reload()  # on trial, one failure opens it again
        await _states_until(client, "flaky", ["failed", "starting", "half_open"], into=changes)
        marker.unlink()
        await client.reload()  # a success closes it
        await _states_until(client, "flaky", ["running"], into=changes)
        (flaky,) = [p for p in await client.list_plugins() if p.name == "flaky"]
    assert [c.state for c in changes] == ["starting", "running", "degraded", "failed", "starting", "half_open",
                                          "failed", "starting", "half_open", "running"]
    assert len(_what(log, "init")) == 3  # started three times: a new instance on each trial
    assert flaky.state == "running" and flaky.retry_in is None
    assert [r["kind"] for r in _what(log, "event")][-1] == "daemon_reloaded"


async def test_a_failed_plugin_shows_when_the_breaker_tries_it_again(start_with: StartWith, hive_env: Path) -> None:
    start_with("[plugins.broken]\nrecovery_timeout = 3600\n[plugins.stuck]\nrecovery_timeout = 0\ninit_timeout = 0.5\n")
    broken = await wait_until(lambda: (p := _plugin("broken"))["state"] == "failed" and p, timeout=30,
                              what="broken to fail")
    assert 3000 < float(broken["retry_in"]) <= 3600  # type: ignore[arg-type]
    assert "retry in" in run_cli("plugins").stdout
    stuck = await wait_until(lambda: (p := _plugin("stuck"))["state"] == "failed" and p, timeout=30,
                             what="stuck to fail")
    assert stuck["retry_in"] is None  # recovery_timeout = 0: until enabled by hand


async def test_a_reloaded_recovery_timeout_applies_at_once(start_with: StartWith, hive_env: Path) -> None:
    daemon = start_with("[plugins.broken]\nrecovery_timeout = 3600\n")
    await wait_until(lambda: _plugin("broken")["state"] == "failed", timeout=30, what="broken to fail")
    (hive_env / "config.toml").write_text("[plugins.broken]\nrecovery_timeout = 0.5\n")
    changes: list[PluginStateChanged] = []
    async with DaemonClient(daemon.socket, timeout=30) as client:
        await client.reload()  # the trial comes after the new timeout, not the hour it was
        await _states_until(client, "broken", ["starting", "failed", "starting", "failed"], into=changes)
        (broken,) = [p for p in await client.list_plugins() if p.name == "broken"]
    assert broken.retry_in is not None and broken.retry_in < 60  # doubling from 0.5, not from 3600
    (hive_env / "config.toml").write_text("[plugins.broken]\nrecovery_timeout = 0\n")
    async with DaemonClient(daemon.socket, timeout=30) as client:
        await client.reload()  # 0: no more trials, until enabled by hand
        (broken,) = [p for p in await client.list_plugins() if p.name == "broken"]
    assert broken.state == "failed" and broken.retry_in is None


def _plugin(name: str) -> dict[str, object]:
    import json

    return next(p for p in json.loads(run_cli("plugins", "--json").stdout) if p["name"] == name)


async def test_depends_on_orders_init_and_shutdown(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    # The recorder's init takes a while: the follower must not init before it ends.
    daemon = start_with(recorder_table(log, label="base", settings="init_delay = 1.0")
                        + recorder_table(log, name="follower", label="follower"))
    await wait_until(lambda: len(_what(log, "init")) == 2, timeout=30, what="both inits")
    assert [r["label"] for r in _what(log, "init")] == ["base", "follower"]
    follower = _plugin("follower")
    assert follower["depends_on"] == ["recorder"] and follower["capabilities"] == ["following"]
    assert follower["api_version"] == 1
    assert daemon.stop() == 0
    assert [r["label"] for r in _what(log, "shutdown")] == ["follower", "base"]


async def test_a_restarted_plugin_restarts_the_plugins_that_depend_on_it(
        start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    start_with(recorder_table(log, label="base") + recorder_table(log, name="follower", label="follower"))
    await wait_until(lambda: len(_what(log, "init")) == 2, timeout=30, what="both inits")
    assert run_cli("plugins", "restart", "recorder").returncode == 0
    await wait_until(lambda: len(_what(log, "init")) == 4, timeout=30, what="both inits again")
    order = [(r["what"], r["label"]) for r in records(log) if r["what"] in ("init", "shutdown")]
    assert order == [("init", "base"), ("init", "follower"),  # stopped dependents first, started after
                     ("shutdown", "follower"), ("shutdown", "base"), ("init", "base"), ("init", "follower")]
    assert _plugin("follower")["state"] == "running"


async def test_a_missing_dependency_fails_that_plugin_alone(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    start_with(recorder_table(log, name="follower", label="follower")
               + recorder_table(hive_env / "other.jsonl", name="wedge", settings='fifo = "/nonexistent"'))
    follower = await wait_until(lambda: (p := _plugin("follower"))["state"] == "failed" and p, timeout=30,
                                what="the follower to fail")
    assert follower["last_error"] == ("[plugins.follower]: depends on 'recorder', which is not configured in "
                                      "config.toml; add [plugins.recorder] or remove follower")
    assert follower["retry_in"] is None  # a configuration problem: no retry would help
    assert records(log) == []  # never initialised
    await wait_until(lambda: _plugin("wedge")["state"] == "running", timeout=30, what="the other plugin")


async def test_a_plugin_for_another_api_version_is_refused(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    start_with(recorder_table(log, name="future") + recorder_table(hive_env / "ok.jsonl"))
    future = await wait_until(lambda: (p := _plugin("future"))["state"] == "failed" and p, timeout=30,
                              what="the plugin to be refused")
    assert future["last_error"] == (
        "[plugins.future]: refused: the plugin is written for plugin API 99, this daemon supports 1; "
        "install a version of the plugin for API 1, or a Hive that supports API 99")
    assert records(log) == []
    await wait_until(lambda: _plugin("recorder")["state"] == "running", timeout=30, what="the other plugin")
    assert run_cli("ping").returncode == 0


async def test_a_log_level_change_is_an_event(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    table = recorder_table(log)
    daemon = start_with(table)
    await wait_until(lambda: _what(log, "init"), timeout=30, what="init")
    async with DaemonClient(daemon.socket, timeout=30) as client, \
            client.subscribe_events(kinds=["log_level_changed"]) as changes:
        (hive_env / "config.toml").write_text('[daemon]\nlog_level = "debug"\n' + table)
        await client.reload()
        with anyio.fail_after(30):
            change = await changes.__anext__()
    assert (change.level, change.previous) == ("debug", "info")
    await wait_until(lambda: any(r.get("kind") == "log_level_changed" for r in records(log)), timeout=30,
                     what="the plugin to get the event")


async def test_restart_runs_the_plugins_new_code(start_with: StartWith, hive_env: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with anyio.fail_after(300):
        await anyio.run_process([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                 str(site), str(PACKAGE)])
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log), env={"PYTHONPATH": str(site)})
    await wait_until(lambda: _what(log, "init"), timeout=30, what="init")
    source = site / "hive_test_plugins" / "__init__.py"
    source.write_text(source.read_text().replace('self._write(what="init"', 'self._write(what="init-v2"'))
    assert run_cli("plugins", "restart", "recorder").returncode == 0
    await wait_until(lambda: _what(log, "init-v2"), timeout=30, what="the new code's init")
    assert len(_what(log, "init")) == 1
    assert daemon.stop() == 0
