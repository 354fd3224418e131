"""Write-behind of frequent, small updates (process records, counters).

The supervisor queues a write per row as its state changes; :class:`StateWriter`
commits what is queued in batches, one transaction each, and keeps the daemon serving
from memory while the disk refuses (a full disk): rows are tried again on a timer.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from typing import Any

import anyio
import anyio.abc

from .database import StateStore, StoreError

log = logging.getLogger("hive.store")

__all__ = ["RETRY_FIRST", "RETRY_MAX", "StateWriter"]

# A failed write is tried again after this long, doubling up to the cap: a full disk
# gets a few tries a minute, not one per state change (a restart loop changes it often).
RETRY_FIRST = 0.5
RETRY_MAX = 5.0


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
