"""The backup plugin through `hive backup`: snapshot, delete a source and a SQLite service,
restore, and everything is back; damaged archives are refused; crashes and retention."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import anyio
import pytest

from hive_client import DaemonClient, PluginNotice
from tests.plugins.conftest import StartWith
from tests.support import run_cli, write_project

pytestmark = pytest.mark.anyio

SLEEPER = {"runner": {"type": "script", "script": {"run": "exec sleep 1000"}}}
PROJECT = """
    version: "1"
    services:
      web:
        runner: {type: script, script: {run: "exec sleep 1000"}}
"""


def _settings(**extra: object) -> str:
    values = {"interval": 3600.0, "on_crash": False, **extra}
    # No scope: a restore adds sources and creates services, and the plugin's default is admin.
    return '[plugins.backup]\n[plugins.backup.settings]\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def _json(*args: str) -> object:
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def _stack(client: DaemonClient, project_dir: Path, home: Path) -> None:
    write_project(project_dir, PROJECT)
    await client.add_source(project_dir, name="proj", start=True)
    await client.add_source(home / "data.db", name="db")
    await client.create_service("db", "job", SLEEPER, start=True)
    await client.create_service("db", "other", SLEEPER, start=True)


async def test_snapshot_delete_restore(start_with: StartWith, project_dir: Path, hive_env: Path) -> None:
    daemon = start_with(_settings())  # no scope: the plugin's default_scope (admin) applies
    shown = {p["name"]: p for p in _json("plugins")}["backup"]  # type: ignore[index]
    assert (shown["scope"], shown["scope_from"]) == ("admin", "plugin")
    assert "admin (plugin default)" in run_cli("plugins").stdout
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await _stack(client, project_dir, hive_env)
        original = (project_dir / "hive.yaml").read_text()
        taken = _json("backup", "now")
        assert (taken["sources"], taken["services"]) == (2, 3)
        assert [b["id"] for b in _json("backup", "list")] == [taken["id"]]
        assert _json("backup", "verify", taken["id"])["ok"] is True

        # Lose things: a project (its file too) and a SQLite service.
        await client.remove_source("proj")
        (project_dir / "hive.yaml").unlink()
        await client.delete_service("db:job")

        plan = _json("backup", "restore", taken["id"], "--dry-run")
        assert plan["applied"] is False
        assert plan["plan"] == [  # sources and services in name order
            "create service db:job",
            f"write {project_dir / 'hive.yaml'} (source proj)",
            f"add source proj ({project_dir})",
            "start db:job",
            "start proj:web",
        ], "\n".join(plan["plan"])
        assert not (project_dir / "hive.yaml").exists()  # a dry run changes nothing

        restored = run_cli("backup", "restore", taken["id"])
        assert restored.returncode == 0, restored.stderr
        assert "restored from backup" in restored.stdout and "create service db:job" in restored.stdout
        assert (project_dir / "hive.yaml").read_text() == original
        states = {s.fqn: s.state for s in await client.list_services()}
        assert states == {"proj:web": "running", "db:job": "running", "db:other": "running"}
        again = _json("backup", "restore", taken["id"], "--dry-run")
        assert again["plan"] == []  # everything is back


async def test_a_restored_source_keeps_its_owner_and_starts_nothing_of_it(start_with: StartWith,
                                                                         project_dir: Path) -> None:
    """A source with an owner (a plugin, such as the fleet) is its owner's to start: a
    restore adds it back owned, and starts none of its services (they may run elsewhere)."""
    daemon = start_with(_settings())
    async with DaemonClient(daemon.socket, timeout=60) as client:
        write_project(project_dir, PROJECT)
        await client.add_source(project_dir, name="proj", start=True, owner="fleet")
        taken = _json("backup", "now")
        await client.remove_source("proj")

        plan = _json("backup", "restore", taken["id"], "--dry-run")
        assert plan["plan"] == [f"add source proj ({project_dir}), owned by fleet"], plan["plan"]
        restored = run_cli("backup", "restore", taken["id"])
        assert restored.returncode == 0, restored.stderr
        [source] = [s for s in await client.list_sources() if s.name == "proj"]
        assert source.owner == "fleet"
        assert {s.fqn: s.state for s in await client.list_services()} == {"proj:web": "stopped"}


async def test_an_explicit_scope_wins(start_with: StartWith, project_dir: Path, hive_env: Path) -> None:
    # scope = "operate" in config.toml beats the plugin's admin default: the restore is refused.
    operate = _settings().replace("[plugins.backup]\n", '[plugins.backup]\nscope = "operate"\n')
    daemon = start_with(operate)
    shown = {p["name"]: p for p in _json("plugins")}["backup"]  # type: ignore[index]
    assert (shown["scope"], shown["scope_from"]) == ("operate", "config")
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await _stack(client, project_dir, hive_env)
        taken = _json("backup", "now")["id"]  # type: ignore[index]
        await client.delete_service("db:job")
        refused = run_cli("backup", "restore", taken)
        assert refused.returncode != 0
        assert "restore stopped at `create service db:job`" in refused.stderr, refused.stderr
        assert "FORBIDDEN" in refused.stderr and "[plugins.backup]" in refused.stderr
        assert "db:job" not in {s.fqn for s in await client.list_services()}

        # Without the key (a reload), the default applies to the running plugin at once.
        (hive_env / "config.toml").write_text(_settings())
        reloaded = run_cli("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        shown = {p["name"]: p for p in _json("plugins")}["backup"]  # type: ignore[index]
        assert (shown["scope"], shown["scope_from"]) == ("admin", "plugin")
        restored = run_cli("backup", "restore", taken)
        assert restored.returncode == 0, restored.stderr
        assert (await client.get_service_status("db:job")).state == "running"


def _rewrite(archive: Path, member: str, data: bytes) -> None:
    """Replace one member and re-sign the archive (what an attacker or a bad copy might do)."""
    with tarfile.open(archive, "r:gz") as source:
        members = {m.name: source.extractfile(m).read() for m in source.getmembers()}  # type: ignore[union-attr]
    members[member] = data
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as target:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            target.addfile(info, io.BytesIO(content))
    archive.write_bytes(buffer.getvalue())
    sidecar = archive.with_name(archive.name.removesuffix(".tar.gz") + ".sha256")
    sidecar.write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()}  {archive.name}\n")


async def test_damaged_archives_are_refused(start_with: StartWith, project_dir: Path, hive_env: Path) -> None:
    daemon = start_with(_settings())
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await _stack(client, project_dir, hive_env)
        backups = hive_env / "backups"
        truncated, edited, resigned = (_json("backup", "now")["id"] for _ in range(3))

        path = backups / f"{truncated}.tar.gz"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        verify = run_cli("backup", "verify", truncated)
        assert verify.returncode == 1
        assert "is damaged" in verify.stderr and "SHA-256" in verify.stderr and "cannot be read" in verify.stderr

        path = backups / f"{edited}.tar.gz"
        data = bytearray(gzip.decompress(path.read_bytes()))
        data[600] ^= 0xFF
        path.write_bytes(gzip.compress(bytes(data)))
        assert "SHA-256" in run_cli("backup", "verify", edited).stderr

        _rewrite(backups / f"{resigned}.tar.gz", "sources/proj/hive.yaml", b"version: '1'\nservices: {}\n")
        verify = run_cli("backup", "verify", resigned)
        assert verify.returncode == 1 and "sources/proj/hive.yaml does not match its checksum" in verify.stderr

        await client.remove_source("proj")
        for damaged in (truncated, edited, resigned):
            refused = run_cli("backup", "restore", damaged)
            assert refused.returncode != 0
            assert f"backup {damaged} is damaged, nothing restored" in refused.stderr
        assert "proj" not in [s.name for s in await client.list_sources()]


async def test_a_crash_triggers_one_backup_and_retention_keeps_n(start_with: StartWith, project_dir: Path) -> None:
    daemon = start_with(_settings(on_crash=True, crash_debounce=0.2, keep=2))
    write_project(project_dir, """
        version: "1"
        services:
          flaky:
            runner: {type: script, script: {run: "exit 3"}}
            restart: never
        """)
    async with DaemonClient(daemon.socket, timeout=60) as client, \
            client.subscribe_events(kinds=["plugin_notice"]) as notices:
        await client.add_source(project_dir, name="proj", start=True)
        with anyio.fail_after(60):
            async for notice in notices:
                assert isinstance(notice, PluginNotice)
                if notice.kind == "backup_taken":
                    assert notice.data["reason"] == "crash"
                    break
        for _ in range(3):
            _json("backup", "now")
        listed = _json("backup", "list")
        # keep=2 scheduled and manual ones; the crash snapshot is kept apart (keep_crash)
        assert [b["reason"] for b in listed] == ["manual", "manual", "crash"]
        assert len(list((project_dir.parent / "backups").glob("*.sha256"))) == 3


async def test_unknown_archive_and_plugin_not_running(start_with: StartWith) -> None:
    start_with(_settings())
    missing = run_cli("backup", "verify", "20200101T000000Z")
    assert missing.returncode != 0 and "no backup '20200101T000000Z'" in missing.stderr
    assert run_cli("plugins", "disable", "backup").returncode == 0
    down = run_cli("backup", "now")
    assert down.returncode != 0 and "plugin 'backup' is disabled, not running" in down.stderr


async def test_a_manifest_cannot_point_a_restore_elsewhere(start_with: StartWith, project_dir: Path,
                                                           hive_env: Path, tmp_path: Path) -> None:
    """A re-signed manifest whose restore_to names another file (outside the source, with
    ``..``, through a symlink, the daemon's own config) is refused and writes nothing."""
    daemon = start_with(_settings())
    async with DaemonClient(daemon.socket, timeout=60) as client:
        await _stack(client, project_dir, hive_env)
        archive_id = _json("backup", "now")["id"]
        await client.remove_source("proj")
        (project_dir / "hive.yaml").unlink()
        archive = hive_env / "backups" / f"{archive_id}.tar.gz"
        with tarfile.open(archive, "r:gz") as source:
            manifest = json.loads(source.extractfile("manifest.json").read())  # type: ignore[union-attr]
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (tmp_path / "link").symlink_to(elsewhere)
        (hive_env / "config.toml").rename(hive_env / "config.toml.kept")
        attempts = {
            str(elsewhere / ".bashrc"): "is not the source's own file",
            f"{project_dir}/../{project_dir.name}/hive.yaml": "without '..'",
            str(tmp_path / "link" / "hive.yaml"): "is a symlink or reached through one",
            str(hive_env / "config.toml"): "is one of the daemon's own files",
        }
        try:
            for target, why in attempts.items():
                entry = next(s for s in manifest["sources"] if s["name"] == "proj")
                entry["restore_to"] = target
                if why == "is a symlink or reached through one":
                    entry["path"] = str(Path(target).parent)  # the source "lives" there too
                elif why == "is one of the daemon's own files":
                    entry["path"] = target  # a source that is that one file
                else:
                    entry["path"] = str(project_dir)
                _rewrite(archive, "manifest.json", json.dumps(manifest).encode())
                refused = run_cli("backup", "restore", archive_id)
                assert refused.returncode != 0, target
                assert f"restore_to {target!r} " in refused.stderr and why in refused.stderr, refused.stderr
                assert "nothing restored" in refused.stderr
        finally:
            (hive_env / "config.toml.kept").rename(hive_env / "config.toml")
        assert not (elsewhere / ".bashrc").exists() and not (elsewhere / "hive.yaml").exists()
        assert not (project_dir / "hive.yaml").exists()
        assert "proj" not in [s.name for s in await client.list_sources()]


def _peak_rss(pid: int) -> int:
    """The process's RSS high-water mark (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


async def test_a_large_database_is_streamed_to_the_archive_not_held(start_with: StartWith,
                                                                   hive_env: Path) -> None:
    """A 64 MiB SQLite source (incompressible): the daemon's peak RSS grows by far less than
    the database (it used to hold the copy and the whole archive: twice the database)."""
    daemon = start_with(_settings())
    async with DaemonClient(daemon.socket, timeout=120) as client:
        await client.add_source(hive_env / "data.db", name="db")
        with sqlite3.connect(hive_env / "data.db") as db:
            db.execute("CREATE TABLE ballast (data BLOB)")
            db.executemany("INSERT INTO ballast VALUES (?)", ((os.urandom(1 << 20),) for _ in range(64)))
        before = _peak_rss(daemon.pid)
        taken = _json("backup", "now")
        grown = _peak_rss(daemon.pid) - before
        assert taken["size"] > 64 << 20  # type: ignore[index]
        assert grown < 16 << 20, f"peak RSS grew by {grown >> 20} MiB for a 64 MiB database"
        assert _json("backup", "verify", taken["id"])["ok"] is True  # type: ignore[index]
    assert not [p.name for p in (hive_env / "backups").iterdir() if p.name.startswith(".")]


def _ballast_digest(database: Path) -> str:
    digest = hashlib.sha256()
    with sqlite3.connect(database) as db:
        for (data,) in db.execute("SELECT data FROM ballast ORDER BY rowid"):
            digest.update(data)
    return digest.hexdigest()


async def test_a_large_database_is_restored_from_the_archive_as_a_stream(start_with: StartWith,
                                                                         hive_env: Path) -> None:
    """Restoring a 64 MiB SQLite source whose file and source are gone: the archive is
    checked and unpacked member by member to scratch files, the file written back from
    them; the daemon's peak RSS grows by far less than the database (a restore used to
    read the whole archive into memory)."""
    daemon = start_with(_settings())
    database = hive_env / "data.db"
    async with DaemonClient(daemon.socket, timeout=120) as client:
        await client.add_source(database, name="db")
        await client.create_service("db", "job", SLEEPER, start=False)
        with sqlite3.connect(database) as db:
            db.execute("CREATE TABLE ballast (data BLOB)")
            db.executemany("INSERT INTO ballast VALUES (?)", ((os.urandom(1 << 20),) for _ in range(64)))
        taken = _json("backup", "now")
        await client.remove_source("db")
        original = _ballast_digest(database)
        database.unlink()
        before = _peak_rss(daemon.pid)
        restored = run_cli("backup", "restore", taken["id"])  # type: ignore[index]
        grown = _peak_rss(daemon.pid) - before
        assert restored.returncode == 0, restored.stderr
        assert f"write {database}" in restored.stdout and "add source db" in restored.stdout
        assert _ballast_digest(database) == original
        assert [s.fqn for s in await client.list_services()] == ["db:job"]
        assert grown < 16 << 20, f"peak RSS grew by {grown >> 20} MiB restoring a 64 MiB database"
    assert not [p.name for p in (hive_env / "backups").iterdir() if p.name.startswith(".")]


async def test_leftovers_of_a_killed_backup_are_removed_at_start(start_with: StartWith, hive_env: Path) -> None:
    """A backup killed while writing leaves its temporary files; the next start removes
    them, and only them (anything else in the directory is the user's)."""
    backups = hive_env / "backups"
    backups.mkdir(mode=0o700)
    leftovers = [backups / ".20261207T101500Z.tar.gz.tmp", backups / ".20261207T101500Z-2.sha256.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    scratch = backups / ".scratch-1a2b3c"
    scratch.mkdir()
    (scratch / "source.db").write_bytes(b"half a copy")
    users = [backups / ".notes.tmp", backups / "mine.tar.gz"]
    for path in users:
        path.write_bytes(b"the user's")
    start_with(_settings())
    assert _json("backup", "list") == []  # the plugin is up (its start ran)
    assert [p for p in [*leftovers, scratch] if p.exists()] == []
    assert all(p.read_bytes() == b"the user's" for p in users)
