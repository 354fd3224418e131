"""The backup core plugin: snapshots of the daemon's sources and services, and restores.

A snapshot is one archive ``<directory>/<id>.tar.gz`` (the id is its UTC time,
``20261129T193012Z``) with ``manifest.json`` and the files: each YAML source's
``hive.yaml``, each SQLite source's database (copied with SQLite's online backup, so a
write in progress never tears it). The manifest lists the sources (name, type, path,
enabled), every service's desired state and instance count, and the SHA-256 of each file;
``<id>.sha256`` beside the archive holds the archive's own (``sha256sum`` format). Both are
written to a temporary name and renamed, so a crash leaves no half archive. A database is
copied to a scratch directory beside the archives and streamed from there into the archive,
which is written to disk as it is compressed: the plugin never holds a database, or an
archive, in memory. Temporary files a failed snapshot leaves are removed at once, those of
a killed daemon when the plugin next starts (only names of its own: ``.<archive>.tmp`` and
``.scratch-*``).

Snapshots are taken every ``interval`` (an hour; a reload that changes it applies at
once), after a service crash (once per ``crash_debounce`` window, however many crash), and
on ``hive backup now``. Retention keeps the newest ``keep`` scheduled and manual snapshots
and, apart, the newest ``keep_crash`` crash snapshots, so a crash loop never pushes out
the periodic ones. It only ever deletes its own archives: a name of the id pattern and a
``manifest.json`` inside whose ``id`` is that name; anything else in the directory is the
user's and is left alone (and not listed).

``hive backup verify ID`` recomputes every checksum; ``hive backup restore ID`` verifies
first and refuses a damaged archive, then shows its plan (``--dry-run`` stops there) and
puts back what is missing: a deleted ``hive.yaml`` or database file, an unregistered
source, a deleted SQLite service, starts what was running and scales back up what has
fewer instances than it had. What exists is left as it is: a restore adds back, it never
overwrites. A registered SQLite source whose file was deleted is still open in the
daemon, whose copy is newer than any archive: the restore has the daemon write that copy
back (a source reload) instead of an archived one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.to_thread
import msgspec

from hive.config import CONFIG_FILENAMES, find_config_file
from hive.plugin import CorePlugin, DaemonClient, DaemonEvent, PluginCallError
from hive_client import PluginConfigured, ServiceCrashed, __version__

__all__ = ["Backup", "BackupSettings"]

FORMAT = 1
ARCHIVE_NAME = re.compile(r"^\d{8}T\d{6}Z(-\d+)?\.tar\.gz$")
# What a snapshot writes before it is complete: an archive or its sidecar under a temporary
# name, and the scratch directory that holds database copies.
LEFTOVER_NAME = re.compile(r"^\.(\d{8}T\d{6}Z(-\d+)?\.(tar\.gz|sha256)\.tmp|scratch-[A-Za-z0-9_]+)$")
# What a damaged archive raises when read (a truncated gzip stream: EOFError or zlib.error).
DAMAGED = (OSError, EOFError, zlib.error, tarfile.TarError, ValueError, KeyError)
log = logging.getLogger("hive.plugins.backup")


class BackupSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    directory: str = ""  # default: $HIVE_HOME/backups
    interval: float = 3600.0
    keep: int = 24
    keep_crash: int = 6
    on_crash: bool = True
    crash_debounce: float = 30.0

    def __post_init__(self) -> None:
        if self.interval < 0.1:
            raise ValueError("interval must be at least 0.1 s")
        if self.keep < 1 or self.keep_crash < 1:
            raise ValueError("keep and keep_crash must be at least 1")
        if self.crash_debounce < 0:
            raise ValueError("crash_debounce must not be negative")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_database(path: str, target: Path) -> str:
    """A consistent copy of a SQLite database at ``target`` (the online backup API, page by
    page: never the whole database in memory); the copy's SHA-256."""
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
    finally:
        source.close()
    return _file_sha256(target)


def _remove_leftovers(directory: Path) -> list[str]:
    """Remove what snapshots cut short left in ``directory`` (names of our own only)."""
    removed = []
    for path in directory.iterdir():
        if LEFTOVER_NAME.match(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _services_of(database: Path) -> list[tuple[str, Any]]:
    """(name, config) of every service in a SQLite source's database (a scratch copy)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = connection.execute("SELECT name, config FROM services ORDER BY name").fetchall()
    finally:
        connection.close()
    return [(str(name), json.loads(config)) for name, config in rows]


class Member(NamedTuple):
    """A member of an archive as read: its SHA-256, and where it was unpacked (if it was)."""

    sha256: str
    file: Path | None


def _read_archive(path: Path, scratch: Path | None) -> dict[str, Member]:
    """Every member of an archive by name, read as one stream (TarError, EOFError, OSError
    if it is damaged): hashed chunk by chunk, and written to a file in ``scratch`` when one
    is given (a restore), so no member is ever held in memory whole."""
    members: dict[str, Member] = {}
    with tarfile.open(path, mode="r|gz") as archive:
        for info in archive:
            handle = archive.extractfile(info)
            digest = hashlib.sha256()
            target = scratch / f"{len(members)}.member" if scratch is not None else None
            with open(target, "wb") if target is not None else contextlib.nullcontext() as out:
                while handle is not None and (chunk := handle.read(1 << 20)):
                    digest.update(chunk)
                    if out is not None:
                        out.write(chunk)
            members[info.name] = Member(digest.hexdigest(), target)
    return members


def _write_atomically(path: Path, data: bytes | Path) -> None:
    """``data`` (or the file it names, copied as a stream) at ``path``, whole or not at all."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            if isinstance(data, Path):
                with open(data, "rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 20)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _restore_target(source: dict[str, Any], registered: str | None, kept: tuple[Path, ...]) -> Path:
    """Where a source's file may be written back: the source's own file (its SQLite
    database; its hive.yaml, directly in its directory), the source's registered path
    winning over the manifest's. An absolute path without ``..``, not a symlink nor
    reached through one, none of the daemon's own files (``kept``: its config, state,
    logs and backups): a manifest can name no other file (PluginCallError)."""
    name, declared = source["name"], str(source["restore_to"])
    target, root = Path(declared), Path(registered or source["path"])
    problem = ""
    if not target.is_absolute() or not root.is_absolute() or ".." in target.parts or ".." in root.parts:
        problem = "is not an absolute path without '..'"
    elif target != root and not (target.parent == root and target.name in CONFIG_FILENAMES):
        problem = f"is not the source's own file (its path is {root})"
    elif target.is_symlink() or target.parent.resolve() != target.parent:
        problem = "is a symlink or reached through one"
    elif any(target.is_relative_to(own) or (target.parent == own.parent and target.name.startswith(own.name + "-"))
             for own in kept):
        problem = "is one of the daemon's own files"
    if problem:
        raise PluginCallError(f"source {name}: restore_to {declared!r} {problem}; nothing restored")
    return target


class Backup(CorePlugin[BackupSettings]):
    name = "backup"
    version = "1.0.0"
    Settings = BackupSettings
    # Snapshots and restores write files (and a restore adds sources): admin only.
    call_scopes = {"list": "read", "verify": "read"}
    default_scope = "admin"  # a restore adds sources and creates services

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        home = (await client.status()).home or "."
        self.home = Path(home)
        self.directory = Path(self.settings.directory or Path(home) / "backups")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        removed = await anyio.to_thread.run_sync(_remove_leftovers, self.directory)
        if removed:
            log.warning("removed what a backup cut short left in %s: %s", self.directory, ", ".join(removed))
        self._crashed = False
        self._wake = anyio.Event()  # a crash or new settings
        self._lock = anyio.Lock()
        self._kinds: dict[tuple[str, int, int], str | None] = {}  # (name, mtime, size) → reason

    async def on_event(self, event: DaemonEvent) -> None:
        if isinstance(event, ServiceCrashed) and self.settings.on_crash:
            self._crashed = True
            self._wake.set()
        elif isinstance(event, PluginConfigured):
            self._wake.set()  # the interval may have changed: the next due time with it

    async def run(self) -> None:
        last = anyio.current_time()  # of the last scheduled snapshot
        while True:
            with anyio.move_on_after(max(0.0, last + self.settings.interval - anyio.current_time())):
                await self._wake.wait()
            self._wake = anyio.Event()
            if self._crashed:
                await anyio.sleep(self.settings.crash_debounce)  # the crashes of this window make one backup
                self._crashed = False
                reason = "crash"
            elif anyio.current_time() >= last + self.settings.interval:
                last = anyio.current_time()
                reason = "scheduled"
            else:
                continue  # new settings: wait again, for the new interval
            try:
                await self.snapshot(reason)
            except Exception as exc:
                log.exception("backup failed")
                await self.client.emit_event("backup_failed", f"{reason} backup failed: {exc}")

    # --- commands -------------------------------------------------------------------

    async def call(self, command: str, args: dict[str, Any]) -> Any:
        if command == "now":
            return await self.snapshot("manual")
        if command == "list":
            return await anyio.to_thread.run_sync(self._list)
        archive_id = str(args.get("id") or "")
        if command in ("verify", "restore") and not archive_id:
            raise PluginCallError(f"{command} needs an archive id (see `hive backup list`)")
        if command == "verify":
            problems = await anyio.to_thread.run_sync(self._verify, archive_id)
            return {"id": archive_id, "ok": not problems, "problems": problems}
        if command == "restore":
            return await self.restore(archive_id, dry_run=bool(args.get("dry_run")))
        raise PluginCallError(f"unknown command {command!r} (now, list, verify, restore)")

    # --- snapshot -------------------------------------------------------------------

    async def snapshot(self, reason: str) -> dict[str, Any]:
        async with self._lock:
            scratch = Path(await anyio.to_thread.run_sync(
                lambda: tempfile.mkdtemp(prefix=".scratch-", dir=self.directory)))
            try:
                info = await self._snapshot(reason, scratch)
            finally:
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))
        await self.client.emit_event("backup_taken", f"backup {info['id']} ({reason}): {info['sources']} sources, "
                                     f"{info['services']} services", data=info)
        return info

    async def _snapshot(self, reason: str, scratch: Path) -> dict[str, Any]:
        """A snapshot, database copies made in ``scratch`` (the caller removes it)."""
        sources = await self.client.list_sources()
        services = await self.client.list_services()
        files: dict[str, bytes | Path] = {}
        entries = []
        for source in sources:
            entry: dict[str, Any] = {"name": source.name, "type": source.source_type,
                                     "path": source.path, "enabled": source.enabled}
            if source.owner is not None:
                entry["owner"] = source.owner
            member = f"sources/{source.name}"
            try:
                data: bytes | Path
                if source.source_type == "sqlite":
                    data = scratch / f"{len(files)}.db"
                    digest = await anyio.to_thread.run_sync(_copy_database, source.path, data)
                    entry["file"], entry["restore_to"] = f"{member}/source.db", source.path
                else:
                    root = Path(source.path)
                    config = root if root.is_file() else find_config_file(root)
                    if config is None:
                        raise OSError(f"no hive.yaml in {root}")
                    data = config.read_bytes()
                    digest = _sha256(data)
                    entry["file"], entry["restore_to"] = f"{member}/{config.name}", str(config)
            except (OSError, sqlite3.Error) as exc:
                entry["error"] = f"not saved: {exc}"
                entries.append(entry)
                continue
            files[entry["file"]] = data
            entry["sha256"] = digest
            entries.append(entry)
        archive_id = self._new_id()
        saved = [{"fqn": s.fqn, "desired": s.desired, "instances": s.instances}
                 for s in services if "#" not in s.fqn]
        manifest: dict[str, Any] = {
            "format": FORMAT, "id": archive_id, "reason": reason, "hive_version": __version__,
            "created": datetime.now(UTC).isoformat(), "sources": entries, "services": saved,
        }
        result: dict[str, Any] = await anyio.to_thread.run_sync(self._write, archive_id, manifest, files)
        return result

    def _new_id(self) -> str:
        base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        candidate, n = base, 1
        while (self.directory / f"{candidate}.tar.gz").exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def _write(self, archive_id: str, manifest: dict[str, Any], files: dict[str, bytes | Path]) -> dict[str, Any]:
        """The archive, compressed straight to a temporary file (members given as a path are
        streamed from it), then its sidecar; each renamed into place once complete."""
        path = self.directory / f"{archive_id}.tar.gz"
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            with open(temporary, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as archive:
                    members = {"manifest.json": json.dumps(manifest, indent=2).encode(), **files}
                    for name, data in members.items():
                        header = tarfile.TarInfo(name)
                        header.mtime = int(time.time())
                        header.mode = 0o600
                        if isinstance(data, Path):
                            header.size = data.stat().st_size
                            with open(data, "rb") as member:
                                archive.addfile(header, member)
                        else:
                            header.size = len(data)
                            archive.addfile(header, io.BytesIO(data))
                raw.flush()
                os.fsync(raw.fileno())
            digest, size = _file_sha256(temporary), temporary.stat().st_size
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _write_atomically(self.directory / f"{archive_id}.sha256", f"{digest}  {path.name}\n".encode())
        self._prune()
        return {"id": archive_id, "reason": manifest["reason"], "created": manifest["created"],
                "size": size, "sources": len(manifest["sources"]), "services": len(manifest["services"])}

    def _archives(self) -> list[tuple[Path, os.stat_result]]:
        """The files named like an archive, oldest first (by write time: ids of the same
        second differ by a suffix); a file that goes away meanwhile is left out."""
        found = []
        for path in self.directory.glob("*.tar.gz"):
            if not ARCHIVE_NAME.match(path.name):
                continue
            try:
                found.append((path, path.stat()))
            except FileNotFoundError:
                continue
        return sorted(found, key=lambda item: (item[1].st_mtime_ns, item[0].name))

    def _reason(self, path: Path, status: os.stat_result) -> str | None:
        """The reason in the archive's manifest, or None: not one of ours (or unreadable),
        so retention never deletes it. Remembered per file version: read once."""
        key = (path.name, status.st_mtime_ns, status.st_size)
        if key not in self._kinds:
            try:
                manifest = self._manifest(path)
                ours = manifest.get("format") == FORMAT and manifest.get("id") == path.name.removesuffix(".tar.gz")
                self._kinds[key] = str(manifest.get("reason")) if ours else None
            except DAMAGED:
                self._kinds[key] = None
        return self._kinds[key]

    def _prune(self) -> None:
        pools: dict[bool, list[Path]] = {True: [], False: []}  # crash or not → oldest first
        for path, status in self._archives():
            reason = self._reason(path, status)
            if reason is not None:
                pools[reason == "crash"].append(path)
        for crash, archives in pools.items():
            keep = self.settings.keep_crash if crash else self.settings.keep
            for old in archives[: max(0, len(archives) - keep)]:
                old.unlink(missing_ok=True)
                old.with_name(old.name.removesuffix(".tar.gz") + ".sha256").unlink(missing_ok=True)

    # --- list and verify ------------------------------------------------------------

    def _list(self) -> list[dict[str, Any]]:
        found = []
        for path, status in reversed(self._archives()):
            archive_id = path.name.removesuffix(".tar.gz")
            item: dict[str, Any] = {"id": archive_id, "size": status.st_size}
            try:
                manifest = self._manifest(path, whole=True)
                item.update(reason=manifest.get("reason"), created=manifest.get("created"),
                            sources=len(manifest.get("sources", [])), services=len(manifest.get("services", [])))
            except DAMAGED as exc:
                item.update(error=f"damaged (`hive backup verify {archive_id}` says more): "
                                  f"{exc or type(exc).__name__}")
            found.append(item)
        return found

    @staticmethod
    def _manifest(path: Path, *, whole: bool = False) -> dict[str, Any]:
        """The manifest: the first member (read as a stream, so only that much is
        decompressed), or wherever it is in an archive written another way. ``whole``
        reads every header too, so a truncated archive raises."""
        if not whole:
            with tarfile.open(path, mode="r|gz") as stream:
                first = stream.next()
                if first is not None and first.name == "manifest.json":
                    handle = stream.extractfile(first)
                    if handle is not None:
                        manifest: dict[str, Any] = json.loads(handle.read())
                        return manifest
        with tarfile.open(path, mode="r:gz") as archive:
            archive.getmembers()
            member = archive.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            manifest = json.loads(member.read())
            return manifest

    def _archive(self, archive_id: str) -> Path:
        if "/" in archive_id or archive_id.startswith("."):
            raise PluginCallError(f"invalid archive id {archive_id!r}")
        path = self.directory / f"{archive_id}.tar.gz"
        if not path.exists():
            raise PluginCallError(f"no backup {archive_id!r} in {self.directory} (see `hive backup list`)")
        return path

    def _verify(self, archive_id: str) -> list[str]:
        """What is wrong with an archive (nothing: it is intact)."""
        return self._check(archive_id, None)[0]

    def _check(self, archive_id: str, scratch: Path | None) -> tuple[list[str], dict[str, Member], dict[str, Any]]:
        """What is wrong with an archive, its members (read once; unpacked into ``scratch``
        for a restore) and its manifest."""
        path = self._archive(archive_id)
        problems: list[str] = []
        sidecar = path.with_name(f"{archive_id}.sha256")
        try:
            expected = sidecar.read_text().split()[0]
        except (OSError, IndexError):
            problems.append(f"{sidecar.name} is missing or empty")
        else:
            actual = _file_sha256(path)
            if actual != expected:
                problems.append(f"the archive's SHA-256 is {actual}, {sidecar.name} says {expected}")
        try:
            members = _read_archive(path, scratch)
            manifest = self._manifest(path)
        except DAMAGED as exc:
            problems.append(f"the archive cannot be read (truncated or not a backup): {exc or type(exc).__name__}")
            return problems, {}, {}
        for source in manifest.get("sources", []):
            name = source.get("file")
            if name is None:
                continue
            member = members.get(name)
            if member is None:
                problems.append(f"{name} is missing from the archive")
            elif member.sha256 != source.get("sha256"):
                problems.append(f"{name} does not match its checksum")
        return problems, members, manifest

    # --- restore --------------------------------------------------------------------

    async def restore(self, archive_id: str, *, dry_run: bool) -> dict[str, Any]:
        # The archive is unpacked to scratch files (removed after; a killed daemon's are
        # removed at the plugin's next start, as a snapshot's are): never held in memory.
        scratch = Path(await anyio.to_thread.run_sync(
            lambda: tempfile.mkdtemp(prefix=".scratch-", dir=self.directory)))
        try:
            return await self._restore(archive_id, scratch, dry_run=dry_run)
        finally:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(scratch, ignore_errors=True))

    async def _restore(self, archive_id: str, scratch: Path, *, dry_run: bool) -> dict[str, Any]:
        problems, members, manifest = await anyio.to_thread.run_sync(self._check, archive_id, scratch)
        if problems:
            raise PluginCallError(f"backup {archive_id} is damaged, nothing restored: " + "; ".join(problems))
        current_sources = {s.name: s for s in await self.client.list_sources()}
        listed = [s for s in await self.client.list_services() if "#" not in s.fqn]
        current_services = {s.fqn: s.state for s in listed}
        current_instances = {s.fqn: s.instances for s in listed}
        steps: list[tuple[str, Any]] = []
        # A source with an owner (the fleet's) is its owner's to start: a restore adds it
        # back with its owner, and starts or scales none of its services.
        owned = {source["name"] for source in manifest["sources"] if source.get("owner")}
        owned |= {name for name, info in current_sources.items() if info.owner is not None}
        for source in manifest["sources"]:
            if "file" not in source:
                continue
            data = members[source["file"]].file
            assert data is not None  # unpacked: _check was given the scratch directory
            name = source["name"]
            registered = name in current_sources
            restore_to = _restore_target(source, current_sources[name].path if registered else None,
                                         self._daemon_files())
            if not restore_to.exists() and registered and source["type"] == "sqlite":
                steps.append((f"write {restore_to} from the daemon's open copy (source {name})", ("reload", name)))
            elif not restore_to.exists():
                steps.append((f"write {restore_to} (source {name})", ("write", restore_to, data)))
            if not registered:
                owner = source.get("owner")
                steps.append((f"add source {name} ({source['path']})" + (f", owned by {owner}" if owner else ""),
                              ("add", source["path"], name, owner)))
            if source["type"] == "sqlite" and registered:
                for service, config in await anyio.to_thread.run_sync(_services_of, data):
                    if f"{name}:{service}" not in current_services:
                        steps.append((f"create service {name}:{service}", ("create", name, service, config)))
        for service in manifest["services"]:
            if service["fqn"].partition(":")[0] in owned:
                continue
            running_now = current_services.get(service["fqn"]) in ("running", "unhealthy", "starting")
            if service["desired"] == "running" and not running_now:
                steps.append((f"start {service['fqn']}", ("start", service["fqn"])))
            if service["desired"] == "running" and service["instances"] > current_instances.get(service["fqn"], 1):
                steps.append((f"scale {service['fqn']} to {service['instances']}",
                              ("scale", service["fqn"], service["instances"])))
        plan = [label for label, _ in steps]
        if not dry_run:
            for label, step in steps:
                try:
                    await self._apply(step)
                except Exception as exc:
                    hint = (" (a restore adds sources and services, which needs the admin scope: "
                            "remove `scope` from [plugins.backup], or set it to \"admin\")"
                            if "FORBIDDEN" in str(exc) else "")
                    raise PluginCallError(f"restore stopped at `{label}`: {exc}{hint}") from None
        return {"id": archive_id, "plan": plan, "applied": not dry_run}

    def _daemon_files(self) -> tuple[Path, ...]:
        """What a restore never writes: the daemon's config, state (and its -wal, -shm),
        socket, logs and backups (resolved, as restore targets are)."""
        home = self.home.resolve()
        return (home / "config.toml", home / "state.db", home / "hive.pid", home / "hive.sock",
                home / "logs", self.directory.resolve())

    async def _apply(self, step: tuple[Any, ...]) -> None:
        action = step[0]
        if action == "write":
            target, data = step[1], step[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            await anyio.to_thread.run_sync(_write_atomically, target, data)
        elif action == "add":
            await self.client.add_source(step[1], name=step[2], owner=step[3])
        elif action == "create":
            await self.client.create_service(step[1], step[2], step[3], start=False)
        elif action == "reload":
            await self.client.reload_source(step[1])  # the daemon's access writes its copy back
        elif action == "start":
            await self.client.start_service(step[1])
        elif action == "scale":
            await self.client.scale_service(step[1], step[2])
