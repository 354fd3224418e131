"""The state store: ``$HIVE_HOME/state.db`` (SQLite in WAL mode, through aiosqlite).

What is saved here is what must survive the daemon: the sources registry, the
desired state of every service, restart counters, and the processes the daemon
started (so a new daemon can adopt them). Everything else is runtime-only and lives in
memory.

The schema is versioned with ``PRAGMA user_version``. Migrations only go forward, each
in one transaction; a database written by a newer Hive is refused rather than guessed
at, and a damaged one is refused with the way out.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import anyio.abc

from hive_client import ErrorCode

from .errors import RequestError

log = logging.getLogger("hive.store")

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "StateStore", "StateWriter", "StoreError"]

# A failed write is tried again after this long, doubling up to the cap: a full disk
# gets a few tries a minute, not one per state change (a restart loop changes it often).
RETRY_FIRST = 0.5
RETRY_MAX = 5.0


class StoreError(RequestError):
    """The state database cannot be used; the message says why and what to do.

    A request that hits it is answered ``error{STORAGE, message}``."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.STORAGE, message)

    def __str__(self) -> str:
        return self.message


# Each entry takes the schema from version N-1 to N (N = its position, from 1).
MIGRATIONS: list[str] = [
    # 1: sources, desired service state, adopted processes.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE sources (
        name        TEXT PRIMARY KEY,
        path        TEXT NOT NULL UNIQUE,
        source_type TEXT NOT NULL CHECK (source_type IN ('yaml', 'sqlite')),
        enabled     INTEGER NOT NULL DEFAULT 1,
        added_at    REAL NOT NULL
    );
    CREATE TABLE services (
        fqn           TEXT PRIMARY KEY,
        desired       TEXT NOT NULL DEFAULT 'stopped'
                      CHECK (desired IN ('running', 'stopped')),
        instances     INTEGER NOT NULL DEFAULT 1 CHECK (instances >= 0),
        restart_count INTEGER NOT NULL DEFAULT 0,
        updated_at    REAL NOT NULL
    );
    CREATE TABLE processes (
        fqn        TEXT NOT NULL,
        instance   INTEGER NOT NULL DEFAULT 0,
        runner     TEXT NOT NULL,
        pid        INTEGER,
        start_time REAL,
        handle     TEXT NOT NULL DEFAULT '',
        started_at REAL NOT NULL,
        PRIMARY KEY (fqn, instance)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


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


class StateWriter:
    """Write-behind for frequent, small updates (process records, counters).

    Each write names the row it sets (``key``); a later write of the same row replaces
    an earlier one still queued, so the queue holds at most one write per row however
    fast they come (a service in a restart loop writes its row a thousand times a
    second). One task commits everything queued in one transaction, one ``executemany``
    per statement shape: starting 500 services costs a handful of trips to SQLite's
    thread. What a daemon killed in between did not commit, the next one recovers (it
    finds running services by their environment marker, see the supervisor).
    """

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._pending: dict[Hashable, tuple[str, Sequence[Any]]] = {}
        self._wakeup = anyio.Event()
        # Writes counted in and out: a flush waits for the writes queued before it, not
        # for an empty queue (which a restart loop would never leave).
        self._queued = 0
        self._pending_count = 0
        self._written = 0
        self._progress = anyio.Event()
        self._writing = False
        # Failed writes so far, the last one's reason while writes fail (None once one
        # succeeds again: shown by `hive status`), and when the writer tries again.
        self.failures = 0
        self.last_error: str | None = None
        self._retry_delay = 0.0
        self._retry_at: float | None = None

    def queue(self, key: Hashable, sql: str, params: Sequence[Any] = ()) -> None:
        """Set the row ``key`` names with ``sql``; replaces a queued write of that row."""
        self._pending[key] = (sql, params)
        self._queued += 1
        self._pending_count += 1
        self._wakeup.set()

    @property
    def unsaved(self) -> int:
        """Rows whose latest state is not on disk yet."""
        return len(self._pending)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self._retry_at is None:
                await self._wakeup.wait()
            else:
                # After a failure the timer drives the next try, not new writes: the rows
                # get written when the disk has room again, with no one having to ask.
                await anyio.sleep_until(self._retry_at)
            if self._writing:  # a flush is writing: its outcome decides what comes next
                await self._progress.wait()
                continue
            self._wakeup = anyio.Event()
            await self._write_pending()

    async def _write_pending(self, until: int | None = None) -> None:
        """Commit batches while writes are queued (or, with ``until``, until that many
        have been written: a flush must not become the writer of an endless stream)."""
        if self._writing:
            return  # the writer under way takes these too
        self._writing = True
        failed = False
        try:
            while self._pending and (until is None or self._written < until):
                batch, self._pending = self._pending, {}
                count, self._pending_count = self._pending_count, 0
                # One row per key: rows of one shape can go together in any order.
                by_shape: dict[str, list[tuple[str, Sequence[Any]]]] = {}
                for sql, params in batch.values():
                    by_shape.setdefault(sql, []).append((sql, params))
                try:
                    await self._store.execute_many(
                        [write for writes in by_shape.values() for write in writes]
                    )
                    if self.last_error is not None:
                        log.warning("state saved again (%d failed writes before)", self.failures)
                    self.last_error = None
                    self._retry_at = None
                    self._retry_delay = 0.0
                except BaseException as exc:
                    if not isinstance(exc, StoreError):
                        # Cancelled (its caller went away) or a bug: the batch goes back
                        # as it was, unwritten, for the next writer (writes are upserts).
                        self._pending = batch | self._pending
                        self._pending_count += count
                        raise
                    # Keep serving from memory; the rows go again when the retry timer
                    # fires (unless a newer write of theirs is queued by then).
                    self.failures += 1
                    if self.last_error is None:
                        log.error("state not saved: %s; retrying", exc)
                    self.last_error = str(exc)
                    self._retry_delay = min(RETRY_MAX, max(RETRY_FIRST, self._retry_delay * 2))
                    self._retry_at = anyio.current_time() + self._retry_delay
                    self._pending = batch | self._pending
                    self._written += count
                    failed = True
                    return
                self._written += count
                self._progress.set()
                self._progress = anyio.Event()
        finally:
            self._writing = False
            self._progress.set()
            self._progress = anyio.Event()
            if self._pending and not failed:
                self._wakeup.set()  # what is left is the writer task's

    async def flush(self) -> None:
        """Commit everything queued so far (shutdown, or before an answer that needs it)."""
        target = self._queued
        while self._written < target:
            if self._writing:
                await self._progress.wait()
            elif not self._pending:
                break  # nothing left to write (never spin on a count)
            else:
                await self._write_pending(until=target)
        if self._retry_at is not None and self._pending and not self._writing:
            # Rows a failed write put back count as written (a flush must not hang on a
            # full disk): they get one more try now, not only when the timer fires; a
            # stop or a shutdown may be what asked.
            await self._write_pending(until=self._written + 1)
