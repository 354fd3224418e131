"""The store's repository on a real SQLite file: typed rows in, the same rows out; and
process records written by a daemon before schema 2 (the runner's and the daemon's keys
mixed in one dict) read as the new records."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from hive.daemon.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ProcessRecord,
    ServiceRow,
    SourceRow,
    StateRepository,
    StateStore,
    StateWriter,
    Write,
    desired_state_write,
    forget_process_write,
    forget_service_write,
    process_record_write,
)

pytestmark = pytest.mark.anyio


async def _write(store: StateStore, *writes: Write) -> None:
    """Through the state writer, as the supervisor writes."""
    writer = StateWriter(store)
    for write in writes:
        writer.queue(*write)
    await writer.flush()


async def test_desired_states_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await StateStore.open(path)
    try:
        web = ServiceRow(fqn="p:web", desired="running", instances=3, restart_count=7)
        db = ServiceRow(fqn="p:db", desired="stopped", instances=1, restart_count=0)
        await _write(store, desired_state_write(web), desired_state_write(db))
        # A later write of the same row replaces it.
        await _write(store, desired_state_write(ServiceRow(fqn="p:db", desired="running", instances=2,
                                                           restart_count=1)))
    finally:
        await store.close()
    store = await StateStore.open(path)
    try:
        rows = await StateRepository(store).load_desired_states()
        assert rows == {"p:web": web, "p:db": ServiceRow(fqn="p:db", desired="running", instances=2, restart_count=1)}
        await _write(store, forget_service_write("p:web"))
        assert set(await StateRepository(store).load_desired_states()) == {"p:db"}
    finally:
        await store.close()


async def test_process_records_keep_the_runners_part_apart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await StateStore.open(path)
    handle = {"pid": 4242, "pgid": 4242, "start_time": 1700000000.5, "run_id": "abc"}
    record = ProcessRecord(runner="script", pid=4242, start_time=1700000000.5, started_at=1700000001.0,
                           ports={"http": 8080}, log_offsets=(120, 7), config_digest="1.0/abcdef", handle=handle)
    try:
        await _write(store, process_record_write("p:web", 0, record),
                     process_record_write("p:web", 2, ProcessRecord(runner="fake", pid=None, start_time=None,
                                                                     started_at=1.0, handle={"fake": 3})))
    finally:
        await store.close()
    store = await StateStore.open(path)
    try:
        repository = StateRepository(store)
        records = await repository.load_process_records()
        assert records[("p:web", 0)] == record
        assert records[("p:web", 0)].handle == handle  # exactly what record() gave
        assert records[("p:web", 2)].handle == {"fake": 3}
        await _write(store, forget_process_write("p:web", 2))
        assert set(await repository.load_process_records()) == {("p:web", 0)}
    finally:
        await store.close()


async def test_records_of_the_old_layout_are_read(tmp_path: Path) -> None:
    """A database a daemon of schema 1 wrote: migrated, and its records read."""
    path = tmp_path / "state.db"
    old_handle = {"pid": 99, "pgid": 99, "start_time": 12.5, "run_id": "r",
                  "log_offsets": [300, 4], "ports": {"http": 9000}, "config_digest": "0.9/0123456789abcdef"}
    with sqlite3.connect(path) as db:
        db.executescript(f"{MIGRATIONS[0]}\nPRAGMA user_version = 1;")
        db.execute("INSERT INTO processes (fqn, instance, runner, pid, start_time, handle, started_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", ("p:web", 1, "script", 99, 12.5, json.dumps(old_handle), 13.0))
        db.execute("INSERT INTO processes (fqn, instance, runner, pid, start_time, handle, started_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", ("p:db", 0, "script", 5, None, "{not json", 1.0))
    store = await StateStore.open(path)
    try:
        assert await store.schema_version == SCHEMA_VERSION
        records = await StateRepository(store).load_process_records()
    finally:
        await store.close()
    assert records[("p:web", 1)] == ProcessRecord(
        runner="script", pid=99, start_time=12.5, started_at=13.0, ports={"http": 9000}, log_offsets=(300, 4),
        config_digest="0.9/0123456789abcdef", handle={"pid": 99, "pgid": 99, "start_time": 12.5, "run_id": "r"},
    )
    # A damaged one reads as a record with nothing the runner can use (found by marker).
    assert records[("p:db", 0)].handle == {} and records[("p:db", 0)].runner == "script"


async def test_sources_registry(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = await StateStore.open(path)
    try:
        repository = StateRepository(store)
        await repository.add_source(SourceRow(name="b", path="/srv/b", source_type="yaml"))
        await repository.add_source(SourceRow(name="a", path="/srv/a.db", source_type="sqlite"))
        await repository.set_source_enabled("b", False)
    finally:
        await store.close()
    store = await StateStore.open(path)
    try:
        repository = StateRepository(store)
        assert await repository.load_sources() == [  # in the order they were added
            SourceRow(name="b", path="/srv/b", source_type="yaml", enabled=False),
            SourceRow(name="a", path="/srv/a.db", source_type="sqlite", enabled=True),
        ]
        await repository.remove_source("b")
        assert [row.name for row in await repository.load_sources()] == ["a"]
    finally:
        await store.close()
