"""The state store on a real SQLite file: WAL, migrations, refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hive.daemon.store import SCHEMA_VERSION, StateStore, StoreError
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
