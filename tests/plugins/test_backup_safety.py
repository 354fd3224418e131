"""The backup plugin leaves what is not its own, keeps crash snapshots apart, lists a
damaged archive, restores instance counts and SQLite sources the daemon holds open, and
takes a new interval on reload. Real daemons, real archives."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import tarfile
from pathlib import Path

import anyio
import pytest

from hive_client import AsyncStream, DaemonClient, DaemonEvent, PluginNotice, ServiceFailed
from tests.plugins.conftest import StartWith
from tests.plugins.test_backup import SLEEPER, _json, _settings, _stack
from tests.support import run_cli, write_project

pytestmark = pytest.mark.anyio


async def _next_backup(notices: AsyncStream[DaemonEvent], reason: str) -> PluginNotice:
    with anyio.fail_after(60):
        async for notice in notices:
            if isinstance(notice, PluginNotice) and notice.kind == "backup_taken" \
                    and notice.data["reason"] == reason:
                return notice
    raise AssertionError("the event stream ended")


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_retention_deletes_only_its_own_archives(start_with: StartWith, hive_env: Path) -> None:
    backups = hive_env / "backups"
    backups.mkdir(mode=0o700)
    users = backups / "photos.tar.gz"
    users.write_bytes(_tar_gz({"photo.jpg": b"\xff\xd8"}))
    look_alike = backups / "20200101T000000Z.tar.gz"  # the id pattern, but no manifest of ours
    look_alike.write_bytes(_tar_gz({"notes.txt": b"mine"}))
    start_with(_settings(keep=1))
    for _ in range(3):
        _json("backup", "now")
    assert users.exists() and look_alike.exists()
    listed = _json("backup", "list")
    assert isinstance(listed, list)
    assert [b["reason"] for b in listed if "error" not in b] == ["manual"]
    assert len(list(backups.glob("*.sha256"))) == 1


async def test_crash_snapshots_keep_apart_from_periodic_ones(start_with: StartWith, project_dir: Path) -> None:
    daemon = start_with(_settings(on_crash=True, crash_debounce=0.1, keep=2, keep_crash=1))
    write_project(project_dir, """
        version: "1"
        services:
          flaky:
            runner: {type: script, script: {run: "exit 3"}}
            restart: never
        """)
    manual = [_json("backup", "now")["id"] for _ in range(2)]  # type: ignore[index]
    async with DaemonClient(daemon.socket, timeout=60) as client, \
            client.subscribe_events(kinds=["plugin_notice"]) as notices:
        await client.add_source(project_dir, name="proj", start=True)
        first = await _next_backup(notices, "crash")
        with contextlib.suppress(ServiceFailed):  # it exits at once: a crash again
            await client.start_service("proj:flaky")
        second = await _next_backup(notices, "crash")
    listed = _json("backup", "list")
    assert isinstance(listed, list)
    assert sorted((b["id"], b["reason"]) for b in listed) == sorted(
        [(manual[0], "manual"), (manual[1], "manual"), (second.data["id"], "crash")])
    assert first.data["id"] not in [b["id"] for b in listed]


async def test_a_truncated_archive_is_listed_as_damaged(start_with: StartWith, hive_env: Path) -> None:
    start_with(_settings())
    intact, truncated = (_json("backup", "now")["id"] for _ in range(2))  # type: ignore[index]
    path = hive_env / "backups" / f"{truncated}.tar.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    listed = run_cli("backup", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    items = {b["id"]: b for b in json.loads(listed.stdout)}
    assert "error" not in items[intact] and items[intact]["reason"] == "manual"
    assert items[truncated]["error"].startswith("damaged")
    table = run_cli("backup", "list")
    assert table.returncode == 0 and "damaged" in table.stdout


async def test_restore_brings_back_instance_counts(start_with: StartWith, project_dir: Path,
                                                   hive_env: Path) -> None:
    daemon = start_with(_settings())
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await _stack(client, project_dir, hive_env)
        await client.scale_service("proj:web", 3)
        await client.scale_service("db:job", 2)
        taken = _json("backup", "now")["id"]  # type: ignore[index]
        await client.scale_service("proj:web", 1)
        await client.delete_service("db:job")
        restored = _json("backup", "restore", taken)
        assert isinstance(restored, dict)
        assert "scale proj:web to 3" in restored["plan"] and "scale db:job to 2" in restored["plan"]
        counts = {s.fqn: s.instances for s in await client.list_services() if "#" not in s.fqn}
        assert counts == {"proj:web": 3, "db:job": 2, "db:other": 1}


async def test_a_new_interval_applies_on_reload(start_with: StartWith, hive_env: Path) -> None:
    daemon = start_with(_settings(interval=3600.0))
    _json("backup", "now")  # the plugin is up and its schedule set (a reload before would start it anew)
    async with DaemonClient(daemon.socket, timeout=60) as client, \
            client.subscribe_events(kinds=["plugin_notice"]) as notices:
        (hive_env / "config.toml").write_text(_settings(interval=0.2))
        await client.reload()
        await _next_backup(notices, "scheduled")


def _names(database: Path) -> list[str]:
    connection = sqlite3.connect(database)
    try:
        return [row[0] for row in connection.execute("SELECT name FROM services ORDER BY name")]
    finally:
        connection.close()


async def test_a_deleted_sqlite_source_the_daemon_holds_keeps_later_writes(
        start_with: StartWith, project_dir: Path, hive_env: Path) -> None:
    daemon = start_with(_settings())
    database = hive_env / "data.db"
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await _stack(client, project_dir, hive_env)
        taken = _json("backup", "now")["id"]  # type: ignore[index]
        await client.create_service("db", "newer", SLEEPER)  # after the snapshot: only the daemon's copy has it
        database.unlink()
        restored = _json("backup", "restore", taken)
        assert isinstance(restored, dict)
        assert f"write {database} from the daemon's open copy (source db)" in restored["plan"]
        await client.create_service("db", "later", SLEEPER)
        assert _names(database) == ["job", "later", "newer", "other"]

        database.unlink()  # deleted again, and written to before any restore
        await client.create_service("db", "last", SLEEPER)
        assert _names(database) == ["job", "last", "later", "newer", "other"]
