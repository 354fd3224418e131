"""A SQLite source driven through hive_client, on a real database file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from hive_client import AlreadyExists, DaemonClient, InvalidRequest, NotFound
from tests.support import pids_of_service, start_daemon, wait_for

pytestmark = pytest.mark.anyio


async def test_create_survive_restart_delete(hive_env: Path) -> None:
    database = hive_env / "apps.db"
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            added = await client.add_source(database, name="apps")
            assert added.name == "apps"
            assert added.services == 0
            await client.create_service("apps", "worker", {
                "runner": {"type": "script", "script": {"run": "exec sleep 1000"}},
                "environment": {"static": {"ROLE": "worker"}},
                "restart": "on-failure",
            })
            # The row is in the file, in hive.yaml's shape.
            with sqlite3.connect(database) as db:
                (config,) = db.execute("SELECT config FROM services WHERE name = 'worker'").fetchone()
            assert json.loads(config)["environment"]["static"]["ROLE"] == "worker"
            wait_for(lambda: pids_of_service("apps:worker"), what="the worker to run")
            pid = (await client.get_service_status("apps:worker")).pid
    finally:
        daemon.stop()
    assert pids_of_service("apps:worker") == []

    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            sources = {s.name: s for s in await client.list_sources()}
            assert sources["apps"].source_type == "sqlite"
            wait_for(lambda: pids_of_service("apps:worker"), what="the worker to run again")
            info = await client.get_service_status("apps:worker")
            assert info.state == "running"
            assert info.pid != pid

            await client.update_service("apps:worker", {"environment": {"static": {"ROLE": "boss"}}})
            wait_for(lambda: pids_of_service("apps:worker") and
                     _env(pids_of_service("apps:worker")[0]).get("ROLE") == "boss",
                     what="the worker to restart with the new environment")

            await client.delete_service("apps:worker")
            with pytest.raises(NotFound):
                await client.get_service_status("apps:worker")
        with sqlite3.connect(database) as db:
            assert db.execute("SELECT count(*) FROM services").fetchone() == (0,)
        assert pids_of_service("apps:worker") == []
    finally:
        daemon.stop()


def _env(pid: int) -> dict[str, str]:
    import psutil

    return psutil.Process(pid).environ()


async def test_invalid_service_config_is_refused_and_not_written(hive_env: Path) -> None:
    database = hive_env / "apps.db"
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            await client.add_source(database, name="apps")
            with pytest.raises(InvalidRequest, match="run"):
                await client.create_service("apps", "bad", {"runner": {"type": "script", "script": {}}})
            with pytest.raises(InvalidRequest, match="must start with a lowercase letter"):
                await client.create_service("apps", "Bad", {"runner": {"type": "script", "script": {"run": "x"}}})
            with pytest.raises(InvalidRequest, match="Unknown dependency"):
                await client.create_service("apps", "lonely", {
                    "runner": {"type": "script", "script": {"run": "sleep 1"}}, "depends_on": ["ghost"]})
            await client.create_service("apps", "ok", {"runner": {"type": "script", "script": {"run": "sleep 1000"}}},
                                        start=False)
            with pytest.raises(AlreadyExists):
                await client.create_service("apps", "ok", {"runner": {"type": "script", "script": {"run": "sleep 1"}}})
        with sqlite3.connect(database) as db:
            assert [r[0] for r in db.execute("SELECT name FROM services")] == ["ok"]
    finally:
        daemon.stop()


async def test_services_cannot_be_created_in_a_yaml_source(hive_env: Path) -> None:
    from tests.support import write_project

    write_project(hive_env / "proj", 'version: "1"\nservices: {}\n')
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            await client.add_source(hive_env / "proj", name="proj")
            with pytest.raises(InvalidRequest, match="yaml source"):
                await client.create_service("proj", "x", {"runner": {"type": "script", "script": {"run": "x"}}})
    finally:
        daemon.stop()


async def test_default_source_in_hive_home(hive_env: Path) -> None:
    from tests.support import write_project

    write_project(hive_env, """
        version: "1"
        services:
          tick:
            runner: {type: script, script: {run: "exec sleep 1000"}}
    """)
    daemon = start_daemon(hive_env)
    try:
        async with DaemonClient(daemon.socket) as client:
            sources = {s.name: s for s in await client.list_sources()}
            assert sources["default"].path == str(hive_env)
            await client.start_source("default")
            assert (await client.get_service_status("default:tick")).state == "running"
            with pytest.raises(InvalidRequest, match="default source"):
                await client.remove_source("default")
    finally:
        daemon.stop()
