"""Every statement on ``state.db``'s tables, behind typed methods.

Callers hold rows (:class:`ServiceRow`, :class:`ProcessRecord`, :class:`SourceRow`),
never SQL. Reads and the rare writes of the sources registry go straight to the
database (:class:`StateRepository`); the frequent writes of the supervisor go through
the write-behind :class:`~.writer.StateWriter`: the ``*_write`` functions build what
``StateWriter.queue`` takes (the row's key, the statement, its parameters), so a later
write of the same row replaces a queued one.

A process record is two parts kept apart: the runner's (``handle``, exactly what
``ServiceHandle.record()`` gave, handed back to ``Runner.adopt``) and the daemon's (its
ports, how far its logs were read, the digest of the configuration it started from).
Records written before schema 2 mixed the daemon's keys into the runner's dict; they
are read too, so a daemon upgraded in place adopts what the old one left running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .database import StateStore

__all__ = [
    "ProcessRecord",
    "ServiceRow",
    "SourceRow",
    "StateRepository",
    "Write",
    "desired_state_write",
    "forget_process_write",
    "forget_service_write",
    "process_record_write",
]

log = logging.getLogger("hive.store")

# What StateWriter.queue takes: the row's key, the statement, its parameters.
Write = tuple[Hashable, str, Sequence[Any]]

# The layout of a process row: 1, everything in ``handle``; 2, the daemon's part in columns.
_MIXED, _SEPARATE = 1, 2
# The daemon's keys in a layout-1 ``handle``.
_DAEMON_KEYS = ("ports", "log_offsets", "config_digest")


class ServiceRow(msgspec.Struct, frozen=True, kw_only=True):
    """What the user asked of a service: running or stopped, how many copies; and how
    often it was restarted."""

    fqn: str
    desired: str  # "running" or "stopped" (the table checks it)
    instances: int
    restart_count: int


class ProcessRecord(msgspec.Struct, kw_only=True):
    """A process the daemon started, as a later daemon needs it to adopt it."""

    runner: str
    pid: int | None
    start_time: float | None
    started_at: float
    ports: dict[str, int] = msgspec.field(default_factory=dict)
    log_offsets: tuple[int, int] = (0, 0)
    config_digest: str = ""
    handle: dict[str, Any] = msgspec.field(default_factory=dict)  # the runner's record()


class SourceRow(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    path: str
    source_type: str  # "yaml" or "sqlite" (the table checks it)
    enabled: bool = True
    # Who decides which of its services run after a daemon restart: None, the daemon
    # (it starts what was running); else a plugin's name (the daemon only adopts).
    owner: str | None = None


def instance_name(fqn: str, index: int) -> str:
    """The key of an instance's process row (``fqn`` or ``fqn#N``, as the instance is named)."""
    return fqn if index == 0 else f"{fqn}#{index}"


# --- writes through the state writer --------------------------------------------------

def desired_state_write(row: ServiceRow) -> Write:
    return (
        ("services", row.fqn),
        "INSERT INTO services (fqn, desired, instances, restart_count, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(fqn) DO UPDATE SET desired = excluded.desired, "
        "instances = excluded.instances, restart_count = excluded.restart_count, "
        "updated_at = excluded.updated_at",
        (row.fqn, row.desired, row.instances, row.restart_count, time.time()),
    )


def forget_service_write(fqn: str) -> Write:
    return ("services", fqn), "DELETE FROM services WHERE fqn = ?", (fqn,)


def process_record_write(fqn: str, index: int, record: ProcessRecord) -> Write:
    return (
        ("processes", instance_name(fqn, index)),
        "INSERT OR REPLACE INTO processes (fqn, instance, runner, pid, start_time, handle, started_at, "
        "layout, ports, stdout_offset, stderr_offset, config_digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            fqn, index, record.runner, record.pid, record.start_time,
            msgspec.json.encode(record.handle).decode(), record.started_at,
            _SEPARATE, msgspec.json.encode(record.ports).decode(),
            record.log_offsets[0], record.log_offsets[1], record.config_digest,
        ),
    )


def forget_process_write(fqn: str, index: int) -> Write:
    return (
        ("processes", instance_name(fqn, index)),
        "DELETE FROM processes WHERE fqn = ? AND instance = ?",
        (fqn, index),
    )


# --- reads, and the sources registry ----------------------------------------------------

class StateRepository:
    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def load_desired_states(self) -> dict[str, ServiceRow]:
        rows = await self._store.fetch_all("SELECT fqn, desired, instances, restart_count FROM services")
        return {
            row[0]: ServiceRow(fqn=row[0], desired=row[1], instances=int(row[2]), restart_count=int(row[3]))
            for row in rows
        }

    async def load_process_records(self) -> dict[tuple[str, int], ProcessRecord]:
        """Every process record, by (service fqn, instance index), of either layout."""
        records: dict[tuple[str, int], ProcessRecord] = {}
        for row in await self._store.fetch_all(
            "SELECT fqn, instance, runner, pid, start_time, handle, started_at, layout, ports, "
            "stdout_offset, stderr_offset, config_digest FROM processes"
        ):
            records[(row[0], int(row[1]))] = decode_process_row(tuple(row))
        return records

    async def load_sources(self) -> list[SourceRow]:
        """The registered sources, in the order they were added."""
        rows = await self._store.fetch_all(
            "SELECT name, path, source_type, enabled, owner FROM sources ORDER BY added_at"
        )
        return [SourceRow(name=row[0], path=row[1], source_type=row[2], enabled=bool(row[3]), owner=row[4])
                for row in rows]

    async def add_source(self, row: SourceRow) -> None:
        await self._store.execute(
            "INSERT INTO sources (name, path, source_type, enabled, owner, added_at) VALUES (?, ?, ?, ?, ?, ?)",
            (row.name, row.path, row.source_type, int(row.enabled), row.owner, time.time()),
        )

    async def set_source_owner(self, name: str, owner: str | None) -> None:
        await self._store.execute("UPDATE sources SET owner = ? WHERE name = ?", (owner, name))

    async def remove_source(self, name: str) -> None:
        await self._store.execute("DELETE FROM sources WHERE name = ?", (name,))

    async def rows_for_every_service(self) -> bool:
        """Whether every service a daemon registered has a row (what ``settle_loaded``
        needs to tell a service added while no daemon ran); a state.db of an older Hive
        has rows only for services once started or stopped."""
        return await self._store.get_meta("service_rows") == "every"

    async def mark_rows_for_every_service(self) -> None:
        await self._store.set_meta("service_rows", "every")

    async def set_source_enabled(self, name: str, enabled: bool) -> None:
        await self._store.execute("UPDATE sources SET enabled = ? WHERE name = ?", (int(enabled), name))


def decode_process_row(row: Sequence[Any]) -> ProcessRecord:
    """A ``processes`` row (the columns :meth:`StateRepository.load_process_records`
    selects) as a record. A damaged field reads as missing: the runner then finds the
    process by its marker, or the daemon starts it afresh."""
    _fqn, _index, runner, pid, start_time, handle_json, started_at, layout, ports_json, out, err, digest = row
    handle = _json_object(handle_json)
    if layout == _SEPARATE:
        ports = _ports(_json_object(ports_json))
        offsets = (int(out), int(err))
    else:  # layout 1: the daemon's keys are in the runner's dict
        ports = _ports(handle.get("ports"))
        offsets = _offsets(handle.get("log_offsets"))
        digest = str(handle.get("config_digest") or "")
        handle = {key: value for key, value in handle.items() if key not in _DAEMON_KEYS}
    return ProcessRecord(
        runner=str(runner), pid=pid, start_time=start_time, started_at=float(started_at or 0.0),
        ports=ports, log_offsets=offsets, config_digest=str(digest or ""), handle=handle,
    )


def _json_object(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        log.warning("a process record is damaged; its process is looked for by its marker")
        return {}
    return value if isinstance(value, dict) else {}


def _ports(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(name): int(port) for name, port in value.items() if isinstance(port, int)}


def _offsets(value: Any) -> tuple[int, int]:
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return 0, 0
