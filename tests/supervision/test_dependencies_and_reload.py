"""Dependency order, cycles, and reload plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from hive_client import DaemonClient, InvalidRequest
from tests.supervision.conftest import Events
from tests.support import run_cli, write_project

pytestmark = pytest.mark.anyio

STACK = """
    version: "1"
    services:
      db:
        runner: {type: script, script: {run: "echo db-up >> ../order; exec sleep 1000"}}
      cache:
        runner: {type: script, script: {run: "echo cache-up >> ../order; exec sleep 1000"}}
      api:
        runner: {type: script, script: {run: "echo api-up >> ../order; exec sleep 1000"}}
        depends_on: [db, cache]
      web:
        runner: {type: script, script: {run: "echo web-up >> ../order; exec sleep 1000"}}
        depends_on: [api]
"""


async def test_start_in_dependency_order_stop_in_reverse(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, STACK)
    await client.add_source(project_dir, name="p", start=True)
    started = [(await events.expect("service_started")).fqn for _ in range(4)]
    assert set(started[:2]) == {"p:db", "p:cache"}
    assert started[2:] == ["p:api", "p:web"]

    await client.stop_source("p")
    stopped = []
    for _ in range(4):
        stopped.append((await events.expect("service_state_changed", where=lambda e: e.state == "stopped")).fqn)
    assert stopped.index("p:web") < stopped.index("p:api") < min(stopped.index("p:db"), stopped.index("p:cache"))


async def test_starting_one_service_pulls_in_its_dependencies(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, STACK)
    await client.add_source(project_dir, name="p")
    await client.start_service("p:api")
    states = {s.name: s.state for s in await client.list_services("p")}
    assert states == {"db": "running", "cache": "running", "api": "running", "web": "stopped"}


async def test_dependency_waits_for_health(client: DaemonClient, events: Events, project_dir: Path) -> None:
    """A dependency with a health check must be healthy before its dependents start."""
    write_project(project_dir, """
        version: "1"
        services:
          db:
            runner: {type: script, script: {run: "sleep 0.5; touch ready; exec sleep 1000"}}
            rollout: {type: recreate, recreate: {ports: {}}}
            healthcheck: {type: cmd, cmd: {command: "test -f ready", interval: 0.1s, retries: 1}}
          app:
            runner: {type: script, script: {run: "test -f ready && exec sleep 1000 || exit 9"}}
            depends_on: [db]
    """)
    await client.add_source(project_dir, name="p", start=True)
    healthy = await events.expect("service_health_changed", "p:db", where=lambda e: e.healthy)
    app_started = await events.expect("service_started", "p:app")
    assert app_started.seq > healthy.seq
    assert (await client.get_service_status("p:app")).state == "running"


def test_cycle_is_refused_with_a_clear_error(daemon, project_dir: Path) -> None:
    write_project(project_dir, """
        version: "1"
        services:
          a: {runner: {type: script, script: {run: "sleep 1"}}, depends_on: [b]}
          b: {runner: {type: script, script: {run: "sleep 1"}}, depends_on: [c]}
          c: {runner: {type: script, script: {run: "sleep 1"}}, depends_on: [a]}
    """)
    result = run_cli("up", str(project_dir))
    assert result.returncode != 0
    assert "Circular dependency" in result.stderr
    assert "hive.yaml" in result.stderr
    assert "Traceback" not in result.stderr


async def test_reload_restarts_only_the_changed_service(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, STACK.replace("depends_on: [db, cache]", "depends_on: [db, cache]\n        environment: {static: {MODE: one}}"))
    await client.add_source(project_dir, name="p", start=True)
    before = {s.name: s.pid for s in await client.list_services("p")}
    write_project(project_dir, STACK.replace("depends_on: [db, cache]", "depends_on: [db, cache]\n        environment: {static: {MODE: two}}"))
    dry = await client.reload_source("p", dry_run=True)
    assert (dry.restart, dry.start, dry.stop, dry.applied) == (["p:api"], [], [], False)
    plan = await client.reload_source("p")
    assert plan.restart == ["p:api"]
    assert plan.applied
    await events.expect("service_started", "p:api", where=lambda e: e.pid != before["api"])
    after = {s.name: s.pid for s in await client.list_services("p")}
    assert after["api"] != before["api"]
    assert {k: v for k, v in after.items() if k != "api"} == {k: v for k, v in before.items() if k != "api"}


async def test_reload_adds_and_removes(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, STACK)
    await client.add_source(project_dir, name="p", start=True)
    write_project(project_dir, """
        version: "1"
        services:
          db:
            runner: {type: script, script: {run: "echo db-up >> ../order; exec sleep 1000"}}
          api:
            runner: {type: script, script: {run: "echo api-up >> ../order; exec sleep 1000"}}
            depends_on: [db]
          web:
            runner: {type: script, script: {run: "echo web-up >> ../order; exec sleep 1000"}}
            depends_on: [api]
          extra:
            runner: {type: script, script: {run: "sleep 1000"}}
    """)
    plan = await client.reload_source("p")
    assert plan.start == ["p:extra"]
    assert plan.stop == ["p:cache"]
    assert plan.restart == ["p:api"]
    await events.expect("service_started", "p:extra")
    names = {s.name for s in await client.list_services("p")}
    assert names == {"db", "api", "web", "extra"}


async def test_reload_with_an_invalid_file_keeps_running(client: DaemonClient, events: Events, project_dir: Path) -> None:
    write_project(project_dir, STACK)
    await client.add_source(project_dir, name="p", start=True)
    before = {s.name: s.pid for s in await client.list_services("p")}
    (project_dir / "hive.yaml").write_text('version: "1"\nservices:\n  web:\n    runner: {type: script}\n')
    with pytest.raises(InvalidRequest, match=r"hive.yaml:\d+: services.web.runner"):
        await client.reload_source("p")
    assert {s.name: s.pid for s in await client.list_services("p")} == before
