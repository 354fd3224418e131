"""Crash, restart with backoff, reset, `never`, and commanded stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_client import DaemonClient, ServiceCrashed, ServiceRestarting
from tests.supervision.conftest import Events
from tests.support import write_project

pytestmark = pytest.mark.anyio


async def test_on_failure_backoff_grows_then_resets(client: DaemonClient, events: Events, project_dir: Path) -> None:
    # Runs 1-3 crash at once; run 4 stays up longer than reset_after, then crashes.
    write_project(project_dir, """
        version: "1"
        services:
          flaky:
            runner:
              type: script
              script:
                run: |
                  n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count
                  echo "run $n"
                  if [ "$n" -eq 4 ]; then sleep 1.5; fi
                  if [ "$n" -ge 6 ]; then exec sleep 1000; fi
                  exit 3
            restart: {policy: on-failure, delay: 0.05s, max_delay: 1s, reset_after: 1s, jitter: false}
    """)
    await client.add_source(project_dir, name="p", start=True)
    crash = await events.expect("service_crashed", "p:flaky")
    assert isinstance(crash, ServiceCrashed)
    assert crash.exit_code == 3
    delays = []
    for _ in range(5):
        restarting = await events.expect("service_restarting", "p:flaky")
        assert isinstance(restarting, ServiceRestarting)
        delays.append(round(restarting.delay, 3))
    # 3 quick crashes: 0.05, 0.1, 0.2; run 4 lasted > reset_after: back to 0.05; then 0.1.
    assert delays == [0.05, 0.1, 0.2, 0.05, 0.1]
    await events.expect("service_started", "p:flaky")
    info = await client.get_service_status("p:flaky")
    assert info.restart_count == 5


async def test_never_stays_crashed(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          once:
            runner: {type: script, script: {run: "exit 7"}}
    """)
    await client.add_source(project_dir, name="p", start=True)
    crash = await events.expect("service_crashed", "p:once")
    assert crash.exit_code == 7
    info = await client.get_service_status("p:once")
    assert info.state == "crashed"
    assert info.exit_code == 7
    assert info.restart_count == 0
    assert "exited with code 7" in (info.last_error or "")


async def test_always_restarts_a_clean_exit(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          job:
            runner: {type: script, script: {run: "exit 0"}}
            restart: {policy: always, delay: 0s}
    """)
    await client.add_source(project_dir, name="p", start=True)
    await events.expect("service_exited", "p:job")
    await events.expect("service_restarting", "p:job")
    await events.expect("service_exited", "p:job")


async def test_commanded_stop_is_never_restarted(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          daemonish:
            runner: {type: script, script: {run: "sleep 1000"}}
            restart: always
    """)
    await client.add_source(project_dir, name="p", start=True)
    await events.expect("service_started", "p:daemonish")
    await client.stop_service("p:daemonish")
    stopped = await events.expect("service_state_changed", "p:daemonish", where=lambda e: e.state == "stopped")
    assert stopped.state == "stopped"
    info = await client.get_service_status("p:daemonish")
    assert info.state == "stopped"
    assert info.restart_count == 0
    assert info.desired == "stopped"
    assert not [e for e in events.seen if e.__struct_config__.tag in ("service_crashed", "service_restarting")]


async def test_crash_restart_gap_is_immediate_with_zero_delay(client: DaemonClient, events: Events, project_dir: Path) -> None:
    """Restarts follow the exit itself: with delay 0 there is no wait at all."""
    # A loop without end, as asked: no start limit (it would leave it crashed).
    (project_dir.parent / "config.toml").write_text("[restart]\nstart_limit_burst = 0\n")
    await client.reload()
    write_project(project_dir, """
        version: "1"
        services:
          loop:
            runner: {type: script, script: {run: "exit 1"}}
            restart: {policy: on-failure, delay: 0s}
    """)
    await client.add_source(project_dir, name="p", start=True)
    for _ in range(5):
        restarting = await events.expect("service_restarting", "p:loop")
        assert restarting.delay == 0
    await client.stop_service("p:loop")
    assert (await client.get_service_status("p:loop")).state == "stopped"
