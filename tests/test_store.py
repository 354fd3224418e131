"""The state store on a real SQLite file: WAL, migrations, refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from hive.daemon.store import SCHEMA_VERSION, StateStore, StateWriter, StoreError
from tests.support import StartFailed, start_daemon

pytestmark = pytest.mark.anyio


async def test_fresh_database_is_migrated_and_in_wal(home: Path) -> None:
    store = await StateStore.open(home / "state.db")
    try:
        assert await store.schema_version == SCHEMA_VERSION
        rows = await store.fetch_all("PRAGMA journal_mode")
        assert rows[0][0] == "wal"
        await store.set_meta("k", "v")
        assert await store.get_meta("k") == "v"
    finally:
        await store.close()
    # Reopening keeps the data and migrates nothing twice.
    store = await StateStore.open(home / "state.db")
    try:
        assert await store.get_meta("k") == "v"
    finally:
        await store.close()


async def test_migration_from_an_older_version(home: Path) -> None:
    path = home / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript("PRAGMA user_version = 0;")
    store = await StateStore.open(path)
    try:
        assert await store.schema_version == SCHEMA_VERSION
    finally:
        await store.close()


async def test_newer_schema_is_refused(home: Path) -> None:
    path = home / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(StoreError, match="newer than this Hive knows"):
        await StateStore.open(path)


async def test_failed_transaction_leaves_nothing(home: Path) -> None:
    store = await StateStore.open(home / "state.db")
    try:
        with pytest.raises(StoreError):
            await store.execute_many([
                ("INSERT INTO meta (key, value) VALUES ('a', '1')", ()),
                ("INSERT INTO no_such_table VALUES (1)", ()),
            ])
        assert await store.get_meta("a") is None
    finally:
        await store.close()


def test_corrupt_database_refuses_start_with_recovery_hint(home: Path) -> None:
    (home / "state.db").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(StartFailed) as failure:
        start_daemon(home)
    message = str(failure.value)
    assert "state.db" in message
    assert "damaged" in message or "not a database" in message
    assert "restore" in message.lower()


_UPSERT = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


async def test_state_writer_keeps_the_last_write_of_each_row(home: Path) -> None:
    store = await StateStore.open(home / "state.db")
    try:
        writer = StateWriter(store)
        for n in range(1000):
            writer.queue(("meta", "counter"), _UPSERT, ("counter", str(n)))
            writer.queue(("meta", f"row{n % 3}"), _UPSERT, (f"row{n % 3}", str(n)))
        await writer.flush()
        assert await store.get_meta("counter") == "999"
        assert [await store.get_meta(f"row{i}") for i in range(3)] == ["999", "997", "998"]
    finally:
        await store.close()


async def test_state_writer_flush_returns_while_writes_keep_coming(home: Path) -> None:
    """A flush waits for what was queued before it, not for a queue that never empties
    (a service restarting in a loop writes its row all the time)."""
    store = await StateStore.open(home / "state.db")
    try:
        writer = StateWriter(store)
        async with anyio.create_task_group() as tasks:
            await tasks.start(writer.run)

            async def keep_writing() -> None:
                n = 0
                while True:
                    n += 1
                    writer.queue(("meta", "loop"), _UPSERT, ("loop", str(n)))
                    await anyio.lowlevel.checkpoint()

            tasks.start_soon(keep_writing)
            writer.queue(("meta", "asked"), _UPSERT, ("asked", "yes"))
            with anyio.fail_after(10):
                await writer.flush()
            assert await store.get_meta("asked") == "yes"
            tasks.cancel_scope.cancel()
    finally:
        await store.close()


async def test_a_flush_tries_again_what_a_failed_write_put_back(home: Path) -> None:
    """A write that failed (here SQLite refuses writes, as on a full disk) does not hang a
    flush; once writes work again, the next flush saves those rows without waiting for
    the retry timer (a stop or a shutdown may be the last chance)."""
    store = await StateStore.open(home / "state.db")
    try:
        writer = StateWriter(store)
        await store.fetch_all("PRAGMA query_only = ON")
        writer.queue(("meta", "desired"), _UPSERT, ("desired", "stopped"))
        with anyio.fail_after(10):
            await writer.flush()
        assert writer.unsaved == 1 and writer.last_error is not None
        assert await store.get_meta("desired") is None
        await store.fetch_all("PRAGMA query_only = OFF")
        with anyio.fail_after(10):
            await writer.flush()
        assert writer.unsaved == 0 and writer.last_error is None
        assert await store.get_meta("desired") == "stopped"
    finally:
        await store.close()


async def test_a_flush_cancelled_mid_write_loses_no_row(home: Path) -> None:
    """A flush whose caller is cancelled while the batch is with SQLite (a client that
    hung up) loses no row: each is saved or still queued, and the next flush writes them
    (it used to drop the batch, then spin for ever on rows it counted but no longer had)."""
    store = await StateStore.open(home / "state.db")
    try:
        writer = StateWriter(store)
        for n in range(50):
            writer.queue(("meta", n), _UPSERT, (f"k{n}", str(n)))
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as flushing:
                flushing.start_soon(writer.flush)
                with anyio.fail_after(5):
                    while not writer._writing:  # the batch is handed to SQLite's thread
                        await anyio.lowlevel.checkpoint()
                scope.cancel()
        rows = await store.fetch_all("SELECT count(*) FROM meta WHERE key LIKE 'k%'")
        assert writer.unsaved + rows[0][0] == 50  # each row saved, or still to save
        with anyio.fail_after(5):
            await writer.flush()
        assert writer.unsaved == 0
        rows = await store.fetch_all("SELECT count(*) FROM meta WHERE key LIKE 'k%'")
        assert rows[0][0] == 50
    finally:
        await store.close()


async def test_a_request_that_hits_the_store_is_answered_storage() -> None:
    """StoreError is the store's, not a request's: the server translates it."""
    from types import SimpleNamespace
    from typing import Any, cast

    from hive.daemon.errors import RequestError
    from hive.daemon.request_stats import RequestStats
    from hive.daemon.server import _answer
    from hive_client import ErrorCode
    from hive_client import protocol as p

    assert not issubclass(StoreError, RequestError)

    async def handler(ctx: Any, request: Any) -> Any:
        raise StoreError("cannot write state.db: database or disk is full")

    stats = RequestStats()
    ctx = SimpleNamespace(app=SimpleNamespace(request_stats=stats))
    answer = await _answer(cast(Any, ctx), p.Ping(), handler)
    assert isinstance(answer, p.Error)
    assert (answer.code, answer.message) == (ErrorCode.STORAGE, "cannot write state.db: database or disk is full")
    assert [(s.request, s.count, s.errors) for s in stats.reply().requests] == [("ping", 1, 1)]
