"""A provider in one source, consumers in others: wait for health, variables, secrets."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, ServiceFailed, ServiceInfo
from tests.supervision.conftest import Events
from tests.support import free_port, run_cli, wait_until, write_project

pytestmark = pytest.mark.anyio


def _provider(directory: Path, port: int) -> Path:
    return write_project(directory, f"""
        version: "1"
        services:
          pg:
            runner: {{type: script, script: {{run: "python3 -m http.server {{{{runtime.port.pg}}}} --bind 127.0.0.1"}}}}
            rollout: {{type: recreate, recreate: {{ports: {{pg: {port}}}}}}}
            healthcheck: {{type: tcp, tcp: {{port: "{{{{runtime.port.pg}}}}", interval: 0.1s}}}}
            expose:
              name: database
              secret: s3cret
              vars: {{DB_HOST: "127.0.0.1", DB_PORT: "{{{{runtime.port.pg}}}}"}}
    """)


def _consumer(directory: Path, secret: str | None) -> Path:
    secret_entry = f"secret: {secret}, " if secret is not None else ""
    return write_project(directory, f"""
        version: "1"
        services:
          api:
            runner:
              type: script
              script:
                run: 'env | grep -E "^(DB_HOST|DATABASE_PORT|DB_PORT|URL)=" | sort > seen.env; exec sleep 1000'
            environment:
              static: {{URL: "postgres://127.0.0.1:{{{{uses.db.port.pg}}}}/app"}}
            uses:
              - {{name: database, {secret_entry}as: db, vars: {{DB_PORT: DATABASE_PORT}}}}
    """)


async def _status_until(
    client: DaemonClient, fqn: str, condition: Callable[[ServiceInfo], bool], timeout: float = 15.0
) -> ServiceInfo:
    """Re-read a service's status until ``condition`` holds (no event marks a wait)."""
    delay = 0.01
    with anyio.fail_after(timeout):
        while True:
            status = await client.get_service_status(fqn)
            if condition(status):
                return status
            await anyio.sleep(delay)  # wait-ok: re-check interval under a deadline
            delay = min(delay * 2, 0.2)


async def test_consumer_waits_for_the_healthy_provider(
    client: DaemonClient, events: Events, home: Path
) -> None:
    port = free_port()
    _consumer(home / "app", "s3cret")
    _provider(home / "db", port)
    await client.add_source(home / "app", name="app")
    async with anyio.create_task_group() as tg:
        # The consumer starts first and waits: its provider does not even exist yet.
        tg.start_soon(client.start_source, "app")
        waiting = await _status_until(
            client, "app:api", lambda s: "waiting for exposed service 'database'" in (s.last_error or "")
        )
        assert waiting.pid is None
        await client.add_source(home / "db", name="db", start=True)
    healthy = await events.expect("service_health_changed", "db:pg", where=lambda e: e.healthy)
    started = await events.expect("service_started", "app:api")
    assert started.seq > healthy.seq

    seen = home / "app" / "seen.env"
    await wait_until(lambda: seen.exists() and "URL=" in seen.read_text(), what="the consumer's environment")
    # The provider's variables (DB_PORT renamed), and its port through {{uses.db.port.pg}}.
    assert seen.read_text().splitlines() == [
        f"DATABASE_PORT={port}",
        "DB_HOST=127.0.0.1",
        f"URL=postgres://127.0.0.1:{port}/app",
    ]

    exposed = await client.list_exposed()
    assert [(e.name, e.source, e.service, e.has_secret, e.vars, e.consumers, e.healthy) for e in exposed] == [
        ("database", "db", "pg", True, ["DB_HOST", "DB_PORT"], ["app:api"], True)
    ]


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("wrong", "Invalid secret for exposed service 'database'"),
        (None, "Exposed service 'database' requires a secret"),
    ],
)
async def test_a_bad_secret_blocks_the_start(
    client: DaemonClient, events: Events, home: Path, secret: str | None, message: str
) -> None:
    _provider(home / "db", free_port())
    await client.add_source(home / "db", name="db", start=True)
    _consumer(home / "app", secret)
    await client.add_source(home / "app", name="app")
    with pytest.raises(ServiceFailed, match=message):
        await client.start_source("app")
    status = await client.get_service_status("app:api")
    assert status.state == "crashed"
    assert status.pid is None
    assert message in (status.last_error or "")
    assert not (home / "app" / "seen.env").exists()


async def test_the_secret_is_kept_only_as_a_hash(client: DaemonClient, home: Path) -> None:
    database = home / "providers.db"
    await client.add_source(database, name="providers")
    await client.create_service("providers", "cache", {
        "runner": {"type": "script", "script": {"run": "exec sleep 1000"}},
        "expose": {"name": "cache", "secret": "plain-secret", "vars": {"CACHE": "on"}},
    }, start=False)
    with sqlite3.connect(database) as db:
        (stored,) = db.execute("SELECT config FROM services WHERE name = 'cache'").fetchone()
    assert "plain-secret" not in stored
    assert "scrypt$" in stored
    assert "plain-secret" not in (home / "state.db").read_bytes().decode(errors="replace")


async def test_expose_names_are_unique_across_sources(client: DaemonClient, home: Path) -> None:
    from hive_client import AlreadyExists

    _provider(home / "one", free_port())
    _provider(home / "two", free_port())
    await client.add_source(home / "one", name="one")
    with pytest.raises(AlreadyExists, match="expose name 'database' conflicts"):
        await client.add_source(home / "two", name="two")


def test_exposed_cli(daemon, home: Path) -> None:
    _provider(home / "db", free_port())
    assert run_cli("source", "add", str(home / "db"), "--name", "db").returncode == 0
    result = run_cli("exposed")
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PROVIDER", "SECRET", "VARS", "HEALTHY", "USED", "BY"]
    assert row.split()[:3] == ["database", "db:pg", "yes"]
