"""What the supervisor persists: each service's desired state, and a record of every
process it started (so a later daemon can adopt it).

Rows are typed (:class:`~hive.daemon.store.ServiceRow`,
:class:`~hive.daemon.store.ProcessRecord`); the statements are the store's. Writes go
through the state writer (write-behind, one queued write per row): what the user asked
for is flushed before the answer, process records as they come.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from runners.base import ServiceHandle

from ..store import (
    ProcessRecord,
    ServiceRow,
    StateRepository,
    desired_state_write,
    forget_process_write,
    forget_service_write,
    process_record_write,
)
from .runtime import InstanceRuntime, ServiceRuntime

if TYPE_CHECKING:
    from ..logs import LogHub
    from ..store import StateStore, StateWriter

__all__ = ["Records"]


class Records:
    def __init__(self, store: StateStore, writer: StateWriter, logs: LogHub) -> None:
        self._repository = StateRepository(store)
        self._writer = writer
        self._logs = logs
        # What earlier daemons left: desired states by fqn, process records by (fqn, index).
        self.persisted: dict[str, ServiceRow] = {}
        self.processes: dict[tuple[str, int], ProcessRecord] = {}
        self._saved_offsets: dict[str, tuple[int, int]] = {}

    async def load(self) -> None:
        """Read desired states and process records written by earlier daemons."""
        self.persisted.update(await self._repository.load_desired_states())
        self.processes.update(await self._repository.load_process_records())

    def save_desired(self, service: ServiceRuntime) -> None:
        """Queue the service's desired state, scale and restart count."""
        row = ServiceRow(fqn=service.fqn, desired=service.desired, instances=service.scale,
                         restart_count=service.restart_count)
        self._writer.queue(*desired_state_write(row))

    def forget_service(self, fqn: str) -> None:
        self._writer.queue(*forget_service_write(fqn))
        self.persisted.pop(fqn, None)

    def record(self, instance: InstanceRuntime, handle: ServiceHandle) -> None:
        """Queue the record of the instance's process (how to adopt it, and what it ran with)."""
        runner_part = handle.record()
        offsets = self._logs.offsets(instance.fqn, handle)
        self._saved_offsets[instance.fqn] = offsets
        start_time = runner_part.get("start_time")
        record = ProcessRecord(
            runner=instance.service.config.runner.type,
            pid=handle.pid,
            start_time=float(start_time) if isinstance(start_time, int | float) else None,
            started_at=instance.started_at.timestamp() if instance.started_at else time.time(),
            ports=dict(instance.ports),
            log_offsets=offsets,
            config_digest=instance.config_digest,
            handle=runner_part,
        )
        self._writer.queue(*process_record_write(instance.service.fqn, instance.index, record))

    def forget(self, fqn: str, index: int) -> None:
        """Queue the removal of the record of instance ``index`` of service ``fqn``."""
        self._writer.queue(*forget_process_write(fqn, index))

    def save_log_offsets(self, instances: list[InstanceRuntime]) -> None:
        """Persist how far each running instance's output was read (for the next daemon)."""
        for instance in instances:
            if instance.handle is None:
                continue
            offsets = self._logs.offsets(instance.fqn, instance.handle)
            if self._saved_offsets.get(instance.fqn) != offsets:
                self.record(instance, instance.handle)
