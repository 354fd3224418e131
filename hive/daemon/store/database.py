"""The database: ``$HIVE_HOME/state.db`` (SQLite in WAL mode, through aiosqlite).

:class:`StateStore` opens it, checks it, brings its schema forward (see
:mod:`.schema`), and runs statements: reads, and writes in one transaction each (all or
none). It knows no table: what the rows mean, and every statement on them, is
:mod:`.repository`'s.

The schema is versioned with ``PRAGMA user_version``. Migrations only go forward, each
in one transaction; a database written by a newer Hive is refused rather than guessed
at, and a damaged one is refused with the way out.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.abc

from .schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["StateStore", "StoreError"]


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
