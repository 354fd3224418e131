"""The plugin system with real daemons and a third-party plugin package: lifecycle,
settings, run-time operations, scopes, and isolation from plugins that misbehave."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, PluginState
from tests.plugins.conftest import StartWith, recorder_table, records
from tests.support import StartFailed, run_cli, wait_until, write_project

pytestmark = pytest.mark.anyio


def _kinds(path: Path) -> list[str]:
    return [r.get("kind") or r["what"] for r in records(path)]


async def test_lifecycle_init_events_and_shutdown(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log))
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    first = records(log)[0]
    assert first == {"what": "init", "label": "recorder", "services": []}  # init called the daemon

    listed = json.loads(run_cli("plugins", "--json").stdout)
    assert [(p["name"], p["version"], p["distribution"], p["state"], p["scope"]) for p in listed] == [
        ("recorder", "1.0.0", "hive-test-plugins", "running", "operate")]
    table = run_cli("plugins").stdout.splitlines()
    assert table[0].split() == ["PLUGIN", "VERSION", "STATE", "SCOPE", "EVENTS", "DROPPED", "FAILED",
                                "LAST", "ERROR"]

    assert daemon.stop() == 0
    kinds = _kinds(log)
    assert kinds[-2:] == ["daemon_shutdown", "shutdown"]  # told, then shut down, before the exit


async def test_settings_are_validated_before_the_start(start_with: StartWith, hive_env: Path) -> None:
    with pytest.raises(StartFailed) as caught:
        start_with(recorder_table(hive_env / "x", settings='pth = "typo"'))
    assert "[plugins.recorder.settings]" in str(caught.value) and "pth" in str(caught.value)

    with pytest.raises(StartFailed) as caught:
        start_with("[plugins.nosuch]\n")
    assert "no core plugin named 'nosuch' is installed" in str(caught.value)
    assert "recorder" in str(caught.value)  # the installed ones are listed

    with pytest.raises(StartFailed) as caught:
        start_with('[plugins.recorder]\nscope = "root"\n')
    assert "[plugins.recorder]" in str(caught.value) and "scope" in str(caught.value)


async def test_enable_disable_restart_at_run_time(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log))
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")

    assert run_cli("plugins", "disable", "recorder").stdout.strip() == "recorder: disabled"
    assert _kinds(log)[-1] == "shutdown"
    async with DaemonClient(daemon.socket) as client:
        assert (await client.list_plugins())[0].state == PluginState.DISABLED
        before = len(records(log))
        await client.reload()  # an event the recorder would record
        assert len(records(log)) == before  # a disabled plugin gets nothing

        info = await client.enable_plugin("recorder")
        assert info.state == PluginState.RUNNING
        assert records(log)[-1]["what"] == "init"
        info = await client.restart_plugin("recorder")
        assert info.state == PluginState.RUNNING
        assert [r["what"] for r in records(log)[-2:]] == ["shutdown", "init"]

    missing = run_cli("plugins", "enable", "nosuch")
    assert missing.returncode != 0 and "no plugin named 'nosuch'" in missing.stderr


async def test_reload_gives_new_settings(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log, label="first"))
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    (hive_env / "config.toml").write_text(recorder_table(log, label="second"))
    os.kill(daemon.pid, signal.SIGHUP)
    await wait_until(lambda: {"what": "settings", "label": "second"} in records(log), timeout=30,
                     what="the new settings")

    # A wrong table on reload is refused: the plugin keeps running on its settings.
    (hive_env / "config.toml").write_text(recorder_table(log, label="third", settings="bad = 1"))
    result = run_cli("reload")
    assert "[plugins.recorder.settings]" in result.stdout + result.stderr
    assert json.loads(run_cli("plugins", "--json").stdout)[0]["state"] == "running"
    assert {"what": "settings", "label": "third"} not in records(log)


@pytest.mark.parametrize(("plugin", "refusal"), [
    ("recorder", "'read' scope; stop_service needs 'operate'"),
    # A client of its own on the daemon's socket is refused: no way around its scope.
    ("sneaker", "a connection from a core plugin's process is refused"),
])
async def test_scope_limits_what_a_plugin_may_ask(start_with: StartWith, hive_env: Path, project_dir: Path,
                                                  plugin: str, refusal: str) -> None:
    log = hive_env / "rec.jsonl"
    write_project(project_dir, """
        version: "1"
        services:
          web:
            runner: {type: script, script: {run: "exec sleep 1000"}}
        """)
    first = start_with("")
    async with DaemonClient(first.socket) as client:
        await client.add_source(project_dir, name="p", start=True)
    first.stop()
    # The next daemon resumes p:web before its plugins start; on daemon_started the
    # recorder, limited to `read`, tries to stop it.
    daemon = start_with(recorder_table(log, name=plugin, extra='scope = "read"', settings='stop_on_start = "p:web"'))
    await wait_until(lambda: any(r["what"] == "stop" for r in records(log)), timeout=30, what="the stop answer")
    answer = next(r for r in records(log) if r["what"] == "stop")
    assert "FORBIDDEN: " in answer["error"]
    assert refusal in answer["error"]
    async with DaemonClient(daemon.socket) as client:
        assert (await client.get_service_status("p:web")).state == "running"


async def test_a_reload_applies_the_new_scope(start_with: StartWith, hive_env: Path, project_dir: Path) -> None:
    log = hive_env / "rec.jsonl"
    write_project(project_dir, 'version: "1"\nservices:\n  web:\n    runner: {type: script, script: {run: "exec sleep 1000"}}\n')
    daemon = start_with(recorder_table(log, extra='scope = "operate"'))
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    async with DaemonClient(daemon.socket, timeout=30) as client:
        await client.add_source(project_dir, name="p", start=True)
        # Now `read`: on plugin_configured the recorder tries to stop p:web.
        (hive_env / "config.toml").write_text(
            recorder_table(log, extra='scope = "read"', settings='stop_on_start = "p:web"'))
        await client.reload()
        await wait_until(lambda: any(r["what"] == "stop" for r in records(log)), timeout=30, what="the stop answer")
        answer = next(r for r in records(log) if r["what"] == "stop")
        assert answer["error"] and "'read' scope; stop_service needs 'operate'" in answer["error"]
        assert (await client.get_service_status("p:web")).state == "running"
        assert {p.name: p for p in await client.list_plugins()}["recorder"].scope == "read"


async def test_misbehaving_plugins_are_contained(start_with: StartWith, hive_env: Path, project_dir: Path) -> None:
    log = hive_env / "rec.jsonl"
    config = (recorder_table(log)
              + '[plugins.raiser]\n[plugins.blocker]\nevent_timeout = 0.2\n[plugins.flooder]\nscope = "read"\n')
    daemon = start_with(config)
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    write_project(project_dir, 'version: "1"\nservices:\n' + "".join(
        f'  s{i}:\n    runner: {{type: script, script: {{run: "exec sleep 1000"}}}}\n' for i in range(5)))
    async with DaemonClient(daemon.socket, timeout=30) as client:
        async with client.subscribe_events(kinds=["service_started"]) as stream:
            await client.add_source(project_dir, name="p", start=True)
            started = []
            with anyio.fail_after(30):
                async for event in stream:
                    started.append(event.fqn)
                    if len(started) == 5:
                        break
        # Other clients are answered while the flooder hammers the daemon.
        for _ in range(50):
            assert (await client.status()).running

        failed: set[str] = set()
        async with client.subscribe_events(kinds=["plugin_state_changed"], since_seq=0) as changes:
            with anyio.fail_after(60):
                async for change in changes:
                    if change.state == "failed":
                        failed.add(change.plugin)
                    if failed >= {"raiser", "blocker"}:
                        break
        plugins = {p.name: p for p in await client.list_plugins()}
    assert plugins["raiser"].failed >= 5 and "raiser cannot take" in (plugins["raiser"].last_error or "")
    assert "did not finish within 0.2 s" in (plugins["blocker"].last_error or "")
    assert plugins["flooder"].state == "running"
    # The recorder got every service start, whatever the others did.
    seen = [r["fqn"] for r in records(log) if r.get("kind") == "service_started"]
    assert sorted(seen) == sorted(started)
    assert plugins["recorder"].dropped == 0 and plugins["recorder"].failed == 0


async def test_a_slow_plugin_loses_its_oldest_events_alone(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + "[plugins.blocker]\nqueue = 2\nevent_timeout = 30.0\n")
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    async with DaemonClient(daemon.socket, timeout=60) as client:
        for _ in range(20):
            await client.reload()  # one daemon_reloaded event each
        await wait_until(lambda: _kinds(log).count("daemon_reloaded") == 20, timeout=30,
                         what="the recorder to get all 20 events")
        plugins = {p.name: p for p in await client.list_plugins()}
    # The blocker is stuck in its first event: of the 20 after it, its queue keeps 2.
    assert plugins["blocker"].state == "running" and plugins["blocker"].dropped >= 17
    assert plugins["recorder"].dropped == 0
    listed = run_cli("plugins").stdout
    assert "blocker" in listed and str(plugins["blocker"].dropped) in listed


async def test_a_plugin_whose_init_fails_or_hangs_is_failed_alone(start_with: StartWith, hive_env: Path) -> None:
    log = hive_env / "rec.jsonl"
    daemon = start_with(recorder_table(log) + "[plugins.broken]\n[plugins.stuck]\ninit_timeout = 0.5\n")
    await wait_until(lambda: "daemon_started" in _kinds(log), timeout=30, what="daemon_started")
    async with DaemonClient(daemon.socket) as client:
        plugins = {p.name: p for p in await client.list_plugins()}
        assert plugins["broken"].state == "failed"
        assert plugins["broken"].last_error == "init failed: cannot reach the mothership"
        assert plugins["stuck"].state == "failed"
        assert plugins["stuck"].last_error == "init did not finish within 0.5 s"
        assert plugins["recorder"].state == "running"
        assert (await client.status()).running
    assert daemon.stop() == 0  # failed plugins do not hold the shutdown
