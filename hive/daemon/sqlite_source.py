"""A SQLite source: services that programs create, update and delete through the API.

The file holds one row per service; ``config`` is JSON in the shape of a ``hive.yaml``
``services.<name>`` entry, so a service moves between the two kinds of source unchanged.
The schema is versioned like the state store (``PRAGMA user_version``, forward only).
Every change is validated before it is written: a bad config never reaches the file.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import msgspec

__all__ = ["SqliteSourceError", "SqliteSourceFile"]

_MIGRATIONS = [
    """
    CREATE TABLE hive_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE services (
        name       TEXT PRIMARY KEY,
        enabled    INTEGER NOT NULL DEFAULT 1,
        config     TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO hive_meta (key, value) VALUES ('format', 'hive-sqlite-source');
    """,
]

_json = msgspec.json.Encoder(order="deterministic")


class SqliteSourceError(Exception):
    pass


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


class SqliteSourceFile:
    """One open source database. All writes are single transactions.

    The connection stays open, so the file on disk can change under it: deleted (the open
    copy is then the only one: it is written back to the path) or replaced, by a restore
    for one (the new file is opened). Every access checks first, so no write goes to a file
    nobody can see any more."""

    def __init__(self, path: Path, db: aiosqlite.Connection) -> None:
        self.path = path
        self._db = db
        self._lock = anyio.Lock()
        self._identity = _identity(path)

    @classmethod
    async def open(cls, path: Path, *, create: bool) -> SqliteSourceFile:
        if not create and not path.exists():
            raise SqliteSourceError(f"{path} does not exist")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise SqliteSourceError(f"cannot open {path}: {exc}") from exc
        source = cls(path, db)
        try:
            await source._migrate()
        except BaseException:
            await db.close()
            raise
        return source

    async def _migrate(self) -> None:
        try:
            await self._db.execute("PRAGMA busy_timeout = 5000")
            await self._db.execute("PRAGMA journal_mode = WAL")
            row = await (await self._db.execute("PRAGMA user_version")).fetchone()
            version = int(row[0]) if row else 0
            if version > len(_MIGRATIONS):
                raise SqliteSourceError(
                    f"{self.path} has schema version {version}, newer than this Hive knows"
                )
            for number in range(version + 1, len(_MIGRATIONS) + 1):
                await self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{_MIGRATIONS[number - 1]}\n"
                    f"PRAGMA user_version = {number};\nCOMMIT;"
                )
        except sqlite3.DatabaseError as exc:
            raise SqliteSourceError(f"{self.path} is not a usable SQLite source: {exc}") from exc

    async def close(self) -> None:
        await self._db.close()

    async def _follow_file(self) -> None:
        """Open what is at the path now if it is not the file the connection has open."""
        now = _identity(self.path)
        if now is not None and now == self._identity:
            return
        try:
            if now is None:  # deleted: the open copy goes back to the path
                scratch = self.path.with_name(f".{self.path.name}.recreate")
                scratch.unlink(missing_ok=True)
                await self._db.execute("VACUUM INTO ?", (str(scratch),))
                await self._db.close()  # removes the old -wal/-shm that belong to it
                os.replace(scratch, self.path)
            else:
                await self._db.close()
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            self._identity = _identity(self.path)
            await self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise SqliteSourceError(f"{self.path} changed on disk and cannot be reopened: {exc}") from exc

    async def services(self) -> dict[str, tuple[bool, Any]]:
        """name → (enabled, config as plain data)."""
        async with self._lock:
            await self._follow_file()
        try:
            cursor = await self._db.execute("SELECT name, enabled, config FROM services ORDER BY name")
            rows = await cursor.fetchall()
        except sqlite3.Error as exc:
            raise SqliteSourceError(f"cannot read {self.path}: {exc}") from exc
        result: dict[str, tuple[bool, Any]] = {}
        for name, enabled, config in rows:
            try:
                result[str(name)] = (bool(enabled), msgspec.json.decode(config))
            except msgspec.DecodeError:
                result[str(name)] = (bool(enabled), None)
        return result

    async def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        async with self._lock:
            await self._follow_file()
            try:
                cursor = await self._db.execute(sql, params)
                return cursor.rowcount
            except sqlite3.IntegrityError as exc:
                raise SqliteSourceError(str(exc)) from exc
            except sqlite3.Error as exc:
                raise SqliteSourceError(f"cannot write {self.path}: {exc}") from exc

    async def insert(self, name: str, config: Any) -> None:
        now = time.time()
        await self._write(
            "INSERT INTO services (name, enabled, config, created_at, updated_at) VALUES (?, 1, ?, ?, ?)",
            (name, _json.encode(config).decode(), now, now),
        )

    async def update(self, name: str, config: Any) -> None:
        await self._write(
            "UPDATE services SET config = ?, updated_at = ? WHERE name = ?",
            (_json.encode(config).decode(), time.time(), name),
        )

    async def delete(self, name: str) -> bool:
        return await self._write("DELETE FROM services WHERE name = ?", (name,)) > 0


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, ``null`` deletes a key, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
