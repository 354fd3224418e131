"""What the supervisor persists: each service's desired state, and a record of every
process it started (so a later daemon can adopt it).

Both go through the state writer (write-behind, one queued write per row); what the
user asked for is flushed before the answer, process records as they come.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec

from runners.base import ServiceHandle

from .runtime import InstanceRuntime, ServiceRuntime

if TYPE_CHECKING:
    from ..logs import LogHub
    from ..store import StateStore, StateWriter

__all__ = ["Records"]


class Records:
    def __init__(self, store: StateStore, writer: StateWriter, logs: LogHub) -> None:
        self._store = store
        self._writer = writer
        self._logs = logs
        # What earlier daemons left: desired states by fqn, process records by (fqn, index).
        self.persisted: dict[str, dict[str, Any]] = {}
        self.processes: dict[tuple[str, int], dict[str, Any]] = {}
        self._saved_offsets: dict[str, tuple[int, int]] = {}

    async def load(self) -> None:
        """Read desired states and process records written by earlier daemons."""
        store = self._store
        for row in await store.fetch_all("SELECT fqn, desired, instances, restart_count FROM services"):
            self.persisted[row[0]] = {"desired": row[1], "instances": row[2], "restart_count": row[3]}
        for row in await store.fetch_all(
            "SELECT fqn, instance, runner, pid, start_time, handle FROM processes"
        ):
            try:
                handle = msgspec.json.decode(row[5]) if row[5] else {}
            except msgspec.DecodeError:
                handle = {}
            self.processes[(row[0], int(row[1]))] = {
                "runner": row[2], "pid": row[3], "start_time": row[4], "handle": handle,
            }

    def save_desired(self, service: ServiceRuntime) -> None:
        """Queue the service's desired state, scale and restart count."""
        self._writer.queue(
            ("services", service.fqn),
            "INSERT INTO services (fqn, desired, instances, restart_count, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(fqn) DO UPDATE SET desired = excluded.desired, "
            "instances = excluded.instances, restart_count = excluded.restart_count, "
            "updated_at = excluded.updated_at",
            (service.fqn, service.desired, service.scale, service.restart_count, time.time()),
        )

    def forget_service(self, fqn: str) -> None:
        self._writer.queue(("services", fqn), "DELETE FROM services WHERE fqn = ?", (fqn,))
        self.persisted.pop(fqn, None)

    def record(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        """Queue the record of the instance's process (how to adopt it, and what it ran with)."""
        record = handle.record()
        offsets = self._logs.offsets(instance.fqn)
        self._saved_offsets[instance.fqn] = offsets
        record["log_offsets"] = list(offsets)
        record["ports"] = instance.ports
        record["config_digest"] = instance.config_digest
        self._writer.queue(
            ("processes", instance.fqn),
            "INSERT OR REPLACE INTO processes (fqn, instance, runner, pid, start_time, handle, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                instance.service.fqn,
                instance.index,
                instance.service.config.runner.type,
                handle.pid,
                record.get("start_time"),
                msgspec.json.encode(record).decode(),
                time.time(),
            ),
        )

    def forget(self, fqn: str, index: int) -> None:
        """Queue the removal of the record of instance ``index`` of service ``fqn``."""
        name = fqn if index == 0 else f"{fqn}#{index}"
        self._writer.queue(
            ("processes", name), "DELETE FROM processes WHERE fqn = ? AND instance = ?", (fqn, index)
        )

    def save_log_offsets(self, instances: list[InstanceRuntime]) -> None:
        """Persist how far each running instance's output was read (for the next daemon)."""
        for instance in instances:
            if instance.handle is None:
                continue
            offsets = self._logs.offsets(instance.fqn)
            if self._saved_offsets.get(instance.fqn) != offsets:
                self.record(instance, instance.handle)
