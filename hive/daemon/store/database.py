"""The database: ``$HIVE_HOME/state.db`` (SQLite in WAL mode, through aiosqlite).

:class:`StateStore` opens it, checks it, brings its schema forward (see
:mod:`.schema`), and runs statements: reads, and writes in one transaction each (all or
none). It knows no table: what the rows mean, and every statement on them, is
:mod:`.repository`'s.

The schema is versioned with ``PRAGMA user_version``. Migrations only go forward, each
in one transaction; a database written by a newer Hive is refused rather than guessed
at, and a damaged one is refused with the way out.

The file is watched: before each write transaction (and before ``hive status`` answers)
the path's inode is compared with the one opened. A ``state.db`` deleted or replaced
while the daemon runs would otherwise take every later write into an unlinked inode,
lost at the next start; instead the daemon copies its open database (which still holds
everything) to a new file at the path, moves a replacement aside, and writes there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.abc

from .schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["StateStore", "StoreError"]

log = logging.getLogger("hive.store")


class StoreError(Exception):
    """The state database cannot be used; the message says why and what to do.

    Not a request's error: the store knows nothing of requests. Where a request's work
    hits it, the server answers ``error{STORAGE, message}`` (see :mod:`hive.daemon.errors`);
    at start-up it stops the daemon with the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message




class StateStore:
    def __init__(self, path: Path, db: aiosqlite.Connection) -> None:
        self.path = path
        self._db = db
        # One transaction at a time on the shared connection.
        self._tx_lock = anyio.Lock()
        self._identity = _identity(path)
        # Why the file at the path is not the database written (None while it is), and
        # what was done the last time it was not: both shown by `hive status`.
        self.file_error: str | None = None
        self.file_note: str | None = None

    @classmethod
    async def open(cls, path: Path) -> StateStore:
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        store = cls(path, db)
        try:
            await store._prepare()
        except BaseException:
            await db.close()
            raise
        return store

    async def _prepare(self) -> None:
        db = self._db
        try:
            await db.execute("PRAGMA busy_timeout = 5000")
            check = await (await db.execute("PRAGMA quick_check")).fetchone()
            if check is None or check[0] != "ok":
                raise StoreError(self._damaged(str(check[0] if check else "no answer")))
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            await self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._damaged(str(exc))) from exc

    def _damaged(self, detail: str) -> str:
        detail = " ".join(detail.split())  # quick_check lists problems on several lines
        if len(detail) > 160:
            detail = detail[:157] + "..."
        return (
            f"the state database {self.path} is damaged ({detail}). Hive will not start on it: "
            "put back a copy you trust, or move it away to start empty (then `hive backup restore` "
            "puts back a snapshot, with the backup plugin); see docs/recovery.md"
        )

    async def _migrate(self) -> None:
        row = await (await self._db.execute("PRAGMA user_version")).fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this Hive knows "
                f"({SCHEMA_VERSION}); run the newer Hive, or restore a copy from before the upgrade"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[number - 1]
            # executescript commits on its own; wrap it so a failure leaves version N-1.
            await self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    async def close(self) -> None:
        await self._db.close()

    # --- the file under the path ----------------------------------------------------------

    async def ensure_file(self) -> None:
        """Make sure the writes go to the file at the path: recreate it from the open
        database when it was deleted or replaced. StoreError when that fails."""
        async with self._tx_lock:
            with anyio.CancelScope(shield=True):
                await self._ensure_file()

    async def _ensure_file(self) -> None:
        current = _identity(self.path)
        if current == self._identity and self.file_error is None:
            return
        what = "deleted" if current is None else "replaced"
        try:
            await self._recreate(replaced=current is not None)
        except (OSError, sqlite3.Error, StoreError) as exc:
            detail = exc.message if isinstance(exc, StoreError) else str(exc)
            self.file_error = (f"{self.path} was {what} while the daemon ran and cannot be "
                               f"recreated ({detail}); changes are kept in memory only. Free the "
                               f"directory (space, permissions); the next write tries again")
            raise StoreError(self.file_error) from exc
        self.file_error = None
        self.file_note = (f"{self.path.name} was {what} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
                          "while the daemon ran; recreated in full from the daemon's copy")
        log.error("%s", self.file_note)

    async def _recreate(self, *, replaced: bool) -> None:
        """Copy the open database (still whole, even unlinked) to a new file, then put it
        at the path and reopen: nothing written so far is lost."""
        path = self.path
        spare = path.with_name(f"{path.name}.recreate-{os.getpid()}")
        spare.unlink(missing_ok=True)
        copy = await aiosqlite.connect(spare, isolation_level=None)
        try:
            await self._db.backup(copy)
        finally:
            await copy.close()
        os.chmod(spare, 0o600)
        if replaced:  # someone's file: kept beside it, never overwritten
            aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.error("%s was replaced while the daemon ran; the other file is kept as %s", path, aside)
        await self._db.close()  # checkpoints into the old inode and drops its WAL
        for leftover in (f"{path.name}-wal", f"{path.name}-shm"):
            path.with_name(leftover).unlink(missing_ok=True)
        os.replace(spare, path)
        self._db = await aiosqlite.connect(path, isolation_level=None)
        await self._prepare()
        self._identity = _identity(path)

    @property
    async def schema_version(self) -> int:
        row = await (await self._db.execute("PRAGMA user_version")).fetchone()
        return int(row[0]) if row else 0

    # --- generic helpers ----------------------------------------------------------------

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        cursor = await self._db.execute(sql, params)
        rows = await cursor.fetchall()
        return list(rows)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self.execute_many([(sql, params)])

    async def execute_many(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """Run several writes in one transaction: all or none.

        A failed write (a full disk, say) raises StoreError and leaves the database as
        it was; the daemon carries on with its state in memory.
        """
        # Shielded: a cancel (a caller that went away) must not cut a transaction in two,
        # leaving it open on the shared connection; it is delivered once this is done.
        async with self._tx_lock:
            with anyio.CancelScope(shield=True):
                await self._ensure_file()
                await self._transaction(statements)

    async def _transaction(self, statements: Iterable[tuple[str, Sequence[Any]]]) -> None:
        db = self._db
        try:
            await db.execute("BEGIN IMMEDIATE")
            try:
                # Consecutive statements of one shape go as one executemany: a start of
                # 500 services is a handful of trips to SQLite's thread, not 500.
                for sql, rows in _runs(statements):
                    if len(rows) == 1:
                        await db.execute(sql, rows[0])
                    else:
                        await db.executemany(sql, rows)
                await db.execute("COMMIT")
            except BaseException:
                await self._rollback()
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {self.path.name}: {exc}") from exc

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            await self._db.execute("ROLLBACK")

    async def get_meta(self, key: str) -> str | None:
        rows = await self.fetch_all("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


def _identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), or None when there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _runs(
    statements: Iterable[tuple[str, Sequence[Any]]],
) -> list[tuple[str, list[Sequence[Any]]]]:
    """Statements grouped into runs of the same SQL, in order."""
    runs: list[tuple[str, list[Sequence[Any]]]] = []
    for sql, params in statements:
        if runs and runs[-1][0] == sql:
            runs[-1][1].append(params)
        else:
            runs.append((sql, [params]))
    return runs
